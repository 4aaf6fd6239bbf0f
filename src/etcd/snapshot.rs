//! etcd snapshots: every master takes one of its own member on the
//! cluster's schedule (`etcdSnapshotInterval`, kept:
//! `etcdSnapshotRetention`), and `hakube etcd snapshot save|list|verify`
//! by hand.
//!
//! Every master snapshots its own member, as k3s servers do, rather than
//! the leader taking one and copying it: all members hold the same data,
//! so each master ends up with a backup of the cluster without a large file
//! crossing the network or the schedule waiting on an elected leader. A
//! snapshot that lives only on the master that dies is no backup; three
//! masters keep three copies.
//!
//! A snapshot is two files in [`Paths::snapshot_dir`]: the database as
//! etcd's Snapshot call streams it (which `etcdutl snapshot restore` reads
//! as it is; etcd ends it with the SHA-256 of the rest), and a record
//! beside it (`<file>.json`) with its size, its SHA-256, etcd's revision
//! and who took it when. The database is written under a temporary name,
//! synced and renamed, and only then is the record written: a database
//! without a record is unfinished or not hakube's, and is never trusted.
//! Both are readable by root only (the database holds every Secret).

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Credentials, EtcdError, CLIENT_CERT};
use crate::config::{ClusterConfig, SnapshotInterval};
use crate::host::fs::FsError;
use crate::host::paths::Paths;

/// A database file's extension; its record adds [`RECORD_EXT`].
pub const DB_EXT: &str = ".db";
pub const RECORD_EXT: &str = ".json";
/// etcd ends a snapshot with the SHA-256 of everything before it.
const TRAILER: usize = 32;
/// The longest etcd may go without sending a chunk before the save gives up.
const STALL: Duration = Duration::from_secs(60);
/// A failed scheduled snapshot is tried again this soon.
const RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("etcd at {endpoint} sent nothing for {}s while streaming the snapshot: try again, and check the member's health with `hakube status`", STALL.as_secs())]
    Stalled { endpoint: String },
    #[error("{file} is not a usable snapshot: {reason}")]
    Bad { file: PathBuf, reason: String },
    #[error("{file} already exists: a snapshot was taken this same second; try again")]
    Exists { file: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_owned(), source }
}

/// Why a snapshot was taken: scheduled ones are pruned to the retention,
/// manual ones are the operator's to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Scheduled,
    Manual,
}

/// What hakube records beside each database file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// The database file's name (in the same directory).
    pub file: String,
    pub size: u64,
    /// SHA-256 of the whole database file, hex.
    pub sha256: String,
    /// etcd's revision when the snapshot started: every change up to it is in.
    pub revision: i64,
    pub etcd_version: String,
    pub cluster: String,
    pub node: String,
    pub kind: Kind,
    /// Unix seconds, and the same in RFC 3339 for people.
    pub taken_at: u64,
    pub taken_at_text: String,
    /// `sha256:<hex>` of the cluster CA's public key, as join scripts pin
    /// it: a restore matches the key material it is given against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_hash: Option<String>,
}

/// One database file found in the directory, with its record when it has
/// a readable one, and what is wrong with it at a glance (a full check of
/// its contents is [`verify`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub path: PathBuf,
    pub record: Option<Record>,
    pub problem: Option<String>,
}

/// `etcd-m1-20261204T171500Z.db`, `…-manual.db` for one taken by hand.
pub fn file_name(node: &str, at: u64, kind: Kind) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(at as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let suffix = if kind == Kind::Manual { "-manual" } else { "" };
    format!("etcd-{node}-{stamp}{suffix}{DB_EXT}")
}

fn record_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(RECORD_EXT);
    PathBuf::from(s)
}

/// SHA-256 of a whole snapshot, and whether it ends with etcd's own
/// SHA-256 of the rest: both in one pass over a stream of chunks.
struct Digests {
    whole: ring::digest::Context,
    body: ring::digest::Context,
    /// The last [`TRAILER`] bytes seen, not yet in `body`.
    tail: Vec<u8>,
    size: u64,
}

impl Digests {
    fn new() -> Self {
        let ctx = || ring::digest::Context::new(&ring::digest::SHA256);
        Digests { whole: ctx(), body: ctx(), tail: Vec::with_capacity(TRAILER), size: 0 }
    }

    fn update(&mut self, chunk: &[u8]) {
        self.whole.update(chunk);
        self.size += chunk.len() as u64;
        // Everything but the last TRAILER bytes seen goes to `body`: first
        // what was held back, then the chunk's head.
        let cut = (self.tail.len() + chunk.len()).saturating_sub(TRAILER);
        let from_tail = cut.min(self.tail.len());
        self.body.update(&self.tail[..from_tail]);
        self.body.update(&chunk[..cut - from_tail]);
        self.tail.drain(..from_tail);
        self.tail.extend_from_slice(&chunk[cut - from_tail..]);
    }

    /// (SHA-256 of the whole, hex; whether etcd's trailer matches the body).
    fn finish(self) -> (String, bool) {
        let whole = hex(self.whole.finish().as_ref());
        let trailer_ok = self.tail.len() == TRAILER && self.body.finish().as_ref() == self.tail.as_slice();
        (whole, trailer_ok)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Takes a snapshot of this master's etcd member into `dir`: the database
/// file and its record, or nothing (a partial file is removed).
pub async fn save(
    paths: &Paths,
    cfg: &ClusterConfig,
    dir: &Path,
    kind: Kind,
    now: u64,
) -> Result<(PathBuf, Record), SnapshotError> {
    crate::host::fs::create_dir_all(dir, 0o700)?;
    let name = file_name(cfg.node.name.as_str(), now, kind);
    let path = dir.join(&name);
    if path.exists() {
        return Err(SnapshotError::Exists { file: path });
    }
    let partial = dir.join(format!(".{name}.partial"));
    let result = stream_to(paths, cfg, &partial).await;
    let (digest_hex, size, revision, version) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &path).map_err(io(&path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    let record = Record {
        file: name,
        size,
        sha256: digest_hex,
        revision,
        etcd_version: version,
        cluster: cfg.cluster.name.clone(),
        node: cfg.node.name.as_str().to_owned(),
        kind,
        taken_at: now,
        taken_at_text: crate::host::clock::rfc3339(now),
        ca_hash: std::fs::read(paths.pki("ca.crt")).ok().and_then(|pem| crate::pki::ca_hash(&pem).ok()),
    };
    let json = serde_json::to_vec_pretty(&record).expect("a record serializes");
    crate::host::fs::write_atomic(&record_path(&path), &json, 0o600)?;
    Ok((path, record))
}

/// Streams the member's snapshot into `partial`, synced: (SHA-256 hex,
/// size, revision, etcd version).
async fn stream_to(
    paths: &Paths,
    cfg: &ClusterConfig,
    partial: &Path,
) -> Result<(String, u64, i64, String), SnapshotError> {
    let endpoint = cfg.etcd_client_url();
    let creds = Credentials::load(paths, CLIENT_CERT)?;
    let call = |e: etcd_client::Error| EtcdError::Call { endpoint: endpoint.clone(), message: e.to_string() };
    // No request timeout: a large database streams for as long as it takes;
    // a stall is caught per chunk instead.
    let mut client =
        super::connect_with(std::slice::from_ref(&endpoint), &creds, Duration::from_secs(10), None).await?;
    let status = tokio::time::timeout(Duration::from_secs(10), client.status())
        .await
        .map_err(|_| SnapshotError::Stalled { endpoint: endpoint.clone() })?
        .map_err(call)?;
    let version = status.version().to_owned();
    let mut revision = status.header().map(|h| h.revision()).unwrap_or_default();
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(partial).map_err(io(partial))?;
    let mut stream = client.snapshot().await.map_err(call)?;
    let mut digests = Digests::new();
    loop {
        let msg = tokio::time::timeout(STALL, stream.message())
            .await
            .map_err(|_| SnapshotError::Stalled { endpoint: endpoint.clone() })?
            .map_err(call)?;
        let Some(msg) = msg else { break };
        if let Some(h) = msg.header() {
            // The revision of the backend the snapshot was cut from, when
            // etcd says (newer than the status read above).
            revision = revision.max(h.revision());
        }
        file.write_all(msg.blob()).map_err(io(partial))?;
        digests.update(msg.blob());
    }
    file.sync_all().map_err(io(partial))?;
    let size = digests.size;
    let (whole, trailer_ok) = digests.finish();
    if !trailer_ok {
        return Err(SnapshotError::Bad {
            file: partial.to_owned(),
            reason: format!("etcd's stream ended without a matching SHA-256 after {size} bytes (cut short?)"),
        });
    }
    Ok((whole, size, revision, version))
}

/// Every snapshot in `dir`, oldest first (a missing directory: none).
pub fn list(dir: &Path) -> Result<Vec<Listed>, SnapshotError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::Io { path: dir.to_owned(), source: e }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name.starts_with('.') || !name.ends_with(DB_EXT) {
            continue;
        }
        let (record, problem) = match read_record(&path) {
            Ok(r) => {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or_default();
                let problem = (size != r.size).then(|| format!("{size} bytes where its record says {}", r.size));
                (Some(r), problem)
            }
            Err(reason) => (None, Some(reason)),
        };
        out.push(Listed { path, record, problem });
    }
    out.sort_by(|a, b| {
        let at = |l: &Listed| l.record.as_ref().map(|r| r.taken_at).unwrap_or_default();
        at(a).cmp(&at(b)).then_with(|| a.path.cmp(&b.path))
    });
    Ok(out)
}

fn read_record(db: &Path) -> Result<Record, String> {
    let path = record_path(db);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no record ({} is missing): unfinished, or not taken by hakube", path.display()))
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let r: Record = serde_json::from_slice(&bytes).map_err(|e| format!("{} is unreadable: {e}", path.display()))?;
    if Some(r.file.as_str()) != db.file_name().and_then(|n| n.to_str()) {
        return Err(format!("{} is the record of {}, not of this file", path.display(), r.file));
    }
    Ok(r)
}

/// Reads a snapshot through and checks it against its record and against
/// etcd's own trailing SHA-256: its record when it is whole.
pub fn verify(db: &Path) -> Result<Record, SnapshotError> {
    let bad = |reason: String| SnapshotError::Bad { file: db.to_owned(), reason };
    let mut file = std::fs::File::open(db).map_err(io(db))?;
    let record = read_record(db).map_err(bad)?;
    let mut digests = Digests::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io(db))?;
        if n == 0 {
            break;
        }
        digests.update(&buf[..n]);
    }
    let size = digests.size;
    let (whole, trailer_ok) = digests.finish();
    if size != record.size {
        return Err(bad(format!("{size} bytes where its record says {}: cut short or appended to", record.size)));
    }
    if whole != record.sha256 {
        return Err(bad(format!(
            "its SHA-256 is {whole} where its record says {}: the file was changed or damaged",
            record.sha256
        )));
    }
    if !trailer_ok {
        return Err(bad("it does not end with etcd's SHA-256 of its contents: not an etcd snapshot".into()));
    }
    Ok(record)
}

/// Which snapshots to delete to keep the newest `keep` scheduled ones
/// (manual ones, and files hakube cannot account for, are left alone).
pub fn prune_plan(listed: &[Listed], keep: u32) -> Vec<PathBuf> {
    let mut scheduled: Vec<&Listed> =
        listed.iter().filter(|l| l.record.as_ref().is_some_and(|r| r.kind == Kind::Scheduled)).collect();
    scheduled.sort_by_key(|l| std::cmp::Reverse(l.record.as_ref().map(|r| r.taken_at)));
    scheduled.into_iter().skip(keep as usize).map(|l| l.path.clone()).collect()
}

/// Deletes a snapshot: its database, then its record.
pub fn remove(db: &Path) -> Result<(), SnapshotError> {
    for p in [db.to_owned(), record_path(db)] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(SnapshotError::Io { path: p, source: e }),
            _ => {}
        }
    }
    Ok(())
}

/// When the next scheduled snapshot is due: snapshots fall on multiples of
/// the interval since the Unix epoch (every 12 h: 00:00 and 12:00 UTC), so
/// the masters take theirs together and a restart neither skips nor
/// repeats one. A master that missed its slot (it was down) takes one at
/// once; one that never took one (just installed or joined, its member
/// perhaps still a learner) waits for the next slot. Unix seconds.
pub fn next_due(now: u64, interval: Duration, last_scheduled: Option<u64>) -> u64 {
    let iv = interval.as_secs().max(1);
    match last_scheduled {
        Some(last) if last / iv < now / iv => now,
        _ => (now / iv + 1) * iv,
    }
}

/// A master's scheduled snapshots, until `stop` changes.
pub async fn run(paths: Paths, cfg: ClusterConfig, mut stop: tokio::sync::watch::Receiver<bool>) {
    let SnapshotInterval::Every(interval) = cfg.cluster.etcd_snapshot_interval else {
        return;
    };
    let dir = paths.snapshot_dir();
    // What a save cut off by a crash left behind.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".partial")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let keep = cfg.cluster.etcd_snapshot_retention.get();
    let node = cfg.node.name.as_str().to_owned();
    // A slot reached and not yet snapshotted: tried again until it is.
    let mut owed = false;
    loop {
        if !owed {
            let now = crate::host::clock::now_secs();
            let last = list(&dir)
                .unwrap_or_default()
                .iter()
                .filter_map(|l| l.record.as_ref())
                .filter(|r| r.kind == Kind::Scheduled && r.node == node)
                .map(|r| r.taken_at)
                .max();
            let due = next_due(now, interval, last);
            if due > now {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(due - now)) => {}
                    _ = stop.changed() => return,
                }
            }
            owed = true;
        }
        let started = std::time::Instant::now();
        match save(&paths, &cfg, &dir, Kind::Scheduled, crate::host::clock::now_secs()).await {
            Ok((path, r)) => {
                owed = false;
                info!(
                    file = %path.display(),
                    bytes = r.size,
                    revision = r.revision,
                    ms = started.elapsed().as_millis() as u64,
                    "etcd snapshot taken"
                );
                for old in prune_plan(&list(&dir).unwrap_or_default(), keep) {
                    match remove(&old) {
                        Ok(()) => info!(file = %old.display(), "old etcd snapshot removed"),
                        Err(e) => warn!(error = %e, "cannot remove an old etcd snapshot"),
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "scheduled etcd snapshot failed: trying again in a minute");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY.min(interval)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(data: &[u8], chunk: usize) -> (String, bool, u64) {
        let mut d = Digests::new();
        for c in data.chunks(chunk.max(1)) {
            d.update(c);
        }
        let size = d.size;
        let (h, ok) = d.finish();
        (h, ok, size)
    }

    fn snapshot_like(body: &[u8]) -> Vec<u8> {
        let mut v = body.to_vec();
        v.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
        v
    }

    #[test]
    fn the_digests_agree_whatever_the_chunking() {
        let body: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let snap = snapshot_like(&body);
        let whole = hex(ring::digest::digest(&ring::digest::SHA256, &snap).as_ref());
        for chunk in [1, 5, 31, 32, 33, 64, 1000, 4999, 10_000] {
            assert_eq!(digest(&snap, chunk), (whole.clone(), true, snap.len() as u64), "chunks of {chunk}");
        }
        // One flipped byte anywhere breaks etcd's trailer.
        for at in [0, 2500, body.len() - 1, snap.len() - 1] {
            let mut bad = snap.clone();
            bad[at] ^= 1;
            assert!(!digest(&bad, 100).1, "flip at {at}");
        }
        // Too short to hold a trailer, or empty.
        assert!(!digest(&snap[..20], 7).1);
        assert!(!digest(&[], 7).1);
    }

    #[test]
    fn names_sort_by_time_and_say_who_and_why() {
        assert_eq!(file_name("m1", 1_796_396_100, Kind::Scheduled), "etcd-m1-20261204T145500Z.db");
        assert_eq!(file_name("m-2", 0, Kind::Manual), "etcd-m-2-19700101T000000Z-manual.db");
    }

    #[test]
    fn slots_are_multiples_of_the_interval_and_a_missed_one_is_taken_at_once() {
        let h12 = Duration::from_secs(12 * 3600);
        let day = 20_000 * 86_400;
        // Never taken: the next slot.
        assert_eq!(next_due(day + 100, h12, None), day + 12 * 3600);
        assert_eq!(next_due(day, h12, None), day + 12 * 3600);
        // Taken in this slot: the next slot's start.
        assert_eq!(next_due(day + 100, h12, Some(day + 5)), day + 12 * 3600);
        assert_eq!(next_due(day + 12 * 3600 - 1, h12, Some(day)), day + 12 * 3600);
        // The slot turned: due now.
        assert_eq!(next_due(day + 12 * 3600, h12, Some(day + 5)), day + 12 * 3600);
        // Down for days: one at once, not one per missed slot.
        assert_eq!(next_due(day + 5 * 86_400 + 7, h12, Some(day)), day + 5 * 86_400 + 7);
        // A clock that went back keeps the next slot after the last one.
        assert_eq!(next_due(day + 10, h12, Some(day + 12 * 3600 + 3)), day + 12 * 3600);
    }

    fn listed(name: &str, at: u64, kind: Kind) -> Listed {
        Listed {
            path: PathBuf::from(name),
            record: Some(Record {
                file: name.into(),
                size: 1,
                sha256: String::new(),
                revision: 1,
                etcd_version: "3.6.0".into(),
                cluster: "hakube".into(),
                node: "m1".into(),
                kind,
                taken_at: at,
                taken_at_text: String::new(),
                ca_hash: None,
            }),
            problem: None,
        }
    }

    #[test]
    fn pruning_keeps_the_newest_scheduled_and_every_manual_one() {
        let all = vec![
            listed("a", 10, Kind::Scheduled),
            listed("m", 15, Kind::Manual),
            listed("b", 20, Kind::Scheduled),
            listed("c", 30, Kind::Scheduled),
            Listed { path: PathBuf::from("stray"), record: None, problem: Some("no record".into()) },
            listed("d", 40, Kind::Scheduled),
        ];
        assert_eq!(prune_plan(&all, 2), vec![PathBuf::from("b"), PathBuf::from("a")]);
        assert_eq!(prune_plan(&all, 4), Vec::<PathBuf>::new());
        assert_eq!(prune_plan(&all, 1).len(), 3);
    }

    #[test]
    fn verify_names_what_is_wrong_with_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let snap = snapshot_like(b"some database pages");
        let db = dir.path().join("etcd-m1-20261204T145500Z.db");
        std::fs::write(&db, &snap).unwrap();
        // No file, then no record: each named.
        let e = verify(&dir.path().join("gone.db")).unwrap_err().to_string();
        assert!(e.contains("gone.db") && e.contains("No such file"), "{e}");
        let e = verify(&db).unwrap_err().to_string();
        assert!(e.contains("no record"), "{e}");
        let mut r = listed("etcd-m1-20261204T145500Z.db", 1, Kind::Manual).record.unwrap();
        r.size = snap.len() as u64;
        r.sha256 = hex(ring::digest::digest(&ring::digest::SHA256, &snap).as_ref());
        std::fs::write(record_path(&db), serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(verify(&db).unwrap(), r);
        assert_eq!(list(dir.path()).unwrap()[0].problem, None);
        // A flipped byte.
        let mut bad = snap.clone();
        bad[3] ^= 0x10;
        std::fs::write(&db, &bad).unwrap();
        let e = verify(&db).unwrap_err().to_string();
        assert!(e.contains("SHA-256") && e.contains("changed or damaged"), "{e}");
        // Cut short: the listing already sees it.
        std::fs::write(&db, &snap[..10]).unwrap();
        assert!(verify(&db).unwrap_err().to_string().contains("cut short"));
        assert!(list(dir.path()).unwrap()[0].problem.as_deref().unwrap().contains("bytes where its record says"));
        // Another file's record.
        std::fs::write(&db, &snap).unwrap();
        r.file = "other.db".into();
        std::fs::write(record_path(&db), serde_json::to_vec(&r).unwrap()).unwrap();
        assert!(verify(&db).unwrap_err().to_string().contains("not of this file"));
        // Removal takes both files.
        remove(&db).unwrap();
        assert!(list(dir.path()).unwrap().is_empty());
        assert!(!record_path(&db).exists());
    }
}
