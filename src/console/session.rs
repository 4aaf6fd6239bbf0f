//! Signing in to the cluster page without a password store: being root on a
//! master is the credential. `hakube console` writes a one-time link's hash
//! into etcd; the browser trades the link for a session once (an etcd
//! transaction deletes the link as it creates the session, so a second
//! trade finds nothing); the session is a random secret in a cookie that
//! scripts cannot read and other sites cannot send (`HttpOnly`,
//! `SameSite=Strict`, `Secure`), and etcd keeps only its hash, on a lease
//! that ends it. Every change a signed-in browser asks for carries a CSRF
//! token derived from the session's secret, which another site's page
//! cannot know.
//!
//! Links and sessions live in etcd, not in one agent: the page is served by
//! every master, and an address that floats (a virtual IP, a balancer)
//! may reach another master with the next request.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::etcd::EtcdError;
use crate::join::token::constant_time_eq;

/// A sign-in link is good for this long, once.
pub const LINK_TTL: Duration = Duration::from_secs(300);
/// A session ends this long after sign-in, used or not.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The session cookie's name. `__Host-`: a browser takes it only from a
/// secure origin, with `Path=/` and no `Domain`, so a plain-HTTP service on
/// another port of the master's address (a NodePort) cannot plant one
/// (browsers share cookies across a host's ports).
pub const COOKIE: &str = "__Host-hakube_session";

const LINK_PREFIX: &str = "/hakube/console/links/";
const SESSION_PREFIX: &str = "/hakube/console/sessions/";
/// Secrets are 32 random bytes, written as 64 hex digits.
const SECRET_HEX: usize = 64;

/// A secret a browser holds (a link's code, a session's cookie), never
/// stored: etcd has its SHA-256 only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    pub fn generate() -> Secret {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; SECRET_HEX / 2];
        ring::rand::SystemRandom::new().fill(&mut bytes).expect("system randomness");
        Secret(crate::pki::hex(&bytes))
    }

    /// A secret as a browser presents it: 64 lowercase hex digits, or
    /// nothing (whatever else it is, no hash of it is looked up).
    pub fn parse(s: &str) -> Option<Secret> {
        (s.len() == SECRET_HEX && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Secret(s.to_owned()))
    }

    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// What etcd keeps.
    pub fn hash(&self) -> String {
        crate::pki::hex(ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes()).as_ref())
    }

    /// The CSRF token of the session this secret opens: derived, so that
    /// nothing more is stored, and unguessable without the secret, which
    /// the cookie keeps from scripts.
    pub fn csrf(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"hakube console csrf\0");
        ctx.update(self.0.as_bytes());
        crate::pki::hex(ctx.finish().as_ref())
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        constant_time_eq(self.csrf().as_bytes(), presented.as_bytes())
    }
}

/// What etcd keeps of a sign-in link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkRecord {
    /// Who printed it: `user@host`.
    pub by: String,
    pub created_at: u64,
    pub expires_at: u64,
}

/// What etcd keeps of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    /// Who printed the link it came from.
    pub by: String,
    /// Where the browser signed in from.
    pub from: String,
    pub created_at: u64,
    pub expires_at: u64,
}

/// Why a link or a session is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this sign-in link was used already, has expired, or never existed: run `hakube console` on a master for a new one")]
    LinkGone,
    #[error("this sign-in link expired at {at} (unix time): run `hakube console` on a master for a new one")]
    LinkExpired { at: u64 },
    #[error("not signed in, or the session ended: run `hakube console` on a master for a sign-in link")]
    NoSession,
    #[error("the session expired at {at} (unix time): run `hakube console` on a master for a sign-in link")]
    SessionExpired { at: u64 },
    #[error("the request's CSRF token is missing or wrong: reload the page and try again")]
    Csrf,
}

/// Whether a link etcd still has may be traded now. etcd drops it when its
/// lease ends; the check covers the lease's last second and clocks.
pub fn check_link(record: &LinkRecord, now: u64) -> Result<(), Refused> {
    if now >= record.expires_at {
        return Err(Refused::LinkExpired { at: record.expires_at });
    }
    Ok(())
}

/// Whether a session opens the page now.
pub fn check_session(record: Option<&SessionRecord>, now: u64) -> Result<(), Refused> {
    let record = record.ok_or(Refused::NoSession)?;
    if now >= record.expires_at {
        return Err(Refused::SessionExpired { at: record.expires_at });
    }
    Ok(())
}

/// The `Set-Cookie` value that hands a browser its session.
pub fn set_cookie(secret: &Secret) -> String {
    format!(
        "{COOKIE}={}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        secret.reveal(),
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that ends it in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict")
}

/// The session secret among a request's `Cookie` headers: the first well
/// formed one (a malformed one before it does not hide it).
pub fn from_cookies<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Secret> {
    headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .find_map(|(_, value)| Secret::parse(value))
}

fn call(endpoint: &str, e: etcd_client::Error) -> EtcdError {
    EtcdError::Call { endpoint: endpoint.to_owned(), message: e.to_string() }
}

/// Stores a new link's hash on a lease of [`LINK_TTL`]; the code is what
/// the printed link carries.
pub async fn create_link(client: &mut Client, endpoint: &str, by: &str, now: u64) -> Result<Secret, EtcdError> {
    let code = Secret::generate();
    let record = LinkRecord { by: by.to_owned(), created_at: now, expires_at: now + LINK_TTL.as_secs() };
    let lease = client.lease_grant(LINK_TTL.as_secs() as i64, None).await.map_err(|e| call(endpoint, e))?.id();
    client
        .put(
            format!("{LINK_PREFIX}{}", code.hash()),
            serde_json::to_vec(&record).expect("a link serializes"),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(|e| call(endpoint, e))?;
    Ok(code)
}

/// Trades a link's code for a new session, once: one transaction deletes
/// the link (only if it is the one read) and stores the session, so that
/// of two trades of one link at most one wins, on any masters.
pub async fn trade(
    client: &mut Client,
    endpoint: &str,
    code: &Secret,
    from: &str,
    now: u64,
) -> Result<Result<(Secret, SessionRecord), Refused>, EtcdError> {
    let key = format!("{LINK_PREFIX}{}", code.hash());
    let got = client.get(key.as_str(), None).await.map_err(|e| call(endpoint, e))?;
    let Some(kv) = got.kvs().first() else { return Ok(Err(Refused::LinkGone)) };
    let Ok(link) = serde_json::from_slice::<LinkRecord>(kv.value()) else { return Ok(Err(Refused::LinkGone)) };
    if let Err(refused) = check_link(&link, now) {
        return Ok(Err(refused));
    }
    let secret = Secret::generate();
    let session = SessionRecord {
        by: link.by.clone(),
        from: from.to_owned(),
        created_at: now,
        expires_at: now + SESSION_TTL.as_secs(),
    };
    let lease = client.lease_grant(SESSION_TTL.as_secs() as i64, None).await.map_err(|e| call(endpoint, e))?.id();
    let txn = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())]).and_then([
        TxnOp::delete(key.as_str(), None),
        TxnOp::put(
            format!("{SESSION_PREFIX}{}", secret.hash()),
            serde_json::to_vec(&session).expect("a session serializes"),
            Some(PutOptions::new().with_lease(lease)),
        ),
    ]);
    if client.txn(txn).await.map_err(|e| call(endpoint, e))?.succeeded() {
        return Ok(Ok((secret, session)));
    }
    let _ = client.lease_revoke(lease).await;
    Ok(Err(Refused::LinkGone))
}

/// The session a secret opens, as this master's etcd member has it (a
/// local read: the page still opens while etcd has no quorum, which is
/// when it is needed most).
pub async fn session(client: &mut Client, endpoint: &str, secret: &Secret) -> Result<Option<SessionRecord>, EtcdError> {
    let resp = client
        .get(format!("{SESSION_PREFIX}{}", secret.hash()), Some(GetOptions::new().with_serializable()))
        .await
        .map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// Ends a session (signing out).
pub async fn end(client: &mut Client, endpoint: &str, secret: &Secret) -> Result<(), EtcdError> {
    client.delete(format!("{SESSION_PREFIX}{}", secret.hash()), None).await.map_err(|e| call(endpoint, e))?;
    Ok(())
}

/// An open session as `hakube console --sessions` lists it: the first 12
/// hex digits of its hash name it (never the secret), and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub id: String,
    pub record: SessionRecord,
}

/// Every session etcd holds, oldest first.
pub async fn list(client: &mut Client, endpoint: &str) -> Result<Vec<Open>, EtcdError> {
    let resp =
        client.get(SESSION_PREFIX, Some(GetOptions::new().with_prefix())).await.map_err(|e| call(endpoint, e))?;
    let mut open: Vec<Open> = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let hash = kv.key_str().ok()?.strip_prefix(SESSION_PREFIX)?;
            let record = serde_json::from_slice(kv.value()).ok()?;
            Some(Open { id: hash.chars().take(12).collect(), record })
        })
        .collect();
    open.sort_by_key(|o| (o.record.created_at, o.id.clone()));
    Ok(open)
}

/// Ends every session and every sign-in link not yet used (a link or a
/// cookie that may have leaked), on every master at once: each master
/// looks a session up in etcd on every request. Says how many of each it
/// ended.
pub async fn end_all(client: &mut Client, endpoint: &str) -> Result<(usize, usize), EtcdError> {
    let mut ended = [0usize; 2];
    for (n, prefix) in [SESSION_PREFIX, LINK_PREFIX].into_iter().enumerate() {
        let resp = client.get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(|e| call(endpoint, e))?;
        for kv in resp.kvs() {
            // The lease goes with its key (it would otherwise live on,
            // empty, until it ends); one that ended meanwhile took its key.
            if kv.lease() != 0 {
                let _ = client.lease_revoke(kv.lease()).await;
            }
            // The delete is what counts, and what fails loudly.
            client.delete(kv.key(), None).await.map_err(|e| call(endpoint, e))?;
            ended[n] += 1;
        }
    }
    Ok((ended[0], ended[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_hex_and_only_well_formed_ones_are_looked_up() {
        let (a, b) = (Secret::generate(), Secret::generate());
        assert_ne!(a, b);
        assert_eq!(Secret::parse(a.reveal()), Some(a.clone()));
        assert_eq!(a.hash().len(), 64);
        assert_ne!(a.hash(), a.reveal(), "etcd keeps the hash, not the secret");
        assert!(!format!("{a:?}").contains(a.reveal()), "never in a log line");
        for bad in
            ["", "abc", &a.reveal().to_uppercase(), &format!("{}0", a.reveal()), &"g".repeat(64), &"/".repeat(64)]
        {
            assert_eq!(Secret::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_csrf_token_belongs_to_its_session() {
        let (a, b) = (Secret::generate(), Secret::generate());
        assert!(a.csrf_matches(&a.csrf()));
        assert!(!a.csrf_matches(&b.csrf()), "another session's token");
        assert!(!a.csrf_matches(""), "none");
        assert!(!a.csrf_matches(&a.hash()), "the stored hash is not the token");
        assert!(!a.csrf_matches(a.reveal()), "nor the secret itself");
    }

    #[test]
    fn links_and_sessions_expire() {
        let link = LinkRecord { by: "root@m1".into(), created_at: 100, expires_at: 400 };
        assert_eq!(check_link(&link, 399), Ok(()));
        assert_eq!(check_link(&link, 400), Err(Refused::LinkExpired { at: 400 }));
        let s = SessionRecord { by: "root@m1".into(), from: "10.0.0.9".into(), created_at: 100, expires_at: 500 };
        assert_eq!(check_session(Some(&s), 499), Ok(()));
        assert_eq!(check_session(Some(&s), 500), Err(Refused::SessionExpired { at: 500 }));
        assert_eq!(check_session(None, 0), Err(Refused::NoSession));
    }

    #[test]
    fn the_cookie_is_secure_http_only_strict_and_scoped_to_the_page() {
        let s = Secret::generate();
        let set = set_cookie(&s);
        assert!(set.starts_with("__Host-hakube_session="), "{set}");
        for part in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict", "Max-Age=28800"] {
            assert!(set.split("; ").any(|p| p == part), "{part} in {set}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
        let header = format!("theme=dark; {COOKIE}={}; other=1", s.reveal());
        assert_eq!(from_cookies([header.as_str()]), Some(s.clone()));
        assert_eq!(from_cookies(["a=1", &format!("{COOKIE}={}", s.reveal())]), Some(s.clone()), "in a second header");
        assert_eq!(from_cookies([format!("{COOKIE}=x").as_str()]), None, "malformed");
        let planted = format!("{COOKIE}=x; {COOKIE}={}", s.reveal());
        assert_eq!(from_cookies([planted.as_str()]), Some(s.clone()), "a malformed one first hides nothing");
        assert_eq!(from_cookies([format!("hakube_session={}", s.reveal()).as_str()]), None, "without the prefix");
        assert_eq!(from_cookies(["theme=dark"]), None);
    }
}
