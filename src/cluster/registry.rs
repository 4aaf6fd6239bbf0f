//! The host registry in etcd: one record per node, keyed by name, so a name
//! can belong to one host only and lost hosts can be found later.

use std::net::IpAddr;

use etcd_client::Client;
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
        };
        assert_eq!(name_conflict(Some(&m1), m1.address, Role::Master), None, "a re-run of its own join");
        assert!(name_conflict(Some(&m1), "10.0.0.12".parse().unwrap(), Role::Master).is_some());
        let err = name_conflict(Some(&m1), m1.address, Role::Worker).unwrap();
        assert!(err.contains("taken by the master at 10.0.0.11"), "{err}");
        assert_eq!(name_conflict(None, m1.address, Role::Worker), None);
    }
}
