//! What the elected leader among the masters' agents does for the whole
//! cluster, one round every few seconds while it leads: bootstrap the
//! controller's RBAC (with the admin identity, once per term), mirror its
//! leadership into the Lease `kube-system/hakube-controller`, give every
//! master's Node its role (labels, and taints while `taint-control-plane`
//! is set), keep the cluster's add-ons (CoreDNS, the local volume
//! provisioner) applied and sized to the schedulable nodes, and remove
//! learners that a failed join left behind. Failures are logged and retried
//! next round; nothing here crashes the agent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;
use tokio::time::sleep;
use tracing::{debug, error, info, warn};

use super::election::{Term, View, LEADER_TTL_SECS};
use super::purge::{Live, Purger, Signals, Tracker};
use super::registry;
use super::taints::{self, Outcome};
use super::{ClusterError, Role};
use crate::addons::{self, AddonSpec};
use crate::config::ClusterConfig;
use crate::config::ClusterSpec;
use crate::etcd::{self, membership};
use crate::host::paths::Paths;
use crate::kube::client::{KubeClient, Patch};
use crate::kube::objects::{self, List, Node};
use crate::kube::rbac;

const ROUND: Duration = Duration::from_secs(2);
/// How often the leader looks at the nodes to size the add-ons.
const ADDONS_CHECK: Duration = Duration::from_secs(10);
/// How often it applies them even when nothing changed, so that an add-on
/// object deleted or edited by hand comes back within minutes.
const ADDONS_REFRESH: Duration = Duration::from_secs(300);

/// How long a learner may stay a learner before the leader removes it
/// (`HAKUBE_STALLED_LEARNER_SECS`, default 10 minutes): long enough for any
/// real join to finish, short enough that a dead one does not linger.
pub fn stalled_learner_limit() -> Duration {
    let secs = std::env::var("HAKUBE_STALLED_LEARNER_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    Duration::from_secs(secs)
}

/// State kept across rounds of one agent.
struct Controller {
    paths: Paths,
    cfg: ClusterConfig,
    etcd: etcd::Local,
    admin: Option<KubeClient>,
    kube: Option<KubeClient>,
    rbac_for: Option<Term>,
    acquired: String,
    learners: HashMap<u64, Instant>,
    /// The add-ons as last applied in this term, and when.
    addons: Option<(AddonSpec, Instant)>,
    addons_checked: Option<Instant>,
    /// When the purge last saw each node's signals move, in this term.
    tracker: Option<(Term, Tracker)>,
    /// The nodes' Kubernetes signals, watched while this node leads.
    signals: Option<Signals>,
}

/// Runs the leader's rounds whenever `view` says this node leads, until
/// `stop` changes.
pub async fn run(paths: Paths, cfg: ClusterConfig, mut view: watch::Receiver<View>, mut stop: watch::Receiver<bool>) {
    let mut c = Controller {
        etcd: etcd::Local::new(&paths, &cfg, Duration::from_secs(3)),
        paths,
        cfg,
        admin: None,
        kube: None,
        rbac_for: None,
        acquired: String::new(),
        learners: HashMap::new(),
        addons: None,
        addons_checked: None,
        tracker: None,
        signals: None,
    };
    loop {
        let term = view.borrow().term.clone();
        if let Some(term) = term {
            if let Err(e) = c.round(&term).await {
                report(&e, "cluster controller round");
            }
        } else {
            c.learners.clear();
            c.rbac_for = None;
            c.addons = None;
            c.addons_checked = None;
            c.tracker = None;
            c.signals = None;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = view.changed() => {}
            _ = sleep(ROUND) => {}
        }
    }
}

impl Controller {
    async fn round(&mut self, term: &Term) -> Result<(), ClusterError> {
        let endpoint = self.cfg.etcd_client_url();
        let etcd = self.etcd.client().await?;
        if !term.holds(etcd).await {
            self.etcd.forget();
            return Err(ClusterError::NotLeader("the leadership was lost before this round".into()));
        }
        let nodes = registry::list(etcd, &endpoint).await?;
        let masters: Vec<String> = nodes.iter().filter(|r| r.role == Role::Master).map(|r| r.name.clone()).collect();
        // The record itself, not this node's copy (which may lag it).
        let spec = match super::settings::read(etcd, &endpoint).await? {
            Some(s) => s.spec,
            None => self.cfg.cluster.clone(),
        };
        self.remove_stalled_learners().await;
        if let Err(e) = self.lb_round(&nodes).await {
            report(&e, "load-balancer address change");
        }
        // Add-ons move last: not while an upgrade runs (a new image would
        // reach only the nodes that moved), then from the new bundle.
        let upgrading = match self.upgrade_round(&nodes).await {
            Ok(up) => up.is_some_and(|u| u.running()),
            Err(e) => {
                report(&e, "upgrade");
                true
            }
        };

        // Kubernetes, through this node's own API server (a master that
        // runs none, etcd alone, leaves this part to none). Its failure
        // does not hold the purge up: the purge reaches any API server.
        if self.cfg.has(crate::config::Component::KubeApiserver) {
            if let Err(e) = self.kube_round(term, &masters, &spec, upgrading).await {
                report(&e, "Kubernetes part of the round");
            }
        }
        self.purge_round(term, spec.lost_node_toleration).await
    }

    /// The controller's own client (its kubeconfig read once).
    fn controller_client(&mut self) -> Result<KubeClient, ClusterError> {
        if self.kube.is_none() {
            let path = self.paths.kubeconfig("hakube-controller");
            self.kube = Some(KubeClient::from_kubeconfig(&path)?);
        }
        Ok(self.kube.clone().expect("set above"))
    }

    /// The client the purge reads nodes with: this node's API server, then
    /// the node-local balancer (any API server), so that a leader whose own
    /// API server is down still judges nodes; None when this node runs no
    /// Kubernetes at all (an etcd-only cluster: heartbeats are all there is).
    fn purge_kube(&mut self) -> Result<Option<KubeClient>, ClusterError> {
        if !self.cfg.runs_local_lb() {
            return Ok(None);
        }
        let kube = self.controller_client()?;
        let mut servers = vec![];
        if self.cfg.has(crate::config::Component::KubeApiserver) {
            servers.push(kube_local(&self.cfg));
        }
        servers.push(self.cfg.local_lb_endpoint());
        Ok(Some(kube.with_servers(servers)))
    }

    async fn kube_round(
        &mut self,
        term: &Term,
        masters: &[String],
        spec: &ClusterSpec,
        upgrading: bool,
    ) -> Result<KubeClient, ClusterError> {
        let tainted = spec.taint_control_plane;
        if self.admin.is_none() {
            self.admin = Some(KubeClient::from_kubeconfig(&self.paths.kubeconfig("admin"))?);
        }
        let admin = self.admin.clone().expect("set above");
        let kube = self.controller_client()?;
        if self.rbac_for.as_ref() != Some(term) {
            // The admin client talks to the control-plane endpoint; the
            // bootstrap goes to this node's own API server, like the rest.
            let admin = admin.with_servers(vec![kube_local(&self.cfg)]);
            for (path, obj) in rbac::objects() {
                let what = format!("{} {}", obj["kind"].as_str().unwrap_or(""), obj["metadata"]["name"]);
                admin
                    .patch::<serde_json::Value>(
                        &what,
                        &format!("{path}?fieldManager=hakube&force=true"),
                        Patch::Apply,
                        &obj,
                    )
                    .await?;
            }
            info!("controller RBAC applied");
            self.rbac_for = Some(term.clone());
            self.acquired = crate::kube::event::micro_time(time::OffsetDateTime::now_utc());
        }
        // Best effort: `kubectl get lease` is for people, the term is etcd's.
        if let Err(e) = self.mirror_lease(&kube).await {
            warn!(error = %e, "cannot mirror the leadership into its Lease");
        }
        for m in masters {
            match taints::apply(&kube, m, tainted).await {
                Ok(Outcome::Patched) => info!(node = %m, tainted, "control-plane role set on the master's Node"),
                Ok(Outcome::NotRegistered) => debug!(node = %m, "master's Node not registered yet"),
                Ok(Outcome::Conflict) => debug!(node = %m, "master's Node changed meanwhile; next round"),
                Ok(Outcome::Current) => {}
                Err(e) => warn!(node = %m, error = %e, "cannot set the control-plane role"),
            }
        }
        if !upgrading && self.addons_checked.is_none_or(|t| t.elapsed() >= ADDONS_CHECK) {
            self.addons_checked = Some(Instant::now());
            let admin = admin.with_servers(vec![kube_local(&self.cfg)]);
            if let Err(e) = self.addons_round(&admin, spec).await {
                report(&e.during("applying the add-ons"), "add-ons");
            }
        }
        Ok(kube)
    }

    /// Applies the add-ons (server-side, as field manager `hakube`) when
    /// what they are rendered from changed, or every few minutes.
    async fn addons_round(&mut self, admin: &KubeClient, cluster: &ClusterSpec) -> Result<(), ClusterError> {
        let bundle = self.cfg.node.bundle.clone().unwrap_or_else(|| self.paths.bin_dir());
        let images = addons::images_from_bundle(&bundle)?;
        let nodes: List<Node> = admin.get("the nodes", objects::nodes_path()).await?;
        let mut c = self.cfg.clone();
        c.cluster = cluster.clone();
        let schedulable = addons::count_schedulable(&nodes.items);
        let spec = AddonSpec::from_config(&c, schedulable, images, addons::DEFAULT_LOCAL_PATH_DIR.into());
        let due = match &self.addons {
            Some((last, at)) => *last != spec || at.elapsed() >= ADDONS_REFRESH,
            None => true,
        };
        if !due {
            return Ok(());
        }
        addons::apply(admin, &spec).await?;
        info!(schedulable, coredns_replicas = addons::coredns_replicas(spec.ha, schedulable), "add-ons applied");
        for w in addons::warnings(&spec) {
            warn!("{w}");
        }
        self.addons = Some((spec, Instant::now()));
        Ok(())
    }

    async fn purge_round(&mut self, term: &Term, toleration: crate::config::Toleration) -> Result<(), ClusterError> {
        let endpoint = self.cfg.etcd_client_url();
        let creds = self.etcd.credentials()?;
        let kube = self.purge_kube()?;
        if self.tracker.as_ref().is_none_or(|(t, _)| t != term) {
            self.tracker = Some((term.clone(), Tracker::default()));
        }
        if let (None, Some(kube)) = (&self.signals, &kube) {
            self.signals = Some(Signals::spawn(kube));
        }
        let (_, tracker) = self.tracker.as_mut().expect("set above");
        let etcd = self.etcd.client().await?;
        let signals = self.signals.as_ref();
        let world = Live { etcd, endpoint: &endpoint, creds: &creds, kube: kube.as_ref(), signals, term };
        let mut purger = Purger { world, tracker, leader: self.cfg.node.name.as_str(), toleration };
        let began = Instant::now();
        let result = purger.round(crate::host::clock::now_secs()).await;
        let view = match &result {
            Ok(view) => super::purge::View { round_ms: Some(began.elapsed().as_millis() as u64), ..view.clone() },
            Err(_) => return result.map(drop),
        };
        let etcd = self.etcd.client().await?;
        Ok(super::purge::store_view(etcd, &endpoint, &view).await?)
    }

    /// An upgrade under way: the next node told to move when the last one
    /// reports the target, healthy.
    async fn upgrade_round(
        &mut self,
        nodes: &[registry::NodeRecord],
    ) -> Result<Option<super::upgrade::record::Upgrade>, ClusterError> {
        let endpoint = self.cfg.etcd_client_url();
        let etcd = self.etcd.client().await?;
        Ok(super::upgrade::drive::round(etcd, &endpoint, nodes, crate::host::clock::now_secs()).await?)
    }

    async fn lb_round(&mut self, nodes: &[registry::NodeRecord]) -> Result<(), ClusterError> {
        let endpoint = self.cfg.etcd_client_url();
        let ca_file = self.paths.pki("ca.crt");
        let ca = std::fs::read(&ca_file).map_err(|e| ClusterError::Host(format!("{}: {e}", ca_file.display())))?;
        let etcd = self.etcd.client().await?;
        let leader = self.cfg.node.name.as_str();
        super::lbchange::round(etcd, &endpoint, leader, nodes, self.cfg.node.api_server_port, &ca).await
    }

    /// `kube-system/hakube-controller`, held by this node, for `kubectl get lease`.
    async fn mirror_lease(&self, kube: &KubeClient) -> Result<(), ClusterError> {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": rbac::LEADER_LEASE, "namespace": "kube-system"},
            "spec": {
                "holderIdentity": self.cfg.node.name.as_str(),
                "leaseDurationSeconds": LEADER_TTL_SECS,
                "acquireTime": self.acquired,
                "renewTime": crate::kube::event::micro_time(time::OffsetDateTime::now_utc()),
            }
        });
        let path = format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{}?fieldManager=hakube&force=true",
            rbac::LEADER_LEASE
        );
        kube.patch::<serde_json::Value>("lease kube-system/hakube-controller", &path, Patch::Apply, &lease).await?;
        Ok(())
    }

    async fn remove_stalled_learners(&mut self) {
        let endpoint = self.cfg.etcd_client_url();
        let limit = stalled_learner_limit();
        let Ok(client) = self.etcd.client().await else { return };
        let Ok(members) = etcd::members(client, &endpoint).await else { return };
        self.learners.retain(|id, _| members.iter().any(|m| m.id == *id && m.is_learner));
        for m in members.iter().filter(|m| m.is_learner) {
            let first = *self.learners.entry(m.id).or_insert_with(Instant::now);
            if first.elapsed() < limit {
                continue;
            }
            // Only while no join holds the lock: a join in progress owns its learner.
            let Ok(lock) = membership::Lock::acquire(client, &endpoint, Duration::from_secs(2)).await else {
                continue;
            };
            let still =
                etcd::members(client, &endpoint).await.ok().and_then(|ms| ms.into_iter().find(|x| x.id == m.id));
            if still.is_some_and(|x| x.is_learner) {
                match membership::remove_member(client, &endpoint, m.id, &lock).await {
                    Ok(()) => warn!(
                        member = %format!("{:x}", m.id),
                        peer = %m.peer_urls.join(","),
                        "removed a learner stalled for {}s (a join that did not finish; re-running it adds the member again)",
                        first.elapsed().as_secs()
                    ),
                    Err(e) => warn!(error = %e, "cannot remove stalled learner {:x}", m.id),
                }
                self.learners.remove(&m.id);
            }
            lock.release(client).await;
        }
    }
}

/// Logs a failed part of a round by what it needs: nothing (the next
/// round, or the next leader, goes on), or someone's attention (it will
/// fail the same way until a file, a role or a bundle is fixed).
fn report(e: &ClusterError, part: &str) {
    match e.cause() {
        ClusterError::NotLeader(_) => info!(reason = %e, "{part} stopped: this node no longer leads"),
        _ if e.retryable() => warn!(error = %e, "{part} failed; retrying next round"),
        _ => error!(error = %e, "{part} failed and will fail again until this is fixed; retrying next round"),
    }
}

/// This node's own API server.
fn kube_local(c: &ClusterConfig) -> crate::config::HostPort {
    crate::config::HostPort::new(crate::config::Host::Ip(c.node.advertise_address), c.node.api_server_port)
}
