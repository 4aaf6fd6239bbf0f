//! The Kubernetes side of a node: kubeconfigs, the command lines and config
//! files of the components the agent supervises, for the version each
//! binary reports.

pub mod client;
pub mod components;
pub mod event;
pub mod inventory;
pub mod kubeconfig;
pub mod objects;
pub mod rbac;
pub mod spec;
pub mod version;
pub mod watch;
