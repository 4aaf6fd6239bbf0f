//! The command lines of the supervised components (pure), modelled on what
//! kubeadm writes into its static-pod manifests, pointing at hakube's PKI
//! and kubeconfigs.

use std::path::{Path, PathBuf};

use crate::config::{ClusterConfig, Component, InitialClusterState};
use crate::host::fs::FileSpec;
use crate::host::paths::Paths;

/// Taints a master registers with under `taint-control-plane`: the current
/// key, and the legacy one that older tolerations still name.
pub const CONTROL_PLANE_TAINTS: [&str; 2] =
    ["node-role.kubernetes.io/control-plane:NoSchedule", "node-role.kubernetes.io/master:NoSchedule"];

/// One supervised process, fully described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSpec {
    pub component: Component,
    pub args: Vec<String>,
    /// Files whose content the process reads at start: a change to any of
    /// them means the process must be restarted to pick it up.
    pub inputs: Vec<PathBuf>,
}

impl ComponentSpec {
    /// The command line as text, one argument a line (for golden tests and logs).
    pub fn render(&self) -> String {
        let mut out = format!("{}\n", self.component.name());
        for a in &self.args {
            out.push_str("  ");
            out.push_str(a);
            out.push('\n');
        }
        out
    }
}

fn flag(name: &str, value: impl std::fmt::Display) -> String {
    format!("--{name}={value}")
}

fn p(path: PathBuf) -> String {
    path.display().to_string()
}

pub fn etcd(paths: &Paths, c: &ClusterConfig) -> ComponentSpec {
    let pki = |n: &str| p(paths.pki(n));
    let adv = c.node.advertise_address;
    let client = c.etcd_client_url();
    let loopback = format!("https://127.0.0.1:{}", c.node.etcd_client_port);
    let listen_client = if adv.is_loopback() { client.clone() } else { format!("{loopback},{client}") };
    let initial_cluster =
        c.node.etcd.initial_cluster.clone().unwrap_or_else(|| format!("{}={}", c.node.name, c.etcd_peer_url()));
    let state = match c.node.etcd.initial_cluster_state {
        InitialClusterState::New => "new",
        InitialClusterState::Existing => "existing",
    };
    let args = vec![
        flag("name", &c.node.name),
        flag("data-dir", p(paths.etcd_data_dir())),
        flag("listen-client-urls", listen_client),
        flag("advertise-client-urls", &client),
        flag("listen-peer-urls", c.etcd_peer_url()),
        flag("initial-advertise-peer-urls", c.etcd_peer_url()),
        flag("initial-cluster", initial_cluster),
        flag("initial-cluster-state", state),
        flag("initial-cluster-token", &c.cluster.name),
        flag("client-cert-auth", true),
        flag("trusted-ca-file", pki("etcd/ca.crt")),
        flag("cert-file", pki("etcd/server.crt")),
        flag("key-file", pki("etcd/server.key")),
        flag("peer-client-cert-auth", true),
        flag("peer-trusted-ca-file", pki("etcd/ca.crt")),
        flag("peer-cert-file", pki("etcd/peer.crt")),
        flag("peer-key-file", pki("etcd/peer.key")),
        // Metrics stay on loopback, unauthenticated, as kubeadm sets them up.
        flag("listen-metrics-urls", format!("http://127.0.0.1:{}", c.node.etcd_peer_port + 1)),
        flag("snapshot-count", 10000),
        // Refuse to serve a member whose data diverged from its peers'.
        flag("experimental-initial-corrupt-check", true),
    ];
    let inputs = ["etcd/ca.crt", "etcd/server.crt", "etcd/server.key", "etcd/peer.crt", "etcd/peer.key"]
        .map(|n| paths.pki(n))
        .to_vec();
    ComponentSpec { component: Component::Etcd, args, inputs }
}

pub fn kube_apiserver(paths: &Paths, c: &ClusterConfig) -> ComponentSpec {
    let pki = |n: &str| p(paths.pki(n));
    let etcd_servers = format!("https://127.0.0.1:{}", c.node.etcd_client_port);
    let args = vec![
        flag("advertise-address", c.node.advertise_address),
        flag("secure-port", c.node.api_server_port),
        flag("allow-privileged", true),
        flag("authorization-mode", "Node,RBAC"),
        flag("client-ca-file", pki("ca.crt")),
        flag("enable-admission-plugins", "NodeRestriction"),
        flag("enable-bootstrap-token-auth", true),
        flag("etcd-cafile", pki("etcd/ca.crt")),
        flag("etcd-certfile", pki("apiserver-etcd-client.crt")),
        flag("etcd-keyfile", pki("apiserver-etcd-client.key")),
        flag("etcd-servers", etcd_servers),
        flag("kubelet-client-certificate", pki("apiserver-kubelet-client.crt")),
        flag("kubelet-client-key", pki("apiserver-kubelet-client.key")),
        flag("kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname"),
        flag("proxy-client-cert-file", pki("front-proxy-client.crt")),
        flag("proxy-client-key-file", pki("front-proxy-client.key")),
        flag("requestheader-allowed-names", "front-proxy-client"),
        flag("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        flag("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        flag("requestheader-group-headers", "X-Remote-Group"),
        flag("requestheader-username-headers", "X-Remote-User"),
        flag("service-account-issuer", format!("https://kubernetes.default.svc.{}", c.cluster.dns_domain)),
        flag("service-account-key-file", pki("sa.pub")),
        flag("service-account-signing-key-file", pki("sa.key")),
        flag("service-cluster-ip-range", c.cluster.service_cidr),
        flag("tls-cert-file", pki("apiserver.crt")),
        flag("tls-private-key-file", pki("apiserver.key")),
    ];
    let inputs = [
        "ca.crt",
        "apiserver.crt",
        "apiserver.key",
        "apiserver-etcd-client.crt",
        "apiserver-kubelet-client.crt",
        "front-proxy-client.crt",
        "front-proxy-ca.crt",
        "sa.pub",
        "sa.key",
    ]
    .map(|n| paths.pki(n))
    .to_vec();
    ComponentSpec { component: Component::KubeApiserver, args, inputs }
}

pub fn kube_controller_manager(paths: &Paths, c: &ClusterConfig) -> ComponentSpec {
    let pki = |n: &str| p(paths.pki(n));
    let kc = p(paths.kubeconfig("controller-manager"));
    let args = vec![
        flag("authentication-kubeconfig", &kc),
        flag("authorization-kubeconfig", &kc),
        flag("bind-address", "127.0.0.1"),
        flag("client-ca-file", pki("ca.crt")),
        flag("cluster-name", &c.cluster.name),
        flag("cluster-cidr", c.cluster.pod_cidr),
        flag("allocate-node-cidrs", true),
        flag("cluster-signing-cert-file", pki("ca.crt")),
        flag("cluster-signing-key-file", pki("ca.key")),
        flag("controllers", "*,bootstrapsigner,tokencleaner"),
        flag("kubeconfig", &kc),
        flag("leader-elect", true),
        flag("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        flag("root-ca-file", pki("ca.crt")),
        flag("service-account-private-key-file", pki("sa.key")),
        flag("service-cluster-ip-range", c.cluster.service_cidr),
        flag("use-service-account-credentials", true),
    ];
    let inputs = vec![paths.kubeconfig("controller-manager"), paths.pki("ca.crt"), paths.pki("sa.key")];
    ComponentSpec { component: Component::KubeControllerManager, args, inputs }
}

pub fn kube_scheduler(paths: &Paths, _c: &ClusterConfig) -> ComponentSpec {
    let kc = p(paths.kubeconfig("scheduler"));
    let args = vec![
        flag("authentication-kubeconfig", &kc),
        flag("authorization-kubeconfig", &kc),
        flag("bind-address", "127.0.0.1"),
        flag("kubeconfig", &kc),
        flag("leader-elect", true),
    ];
    ComponentSpec { component: Component::KubeScheduler, args, inputs: vec![paths.kubeconfig("scheduler")] }
}

/// Whether this node registers as a master (it runs an API server).
fn is_master(c: &ClusterConfig) -> bool {
    c.has(Component::KubeApiserver) || c.has(Component::Etcd)
}

pub fn kubelet(paths: &Paths, c: &ClusterConfig) -> ComponentSpec {
    let mut args = vec![
        flag("config", p(kubelet_config_path(paths))),
        flag("kubeconfig", p(paths.kubeconfig("kubelet"))),
        flag("root-dir", p(paths.kubelet_root_dir())),
        flag("hostname-override", &c.node.name),
        flag("node-ip", c.node.advertise_address),
    ];
    if is_master(c) && c.cluster.taint_control_plane {
        args.push(flag("register-with-taints", CONTROL_PLANE_TAINTS.join(",")));
    }
    let inputs = vec![kubelet_config_path(paths), paths.kubeconfig("kubelet"), paths.pki("ca.crt")];
    ComponentSpec { component: Component::Kubelet, args, inputs }
}

pub fn kubelet_config_path(paths: &Paths) -> PathBuf {
    paths.kubelet_dir().join("config.yaml")
}

/// The kubelet's KubeletConfiguration file (pure).
pub fn kubelet_config(paths: &Paths, c: &ClusterConfig) -> FileSpec {
    let text = format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
cgroupDriver: systemd
clusterDNS:
- {dns}
clusterDomain: {domain}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
rotateCertificates: true
staticPodPath: \"\"
",
        ca = paths.pki("ca.crt").display(),
        dns = c.cluster.service_cidr.nth(10),
        domain = c.cluster.dns_domain,
    );
    FileSpec::new(kubelet_config_path(paths), text, 0o644)
}

/// The specs of every component the node runs, in start order.
pub fn specs(paths: &Paths, c: &ClusterConfig) -> Vec<ComponentSpec> {
    let mut components = c.node.components.clone();
    components.sort();
    components.dedup();
    components
        .into_iter()
        .map(|comp| match comp {
            Component::Etcd => etcd(paths, c),
            Component::KubeApiserver => kube_apiserver(paths, c),
            Component::KubeControllerManager => kube_controller_manager(paths, c),
            Component::KubeScheduler => kube_scheduler(paths, c),
            Component::Kubelet => kubelet(paths, c),
        })
        .collect()
}

/// Finds a component's binary: `<root>/var/lib/hakube/bin`, then the bundle
/// directory, then `PATH`.
pub fn find_binary(paths: &Paths, bundle: Option<&Path>, name: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    std::iter::once(paths.bin_dir())
        .chain(bundle.map(Path::to_path_buf))
        .chain(path_dirs)
        .map(|d| d.join(name))
        .find(|f| is_executable(f))
}

fn is_executable(f: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(f).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::test_config as config;

    #[test]
    fn command_lines_match_golden() {
        let paths = Paths::new("/");
        let c = config("cluster: {ha: true, loadBalancerAddress: 'lb.example.test:6443', taintControlPlane: true}");
        let all: String = specs(&paths, &c).iter().map(ComponentSpec::render).collect();
        crate::golden::check("components-master.txt", &all);
        crate::golden::check("kubelet-config.yaml", &String::from_utf8(kubelet_config(&paths, &c).contents).unwrap());
    }

    #[test]
    fn taints_only_when_asked() {
        let paths = Paths::new("/");
        let tainted = kubelet(&paths, &config("cluster: {taintControlPlane: true}"));
        assert!(tainted.args.contains(&format!(
            "--register-with-taints={}",
            "node-role.kubernetes.io/control-plane:NoSchedule,node-role.kubernetes.io/master:NoSchedule"
        )));
        let plain = kubelet(&paths, &config("{}"));
        assert!(!plain.args.iter().any(|a| a.starts_with("--register-with-taints")));
    }

    #[test]
    fn etcd_on_loopback_listens_once() {
        let c = config("node: {advertiseAddress: 127.0.0.1}");
        let e = etcd(&Paths::new("/r"), &c);
        assert!(e.args.contains(&"--listen-client-urls=https://127.0.0.1:2379".to_owned()));
        assert!(e.args.contains(&"--initial-cluster=m1=https://127.0.0.1:2380".to_owned()));
        assert!(e.args.contains(&"--data-dir=/r/var/lib/hakube/etcd".to_owned()));
    }
}
