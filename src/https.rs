//! The one HTTPS client of hakube: TLS configurations (trust the cluster
//! CA, a pinned CA, or, for local health probes, anything) and a request
//! with every step bounded: on a fresh connection (a probe must see the
//! server as a new client would), or on a kept HTTP/2 connection from a
//! [`Pool`] (the Kubernetes API client, whose requests and watches share one
//! connection per server, as client-go's do). The join client, the health
//! probes, the Kubernetes API client and the load balancer's checks all go
//! through it, over the same rustls/ring stack as etcd's gRPC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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
    let exchange = async { read(send(sender, hp, req).await?, limits.max_body).await };
    timeout(limits.exchange, exchange).await.map_err(|_| HttpsError::Timeout(limits.exchange))?
}

/// The response with its whole body, at most `max_body` bytes.
async fn read(resp: hyper::Response<hyper::body::Incoming>, max_body: usize) -> Result<Response, HttpsError> {
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| HttpsError::Http(format!("reading the response: {e}")))?
        .to_bytes();
    Ok(Response { status, body })
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
type Sender2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;
type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TCP connection to `hp` with its TLS handshake made (each bounded):
/// failing here, nothing was sent.
async fn tls_connect(hp: &HostPort, tls: Arc<ClientConfig>, limits: Limits) -> Result<Tls, HttpsError> {
    let name = server_name(&hp.host)?;
    let tcp = timeout(limits.connect, TcpStream::connect(target(hp)))
        .await
        .map_err(|_| HttpsError::Connect(format!("no answer within {:?}", limits.connect)))?
        .map_err(|e| HttpsError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(tls);
    timeout(limits.exchange, connector.connect(name, tcp))
        .await
        .map_err(|_| HttpsError::Tls("handshake timed out".into()))?
        .map_err(tls_error)
}

/// A fresh HTTP/1.1 connection to `hp`.
async fn connect(hp: &HostPort, tls: Arc<ClientConfig>, limits: Limits) -> Result<Sender, HttpsError> {
    http1(tls_connect(hp, tls, limits).await?).await
}

async fn http1(stream: Tls) -> Result<Sender, HttpsError> {
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| HttpsError::Tls(e.to_string()))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The request as hyper sends it: HTTP/1.1 names the server in `host`,
/// HTTP/2 in the URI's authority.
fn build(hp: &HostPort, req: Request<'_>, h2: bool) -> Result<hyper::Request<Full<Bytes>>, HttpsError> {
    let mut builder = if h2 {
        hyper::Request::builder().method(req.method).uri(format!("https://{hp}{}", req.path))
    } else {
        hyper::Request::builder().method(req.method).uri(req.path).header("host", hp.to_string())
    };
    for (k, v) in req.headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(Bytes::from(req.body.unwrap_or_default()))).map_err(|e| HttpsError::Http(e.to_string()))
}

/// Sends `req` on the connection: the response with its body unread.
async fn send(
    mut sender: Sender,
    hp: &HostPort,
    req: Request<'_>,
) -> Result<hyper::Response<hyper::body::Incoming>, HttpsError> {
    let request = build(hp, req, false)?;
    sender.send_request(request).await.map_err(|e| HttpsError::Http(e.to_string()))
}

/// How often a kept connection that carries nothing is checked with an
/// HTTP/2 PING, and how long the answer may take: a server gone without a
/// word (a host powered off, a link cut) is noticed within their sum, and
/// a watch on that connection ends so that its owner lists again
/// (client-go checks after 30 s and waits 15 s; hakube's heartbeats and
/// purge decisions work on seconds).
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_WAIT: Duration = Duration::from_secs(5);

/// Connections kept per server and shared by every clone: one HTTP/2
/// connection carries all requests and watches to a server. A server that
/// does not offer HTTP/2 gets a fresh HTTP/1.1 connection per request.
#[derive(Clone, Default)]
pub struct Pool {
    kept: Arc<Mutex<HashMap<String, Sender2>>>,
}

/// A connection for one exchange: kept (HTTP/2) or fresh (HTTP/1.1).
enum Conn {
    Kept(Sender2),
    Fresh(Sender),
}

impl Pool {
    fn kept(&self, key: &str) -> Option<Sender2> {
        let mut kept = self.kept.lock().expect("pool lock");
        match kept.get(key) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                kept.remove(key);
                None
            }
            None => None,
        }
    }

    /// Forgets the connection to `hp` after it failed an exchange: the next
    /// request makes a new one (a connection that timed out may be dead
    /// without the kernel knowing yet).
    fn forget(&self, hp: &HostPort) {
        self.kept.lock().expect("pool lock").remove(&hp.to_string());
    }

    /// Connections kept now (for tests and the agent's figures).
    pub fn len(&self) -> usize {
        let mut kept = self.kept.lock().expect("pool lock");
        kept.retain(|_, s| !s.is_closed());
        kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kept connection to `hp`, or a new one. Two requests that find
    /// none at once may both connect; the later one is kept and the other
    /// closes when its exchange ends.
    async fn conn(&self, hp: &HostPort, tls: &Arc<ClientConfig>, limits: Limits) -> Result<Conn, HttpsError> {
        let key = hp.to_string();
        if let Some(s) = self.kept(&key) {
            return Ok(Conn::Kept(s));
        }
        let mut tls = (**tls).clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let stream = tls_connect(hp, Arc::new(tls), limits).await?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Ok(Conn::Fresh(http1(stream).await?));
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_WAIT)
            .keep_alive_while_idle(true)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| HttpsError::Tls(e.to_string()))?;
        tokio::spawn(conn);
        self.kept.lock().expect("pool lock").insert(key, sender.clone());
        Ok(Conn::Kept(sender))
    }

    /// Sends `req` to `hp`: the response with its body unread. A kept
    /// connection that fails is forgotten; a request it never took (it was
    /// closing: the server restarted, or said GOAWAY) goes once on a new
    /// connection, which is safe for any method since no server saw it.
    async fn send(
        &self,
        hp: &HostPort,
        tls: &Arc<ClientConfig>,
        req: Request<'_>,
        limits: Limits,
    ) -> Result<hyper::Response<hyper::body::Incoming>, HttpsError> {
        let mut request = match self.conn(hp, tls, limits).await? {
            Conn::Fresh(sender) => return send(sender, hp, req).await,
            Conn::Kept(mut sender) => match sender.try_send_request(build(hp, req, true)?).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => {
                    self.forget(hp);
                    match e.take_message() {
                        Some(request) => request,
                        None => return Err(HttpsError::Http(e.into_error().to_string())),
                    }
                }
            },
        };
        match self.conn(hp, tls, limits).await? {
            Conn::Fresh(mut sender) => {
                // The server stopped offering HTTP/2: HTTP/1.1 names it in `host`.
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                *request.uri_mut() = path.parse().map_err(|_| HttpsError::Config(path))?;
                let host = hp.to_string().parse().map_err(|_| HttpsError::Config(hp.to_string()))?;
                request.headers_mut().insert(hyper::header::HOST, host);
                sender.send_request(request).await.map_err(|e| HttpsError::Http(e.to_string()))
            }
            Conn::Kept(mut sender) => sender.send_request(request).await.map_err(|e| {
                self.forget(hp);
                HttpsError::Http(e.to_string())
            }),
        }
    }

    /// As [`request`], on a kept connection where the server allows it.
    pub async fn request(
        &self,
        hp: &HostPort,
        tls: &Arc<ClientConfig>,
        req: Request<'_>,
        limits: Limits,
    ) -> Result<Response, HttpsError> {
        let exchange = async { read(self.send(hp, tls, req, limits).await?, limits.max_body).await };
        let result = timeout(limits.exchange, exchange).await.unwrap_or(Err(HttpsError::Timeout(limits.exchange)));
        if matches!(result, Err(HttpsError::Timeout(_))) {
            self.forget(hp);
        }
        result
    }

    /// As [`stream`], on a kept connection where the server allows it.
    pub async fn stream(
        &self,
        hp: &HostPort,
        tls: &Arc<ClientConfig>,
        req: Request<'_>,
        limits: Limits,
    ) -> Result<Streaming, HttpsError> {
        let head = timeout(limits.exchange, self.send(hp, tls, req, limits)).await;
        let resp = head.unwrap_or(Err(HttpsError::Timeout(limits.exchange))).inspect_err(|e| {
            if matches!(e, HttpsError::Timeout(_)) {
                self.forget(hp);
            }
        })?;
        Ok(Streaming { status: resp.status().as_u16(), body: resp.into_body() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A TLS server on loopback that answers every connection with `reply`
    /// and then stalls.
    /// A TLS acceptor with a certificate for 127.0.0.1 that is its own CA
    /// (returned, PEM), offering `alpn`, and a loopback listener for it.
    async fn tls_listener(alpn: &[&[u8]]) -> (tokio_rustls::TlsAcceptor, tokio::net::TcpListener, u16, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&key).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (tokio_rustls::TlsAcceptor::from(Arc::new(server)), listener, port, cert.pem().into_bytes())
    }

    async fn stalling_server(reply: &'static [u8]) -> (HostPort, Vec<u8>) {
        let (acceptor, listener, port, ca_pem) = tls_listener(&[]).await;
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

    /// A TLS server on loopback that answers every request 200 with its
    /// path, over HTTP/2 when `h2` (and the client asks), else HTTP/1.1;
    /// it counts connections and can drop them all.
    struct Counting {
        at: HostPort,
        ca: Vec<u8>,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
        conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    }

    impl Counting {
        async fn start(h2: bool) -> Self {
            use std::sync::atomic::Ordering;
            let alpn: &[&[u8]] = if h2 { &[b"h2", b"http/1.1"] } else { &[] };
            let (acceptor, listener, port, ca) = tls_listener(alpn).await;
            let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let conns = Arc::new(Mutex::new(Vec::new()));
            let (a, c) = (accepted.clone(), conns.clone());
            tokio::spawn(async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    a.fetch_add(1, Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    let task = tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let service =
                            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                                let path = req.uri().path().to_owned();
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(path))))
                            });
                        let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                    });
                    c.lock().unwrap().push(task);
                }
            });
            Counting { at: format!("127.0.0.1:{port}").parse().unwrap(), ca, accepted, conns }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn drop_connections(&self) {
            for task in self.conns.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }

    #[tokio::test]
    async fn requests_to_one_server_share_one_kept_connection() {
        let server = Counting::start(true).await;
        let tls = Arc::new(client_config(&server.ca, None).unwrap());
        let pool = Pool::default();
        let paths: Vec<String> = (0..20).map(|i| format!("/object/{i}")).collect();
        let answers = futures_util::future::join_all(
            paths.iter().map(|p| pool.request(&server.at, &tls, Request::get(p), Limits::default())),
        )
        .await;
        for (path, answer) in paths.iter().zip(answers) {
            let answer = answer.unwrap();
            assert_eq!((answer.status, &answer.body[..]), (200, path.as_bytes()));
        }
        // Concurrent first requests may each connect; later ones reuse.
        let first = server.accepted();
        assert!(first <= 20, "{first}");
        for p in &paths {
            pool.request(&server.at, &tls, Request::get(p), Limits::default()).await.unwrap();
        }
        assert_eq!(server.accepted(), first, "sequential requests opened connections");
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_is_replaced() {
        let server = Counting::start(true).await;
        let tls = Arc::new(client_config(&server.ca, None).unwrap());
        let pool = Pool::default();
        pool.request(&server.at, &tls, Request::get("/a"), Limits::default()).await.unwrap();
        assert_eq!((server.accepted(), pool.len()), (1, 1));
        server.drop_connections();
        // The client notices the close by itself (no request needed)...
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !pool.is_empty() {
            assert!(std::time::Instant::now() < deadline, "a closed connection is still kept");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // ... and the next request, of any method, goes on a new one.
        let post = Request { method: "POST", path: "/b", headers: &[], body: Some(b"x".to_vec()) };
        let answer = pool.request(&server.at, &tls, post, Limits::default()).await.unwrap();
        assert_eq!((answer.status, &answer.body[..]), (200, &b"/b"[..]));
        assert_eq!((server.accepted(), pool.len()), (2, 1));
    }

    #[tokio::test]
    async fn a_server_without_http2_gets_a_fresh_connection_per_request() {
        let server = Counting::start(false).await;
        let tls = Arc::new(client_config(&server.ca, None).unwrap());
        let pool = Pool::default();
        for p in ["/a", "/b", "/c"] {
            let answer = pool.request(&server.at, &tls, Request::get(p), Limits::default()).await.unwrap();
            assert_eq!(&answer.body[..], p.as_bytes());
        }
        assert_eq!((server.accepted(), pool.len()), (3, 0));
    }
}
