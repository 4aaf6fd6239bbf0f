//! A restored cluster's records, read and tidied on the scratch member
//! (`etcd::restore`) before its first master serves anyone.
//!
//! The snapshot holds the cluster as it was: its settings, its tokens, its
//! purge history, the records of its nodes. What it also holds, and must
//! not keep, is what only made sense with the masters that are gone: their
//! registry records (none of them is a member of the restored etcd; each
//! joins again, and a record left behind would make the purge hunt a
//! "lost" master for an hour, or make this host's heartbeat keep another
//! host's address), the purge under way and the leader's view (timed on a
//! leader's clock that stopped), the election key and the membership lock
//! (held by agents that no longer run). Workers' records stay: they are the
//! same hosts, and reconnect.
//!
//! Before any of that, the data is matched against the key material the
//! restore was given: a CA or an encryption key of another cluster would
//! make a first master that no worker trusts and whose Secrets no one can
//! read.

use std::collections::BTreeSet;

use etcd_client::{Client, GetOptions};

use super::registry::{self, NodeRecord};
use super::settings::{self, Settings, SettingsError};
use super::Role;
use crate::etcd::EtcdError;

/// Where the controller manager publishes the cluster CA for every pod to
/// trust (kube-root-ca.crt), as the API server stores it.
const ROOT_CA_CONFIGMAP: &str = "/registry/configmaps/kube-system/kube-root-ca.crt";
const SECRETS_PREFIX: &str = "/registry/secrets/";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("the snapshot holds no hakube cluster-wide settings: it is not a snapshot of a hakube cluster")]
    NotHakube,
    #[error("the key material does not belong to the snapshot's cluster: {0}")]
    Mismatch(String),
}

fn call(endpoint: &str, e: etcd_client::Error) -> EtcdError {
    EtcdError::Call { endpoint: endpoint.into(), message: e.to_string() }
}

/// The snapshot's cluster, after the tidy.
#[derive(Debug, Clone)]
pub struct Restored {
    pub settings: Settings,
    /// The snapshot's masters, whose records are gone: each joins again.
    pub lost_masters: Vec<NodeRecord>,
    /// The snapshot's workers, kept.
    pub workers: Vec<NodeRecord>,
}

/// The keys a restore deletes (pure): every master's record (this host
/// registers anew, as a first master does), this host's tombstone, the
/// purge's current step and view, the election key, the membership lock.
pub fn stale_keys(records: &[NodeRecord], this: &str) -> Vec<String> {
    let mut keys: Vec<String> =
        records.iter().filter(|r| r.role == Role::Master).map(|r| registry::key(&r.name)).collect();
    keys.push(format!("{}{this}", super::purge::TOMBSTONE_PREFIX));
    keys.extend(
        [
            super::purge::CURRENT,
            super::purge::VIEW,
            super::election::LEADER_KEY,
            crate::etcd::membership::MEMBERSHIP_LOCK,
        ]
        .map(str::to_owned),
    );
    keys
}

/// Reads the settings and the registry, and deletes [`stale_keys`].
pub async fn tidy(client: &mut Client, endpoint: &str, this: &str) -> Result<Restored, RestoreError> {
    let settings = settings::read(client, endpoint).await?.ok_or(RestoreError::NotHakube)?;
    let records = registry::list(client, endpoint).await?;
    for key in stale_keys(&records, this) {
        client.delete(key, None).await.map_err(|e| call(endpoint, e))?;
    }
    let (lost_masters, workers) = records.into_iter().partition(|r| r.role == Role::Master);
    Ok(Restored { settings, lost_masters, workers })
}

/// `secretbox:key1` from a Secret as the API server stores it encrypted
/// (`k8s:enc:secretbox:v1:key1:…`); None for one stored in plaintext.
pub fn encryption_key_of(value: &[u8]) -> Option<(String, String)> {
    let rest = value.strip_prefix(b"k8s:enc:")?;
    let mut parts = rest.splitn(4, |b| *b == b':');
    let provider = String::from_utf8_lossy(parts.next()?).into_owned();
    let _version = parts.next()?;
    let key = String::from_utf8_lossy(parts.next()?).into_owned();
    parts.next()?;
    Some((provider, key))
}

/// Whether the stored kube-root-ca.crt ConfigMap carries `ca_pem`.
pub fn publishes_ca(configmap: &[u8], ca_pem: &[u8]) -> bool {
    let pem = ca_pem.trim_ascii();
    !pem.is_empty() && configmap.windows(pem.len()).any(|w| w == pem)
}

/// Matches the snapshot's data against the key material: the CA the
/// controller manager published (when the snapshot has Kubernetes in it),
/// and the key of every encrypted Secret.
pub async fn check_material(
    client: &mut Client,
    endpoint: &str,
    ca_pem: &[u8],
    key_names: &[String],
) -> Result<(), RestoreError> {
    let resp = client.get(ROOT_CA_CONFIGMAP, None).await.map_err(|e| call(endpoint, e))?;
    if let Some(kv) = resp.kvs().first() {
        if !publishes_ca(kv.value(), ca_pem) {
            return Err(RestoreError::Mismatch(
                "its ca.crt is not the CA of the snapshot's cluster (the one in ConfigMap kube-system/kube-root-ca.crt)"
                    .into(),
            ));
        }
    }
    let resp =
        client.get(SECRETS_PREFIX, Some(GetOptions::new().with_prefix())).await.map_err(|e| call(endpoint, e))?;
    let used: BTreeSet<(String, String)> = resp.kvs().iter().filter_map(|kv| encryption_key_of(kv.value())).collect();
    let missing: Vec<String> = used
        .iter()
        .filter(|(provider, key)| provider != "secretbox" || !key_names.contains(key))
        .map(|(provider, key)| format!("{provider} key {key}"))
        .collect();
    if !missing.is_empty() {
        return Err(RestoreError::Mismatch(format!(
            "the snapshot's Secrets are encrypted with {}, which its encryption-config.yaml does not hold \
             (it holds secretbox {})",
            missing.join(", "),
            key_names.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, role: Role) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            role,
            address: "10.0.0.1".parse().unwrap(),
            joined_at: 0,
            heartbeat_at: 0,
            settings_revision: 0,
            clock_offset_ms: None,
            versions: Default::default(),
            hakube: None,
            balancer: None,
            healthy: None,
        }
    }

    #[test]
    fn every_masters_record_goes_and_the_workers_stay() {
        let records = [record("m1", Role::Master), record("m2", Role::Master), record("w1", Role::Worker)];
        let keys = stale_keys(&records, "m9");
        for k in ["/hakube/nodes/m1", "/hakube/nodes/m2", "/hakube/tombstones/m9", "/hakube/leader"] {
            assert!(keys.contains(&k.to_owned()), "{k}: {keys:?}");
        }
        for k in ["/hakube/purge/current", "/hakube/purge/view", "/hakube/locks/etcd-membership"] {
            assert!(keys.contains(&k.to_owned()), "{k}: {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.contains("w1")), "{keys:?}");
        assert!(!keys.iter().any(|k| k.starts_with("/hakube/purge/history")), "the history is the cluster's");
    }

    #[test]
    fn a_secrets_key_is_read_from_its_envelope() {
        let v = b"k8s:enc:secretbox:v1:key1:\x00\x01binary";
        assert_eq!(encryption_key_of(v), Some(("secretbox".into(), "key1".into())));
        assert_eq!(encryption_key_of(b"k8s\x00\x0a\x0cplain protobuf"), None);
        assert_eq!(encryption_key_of(b"k8s:enc:aesgcm:v1"), None, "cut short");
    }

    #[test]
    fn the_ca_is_found_in_the_configmap_whatever_its_trailing_space() {
        let ca = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let stored = b"k8s\x00\x0a\x0fca.crt\x12-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\x1a";
        assert!(publishes_ca(stored, ca));
        assert!(!publishes_ca(stored, b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----"));
        assert!(!publishes_ca(stored, b"  \n"), "an empty file matches nothing");
    }
}
