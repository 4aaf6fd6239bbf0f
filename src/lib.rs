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
//! - [`host`]: files, processes, systemd, preflight — everything that touches the host;
//! - [`install`], [`status`], [`reset`]: the commands, each a plan then its application;
//! - [`cli`]: the command line, kURL-style words included.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod etcd;
pub mod files;
pub mod host;
pub mod https;
pub mod join;
pub mod kube;
pub mod pki;
pub mod preflight;
pub mod progress;

#[cfg(test)]
mod golden;
