//! TLS for the join API: TLS 1.3 only, served with the node's API server
//! certificate and the cluster CA as its chain; the joining host trusts the
//! chain only when the CA's public key matches the script's `ca-hash`, and it
//! checks that before any byte of the token is sent.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, ServerConfig, SignatureScheme};

use crate::host::paths::Paths;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: `apiserver.crt` + `ca.crt` as the chain. A client
/// certificate is asked for but not required: a joining host has none,
/// a node presents its kubelet's (issued by the cluster CA) for the node
/// endpoints.
pub fn server_config(paths: &Paths) -> Result<ServerConfig, String> {
    let read = |name: &str| std::fs::read(paths.pki(name)).map_err(|e| format!("{}: {e}", paths.pki(name).display()));
    let mut chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read("apiserver.crt")?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("apiserver.crt: {e}"))?;
    chain.extend(
        CertificateDer::pem_slice_iter(&read("ca.crt")?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("ca.crt: {e}"))?,
    );
    let key = PrivateKeyDer::from_pem_slice(&read("apiserver.key")?).map_err(|e| format!("apiserver.key: {e}"))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read("ca.crt")?) {
        roots.add(ca.map_err(|e| format!("ca.crt: {e}"))?).map_err(|e| format!("ca.crt: {e}"))?;
    }
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())
}

/// The node a verified client certificate names: `system:node:NAME` in the
/// `system:nodes` group, as the cluster CA issues kubelets' certificates.
pub fn node_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    let in_group = cert.subject().iter_organization().any(|o| o.as_str() == Ok("system:nodes"));
    let name = cn.strip_prefix("system:node:")?;
    (in_group && !name.is_empty()).then(|| name.to_owned())
}

/// A pin as a join script gives it: `sha256:` and 64 hex digits.
pub fn check_ca_hash(ca_hash: &str) -> Result<(), String> {
    let hex = ca_hash.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "--ca-hash {ca_hash:?} is not of the form sha256:<64 hex digits>: copy it from the join script"
        ));
    }
    Ok(())
}

/// `sha256:<hex>` of a DER certificate's SubjectPublicKeyInfo.
pub fn spki_hash(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    Some(format!("sha256:{}", crate::pki::hex(digest.as_ref())))
}

/// The server's chain does not hold the pinned CA.
#[derive(Debug)]
pub struct PinMismatch(pub String);

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's CA does not match the pinned {}: this is not the cluster the script was made for \
             (or someone is in the middle); the token was not sent",
            self.0
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Trusts a server only through the CA whose key hash was pinned.
#[derive(Debug)]
pub struct PinnedCa {
    hash: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    pub fn new(hash: &str) -> Self {
        PinnedCa { hash: hash.to_owned(), provider: provider() }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let ca =
            intermediates.iter().find(|c| spki_hash(c).as_deref() == Some(self.hash.as_str())).ok_or_else(|| {
                Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch(
                    self.hash.clone(),
                )))))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| Error::General(format!("pinned CA: {e}")))?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

pub fn client_config(ca_hash: &str) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa::new(ca_hash)))
        .with_no_client_auth()
}
