//! The node's container runtime: its own containerd (as k0s and k3s run
//! theirs), configured by hakube ([`containerd`]); the bundle's image
//! archives imported into it ([`images`]); and the node's containers
//! stopped for good when the node leaves the cluster ([`pods`]).

pub mod containerd;
pub mod images;
pub mod pods;
