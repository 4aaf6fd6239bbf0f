//! Tokens and sealed key material in etcd, both on the token's lease.

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::token::{JoinToken, Role, TokenRecord, TOKEN_PREFIX};
use crate::etcd::EtcdError;

pub const MATERIAL_PREFIX: &str = "/hakube/material/";

fn call(endpoint: &str, e: etcd_client::Error) -> EtcdError {
    EtcdError::Call { endpoint: endpoint.to_owned(), message: e.to_string() }
}

/// A token record for `token`, valid for `ttl_secs` from `now`.
pub fn new_record(token: &JoinToken, role: Role, ttl_secs: u64, created_by: &str, now: u64) -> TokenRecord {
    TokenRecord {
        id: token.id.clone(),
        secret_sha256: token.secret_hash(),
        role,
        created_at: now,
        expires_at: now + ttl_secs,
        uses: 0,
        created_by: created_by.to_owned(),
    }
}

/// How long an expired token's record stays, so that a join with it is told
/// "expired" rather than "unknown" (it is refused either way).
pub const EXPIRED_KEPT_SECS: u64 = 3600;

/// Stores a token record (and, for masters, its sealed material) on a
/// lease that ends a while after the token expires.
pub async fn create(
    client: &mut Client,
    endpoint: &str,
    record: &TokenRecord,
    sealed_material: Option<String>,
) -> Result<(), EtcdError> {
    let ttl = record.expires_at.saturating_sub(record.created_at).max(1);
    let lease = client.lease_grant((ttl + EXPIRED_KEPT_SECS) as i64, None).await.map_err(|e| call(endpoint, e))?.id();
    let key = format!("{TOKEN_PREFIX}{}", record.id);
    let mut ops = vec![TxnOp::put(
        key,
        serde_json::to_vec(record).expect("record serializes"),
        Some(PutOptions::new().with_lease(lease)),
    )];
    if let Some(sealed) = sealed_material {
        // The sealed key material lives exactly as long as the token.
        let material_lease = client.lease_grant(ttl as i64, None).await.map_err(|e| call(endpoint, e))?.id();
        ops.push(TxnOp::put(
            format!("{MATERIAL_PREFIX}{}", record.id),
            sealed,
            Some(PutOptions::new().with_lease(material_lease)),
        ));
    }
    client.txn(Txn::new().and_then(ops)).await.map_err(|e| call(endpoint, e))?;
    Ok(())
}

/// Reads a token. `local` reads this member's copy without a quorum round
/// (serializable), so a refusal can still be explained when quorum is lost.
pub async fn get_with(
    client: &mut Client,
    endpoint: &str,
    id: &str,
    local: bool,
) -> Result<Option<(TokenRecord, i64)>, EtcdError> {
    let opts = local.then(|| GetOptions::new().with_serializable());
    let resp = client.get(format!("{TOKEN_PREFIX}{id}"), opts).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok().map(|r| (r, kv.mod_revision()))))
}

pub async fn material(client: &mut Client, endpoint: &str, id: &str) -> Result<Option<String>, EtcdError> {
    let resp = client.get(format!("{MATERIAL_PREFIX}{id}"), None).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

#[derive(Debug, thiserror::Error)]
pub enum UseError {
    #[error("the token is gone (revoked or expired)")]
    Gone,
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// Counts one use of `token`, with a compare-and-swap on its record; the
/// linearizable read also catches a token revoked since a local read.
pub async fn record_use(client: &mut Client, endpoint: &str, token: &JoinToken) -> Result<(), UseError> {
    let key = format!("{TOKEN_PREFIX}{}", token.id);
    for _ in 0..10 {
        let resp = client.get(key.as_str(), None).await.map_err(|e| call(endpoint, e))?;
        let Some(kv) = resp.kvs().first() else { return Err(UseError::Gone) };
        let Ok(mut record) = serde_json::from_slice::<TokenRecord>(kv.value()) else { return Err(UseError::Gone) };
        if !super::token::constant_time_eq(record.secret_sha256.as_bytes(), token.secret_hash().as_bytes()) {
            return Err(UseError::Gone);
        }
        record.uses += 1;
        let put = TxnOp::put(
            key.as_str(),
            serde_json::to_vec(&record).expect("record serializes"),
            Some(PutOptions::new().with_lease(kv.lease())),
        );
        let txn =
            Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())]).and_then([put]);
        if client.txn(txn).await.map_err(|e| call(endpoint, e))?.succeeded() {
            return Ok(());
        }
    }
    Err(UseError::Etcd(EtcdError::Call {
        endpoint: endpoint.to_owned(),
        message: "the token record kept changing under ten attempts to count a use".into(),
    }))
}

pub async fn list(client: &mut Client, endpoint: &str) -> Result<Vec<TokenRecord>, EtcdError> {
    let resp = client.get(TOKEN_PREFIX, Some(GetOptions::new().with_prefix())).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
}

/// Deletes a token and its material; false when there was none.
pub async fn revoke(client: &mut Client, endpoint: &str, id: &str) -> Result<bool, EtcdError> {
    let resp = client.delete(format!("{TOKEN_PREFIX}{id}"), None).await.map_err(|e| call(endpoint, e))?;
    client.delete(format!("{MATERIAL_PREFIX}{id}"), None).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.deleted() > 0)
}
