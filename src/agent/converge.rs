//! The node's side of the cluster-wide settings: converge to the record
//! (a master reads it from etcd, a worker from the masters' node endpoint),
//! rewrite this host's files for it (certificates, kubeconfigs, the copy in
//! `cluster.yaml`) and reload; report the revision it runs. A worker also
//! heartbeats through the masters' node endpoint, with its own certificate,
//! trying the next master when one does not answer, and with how far its
//! clock is from the masters' (a master measures its own against another
//! master's once a minute and records it in the registry).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::sleep;
use tracing::{debug, info, warn};

use super::masters;
use crate::api::node::{Heartbeat, NodeView};
use crate::config::{ClusterConfig, ClusterSpec, Component, HostPort, InitialClusterState};
use crate::etcd;
use crate::host::clock::now_secs;
use crate::host::fs::apply_files;
use crate::host::paths::Paths;
use crate::https::{self, Identity, Limits, Request};

const ROUND: Duration = Duration::from_secs(2);
/// How often a master measures its clock against another master's.
const CLOCK_CHECK: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_millis(500);

/// What one read found: the record, and the masters.
struct Found {
    record: Option<(ClusterSpec, i64)>,
    /// The upgrade under way, or the last one.
    upgrade: Option<crate::cluster::upgrade::record::Upgrade>,
    masters: Vec<masters::Master>,
    /// A worker's clock minus the master's that answered, when measurable.
    clock_offset_ms: Option<i64>,
}

/// The record as this node can read it: a master from etcd (the first
/// master founds it), a worker through the masters' node endpoint.
async fn read_record(cfg: &ClusterConfig, etcd: &mut etcd::Local, node_api: &NodeApi) -> Result<Found, NodeApiError> {
    if !cfg.has(Component::Etcd) {
        let (view, clock_offset_ms) = node_api.cluster_view().await?;
        let masters = view.masters.into_iter().map(|m| masters::Master { name: m.name, address: m.address }).collect();
        let record = view.settings.map(|s| (s, view.settings_revision));
        return Ok(Found { record, upgrade: view.upgrade, masters, clock_offset_ms });
    }
    let other = |e: String| NodeApiError::Other(e);
    let (c, endpoint) = match etcd.parts().await {
        Ok(parts) => parts,
        Err(e) => return Err(other(e.to_string())),
    };
    let read = async {
        let record = crate::cluster::settings::read(c, endpoint).await.map_err(|e| other(e.to_string()))?;
        let masters: Vec<masters::Master> = crate::cluster::registry::list(c, endpoint)
            .await
            .map_err(|e| other(e.to_string()))?
            .into_iter()
            .filter(|r| r.role == crate::cluster::Role::Master)
            .map(|r| masters::Master { name: r.name, address: r.address })
            .collect();
        let tombstone = crate::cluster::purge::tombstone(c, endpoint, cfg.node.name.as_str()).await;
        if let Some(t) = tombstone.map_err(|e| other(e.to_string()))? {
            return Err(NodeApiError::Purged(t.message(cfg.node.name.as_str())));
        }
        let upgrade = crate::cluster::upgrade::record::read(c, endpoint).await.map_err(|e| other(e.to_string()))?;
        Ok((record, masters, upgrade))
    };
    let (record, masters, upgrade) = match read.await {
        Ok(r) => r,
        Err(NodeApiError::Other(e)) => {
            etcd.forget();
            // This master's own etcd may be out of the cluster (a purged
            // master's member was removed): the other masters tell.
            if let Err(NodeApiError::Purged(m)) = node_api.get::<NodeView>("/v1/node/cluster").await {
                return Err(NodeApiError::Purged(m));
            }
            return Err(other(e));
        }
        Err(purged) => return Err(purged),
    };
    if record.is_none() && cfg.node.etcd.initial_cluster_state == InitialClusterState::New {
        // The first master founds the record from its own config.
        let rev = crate::cluster::settings::write(c, endpoint, &cfg.cluster, None, cfg.node.name.as_str(), now_secs())
            .await
            .map_err(|e| other(e.to_string()))?;
        info!(revision = rev, "cluster-wide settings recorded");
        return Ok(Found { record: Some((cfg.cluster.clone(), rev)), upgrade, masters, clock_offset_ms: None });
    }
    Ok(Found { record: record.map(|s| (s.spec, s.revision)), upgrade, masters, clock_offset_ms: None })
}

/// Keeps this node on the cluster-wide settings until `stop` changes:
/// publishes the revision it runs in `applied`, asks for a reload through
/// `reload` once its files are rewritten for a new revision, keeps the
/// masters it knows on disk, and says so in `purged` when the cluster
/// purged this node.
pub async fn run(
    paths: Paths,
    cfg: ClusterConfig,
    applied: std::rc::Rc<watch::Sender<i64>>,
    reload: mpsc::UnboundedSender<super::Request>,
    purged: std::rc::Rc<watch::Sender<Option<String>>>,
    report: watch::Receiver<crate::cluster::heartbeat::Report>,
    mut stop: watch::Receiver<bool>,
) {
    let node_api = NodeApi::new(&paths, &cfg);
    let mut etcd = etcd::Local::new(&paths, &cfg, Duration::from_secs(3));
    let mut last_beat = std::time::Instant::now() - Duration::from_secs(3600);
    let mut converging_to = 0;
    let mut clock_offset_ms = None;
    let mut clock_checked = std::time::Instant::now() - CLOCK_CHECK;
    let mut upgrade = super::upgrade::Follower::default();
    loop {
        // Until a master's own etcd answers (it is starting), try again
        // soon: the first master founds the record on its first good round.
        let mut pause = ROUND;
        match read_record(&cfg, &mut etcd, &node_api).await {
            Err(NodeApiError::Purged(msg)) => {
                purged.send_replace(Some(msg));
            }
            Err(NodeApiError::Other(e)) => {
                debug!(error = %e, "cluster-wide settings not read this round");
                if cfg.has(Component::Etcd) {
                    pause = RETRY;
                }
            }
            Ok(found) => {
                if found.clock_offset_ms.is_some() {
                    clock_offset_ms = found.clock_offset_ms;
                }
                if let Err(e) = masters::write(&paths, &found.masters) {
                    warn!(error = %e, "cannot record the masters");
                }
                match found.record {
                    Some((spec, rev)) if spec == cfg.cluster => {
                        applied.send_if_modified(|v| std::mem::replace(v, rev) != rev);
                        // Settings first: a move of this node waits for a
                        // round that finds them applied.
                        let source = || node_api.source();
                        let healthy = report.borrow().healthy;
                        match upgrade.round(&paths, &cfg, found.upgrade.as_ref(), healthy, source) {
                            None => {}
                            Some(super::upgrade::Move::Agent(binary)) => {
                                let _ = reload.send(super::Request::HandOver(binary));
                            }
                            Some(super::upgrade::Move::Config(next)) => {
                                let p = paths.clone();
                                let moved = tokio::task::spawn_blocking(move || converge(&p, &next))
                                    .await
                                    .map_err(|e| e.to_string())
                                    .and_then(|r| r);
                                match moved {
                                    Ok(()) => {
                                        let _ = reload.send(super::Request::Reload);
                                    }
                                    Err(e) => {
                                        upgrade.not_moved();
                                        warn!(error = %e, "upgrade: cannot move this node to the new bundle yet");
                                    }
                                }
                            }
                        }
                    }
                    Some((spec, rev)) if rev != converging_to => {
                        info!(revision = rev, "the cluster-wide settings changed: converging");
                        let mut next = cfg.clone();
                        next.cluster = spec;
                        let p = paths.clone();
                        let result = tokio::task::spawn_blocking(move || converge(&p, &next))
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|r| r);
                        match result {
                            Ok(()) => {
                                converging_to = rev;
                                let _ = reload.send(super::Request::Reload);
                            }
                            Err(e) => warn!(error = %e, revision = rev, "cannot converge on the cluster-wide settings"),
                        }
                    }
                    _ => {}
                }
            }
        }
        // A master's clock against another master's, into its own record.
        if cfg.has(Component::Etcd) && clock_checked.elapsed() >= CLOCK_CHECK {
            clock_checked = std::time::Instant::now();
            if let (Ok((_, Some(offset))), Ok((c, endpoint))) = (node_api.cluster_view().await, etcd.parts().await) {
                let record = |r: &mut crate::cluster::registry::NodeRecord| r.clock_offset_ms = Some(offset);
                if let Err(e) = crate::cluster::registry::update(c, endpoint, cfg.node.name.as_str(), record).await {
                    debug!(error = %e, "clock offset not recorded this round");
                }
                if let Some(warning) = crate::host::clock::describe_offset(offset) {
                    warn!("{warning}");
                }
            }
        }
        // A worker's heartbeat goes through the masters' node endpoint.
        if !cfg.has(Component::Etcd) && last_beat.elapsed() >= crate::cluster::heartbeat::INTERVAL {
            let beat = Heartbeat {
                settings_revision: *applied.borrow(),
                clock_offset_ms,
                report: Some(report.borrow().clone()),
            };
            match node_api.post("/v1/node/heartbeat", &beat).await {
                Ok(()) => last_beat = std::time::Instant::now(),
                Err(NodeApiError::Purged(msg)) => {
                    purged.send_replace(Some(msg));
                }
                Err(e) => warn!(error = %e, "heartbeat not delivered to any master"),
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = sleep(pause) => {}
        }
    }
}

/// Rewrites this host's files for `next` (certificates, kubeconfigs, the
/// copy in `cluster.yaml`), holding the root as `install` does: while an
/// install or a join changes this host, the round is skipped (they write
/// the same files from the same record).
pub fn converge(paths: &Paths, next: &ClusterConfig) -> Result<(), String> {
    let _lock = crate::host::lock::lock_root(paths.root()).map_err(|e| e.to_string())?;
    let plan = crate::files::plan(paths, next, next.node.systemd).map_err(|e| e.to_string())?;
    apply_files(&plan.backups).map_err(|e| e.to_string())?;
    apply_files(&plan.files).map_err(|e| e.to_string())?;
    Ok(())
}

/// What the other masters say of this node before anything starts.
#[derive(Default)]
pub struct AtStart {
    /// The cluster purged it (its kubelet would register its Node again).
    pub purged: Option<String>,
    /// The cluster-wide settings in force, which it may have missed while
    /// it was down.
    pub settings: Option<ClusterSpec>,
}

/// Asks the other masters, bounded: when none answers, nothing is known.
pub async fn at_start(paths: &Paths, cfg: &ClusterConfig) -> AtStart {
    let api = NodeApi::new(paths, cfg);
    match tokio::time::timeout(Duration::from_secs(8), api.get::<NodeView>("/v1/node/cluster")).await {
        Ok(Err(NodeApiError::Purged(msg))) => AtStart { purged: Some(msg), settings: None },
        Ok(Ok(view)) => AtStart { purged: None, settings: view.settings },
        _ => AtStart::default(),
    }
}

/// Why the masters' node endpoint gave nothing.
#[derive(Debug)]
enum NodeApiError {
    /// The cluster purged this node (410): what it says.
    Purged(String),
    Other(String),
}

impl std::fmt::Display for NodeApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeApiError::Purged(m) | NodeApiError::Other(m) => f.write_str(m),
        }
    }
}

/// The masters' node endpoints, as a node reaches them: its kubelet's
/// certificate, the cluster CA, every other master it knows in turn.
pub(super) struct NodeApi {
    paths: Paths,
    cfg: ClusterConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    why_not: String,
}

impl NodeApi {
    pub(super) fn new(paths: &Paths, cfg: &ClusterConfig) -> NodeApi {
        let tls = crate::kube::kubeconfig::read(&paths.kubeconfig("kubelet")).and_then(|c| {
            let id = Identity { cert_pem: c.cert_pem.as_bytes(), key_pem: c.key_pem.as_bytes() };
            https::client_config(c.ca_pem.as_bytes(), Some(id)).map_err(|e| e.to_string())
        });
        let why_not = tls.as_ref().err().cloned().unwrap_or_default();
        NodeApi { paths: paths.clone(), cfg: cfg.clone(), tls: tls.ok().map(Arc::new), why_not }
    }

    /// What an upgrade's fetch of a bundle needs: this node's identity
    /// and the other masters.
    pub(super) fn source(&self) -> Result<super::upgrade::Source, String> {
        let tls = self.tls.clone().ok_or_else(|| format!("no node identity: {}", self.why_not))?;
        Ok(super::upgrade::Source { tls, masters: self.masters() })
    }

    fn masters(&self) -> Vec<HostPort> {
        masters::read(&self.paths, &self.cfg)
            .into_iter()
            .filter(|m| m.address != self.cfg.node.advertise_address)
            .map(|m| HostPort::new(crate::config::Host::Ip(m.address), self.cfg.node.join_api_port))
            .collect()
    }

    async fn send(&self, req: impl Fn() -> Request<'static>) -> Result<axum::body::Bytes, NodeApiError> {
        let tls = self.tls.clone().ok_or_else(|| NodeApiError::Other(format!("no node identity: {}", self.why_not)))?;
        let mut errors = vec![];
        for m in self.masters() {
            let limits =
                Limits { connect: Duration::from_secs(2), exchange: Duration::from_secs(5), max_body: 1 << 20 };
            match https::request(&m, tls.clone(), req(), limits).await {
                Ok(r) if (200..300).contains(&r.status) => return Ok(r.body),
                Ok(r) if r.status == 410 => {
                    let msg = serde_json::from_slice::<crate::join::wire::ApiError>(&r.body)
                        .map(|e| e.error)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into_owned());
                    return Err(NodeApiError::Purged(msg));
                }
                Ok(r) => errors.push(format!("{m}: {} {}", r.status, String::from_utf8_lossy(&r.body))),
                Err(e) => errors.push(format!("{m}: {e}")),
            }
        }
        Err(NodeApiError::Other(if errors.is_empty() { "no other master known".into() } else { errors.join("; ") }))
    }

    /// `GET /v1/node/cluster`, with this clock's offset from the answering
    /// master's when the answer says precisely enough.
    async fn cluster_view(&self) -> Result<(NodeView, Option<i64>), NodeApiError> {
        use crate::host::clock::{now_millis, offset_ms};
        let sent = now_millis();
        let view: NodeView = self.get("/v1/node/cluster").await?;
        let offset = view.now_ms.and_then(|peer| offset_ms(sent, peer, now_millis()));
        Ok((view, offset))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &'static str) -> Result<T, NodeApiError> {
        let body = self.send(|| Request::get(path)).await?;
        serde_json::from_slice(&body).map_err(|e| NodeApiError::Other(e.to_string()))
    }

    /// POSTs `body` to the first master that answers, and reads its answer.
    pub(super) async fn exchange<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &'static str,
        body: &T,
    ) -> Result<R, String> {
        let json = serde_json::to_vec(body).expect("serializes");
        let answer = self
            .send(|| Request {
                method: "POST",
                path,
                headers: &[("content-type", "application/json")],
                body: Some(json.clone()),
            })
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&answer).map_err(|e| format!("{path}: {e}"))
    }

    async fn post<T: serde::Serialize>(&self, path: &'static str, body: &T) -> Result<(), NodeApiError> {
        let json = serde_json::to_vec(body).expect("serializes");
        self.send(|| Request {
            method: "POST",
            path,
            headers: &[("content-type", "application/json")],
            body: Some(json.clone()),
        })
        .await
        .map(drop)
    }
}
