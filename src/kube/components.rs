//! The command lines of the supervised components (pure), modelled on what
//! kubeadm writes into its static-pod manifests, pointing at hakube's PKI
//! and kubeconfigs.

use std::path::PathBuf;

pub use super::spec::{flag, p, ComponentSpec, HostFacts};
use crate::config::{ClusterConfig, Component, InitialClusterState};
use crate::host::fs::FileSpec;
use crate::host::paths::Paths;

/// controller-manager's and scheduler's secure ports (kubeadm's probes use
/// the same).
pub const CONTROLLER_MANAGER_PORT: u16 = 10257;
pub const SCHEDULER_PORT: u16 = 10259;
/// kubelet's healthz endpoint (plain HTTP on loopback, its default).
pub const KUBELET_HEALTHZ_PORT: u16 = 10248;
/// kube-proxy's healthz (200 once its rules are in sync) and metrics, both
/// on loopback only.
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;
pub const KUBE_PROXY_METRICS_PORT: u16 = 10249;

/// Taints a master registers with under `taint-control-plane`: the current
/// key, and the legacy one that older tolerations still name.
pub const CONTROL_PLANE_TAINTS: [&str; 2] =
    ["node-role.kubernetes.io/control-plane:NoSchedule", "node-role.kubernetes.io/master:NoSchedule"];

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
        flag("listen-metrics-urls", format!("http://{}", c.etcd_metrics_address())),
        flag("snapshot-count", 10000),
        // Refuse to serve a member whose data diverged from its peers'.
        flag("experimental-initial-corrupt-check", true),
    ];
    // Not its own pairs: etcd reads its serving and peer certificates on
    // every handshake, so a renewal reaches it with no restart (the CA it
    // reads once).
    let inputs = vec![paths.pki("etcd/ca.crt")];
    ComponentSpec { component: Component::Etcd, args, inputs, files: vec![], cgroup: None }
}

/// See kube-apiserver's `shutdown-delay-duration` above: (fall + 2) check
/// intervals of the node-local balancer, between 2 and 8 s (within the
/// agent's stop grace of 10 s).
pub fn shutdown_delay(c: &ClusterConfig) -> std::time::Duration {
    let lb = &c.node.local_load_balancer;
    let ms = u64::from(lb.check_interval_ms) * u64::from(lb.fall + 2);
    std::time::Duration::from_millis(ms.clamp(2_000, 8_000))
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
        flag("encryption-provider-config", pki(crate::pki::ENCRYPTION_CONFIG)),
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
        // Stopped (a restart for renewed certificates, a reset), it keeps
        // serving with /readyz failing for this long before it closes its
        // listener: long enough for every node-local balancer to take it out
        // (fall checks one interval apart, and one more), so no new request
        // reaches a server that would answer "apiserver is shutting down".
        flag("shutdown-delay-duration", format!("{}ms", shutdown_delay(c).as_millis())),
    ];
    // Not its serving certificate: kube-apiserver reloads that itself
    // (since 1.17), so a new name, as a load-balancer address change adds
    // one, reaches clients with no restart. Its key is kept across
    // reissues, so the pair it reads always matches.
    let inputs = [
        "ca.crt",
        "apiserver-etcd-client.crt",
        "apiserver-kubelet-client.crt",
        "front-proxy-client.crt",
        "front-proxy-ca.crt",
        "sa.pub",
        "sa.key",
        crate::pki::ENCRYPTION_CONFIG,
    ]
    .map(|n| paths.pki(n))
    .to_vec();
    ComponentSpec { component: Component::KubeApiserver, args, inputs, files: vec![], cgroup: None }
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
        // Kubelets' client certificates (renewed by CSR) live as long as
        // every other leaf of the cluster, not the signer's default year.
        flag("cluster-signing-duration", format!("{}s", c.cluster.certificate_validity.0.as_secs())),
        flag("controllers", "*,bootstrapsigner,tokencleaner"),
        // It creates the FlexVolume directory at start, like kubelet.
        flag("flex-volume-plugin-dir", p(paths.kubelet_volume_plugin_dir())),
        flag("kubeconfig", &kc),
        flag("leader-elect", true),
        flag("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        flag("root-ca-file", pki("ca.crt")),
        flag("service-account-private-key-file", pki("sa.key")),
        flag("service-cluster-ip-range", c.cluster.service_cidr),
        flag("use-service-account-credentials", true),
    ];
    let inputs = vec![paths.kubeconfig("controller-manager"), paths.pki("ca.crt"), paths.pki("sa.key")];
    ComponentSpec { component: Component::KubeControllerManager, args, inputs, files: vec![], cgroup: None }
}

pub fn kube_scheduler(paths: &Paths) -> ComponentSpec {
    let kc = p(paths.kubeconfig("scheduler"));
    let args = vec![
        flag("authentication-kubeconfig", &kc),
        flag("authorization-kubeconfig", &kc),
        flag("bind-address", "127.0.0.1"),
        flag("kubeconfig", &kc),
        flag("leader-elect", true),
    ];
    ComponentSpec {
        component: Component::KubeScheduler,
        args,
        inputs: vec![paths.kubeconfig("scheduler")],
        files: vec![],
        cgroup: None,
    }
}

/// Whether this node registers as a master (it runs an API server).
fn is_master(c: &ClusterConfig) -> bool {
    c.has(Component::KubeApiserver) || c.has(Component::Etcd)
}

/// The cgroup under which this node's kubelet puts its pods. On a real host
/// the default; several simulated hosts on one machine each get their own.
pub fn kubelet_cgroup_root(paths: &Paths, facts: &HostFacts) -> Option<String> {
    if paths.is_host_root() || facts.systemd_cgroups {
        return None;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, paths.root().as_os_str().as_encoded_bytes());
    Some(format!("/hakube-{}", &crate::pki::hex(digest.as_ref())[..10]))
}

pub fn kubelet(paths: &Paths, c: &ClusterConfig, facts: &HostFacts) -> ComponentSpec {
    let mut args = vec![
        flag("config", p(paths.kubelet_config())),
        flag("kubeconfig", p(paths.kubeconfig("kubelet"))),
        flag("root-dir", p(paths.kubelet_root_dir())),
        flag("cert-dir", p(paths.kubelet_cert_dir())),
        flag("hostname-override", &c.node.name),
        flag("node-ip", c.node.advertise_address),
    ];
    if is_master(c) && c.cluster.taint_control_plane {
        args.push(flag("register-with-taints", CONTROL_PLANE_TAINTS.join(",")));
    }
    let inputs = vec![paths.kubelet_config(), paths.kubeconfig("kubelet"), paths.pki("ca.crt")];
    let files = vec![kubelet_config(paths, c, facts)];
    ComponentSpec { component: Component::Kubelet, args, inputs, files, cgroup: kubelet_cgroup_root(paths, facts) }
}

/// The kubelet's KubeletConfiguration file (pure), serialized from a value
/// so that no name can break its structure.
pub fn kubelet_config(paths: &Paths, c: &ClusterConfig, facts: &HostFacts) -> FileSpec {
    let mut conf = serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": p(paths.pki("ca.crt"))},
        },
        "authorization": {"mode": "Webhook"},
        // Only a fallback since 1.34: kubelet asks containerd 2 for the
        // driver it uses (KEP-4033), which hakube sets to the same.
        "cgroupDriver": if facts.systemd_cgroups { "systemd" } else { "cgroupfs" },
        "clusterDNS": [c.cluster.service_cidr.nth(10).to_string()],
        "clusterDomain": c.cluster.dns_domain,
        "containerRuntimeEndpoint": crate::runtime::containerd::endpoint(paths),
        // Images here are imported, not pulled (no registry need be
        // reachable). Under kubelet's default (NeverVerifyPreloadedImages,
        // KEP-2535) one failed pull of an imported image (a pod with
        // `imagePullPolicy: Always`) leaves a pull intent behind, and from
        // then on every pod on that node that uses the image must pull it
        // too: where nothing can be pulled, none of them starts again.
        // NeverVerify uses an image that is present, as kubelet did before
        // 1.35. (What it gives up: a pod may use an image another pod pulled
        // with credentials it lacks; the AlwaysPullImages admission plugin
        // restores that check where a cluster needs it.)
        "imagePullCredentialsVerificationPolicy": "NeverVerify",
        // CoreDNS forwards what is not the cluster's to the resolvers pods
        // with `dnsPolicy: Default` get: this file's.
        "resolvConf": p(facts.resolv_conf.clone()),
        "rotateCertificates": true,
        "staticPodPath": "",
        "volumePluginDir": p(paths.kubelet_volume_plugin_dir()),
    });
    if let Some(root) = kubelet_cgroup_root(paths, facts) {
        conf["cgroupRoot"] = root.into();
    }
    if !paths.is_host_root() {
        // A simulated host (the sandbox, the tests) shares the machine's
        // disk with everything else on it: kubelet's default thresholds,
        // percentages of that whole disk (imagefs 15%), would mark every
        // such node DiskPressure on a busy machine and schedule nothing.
        // Absolute floors keep eviction for a disk that really runs out.
        conf["evictionHard"] = serde_json::json!({
            "memory.available": "100Mi",
            "nodefs.available": "1Gi",
            "imagefs.available": "1Gi",
            "nodefs.inodesFree": "5%",
            "imagefs.inodesFree": "5%",
        });
    }
    if facts.cgroup_v1 {
        // From 1.35 kubelet refuses a cgroup v1 host unless told this
        // (KEP-5573); 1.37 still honours it. Set only where the host is v1:
        // a v2 host gets kubelet's own default.
        conf["failCgroupV1"] = false.into();
    }
    let text = serde_norway::to_string(&conf).expect("kubelet config serializes");
    FileSpec::new(paths.kubelet_config(), text, 0o644)
}

pub fn kube_proxy_config_path(paths: &Paths) -> PathBuf {
    paths.data_dir().join("kube-proxy/config.yaml")
}

/// kube-proxy as a host process (as k3s runs it): no image to build, the
/// host's own iptables, and the agent's supervision. It reaches the API
/// through the node-local balancer with its own certificate
/// (`system:kube-proxy`, bound to `system:node-proxier` by default RBAC).
pub fn kube_proxy(paths: &Paths, c: &ClusterConfig) -> ComponentSpec {
    let lo = |port: u16| format!("127.0.0.1:{port}");
    let conf = serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": p(paths.kubeconfig("kube-proxy"))},
        "hostnameOverride": c.node.name.as_str(),
        // iptables: the default, and what Debian 12's iptables-nft and the
        // CNI portmap plugin share (ipvs is deprecated since 1.35).
        "mode": "iptables",
        "clusterCIDR": c.cluster.pod_cidr.to_string(),
        "healthzBindAddress": lo(KUBE_PROXY_HEALTHZ_PORT),
        "metricsBindAddress": lo(KUBE_PROXY_METRICS_PORT),
        // Leave the host's conntrack table size and timeouts as they are:
        // they are the administrator's (and global to the machine, where
        // several simulated hosts share a kernel).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        // NodePorts on the node's own address (the Node's InternalIP), not
        // on every address the host has.
        "nodePortAddresses": ["primary"],
    });
    let file = FileSpec::new(
        kube_proxy_config_path(paths),
        serde_norway::to_string(&conf).expect("kube-proxy config serializes"),
        0o644,
    );
    ComponentSpec {
        component: Component::KubeProxy,
        args: vec![flag("config", p(kube_proxy_config_path(paths)))],
        inputs: vec![kube_proxy_config_path(paths), paths.kubeconfig("kube-proxy")],
        files: vec![file],
        cgroup: None,
    }
}

/// The node's containerd, with its config file (see [`crate::runtime`]).
fn containerd(paths: &Paths, c: &ClusterConfig, facts: &HostFacts) -> ComponentSpec {
    let runtime = crate::runtime::containerd::Runtime {
        pause_image: &facts.pause_image,
        restrict_oom_score_adj: facts.restrict_oom_score_adj,
        systemd_cgroups: facts.systemd_cgroups,
        cni_bin_dir: c.node.cni_bin_dir(),
    };
    ComponentSpec {
        component: Component::Containerd,
        args: vec![flag("config", p(paths.containerd_config()))],
        inputs: vec![paths.containerd_config()],
        files: vec![crate::runtime::containerd::config(paths, &runtime)],
        cgroup: None,
    }
}

/// The specs of every component the node runs, in start order.
pub fn specs(paths: &Paths, c: &ClusterConfig, facts: &HostFacts) -> Vec<ComponentSpec> {
    let mut components = c.node.components.clone();
    components.sort();
    components.dedup();
    components
        .into_iter()
        .map(|comp| match comp {
            Component::Etcd => etcd(paths, c),
            Component::Containerd => containerd(paths, c, facts),
            Component::KubeApiserver => kube_apiserver(paths, c),
            Component::KubeControllerManager => kube_controller_manager(paths, c),
            Component::KubeScheduler => kube_scheduler(paths),
            Component::Kubelet => kubelet(paths, c, facts),
            Component::KubeProxy => kube_proxy(paths, c),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::test_config as config;
    use crate::kube::version::KubeVersion;

    pub(crate) fn facts(minor: u32) -> HostFacts {
        let v = KubeVersion::new(1, minor, 0);
        HostFacts {
            versions: Component::ALL.into_iter().filter(|c| c.is_kubernetes()).map(|c| (c, v)).collect(),
            systemd_cgroups: true,
            restrict_oom_score_adj: false,
            pause_image: "hakube.local/pause:3.10".into(),
            cgroup_v1: false,
            resolv_conf: "/etc/resolv.conf".into(),
        }
    }

    fn render_all(paths: &Paths, c: &ClusterConfig, facts: &HostFacts) -> String {
        let mut out = String::new();
        for s in specs(paths, c, facts) {
            out.push_str(&s.render());
            for f in &s.files {
                out.push_str(&format!(
                    "--- {} ({:o})\n{}",
                    f.path.display(),
                    f.mode,
                    String::from_utf8_lossy(&f.contents)
                ));
            }
        }
        out
    }

    #[test]
    fn command_lines_match_golden_for_each_version() {
        let paths = Paths::new("/");
        let c = config("cluster: {ha: true, loadBalancerAddress: 'lb.example.test:6443', taintControlPlane: true}");
        for minor in 35..=37 {
            crate::golden::check(&format!("components-master-1.{minor}.txt"), &render_all(&paths, &c, &facts(minor)));
        }
    }

    #[test]
    fn a_simulated_host_keeps_kubelet_and_containerd_inside_its_root() {
        let paths = Paths::new("/srv/hosts/w1");
        let c = config("node: {components: [containerd, kubelet, kube-proxy]}");
        let mut f = facts(37);
        f.systemd_cgroups = false;
        f.restrict_oom_score_adj = true;
        f.cgroup_v1 = true;
        f.resolv_conf = "/srv/hosts/w1/etc/resolv.conf".into();
        let all = render_all(&paths, &c, &f);
        crate::golden::check("components-worker-sandbox-1.37.txt", &all);
        for line in all.lines().filter(|l| l.contains('/')) {
            let path_like = line.split(['=', ' ', '"']).filter(|w| w.starts_with('/'));
            for w in path_like {
                let ok = w.starts_with("/srv/hosts/w1/") || w.starts_with("/usr/lib/cni") || w.starts_with("/hakube-");
                assert!(ok, "{w:?} in {line:?} is outside the root");
            }
        }
        // Two roots never share a cgroup.
        let other = kubelet_cgroup_root(&Paths::new("/srv/hosts/w2"), &f);
        assert_ne!(kubelet_cgroup_root(&paths, &f), other);
        assert!(other.is_some());
        assert_eq!(kubelet_cgroup_root(&Paths::new("/"), &f), None);
    }

    #[test]
    fn taints_and_labels_only_for_masters_and_when_asked() {
        let paths = Paths::new("/");
        let f = facts(37);
        let tainted = kubelet(&paths, &config("cluster: {taintControlPlane: true}"), &f);
        assert!(tainted.args.contains(&format!(
            "--register-with-taints={}",
            "node-role.kubernetes.io/control-plane:NoSchedule,node-role.kubernetes.io/master:NoSchedule"
        )));
        let plain = kubelet(&paths, &config("{}"), &f);
        assert!(!plain.args.iter().any(|a| a.starts_with("--register-with-taints")));
        let worker = kubelet(
            &paths,
            &config("cluster: {taintControlPlane: true}\nnode: {components: [containerd, kubelet]}"),
            &f,
        );
        assert!(!worker.args.iter().any(|a| a.starts_with("--register-with-taints")));
        // kubelet refuses node-role labels on itself (NodeRestriction): the
        // cluster controller labels masters.
        assert!(!tainted.args.iter().any(|a| a.starts_with("--node-labels")));
    }

    #[test]
    fn only_a_simulated_hosts_kubelet_gets_absolute_disk_floors() {
        let (c, f) = (config("{}"), facts(37));
        let real = String::from_utf8(kubelet_config(&Paths::new("/"), &c, &f).contents).unwrap();
        assert!(!real.contains("evictionHard"), "{real}");
        let sim = String::from_utf8(kubelet_config(&Paths::new("/srv/h1"), &c, &f).contents).unwrap();
        let v: serde_norway::Value = serde_norway::from_str(&sim).unwrap();
        assert_eq!(v["evictionHard"]["imagefs.available"].as_str(), Some("1Gi"), "{sim}");
        assert_eq!(v["evictionHard"]["nodefs.available"].as_str(), Some("1Gi"), "{sim}");
        // Every signal is named: kubelet sets the ones left out to zero.
        assert_eq!(v["evictionHard"].as_mapping().map(|m| m.len()), Some(5), "{sim}");
    }

    #[test]
    fn kubelet_uses_an_imported_image_even_after_a_failed_pull_of_it() {
        let conf = String::from_utf8(kubelet_config(&Paths::new("/"), &config("{}"), &facts(37)).contents).unwrap();
        let v: serde_norway::Value = serde_norway::from_str(&conf).unwrap();
        assert_eq!(v["imagePullCredentialsVerificationPolicy"].as_str(), Some("NeverVerify"), "{conf}");
    }

    #[test]
    fn kubelet_is_told_to_run_on_cgroup_v1_only_where_the_host_is_v1() {
        let paths = Paths::new("/");
        let c = config("{}");
        let mut f = facts(37);
        let v2 = String::from_utf8(kubelet_config(&paths, &c, &f).contents).unwrap();
        assert!(!v2.contains("failCgroupV1"), "{v2}");
        f.cgroup_v1 = true;
        let v1 = String::from_utf8(kubelet_config(&paths, &c, &f).contents).unwrap();
        assert!(v1.contains("failCgroupV1: false"), "{v1}");
    }

    #[test]
    fn a_name_cannot_break_the_rendered_files() {
        // A node name is validated, but the files must not depend on it:
        // they are serialized, so a quote stays inside its value.
        let paths = Paths::new("/srv/a\"b\nc");
        let c = config("{}");
        let f = facts(37);
        for spec in specs(&paths, &c, &f) {
            for file in spec.files {
                let text = String::from_utf8(file.contents).unwrap();
                if file.path.extension().is_some_and(|e| e == "yaml") {
                    let v: serde_norway::Value = serde_norway::from_str(&text).expect("YAML");
                    assert!(v.get("kind").is_some(), "{text}");
                }
            }
        }
    }

    #[test]
    fn etcd_on_loopback_listens_once() {
        let c = config("node: {advertiseAddress: 127.0.0.1, components: [etcd]}");
        let e = etcd(&Paths::new("/r"), &c);
        assert!(e.args.contains(&"--listen-client-urls=https://127.0.0.1:2379".to_owned()));
        assert!(e.args.contains(&"--initial-cluster=m1=https://127.0.0.1:2380".to_owned()));
        assert!(e.args.contains(&"--data-dir=/r/var/lib/hakube/etcd".to_owned()));
    }
}
