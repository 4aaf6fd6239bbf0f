//! The master key material (the three CAs, the service-account key and the
//! key Secrets are encrypted with), sealed with AES-256-GCM under the
//! certificate key of a master join script. etcd only ever holds the sealed
//! form, and the key itself is never stored in the cluster: only the script
//! carries it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::SecureRandom;

use crate::config::types::InvalidValue;
use crate::host::fs::{read_optional, FileSpec};
use crate::host::paths::Paths;

/// The files a master needs to issue its own certificates (kubeadm's
/// "control-plane certificates" of `--upload-certs`).
pub const MATERIAL_FILES: [(&str, u32); 9] = [
    ("ca.crt", 0o644),
    ("ca.key", 0o600),
    ("front-proxy-ca.crt", 0o644),
    ("front-proxy-ca.key", 0o600),
    ("etcd/ca.crt", 0o644),
    ("etcd/ca.key", 0o600),
    ("sa.key", 0o600),
    ("sa.pub", 0o644),
    // The key Secrets are encrypted with in etcd.
    (crate::pki::ENCRYPTION_CONFIG, 0o600),
];

/// Binds the ciphertext to its purpose and format version.
const AAD: &[u8] = b"hakube master material v1";

/// 32 random bytes, written as 64 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateKey([u8; 32]);

impl fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertificateKey(<redacted>)")
    }
}

impl CertificateKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut k).expect("system randomness");
        CertificateKey(k)
    }

    pub fn reveal(&self) -> String {
        crate::pki::hex(&self.0)
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("32-byte key"))
    }
}

impl FromStr for CertificateKey {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let bad = || InvalidValue("a certificate key is 64 hex digits: copy it from the master join script".into());
        if s.len() != 64 {
            return Err(bad());
        }
        let mut k = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).map_err(|_| bad())?;
            k[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(CertificateKey(k))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error(transparent)]
    Fs(#[from] crate::host::fs::FsError),
    #[error("{0} is missing on this master: it cannot hand out the cluster's key material")]
    Missing(String),
    #[error(
        "the certificate key does not open the cluster's key material: the script's key is wrong or \
         belongs to another script; print a new one with `hakube node-join-script --master`"
    )]
    WrongKey,
    #[error("the sealed key material is malformed: {0}")]
    Malformed(String),
}

/// Reads the material files of this master.
pub fn collect(paths: &Paths) -> Result<BTreeMap<String, String>, MaterialError> {
    let mut out = BTreeMap::new();
    for (name, _) in MATERIAL_FILES {
        let bytes = read_optional(&paths.pki(name))?.ok_or_else(|| MaterialError::Missing(name.into()))?;
        out.insert(name.to_owned(), String::from_utf8_lossy(&bytes).into_owned());
    }
    Ok(out)
}

/// Seals the files: base64(nonce ‖ ciphertext ‖ tag).
pub fn seal(key: &CertificateKey, files: &BTreeMap<String, String>) -> String {
    let mut data = serde_json::to_vec(files).expect("material serializes");
    let mut nonce = [0u8; NONCE_LEN];
    ring::rand::SystemRandom::new().fill(&mut nonce).expect("system randomness");
    key.aead()
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut data)
        .expect("sealing cannot fail for in-memory data");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    base64::engine::general_purpose::STANDARD.encode(out)
}

pub fn open(key: &CertificateKey, sealed: &str) -> Result<BTreeMap<String, String>, MaterialError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|e| MaterialError::Malformed(e.to_string()))?;
    if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(MaterialError::Malformed("too short".into()));
    }
    let (nonce, rest) = raw.split_at(NONCE_LEN);
    let mut data = rest.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| MaterialError::Malformed("nonce".into()))?;
    let plain = key.aead().open_in_place(nonce, Aad::from(AAD), &mut data).map_err(|_| MaterialError::WrongKey)?;
    serde_json::from_slice(plain).map_err(|e| MaterialError::Malformed(e.to_string()))
}

/// The material as files to write on the joining master.
pub fn files(paths: &Paths, material: &BTreeMap<String, String>) -> Result<Vec<FileSpec>, MaterialError> {
    MATERIAL_FILES
        .iter()
        .map(|(name, mode)| {
            let text = material.get(*name).ok_or_else(|| MaterialError::Malformed(format!("{name} is absent")))?;
            Ok(FileSpec::new(paths.pki(name), text.clone(), *mode))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_material_opens_only_with_its_key() {
        let key = CertificateKey::generate();
        let files: BTreeMap<_, _> = [("ca.key".to_owned(), "-----BEGIN PRIVATE KEY-----secret".to_owned())].into();
        let sealed = seal(&key, &files);
        assert!(
            !sealed.contains("PRIVATE")
                && !String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(&sealed).unwrap())
                    .contains("secret")
        );
        assert_eq!(open(&key, &sealed).unwrap(), files);
        assert!(matches!(open(&CertificateKey::generate(), &sealed), Err(MaterialError::WrongKey)));
        let parsed: CertificateKey = key.reveal().parse().unwrap();
        assert_eq!(parsed, key);
        assert!("xyz".parse::<CertificateKey>().is_err());
        assert!("g".repeat(64).parse::<CertificateKey>().is_err());
    }
}
