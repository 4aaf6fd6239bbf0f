//! Joining hosts to the cluster: tokens and scripts, the join API every
//! master serves, and `hakube join` on the new host.

pub mod api;
pub mod client;
pub mod material;
pub mod script;
pub mod store;
pub mod tls;
pub mod token;
pub mod wire;
