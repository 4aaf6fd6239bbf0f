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
    /// The server's certificate is not one to trust (wrong CA, wrong name,
    /// a pin that does not match): the same at any server of that cluster.
    #[error("TLS: {0}")]
    Untrusted(String),
    #[error("{0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl HttpsError {
    /// Whether the server was never reached (nothing was sent): a request
    /// may go to another server without having been seen by this one.
    pub fn before_sending(&self) -> bool {
        matches!(self, HttpsError::Connect(_) | HttpsError::Tls(_) | HttpsError::Untrusted(_))
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
fn roots(ca_pem: &[u8]) -> Result<RootCertStore, HttpsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        roots.add(c).map_err(|e| HttpsError::Config(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

pub fn client_config(ca_pem: &[u8], identity: Option<Identity<'_>>) -> Result<ClientConfig, HttpsError> {
    let roots = roots(ca_pem)?;
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

/// Trusts servers whose chain leads to `ca_pem`, under any name: for a
/// load balancer's address before the certificates name it (the check
/// that it reaches this cluster's API servers at all).
pub fn chain_only_client_config(ca_pem: &[u8]) -> Result<ClientConfig, HttpsError> {
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
        .build()
        .map_err(|e| HttpsError::Config(e.to_string()))?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
        .with_no_client_auth())
}

#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self.0.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
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

/// A failed handshake, told apart: a certificate refused, or anything else.
fn tls_error(e: std::io::Error) -> HttpsError {
    let refused = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).and_then(|r| match r {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => Some(other.0.to_string()),
        rustls::Error::InvalidCertificate(c) => Some(format!("the server's certificate is not trusted: {c:?}")),
        _ => None,
    });
    match refused {
        Some(why) => HttpsError::Untrusted(why),
        None => HttpsError::Tls(e.to_string()),
    }
}

/// The certificate `hp` presents in a TLS handshake verified by `tls`;
/// nothing is sent after the handshake.
pub async fn peer_certificate(
    hp: &HostPort,
    tls: Arc<ClientConfig>,
    limits: Limits,
) -> Result<CertificateDer<'static>, HttpsError> {
    let name = server_name(&hp.host)?;
    let tcp = timeout(limits.connect, TcpStream::connect(target(hp)))
        .await
        .map_err(|_| HttpsError::Connect(format!("no answer within {:?}", limits.connect)))?
        .map_err(|e| HttpsError::Connect(e.to_string()))?;
    let stream = timeout(limits.exchange, tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| HttpsError::Tls("handshake timed out".into()))?
        .map_err(tls_error)?;
    let (_, conn) = stream.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| HttpsError::Tls("the server presented no certificate".into()))
}

/// One request on a fresh connection to `hp`, TLS with `tls`.
pub async fn request(
    hp: &HostPort,
    tls: Arc<ClientConfig>,
    req: Request<'_>,
    limits: Limits,
) -> Result<Response, HttpsError> {
    let sender = connect(hp, tls, limits).await?;
    let exchange = async {
        let resp = send(sender, hp, req).await?;
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

/// A response whose body is read as it comes (a watch).
#[derive(Debug)]
pub struct Streaming {
    pub status: u16,
    pub body: hyper::body::Incoming,
}

/// As [`request`], with the body left to read as it comes: connecting, the
/// handshake and the response's head are bounded by `limits`, reading the
/// body is bounded by the caller.
pub async fn stream(
    hp: &HostPort,
    tls: Arc<ClientConfig>,
    req: Request<'_>,
    limits: Limits,
) -> Result<Streaming, HttpsError> {
    let sender = connect(hp, tls, limits).await?;
    let resp =
        timeout(limits.exchange, send(sender, hp, req)).await.map_err(|_| HttpsError::Timeout(limits.exchange))??;
    Ok(Streaming { status: resp.status().as_u16(), body: resp.into_body() })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A fresh connection to `hp`, its TLS handshake made (each bounded):
/// failing here, nothing was sent.
async fn connect(hp: &HostPort, tls: Arc<ClientConfig>, limits: Limits) -> Result<Sender, HttpsError> {
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
        .map_err(tls_error)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| HttpsError::Tls(e.to_string()))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends `req` on the connection: the response with its body unread.
async fn send(
    mut sender: Sender,
    hp: &HostPort,
    req: Request<'_>,
) -> Result<hyper::Response<hyper::body::Incoming>, HttpsError> {
    let mut builder = hyper::Request::builder().method(req.method).uri(req.path).header("host", hp.to_string());
    for (k, v) in req.headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body.unwrap_or_default())))
        .map_err(|e| HttpsError::Http(e.to_string()))?;
    sender.send_request(request).await.map_err(|e| HttpsError::Http(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A TLS server on loopback that answers every connection with `reply`
    /// and then stalls.
    async fn stalling_server(reply: &'static [u8]) -> (HostPort, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&key).unwrap();
        let ca_pem = cert.pem().into_bytes();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    let mut buf = [0u8; 4096];
                    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                    tls.write_all(reply).await.unwrap();
                    tls.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                });
            }
        });
        (format!("127.0.0.1:{port}").parse().unwrap(), ca_pem)
    }

    #[tokio::test]
    async fn a_server_that_stalls_mid_answer_is_given_up_on_within_the_bound() {
        let (at, ca) = stalling_server(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part").await;
        let tls = Arc::new(client_config(&ca, None).unwrap());
        let limits =
            Limits { connect: Duration::from_secs(2), exchange: Duration::from_millis(500), max_body: 1 << 20 };
        let t = std::time::Instant::now();
        let e = request(&at, tls, Request::get("/"), limits).await.unwrap_err();
        assert_eq!(e, HttpsError::Timeout(Duration::from_millis(500)));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn an_answer_over_the_size_bound_is_refused() {
        let (at, ca) =
            stalling_server(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789012345678901234567890123456789")
                .await;
        let tls = Arc::new(client_config(&ca, None).unwrap());
        let limits = Limits { connect: Duration::from_secs(2), exchange: Duration::from_secs(5), max_body: 16 };
        let e = request(&at, tls, Request::get("/"), limits).await.unwrap_err();
        assert!(matches!(&e, HttpsError::Http(m) if m.contains("reading the response")), "{e:?}");
    }

    #[tokio::test]
    async fn a_server_of_another_ca_is_untrusted_before_anything_is_sent() {
        let (at, _) = stalling_server(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let other = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap();
        let other = other.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem();
        let tls = Arc::new(client_config(other.as_bytes(), None).unwrap());
        let e = request(&at, tls, Request::get("/"), Limits::default()).await.unwrap_err();
        assert!(matches!(e, HttpsError::Untrusted(_)) && e.before_sending(), "{e:?}");
    }
}
