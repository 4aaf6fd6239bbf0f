//! The masters this node knows, kept on disk: a node finds the cluster
//! through them when etcd or the API server is out of its reach (a worker
//! always; a master whose etcd member was removed), and the node-local load
//! balancer sends to them. Seeded at join, kept current by the agent, never
//! emptied by a read that found none.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::host::fs::{write_atomic, FsError};
use crate::host::paths::Paths;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Master {
    pub name: String,
    pub address: IpAddr,
}

/// The masters on disk, else what the config knows (a worker's
/// `apiServers`, a master itself).
pub fn read(paths: &Paths, c: &ClusterConfig) -> Vec<Master> {
    let from_file: Option<Vec<Master>> = std::fs::read(paths.masters_file())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|v: &Vec<Master>| !v.is_empty());
    if let Some(v) = from_file {
        return v;
    }
    let mut v: Vec<Master> = c
        .node
        .api_servers
        .iter()
        .filter_map(|hp| match hp.host {
            crate::config::Host::Ip(ip) => Some(Master { name: String::new(), address: ip }),
            crate::config::Host::Dns(_) => None,
        })
        .collect();
    if c.has(crate::config::Component::Etcd) {
        v.push(Master { name: c.node.name.to_string(), address: c.node.advertise_address });
    }
    v
}

/// Records the masters; an empty list is never written (a read that found
/// none says nothing about where they are). Returns whether it changed.
pub fn write(paths: &Paths, masters: &[Master]) -> Result<bool, FsError> {
    if masters.is_empty() {
        return Ok(false);
    }
    let mut sorted = masters.to_vec();
    sorted.sort();
    sorted.dedup();
    let body = serde_json::to_vec_pretty(&sorted).expect("masters serialize");
    if std::fs::read(paths.masters_file()).ok().as_deref() == Some(&body[..]) {
        return Ok(false);
    }
    write_atomic(&paths.masters_file(), &body, 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_never_replaces_a_known_one() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let c = crate::config::tests::test_config(
            "node: {components: [containerd, kubelet], apiServers: ['10.0.0.11:6443']}",
        );
        assert_eq!(read(&paths, &c), [Master { name: String::new(), address: "10.0.0.11".parse().unwrap() }]);
        let two = [
            Master { name: "m2".into(), address: "10.0.0.12".parse().unwrap() },
            Master { name: "m1".into(), address: "10.0.0.11".parse().unwrap() },
        ];
        assert!(write(&paths, &two).unwrap());
        assert!(!write(&paths, &two).unwrap(), "unchanged");
        assert!(!write(&paths, &[]).unwrap());
        assert_eq!(read(&paths, &c).len(), 2);
        assert_eq!(read(&paths, &c)[0].name, "m1", "kept sorted");
    }
}
