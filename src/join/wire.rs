//! What travels between a joining host and a master's join API (JSON).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::token::Role;
use crate::config::ClusterSpec;
use crate::etcd::Member;

/// Bodies larger than this are refused (413) before they are parsed.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    pub role: Role,
    pub node_name: String,
    pub advertise_address: IpAddr,
    /// A worker's CSR for its kubelet client certificate (PEM); its key
    /// stays on the worker.
    #[serde(default)]
    pub kubelet_csr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster: ClusterSpec,
    /// The public CA certificates (`ca.crt`, `etcd/ca.crt`, `front-proxy-ca.crt`).
    pub ca_certs: BTreeMap<String, String>,
    /// Masters: the key material, sealed under the script's certificate key.
    #[serde(default)]
    pub sealed_material: Option<String>,
    /// Workers: the kubelet client certificate issued from the CSR.
    #[serde(default)]
    pub kubelet_cert: Option<String>,
    pub etcd_members: Vec<Member>,
    /// Every master's join API (`host:port`).
    pub join_endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
