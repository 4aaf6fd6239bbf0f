//! The cluster as a whole: the registry of its hosts, the cluster-wide
//! settings, and what the masters' agents do for every node (serving joins
//! and heartbeats; the elected one sets control-plane roles, removes
//! stalled learners, purges lost nodes and drives load-balancer address
//! changes).

pub mod controller;
pub mod election;
pub mod error;
pub mod heartbeat;
pub mod lbchange;
pub mod purge;
pub mod registry;
pub mod removal;
pub mod report;
pub mod restore;
pub mod settings;
pub mod taints;
pub mod upgrade;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use error::ClusterError;

/// What a host is to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Role::Master => "master",
            Role::Worker => "worker",
        })
    }
}
