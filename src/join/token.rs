//! Join tokens: kubeadm's format (`[a-z0-9]{6}.[a-z0-9]{16}`), stored in etcd
//! only as a SHA-256 of the secret, with role, expiry and use count. The
//! record hangs on an etcd lease of the token's lifetime, so an expired token
//! disappears from the cluster by itself.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::types::InvalidValue;

pub use crate::cluster::Role;

pub const TOKEN_PREFIX: &str = "/hakube/tokens/";

impl Role {
    /// How long a token of this role lives unless told otherwise: masters
    /// carry the cluster's key material, so theirs is short.
    pub fn default_ttl_secs(self) -> u64 {
        match self {
            Role::Master => 2 * 3600,
            Role::Worker => 24 * 3600,
        }
    }
}

/// A join token `id.secret`. Debug never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JoinToken {
    pub id: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}.<redacted>)", self.id)
    }
}

impl JoinToken {
    pub fn generate() -> JoinToken {
        JoinToken { id: random_chars(6), secret: random_chars(16) }
    }

    /// The full token, for the join script only.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    pub fn secret_hash(&self) -> String {
        crate::pki::hex(ring::digest::digest(&ring::digest::SHA256, self.secret.as_bytes()).as_ref())
    }
}

impl From<JoinToken> for String {
    fn from(t: JoinToken) -> String {
        t.reveal()
    }
}

impl TryFrom<String> for JoinToken {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        s.parse()
    }
}

impl FromStr for JoinToken {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let ok = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        match s.split_once('.') {
            Some((id, secret)) if ok(id, 6) && ok(secret, 16) => {
                Ok(JoinToken { id: id.to_owned(), secret: secret.to_owned() })
            }
            _ => Err(InvalidValue(
                "a join token has the form abcdef.0123456789abcdef (6 and 16 lowercase letters or digits): \
                 copy it from the join script, or print a new script with `hakube node-join-script`"
                    .into(),
            )),
        }
    }
}

fn random_chars(n: usize) -> String {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut b = [0u8; 1];
        rng.fill(&mut b).expect("system randomness");
        // Rejection sampling keeps every character equally likely.
        if (b[0] as usize) < 252 {
            out.push(ALPHABET[b[0] as usize % 36] as char);
        }
    }
    out
}

/// What etcd holds of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub role: Role,
    pub created_at: u64,
    pub expires_at: u64,
    pub uses: u64,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown join token {0}: it was revoked, has expired and been removed, or never existed; print a new script with `hakube node-join-script`")]
    Unknown(String),
    #[error("join token {0} does not match: print a new script with `hakube node-join-script`")]
    Mismatch(String),
    #[error("join token {id} expired at {at} (unix time): print a new script with `hakube node-join-script`")]
    Expired { id: String, at: u64 },
    #[error("join token {id} is for a {token_role}, not a {asked}: use `hakube node-join-script{flag}` for a {asked}")]
    WrongRole { id: String, token_role: Role, asked: Role, flag: &'static str },
}

/// Compares without an early exit, so timing does not tell how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// Checks a presented token against its record (pure; constant time on the secret).
pub fn verify(token: &JoinToken, record: Option<&TokenRecord>, role: Role, now: u64) -> Result<(), TokenError> {
    let record = record.ok_or_else(|| TokenError::Unknown(token.id.clone()))?;
    let presented = token.secret_hash();
    if !constant_time_eq(presented.as_bytes(), record.secret_sha256.as_bytes()) {
        return Err(TokenError::Mismatch(token.id.clone()));
    }
    if now >= record.expires_at {
        return Err(TokenError::Expired { id: token.id.clone(), at: record.expires_at });
    }
    if record.role != role {
        let flag = if role == Role::Master { " --master" } else { "" };
        return Err(TokenError::WrongRole { id: token.id.clone(), token_role: record.role, asked: role, flag });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(t: &JoinToken, role: Role, expires_at: u64) -> TokenRecord {
        TokenRecord {
            id: t.id.clone(),
            secret_sha256: t.secret_hash(),
            role,
            created_at: 0,
            expires_at,
            uses: 0,
            created_by: "m1".into(),
        }
    }

    #[test]
    fn tokens_have_kubeadms_form_and_hide_their_secret() {
        let t = JoinToken::generate();
        let s = t.reveal();
        assert_eq!(s.len(), 23);
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&s[7..]));
        for bad in ["", "abcdef", "abcdef.0123456789abcde", "ABCDEF.0123456789abcdef", "abcdef-0123456789abcdef"] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn verification_names_each_refusal() {
        let t = JoinToken::generate();
        let r = record(&t, Role::Worker, 100);
        assert_eq!(verify(&t, Some(&r), Role::Worker, 99), Ok(()));
        assert!(matches!(verify(&t, None, Role::Worker, 0), Err(TokenError::Unknown(_))));
        assert!(matches!(verify(&t, Some(&r), Role::Worker, 100), Err(TokenError::Expired { .. })));
        let e = verify(&t, Some(&r), Role::Master, 0).unwrap_err();
        assert!(e.to_string().contains("node-join-script --master"), "{e}");
        let other: JoinToken = format!("{}.{}", t.id, "x".repeat(16)).parse().unwrap();
        assert!(matches!(verify(&other, Some(&r), Role::Worker, 0), Err(TokenError::Mismatch(_))));
    }
}
