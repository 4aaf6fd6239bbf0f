//! The one HTTPS client of hakube: TLS configurations (trust the cluster
//! CA, a pinned CA, or, for local health probes, anything) and a request on
//! a fresh connection with every step bounded. The join client, the health
//! probes, the Kubernetes API client and the load balancer's checks all go
//! through it, over the same rustls/ring stack as etcd's gRPC.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{Host, HostPort};

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpsError {
    #[error("{0}")]
    Config(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl HttpsError {
    /// Whether the server was never reached (nothing was sent): a request
    /// may go to another server without having been seen by this one.
    pub fn before_sending(&self) -> bool {
        matches!(self, HttpsError::Connect(_) | HttpsError::Tls(_))
    }
}

/// Client identity: a certificate chain and its key, both PEM.
pub struct Identity<'a> {
    pub cert_pem: &'a [u8],
    pub key_pem: &'a [u8],
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, HttpsError> {
    let v: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| HttpsError::Config(format!("{what}: {e}")))?;
    if v.is_empty() {
        return Err(HttpsError::Config(format!("{what}: no certificate in it")));
    }
    Ok(v)
}

/// Trusts servers whose chain leads to `ca_pem`; presents `identity` when given.
pub fn client_config(ca_pem: &[u8], identity: Option<Identity<'_>>) -> Result<ClientConfig, HttpsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        roots.add(c).map_err(|e| HttpsError::Config(format!("CA certificate: {e}")))?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => {
            let key = PrivateKeyDer::from_pem_slice(id.key_pem)
                .map_err(|e| HttpsError::Config(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(certs(id.cert_pem, "client certificate")?, key)
                .map_err(|e| HttpsError::Config(format!("client certificate: {e}")))
        }
    }
}

/// Accepts any server certificate: only for health probes of components on
/// this host's loopback that serve a self-signed certificate made at start
/// (controller-manager and scheduler), where there is nothing to verify it
/// against and nothing secret is sent.
pub fn unverified_client_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The name to verify the server under, from the address used to reach it.
pub fn server_name(host: &Host) -> Result<ServerName<'static>, HttpsError> {
    match host {
        Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
        Host::Dns(d) => ServerName::try_from(d.clone()).map_err(|e| HttpsError::Config(format!("{d}: {e}"))),
    }
}

/// A request to send.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<Vec<u8>>,
}

impl<'a> Request<'a> {
    pub fn get(path: &'a str) -> Self {
        Request { method: "GET", path, headers: &[], body: None }
    }
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// Bounds of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    /// For the TLS handshake, and then for the whole response.
    pub exchange: Duration,
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { connect: Duration::from_secs(5), exchange: Duration::from_secs(30), max_body: 16 << 20 }
    }
}

/// Where to connect: a socket address, or a host and port to resolve.
pub fn target(hp: &HostPort) -> String {
    match &hp.host {
        Host::Ip(ip) => SocketAddr::new(*ip, hp.port).to_string(),
        Host::Dns(d) => format!("{d}:{}", hp.port),
    }
}

/// One request on a fresh connection to `hp`, TLS with `tls`.
pub async fn request(
    hp: &HostPort,
    tls: Arc<ClientConfig>,
    req: Request<'_>,
    limits: Limits,
) -> Result<Response, HttpsError> {
    let name = server_name(&hp.host)?;
    let tcp = timeout(limits.connect, TcpStream::connect(target(hp)))
        .await
        .map_err(|_| HttpsError::Connect(format!("no answer within {:?}", limits.connect)))?
        .map_err(|e| HttpsError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(tls);
    let stream = timeout(limits.exchange, connector.connect(name, tcp))
        .await
        .map_err(|_| HttpsError::Tls("handshake timed out".into()))?
        .map_err(|e| HttpsError::Tls(e.to_string()))?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| HttpsError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let mut builder = hyper::Request::builder().method(req.method).uri(req.path).header("host", hp.to_string());
        for (k, v) in req.headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(Bytes::from(req.body.unwrap_or_default())))
            .map_err(|e| HttpsError::Http(e.to_string()))?;
        let resp = sender.send_request(request).await.map_err(|e| HttpsError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), limits.max_body)
            .collect()
            .await
            .map_err(|e| HttpsError::Http(format!("reading the response: {e}")))?
            .to_bytes();
        Ok(Response { status, body })
    };
    timeout(limits.exchange, exchange).await.map_err(|_| HttpsError::Timeout(limits.exchange))?
}
