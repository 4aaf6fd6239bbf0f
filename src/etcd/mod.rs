//! Talking to etcd over mutual TLS: health, membership and snapshots.

pub mod lease;
pub mod membership;
pub mod restore;
pub mod snapshot;

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::ClusterConfig;
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

/// The client certificate hakube's own calls to etcd present (the API
/// server's: the same rights, no other pair to keep).
pub const CLIENT_CERT: &str = "apiserver-etcd-client";

/// This master's own etcd member, as hakube reaches it: at its client URL,
/// with [`CLIENT_CERT`]. The one way every part of hakube connects to it:
/// the connection is made on first use and kept; after a call fails the
/// holder [`forget`](Local::forget)s it, and the next use connects anew.
pub struct Local {
    paths: Paths,
    endpoint: String,
    timeout: Duration,
    client: Option<Client>,
}

impl Local {
    /// Every request bounded by `timeout` (connecting too).
    pub fn new(paths: &Paths, cfg: &ClusterConfig, timeout: Duration) -> Local {
        Local { paths: paths.clone(), endpoint: cfg.etcd_client_url(), timeout, client: None }
    }

    /// The member's client URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn credentials(&self) -> Result<Credentials, EtcdError> {
        Credentials::load(&self.paths, CLIENT_CERT)
    }

    /// The kept connection, made now if there is none.
    pub async fn client(&mut self) -> Result<&mut Client, EtcdError> {
        if self.client.is_none() {
            let creds = self.credentials()?;
            self.client = Some(connect(std::slice::from_ref(&self.endpoint), &creds, self.timeout).await?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// The kept connection if there is one, never connecting: for a caller
    /// that must not wait.
    pub fn connected(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// The kept connection and the endpoint, for calls that take both.
    pub async fn parts(&mut self) -> Result<(&mut Client, &str), EtcdError> {
        self.client().await?;
        Ok((self.client.as_mut().expect("connected above"), &self.endpoint))
    }

    /// Drops the kept connection (after a call failed on it).
    pub fn forget(&mut self) {
        self.client = None;
    }

    /// Connects once, for a command: the client and the endpoint.
    pub async fn connect(paths: &Paths, cfg: &ClusterConfig, timeout: Duration) -> Result<(Client, String), EtcdError> {
        let mut local = Local::new(paths, cfg, timeout);
        local.client().await?;
        Ok((local.client.take().expect("connected above"), local.endpoint))
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

/// Whether a call ended on the client's own request timeout (tonic's
/// "Timeout expired"), not on anything etcd said.
pub fn is_request_timeout(e: &etcd_client::Error) -> bool {
    match e {
        // gRPC codes: 1 cancelled (tonic's timeout), 4 deadline exceeded.
        etcd_client::Error::GRpcStatus(s) => {
            let code = i32::from(s.code());
            code == 4 || (code == 1 && s.message() == "Timeout expired")
        }
        _ => false,
    }
}

/// The health check `etcdctl endpoint health` makes: a linearizable read,
/// which only succeeds when the member is part of a quorum with a leader.
pub async fn check_health(client: &mut Client, endpoint: &str) -> Result<(), EtcdError> {
    match client.get("health", None).await {
        Ok(_) => Ok(()),
        // A permission error still proves a quorum answered (etcdctl does the same).
        Err(e) if ErrorKind::of(&e) == ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(EtcdError::Call { endpoint: endpoint.to_owned(), message: e.to_string() }),
    }
}

/// `10.0.0.1` from a member's URL `https://10.0.0.1:2379`, `[fd00::1]`
/// kept bracketed.
pub fn host_of_url(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let hostport = rest.split('/').next()?;
    Some(hostport.rsplit_once(':').map(|(h, _)| h).unwrap_or(hostport))
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

/// What an etcd error means. etcd tells its errors apart by their
/// descriptions (`rpctypes` in its API: `ErrGRPCMemberNotFound` and the
/// rest share a few gRPC codes), and its own clients match on those; so
/// does this, once, here, and the rest of hakube matches on the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// "etcdserver: unhealthy cluster": a membership change is refused until
    /// every voter has been connected to the leader for a few seconds.
    UnhealthyCluster,
    /// "can only promote a learner member which is in sync with leader".
    LearnerNotReady,
    /// "leader changed", "not ready", "too many requests": settles by itself.
    Busy,
    /// "member not found".
    MemberNotFound,
    /// "peerURL exists" / "member ID already exist".
    MemberExists,
    /// "rpc not supported for learner".
    NotSupportedForLearner,
    PermissionDenied,
    Other,
}

impl ErrorKind {
    pub fn of(e: &etcd_client::Error) -> ErrorKind {
        match e {
            etcd_client::Error::GRpcStatus(s) => ErrorKind::from_description(s.message()),
            _ => ErrorKind::Other,
        }
    }

    fn from_description(desc: &str) -> ErrorKind {
        let desc = desc.strip_prefix("etcdserver: ").unwrap_or(desc);
        match desc {
            "unhealthy cluster" => ErrorKind::UnhealthyCluster,
            "can only promote a learner member which is in sync with leader" => ErrorKind::LearnerNotReady,
            "leader changed" | "not ready" | "too many requests" | "request timed out" => ErrorKind::Busy,
            "member not found" => ErrorKind::MemberNotFound,
            "peerURL exists" | "member ID already exist" => ErrorKind::MemberExists,
            "rpc not supported for learner" => ErrorKind::NotSupportedForLearner,
            d if d.starts_with("permission denied") => ErrorKind::PermissionDenied,
            _ => ErrorKind::Other,
        }
    }

    /// Refusals etcd lifts by itself within seconds.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::UnhealthyCluster | ErrorKind::LearnerNotReady | ErrorKind::Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_local_member_is_named_and_a_missing_certificate_said() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::new(root.path());
        let cfg = crate::config::tests::test_config("node: {advertiseAddress: 10.0.0.11, name: m1}");
        let mut local = Local::new(&paths, &cfg, Duration::from_secs(1));
        assert_eq!(local.endpoint(), cfg.etcd_client_url());
        let err = local.client().await.err().expect("no certificates under the root").to_string();
        assert!(err.contains("pki/etcd/ca.crt is missing"), "{err}");
        // Nothing is kept from a failed attempt: the next one tries again.
        local.forget();
        assert!(Local::connect(&paths, &cfg, Duration::from_secs(1)).await.is_err());
    }

    #[test]
    fn hosts_from_urls() {
        assert_eq!(host_of_url("https://10.0.0.1:2379"), Some("10.0.0.1"));
        assert_eq!(host_of_url("https://[fd00::1]:2379"), Some("[fd00::1]"));
        assert_eq!(host_of_url("nonsense"), None);
    }

    #[test]
    fn errors_are_told_apart_by_etcds_descriptions() {
        let kind = ErrorKind::from_description;
        assert_eq!(kind("etcdserver: unhealthy cluster"), ErrorKind::UnhealthyCluster);
        assert_eq!(
            kind("etcdserver: can only promote a learner member which is in sync with leader"),
            ErrorKind::LearnerNotReady
        );
        assert_eq!(kind("etcdserver: member not found"), ErrorKind::MemberNotFound);
        assert_eq!(kind("etcdserver: peerURL exists"), ErrorKind::MemberExists);
        assert_eq!(kind("etcdserver: rpc not supported for learner"), ErrorKind::NotSupportedForLearner);
        assert_eq!(kind("etcdserver: permission denied"), ErrorKind::PermissionDenied);
        assert!(kind("etcdserver: leader changed").is_transient());
        assert_eq!(kind("something else"), ErrorKind::Other);
    }
}
