//! The long-running host agent: it supervises the node's components as child
//! processes, restarts them with backoff, probes their health and records it
//! all in `state.json`.
//!
//! Signals: SIGTERM/SIGINT stop the components and the agent; SIGHUP re-reads
//! the config and restarts exactly the components whose command line or
//! input files (certificates, kubeconfigs) changed.

pub mod control;
pub mod converge;
pub mod facts;
pub mod handover;
pub mod masters;
pub mod metrics;
pub mod podnet;
pub mod probe;
pub mod renew;
pub mod state;
mod supervisor;
pub mod unpack;
pub mod upgrade;

pub use supervisor::{fingerprint, run};

/// What the node's tasks ask of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read the config again and apply it (what SIGHUP does).
    Reload,
    /// Hand over to this hakube binary ([`handover`]): an upgrade's step
    /// for this node, once everything it runs is healthy on the new bundle.
    HandOver(std::path::PathBuf),
}
