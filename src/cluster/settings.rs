//! The cluster-wide settings (`ha`, `load-balancer-address`,
//! `taint-control-plane`, `lost-node-toleration`, the networks, …): one
//! versioned record in etcd. An install on any master changes it by
//! compare-and-swap on its revision; every agent watches it and converges,
//! keeping a readable copy in its host's `cluster.yaml`; joining nodes take
//! it as it is. Nothing cluster-wide is decided from one host's file alone.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::config::ClusterSpec;
use crate::etcd::EtcdError;

pub const KEY: &str = "/hakube/cluster/settings";

/// The record as etcd holds it, with the revision it was read at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub spec: ClusterSpec,
    /// etcd's mod revision of the record: the version every node reports
    /// having applied.
    #[serde(skip)]
    pub revision: i64,
    /// Which node wrote it, and when (unix seconds): for `status`.
    pub written_by: String,
    pub written_at: u64,
    /// Fields of the record this hakube does not know (a newer one wrote
    /// them), set aside when it was read: a write based on it would drop
    /// them, so [`write`] refuses.
    #[serde(skip)]
    pub unknown: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(
        "the cluster-wide settings changed while this install ran (revision {expected} became {found}, written by \
         {by}): another install changed them at the same time; run this one again to apply it over theirs"
    )]
    Conflict { expected: i64, found: i64, by: String },
    #[error("the cluster-wide settings record in etcd is unreadable ({0}): it was not written by this hakube")]
    Unreadable(String),
    #[error(
        "the cluster-wide settings were written by a newer hakube ({by}; fields this one does not know: {}): \
         writing them from this hakube would drop those; run the newer hakube (it is in the cluster's bundle)",
        fields.join(", ")
    )]
    Newer { fields: Vec<String>, by: String },
}

fn call(endpoint: &str, e: etcd_client::Error) -> EtcdError {
    EtcdError::Call { endpoint: endpoint.into(), message: e.to_string() }
}

/// The current record, if any (a linearizable read).
pub async fn read(client: &mut Client, endpoint: &str) -> Result<Option<Settings>, SettingsError> {
    let resp = client.get(KEY, None).await.map_err(|e| call(endpoint, e))?;
    let Some(kv) = resp.kvs().first() else { return Ok(None) };
    let mut s = parse(kv.value())?;
    s.revision = kv.mod_revision();
    Ok(Some(s))
}

/// The record's bytes, read leniently: fields of the spec a newer hakube
/// wrote are set aside and named ([`Settings::unknown`]).
pub fn parse(bytes: &[u8]) -> Result<Settings, SettingsError> {
    let unreadable = |e: serde_json::Error| SettingsError::Unreadable(e.to_string());
    let mut v: serde_json::Value = serde_json::from_slice(bytes).map_err(unreadable)?;
    let unknown = match v.get_mut("spec") {
        Some(spec) => crate::config::lenient::strip_unknown::<ClusterSpec>(spec),
        None => vec![],
    };
    let mut s: Settings = serde_json::from_value(v).map_err(unreadable)?;
    s.unknown = unknown;
    Ok(s)
}

/// Writes `spec` over `base`, the record it was made from (None: there is
/// none yet), if the record is still at `base`'s revision. Returns the new
/// revision, or the conflict; refuses a base a newer hakube wrote, whose
/// unknown fields the write would drop.
pub async fn write(
    client: &mut Client,
    endpoint: &str,
    spec: &ClusterSpec,
    base: Option<&Settings>,
    by: &str,
    now: u64,
) -> Result<i64, SettingsError> {
    if let Some(b) = base.filter(|b| !b.unknown.is_empty()) {
        return Err(SettingsError::Newer { fields: b.unknown.clone(), by: b.written_by.clone() });
    }
    let expected = base.map_or(0, |b| b.revision);
    let record =
        Settings { spec: spec.clone(), revision: 0, written_by: by.to_owned(), written_at: now, unknown: vec![] };
    let body = serde_json::to_vec(&record).expect("settings serialize");
    let guard = if expected == 0 {
        Compare::create_revision(KEY, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(KEY, CompareOp::Equal, expected)
    };
    let txn = Txn::new().when([guard]).and_then([TxnOp::put(KEY, body, None)]).or_else([TxnOp::get(KEY, None)]);
    let resp = client.txn(txn).await.map_err(|e| call(endpoint, e))?;
    if resp.succeeded() {
        return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
    }
    let current = match resp.op_responses().into_iter().next() {
        Some(etcd_client::TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| {
            let by = parse(kv.value()).map(|s| s.written_by).unwrap_or_default();
            (kv.mod_revision(), by)
        }),
        _ => None,
    };
    let (found, by) = current.unwrap_or((0, String::new()));
    Err(SettingsError::Conflict { expected, found, by })
}
