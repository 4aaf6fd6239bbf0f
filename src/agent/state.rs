//! `state.json`: what the agent last saw of its components. The agent is its
//! only writer; `status` and `install` read it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Spawned; not yet seen healthy.
    Starting,
    Running,
    /// Exited; waiting before the next start.
    Backoff,
    /// Cannot be started (e.g. its binary is missing); retried slowly.
    Failed,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentState {
    pub phase: Phase,
    pub healthy: bool,
    /// How health is judged: `etcd` (a linearizable read) or `process`.
    pub probe: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub since: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The Kubernetes version of the binary its process was last started
    /// from (set as it starts, unhealthy: a report never pairs a new
    /// version with the old process's health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub agent_pid: u32,
    pub started_at: u64,
    /// Counts configuration reloads the agent has finished acting on.
    pub reloads: u64,
    /// Why the last reload was refused (the old configuration stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
    /// Set when the cluster purged this node: why, and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<String>,
    pub components: BTreeMap<String, ComponentState>,
    /// The Kubernetes version of each component's binary (`kubelet` →
    /// `v1.37.2`), as the agent last found them (what it is about to run;
    /// what runs is each component's `version`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, String>,
    /// The hakube build the agent runs (known a moment after it starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hakube: Option<crate::cluster::upgrade::Build>,
    /// Since when (milliseconds since the epoch) this agent holds the
    /// leader's term, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leading_since: Option<u64>,
    /// This master's part in each virtual IP it floats, by address (one,
    /// two while the cluster's moves).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vip: BTreeMap<String, crate::vip::Part>,
    /// The node-local load balancer, where it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<crate::lb::Status>,
}

impl State {
    /// Whether every one of `expected` is running and healthy (a state
    /// written before the agent registered its components has none).
    pub fn all_healthy(&self, expected: &[crate::config::Component]) -> bool {
        expected.iter().all(|c| self.components.get(c.name()).is_some_and(|s| s.phase == Phase::Running && s.healthy))
    }

    /// What the node's heartbeat says of it: the versions its processes
    /// were started from, and whether every component it runs is up and
    /// healthy. An upgrade moves on from a node only when this says the
    /// target and healthy, so it is never the binary on disk that counts.
    pub fn report(&self) -> crate::cluster::heartbeat::Report {
        let healthy = !self.components.is_empty()
            && self.purged.is_none()
            && self.components.values().all(|s| s.phase == Phase::Running && s.healthy);
        let versions = self.components.iter().filter_map(|(n, s)| Some((n.clone(), s.version.clone()?))).collect();
        crate::cluster::heartbeat::Report {
            versions,
            healthy,
            hakube: self.hakube.clone(),
            balancer: self.load_balancer.as_ref().map(crate::cluster::heartbeat::BalancerBrief::of),
        }
    }

    pub fn read(path: &Path) -> Option<State> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}
