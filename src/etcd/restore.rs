//! The etcd half of a restore: etcd's own `etcdutl snapshot restore` makes
//! a data directory of one new member from a snapshot, and a scratch member
//! started on it, on loopback with plain HTTP and nothing else listening,
//! lets the restore read and tidy the records before the real member (with
//! its TLS, on its advertised address) serves anyone.
//!
//! The revision is bumped by a billion and marked compacted, as Kubernetes
//! asks of a restore: every watcher that survived (the workers' kubelets,
//! whose API servers never went away for them) holds a resourceVersion from
//! before the snapshot, newer than anything the snapshot has; a bumped,
//! compacted store tells each one to list again instead of waiting on
//! revisions that would come back with other contents.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::Client;

use super::EtcdError;

/// What `--bump-revision` adds: more writes than any cluster makes between
/// two snapshots (the figure Kubernetes' documentation uses).
pub const BUMP_REVISION: u64 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{what} failed ({status}): {tail}")]
    Tool { what: String, status: String, tail: String },
    #[error("cannot run {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the restored member did not answer within {}s: {last}; its log: {log}", limit.as_secs())]
    NoAnswer { limit: Duration, last: String, log: String },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// The last lines of a log, for an error.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `etcdutl snapshot restore` of `snapshot` into `data_dir` (which must not
/// exist): one member named `name` at `peer_url`, the revision bumped and
/// compacted. etcdutl checks the snapshot's own trailing SHA-256.
pub fn restore_data(
    etcdutl: &Path,
    snapshot: &Path,
    data_dir: &Path,
    name: &str,
    peer_url: &str,
    token: &str,
) -> Result<(), RestoreError> {
    let cluster = format!("{name}={peer_url}");
    let out = Command::new(etcdutl)
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--name", name, "--initial-cluster", &cluster, "--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster-token", token, "--mark-compacted"])
        .arg(format!("--bump-revision={BUMP_REVISION}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RestoreError::Spawn { binary: etcdutl.to_owned(), source })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        return Err(RestoreError::Tool {
            what: format!("etcdutl snapshot restore {}", snapshot.display()),
            status: out.status.to_string(),
            tail: tail(&text, 5),
        });
    }
    Ok(())
}

/// A member started on a restored data directory, reachable only from this
/// host's loopback, over plain HTTP: no peer or client reaches it, and it
/// is stopped (killed and waited for) when dropped.
pub struct Scratch {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
}

fn free_port() -> Result<u16, RestoreError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|source| RestoreError::Io { path: PathBuf::from("127.0.0.1:0"), source })?;
    let port = l.local_addr().map_err(|source| RestoreError::Io { path: PathBuf::from("127.0.0.1:0"), source })?.port();
    Ok(port)
}

impl Scratch {
    /// Starts `etcd` on `data_dir` as `name`, its log in `log`.
    pub fn start(etcd: &Path, data_dir: &Path, name: &str, log: &Path) -> Result<Scratch, RestoreError> {
        let (client, peer) = (free_port()?, free_port()?);
        let endpoint = format!("http://127.0.0.1:{client}");
        let file = std::fs::File::create(log).map_err(|source| RestoreError::Io { path: log.to_owned(), source })?;
        let err = file.try_clone().map_err(|source| RestoreError::Io { path: log.to_owned(), source })?;
        let child = Command::new(etcd)
            .args(["--name", name])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|source| RestoreError::Spawn { binary: etcd.to_owned(), source })?;
        Ok(Scratch { child, endpoint, log: log.to_owned() })
    }

    /// A client, once the member answers a linearizable read.
    pub async fn client(&mut self, limit: Duration) -> Result<Client, RestoreError> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        let (endpoint, log) = (self.endpoint.as_str(), self.log.as_path());
        let child = std::cell::RefCell::new(&mut self.child);
        let attempt = || {
            let opts = opts.clone();
            let child = &child;
            async move {
                let exited = child.borrow_mut().try_wait();
                if let Ok(Some(status)) = exited {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    return Err(crate::retry::Failure::Final(format!("etcd exited ({status}): {}", tail(&text, 5))));
                }
                let again = |e: String| crate::retry::Failure::Again(e);
                let mut c = Client::connect([endpoint], Some(opts)).await.map_err(|e| again(e.to_string()))?;
                super::check_health(&mut c, endpoint).await.map_err(|e| again(e.to_string()))?;
                Ok(c)
            }
        };
        crate::retry::Retry::within(limit, Duration::from_millis(200)).run(attempt).await.map_err(|last| {
            RestoreError::NoAnswer { limit, last, log: tail(&std::fs::read_to_string(log).unwrap_or_default(), 5) }
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
