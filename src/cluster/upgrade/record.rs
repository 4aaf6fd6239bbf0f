//! The upgrade under way, as etcd holds it ([`KEY`]): the target (a bundle
//! every master and node fetches, and its Kubernetes version), who started
//! it, and which nodes the elected agent has told to move so far. Each
//! agent reads it every round and moves its own part when its name is in
//! it; the leader adds one name at a time ([`super::drive`]). The lists
//! only grow, so a new leader (or an agent that restarts) goes on from
//! the record alone. A finished upgrade stays, for `status`, until the
//! next one replaces it.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::etcd::EtcdError;
use crate::kube::version::KubeVersion;

pub const KEY: &str = "/hakube/cluster/upgrade";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upgrade {
    /// The bundle's id (the directory it unpacks to under `bundles/`).
    pub bundle: String,
    /// Its Kubernetes version.
    pub version: KubeVersion,
    /// The hakube it carries: every agent moves to it at its node's step
    /// (None: a bundle directory given by hand, which carries none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hakube: Option<super::Build>,
    pub started_by: String,
    pub started_at: u64,
    /// The snapshot of etcd taken before it started, on `started_by`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Masters whose control plane runs from the new bundle (told so in
    /// this order).
    #[serde(default)]
    pub control_plane: Vec<String>,
    /// Nodes whose kubelet and kube-proxy run from it.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Where it stands, as the leader last saw it.
    #[serde(default)]
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// etcd's mod revision of the record, when it was read.
    #[serde(skip)]
    pub revision: i64,
}

impl Upgrade {
    pub fn new(bundle: String, version: KubeVersion, started_by: String, started_at: u64) -> Upgrade {
        Upgrade {
            bundle,
            version,
            hakube: None,
            started_by,
            started_at,
            snapshot: None,
            control_plane: vec![],
            nodes: vec![],
            step: "starting".into(),
            finished_at: None,
            revision: 0,
        }
    }

    pub fn running(&self) -> bool {
        self.finished_at.is_none()
    }

    /// What this node runs from the new bundle now: (its control plane,
    /// its kubelet and kube-proxy).
    pub fn told(&self, node: &str) -> (bool, bool) {
        (self.control_plane.iter().any(|n| n == node), self.nodes.iter().any(|n| n == node))
    }
}

/// Why an upgrade could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(
        "an upgrade to {} (bundle {}) is under way, started by {} ({}): wait for it to finish (`hakube status` \
         shows where it stands), then run this again",
        .0.version, .0.bundle, .0.started_by, .0.step
    )]
    Running(Box<Upgrade>),
    #[error("another upgrade was recorded while this one was being checked: run this again")]
    Raced,
}

fn call(endpoint: &str, e: etcd_client::Error) -> EtcdError {
    EtcdError::Call { endpoint: endpoint.into(), message: e.to_string() }
}

/// The record (a linearizable read); an unreadable one counts as none
/// only if it is not there at all.
pub async fn read(client: &mut Client, endpoint: &str) -> Result<Option<Upgrade>, EtcdError> {
    let resp = client.get(KEY, None).await.map_err(|e| call(endpoint, e))?;
    let Some(kv) = resp.kvs().first() else { return Ok(None) };
    let mut u: Upgrade = serde_json::from_slice(kv.value()).map_err(|e| EtcdError::Call {
        endpoint: endpoint.into(),
        message: format!("{KEY} is unreadable ({e}): it was not written by this hakube"),
    })?;
    u.revision = kv.mod_revision();
    Ok(Some(u))
}

/// Records `new` unless an upgrade runs: over no record, or over the
/// finished one `previous` read (compare-and-swap on its revision, so two
/// masters starting at once cannot both win).
pub async fn start(
    client: &mut Client,
    endpoint: &str,
    previous: Option<&Upgrade>,
    new: &Upgrade,
) -> Result<i64, StartError> {
    if let Some(p) = previous.filter(|p| p.running()) {
        return Err(StartError::Running(Box::new(p.clone())));
    }
    let guard = match previous {
        None => Compare::create_revision(KEY, CompareOp::Equal, 0),
        Some(p) => Compare::mod_revision(KEY, CompareOp::Equal, p.revision),
    };
    let put = TxnOp::put(KEY, serde_json::to_vec(new).expect("the record serializes"), None);
    let resp = client.txn(Txn::new().when([guard]).and_then([put])).await.map_err(|e| call(endpoint, e))?;
    if !resp.succeeded() {
        return Err(StartError::Raced);
    }
    Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
}

/// Writes `u` over the revision it was read at; false when someone wrote
/// it meanwhile (the next round reads it again).
pub async fn update(client: &mut Client, endpoint: &str, u: &Upgrade) -> Result<bool, EtcdError> {
    let guard = Compare::mod_revision(KEY, CompareOp::Equal, u.revision);
    let put = TxnOp::put(KEY, serde_json::to_vec(u).expect("the record serializes"), None);
    let resp = client.txn(Txn::new().when([guard]).and_then([put])).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.succeeded())
}
