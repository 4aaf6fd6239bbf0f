//! hakube: highly available Kubernetes on bare machines.
//!
//! One binary, two roles: the one-shot installer (`install`, `reset`,
//! `status`, …) and the long-running host agent that supervises the node's
//! components. The parts:
//! - [`config`]: the versioned cluster config and its merge rules;
//! - [`pki`]: kubeadm's certificate set, planned and issued;
//! - [`kube`]: kubeconfigs and the components' command lines;
//! - [`etcd`]: talking to etcd (health, membership);
//! - [`agent`]: the supervisor of the node's processes;
//! - [`lb`]: the node-local load balancer to the masters' API servers;
//! - [`cluster`]: what the masters' agents do for the cluster as a whole;
//! - [`addons`]: CoreDNS and the local-path provisioner, rendered and applied;
//! - [`join`]: tokens, join scripts and the join API;
//! - [`runtime`]: the node's containerd, its images, its containers' end;
//! - [`host`]: files, processes, systemd — everything that touches the host;
//! - [`retry`]: the one way a step is tried again;
//! - [`cli`]: the command line and the commands, each a plan then its
//!   application.

pub mod addons;
pub mod agent;
pub mod api;
pub mod bundle;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod console;
pub mod etcd;
pub mod files;
pub mod host;
pub mod https;
pub mod join;
pub mod kube;
pub mod lb;
pub mod metrics;
pub mod pki;
pub mod preflight;
pub mod progress;
pub mod retry;
pub mod runtime;
pub mod vip;

#[cfg(test)]
mod golden;
