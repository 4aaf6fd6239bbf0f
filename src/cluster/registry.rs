//! The host registry in etcd: one record per node, keyed by name, so a name
//! can belong to one host only and lost hosts can be found later.

use std::net::IpAddr;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::Role;
use crate::etcd::EtcdError;

pub const NODE_PREFIX: &str = "/hakube/nodes/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub role: Role,
    pub address: IpAddr,
    pub joined_at: u64,
    pub heartbeat_at: u64,
    /// The revision of the cluster-wide settings the node last applied.
    #[serde(default)]
    pub settings_revision: i64,
    /// The node's clock minus a master's, as the node last measured it
    /// (ms; none before it could, e.g. a master alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
    /// The Kubernetes version of each component's binary, as its last beat
    /// reported them (`kubelet` → `v1.37.2`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub versions: std::collections::BTreeMap<String, String>,
    /// Whether everything it runs was healthy at its last beat (None: its
    /// agent does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// The hakube build its agent runs, as its last beat said (None: its
    /// agent does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hakube: Option<crate::cluster::upgrade::Build>,
    /// Its node-local balancer, as its last beat said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<crate::cluster::heartbeat::BalancerBrief>,
}

pub async fn get(client: &mut Client, endpoint: &str, name: &str) -> Result<Option<NodeRecord>, EtcdError> {
    let resp = client
        .get(format!("{NODE_PREFIX}{name}"), None)
        .await
        .map_err(|e| EtcdError::Call { endpoint: endpoint.into(), message: e.to_string() })?;
    Ok(resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

pub async fn put(client: &mut Client, endpoint: &str, record: &NodeRecord) -> Result<(), EtcdError> {
    client
        .put(format!("{NODE_PREFIX}{}", record.name), serde_json::to_vec(record).expect("record serializes"), None)
        .await
        .map_err(|e| EtcdError::Call { endpoint: endpoint.into(), message: e.to_string() })?;
    Ok(())
}

fn call(endpoint: &str, e: etcd_client::Error) -> EtcdError {
    EtcdError::Call { endpoint: endpoint.into(), message: e.to_string() }
}

pub fn key(name: &str) -> String {
    format!("{NODE_PREFIX}{name}")
}

/// What a claim of a name ended in.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The record is written; the earlier one, if the host had one.
    Claimed(Option<NodeRecord>),
    /// Another host holds the name.
    Conflict(String),
}

/// Claims `record.name` for `record`'s host in one compare-and-swap: the
/// name is free (no key) or already this host's (the key unchanged since it
/// was read and naming the same address and role). Two joins with one name
/// at once: one claims it, the other is told who holds it.
/// `keep_joined_at` keeps the first join's time on a re-run.
pub async fn claim(client: &mut Client, endpoint: &str, mut record: NodeRecord) -> Result<Claim, EtcdError> {
    let k = key(&record.name);
    for _ in 0..10 {
        let resp = client.get(k.as_str(), None).await.map_err(|e| call(endpoint, e))?;
        let existing = resp.kvs().first();
        let current: Option<NodeRecord> = existing.and_then(|kv| serde_json::from_slice(kv.value()).ok());
        if let Some(msg) = name_conflict(current.as_ref(), record.address, record.role) {
            return Ok(Claim::Conflict(msg));
        }
        let guard = match existing {
            None => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
            Some(kv) => Compare::mod_revision(k.as_str(), CompareOp::Equal, kv.mod_revision()),
        };
        if let Some(c) = &current {
            record.joined_at = c.joined_at;
        }
        let put = TxnOp::put(k.as_str(), serde_json::to_vec(&record).expect("record serializes"), None);
        let txn = Txn::new().when([guard]).and_then([put]);
        if client.txn(txn).await.map_err(|e| call(endpoint, e))?.succeeded() {
            return Ok(Claim::Claimed(current));
        }
    }
    Err(EtcdError::Call {
        endpoint: endpoint.to_owned(),
        message: format!("the registry record of {} kept changing under ten attempts to claim it", record.name),
    })
}

/// Changes a node's record with `f`, by compare-and-swap; `None` when the
/// node has no record (never joined, or removed).
pub async fn update(
    client: &mut Client,
    endpoint: &str,
    name: &str,
    mut f: impl FnMut(&mut NodeRecord),
) -> Result<Option<NodeRecord>, EtcdError> {
    let k = key(name);
    for _ in 0..10 {
        let resp = client.get(k.as_str(), None).await.map_err(|e| call(endpoint, e))?;
        let Some(kv) = resp.kvs().first() else { return Ok(None) };
        let Ok(mut record) = serde_json::from_slice::<NodeRecord>(kv.value()) else { return Ok(None) };
        f(&mut record);
        let put = TxnOp::put(k.as_str(), serde_json::to_vec(&record).expect("record serializes"), None);
        let txn =
            Txn::new().when([Compare::mod_revision(k.as_str(), CompareOp::Equal, kv.mod_revision())]).and_then([put]);
        if client.txn(txn).await.map_err(|e| call(endpoint, e))?.succeeded() {
            return Ok(Some(record));
        }
    }
    Err(EtcdError::Call { endpoint: endpoint.to_owned(), message: format!("the record of {name} kept changing") })
}

pub async fn delete(client: &mut Client, endpoint: &str, name: &str) -> Result<(), EtcdError> {
    client.delete(key(name), None).await.map_err(|e| call(endpoint, e))?;
    Ok(())
}

pub async fn list(client: &mut Client, endpoint: &str) -> Result<Vec<NodeRecord>, EtcdError> {
    let resp = client.get(NODE_PREFIX, Some(GetOptions::new().with_prefix())).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
}

/// Whether `name` may be taken by a `role` host at `address`: free, or
/// already its own (the same address and role: a re-run of its join).
pub fn name_conflict(existing: Option<&NodeRecord>, address: IpAddr, role: Role) -> Option<String> {
    match existing {
        Some(r) if r.address != address || r.role != role => Some(format!(
            "node name {} is taken by the {} at {}: give this host another --node-name, \
             or run `hakube reset` on that host and remove it first",
            r.name, r.role, r.address
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_belongs_to_one_host_and_role() {
        let m1 = NodeRecord {
            name: "m1".into(),
            role: Role::Master,
            address: "10.0.0.11".parse().unwrap(),
            joined_at: 0,
            heartbeat_at: 0,
            settings_revision: 0,
            clock_offset_ms: None,
            versions: Default::default(),
            hakube: None,
            balancer: None,
            healthy: None,
        };
        assert_eq!(name_conflict(Some(&m1), m1.address, Role::Master), None, "a re-run of its own join");
        assert!(name_conflict(Some(&m1), "10.0.0.12".parse().unwrap(), Role::Master).is_some());
        let err = name_conflict(Some(&m1), m1.address, Role::Worker).unwrap();
        assert!(err.contains("taken by the master at 10.0.0.11"), "{err}");
        assert_eq!(name_conflict(None, m1.address, Role::Worker), None);
    }
}
