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
pub mod masters;
pub mod podnet;
pub mod probe;
pub mod renew;
pub mod state;
mod supervisor;
pub mod unpack;
pub mod upgrade;

pub use supervisor::{fingerprint, run};
