//! The joining host's side of the join API: HTTPS with the CA pinned by
//! hash, so the token is only ever sent to the cluster the script names.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;

use super::tls;
use super::wire::{ApiError, JoinRequest, JoinResponse};
use crate::config::HostPort;
use crate::https::{self, HttpsError, Limits, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the join API at {endpoint}: {message} (is it a master's address and port?)")]
    Unreachable { endpoint: String, message: String },
    #[error("{endpoint}: {message}")]
    Pin { endpoint: String, message: String },
    #[error("the join API at {endpoint} refused the join ({status}): {message}")]
    Refused { endpoint: String, status: u16, message: String },
    #[error("the join API at {endpoint} answered something that is not a join response: {message}")]
    Malformed { endpoint: String, message: String },
}

impl ClientError {
    /// Whether another endpoint may do better: a 4xx refusal or a pin
    /// mismatch would be the same everywhere; one master's trouble (5xx,
    /// including "cannot reach etcd") or load (429) may not.
    pub fn try_next(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Malformed { .. } => true,
            ClientError::Refused { status, .. } => *status >= 500 || *status == 429,
            ClientError::Pin { .. } => false,
        }
    }
}

async fn request(
    endpoint: &str,
    ca_hash: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Bytes), ClientError> {
    let unreachable = |message: String| ClientError::Unreachable { endpoint: endpoint.to_owned(), message };
    let hp: HostPort = endpoint.parse().map_err(|e: crate::config::types::InvalidValue| unreachable(e.0))?;
    let method = if body.is_some() { "POST" } else { "GET" };
    let req = Request { method, path, headers: &[("content-type", "application/json")], body };
    // Every step bounded, the answer too: a server that stalls mid-body
    // does not hold a join forever.
    let limits = Limits { connect: Duration::from_secs(5), exchange: Duration::from_secs(120), max_body: 256 << 20 };
    match https::request(&hp, Arc::new(tls::client_config(ca_hash)), req, limits).await {
        Ok(resp) => Ok((resp.status, resp.body)),
        Err(HttpsError::Untrusted(message)) => Err(ClientError::Pin { endpoint: endpoint.to_owned(), message }),
        Err(e) => Err(unreachable(e.to_string())),
    }
}

/// Asks one endpoint to join.
pub async fn join(endpoint: &str, ca_hash: &str, req: &JoinRequest) -> Result<JoinResponse, ClientError> {
    let body = serde_json::to_vec(req).expect("request serializes");
    let sent = crate::host::clock::now_millis();
    let (status, bytes) = request(endpoint, ca_hash, "/v1/join", Some(body)).await?;
    let received = crate::host::clock::now_millis();
    if status != 200 {
        let message = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        return Err(ClientError::Refused { endpoint: endpoint.to_owned(), status, message });
    }
    let mut resp: JoinResponse = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Malformed { endpoint: endpoint.to_owned(), message: e.to_string() })?;
    resp.clock_offset_ms = resp.now_ms.and_then(|peer| crate::host::clock::offset_ms(sent, peer, received));
    Ok(resp)
}

/// Every endpoint's answer, when none accepted the join.
#[derive(Debug)]
pub struct NoneAccepted(pub Vec<ClientError>);

impl NoneAccepted {
    /// Whether the cluster said "not now" and nothing said "never": a
    /// master answered 503 (its etcd has no quorum, or it cannot reach it)
    /// or 429 (too many joins at once), and every other answer was one
    /// another try may better. Masters that are all unreachable are no
    /// reason to wait: the address is more likely wrong than the cluster
    /// down.
    pub fn worth_waiting(&self) -> bool {
        self.0.iter().any(|e| matches!(e, ClientError::Refused { status: 503 | 429, .. }))
            && self.0.iter().all(ClientError::try_next)
    }
}

impl std::fmt::Display for NoneAccepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [] => write!(f, "no join endpoint given"),
            [one] => write!(f, "{one}"),
            all => {
                write!(f, "no master accepted the join:")?;
                for e in all {
                    write!(f, "\n  - {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for NoneAccepted {}

/// Tries each endpoint in turn until one accepts; stops at the first
/// refusal that every master would give (a bad token, a pin mismatch).
pub async fn join_any(
    endpoints: &[String],
    ca_hash: &str,
    req: &JoinRequest,
) -> Result<(String, JoinResponse), NoneAccepted> {
    let mut failed = vec![];
    for ep in endpoints {
        match join(ep, ca_hash, req).await {
            Ok(r) => return Ok((ep.clone(), r)),
            Err(e) if e.try_next() => failed.push(e),
            Err(e) => return Err(NoneAccepted(vec![e])),
        }
    }
    Err(NoneAccepted(failed))
}

/// `GET /v1/bundle` on one endpoint with the join token: the response body
/// as it comes, or None when that master has no bundle file (404).
pub async fn bundle(
    endpoint: &str,
    ca_hash: &str,
    token: &crate::join::token::JoinToken,
) -> Result<Option<hyper::body::Incoming>, ClientError> {
    let unreachable = |message: String| ClientError::Unreachable { endpoint: endpoint.to_owned(), message };
    let hp: HostPort = endpoint.parse().map_err(|e: crate::config::types::InvalidValue| unreachable(e.0))?;
    let auth = format!("Bearer {}", token.reveal());
    let req = Request { method: "GET", path: "/v1/bundle", headers: &[("authorization", &auth)], body: None };
    let limits = Limits { connect: Duration::from_secs(5), exchange: Duration::from_secs(30), max_body: 0 };
    let resp = match https::stream(&hp, Arc::new(tls::client_config(ca_hash)), req, limits).await {
        Ok(r) => r,
        Err(HttpsError::Untrusted(message)) => return Err(ClientError::Pin { endpoint: endpoint.to_owned(), message }),
        Err(e) => return Err(unreachable(e.to_string())),
    };
    match resp.status {
        200 => Ok(Some(resp.body)),
        404 => Ok(None),
        status => {
            use http_body_util::BodyExt as _;
            let bytes = resp.body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            Err(ClientError::Refused { endpoint: endpoint.to_owned(), status, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(endpoint: &str, status: u16) -> ClientError {
        ClientError::Refused { endpoint: endpoint.into(), status, message: "no".into() }
    }

    fn unreachable(endpoint: &str) -> ClientError {
        ClientError::Unreachable { endpoint: endpoint.into(), message: "refused".into() }
    }

    #[test]
    fn a_join_waits_when_the_cluster_says_not_now_and_nothing_says_never() {
        let wait = |errors: Vec<ClientError>| NoneAccepted(errors).worth_waiting();
        assert!(wait(vec![refused("m2", 503), unreachable("m1")]), "no quorum while a master is down");
        assert!(wait(vec![refused("m1", 429)]), "too many joins at once");
        assert!(!wait(vec![unreachable("m1"), unreachable("m2")]), "nobody answered: a wrong address, most likely");
        assert!(!wait(vec![refused("m1", 503), refused("m2", 401)]), "a refusal for good");
        assert!(!wait(vec![refused("m1", 500)]), "a fault that waiting will not mend");
        assert!(!wait(vec![]));
    }

    #[test]
    fn a_join_that_failed_everywhere_says_what_each_master_answered() {
        let one = NoneAccepted(vec![unreachable("m1:9443")]).to_string();
        assert_eq!(one, "cannot reach the join API at m1:9443: refused (is it a master's address and port?)");
        let both = NoneAccepted(vec![refused("m2:9443", 503), unreachable("m1:9443")]).to_string();
        assert!(both.starts_with("no master accepted the join:\n  - the join API at m2:9443 refused the join (503): no\n  - cannot reach"), "{both}");
    }
}
