//! A small typed Kubernetes API client: mutual TLS with the certificates
//! hakube issues, JSON over HTTPS on the existing hyper/rustls stack (one
//! kept HTTP/2 connection per API server carries every request and watch
//! of a client and its clones), bounded retries, and errors that name the
//! object and the server.
//!
//! Reads decode into the few fields hakube uses ([`super::objects`]);
//! writes are patches, so a field this client does not know is never lost.
//! The objects used (Node, Pod, Lease, Event, Deployment) are stable from
//! 1.20 on.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use http_body_util::BodyExt;

use super::watch::Watch;
use crate::config::HostPort;
use crate::https::{self, HttpsError, Identity, Limits, Request};
use crate::retry::{Failure, Retry};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    #[error("{what}: the API server at {server} answered {code} {reason}: {message}")]
    Status { what: String, server: String, code: u16, reason: String, message: String },
    #[error("{what}: cannot reach the API server at {server}: {message}")]
    Unreachable { what: String, server: String, message: String },
    #[error("{what}: the API server at {server} sent something unreadable: {message}")]
    Decode { what: String, server: String, message: String },
    #[error("{0}")]
    Config(String),
}

impl KubeError {
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// 409: a resourceVersion precondition failed, or the object exists.
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }

    /// Whether the same request may succeed later by itself: a server that
    /// did not answer, was busy or failing (429, 5xx), or an object that
    /// changed meanwhile (409). A refusal it will repeat (403: a missing
    /// role; 422: an invalid object), an answer it cannot read, or a
    /// client that cannot be made will not.
    pub fn retryable(&self) -> bool {
        match self {
            KubeError::Unreachable { .. } => true,
            KubeError::Status { code, .. } => *code == 409 || *code == 429 || *code >= 500,
            KubeError::Decode { .. } | KubeError::Config(_) => false,
        }
    }
}

/// The `Status` object the API server sends with an error.
#[derive(Deserialize, Default)]
struct Status {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

/// How a write merges into the object.
#[derive(Debug, Clone, Copy)]
pub enum Patch {
    /// RFC 7386: objects merge, lists are replaced, `null` deletes.
    Merge,
    /// Kubernetes' own: lists with a merge key merge by it.
    Strategic,
    /// Server-side apply: the object as this field manager wants it,
    /// created when absent (append `?fieldManager=…&force=true` to the path).
    Apply,
}

impl Patch {
    fn content_type(self) -> &'static str {
        match self {
            Patch::Merge => "application/merge-patch+json",
            Patch::Strategic => "application/strategic-merge-patch+json",
            Patch::Apply => "application/apply-patch+yaml",
        }
    }
}

/// Attempts per request (each tries every server); the pauses between
/// them double from 200 ms.
const RETRY: Retry = Retry::attempts(4, Duration::from_millis(200)).doubling_to(Duration::from_secs(2));

/// Objects per page of a list: the API server's own advice for clients
/// that list large collections.
pub const PAGE: usize = 500;

/// A continue token as a query value (they are base64: `+`, `/`, `=`).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Clone)]
pub struct KubeClient {
    /// Tried in order until one answers.
    servers: Vec<HostPort>,
    tls: Arc<rustls::ClientConfig>,
    limits: Limits,
    /// One HTTP/2 connection per server, shared by every clone: requests
    /// and watches are streams on it, not a TLS handshake each.
    pool: https::Pool,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<_> = self.servers.iter().map(ToString::to_string).collect();
        write!(f, "KubeClient({})", servers.join(","))
    }
}

/// `https://host:port` to the host and port.
pub fn server_address(url: &str) -> Result<HostPort, KubeError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| KubeError::Config(format!("API server URL {url:?} is not https://HOST:PORT")))?;
    rest.trim_end_matches('/')
        .parse()
        .map_err(|e: crate::config::types::InvalidValue| KubeError::Config(format!("API server URL {url:?}: {}", e.0)))
}

impl KubeClient {
    pub fn new(servers: Vec<HostPort>, ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, KubeError> {
        if servers.is_empty() {
            return Err(KubeError::Config("no API server to talk to".into()));
        }
        let tls = https::client_config(ca_pem, Some(Identity { cert_pem, key_pem }))
            .map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(KubeClient { servers, tls: Arc::new(tls), limits: Limits::default(), pool: https::Pool::default() })
    }

    /// A client with the server and identity of a kubeconfig hakube wrote.
    pub fn from_kubeconfig(path: &std::path::Path) -> Result<Self, KubeError> {
        let c = super::kubeconfig::read(path).map_err(KubeError::Config)?;
        let server = server_address(&c.server)?;
        Self::new(vec![server], c.ca_pem.as_bytes(), c.cert_pem.as_bytes(), c.key_pem.as_bytes())
    }

    /// The same identity, talking to other servers.
    pub fn with_servers(&self, servers: Vec<HostPort>) -> Self {
        KubeClient { servers, ..self.clone() }
    }

    pub fn with_timeout(mut self, exchange: Duration) -> Self {
        self.limits.exchange = exchange;
        self
    }

    /// Sends one request with bounded retries: another server when one
    /// cannot be reached or its connection broke, a pause and another try when the server is busy
    /// (429) or unavailable (5xx). `what` names the object for errors.
    async fn send(
        &self,
        what: &str,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<axum::body::Bytes, KubeError> {
        let headers: Vec<(&str, &str)> =
            [("accept", "application/json")].into_iter().chain(content_type.map(|c| ("content-type", c))).collect();
        // One attempt tries every server; the last failure decides.
        let (headers, body) = (&headers, &body);
        RETRY
            .run(|| async move {
                let mut last = None;
                for server in &self.servers {
                    let req = Request { method, path, headers, body: body.clone() };
                    match self.pool.request(server, &self.tls, req, self.limits).await {
                        Ok(resp) if (200..300).contains(&resp.status) => return Ok(resp.body),
                        Ok(resp) => {
                            let err = status_error(what, server, resp.status, &resp.body);
                            if resp.status != 429 && resp.status < 500 {
                                return Err(Failure::Final(err));
                            }
                            last = Some(err);
                        }
                        Err(e) => {
                            // Sent or not, a read and the writes this client
                            // makes (patches of a whole document, deletes)
                            // may go again: the result is the same. A create
                            // may not.
                            let again = e.before_sending() || matches!(method, "GET" | "PATCH" | "DELETE");
                            let err = unreachable(what, server, &e);
                            if !again {
                                return Err(Failure::Final(err));
                            }
                            last = Some(err);
                        }
                    }
                }
                Err(Failure::Again(last.expect("a client has at least one server")))
            })
            .await
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T, KubeError> {
        serde_json::from_slice(bytes).map_err(|e| KubeError::Decode {
            what: what.to_owned(),
            server: self.servers.first().map(ToString::to_string).unwrap_or_default(),
            message: e.to_string(),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T, KubeError> {
        let bytes = self.send(what, "GET", path, None, None).await?;
        self.decode(what, &bytes)
    }

    /// A document that is not JSON (the API server's `/metrics`).
    pub async fn get_text(&self, what: &str, path: &str) -> Result<String, KubeError> {
        let bytes = self.send(what, "GET", path, None, None).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// As [`Self::get`], with a missing object as `None`.
    pub async fn get_opt<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<Option<T>, KubeError> {
        match self.get(what, path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        kind: Patch,
        body: &serde_json::Value,
    ) -> Result<T, KubeError> {
        let bytes =
            self.send(what, "PATCH", path, Some(kind.content_type()), Some(body.to_string().into_bytes())).await?;
        self.decode(what, &bytes)
    }

    pub async fn create<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, KubeError> {
        let bytes =
            self.send(what, "POST", path, Some("application/json"), Some(body.to_string().into_bytes())).await?;
        self.decode(what, &bytes)
    }

    /// Every object of a collection, in pages of `PAGE`, and the version
    /// the list is at (to watch from).
    pub async fn list_all<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<(Vec<T>, String), KubeError> {
        let mut items = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page_path = match &next {
                None => format!("{path}?limit={PAGE}"),
                Some(token) => format!("{path}?limit={PAGE}&continue={}", query_escape(token)),
            };
            let page: super::objects::List<T> = self.get(what, &page_path).await?;
            items.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => next = Some(token),
                None => return Ok((items, page.metadata.resource_version)),
            }
        }
    }

    /// Opens a watch on a collection from `version` (see [`super::watch`]),
    /// at the first server that answers.
    pub async fn watch(&self, what: &str, path: &str, version: &str) -> Result<Watch, KubeError> {
        let full = format!("{path}?{}", super::watch::watch_query(version));
        let mut last = None;
        for server in &self.servers {
            let req = Request { method: "GET", path: &full, headers: &[("accept", "application/json")], body: None };
            match self.pool.stream(server, &self.tls, req, self.limits).await {
                Ok(resp) if resp.status == 200 => return Ok(Watch::new(resp.body, what, server.to_string())),
                Ok(resp) => {
                    let body = http_body_util::Limited::new(resp.body, 64 << 10).collect().await;
                    let bytes = body.map(|b| b.to_bytes()).unwrap_or_default();
                    return Err(status_error(what, server, resp.status, &bytes));
                }
                Err(e) => last = Some(unreachable(what, server, &e)),
            }
        }
        Err(last.unwrap_or_else(|| KubeError::Config("no API server to talk to".into())))
    }

    /// Deletes; an object already gone is not an error.
    pub async fn delete(&self, what: &str, path: &str, body: &serde_json::Value) -> Result<(), KubeError> {
        match self.send(what, "DELETE", path, Some("application/json"), Some(body.to_string().into_bytes())).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// An answer that is not a success: the server's `Status`, or the start of
/// whatever it sent instead.
fn status_error(what: &str, server: &HostPort, code: u16, body: &[u8]) -> KubeError {
    let status: Status = serde_json::from_slice(body).unwrap_or_default();
    KubeError::Status {
        what: what.to_owned(),
        server: server.to_string(),
        code,
        reason: status.reason,
        message: if status.message.is_empty() {
            String::from_utf8_lossy(body).chars().take(300).collect()
        } else {
            status.message
        },
    }
}

fn unreachable(what: &str, server: &HostPort, e: &HttpsError) -> KubeError {
    KubeError::Unreachable { what: what.to_owned(), server: server.to_string(), message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_survive_the_query() {
        assert_eq!(query_escape("eyJ2Ijo+/x=="), "eyJ2Ijo%2B%2Fx%3D%3D");
    }

    #[test]
    fn server_urls_become_addresses() {
        assert_eq!(server_address("https://10.0.0.1:6443").unwrap().to_string(), "10.0.0.1:6443");
        assert_eq!(server_address("https://lb.example.test:6443/").unwrap().to_string(), "lb.example.test:6443");
        assert!(server_address("http://10.0.0.1:6443").is_err());
    }
}
