//! Talking to etcd over mutual TLS: health and membership.

pub mod membership;

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::host::fs::FsError;
use crate::host::paths::Paths;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path} is missing: this node has no etcd client certificate")]
    NoCredentials { path: String },
    #[error("etcd at {endpoint}: {message}")]
    Call { endpoint: String, message: String },
}

/// Client credentials for etcd, read from the node's PKI.
#[derive(Clone)]
pub struct Credentials {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// The healthcheck client, as kubeadm's etcd probes use; `client` names
    /// another pair under `pki/` (e.g. `apiserver-etcd-client`).
    pub fn load(paths: &Paths, client: &str) -> Result<Credentials, EtcdError> {
        let read = |name: &str| {
            let path = paths.pki(name);
            crate::host::fs::read_optional(&path)?.ok_or(EtcdError::NoCredentials { path: path.display().to_string() })
        };
        Ok(Credentials {
            ca: read("etcd/ca.crt")?,
            cert: read(&format!("{client}.crt"))?,
            key: read(&format!("{client}.key"))?,
        })
    }
}

/// Connects to `endpoints` (one is enough; the client balances over them);
/// every request is bounded by `timeout`.
pub async fn connect(endpoints: &[String], creds: &Credentials, timeout: Duration) -> Result<Client, EtcdError> {
    connect_with(endpoints, creds, timeout, Some(timeout)).await
}

/// As [`connect`], with requests unbounded unless `request_timeout` is
/// given: for calls that wait by design, such as taking a lock.
pub async fn connect_with(
    endpoints: &[String],
    creds: &Credentials,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
) -> Result<Client, EtcdError> {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&creds.ca))
        .identity(Identity::from_pem(&creds.cert, &creds.key));
    let mut opts = ConnectOptions::new().with_tls(tls).with_connect_timeout(connect_timeout);
    if let Some(t) = request_timeout {
        opts = opts.with_timeout(t);
    }
    Client::connect(endpoints, Some(opts))
        .await
        .map_err(|e| EtcdError::Call { endpoint: endpoints.join(","), message: e.to_string() })
}

/// The health check `etcdctl endpoint health` makes: a linearizable read,
/// which only succeeds when the member is part of a quorum with a leader.
pub async fn check_health(client: &mut Client, endpoint: &str) -> Result<(), EtcdError> {
    match client.get("health", None).await {
        Ok(_) => Ok(()),
        // A permission error still proves a quorum answered (etcdctl does the same).
        Err(e) if e.to_string().contains("permission denied") => Ok(()),
        Err(e) => Err(EtcdError::Call { endpoint: endpoint.to_owned(), message: e.to_string() }),
    }
}

/// A member as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl From<&etcd_client::Member> for Member {
    fn from(m: &etcd_client::Member) -> Self {
        Member {
            id: m.id(),
            name: m.name().to_owned(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
        }
    }
}

impl Member {
    /// A member that was added but whose etcd has not started yet has no name.
    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }
}

pub async fn members(client: &mut Client, endpoint: &str) -> Result<Vec<Member>, EtcdError> {
    let resp = client
        .member_list()
        .await
        .map_err(|e| EtcdError::Call { endpoint: endpoint.to_owned(), message: e.to_string() })?;
    Ok(resp.members().iter().map(Member::from).collect())
}
