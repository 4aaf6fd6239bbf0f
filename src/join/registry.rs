//! The host registry in etcd: one record per node, keyed by name, so a name
//! can belong to one host only and lost hosts can be found later.

use std::net::IpAddr;

use etcd_client::Client;
use serde::{Deserialize, Serialize};

use super::token::Role;
use crate::etcd::EtcdError;

pub const NODE_PREFIX: &str = "/hakube/nodes/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub role: Role,
    pub address: IpAddr,
    pub joined_at: u64,
    pub heartbeat_at: u64,
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

/// Whether `name` may be taken by a host at `address`: free, or already its own.
pub fn name_conflict(existing: Option<&NodeRecord>, address: IpAddr) -> Option<String> {
    match existing {
        Some(r) if r.address != address => Some(format!(
            "node name {} is taken by {} ({}): give this host another --node-name, \
             or run `hakube reset` on that host and remove it first",
            r.name, r.address, r.role
        )),
        _ => None,
    }
}
