//! A node's own part in an upgrade ([`crate::cluster::upgrade`]): as soon
//! as one is recorded, fetch its bundle from a master (node-authenticated,
//! checked member by member as it unpacks) so that the move itself costs
//! only restarts; when the elected agent has told this node to move, run
//! its control plane (a master) or everything (its kubelet and kube-proxy
//! too) from the new bundle, by rewriting `node.controlPlaneBundle` or
//! `node.bundle` in this host's `cluster.yaml` and reloading. What is
//! written there stays: an agent that restarts mid-way runs what it ran.
//! Last, once all it runs is healthy on the new bundle, the agent hands
//! over to the bundle's hakube when that is another build
//! ([`super::handover`]); an agent that restarts before it did, does it
//! then.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::cluster::upgrade::record::Upgrade;
use crate::cluster::upgrade::Build;
use crate::config::{ClusterConfig, HostPort, NodeSpec};
use crate::host::paths::Paths;
use crate::https::{self, Limits, Request};

/// This node's settings for `up`, with its bundle unpacked in `dir`: its
/// control plane on `dir` once told (a master), everything once told
/// that. None when nothing is to change.
pub fn wanted(node: &NodeSpec, up: &Upgrade, dir: &Path) -> Option<NodeSpec> {
    let (control_plane, all) = up.told(node.name.as_str());
    let mut next = node.clone();
    let master = node.components.iter().any(|c| c.is_control_plane());
    if all {
        next.bundle = Some(dir.to_owned());
    } else if control_plane && master {
        next.control_plane_bundle = Some(dir.to_owned());
    }
    if next.bundle.as_deref() == Some(dir) {
        next.control_plane_bundle = None;
    }
    (next != *node).then_some(next)
}

/// The hakube binary in `dir` (an unpacked bundle) when an agent running
/// `running` moves to it: the build the upgrade names, which the bundle
/// carries, and another than `running`, not older (pure but for reading
/// the bundle's manifest).
pub fn successor(dir: &Path, running: &Build, target: &Build) -> Option<PathBuf> {
    let m = crate::bundle::Manifest::of_dir(dir)?;
    let carried = Build { version: m.hakube_version.clone(), sha256: m.sha256_of("hakube")?.to_owned() };
    (carried == *target && running.moves_to(target)).then(|| dir.join("hakube"))
}

/// What a round asks of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// Converge on this config (its bundles moved) and reload.
    Config(Box<ClusterConfig>),
    /// Hand the agent over to this hakube binary.
    Agent(PathBuf),
}

/// Follows the upgrade record across the rounds of [`super::converge`]:
/// the fetch of the bundle runs on its own task, so the round (and a
/// worker's heartbeat) goes on meanwhile.
#[derive(Default)]
pub struct Follower {
    fetch: Option<(String, tokio::task::JoinHandle<Result<PathBuf, String>>)>,
    /// When a failed fetch may be tried again.
    retry_at: Option<tokio::time::Instant>,
    /// The node's settings it last moved to: until the reload that
    /// follows restarts this task, the round does not move it again.
    moved: Option<NodeSpec>,
    /// The hakube it asked the agent to hand over to (once per agent: a
    /// hand-over that did not happen is in the agent's log).
    handed: Option<PathBuf>,
}

/// What a fetch needs of the node's identity: its TLS client config and
/// the masters to ask, in turn.
pub struct Source {
    pub tls: Arc<rustls::ClientConfig>,
    pub masters: Vec<HostPort>,
}

const RETRY: Duration = Duration::from_secs(10);

impl Follower {
    /// One round: the move to make now (the bundle is here), if any;
    /// `healthy` is whether all the node runs is. Starts the fetch when
    /// the bundle is missing.
    pub fn round(
        &mut self,
        paths: &Paths,
        cfg: &ClusterConfig,
        up: Option<&Upgrade>,
        healthy: bool,
        source: impl FnOnce() -> Result<Source, String>,
    ) -> Option<Move> {
        let up = up?;
        let dir = paths.bundles_dir().join(&up.bundle);
        if dir.join(crate::bundle::MANIFEST).is_file() {
            let Some(node) = wanted(&cfg.node, up, &dir) else {
                // Moved: the agent itself last, on a healthy node.
                let moved = up.told(cfg.node.name.as_str()).1 && cfg.node.bundle.as_deref() == Some(&*dir);
                let (Some(running), Some(target)) = (crate::cluster::upgrade::running(), up.hakube.as_ref()) else {
                    return None;
                };
                // Pure checks first: the manifest is read only when a move is due.
                if !(moved && healthy && running.moves_to(target)) {
                    return None;
                }
                let next = successor(&dir, running, target)?;
                if self.handed.as_ref() == Some(&next) {
                    return None;
                }
                self.handed = Some(next.clone());
                info!(hakube = %target.short(), "upgrade: this node's agent moves to the bundle's hakube");
                return Some(Move::Agent(next));
            };
            if self.moved.as_ref() == Some(&node) {
                return None;
            }
            self.moved = Some(node.clone());
            info!(bundle = %up.bundle, version = %up.version, "upgrade: this node moves to the new bundle");
            let mut next = cfg.clone();
            next.node = node;
            return Some(Move::Config(Box::new(next)));
        }
        // Fetched already (a finished task) or still fetching.
        if let Some((id, task)) = &mut self.fetch {
            if *id == up.bundle && !task.is_finished() {
                return None;
            }
            if task.is_finished() {
                self.fetch = None;
                self.retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
        let told = up.told(cfg.node.name.as_str());
        if !up.running() && !told.0 && !told.1 {
            return None;
        }
        if self.retry_at.is_some_and(|t| tokio::time::Instant::now() < t) {
            return None;
        }
        let source = match source() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "upgrade: cannot fetch the bundle");
                return None;
            }
        };
        let key = cfg.node.bundle_key.clone();
        let (p, id) = (paths.clone(), up.bundle.clone());
        info!(bundle = %id, version = %up.version, "upgrade: fetching the new bundle from a master");
        let task = tokio::task::spawn_local(async move {
            let r = fetch(&p, &id, &source, key.as_deref()).await;
            match &r {
                Ok(dir) => info!(bundle = %dir.display(), "upgrade: the new bundle is here"),
                Err(e) => warn!(error = %e, "upgrade: the new bundle could not be fetched; trying again soon"),
            }
            r
        });
        self.fetch = Some((up.bundle.clone(), task));
        None
    }
}

impl Follower {
    /// The move [`Follower::round`] asked for could not be made: the next
    /// round asks again.
    pub fn not_moved(&mut self) {
        self.moved = None;
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some((_, t)) = &self.fetch {
            t.abort();
        }
    }
}

/// The bundle `id` from the first master that has it, unpacked where
/// install would put it (under the root lock: never beside an install's
/// own unpacking).
pub async fn fetch(paths: &Paths, id: &str, source: &Source, key: Option<&Path>) -> Result<PathBuf, String> {
    let key = key.map(crate::bundle::PublicKey::load).transpose()?.map(Arc::new);
    let path = format!("/v1/node/bundle/{id}");
    let mut failures = vec![];
    for m in &source.masters {
        let limits = Limits { connect: Duration::from_secs(5), exchange: Duration::from_secs(30), max_body: 0 };
        let req = Request { method: "GET", path: &path, headers: &[], body: None };
        let resp = match https::stream(m, source.tls.clone(), req, limits).await {
            Ok(r) if r.status == 200 => r,
            Ok(r) => {
                use http_body_util::BodyExt as _;
                let body = r.body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                failures.push(format!("{m}: {} {}", r.status, String::from_utf8_lossy(&body).trim()));
                continue;
            }
            Err(e) => {
                failures.push(format!("{m}: {e}"));
                continue;
            }
        };
        match unpack_body(paths, PathBuf::from(format!("bundle {id} from {m}")), resp.body, key.clone()).await {
            Ok(dir) if dir.file_name().is_some_and(|n| n == id) => return Ok(dir),
            Ok(dir) => failures.push(format!("{m}: it sent another bundle ({})", dir.display())),
            Err(e) => failures.push(format!("{m}: {e}")),
        }
    }
    if failures.is_empty() {
        return Err("no other master known".into());
    }
    Err(failures.join("; "))
}

/// A response body unpacked on a blocking thread as it arrives.
async fn unpack_body(
    paths: &Paths,
    name: PathBuf,
    body: hyper::body::Incoming,
    key: Option<Arc<crate::bundle::PublicKey>>,
) -> Result<PathBuf, String> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let p = paths.clone();
    let unpacker = tokio::task::spawn_blocking(move || {
        let _lock = crate::host::lock::lock_root(p.root()).map_err(|e| e.to_string())?;
        let progress = crate::progress::Progress::new("upgrade");
        let reader = crate::agent::unpack::ChannelReader::new(rx);
        crate::agent::unpack::unpack_from(&p, &name, reader, key.as_deref(), &progress).map_err(|e| format!("{e:#}"))
    });
    let broke = super::unpack::pump(body, tx, super::unpack::STALL).await.err();
    let unpacked = unpacker.await.map_err(|e| e.to_string())?;
    match (unpacked, broke) {
        (Ok(dir), _) => Ok(dir),
        (Err(_), Some(e)) => Err(format!("the download broke off ({e})")),
        (Err(e), None) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Component;
    use crate::kube::version::KubeVersion;

    fn node(name: &str, master: bool) -> NodeSpec {
        let mut c = crate::config::tests::test_config("{}");
        c.node.name = name.parse().unwrap();
        if !master {
            c.node.components.retain(|c| !c.is_control_plane());
        }
        c.node.bundle = Some("/b/old".into());
        c.node
    }

    #[test]
    fn a_master_moves_its_control_plane_first_then_everything_and_a_worker_only_everything() {
        let dir = Path::new("/b/new");
        let mut up = Upgrade::new("new".into(), KubeVersion::new(1, 37, 2), "m1".into(), 0);
        let (m1, w1) = (node("m1", true), node("w1", false));
        assert_eq!(wanted(&m1, &up, dir), None, "not told yet");
        up.control_plane.push("m1".into());
        let m1 = wanted(&m1, &up, dir).expect("told: its control plane moves");
        assert_eq!((m1.bundle.as_deref(), m1.control_plane_bundle.as_deref()), (Some(Path::new("/b/old")), Some(dir)));
        assert_eq!(m1.bundle_for(Component::KubeApiserver), Some(dir));
        assert_eq!(m1.bundle_for(Component::Etcd), Some(dir));
        assert_eq!(m1.bundle_for(Component::Kubelet), Some(Path::new("/b/old")));
        assert_eq!(m1.bundle_for(Component::Containerd), Some(Path::new("/b/old")));
        assert_eq!(wanted(&m1, &up, dir), None, "moved already");
        up.nodes.extend(["m1".into(), "w1".into()]);
        let m1 = wanted(&m1, &up, dir).expect("told again: everything moves");
        assert_eq!((m1.bundle.as_deref(), m1.control_plane_bundle.as_deref()), (Some(dir), None));
        assert_eq!(wanted(&m1, &up, dir), None);
        let w1 = wanted(&w1, &up, dir).expect("a worker moves once told");
        assert_eq!((w1.bundle.as_deref(), w1.control_plane_bundle.as_deref()), (Some(dir), None));
    }

    #[test]
    fn the_agent_moves_to_the_bundles_hakube_only_when_the_upgrade_names_it_and_it_is_another_build() {
        use crate::bundle::{Kind, Manifest, Member, MANIFEST};
        let dir = tempfile::tempdir().unwrap();
        let manifest = |hakube: Option<&str>| Manifest {
            format: 1,
            hakube_version: "0.1.0".into(),
            kubernetes_version: "v1.37.2".into(),
            arch: "amd64".into(),
            members: hakube
                .map(|sha| Member {
                    name: "hakube".into(),
                    size: 1,
                    sha256: sha.into(),
                    kind: Kind::Binary,
                    mode: 0o755,
                })
                .into_iter()
                .collect(),
        };
        let write = |m: Manifest| std::fs::write(dir.path().join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        let b = |sha: &str| Build { version: "0.1.0".into(), sha256: sha.into() };
        write(manifest(Some("new")));
        assert_eq!(successor(dir.path(), &b("old"), &b("new")), Some(dir.path().join("hakube")));
        assert_eq!(successor(dir.path(), &b("new"), &b("new")), None, "it runs that build already");
        assert_eq!(successor(dir.path(), &b("old"), &b("other")), None, "not the build the upgrade names");
        let newer = Build { version: "0.2.0".into(), sha256: "mine".into() };
        assert_eq!(successor(dir.path(), &newer, &b("new")), None, "never an older hakube");
        write(manifest(None));
        assert_eq!(successor(dir.path(), &b("old"), &b("new")), None, "a bundle without hakube");
    }

    #[test]
    fn a_worker_named_among_the_control_planes_does_not_move_its_kubelet() {
        let mut up = Upgrade::new("new".into(), KubeVersion::new(1, 37, 2), "m1".into(), 0);
        up.control_plane.push("w1".into());
        assert_eq!(wanted(&node("w1", false), &up, Path::new("/b/new")), None);
    }
}
