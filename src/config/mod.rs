//! The cluster config: one versioned YAML file per host, meant for version
//! control, and the merge rules that turn a re-run of `install` into a
//! converging change rather than a rewrite.
//!
//! Sources are merged as YAML trees, lowest first: built-in defaults, the
//! file already on the host, a `--config FILE`, then the command line. The
//! merged tree is then deserialized into [`ClusterConfig`], whose fields are
//! validated newtypes, so a bad value is refused before anything is written.

pub mod lenient;
pub mod types;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};

pub use types::{
    CertSan, Cidr, Component, Host, HostPort, KeyAlgorithm, NodeName, Retention, SnapshotInterval, Span, Toleration,
};

pub const API_VERSION: &str = "hakube.io/v1alpha1";
pub const KIND: &str = "ClusterConfig";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid YAML: {source}")]
    Yaml { path: String, source: serde_norway::Error },
    #[error("{path}: apiVersion {found:?} is not supported: this hakube reads apiVersion {API_VERSION:?}")]
    ApiVersion { path: String, found: String },
    #[error("{path}: kind {found:?} is not supported: expected kind {KIND:?}")]
    Kind { path: String, found: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(
        "{field} cannot change on an installed node (it is {old}, asked for {new}): \
         run `hakube reset` on this node first, or leave {field} as it is"
    )]
    Immutable { field: &'static str, old: String, new: String },
}

/// Cluster-wide settings: the same on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    /// Multi-master mode. Sticky: once set, a re-run never clears it.
    pub ha: bool,
    /// External TCP load balancer in front of every master's API server.
    pub load_balancer_address: Option<HostPort>,
    /// A virtual IP (IPv4) that one healthy master holds at a time: the
    /// cluster's external address (`loadBalancerAddress` is VIP:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
    /// Keep workloads off masters (`node-role.kubernetes.io/control-plane:NoSchedule`).
    pub taint_control_plane: bool,
    pub service_cidr: Cidr,
    pub pod_cidr: Cidr,
    pub dns_domain: String,
    pub cert_sans: Vec<CertSan>,
    pub key_algorithm: KeyAlgorithm,
    /// How long a node may be lost (its heartbeat and its Kubernetes signal
    /// both stale) before the elected agent purges it; `never` to keep it.
    #[serde(default = "default_toleration")]
    pub lost_node_toleration: Toleration,
    /// How often every master snapshots its own etcd member (`never`: no
    /// scheduled snapshots; `hakube etcd snapshot save` still works).
    #[serde(default = "default_snapshot_interval")]
    pub etcd_snapshot_interval: SnapshotInterval,
    /// How many scheduled snapshots each master keeps (its newest).
    #[serde(default = "default_snapshot_retention")]
    pub etcd_snapshot_retention: Retention,
    /// How long a leaf certificate (not a CA) lives when issued.
    #[serde(default = "default_certificate_validity")]
    pub certificate_validity: Span,
    /// How long before its expiry each agent renews a leaf of its node
    /// (masters one at a time); at most half the validity.
    #[serde(default = "default_certificate_renew_before")]
    pub certificate_renew_before: Span,
    /// A change of `loadBalancerAddress` under way, which the elected agent
    /// drives phase by phase (`cluster::lbchange`). Only hakube writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_change: Option<LbChange>,
}

/// A change of the load-balancer address, from `from` (none: the cluster
/// had no external balancer) to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LbChange {
    pub from: Option<HostPort>,
    pub to: HostPort,
    pub phase: LbPhase,
    pub started_by: String,
    pub started_at: u64,
    /// The virtual IP in force when the change started, when the change
    /// moves or removes it: the masters hold it until the change is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_vip: Option<std::net::Ipv4Addr>,
    /// The virtual IP the change moves to (the cluster's from the switch
    /// on): the masters hold it from the start, and the switch waits until
    /// one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_vip: Option<std::net::Ipv4Addr>,
}

/// The phases of a load-balancer address change, in order. The address in
/// force (`loadBalancerAddress`) is `from` during `add-name`, `to` after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbPhase {
    /// Every master's API server certificate names both addresses.
    AddName,
    /// Admin kubeconfigs use `to`; the certificates still name both.
    Switch,
    /// The certificates name `to` only.
    DropName,
}

impl LbPhase {
    pub fn next(self) -> Option<LbPhase> {
        match self {
            LbPhase::AddName => Some(LbPhase::Switch),
            LbPhase::Switch => Some(LbPhase::DropName),
            LbPhase::DropName => None,
        }
    }

    /// What the phase does, for people.
    pub fn what(self) -> &'static str {
        match self {
            LbPhase::AddName => "every API server certificate names both addresses",
            LbPhase::Switch => "admin kubeconfigs and new joins use the new address",
            LbPhase::DropName => "the old name is dropped from the certificates",
        }
    }
}

impl std::fmt::Display for LbPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LbPhase::AddName => "add-name",
            LbPhase::Switch => "switch",
            LbPhase::DropName => "drop-name",
        })
    }
}

impl ClusterSpec {
    /// Every load-balancer address the API servers' certificates must name
    /// now: the one in force, and both ends of a change until its old name
    /// is dropped.
    pub fn load_balancer_names(&self) -> Vec<&HostPort> {
        let mut v: Vec<&HostPort> = self.load_balancer_address.iter().collect();
        if let Some(ch) = &self.load_balancer_change {
            if ch.phase != LbPhase::DropName {
                for a in ch.from.iter().chain([&ch.to]) {
                    if !v.contains(&a) {
                        v.push(a);
                    }
                }
            }
        }
        v
    }
}

/// The node-local load balancer: every node's agent passes TCP through to
/// the masters' API servers, and the node's own kubelet goes through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalLoadBalancer {
    /// Listens on 127.0.0.1 at this port.
    pub port: u16,
    /// Milliseconds between two active checks (`GET /readyz`) of a backend.
    pub check_interval_ms: u32,
    /// Failed checks in a row that take a backend out.
    pub fall: u32,
    /// Passed checks in a row that bring it back.
    pub rise: u32,
}

impl Default for LocalLoadBalancer {
    fn default() -> Self {
        LocalLoadBalancer { port: 6444, check_interval_ms: 1000, fall: 2, rise: 2 }
    }
}

fn default_toleration() -> Toleration {
    Toleration::After(std::time::Duration::from_secs(3600))
}

/// A year, as kubeadm, k3s and k0s issue them.
fn default_certificate_validity() -> Span {
    Span(std::time::Duration::from_secs(365 * 86_400))
}

/// 120 days, as k3s renews since 2025 (it was 90): a renewal that fails
/// leaves four months to notice and act, and the alerts most clusters run
/// (certificate 28 days left) never fire on a healthy one.
fn default_certificate_renew_before() -> Span {
    Span(std::time::Duration::from_secs(120 * 86_400))
}

/// Twice a day, five kept: two and a half days of history on every master,
/// as k3s and RKE2 keep by default.
fn default_snapshot_interval() -> SnapshotInterval {
    SnapshotInterval::Every(std::time::Duration::from_secs(12 * 3600))
}

fn default_snapshot_retention() -> Retention {
    Retention::try_from(5).expect("5 is in range")
}

/// How this node's etcd member starts: `new` for the first master, `existing`
/// with the membership it joined for the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdMemberSpec {
    pub initial_cluster_state: InitialClusterState,
    /// `name=peerURL,…`; empty means this node alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_cluster: Option<String>,
    /// Client URLs of the members when this node joined: where a re-run of
    /// an interrupted join finds the cluster again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join_endpoints: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialClusterState {
    New,
    Existing,
}

/// Settings of this node alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: NodeName,
    pub advertise_address: IpAddr,
    /// What the agent supervises here. Production runs all of them.
    pub components: Vec<Component>,
    /// Run the agent as the `hakube.service` unit (when systemd is PID 1).
    pub systemd: bool,
    /// Where component binaries come from, after `<root>/var/lib/hakube/bin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
    /// During an upgrade, the bundle this master's control plane (etcd,
    /// kube-apiserver, kube-controller-manager, kube-scheduler) already
    /// runs from, while its kubelet and kube-proxy stay on `bundle` until
    /// every API server is new (set and cleared by the agent as the
    /// upgrade reaches this node: [`crate::cluster::upgrade`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_bundle: Option<PathBuf>,
    /// An Ed25519 public key (PEM) that bundle files must be signed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_key: Option<PathBuf>,
    /// Where the CNI plugins the pod network uses (bridge, host-local,
    /// loopback, portmap) are installed; unset, the bundle's `cni/` (see
    /// [`NodeSpec::cni_bin_dir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_bin_dir: Option<PathBuf>,
    pub api_server_port: u16,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    /// The join API on masters (HTTPS).
    pub join_api_port: u16,
    /// A worker's way to the API servers when there is no load balancer:
    /// the masters it learnt of when it joined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_servers: Vec<HostPort>,
    pub etcd: EtcdMemberSpec,
    #[serde(default)]
    pub local_load_balancer: LocalLoadBalancer,
    /// Where the agent serves `/metrics` (plain HTTP, no authentication):
    /// loopback unless a scraper elsewhere is given this address.
    #[serde(default = "default_metrics_address")]
    pub metrics_address: std::net::SocketAddr,
}

/// Loopback: what the agent exports (node names, addresses, certificate
/// dates) is for the host's own monitoring unless an operator opens it.
pub const DEFAULT_METRICS_PORT: u16 = 9469;

fn default_metrics_address() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT))
}

/// Where the CNI plugins are when neither `node.cniBinDir` nor the bundle
/// says: Debian's containernetworking-plugins.
pub const HOST_CNI_BIN_DIR: &str = "/usr/lib/cni";

impl NodeSpec {
    /// The bundle `comp`'s binary comes from: a master's control plane
    /// moves to a new bundle ahead of its kubelet during an upgrade.
    pub fn bundle_for(&self, comp: Component) -> Option<&std::path::Path> {
        match comp {
            c if c.is_control_plane() => self.control_plane_bundle.as_deref().or(self.bundle.as_deref()),
            _ => self.bundle.as_deref(),
        }
    }

    /// The CNI plugins' directory: `node.cniBinDir` when set, else the
    /// bundle's own `cni/` when it has one (a bundle built since the
    /// plugins joined it, so an airgap host needs no package), else
    /// [`HOST_CNI_BIN_DIR`]. Read when components are rendered, so a new
    /// bundle brings its plugins with it.
    pub fn cni_bin_dir(&self) -> PathBuf {
        if let Some(dir) = &self.cni_bin_dir {
            return dir.clone();
        }
        match &self.bundle {
            Some(b) if b.join("cni").join("bridge").is_file() => b.join("cni"),
            _ => PathBuf::from(HOST_CNI_BIN_DIR),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    pub api_version: String,
    pub kind: String,
    pub cluster: ClusterSpec,
    pub node: NodeSpec,
}

impl ClusterConfig {
    pub fn has(&self, c: Component) -> bool {
        self.node.components.contains(&c)
    }

    /// Whether the agent runs the node-local load balancer: wherever
    /// something of Kubernetes runs (kubelet is its client; a master's
    /// admin kubeconfig may be too).
    pub fn runs_local_lb(&self) -> bool {
        self.has(Component::Kubelet) || self.has(Component::KubeApiserver) || self.has(Component::KubeProxy)
    }

    /// The node-local load balancer, as clients on this node reach it.
    pub fn local_lb_endpoint(&self) -> HostPort {
        let lo = match self.node.advertise_address {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        HostPort::new(Host::Ip(lo), self.node.local_load_balancer.port)
    }

    /// Where admin kubeconfigs reach the API servers: the external load
    /// balancer when there is one, else in `ha` mode (and on a worker) the
    /// node-local one, else this master itself.
    pub fn control_plane_endpoint(&self) -> HostPort {
        match &self.cluster.load_balancer_address {
            Some(lb) => lb.clone(),
            None if self.cluster.ha || !self.has(Component::KubeApiserver) => self.local_lb_endpoint(),
            None => HostPort::new(Host::Ip(self.node.advertise_address), self.node.api_server_port),
        }
    }

    pub fn etcd_client_url(&self) -> String {
        format!("https://{}", HostPort::new(Host::Ip(self.node.advertise_address), self.node.etcd_client_port))
    }

    /// etcd's own metrics listener (plain HTTP, loopback): the peer port + 1.
    pub fn etcd_metrics_address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.node.etcd_peer_port + 1))
    }

    pub fn etcd_peer_url(&self) -> String {
        format!("https://{}", HostPort::new(Host::Ip(self.node.advertise_address), self.node.etcd_peer_port))
    }

    pub fn to_yaml(&self) -> String {
        let body = serde_norway::to_string(self).expect("config serializes");
        format!("# hakube cluster config: keep it in version control; `hakube install` re-reads it.\n{body}")
    }
}

/// The defaults, with the node's identity still to be filled in.
pub fn defaults() -> Value {
    let text = format!(
        r#"
apiVersion: {API_VERSION}
kind: {KIND}
cluster:
  name: hakube
  ha: false
  loadBalancerAddress: null
  taintControlPlane: false
  serviceCidr: 10.96.0.0/12
  podCidr: 10.244.0.0/16
  dnsDomain: cluster.local
  certSans: []
  keyAlgorithm: ecdsa-p256
  lostNodeToleration: 1h
  etcdSnapshotInterval: 12h
  etcdSnapshotRetention: 5
  certificateValidity: 365d
  certificateRenewBefore: 120d
node:
  components: [etcd, containerd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy]
  systemd: true
  apiServerPort: 6443
  etcdClientPort: 2379
  etcdPeerPort: 2380
  joinApiPort: 9443
  etcd:
    initialClusterState: new
"#
    );
    serde_norway::from_str(&text).expect("defaults parse")
}

/// Parses a config source and checks its version header.
pub fn parse_source(text: &str, path: &str) -> Result<Value, ConfigError> {
    let value: Value =
        serde_norway::from_str(text).map_err(|source| ConfigError::Yaml { path: path.to_owned(), source })?;
    let map = value.as_mapping().ok_or_else(|| ConfigError::Invalid {
        path: path.to_owned(),
        message: "expected a mapping with apiVersion, kind, cluster and node".into(),
    })?;
    let field = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let found = field("apiVersion");
    if found != API_VERSION {
        return Err(ConfigError::ApiVersion { path: path.to_owned(), found });
    }
    let found = field("kind");
    if found != KIND {
        return Err(ConfigError::Kind { path: path.to_owned(), found });
    }
    Ok(value)
}

/// Reads a config file; `None` when it does not exist.
pub fn read_file(path: &Path) -> Result<Option<Value>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_source(&text, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read { path: path.to_owned(), source }),
    }
}

/// Loads the installed config of a host.
pub fn load_installed(path: &Path) -> Result<Option<ClusterConfig>, ConfigError> {
    match read_file(path)? {
        None => Ok(None),
        Some(v) => from_value(v, &path.display().to_string()).map(Some),
    }
}

/// Deep merge: mappings merge key by key, anything else is replaced.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

pub fn from_value(v: Value, path: &str) -> Result<ClusterConfig, ConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let field = e.path().to_string();
        let message = if field == "." { e.inner().to_string() } else { format!("{field}: {}", e.inner()) };
        ConfigError::Invalid { path: path.to_owned(), message }
    })
}

/// Sets `section.key` in a YAML tree (used to layer command-line options).
pub fn set(tree: &mut Value, section: &str, key: &str, value: Value) {
    let Value::Mapping(root) = tree else { unreachable!("config trees are mappings") };
    let slot = root.entry(Value::from(section)).or_insert_with(|| Value::Mapping(Mapping::new()));
    if let Value::Mapping(m) = slot {
        m.insert(Value::from(key), value);
    }
}

/// Whether a partial config tree (command-line options) names the
/// load-balancer address.
pub fn names_load_balancer(tree: &Value) -> bool {
    get(tree, "cluster", "loadBalancerAddress").is_some()
}

fn get<'a>(tree: &'a Value, section: &str, key: &str) -> Option<&'a Value> {
    tree.get(section)?.get(key)
}

/// Everything that decides the final config of an install, in merge order.
pub struct Sources<'a> {
    pub installed: Option<Value>,
    pub file: Option<(Value, String)>,
    /// Command-line options as a partial tree (`cluster:`/`node:` keys).
    pub flags: Value,
    /// Fill the node's name and address when no source gives them.
    pub detect_name: &'a dyn Fn() -> Result<String, String>,
    pub detect_address: &'a dyn Fn() -> Result<IpAddr, String>,
}

/// Fields that cannot change once a node is installed: etcd and every
/// certificate are bound to them.
const IMMUTABLE: [(&str, &str, &str); 8] = [
    ("node.name", "node", "name"),
    ("node.advertiseAddress", "node", "advertiseAddress"),
    ("node.etcdClientPort", "node", "etcdClientPort"),
    ("node.etcdPeerPort", "node", "etcdPeerPort"),
    ("cluster.name", "cluster", "name"),
    ("cluster.serviceCidr", "cluster", "serviceCidr"),
    ("cluster.podCidr", "cluster", "podCidr"),
    ("cluster.dnsDomain", "cluster", "dnsDomain"),
];

/// Merges the sources into the config to install, enforcing the re-run rules.
pub fn resolve(src: Sources<'_>) -> Result<ClusterConfig, ConfigError> {
    let mut tree = defaults();
    let installed_tree = src.installed.clone();
    if let Some(v) = src.installed {
        merge(&mut tree, v);
    }
    let mut origin = "the command line".to_owned();
    if let Some((v, path)) = src.file {
        merge(&mut tree, v);
        origin = format!("{path} and the command line");
    }
    merge(&mut tree, src.flags);

    let detect_err = |message| ConfigError::Invalid { path: origin.clone(), message };
    if get(&tree, "node", "name").is_none() {
        let name = (src.detect_name)().map_err(detect_err)?;
        set(&mut tree, "node", "name", Value::from(name));
    }
    if get(&tree, "node", "advertiseAddress").is_none() {
        let addr = (src.detect_address)().map_err(detect_err)?;
        set(&mut tree, "node", "advertiseAddress", Value::from(addr.to_string()));
    }

    if let Some(old) = &installed_tree {
        // `ha` is sticky: a re-run may add it, never drop it.
        if get(old, "cluster", "ha").and_then(Value::as_bool) == Some(true) {
            set(&mut tree, "cluster", "ha", Value::Bool(true));
        }
        for (field, section, key) in IMMUTABLE {
            let (Some(a), Some(b)) = (get(old, section, key), get(&tree, section, key)) else {
                continue;
            };
            if a != b {
                let show = |v: &Value| serde_norway::to_string(v).unwrap_or_default().trim().to_owned();
                return Err(ConfigError::Immutable { field, old: show(a), new: show(b) });
            }
        }
    }
    // A virtual IP given anew moves the cluster's external address with
    // it (a phased change, as for a new load-balancer address), unless a
    // load-balancer address is given too. Removing it needs the next one.
    if let Some(old) = &installed_tree {
        let vip = |t: &Value| get(t, "cluster", "vip").and_then(Value::as_str).map(str::to_owned);
        let lb = |t: &Value| get(t, "cluster", "loadBalancerAddress").filter(|v| !v.is_null()).cloned();
        let (before, after) = (vip(old), vip(&tree));
        if before != after && lb(old) == lb(&tree) {
            match (&before, &after) {
                (Some(before), None) => {
                    return Err(ConfigError::Invalid {
                        path: origin,
                        message: format!(
                            "removing the virtual IP {before} needs the cluster's next external address: give \
                             load-balancer-address=HOST:PORT with vip=none; nothing was written"
                        ),
                    })
                }
                _ => set(&mut tree, "cluster", "loadBalancerAddress", Value::Null),
            }
        }
    }
    // A virtual IP is the cluster's external address: the load-balancer
    // address, on the API servers' port, unless one is given (validated).
    let lb_given = get(&tree, "cluster", "loadBalancerAddress").is_some_and(|v| !v.is_null());
    if let (Some(vip), false) = (get(&tree, "cluster", "vip").cloned(), lb_given) {
        let port = get(&tree, "node", "apiServerPort").and_then(Value::as_u64).unwrap_or(6443);
        // Anything else is refused below, as cluster.vip.
        if let Some(vip) = vip.as_str().and_then(|v| v.parse::<std::net::Ipv4Addr>().ok()) {
            set(&mut tree, "cluster", "loadBalancerAddress", Value::from(format!("{vip}:{port}")));
        }
    }
    let config = from_value(tree, &origin)?;
    validate(&config).map_err(|message| ConfigError::Invalid { path: origin, message })?;
    Ok(config)
}

/// Checks that span fields.
fn validate(c: &ClusterConfig) -> Result<(), String> {
    if let Some(vip) = c.cluster.vip {
        let named = c.cluster.load_balancer_address.as_ref().is_some_and(|lb| lb.host == Host::Ip(IpAddr::V4(vip)));
        if !named {
            return Err(format!(
                "cluster.vip is {vip} but cluster.loadBalancerAddress is {}: the virtual IP is the cluster's \
                 external address; give load-balancer-address={vip}:PORT or leave it out",
                c.cluster.load_balancer_address.as_ref().map_or("not set".to_owned(), ToString::to_string)
            ));
        }
        if c.node.advertise_address == IpAddr::V4(vip) {
            return Err(format!(
                "cluster.vip is {vip}, this host's own advertise address: give a free address of the masters' subnet"
            ));
        }
        if vip.is_loopback() || vip.is_unspecified() || vip.is_multicast() || vip.is_broadcast() {
            return Err(format!("cluster.vip is {vip}: give a unicast address of the masters' subnet"));
        }
    }
    let (valid, before) = (c.cluster.certificate_validity, c.cluster.certificate_renew_before);
    if before.0 * 2 > valid.0 {
        return Err(format!(
            "cluster.certificateRenewBefore is {before}, more than half of cluster.certificateValidity ({valid}): \
             a certificate would be renewed as soon as it is issued; give at most {}",
            crate::config::Span(valid.0 / 2)
        ));
    }
    if valid.0 < std::time::Duration::from_secs(60) {
        return Err(format!("cluster.certificateValidity is {valid}: give at least 1m"));
    }
    if c.has(Component::KubeApiserver) && c.node.advertise_address.is_loopback() {
        return Err(format!(
            "node.advertiseAddress is {}, a loopback address, and kube-apiserver refuses to advertise one (the \
             `kubernetes` Service points at it): give an address the other hosts reach, or run etcd alone \
             (--components etcd)",
            c.node.advertise_address
        ));
    }
    let n = &c.node;
    let ports = [
        ("apiServerPort", n.api_server_port),
        ("etcdClientPort", n.etcd_client_port),
        ("etcdPeerPort", n.etcd_peer_port),
        ("joinApiPort", n.join_api_port),
        ("localLoadBalancer.port", n.local_load_balancer.port),
        ("metricsAddress", n.metrics_address.port()),
    ];
    for (i, (a, pa)) in ports.iter().enumerate() {
        if *pa == 0 {
            return Err(format!("node.{a} is 0: give a port from 1 to 65535"));
        }
        for (b, pb) in &ports[i + 1..] {
            if pa == pb {
                return Err(format!("node.{a} and node.{b} are both {pa}: give them different ports"));
            }
        }
    }
    if n.etcd_peer_port == u16::MAX {
        return Err(
            "node.etcdPeerPort is 65535, and etcd's metrics listen on the port after it: give a lower port".into()
        );
    }
    if n.etcd_peer_port.checked_add(1).is_some_and(|m| ports.iter().any(|(_, p)| *p == m)) {
        return Err(format!(
            "etcd's metrics listen on node.etcdPeerPort + 1 ({}), which another port already takes: choose other ports",
            n.etcd_peer_port + 1
        ));
    }
    let lb = &n.local_load_balancer;
    if !(100..=60_000).contains(&lb.check_interval_ms) {
        return Err(format!(
            "node.localLoadBalancer.checkIntervalMs is {}: give 100 to 60000 milliseconds",
            lb.check_interval_ms
        ));
    }
    for (what, v) in [("fall", lb.fall), ("rise", lb.rise)] {
        if !(1..=10).contains(&v) {
            return Err(format!("node.localLoadBalancer.{what} is {v}: give 1 to 10 checks"));
        }
    }
    if c.has(Component::Kubelet) && !c.has(Component::Containerd) {
        return Err("kubelet needs the container runtime: add containerd to the components".into());
    }
    if c.has(Component::KubeProxy) && !c.has(Component::Kubelet) {
        return Err(
            "kube-proxy serves the Services of a node's pods: add kubelet to the components, or leave kube-proxy out"
                .into(),
        );
    }
    if c.node.advertise_address.is_unspecified() {
        return Err("node.advertiseAddress is unspecified (0.0.0.0 or ::): give this host's own address".into());
    }
    if c.cluster.service_cidr.addr.is_ipv4() != c.node.advertise_address.is_ipv4() {
        return Err("cluster.serviceCidr and node.advertiseAddress are of different IP families".into());
    }
    if c.cluster.dns_domain.is_empty() || c.cluster.dns_domain.starts_with('.') {
        return Err(format!("cluster.dnsDomain {:?} is not a DNS domain", c.cluster.dns_domain));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn name() -> Result<String, String> {
        Ok("m1".into())
    }

    pub(crate) fn address() -> Result<IpAddr, String> {
        Ok("10.0.0.11".parse().unwrap())
    }

    /// A config resolved from `flags` alone, for tests across the crate.
    pub(crate) fn test_config(flags: &str) -> ClusterConfig {
        resolve(Sources {
            installed: None,
            file: None,
            flags: serde_norway::from_str(flags).unwrap(),
            detect_name: &name,
            detect_address: &address,
        })
        .unwrap()
    }

    fn flags(yaml: &str) -> Value {
        serde_norway::from_str(yaml).unwrap()
    }

    fn resolve_with(installed: Option<&ClusterConfig>, f: &str) -> Result<ClusterConfig, ConfigError> {
        resolve(Sources {
            installed: installed.map(|c| serde_norway::to_value(c).unwrap()),
            file: None,
            flags: flags(f),
            detect_name: &name,
            detect_address: &address,
        })
    }

    #[test]
    fn defaults_resolve_and_round_trip() {
        let c = resolve_with(None, "{}").unwrap();
        assert_eq!(c.node.name.as_str(), "m1");
        assert_eq!(c.node.components.len(), 7);
        assert_eq!(c.control_plane_endpoint().to_string(), "10.0.0.11:6443");
        let text = c.to_yaml();
        let back = from_value(parse_source(&text, "x").unwrap(), "x").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn rerun_merges_and_ha_is_sticky() {
        let first = resolve_with(None, "cluster: {ha: true, taintControlPlane: true}").unwrap();
        let second = resolve_with(Some(&first), "cluster: {ha: false, loadBalancerAddress: 'lb:6443'}").unwrap();
        assert!(second.cluster.ha, "ha must stay set");
        assert!(second.cluster.taint_control_plane, "earlier options are kept");
        assert_eq!(second.control_plane_endpoint().to_string(), "lb:6443");
    }

    #[test]
    fn identity_cannot_change_on_rerun() {
        let first = resolve_with(None, "{}").unwrap();
        let err = resolve_with(Some(&first), "node: {advertiseAddress: 10.0.0.12}").unwrap_err().to_string();
        assert!(err.contains("node.advertiseAddress cannot change"), "{err}");
        assert!(err.contains("hakube reset"), "{err}");
    }

    #[test]
    fn foreign_versions_and_unknown_fields_are_refused() {
        let err = parse_source("apiVersion: v2\nkind: ClusterConfig\n", "f.yaml").unwrap_err().to_string();
        assert!(err.contains("apiVersion \"v2\" is not supported"), "{err}");
        let err = parse_source("apiVersion: hakube.io/v1alpha1\nkind: Other\n", "f.yaml").unwrap_err().to_string();
        assert!(err.contains("kind \"Other\""), "{err}");
        let err = resolve_with(None, "cluster: {hA: true}").unwrap_err().to_string();
        assert!(err.contains("unknown field `hA`"), "{err}");
        let err = resolve_with(None, "node: {etcdClientPort: 2380}").unwrap_err().to_string();
        assert!(err.contains("both 2380"), "{err}");
    }

    #[test]
    fn a_virtual_ip_is_the_external_address_and_must_agree_with_it() {
        let c = resolve_with(None, "cluster: {ha: true, vip: 10.0.0.100}").unwrap();
        assert_eq!(c.cluster.load_balancer_address.unwrap().to_string(), "10.0.0.100:6443");
        let c = resolve_with(None, "cluster: {vip: 10.0.0.100}\nnode: {apiServerPort: 7443}").unwrap();
        assert_eq!(c.control_plane_endpoint().to_string(), "10.0.0.100:7443", "the API servers' port");
        resolve_with(None, "cluster: {vip: 10.0.0.100, loadBalancerAddress: '10.0.0.100:443'}").unwrap();
        let err = resolve_with(None, "cluster: {vip: 10.0.0.100, loadBalancerAddress: 'lb:6443'}").unwrap_err();
        assert!(err.to_string().contains("cluster.vip is 10.0.0.100 but cluster.loadBalancerAddress is lb:6443"));
        let err = resolve_with(None, "cluster: {vip: 10.0.0.11}").unwrap_err().to_string();
        assert!(err.contains("this host's own advertise address"), "{err}");
        let err = resolve_with(None, "cluster: {vip: 127.0.0.5}").unwrap_err().to_string();
        assert!(err.contains("give a unicast address"), "{err}");
        let err = resolve_with(None, "cluster: {vip: 'fd00::1'}").unwrap_err().to_string();
        assert!(err.contains("cluster.vip"), "{err}");
        // A re-run keeps it; one that names another moves the external
        // address with it; one that removes it must name the next address.
        let first = resolve_with(None, "cluster: {ha: true, vip: 10.0.0.100}").unwrap();
        assert_eq!(resolve_with(Some(&first), "cluster: {ha: true}").unwrap().cluster.vip, first.cluster.vip);
        let lb = |c: &ClusterConfig| c.cluster.load_balancer_address.as_ref().map(ToString::to_string);
        let moved = resolve_with(Some(&first), "cluster: {vip: 10.0.0.101}").unwrap();
        assert_eq!(moved.cluster.vip, Some([10, 0, 0, 101].into()));
        assert_eq!(lb(&moved).as_deref(), Some("10.0.0.101:6443"));
        let err = resolve_with(Some(&first), "cluster: {vip: null}").unwrap_err().to_string();
        assert!(err.contains("removing the virtual IP 10.0.0.100 needs the cluster's next external address"), "{err}");
        let off = resolve_with(Some(&first), "cluster: {vip: null, loadBalancerAddress: 'lb:6443'}").unwrap();
        assert_eq!((off.cluster.vip, lb(&off).as_deref()), (None, Some("lb:6443")));
        let err = resolve_with(Some(&first), "cluster: {vip: 10.0.0.101, loadBalancerAddress: 'lb:6443'}").unwrap_err();
        assert!(err.to_string().contains("cluster.vip is 10.0.0.101 but cluster.loadBalancerAddress is lb:6443"));
    }

    #[test]
    fn an_api_server_never_advertises_a_loopback_address() {
        let err = resolve_with(None, "node: {advertiseAddress: 127.0.0.1}").unwrap_err().to_string();
        assert!(err.contains("a loopback address, and kube-apiserver refuses"), "{err}");
        // etcd alone may (the tests' single hosts do).
        resolve_with(None, "node: {advertiseAddress: 127.0.0.1, components: [etcd]}").unwrap();
    }
}
