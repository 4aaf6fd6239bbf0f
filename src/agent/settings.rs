//! The node's side of the cluster-wide settings: converge to the record
//! (a master reads it from etcd, a worker from the masters' node endpoint),
//! rewrite this host's files for it (certificates, kubeconfigs, the copy in
//! `cluster.yaml`) and reload; report the revision it runs. A worker also
//! heartbeats through the masters' node endpoint, with its own certificate,
//! trying the next master when one does not answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::sleep;
use tracing::{debug, info, warn};

use crate::config::{ClusterConfig, ClusterSpec, Component, HostPort, InitialClusterState};
use crate::etcd::{self, Credentials};
use crate::host::clock::now_secs;
use crate::host::fs::apply_files;
use crate::host::paths::Paths;
use crate::https::{self, Identity, Limits, Request};
use crate::join::wire::{Heartbeat, NodeView};

const ROUND: Duration = Duration::from_secs(2);

/// The record as this node can read it: (spec, revision).
async fn read_record(
    paths: &Paths,
    cfg: &ClusterConfig,
    etcd_client: &mut Option<etcd_client::Client>,
    node_api: &NodeApi,
) -> Result<Option<(ClusterSpec, i64)>, String> {
    if cfg.has(Component::Etcd) {
        let endpoint = cfg.etcd_client_url();
        if etcd_client.is_none() {
            let creds = Credentials::load(paths, "apiserver-etcd-client").map_err(|e| e.to_string())?;
            let c = etcd::connect(std::slice::from_ref(&endpoint), &creds, Duration::from_secs(3))
                .await
                .map_err(|e| e.to_string())?;
            *etcd_client = Some(c);
        }
        let c = etcd_client.as_mut().expect("connected");
        let record = match crate::cluster::settings::read(c, &endpoint).await {
            Ok(r) => r,
            Err(e) => {
                *etcd_client = None;
                return Err(e.to_string());
            }
        };
        if record.is_none() && cfg.node.etcd.initial_cluster_state == InitialClusterState::New {
            // The first master founds the record from its own config.
            let rev =
                crate::cluster::settings::write(c, &endpoint, &cfg.cluster, 0, cfg.node.name.as_str(), now_secs())
                    .await
                    .map_err(|e| e.to_string())?;
            info!(revision = rev, "cluster-wide settings recorded");
            return Ok(Some((cfg.cluster.clone(), rev)));
        }
        return Ok(record.map(|s| (s.spec, s.revision)));
    }
    let view: NodeView = node_api.get("/v1/node/cluster").await?;
    Ok(view.settings.map(|s| (s, view.settings_revision)))
}

/// Keeps this node on the cluster-wide settings until `stop` changes:
/// publishes the revision it runs in `applied`, asks for a reload through
/// `reload` once its files are rewritten for a new revision.
pub async fn run(
    paths: Paths,
    cfg: ClusterConfig,
    applied: std::rc::Rc<watch::Sender<i64>>,
    reload: mpsc::UnboundedSender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let node_api = NodeApi::new(&paths, &cfg);
    let mut etcd_client = None;
    let mut last_beat = std::time::Instant::now() - Duration::from_secs(3600);
    let mut converging_to = 0;
    loop {
        match read_record(&paths, &cfg, &mut etcd_client, &node_api).await {
            Ok(Some((spec, rev))) if spec == cfg.cluster => {
                applied.send_if_modified(|v| std::mem::replace(v, rev) != rev);
            }
            Ok(Some((spec, rev))) if rev != converging_to => {
                info!(revision = rev, "the cluster-wide settings changed: converging");
                let mut next = cfg.clone();
                next.cluster = spec;
                let p = paths.clone();
                let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
                    let plan = crate::files::plan(&p, &next, next.node.systemd).map_err(|e| e.to_string())?;
                    apply_files(&plan.backups).map_err(|e| e.to_string())?;
                    apply_files(&plan.files).map_err(|e| e.to_string())?;
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                match result {
                    Ok(()) => {
                        converging_to = rev;
                        let _ = reload.send(());
                    }
                    Err(e) => warn!(error = %e, revision = rev, "cannot converge on the cluster-wide settings"),
                }
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "cluster-wide settings not read this round"),
        }
        // A worker's heartbeat goes through the masters' node endpoint.
        if !cfg.has(Component::Etcd) && last_beat.elapsed() >= crate::cluster::duties::HEARTBEAT_INTERVAL {
            let beat = Heartbeat { settings_revision: *applied.borrow() };
            match node_api.post("/v1/node/heartbeat", &beat).await {
                Ok(()) => last_beat = std::time::Instant::now(),
                Err(e) => warn!(error = %e, "heartbeat not delivered to any master"),
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = sleep(ROUND) => {}
        }
    }
}

/// The masters' node endpoints, as a worker reaches them: its kubelet's
/// certificate, the cluster CA, every master it knows in turn.
struct NodeApi {
    masters: Vec<HostPort>,
    tls: Option<Arc<rustls::ClientConfig>>,
    why_not: String,
}

impl NodeApi {
    fn new(paths: &Paths, cfg: &ClusterConfig) -> NodeApi {
        let masters =
            cfg.node.api_servers.iter().map(|m| HostPort::new(m.host.clone(), cfg.node.join_api_port)).collect();
        let tls = crate::kube::kubeconfig::read(&paths.kubeconfig("kubelet")).and_then(|c| {
            let id = Identity { cert_pem: c.cert_pem.as_bytes(), key_pem: c.key_pem.as_bytes() };
            https::client_config(c.ca_pem.as_bytes(), Some(id)).map_err(|e| e.to_string())
        });
        let why_not = tls.as_ref().err().cloned().unwrap_or_default();
        NodeApi { masters, tls: tls.ok().map(Arc::new), why_not }
    }

    async fn send(&self, req: impl Fn() -> Request<'static>) -> Result<axum::body::Bytes, String> {
        let tls = self.tls.clone().ok_or_else(|| format!("no node identity: {}", self.why_not))?;
        let mut errors = vec![];
        for m in &self.masters {
            let limits =
                Limits { connect: Duration::from_secs(2), exchange: Duration::from_secs(5), max_body: 1 << 20 };
            match https::request(m, tls.clone(), req(), limits).await {
                Ok(r) if (200..300).contains(&r.status) => return Ok(r.body),
                Ok(r) => errors.push(format!("{m}: {} {}", r.status, String::from_utf8_lossy(&r.body))),
                Err(e) => errors.push(format!("{m}: {e}")),
            }
        }
        Err(if errors.is_empty() { "no master known".into() } else { errors.join("; ") })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &'static str) -> Result<T, String> {
        let body = self.send(|| Request::get(path)).await?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    async fn post<T: serde::Serialize>(&self, path: &'static str, body: &T) -> Result<(), String> {
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
