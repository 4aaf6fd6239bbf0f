//! Checks made before anything is written. Each has a name the user can pass
//! to `--ignore-preflight-errors` (or `all`), as with kubeadm.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

use std::time::Duration;

use crate::config::{ClusterConfig, Component, HostPort};
use crate::host::paths::Paths;
use crate::host::process::find_binary;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: String,
    pub message: String,
}

/// The CNI plugins the pod network runs (containerd calls loopback itself).
pub const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];

/// What the checks need to know beyond the config.
pub struct Context<'a> {
    pub paths: &'a Paths,
    pub config: &'a ClusterConfig,
    /// Our own agent runs here already: its components hold their ports.
    pub agent_running: bool,
    pub euid_is_root: bool,
}

/// The ports a node listens on, with the address each binds and who binds it.
pub fn listening_ports(c: &ClusterConfig) -> Vec<(&'static str, SocketAddr)> {
    let n = &c.node;
    let adv = n.advertise_address;
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut out = vec![];
    for comp in &n.components {
        let name = comp.name();
        match comp {
            Component::Etcd => {
                out.push((name, SocketAddr::new(adv, n.etcd_client_port)));
                if !adv.is_loopback() {
                    out.push((name, SocketAddr::new(lo, n.etcd_client_port)));
                }
                out.push((name, SocketAddr::new(adv, n.etcd_peer_port)));
                out.push((name, SocketAddr::new(lo, n.etcd_peer_port + 1)));
                // Every master (an etcd member) serves the join API.
                out.push(("the join API", SocketAddr::new(adv, n.join_api_port)));
            }
            // A unix socket under the root.
            Component::Containerd => {}
            Component::KubeApiserver => out.push((name, SocketAddr::new(any, n.api_server_port))),
            Component::KubeControllerManager => out.push((name, SocketAddr::new(lo, 10257))),
            Component::KubeScheduler => out.push((name, SocketAddr::new(lo, 10259))),
            Component::Kubelet => {
                out.push((name, SocketAddr::new(any, 10250)));
                out.push((name, SocketAddr::new(lo, crate::kube::components::KUBELET_HEALTHZ_PORT)));
            }
            Component::KubeProxy => {
                out.push((name, SocketAddr::new(lo, crate::kube::components::KUBE_PROXY_HEALTHZ_PORT)));
                out.push((name, SocketAddr::new(lo, crate::kube::components::KUBE_PROXY_METRICS_PORT)));
            }
        }
    }
    if c.runs_local_lb() {
        if let crate::config::Host::Ip(ip) = c.local_lb_endpoint().host {
            out.push(("the node-local load balancer", SocketAddr::new(ip, n.local_load_balancer.port)));
        }
    }
    out
}

/// Whether `addr` belongs to this host: binding to it is the test the kernel
/// itself applies.
pub fn address_is_local(addr: IpAddr) -> bool {
    match TcpListener::bind(SocketAddr::new(addr, 0)) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::AddrNotAvailable,
    }
}

/// The nearest existing ancestor of `path`, which must take a new file.
fn check_writable(path: &Path) -> Result<(), String> {
    let mut dir = path;
    while !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let probe = dir.join(format!(".hakube-preflight-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!("cannot write in {}: {e}", dir.display())),
    }
}

pub fn run(ctx: &Context<'_>) -> Vec<Failure> {
    let c = ctx.config;
    let mut failures = vec![];
    let mut fail = |name: String, message: String| failures.push(Failure { name, message });

    if !ctx.euid_is_root {
        fail("root".into(), "hakube must run as root: re-run it with sudo".into());
    }
    if let Err(e) = check_writable(&ctx.paths.data_dir()) {
        fail("data-dir".into(), format!("{e}: hakube keeps its data under {}", ctx.paths.data_dir().display()));
    }
    if c.has(Component::Etcd) {
        if let Err(e) = check_writable(&ctx.paths.etcd_data_dir()) {
            fail("etcd-data-dir".into(), e);
        }
    }
    let adv = c.node.advertise_address;
    let adv_ok = address_is_local(adv);
    if !adv_ok {
        fail(
            "advertise-address".into(),
            format!("{adv} is not an address of this host: pass --advertise-address with one of its addresses (see `ip -brief address`)"),
        );
    }
    if !ctx.agent_running {
        let mut seen = BTreeSet::new();
        for (comp, addr) in listening_ports(c) {
            if (addr.ip() == adv && !adv_ok) || !seen.insert(addr) {
                continue;
            }
            if let Err(e) = TcpListener::bind(addr) {
                let why = if e.kind() == ErrorKind::AddrInUse { "is in use".to_owned() } else { e.to_string() };
                fail(
                    format!("port-{}", addr.port()),
                    format!("{addr} {why}, and {comp} needs it: stop what listens there (`ss -ltnp`), or change the port in the config"),
                );
            }
        }
    }
    let bundle = c.node.bundle.as_deref();
    if let Some(b) = bundle {
        if !b.is_dir() {
            fail(
                "bundle".into(),
                format!("the bundle {} is not a directory: pass the directory that holds the binaries", b.display()),
            );
        } else if c.has(Component::KubeApiserver) {
            // A master's agent may be elected to apply the add-ons: their
            // images must be named before anything is written, not found
            // missing later.
            if let Err(e) = crate::addons::images_from_bundle(b) {
                fail("bundle-images".into(), e.to_string());
            }
        }
    }
    let where_ = || {
        format!(
            "{}, {}or PATH",
            ctx.paths.bin_dir().display(),
            bundle.map(|b| format!("{}, ", b.display())).unwrap_or_default()
        )
    };
    for comp in &c.node.components {
        match find_binary(ctx.paths, bundle, comp.name()) {
            None => fail(
                format!("binary-{comp}"),
                format!(
                    "no {comp} binary in {}: install it, pass --bundle DIR, or leave {comp} out of --components",
                    where_()
                ),
            ),
            Some(bin) if comp.is_kubernetes() => {
                if let Err(e) = crate::kube::version::detect(&bin) {
                    fail(format!("version-{comp}"), e.to_string());
                }
            }
            Some(_) => {}
        }
    }
    // What containerd runs pods with, and what the pod network needs.
    let mut helpers = vec![];
    if c.has(Component::Containerd) {
        helpers.extend([("runc", "runc"), ("containerd-shim-runc-v2", "containerd"), ("ctr", "containerd")]);
    }
    if c.has(Component::Kubelet) {
        helpers.extend([("iptables", "iptables"), ("ip", "iproute2")]);
    }
    for (cmd, package) in helpers {
        if find_binary(ctx.paths, bundle, cmd).is_none() {
            fail(format!("binary-{cmd}"), format!("no {cmd} in {}: install it (Debian: {package})", where_()));
        }
    }
    if c.has(Component::KubeProxy) && ctx.euid_is_root {
        if let Err(e) = crate::host::sysctl::ensure() {
            fail("kernel-network".into(), e.to_string());
        }
    }
    if c.has(Component::Kubelet) {
        let dir = &c.node.cni_bin_dir();
        let missing: Vec<_> = CNI_PLUGINS.iter().filter(|p| !dir.join(p).is_file()).copied().collect();
        if !missing.is_empty() {
            fail(
                "cni-plugins".into(),
                format!(
                    "the CNI plugins {} are not in {}: use a bundle that has them (cni/), install them \
                     (Debian: containernetworking-plugins), or set node.cniBinDir to where they are",
                    missing.join(", "),
                    dir.display()
                ),
            );
        }
    }
    if let (Some(vip), true) = (c.cluster.vip, c.has(Component::KubeApiserver) && adv_ok) {
        if let Err(e) = crate::vip::address::assigned().and_then(|all| vip_home(vip, adv, &all)) {
            fail("vip-subnet".into(), e);
        }
    }
    failures
}

/// The interface the virtual IP goes on (the one holding `adv`), checked:
/// `vip` must be in its subnet, where gratuitous ARP reaches the clients'
/// router.
fn vip_home(
    vip: Ipv4Addr,
    adv: IpAddr,
    all: &[crate::vip::address::Assigned],
) -> Result<crate::vip::address::Assigned, String> {
    let home = crate::vip::address::home(adv, all)?;
    if !crate::vip::address::in_subnet(vip, &home) {
        return Err(format!(
            "the virtual IP {vip} is not in the subnet of {} ({}/{}), where this master announces it: \
             give a free address of that subnet (vip=)",
            home.interface, home.address, home.prefix
        ));
    }
    Ok(home)
}

/// A virtual IP about to be used (a new cluster's, or one a re-run moves
/// the cluster to): in the subnet of this master's interface, and nobody
/// on the segment answers for it yet (an ARP probe).
pub fn vip_free(vip: Ipv4Addr, adv: IpAddr) -> Vec<Failure> {
    let found = crate::vip::address::assigned().and_then(|all| Ok((vip_home(vip, adv, &all)?, all)));
    let (home, all) = match found {
        Ok(found) => found,
        Err(message) => return vec![Failure { name: "vip-subnet".into(), message }],
    };
    let fail = |message: String| vec![Failure { name: "vip-in-use".into(), message }];
    if all.iter().any(|a| a.address == vip) {
        // This host's own copy (a former cluster's): the agent removes it.
        return vec![];
    }
    match crate::vip::arp::probe(&home.interface, vip) {
        Ok(None) => vec![],
        Ok(Some(mac)) => fail(format!(
            "{} answers ARP for the virtual IP {vip} on {}: the address is in use; give a free one (vip=), \
             or free it first",
            crate::vip::arp::mac_text(mac),
            home.interface
        )),
        Err(e) => fail(format!("cannot check that nobody uses the virtual IP {vip}: {e}")),
    }
}

/// What is worth saying but stops nothing.
pub fn warnings(c: &ClusterConfig) -> Vec<String> {
    let mut out = vec![];
    if c.has(Component::Kubelet) && crate::host::cgroups::is_v1() {
        out.push(
            "this host uses cgroup v1, which Kubernetes deprecated: kubelet runs here only because hakube sets \
             failCgroupV1: false, and a release after 1.37 may refuse it; boot with cgroup v2 \
             (systemd.unified_cgroup_hierarchy=1) before upgrading past 1.37"
                .to_owned(),
        );
    }
    if let (Some(vip), Some((cloud, how))) = (c.cluster.vip, crate::host::cloud::this_host()) {
        out.push(format!(
            "this host looks like a {cloud} virtual machine (its firmware says so): {cloud}'s network does not move \
             an address on gratuitous ARP, so the virtual IP {vip} reaches its holder only through {how}; \
             a load balancer of the provider's (load-balancer-address=) is the usual way there"
        ));
    }
    out
}

/// Fatal preflight failures, listed for the user.
#[derive(Debug, thiserror::Error)]
#[error(
    "preflight checks failed, nothing was written:\n{}\n(to go ahead anyway: --ignore-preflight-errors={})",
    .0.iter().map(|f| format!("  [{}] {}", f.name, f.message)).collect::<Vec<_>>().join("\n"),
    .0.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(",")
)]
pub struct PreflightFailed(pub Vec<Failure>);

/// Runs the checks for this host; returns the failures `ignore` waived, or
/// the fatal ones.
pub fn enforce(paths: &Paths, config: &ClusterConfig, ignore: &[String]) -> Result<Vec<Failure>, PreflightFailed> {
    let failures = run(&Context {
        paths,
        config,
        agent_running: crate::host::process::PidFile::holder(&paths.agent_pid_file()).is_some(),
        euid_is_root: nix::unistd::geteuid().is_root(),
    });
    let (fatal, ignored) = triage(failures, ignore);
    if fatal.is_empty() {
        Ok(ignored)
    } else {
        Err(PreflightFailed(fatal))
    }
}

const HAIRPIN_ATTEMPTS: u32 = 3;

/// Checks a load-balancer address before the cluster is changed to use it
/// (what kURL's hairpin check asks): it resolves, it accepts TCP, and a TLS
/// handshake through it reaches an API server whose certificate chains to
/// this cluster's CA (`ca_pem`; the name is not checked, since no
/// certificate names the address yet). Each failure is named; a later
/// check is skipped when an earlier one failed.
pub fn load_balancer(addr: &HostPort, ca_pem: &[u8]) -> Vec<Failure> {
    use std::net::ToSocketAddrs;
    let fail = |name: &str, message: String| vec![Failure { name: name.into(), message }];
    // Name resolution blocks: bounded from a thread of its own.
    let target = crate::https::target(addr);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(target.to_socket_addrs().map(Iterator::collect::<Vec<_>>));
    });
    let resolved = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(v)) if !v.is_empty() => v,
        Ok(Ok(_)) => return fail("load-balancer-resolves", format!("{} resolves to no address", addr.host)),
        Ok(Err(e)) => {
            return fail(
                "load-balancer-resolves",
                format!("{} does not resolve ({e}): give a name this host resolves, or an IP address", addr.host),
            )
        }
        Err(_) => return fail("load-balancer-resolves", format!("resolving {} took longer than 10s", addr.host)),
    };
    let mut errors = vec![];
    let accepted = resolved.iter().any(|sa| match std::net::TcpStream::connect_timeout(sa, Duration::from_secs(3)) {
        Ok(_) => true,
        Err(e) => {
            errors.push(format!("{sa}: {e}"));
            false
        }
    });
    if !accepted {
        return fail(
            "load-balancer-accepts",
            format!(
                "{addr} accepts no TCP connection ({}): is the load balancer up and listening on port {}?",
                errors.join("; "),
                addr.port
            ),
        );
    }
    // A balancer may send one connection to a master that died a moment
    // ago and is not yet taken out: it reaches the cluster if any of a few
    // connections, a second apart, does.
    let hairpin = async {
        let tls = std::sync::Arc::new(crate::https::chain_only_client_config(ca_pem).map_err(|e| e.to_string())?);
        let limits =
            crate::https::Limits { connect: Duration::from_secs(3), exchange: Duration::from_secs(5), max_body: 0 };
        let mut errors = vec![];
        let reached = crate::retry::Retry::attempts(HAIRPIN_ATTEMPTS, Duration::from_secs(1))
            .run_noting(
                || {
                    let tls = tls.clone();
                    async move {
                        crate::https::peer_certificate(addr, tls, limits).await.map_err(crate::retry::Failure::Again)
                    }
                },
                |e, _| errors.push(e.to_string()),
            )
            .await;
        let reached = reached.map(drop).map_err(|last| errors.push(last.to_string()));
        errors.dedup();
        reached.map_err(|()| format!("{HAIRPIN_ATTEMPTS} connections: {}", errors.join("; ")))
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match rt.map_err(|e| e.to_string()).and_then(|rt| rt.block_on(hairpin)) {
        Ok(()) => vec![],
        Err(e) => fail(
            "load-balancer-reaches-cluster",
            format!(
                "a TLS connection through {addr} does not reach an API server of this cluster ({e}): \
                 check that it passes TCP through (no TLS of its own) to the masters' API servers"
            ),
        ),
    }
}

/// Splits failures into fatal and ignored ones.
pub fn triage(failures: Vec<Failure>, ignore: &[String]) -> (Vec<Failure>, Vec<Failure>) {
    let all = ignore.iter().any(|i| i == "all");
    failures.into_iter().partition(|f| !(all || ignore.iter().any(|i| i.eq_ignore_ascii_case(&f.name))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{resolve, Sources};

    #[test]
    fn names_every_failure_and_ignores_on_request() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let name = || Ok("m1".to_owned());
        let address = || Ok("192.0.2.55".parse().unwrap());
        let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let flags = format!("node: {{components: [etcd], etcdClientPort: {free}, etcdPeerPort: {}}}", port - 1);
        let c = resolve(Sources {
            installed: None,
            file: None,
            flags: serde_norway::from_str(&flags).unwrap(),
            detect_name: &name,
            detect_address: &address,
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let ctx = Context { paths: &paths, config: &c, agent_running: false, euid_is_root: false };
        let mut names: Vec<_> = run(&ctx).into_iter().map(|f| f.name).collect();
        names.retain(|n| n != "binary-etcd"); // depends on the machine
        assert_eq!(names, ["root", "advertise-address", &format!("port-{port}")]);
        let (fatal, ignored) = triage(run(&ctx), &["root".into(), format!("PORT-{port}")]);
        assert!(fatal.iter().all(|f| f.name != "root" && !f.name.starts_with("port")));
        assert_eq!(ignored.len(), 2);
        assert!(triage(run(&ctx), &["all".into()]).0.is_empty());
        drop(busy);
    }

    #[test]
    fn loopback_addresses_are_local_and_documentation_ones_are_not() {
        assert!(address_is_local("127.0.0.1".parse().unwrap()));
        assert!(!address_is_local("192.0.2.1".parse().unwrap()));
    }
}
