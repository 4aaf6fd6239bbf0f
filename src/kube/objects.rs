//! The fields of Kubernetes objects that hakube reads. Unknown fields are
//! ignored on read; writes are patches (see [`super::client`]), so nothing
//! hakube does not model is ever dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: Option<String>,
    pub uid: String,
    pub resource_version: String,
    pub creation_timestamp: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct List<T> {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
}

/// A list's version (to watch from) and, for a page, where the next starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListMeta {
    pub resource_version: String,
    #[serde(rename = "continue")]
    pub continue_: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<String>,
}

impl Taint {
    /// `key[=value]:effect`, as kubectl writes taints.
    pub fn parse(s: &str) -> Option<Taint> {
        let (kv, effect) = s.rsplit_once(':')?;
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (kv, None),
        };
        Some(Taint { key: key.to_owned(), value, effect: effect.to_owned(), time_added: None })
    }

    /// Whether two taints are the same taint (key and effect, as kubelet and
    /// kubectl compare them).
    pub fn matches(&self, other: &Taint) -> bool {
        self.key == other.key && self.effect == other.effect
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSpec {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_heartbeat_time: Option<String>,
    pub last_transition_time: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    pub addresses: Vec<NodeAddress>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Node {
    pub metadata: ObjectMeta,
    pub spec: NodeSpec,
    pub status: NodeStatus,
}

impl super::watch::Named for Node {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Node {
    pub fn internal_ip(&self) -> Option<std::net::IpAddr> {
        self.status.addresses.iter().find(|a| a.kind == "InternalIP").and_then(|a| a.address.parse().ok())
    }

    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.status.conditions.iter().find(|c| c.kind == kind)
    }

    pub fn is_ready(&self) -> bool {
        self.condition("Ready").is_some_and(|c| c.status == "True")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LeaseSpec {
    pub holder_identity: Option<String>,
    pub renew_time: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Lease {
    pub metadata: ObjectMeta,
    pub spec: LeaseSpec,
}

impl super::watch::Named for Lease {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// The namespace of the nodes' Leases.
pub fn node_leases_path() -> &'static str {
    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct DeploymentSpec {
    /// Absent means 1 (the API server's default).
    pub replicas: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentStatus {
    pub ready_replicas: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Deployment {
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
    pub status: DeploymentStatus,
}

/// Seconds since the epoch of an RFC 3339 time as the API server writes
/// them (`2026-11-22T05:00:00Z`, with or without a fraction).
pub fn unix_secs(t: &str) -> Option<u64> {
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(dt.unix_timestamp()).ok()
}

pub fn node_lease_path(name: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
}

pub fn nodes_path() -> &'static str {
    "/api/v1/nodes"
}

pub fn node_path(name: &str) -> String {
    format!("/api/v1/nodes/{name}")
}

pub fn deployment_path(namespace: &str, name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_reads_from_what_the_api_server_sends() {
        let json = r#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"w1","resourceVersion":"42",
            "labels":{"kubernetes.io/hostname":"w1"},"annotations":{"x":"y"}},
            "spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24"],
              "taints":[{"key":"node.kubernetes.io/not-ready","effect":"NoSchedule"}]},
            "status":{"addresses":[{"type":"InternalIP","address":"10.77.0.21"},{"type":"Hostname","address":"w1"}],
              "conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-11-22T00:00:00Z"}]}}"#;
        let n: Node = serde_json::from_str(json).unwrap();
        assert_eq!(n.metadata.resource_version, "42");
        assert_eq!(n.spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
        assert_eq!(n.internal_ip(), Some("10.77.0.21".parse().unwrap()));
        assert!(n.is_ready());
        assert_eq!(n.spec.taints[0].key, "node.kubernetes.io/not-ready");
    }

    #[test]
    fn a_deployment_reads_its_replicas() {
        let json = r#"{"kind":"Deployment","metadata":{"name":"coredns","namespace":"kube-system"},
            "spec":{"replicas":2,"selector":{}},"status":{"replicas":2,"readyReplicas":1}}"#;
        let d: Deployment = serde_json::from_str(json).unwrap();
        assert_eq!((d.spec.replicas, d.status.ready_replicas), (Some(2), 1));
        // A new Deployment's status has no readyReplicas yet.
        let d: Deployment = serde_json::from_str(r#"{"spec":{},"status":{}}"#).unwrap();
        assert_eq!((d.spec.replicas, d.status.ready_replicas), (None, 0));
    }

    #[test]
    fn api_server_times_read_as_seconds() {
        assert_eq!(unix_secs("2026-11-18T11:06:40Z"), Some(1_795_000_000));
        assert_eq!(unix_secs("2026-11-18T11:06:40.123456Z"), Some(1_795_000_000));
        assert_eq!(unix_secs("2026-11-18 11:06:40"), None);
        assert_eq!(unix_secs("2026-13-18T11:06:40Z"), None);
        assert_eq!(unix_secs("2026-11-18T12:06:40+01:00"), Some(1_795_000_000));
        assert_eq!(unix_secs("1969-12-31T23:59:59Z"), None);
    }

    #[test]
    fn taints_parse_as_kubectl_writes_them() {
        let t = Taint::parse("node-role.kubernetes.io/control-plane:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("node-role.kubernetes.io/control-plane", None, "NoSchedule")
        );
        let t = Taint::parse("node.kubernetes.io/out-of-service=nodeshutdown:NoExecute").unwrap();
        assert_eq!(t.value.as_deref(), Some("nodeshutdown"));
        assert!(Taint::parse("no-effect").is_none());
    }
}
