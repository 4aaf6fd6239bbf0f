//! Ed25519 signatures of a bundle's manifest, with keys in the files
//! OpenSSL makes (`openssl genpkey -algorithm ed25519 -out bundle.key`,
//! `openssl pkey -in bundle.key -pubout -out bundle.pub`): no key format of
//! hakube's own to learn, and ring (already the binary's crypto) signs.

use std::path::Path;

use ring::signature::{self, Ed25519KeyPair, KeyPair as _};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the
/// 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The base64 body of the first PEM block labelled `label`.
fn pem(text: &str, label: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or_else(|| format!("no {begin} block"))? + begin.len();
    let stop = text[start..].find(&end).ok_or_else(|| format!("no {end} line"))? + start;
    let body: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).map_err(|e| format!("the {label} block is not base64 ({e})"))
}

pub struct SigningKey(Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// A new random key (for tests; operators make theirs with openssl).
    #[cfg(test)]
    pub fn generate() -> SigningKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("system randomness");
        SigningKey(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key just made"))
    }

    /// An Ed25519 private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub fn from_pem(text: &str) -> Result<SigningKey, String> {
        let der = pem(text, "PRIVATE KEY")?;
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map(SigningKey).map_err(|e| {
            format!("not an Ed25519 private key ({e}): make one with `openssl genpkey -algorithm ed25519`")
        })
    }

    pub fn load(path: &Path) -> Result<SigningKey, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        SigningKey::from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.0.sign(msg).as_ref().to_vec()
    }

    pub fn public(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(k)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// An Ed25519 public key, SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`).
    pub fn from_pem(text: &str) -> Result<PublicKey, String> {
        let der = pem(text, "PUBLIC KEY")?;
        match der.strip_prefix(&SPKI_PREFIX[..]) {
            Some(k) if k.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(k);
                Ok(PublicKey(key))
            }
            _ => Err("not an Ed25519 public key: make one with `openssl pkey -in KEY -pubout`".into()),
        }
    }

    pub fn load(path: &Path) -> Result<PublicKey, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        PublicKey::from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), String> {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0).verify(msg, sig).map_err(|_| {
            "its signature does not match the bundle key: it was changed, or signed with another key".into()
        })
    }

    pub fn to_pem(&self) -> String {
        use base64::Engine as _;
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by `openssl genpkey -algorithm ed25519` (and its `-pubout`).
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGCc5APARG6BVMuTh2qhq9QBw7evebmkLg3wKCUPoTpi
-----END PRIVATE KEY-----
";
    const PUB: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAtNAoZZ9E1Q8RsJb7HYQsAH5wVEdFbEBXGln0z2XB+dc=
-----END PUBLIC KEY-----
";

    #[test]
    fn openssls_keys_sign_and_verify() {
        let k = SigningKey::from_pem(KEY).unwrap();
        let sig = k.sign(b"manifest");
        let public = PublicKey::from_pem(PUB).unwrap();
        assert_eq!(public, k.public(), "openssl's public key is the private key's");
        assert_eq!(public.to_pem(), PUB, "and prints as openssl prints it");
        public.verify(b"manifest", &sig).unwrap();
        assert!(public.verify(b"manifesT", &sig).is_err());
        let other = SigningKey::generate();
        let e = other.public().verify(b"manifest", &sig).unwrap_err();
        assert!(e.contains("signed with another key"), "{e}");
    }

    #[test]
    fn other_keys_and_garbage_are_named() {
        assert!(SigningKey::from_pem("nothing").unwrap_err().contains("no -----BEGIN PRIVATE KEY-----"));
        let rsa_spki = "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAK==\n-----END PUBLIC KEY-----\n";
        assert!(PublicKey::from_pem(rsa_spki).is_err());
    }
}
