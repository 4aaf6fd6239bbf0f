//! The cluster add-ons hakube keeps converged: CoreDNS ([`coredns`]) and
//! the local-path volume provisioner ([`local_path`]).
//!
//! Both are rendered (pure, golden-tested) from one [`AddonSpec`] as the
//! objects to server-side apply, each with its API path, in an order in
//! which every object finds what it refers to: namespaces, accounts and
//! RBAC, ConfigMaps, then the workloads, Services and the StorageClass.
//! [`apply`] sends them as field manager `hakube`; [`status`] reads the
//! two Deployments back for display. Images are the bundle's, imported on
//! every node, never pulled.

pub mod coredns;
pub mod local_path;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::config::ClusterConfig;
use crate::kube::client::{KubeClient, KubeError, Patch};
use crate::kube::objects::{self, Deployment, Node};

/// The label on every object hakube applies.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "hakube");

/// The label on `kube-system` that admission webhooks honouring it (as
/// Linkerd's documents) skip the namespace for: a webhook that is down then
/// never blocks the control plane's own pods.
pub const WEBHOOK_EXCLUSION: (&str, &str) = ("config.linkerd.io/admission-webhooks", "disabled");
/// The server-side apply field manager.
pub const FIELD_MANAGER: &str = "hakube";
/// Where local-path volumes live on a node. A simulated host's agent maps
/// `/var/lib` onto its root's own (`host::mountns`), so this same path
/// keeps each simulated node's volumes under its root.
pub const DEFAULT_LOCAL_PATH_DIR: &str = "/var/lib/hakube/local-path";

/// The bundle files naming the add-ons' images, one reference per file.
pub const COREDNS_IMAGE_FILE: &str = "coredns-image";
pub const LOCAL_PATH_IMAGE_FILE: &str = "local-path-provisioner-image";
pub const TEST_IMAGE_FILE: &str = "test-image";

#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    #[error(
        "the bundle at {bundle} does not name the image of {what}: {file}: {reason}; \
         use a bundle built with the add-on images"
    )]
    Bundle { bundle: PathBuf, file: &'static str, what: &'static str, reason: String },
    #[error("the add-ons cannot be rendered: {field} {value:?} {reason}")]
    Invalid { field: &'static str, value: String, reason: &'static str },
    /// The object named in `source`, and those after it, were not applied.
    #[error("{source}; the add-ons after it were not applied")]
    Apply {
        what: String,
        #[source]
        source: Box<KubeError>,
    },
}

/// The add-ons' image references, as the bundle names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddonImages {
    pub coredns: String,
    pub local_path_provisioner: String,
    /// The bundle's busybox: local-path's helper pods run `sh`, `mkdir`, `rm`.
    pub test: String,
}

/// Reads the image references from the bundle directory.
pub fn images_from_bundle(dir: &Path) -> Result<AddonImages, AddonError> {
    let read = |file: &'static str, what: &'static str| {
        let err = |reason: String| AddonError::Bundle { bundle: dir.to_owned(), file, what, reason };
        let text = std::fs::read_to_string(dir.join(file)).map_err(|e| err(e.to_string()))?;
        let line = text.trim();
        if line.is_empty() || line.contains(char::is_whitespace) {
            return Err(err(format!("{line:?} is not one image reference")));
        }
        Ok(line.to_owned())
    };
    Ok(AddonImages {
        coredns: read(COREDNS_IMAGE_FILE, "CoreDNS")?,
        local_path_provisioner: read(LOCAL_PATH_IMAGE_FILE, "local-path-provisioner")?,
        test: read(TEST_IMAGE_FILE, "local-path-provisioner's helper pods")?,
    })
}

/// What the add-ons are rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddonSpec {
    /// The `kube-dns` Service address: kubelet's `clusterDNS`.
    pub dns_ip: IpAddr,
    pub dns_domain: String,
    pub ha: bool,
    /// Nodes that can run CoreDNS now ([`count_schedulable`]).
    pub schedulable: usize,
    pub images: AddonImages,
    /// The host directory of local-path volumes, on every node.
    pub local_path_dir: PathBuf,
}

impl AddonSpec {
    /// The spec for a cluster config: its DNS address (the service CIDR's
    /// tenth, as kubelet is told), domain and mode.
    pub fn from_config(c: &ClusterConfig, schedulable: usize, images: AddonImages, local_path_dir: PathBuf) -> Self {
        AddonSpec {
            dns_ip: c.cluster.service_cidr.nth(10),
            dns_domain: c.cluster.dns_domain.clone(),
            ha: c.cluster.ha,
            schedulable,
            images,
            local_path_dir,
        }
    }

    /// Refuses what would render into something other than what was meant.
    pub fn validate(&self) -> Result<(), AddonError> {
        let invalid = |field, value: &str, reason| Err(AddonError::Invalid { field, value: value.to_owned(), reason });
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let domain = &self.dns_domain;
        if domain.len() > 253 || !domain.split('.').all(label_ok) {
            return invalid("cluster.dnsDomain", domain, "is not a DNS domain (labels of letters, digits and '-')");
        }
        let dir = &self.local_path_dir;
        let shown = dir.to_string_lossy();
        if dir.to_str().is_none() {
            return invalid("the local-path directory", &shown, "is not UTF-8");
        }
        if !dir.is_absolute() || dir.parent().is_none() {
            return invalid("the local-path directory", &shown, "must be an absolute path below /");
        }
        Ok(())
    }
}

/// Nodes that can run a CoreDNS pod now: Ready, not cordoned, and without
/// a taint that keeps its pods off (the control-plane taints do not).
pub fn count_schedulable(nodes: &[Node]) -> usize {
    let tolerations = coredns::tolerations();
    nodes
        .iter()
        .filter(|n| n.is_ready() && !n.spec.unschedulable)
        .filter(|n| {
            n.spec
                .taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| tolerations.iter().any(|tol| tol.tolerates(t)))
        })
        .count()
}

/// CoreDNS's replicas (see [`coredns::replicas`]).
pub fn coredns_replicas(ha: bool, schedulable: usize) -> u32 {
    coredns::replicas(ha, schedulable)
}

/// What the add-ons fall short of, for `status` and the install summary.
pub fn warnings(spec: &AddonSpec) -> Vec<String> {
    coredns::warnings(spec)
}

/// An object to apply: its API path and the object.
pub type Object = (String, Value);

/// A resource type: its API group/version, kind and plural.
pub(crate) struct Kind {
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
}

impl Kind {
    const NAMESPACE: Kind = Kind { api_version: "v1", kind: "Namespace", plural: "namespaces" };
    const SERVICE_ACCOUNT: Kind = Kind { api_version: "v1", kind: "ServiceAccount", plural: "serviceaccounts" };
    const CONFIG_MAP: Kind = Kind { api_version: "v1", kind: "ConfigMap", plural: "configmaps" };
    const SERVICE: Kind = Kind { api_version: "v1", kind: "Service", plural: "services" };
    const CLUSTER_ROLE: Kind =
        Kind { api_version: "rbac.authorization.k8s.io/v1", kind: "ClusterRole", plural: "clusterroles" };
    const CLUSTER_ROLE_BINDING: Kind =
        Kind { api_version: "rbac.authorization.k8s.io/v1", kind: "ClusterRoleBinding", plural: "clusterrolebindings" };
    const ROLE: Kind = Kind { api_version: "rbac.authorization.k8s.io/v1", kind: "Role", plural: "roles" };
    const ROLE_BINDING: Kind =
        Kind { api_version: "rbac.authorization.k8s.io/v1", kind: "RoleBinding", plural: "rolebindings" };
    const DEPLOYMENT: Kind = Kind { api_version: "apps/v1", kind: "Deployment", plural: "deployments" };
    const STORAGE_CLASS: Kind =
        Kind { api_version: "storage.k8s.io/v1", kind: "StorageClass", plural: "storageclasses" };

    const PDB: Kind = Kind { api_version: "policy/v1", kind: "PodDisruptionBudget", plural: "poddisruptionbudgets" };

    /// `/api/v1/…` for the core group, `/apis/GROUP/VERSION/…` otherwise.
    fn path(&self, namespace: Option<&str>, name: &str) -> String {
        let base = if self.api_version == "v1" { "/api/v1".to_owned() } else { format!("/apis/{}", self.api_version) };
        match namespace {
            Some(ns) => format!("{base}/namespaces/{ns}/{}/{name}", self.plural),
            None => format!("{base}/{}/{name}", self.plural),
        }
    }

    /// Where the kind comes in the apply order: what others refer to first.
    fn rank(kind: &str) -> u8 {
        match kind {
            "Namespace" => 0,
            "ServiceAccount" => 1,
            "ClusterRole" | "Role" => 2,
            "ClusterRoleBinding" | "RoleBinding" => 3,
            "ConfigMap" => 4,
            _ => 5,
        }
    }
}

/// An object of `kind` with hakube's label and `labels`, and `body`'s
/// fields; `body.metadata` (annotations) merges into the metadata.
pub(crate) fn object(kind: &Kind, namespace: Option<&str>, name: &str, labels: &[(&str, &str)], body: Value) -> Object {
    let mut label_map = Map::new();
    for (k, v) in std::iter::once(&MANAGED_BY).chain(labels) {
        label_map.insert((*k).to_owned(), json!(v));
    }
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(name));
    if let Some(ns) = namespace {
        metadata.insert("namespace".into(), json!(ns));
    }
    metadata.insert("labels".into(), Value::Object(label_map));
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(kind.api_version));
    obj.insert("kind".into(), json!(kind.kind));
    let Value::Object(body) = body else { panic!("an object body is a JSON object") };
    for (k, v) in body {
        match (k.as_str(), v) {
            ("metadata", Value::Object(extra)) => metadata.extend(extra),
            (_, v) => {
                obj.insert(k, v);
            }
        }
    }
    obj.insert("metadata".into(), Value::Object(metadata));
    (kind.path(namespace, name), Value::Object(obj))
}

/// Every object of both add-ons with its API path, in apply order (pure).
pub fn objects(spec: &AddonSpec) -> Vec<Object> {
    // DNS first: a cluster cannot do without it, and a failure on the
    // storage side must not keep it from being applied.
    let mut all = coredns::objects(spec);
    all.extend(local_path::objects(spec));
    // Stable: within a rank, each add-on's own order stays.
    all.sort_by_key(|(_, obj)| Kind::rank(obj["kind"].as_str().unwrap_or_default()));
    all
}

/// `Kind namespace/name`, or `Kind name` for a cluster-scoped object.
fn describe(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// What was applied, in order (`Deployment kube-system/coredns`).
    pub applied: Vec<String>,
    pub warnings: Vec<String>,
}

/// Applies every object in order (server-side apply, forcing hakube's
/// fields); the first failure stops it, naming the object.
pub async fn apply(kube: &KubeClient, spec: &AddonSpec) -> Result<ApplyReport, AddonError> {
    spec.validate()?;
    let mut report = ApplyReport { applied: Vec::new(), warnings: warnings(spec) };
    for (path, obj) in objects(spec) {
        let what = describe(&obj);
        let url = format!("{path}?fieldManager={FIELD_MANAGER}&force=true");
        if let Err(source) = kube.patch::<Value>(&what, &url, Patch::Apply, &obj).await {
            return Err(AddonError::Apply { what, source: Box::new(source) });
        }
        report.applied.push(what);
    }
    Ok(report)
}

/// One add-on's workload, as read back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AddonStatus {
    pub name: &'static str,
    pub namespace: &'static str,
    pub ready: u32,
    pub desired: u32,
    /// `ready`, `1 of 2 replicas ready`, `not applied yet`, or the error.
    pub message: String,
}

impl AddonStatus {
    pub fn is_ready(&self) -> bool {
        self.desired > 0 && self.ready >= self.desired
    }

    /// From the Deployment as read (`None`: not there), pure.
    fn from_read(
        name: &'static str,
        namespace: &'static str,
        read: Result<Option<Deployment>, KubeError>,
    ) -> AddonStatus {
        let (ready, desired, message) = match read {
            Err(e) => (0, 0, e.to_string()),
            Ok(None) => (0, 0, "not applied yet".to_owned()),
            Ok(Some(d)) => {
                // An absent `replicas` defaults to 1 on the server.
                let desired = d.spec.replicas.unwrap_or(1);
                let ready = d.status.ready_replicas;
                let message = match (ready, desired) {
                    (_, 0) => "scaled to zero".to_owned(),
                    (r, n) if r >= n => "ready".to_owned(),
                    (r, n) => format!("{r} of {n} replicas ready"),
                };
                (ready, desired, message)
            }
        };
        AddonStatus { name, namespace, ready, desired, message }
    }
}

/// The add-ons' Deployments, ready against desired replicas.
pub async fn status(kube: &KubeClient) -> Vec<AddonStatus> {
    let mut all = Vec::new();
    for (namespace, name) in [(coredns::NAMESPACE, coredns::NAME), (local_path::NAMESPACE, local_path::NAME)] {
        let what = format!("Deployment {namespace}/{name}");
        let read = kube.get_opt::<Deployment>(&what, &objects::deployment_path(namespace, name)).await;
        all.push(AddonStatus::from_read(name, namespace, read));
    }
    all
}

#[cfg(test)]
mod tests;
