//! What travels between a joining host and a master's join API (JSON).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::token::{JoinToken, Role};
use crate::config::ClusterSpec;
use crate::etcd::Member;

/// Bodies larger than this are refused (413) before they are parsed.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Redacted in `Debug`; on the wire as `id.secret`.
    pub token: JoinToken,
    pub role: Role,
    pub node_name: String,
    pub advertise_address: IpAddr,
    /// A worker's CSR for its kubelet client certificate (PEM); its key
    /// stays on the worker.
    #[serde(default)]
    pub kubelet_csr: Option<String>,
    /// A worker's CSR for its kube-proxy client certificate (PEM).
    #[serde(default)]
    pub kube_proxy_csr: Option<String>,
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
    /// Workers: kube-proxy's client certificate, when asked for.
    #[serde(default)]
    pub kube_proxy_cert: Option<String>,
    pub etcd_members: Vec<Member>,
    /// Every master's join API (`host:port`).
    pub join_endpoints: Vec<String>,
    /// The master's wall clock as it answered (ms since the epoch), for the
    /// joiner to see how far its own clock is.
    #[serde(default)]
    pub now_ms: Option<u64>,
    /// Filled in by the joiner: its clock minus the master's (ms), when
    /// the exchange was quick enough to tell.
    #[serde(skip)]
    pub clock_offset_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_request_never_shows_its_secret_in_debug() {
        let req = JoinRequest {
            token: "abcdef.0123456789abcdef".parse().unwrap(),
            role: Role::Worker,
            node_name: "w1".into(),
            advertise_address: "10.0.0.21".parse().unwrap(),
            kubelet_csr: None,
            kube_proxy_csr: None,
        };
        let dbg = format!("{req:?}");
        assert!(dbg.contains("abcdef") && !dbg.contains("0123456789abcdef"), "{dbg}");
        // On the wire it is whole, and parses back.
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains("\"token\":\"abcdef.0123456789abcdef\""), "{json}");
        let back: JoinRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.token, req.token);
        let e = serde_json::from_str::<JoinRequest>(&json.replace("abcdef.0123456789abcdef", "nope")).unwrap_err();
        assert!(e.to_string().contains("a join token has the form"), "{e}");
    }
}
