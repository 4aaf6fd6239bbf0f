//! The Kubernetes side of a node: kubeconfigs and the command lines of the
//! components the agent supervises.

pub mod components;
pub mod kubeconfig;
