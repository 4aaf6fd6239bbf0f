//! The cluster PKI: kubeadm's file set, planned from the config and what is
//! already on disk, then issued.
//!
//! Rules (DESIGN.md § PKI): a CA is never regenerated; a leaf is reissued only
//! when its subject, SANs, issuer or key no longer match what the config asks
//! for, or it is close to expiry, and the old files are kept as a backup. A
//! leaf keeps its key across reissues unless the key itself is the problem.

mod spec;

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::config::{ClusterConfig, KeyAlgorithm};
use crate::host::fs::{read_optional, FileSpec, FsError};
use crate::host::paths::Paths;

pub use spec::{
    cluster_cert_specs, kube_proxy_client_spec, kubeconfig_cert_spec, kubelet_client_spec, CertSpec, Lifetime, San,
    Usage, KUBE_PROXY_USER,
};

/// CAs live ten years, leaves one, as kubeadm issues them.
/// The cluster controller's user name: the common name of its client
/// certificate (no group: it is in none of the system groups), which RBAC
/// binds to its role.
pub const CONTROLLER_USER: &str = "hakube:controller";

pub const CA_VALIDITY: Duration = Duration::days(3650);
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// A leaf this close to expiry is renewed (the default of
/// `certificateRenewBefore`; see `config`).
pub const RENEW_BEFORE: Duration = Duration::days(120);
/// Certificates are valid from a little before "now" to tolerate clock skew
/// between hosts.
const BACKDATE: Duration = Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "{cert} exists but {key} is missing: restore the key from a backup, or remove both \
         to create a new CA (every certificate it signed must then be reissued)"
    )]
    CaKeyMissing { cert: String, key: String },
    #[error(
        "{key} exists but {cert} is missing: restore the certificate from a backup, or remove both to create a new CA"
    )]
    CaCertMissing { cert: String, key: String },
    #[error("{cert} does not match {key}: hakube never replaces a CA; restore the matching pair from a backup")]
    CaMismatch { cert: String, key: String },
    #[error("{path} is not a usable {what}: {reason}")]
    Unreadable { path: String, what: &'static str, reason: String },
    #[error(
        "{path} is missing on a master of a running cluster: every master's API server must use the same \
         key for Secrets. Copy the file from another master (same path, mode 0600) and run install again"
    )]
    EncryptionConfigMissing { path: String },
    #[error("cannot issue {name}: {reason}")]
    Issue { name: String, reason: String },
}

/// What the plan does with one certificate or key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Create,
    Reissue { reason: String, new_key: bool },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Keep => f.write_str("unchanged"),
            Decision::Create => f.write_str("created"),
            Decision::Reissue { reason, new_key: true } => write!(f, "reissued with a new key ({reason})"),
            Decision::Reissue { reason, .. } => write!(f, "reissued ({reason})"),
        }
    }
}

/// A private key, with its PEM kept byte-for-byte as read.
pub struct Key {
    pub pair: KeyPair,
    pub pem: String,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    pub fn generate(alg: KeyAlgorithm) -> Result<Key, String> {
        let pair = match alg {
            KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?,
            KeyAlgorithm::Rsa2048 => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| e.to_string())?;
                let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
                KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &PKCS_RSA_SHA256)
                    .map_err(|e| e.to_string())?
            }
        };
        let pem = pair.serialize_pem();
        Ok(Key { pair, pem })
    }

    pub fn from_pem(pem: &str) -> Result<Key, String> {
        let pair = KeyPair::from_pem(pem).map_err(|e| format!("not a PKCS#8 private key ({e})"))?;
        Ok(Key { pair, pem: pem.to_owned() })
    }

    pub fn algorithm(&self) -> Option<KeyAlgorithm> {
        let alg = self.pair.algorithm();
        if alg == &PKCS_ECDSA_P256_SHA256 {
            Some(KeyAlgorithm::EcdsaP256)
        } else if alg == &PKCS_RSA_SHA256 {
            Some(KeyAlgorithm::Rsa2048)
        } else {
            None
        }
    }

    /// DER SubjectPublicKeyInfo, to compare with a certificate's.
    pub fn spki(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        self.pair.subject_public_key_info()
    }
}

/// What matters of a certificate found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub common_name: String,
    pub organization: Option<String>,
    pub sans: BTreeSet<San>,
    pub is_ca: bool,
    pub spki: Vec<u8>,
    pub not_after: OffsetDateTime,
    /// Whether the issuer's key verifies its signature (None when not checked).
    pub signed_by_issuer: Option<bool>,
}

/// Parses a PEM certificate; `issuer_spki` checks its signature.
pub fn observe(pem: &[u8], issuer_spki: Option<&[u8]>) -> Result<Observed, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM ({e})"))?;
    observe_der(&pem.contents, issuer_spki)
}

/// [`observe`] for a DER certificate (as a TLS handshake presents it).
pub fn observe_der(der: &[u8], issuer_spki: Option<&[u8]>) -> Result<Observed, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let mut sans = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    sans.insert(San::Dns((*d).to_owned()));
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
                        _ => continue,
                    };
                    sans.insert(San::Ip(ip));
                }
                _ => {}
            }
        }
    }
    let signed_by_issuer = issuer_spki.map(|der| {
        SubjectPublicKeyInfo::from_der(der).map(|(_, spki)| cert.verify_signature(Some(&spki)).is_ok()).unwrap_or(false)
    });
    Ok(Observed {
        common_name: first_text(cert.subject().iter_common_name()).unwrap_or_default(),
        organization: first_text(cert.subject().iter_organization()),
        sans,
        is_ca: cert.is_ca(),
        spki: cert.public_key().raw.to_vec(),
        not_after: cert.validity().not_after.to_datetime(),
        signed_by_issuer,
    })
}

fn first_text<'a>(mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>) -> Option<String> {
    it.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
}

/// The plan for one leaf, from what the spec asks and what is on disk.
pub fn decide_leaf(
    spec: &CertSpec,
    cert: Option<&Observed>,
    key: Option<&Key>,
    alg: KeyAlgorithm,
    now: OffsetDateTime,
) -> Decision {
    let (Some(cert), Some(key)) = (cert, key) else {
        return match (cert.is_some(), key.is_some()) {
            (false, false) => Decision::Create,
            _ => Decision::Reissue { reason: "certificate or key missing".into(), new_key: true },
        };
    };
    let reissue = |reason: String| Decision::Reissue { reason, new_key: false };
    if key.algorithm() != Some(alg) {
        return Decision::Reissue { reason: format!("key algorithm is now {alg}"), new_key: true };
    }
    if cert.spki != key.spki() {
        return reissue("certificate does not match its key".into());
    }
    if cert.signed_by_issuer == Some(false) {
        return reissue(format!("not signed by the current {}", spec.issuer.as_deref().unwrap_or("CA")));
    }
    if cert.common_name != spec.common_name || cert.organization != spec.organization {
        return reissue("subject changed".into());
    }
    if cert.sans != spec.sans {
        let added: Vec<_> = spec.sans.difference(&cert.sans).map(ToString::to_string).collect();
        let removed: Vec<_> = cert.sans.difference(&spec.sans).map(ToString::to_string).collect();
        let mut parts = vec![];
        if !added.is_empty() {
            parts.push(format!("+{}", added.join(" +")));
        }
        if !removed.is_empty() {
            parts.push(format!("-{}", removed.join(" -")));
        }
        return reissue(format!("SANs changed: {}", parts.join(" ")));
    }
    if spec.lifetime.due(cert.not_after, now) {
        return reissue(format!("expires {}", cert.not_after.date()));
    }
    Decision::Keep
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("system randomness");
    bytes[0] &= 0x7f; // a positive INTEGER
    bytes[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

/// rcgen parameters for a spec.
pub fn params(spec: &CertSpec, now: OffsetDateTime) -> Result<CertificateParams, PkiError> {
    let err = |reason: String| PkiError::Issue { name: spec.name.clone(), reason };
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(o) = &spec.organization {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, spec.common_name.as_str());
    p.distinguished_name = dn;
    p.serial_number = Some(random_serial());
    p.not_before = now - BACKDATE;
    for san in &spec.sans {
        p.subject_alt_names.push(match san {
            San::Dns(d) => SanType::DnsName(d.clone().try_into().map_err(|e| err(format!("SAN {d}: {e}")))?),
            San::Ip(ip) => SanType::IpAddress(*ip),
        });
    }
    match spec.usage {
        Usage::Ca => {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages =
                vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.not_after = now + CA_VALIDITY;
        }
        usage => {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            if matches!(usage, Usage::Server | Usage::ServerClient) {
                p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
            }
            if matches!(usage, Usage::Client | Usage::ServerClient) {
                p.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
            }
            p.use_authority_key_identifier_extension = true;
            p.not_after = now + spec.lifetime.valid;
        }
    }
    Ok(p)
}

/// A CA loaded for signing.
#[derive(Debug)]
pub struct Ca {
    pub cert_pem: String,
    pub key: Key,
}

impl Ca {
    pub fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key.pair)
            .map_err(|e| PkiError::Issue { name: "issuer".into(), reason: e.to_string() })
    }

    pub fn spki(&self) -> Vec<u8> {
        self.key.spki()
    }

    /// Issues a leaf for `spec` over `key`.
    pub fn issue(&self, spec: &CertSpec, key: &Key, now: OffsetDateTime) -> Result<String, PkiError> {
        let cert = params(spec, now)?
            .signed_by(&key.pair, &self.issuer()?)
            .map_err(|e| PkiError::Issue { name: spec.name.clone(), reason: e.to_string() })?;
        Ok(cert.pem())
    }

    /// Issues a certificate for `spec` over the public key of a CSR. Only the
    /// key is taken from the request: the subject and usages are ours.
    pub fn sign_csr(&self, csr_pem: &str, spec: &CertSpec, now: OffsetDateTime) -> Result<String, String> {
        use x509_parser::prelude::FromDer;
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|e| format!("not PEM ({e})"))?;
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| format!("not a certificate request ({e})"))?;
        csr.verify_signature().map_err(|e| format!("its signature does not verify ({e})"))?;
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        req.params = params(spec, now).map_err(|e| e.to_string())?;
        let issuer = self.issuer().map_err(|e| e.to_string())?;
        Ok(req.signed_by(&issuer).map_err(|e| e.to_string())?.pem())
    }

    /// Creates a new self-signed CA.
    pub fn create(spec: &CertSpec, alg: KeyAlgorithm, now: OffsetDateTime) -> Result<Ca, PkiError> {
        let key = Key::generate(alg).map_err(|reason| PkiError::Issue { name: spec.name.clone(), reason })?;
        let cert = params(spec, now)?
            .self_signed(&key.pair)
            .map_err(|e| PkiError::Issue { name: spec.name.clone(), reason: e.to_string() })?;
        Ok(Ca { cert_pem: cert.pem(), key })
    }

    /// Loads an existing CA, refusing a half-present or mismatched pair.
    pub fn load(paths: &Paths, name: &str) -> Result<Option<Ca>, PkiError> {
        let (cert_path, key_path) = (paths.pki(&format!("{name}.crt")), paths.pki(&format!("{name}.key")));
        let show = |p: &Path| p.display().to_string();
        match (read_optional(&cert_path)?, read_optional(&key_path)?) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(PkiError::CaKeyMissing { cert: show(&cert_path), key: show(&key_path) }),
            (None, Some(_)) => Err(PkiError::CaCertMissing { cert: show(&cert_path), key: show(&key_path) }),
            (Some(cert), Some(key)) => Ca::from_pair(&cert, &key, &cert_path, &key_path).map(Some),
        }
    }

    /// A CA from its certificate and key as read from the two paths named
    /// (for errors), refusing a pair that does not match.
    pub fn from_pair(cert: &[u8], key: &[u8], cert_path: &Path, key_path: &Path) -> Result<Ca, PkiError> {
        let show = |p: &Path| p.display().to_string();
        let unreadable = |path: &Path, what, reason| PkiError::Unreadable { path: show(path), what, reason };
        let key_pem = std::str::from_utf8(key).map_err(|_| unreadable(key_path, "private key", "not text".into()))?;
        let key = Key::from_pem(key_pem).map_err(|r| unreadable(key_path, "private key", r))?;
        let observed = observe(cert, None).map_err(|r| unreadable(cert_path, "CA certificate", r))?;
        if !observed.is_ca {
            return Err(unreadable(cert_path, "CA certificate", "it is not a CA".into()));
        }
        if observed.spki != key.spki() {
            return Err(PkiError::CaMismatch { cert: show(cert_path), key: show(key_path) });
        }
        Ok(Ca { cert_pem: String::from_utf8_lossy(cert).into_owned(), key })
    }
}

/// The outcome of planning the PKI: files to write and why.
#[derive(Debug, Default)]
pub struct PkiPlan {
    pub files: Vec<FileSpec>,
    /// Copies of replaced files, written before the replacements.
    pub backups: Vec<FileSpec>,
    pub decisions: Vec<(String, Decision)>,
    /// The CAs, loaded or just created, for signing more (kubeconfigs, CSRs).
    pub cas: Vec<(String, Ca)>,
}

impl PkiPlan {
    pub fn ca(&self, name: &str) -> Option<&Ca> {
        self.cas.iter().find(|(n, _)| n == name).map(|(_, ca)| ca)
    }

    pub fn changed(&self) -> impl Iterator<Item = &(String, Decision)> {
        self.decisions.iter().filter(|(_, d)| *d != Decision::Keep)
    }
}

/// Leaves to reissue although they still match (`hakube certs renew`): by
/// their names under `pki/` (`apiserver`, `etcd/peer`) or as kubeconfigs
/// (`admin.conf`). A renewal keeps each key, so nothing that pins one
/// notices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Renew {
    #[default]
    Nothing,
    All,
    Names(BTreeSet<String>),
}

impl Renew {
    pub fn wants(&self, name: &str) -> bool {
        match self {
            Renew::Nothing => false,
            Renew::All => true,
            Renew::Names(n) => n.contains(name),
        }
    }

    /// A matching leaf, reissued when asked for.
    pub fn apply(&self, name: &str, decision: Decision) -> Decision {
        if decision == Decision::Keep && self.wants(name) {
            Decision::Reissue { reason: "renewal asked for".into(), new_key: false }
        } else {
            decision
        }
    }
}

/// Reads the PKI on disk and plans it for `config`: generating what is new,
/// reissuing what no longer matches, keeping the rest byte-identical.
pub fn plan(paths: &Paths, config: &ClusterConfig, now: OffsetDateTime) -> Result<PkiPlan, PkiError> {
    plan_renewing(paths, config, now, &Renew::Nothing)
}

/// [`plan`], reissuing the leaves `renew` names too.
pub fn plan_renewing(
    paths: &Paths,
    config: &ClusterConfig,
    now: OffsetDateTime,
    renew: &Renew,
) -> Result<PkiPlan, PkiError> {
    let alg = config.cluster.key_algorithm;
    let stamp = format!("{}", now.unix_timestamp());
    let mut out = PkiPlan::default();

    for spec in cluster_cert_specs(config) {
        let crt = paths.pki(&format!("{}.crt", spec.name));
        let key_path = paths.pki(&format!("{}.key", spec.name));
        match &spec.issuer {
            None => {
                let ca = match Ca::load(paths, &spec.name)? {
                    Some(ca) => {
                        out.decisions.push((spec.name.clone(), Decision::Keep));
                        ca
                    }
                    None => {
                        let ca = Ca::create(&spec, alg, now)?;
                        out.files.push(FileSpec::new(&crt, ca.cert_pem.clone(), 0o644));
                        out.files.push(FileSpec::new(&key_path, ca.key.pem.clone(), 0o600));
                        out.decisions.push((spec.name.clone(), Decision::Create));
                        ca
                    }
                };
                out.cas.push((spec.name.clone(), ca));
            }
            Some(issuer) => {
                let ca = out.ca(issuer).expect("CAs are planned before their leaves");
                let cert_bytes = read_optional(&crt)?;
                let key_pem = read_optional(&key_path)?.and_then(|b| String::from_utf8(b).ok());
                let key = key_pem.as_deref().and_then(|p| Key::from_pem(p).ok());
                let observed = cert_bytes.as_deref().and_then(|b| observe(b, Some(&ca.spki())).ok());
                let mut decision =
                    renew.apply(&spec.name, decide_leaf(&spec, observed.as_ref(), key.as_ref(), alg, now));
                if decision == Decision::Create && (cert_bytes.is_some() || key_pem.is_some()) {
                    decision = Decision::Reissue { reason: "unreadable certificate or key".into(), new_key: true };
                }
                let (key, new_key) = match (&decision, key) {
                    (Decision::Keep, _) => {
                        out.decisions.push((spec.name.clone(), decision));
                        continue;
                    }
                    (Decision::Reissue { new_key: false, .. }, Some(k)) => (k, false),
                    _ => (
                        Key::generate(alg).map_err(|reason| PkiError::Issue { name: spec.name.clone(), reason })?,
                        true,
                    ),
                };
                let pem = ca.issue(&spec, &key, now)?;
                if matches!(decision, Decision::Reissue { .. }) {
                    let backup = paths.pki_backup_dir().join(&stamp);
                    if let Some(old) = cert_bytes {
                        out.backups.push(FileSpec::new(backup.join(format!("{}.crt", spec.name)), old, 0o644));
                    }
                    if let (true, Some(old)) = (new_key, key_pem) {
                        out.backups.push(FileSpec::new(backup.join(format!("{}.key", spec.name)), old, 0o600));
                    }
                }
                out.files.push(FileSpec::new(&crt, pem, 0o644));
                if new_key {
                    out.files.push(FileSpec::new(&key_path, key.pem.clone(), 0o600));
                }
                out.decisions.push((spec.name.clone(), decision));
            }
        }
    }

    // The service-account signing pair: created once, never rotated here
    // (rotating it invalidates every service-account token).
    let (sa_key, sa_pub) = (paths.pki("sa.key"), paths.pki("sa.pub"));
    match read_optional(&sa_key)? {
        Some(pem) => {
            let text = String::from_utf8(pem).unwrap_or_default();
            let key = Key::from_pem(&text).map_err(|reason| PkiError::Unreadable {
                path: sa_key.display().to_string(),
                what: "service-account key",
                reason,
            })?;
            out.files.push(FileSpec::new(&sa_pub, key.pair.public_key_pem(), 0o644));
            out.decisions.push(("sa".into(), Decision::Keep));
        }
        None => {
            let key = Key::generate(alg).map_err(|reason| PkiError::Issue { name: "sa".into(), reason })?;
            out.files.push(FileSpec::new(&sa_key, key.pem.clone(), 0o600));
            out.files.push(FileSpec::new(&sa_pub, key.pair.public_key_pem(), 0o644));
            out.decisions.push(("sa".into(), Decision::Create));
        }
    }

    // Secrets at rest: one key for the whole cluster, created by the first
    // master before its etcd holds anything and handed to the others with
    // the rest of the key material. A master of a running cluster that has
    // none cannot make one: its API server would write what the others
    // cannot read.
    let enc = paths.pki(ENCRYPTION_CONFIG);
    match read_optional(&enc)? {
        Some(bytes) => {
            encryption_key_count(&bytes).map_err(|reason| PkiError::Unreadable {
                path: enc.display().to_string(),
                what: "encryption configuration",
                reason,
            })?;
            out.decisions.push(("encryption-config".into(), Decision::Keep));
        }
        None if paths.etcd_bootstrapped_marker().exists() => {
            return Err(PkiError::EncryptionConfigMissing { path: enc.display().to_string() });
        }
        None => {
            out.files.push(FileSpec::new(&enc, encryption_config(&new_encryption_secret()), 0o600));
            out.decisions.push(("encryption-config".into(), Decision::Create));
        }
    }
    Ok(out)
}

/// The API server's encryption-at-rest configuration, under `pki/`.
pub const ENCRYPTION_CONFIG: &str = "encryption-config.yaml";

/// 32 random bytes, base64: a secretbox key.
fn new_encryption_secret() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom;
    let mut k = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut k).expect("system randomness");
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// Secrets encrypted with secretbox (XSalsa20-Poly1305: no nonce-reuse
/// limit to rotate for, unlike aesgcm's, and no padding oracle, unlike
/// aescbc's); `identity` last, so Secrets written before encryption was on
/// are still read (and encrypted when next written).
pub fn encryption_config(secret: &str) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - secretbox:
      keys:
      - name: key1
        secret: {secret}
  - identity: {{}}
"
    )
}

/// How many secretbox keys a configuration holds (at least one, each 32
/// bytes), or why it is not one hakube can run with.
pub fn encryption_key_count(text: &[u8]) -> Result<usize, String> {
    encryption_key_names(text).map(|n| n.len())
}

/// The names of a configuration's secretbox keys, newest first, checked as
/// [`encryption_key_count`] says.
pub fn encryption_key_names(text: &[u8]) -> Result<Vec<String>, String> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_norway::from_slice(text).map_err(|e| format!("not YAML ({e})"))?;
    if v["kind"] != "EncryptionConfiguration" {
        return Err("not an EncryptionConfiguration".into());
    }
    let keys = v["resources"][0]["providers"][0]["secretbox"]["keys"]
        .as_array()
        .ok_or("its first provider is not secretbox with keys")?;
    let mut names = Vec::with_capacity(keys.len());
    for k in keys {
        let secret = k["secret"].as_str().ok_or("a key has no secret")?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(secret)
            .map_err(|_| format!("the secret of key {} is not base64", k["name"]))?;
        if raw.len() != 32 {
            return Err(format!("the secret of key {} is {} bytes, not 32", k["name"], raw.len()));
        }
        names.push(k["name"].as_str().ok_or("a key has no name")?.to_owned());
    }
    if names.is_empty() {
        return Err("it holds no key".into());
    }
    Ok(names)
}

/// The SHA-256 of a CA certificate's SubjectPublicKeyInfo, as kubeadm's
/// `--discovery-token-ca-cert-hash` pins it: `sha256:<hex>`.
pub fn ca_hash(cert_pem: &[u8]) -> Result<String, String> {
    let observed = observe(cert_pem, None)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &observed.spki);
    Ok(format!("sha256:{}", hex(digest.as_ref())))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
