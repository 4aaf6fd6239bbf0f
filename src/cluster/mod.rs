//! The cluster as a whole: the registry of its hosts and the duties the
//! masters' agents perform for every node (serving joins, heartbeats,
//! removing stalled learners).

pub mod controller;
pub mod duties;
pub mod election;
pub mod purge;
pub mod registry;
pub mod settings;
pub mod taints;

use std::fmt;

use serde::{Deserialize, Serialize};

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
