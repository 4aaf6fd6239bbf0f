//! Joining hosts to the cluster: tokens and scripts, what travels to and
//! from the join endpoint (served by [`crate::api`]), and `hakube join` on
//! the new host.

pub mod client;
pub mod issue;
pub mod material;
pub mod script;
pub mod store;
pub mod tls;
pub mod token;
pub mod wire;
