//! Heartbeats: every node says it is alive every [`INTERVAL`], with the
//! revision of the cluster-wide settings it runs, into its registry
//! record. A master writes its own ([`run`]); a worker, which cannot read
//! etcd, posts its beat to a master's node endpoint
//! ([`crate::api::node`]), which records it the same way ([`beat`]). The
//! leader judges a node's life from them (with the Kubernetes Lease, see
//! [`super::purge`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio::sync::watch;
use tokio::time::sleep;
use tracing::{debug, warn};

use super::registry::{self, Claim, NodeRecord};
use super::Role;
use crate::config::ClusterConfig;
use crate::etcd;
use crate::host::clock::now_secs;
use crate::host::paths::Paths;

/// How often a node says it is alive.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// What a node says of itself with each beat: the Kubernetes version of
/// each component's binary, and whether all it runs is healthy (what an
/// upgrade plans from, and `status` shows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, String>,
    #[serde(default)]
    pub healthy: bool,
    /// The hakube build the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hakube: Option<crate::cluster::upgrade::Build>,
    /// The node-local balancer, in short (a node without one: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<BalancerBrief>,
}

/// A node-local balancer in short: how many of its API servers are up,
/// and why it does not listen, if so.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerBrief {
    pub up: usize,
    pub total: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BalancerBrief {
    pub fn of(status: &crate::lb::Status) -> BalancerBrief {
        BalancerBrief {
            up: status.backends.iter().filter(|b| b.health == crate::lb::Health::Up).count(),
            total: status.backends.len(),
            error: status.error.clone(),
        }
    }
}

/// A beat, as the registry records it: when it came, the settings revision
/// the node runs, its clock offset when it measured one, and its report
/// when it sent one (an older agent does not).
pub fn beat(
    record: &mut NodeRecord,
    now: u64,
    settings_revision: i64,
    clock_offset_ms: Option<i64>,
    report: Option<&Report>,
) {
    record.heartbeat_at = now;
    record.settings_revision = settings_revision;
    if clock_offset_ms.is_some() {
        record.clock_offset_ms = clock_offset_ms;
    }
    if let Some(r) = report {
        record.versions = r.versions.clone();
        record.healthy = Some(r.healthy);
        record.hakube = r.hakube.clone();
        record.balancer = r.balancer.clone();
    }
}

/// A master's heartbeat into the registry, with the settings revision it
/// runs (`applied`), until `stop` changes.
pub async fn run(
    paths: Paths,
    cfg: ClusterConfig,
    mut applied: watch::Receiver<i64>,
    report: watch::Receiver<Report>,
    mut stop: watch::Receiver<bool>,
) {
    let mut etcd = etcd::Local::new(&paths, &cfg, Duration::from_secs(3));
    let mut registered = false;
    loop {
        let round = async {
            let (c, endpoint) = etcd.parts().await?;
            let (now, revision) = (now_secs(), *applied.borrow_and_update());
            let report = report.borrow().clone();
            let update = |r: &mut NodeRecord| beat(r, now, revision, None, Some(&report));
            if registry::update(c, endpoint, cfg.node.name.as_str(), update).await?.is_some() {
                registered = true;
            } else {
                // A purged master stays out (its agent learns it and stops).
                if super::purge::tombstone(c, endpoint, cfg.node.name.as_str()).await?.is_some() {
                    return Ok(());
                }
                // A record that was there and is gone was removed on
                // purpose (a reset leaving the cluster): never put back.
                // Only the first master, never registered by a join,
                // registers itself, once.
                if registered || cfg.node.etcd.initial_cluster_state != crate::config::InitialClusterState::New {
                    warn!("this master's record is gone from the registry (a reset or a purge): not registering again");
                    return Ok(());
                }
                // The first master registers itself.
                let record = NodeRecord {
                    name: cfg.node.name.to_string(),
                    role: Role::Master,
                    address: cfg.node.advertise_address,
                    joined_at: now,
                    heartbeat_at: now,
                    settings_revision: revision,
                    clock_offset_ms: None,
                    versions: Default::default(),
                    hakube: None,
                    balancer: None,
                    healthy: None,
                };
                match registry::claim(c, endpoint, record).await? {
                    Claim::Conflict(msg) => warn!("cannot register this master: {msg}"),
                    _ => registered = true,
                }
            }
            Ok::<_, etcd::EtcdError>(())
        };
        // Until a round succeeds (etcd still starting), try again soon.
        let pause = match round.await {
            Ok(()) => INTERVAL,
            Err(e) => {
                etcd.forget();
                debug!(error = %e, "heartbeat skipped a round");
                Duration::from_millis(500)
            }
        };
        // A newly applied settings revision is told at once: a change of
        // the load-balancer address waits on it.
        tokio::select! {
            _ = stop.changed() => return,
            _ = applied.changed() => {}
            _ = sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_carries_the_balancer_in_short() {
        let backend = |name: &str, health| crate::lb::BackendStatus {
            name: name.into(),
            address: format!("{name}:6443"),
            health,
            since: 0,
            active: 0,
            connections: 0,
            dial_failures: 0,
            last_error: None,
        };
        use crate::lb::Health::*;
        let status = crate::lb::Status {
            listen: "127.0.0.1:6444".into(),
            listening: true,
            error: None,
            backends: vec![backend("m1", Up), backend("m2", Down), backend("m3", Unchecked)],
        };
        let brief = BalancerBrief::of(&status);
        assert_eq!(brief, BalancerBrief { up: 1, total: 3, error: None });
        let mut record = NodeRecord {
            name: "w1".into(),
            role: Role::Worker,
            address: "10.0.0.21".parse().unwrap(),
            joined_at: 1,
            heartbeat_at: 1,
            settings_revision: 0,
            clock_offset_ms: None,
            versions: Default::default(),
            healthy: None,
            hakube: None,
            balancer: None,
        };
        let report = Report { balancer: Some(brief.clone()), ..Default::default() };
        beat(&mut record, 9, 3, None, Some(&report));
        assert_eq!(record.balancer, Some(brief));
        // An older agent's beat says nothing of it: nothing is claimed.
        let old: Report = serde_json::from_str(r#"{"healthy":true}"#).unwrap();
        beat(&mut record, 10, 3, None, Some(&old));
        assert_eq!(record.balancer, None);
    }
}
