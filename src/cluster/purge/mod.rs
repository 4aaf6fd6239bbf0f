//! Lost nodes, purged by the elected leader, one at a time, never at the
//! cost of etcd's quorum.
//!
//! A node is lost when its hakube heartbeat *and* its Kubernetes signal
//! (its Lease in `kube-node-lease`, or its Ready condition's heartbeat)
//! have both been stale for longer than the cluster's `lost-node-toleration`.
//! The `NoExecute` unreachable taint is not used: the node lifecycle
//! controller stops adding it when much of a small cluster is down.
//!
//! A purge is a record in etcd that names its next step, so that a new
//! leader resumes what its predecessor started. The steps, each idempotent:
//! taint the Node out-of-service (non-graceful shutdown: volumes detach),
//! force-delete its pods (a StatefulSet's come back elsewhere: the reason to
//! purge), remove a master's etcd member (under the membership lock, only if
//! the voters left keep their quorum), unregister it, delete the Node, and
//! leave a tombstone: the node's identity is refused until it is reset and
//! joined again. Guards are checked again before every step that can still
//! be called off.

use std::net::IpAddr;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::registry::{self, NodeRecord};
use super::Role;
use crate::config::Toleration;
use crate::etcd::membership::{self, Lock, Probe};
use crate::etcd::{self, Credentials, EtcdError, Member};
use crate::host::clock::now_secs;
use crate::kube::client::{KubeClient, Patch};
use crate::kube::objects::{self, List, Node, Pod};

pub const CURRENT: &str = "/hakube/purge/current";
pub const VIEW: &str = "/hakube/purge/view";
pub const HISTORY_PREFIX: &str = "/hakube/purge/history/";
pub const TOMBSTONE_PREFIX: &str = "/hakube/tombstones/";
/// The taint of Kubernetes' non-graceful node shutdown.
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute";

/// What the leader knows of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub name: String,
    pub role: Role,
    pub address: IpAddr,
    /// The hakube heartbeat (registry), unix seconds.
    pub heartbeat_at: u64,
    /// The Kubernetes signal: the Node's Lease renewal or Ready heartbeat,
    /// when there is a Node.
    pub kube_seen_at: Option<u64>,
}

impl Observed {
    /// When the node was last seen alive by either signal.
    pub fn last_seen(&self) -> u64 {
        self.heartbeat_at.max(self.kube_seen_at.unwrap_or(0))
    }
}

/// Where a node stands (pure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Assessment {
    Alive,
    /// Both signals stale, not yet for the toleration.
    Lost {
        lost_for: u64,
        purge_in: Option<u64>,
    },
    /// Lost for longer than the toleration.
    Due {
        lost_for: u64,
    },
}

/// A node counts as alive while either signal is fresher than this.
pub const STALE_AFTER: u64 = 15;

pub fn assess(o: &Observed, now: u64, toleration: Toleration) -> Assessment {
    let silent = now.saturating_sub(o.last_seen());
    if silent <= STALE_AFTER {
        return Assessment::Alive;
    }
    match toleration {
        Toleration::Never => Assessment::Lost { lost_for: silent, purge_in: None },
        Toleration::After(d) if silent > d.as_secs() => Assessment::Due { lost_for: silent },
        Toleration::After(d) => Assessment::Lost { lost_for: silent, purge_in: Some(d.as_secs() - silent) },
    }
}

/// Why a due node is not purged now (pure): never the leader itself; never
/// a master whose etcd member still answers as part of a quorum (its
/// heartbeat is stale, yet the host is not lost: removing a healthy voter
/// would only weaken etcd); a master only if the started healthy voters
/// left are a quorum of the members left.
pub fn guard(o: &Observed, leader: &str, members: &[Member], health: &[(Member, Probe)]) -> Result<(), String> {
    if o.name == leader {
        return Err("it is the leader itself".into());
    }
    if o.role == Role::Master {
        if let Some(m) = member_of(o, members) {
            if health.iter().any(|(h, p)| h.id == m.id && !matches!(p, Probe::Unhealthy(_))) {
                return Err("its etcd member still answers: the host is not lost, only its agent's heartbeat is \
                            stale (see its agent log)"
                    .into());
            }
            if !m.is_learner {
                membership::quorum_after_removal(health, m.id).map_err(|why| {
                    format!(
                        "removing its etcd member would cost quorum ({why}); it stays until enough masters are back"
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// A master's etcd member: by name, or (unstarted) by its address.
pub fn member_of<'a>(o: &Observed, members: &'a [Member]) -> Option<&'a Member> {
    let host = crate::config::Host::Ip(o.address).to_string();
    members.iter().find(|m| {
        m.name == o.name || m.peer_urls.iter().any(|u| crate::join::api::host_of_url(u) == Some(host.as_str()))
    })
}

/// The steps of a purge, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Taint,
    DeletePods,
    RemoveMember,
    Unregister,
    DeleteNode,
    Tombstone,
    Done,
}

impl Step {
    fn next(self) -> Step {
        match self {
            Step::Taint => Step::DeletePods,
            Step::DeletePods => Step::RemoveMember,
            Step::RemoveMember => Step::Unregister,
            Step::Unregister => Step::DeleteNode,
            Step::DeleteNode => Step::Tombstone,
            Step::Tombstone | Step::Done => Step::Done,
        }
    }
}

/// A purge in progress (etcd: [`CURRENT`]), or done (its history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    pub node: Observed,
    pub lost_for: u64,
    pub started_at: u64,
    pub started_by: String,
    pub step: Step,
    #[serde(default)]
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub finished_by: Option<String>,
}

/// What keeps a purged node out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub purged_at: u64,
    pub lost_for: u64,
    pub by: String,
}

impl Tombstone {
    /// What the purged node says, and what to do.
    pub fn message(&self, name: &str) -> String {
        format!(
            "node {name} was purged from the cluster at {} after being unreachable for {}; \
             run `hakube reset` on it and join it again",
            crate::cli::tokens::rfc3339(self.purged_at),
            human(self.lost_for)
        )
    }
}

/// `1h2m3s`.
pub fn human(secs: u64) -> String {
    Toleration::After(Duration::from_secs(secs.max(1))).to_string()
}

/// What `status` shows of every node the leader watches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub at: u64,
    pub leader: String,
    pub nodes: Vec<NodeView>,
    pub current: Option<Purge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub last_seen: u64,
    pub assessment: Assessment,
    /// Why a due node is not being purged.
    pub held_back: Option<String>,
}

fn call(endpoint: &str, e: etcd_client::Error) -> EtcdError {
    EtcdError::Call { endpoint: endpoint.into(), message: e.to_string() }
}

pub async fn tombstone(client: &mut Client, endpoint: &str, name: &str) -> Result<Option<Tombstone>, EtcdError> {
    let resp = client.get(format!("{TOMBSTONE_PREFIX}{name}"), None).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

pub async fn clear_tombstone(client: &mut Client, endpoint: &str, name: &str) -> Result<(), EtcdError> {
    client.delete(format!("{TOMBSTONE_PREFIX}{name}"), None).await.map_err(|e| call(endpoint, e))?;
    Ok(())
}

pub async fn read_view(client: &mut Client, endpoint: &str) -> Result<Option<View>, EtcdError> {
    let resp = client.get(VIEW, None).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

pub async fn history(client: &mut Client, endpoint: &str) -> Result<Vec<Purge>, EtcdError> {
    let resp =
        client.get(HISTORY_PREFIX, Some(GetOptions::new().with_prefix())).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
}

/// The purge under way, if any (for `status`).
pub async fn in_progress(client: &mut Client, endpoint: &str) -> Result<Option<Purge>, EtcdError> {
    Ok(current(client, endpoint).await?.map(|(p, _)| p))
}

async fn current(client: &mut Client, endpoint: &str) -> Result<Option<(Purge, i64)>, EtcdError> {
    let resp = client.get(CURRENT, None).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok().map(|p| (p, kv.mod_revision()))))
}

/// Writes the purge's progress, if it is still the one read at `rev`.
async fn advance(client: &mut Client, endpoint: &str, p: &Purge, rev: i64) -> Result<Option<i64>, EtcdError> {
    let body = serde_json::to_vec(p).expect("purge serializes");
    let guard = if rev == 0 {
        Compare::create_revision(CURRENT, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(CURRENT, CompareOp::Equal, rev)
    };
    let resp = client
        .txn(Txn::new().when([guard]).and_then([TxnOp::put(CURRENT, body, None)]))
        .await
        .map_err(|e| call(endpoint, e))?;
    Ok(resp.succeeded().then(|| resp.header().map(|h| h.revision()).unwrap_or(rev + 1)))
}

/// Test hook: `HAKUBE_FAULT=slow-purge` makes every recorded step take
/// seconds, so that a test can kill the leader in the middle of a purge.
async fn fault_after(_step: Step) {
    if std::env::var("HAKUBE_FAULT").as_deref() == Ok("slow-purge") {
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
}

/// The leader's purge, one round: resume the purge in progress, or look for
/// a node that is due and start on it. `still_leader` is checked before
/// every step.
pub struct Purger<'a> {
    pub etcd: &'a mut Client,
    pub endpoint: &'a str,
    pub creds: &'a Credentials,
    pub kube: Option<&'a KubeClient>,
    pub leader: &'a str,
    pub toleration: Toleration,
    /// The leader's term: checked before every step.
    pub term: &'a super::election::Term,
}

impl Purger<'_> {
    /// Everything the leader observes of the nodes: registry heartbeats and
    /// Kubernetes signals.
    pub async fn observe(&mut self) -> Result<Vec<Observed>, String> {
        let records = registry::list(self.etcd, self.endpoint).await.map_err(|e| e.to_string())?;
        let mut out = vec![];
        for r in records {
            let kube_seen_at = match self.kube {
                Some(k) => kube_signal(k, &r.name).await,
                None => None,
            };
            out.push(Observed {
                name: r.name,
                role: r.role,
                address: r.address,
                heartbeat_at: r.heartbeat_at,
                kube_seen_at,
            });
        }
        Ok(out)
    }

    /// One round: returns the view for `status`.
    pub async fn round(&mut self) -> Result<View, String> {
        let now = now_secs();
        let nodes = self.observe().await?;
        let members = etcd::members(self.etcd, self.endpoint).await.map_err(|e| e.to_string())?;
        let health = membership::voter_health(&members, self.creds).await;
        let mut view = View { at: now, leader: self.leader.to_owned(), nodes: vec![], current: None };
        for o in &nodes {
            let assessment = assess(o, now, self.toleration);
            let held_back = match assessment {
                Assessment::Due { .. } => guard(o, self.leader, &members, &health).err(),
                _ => None,
            };
            view.nodes.push(NodeView { name: o.name.clone(), last_seen: o.last_seen(), assessment, held_back });
        }
        self.sweep_tombstoned_nodes().await;
        let in_progress = current(self.etcd, self.endpoint).await.map_err(|e| e.to_string())?;
        let (mut purge, mut rev) = match in_progress {
            Some(p) => p,
            None => {
                // The one lost longest, that no guard holds back.
                let due = view
                    .nodes
                    .iter()
                    .filter(|n| matches!(n.assessment, Assessment::Due { .. }) && n.held_back.is_none())
                    .min_by_key(|n| n.last_seen);
                let Some(due) = due else {
                    for n in view.nodes.iter().filter(|n| n.held_back.is_some()) {
                        warn!(node = %n.name, reason = %n.held_back.as_deref().unwrap_or(""), "lost node not purged");
                    }
                    return Ok(view);
                };
                let o = nodes.iter().find(|o| o.name == due.name).expect("viewed").clone();
                let lost_for = now.saturating_sub(o.last_seen());
                let p = Purge {
                    node: o,
                    lost_for,
                    started_at: now,
                    started_by: self.leader.to_owned(),
                    step: Step::Taint,
                    finished_at: None,
                    finished_by: None,
                };
                let Some(r) = advance(self.etcd, self.endpoint, &p, 0).await.map_err(|e| e.to_string())? else {
                    return Ok(view);
                };
                warn!(node = %p.node.name, lost_for = %human(lost_for), "purging a lost node");
                (p, r)
            }
        };
        // Resume, step by step; each recorded before the next.
        while purge.step != Step::Done {
            if !self.term.holds(self.etcd).await {
                return Err(format!("the leadership was lost in the middle of purging {}", purge.node.name));
            }
            // Until its member is gone, a node that comes back is left alone.
            if purge.step <= Step::RemoveMember {
                let fresh = nodes.iter().find(|o| o.name == purge.node.name);
                if fresh.is_some_and(|o| o.last_seen() > purge.node.last_seen() + STALE_AFTER) {
                    warn!(node = %purge.node.name, "a lost node came back: its purge is called off");
                    let _ = self.etcd.delete(CURRENT, None).await;
                    view.current = None;
                    return Ok(view);
                }
            }
            self.step(&purge).await.map_err(|e| format!("purging {} ({:?}): {e}", purge.node.name, purge.step))?;
            let done = purge.step;
            purge.step = purge.step.next();
            if purge.step == Step::Done {
                purge.finished_at = Some(now_secs());
                purge.finished_by = Some(self.leader.to_owned());
            }
            match advance(self.etcd, self.endpoint, &purge, rev).await.map_err(|e| e.to_string())? {
                Some(r) => rev = r,
                // Another leader took over meanwhile: it goes on.
                None => return Ok(view),
            }
            let _ = done;
            fault_after(purge.step).await;
        }
        self.finish(&purge).await.map_err(|e| e.to_string())?;
        view.current = None;
        Ok(view)
    }

    /// A purged node whose kubelet came back registers its Node again
    /// before its agent learns it was purged: such Nodes go.
    async fn sweep_tombstoned_nodes(&mut self) {
        let Some(kube) = self.kube else { return };
        let Ok(resp) = self.etcd.get(TOMBSTONE_PREFIX, Some(GetOptions::new().with_prefix().with_keys_only())).await
        else {
            return;
        };
        let names: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| String::from_utf8_lossy(kv.key()).strip_prefix(TOMBSTONE_PREFIX).map(str::to_owned))
            .collect();
        for name in names {
            let what = format!("node {name}");
            if let Ok(Some(_)) = kube.get_opt::<Node>(&what, &objects::node_path(&name)).await {
                match kube.delete(&what, &objects::node_path(&name), &json!({})).await {
                    Ok(()) => warn!(node = %name, "deleted the Node a purged node registered again"),
                    Err(e) => warn!(node = %name, error = %e, "cannot delete the Node of a purged node"),
                }
            }
        }
    }

    async fn step(&mut self, p: &Purge) -> Result<(), String> {
        let name = p.node.name.as_str();
        match p.step {
            Step::Taint => {
                let Some(kube) = self.kube else { return Ok(()) };
                let what = format!("node {name}");
                let Some(node) =
                    kube.get_opt::<Node>(&what, &objects::node_path(name)).await.map_err(|e| e.to_string())?
                else {
                    return Ok(());
                };
                let t = objects::Taint::parse(OUT_OF_SERVICE).expect("well-formed");
                if node.spec.taints.iter().any(|x| x.matches(&t)) {
                    return Ok(());
                }
                let mut taints = node.spec.taints.clone();
                taints.push(t);
                let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": taints}});
                kube.patch::<serde_json::Value>(&what, &objects::node_path(name), Patch::Strategic, &patch)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Step::DeletePods => {
                let Some(kube) = self.kube else { return Ok(()) };
                let path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{name}");
                let pods: List<Pod> =
                    kube.get(&format!("the pods of {name}"), &path).await.map_err(|e| e.to_string())?;
                for pod in pods.items {
                    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                    let what = format!("pod {ns}/{}", pod.metadata.name);
                    let path = format!("/api/v1/namespaces/{ns}/pods/{}", pod.metadata.name);
                    kube.delete(&what, &path, &json!({"gracePeriodSeconds": 0})).await.map_err(|e| e.to_string())?;
                    info!(node = %name, pod = %what, "force-deleted a lost node's pod");
                }
                Ok(())
            }
            Step::RemoveMember => {
                if p.node.role != Role::Master {
                    return Ok(());
                }
                let lock = Lock::acquire(self.etcd, self.endpoint, Duration::from_secs(30))
                    .await
                    .map_err(|e| e.to_string())?;
                let result = async {
                    let members = etcd::members(self.etcd, self.endpoint).await.map_err(|e| e.to_string())?;
                    let Some(m) = member_of(&p.node, &members).cloned() else { return Ok(()) };
                    // The guard again, right before the change.
                    let health = membership::voter_health(&members, self.creds).await;
                    guard(&p.node, self.leader, &members, &health)?;
                    membership::remove_member(self.etcd, self.endpoint, m.id, &lock)
                        .await
                        .map_err(|e| e.to_string())?;
                    warn!(node = %name, member = %format!("{:x}", m.id), "removed a lost master's etcd member");
                    Ok::<_, String>(())
                }
                .await;
                lock.release(self.etcd).await;
                result
            }
            Step::Unregister => registry::delete(self.etcd, self.endpoint, name).await.map_err(|e| e.to_string()),
            Step::DeleteNode => match self.kube {
                Some(kube) => kube
                    .delete(&format!("node {name}"), &objects::node_path(name), &json!({}))
                    .await
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            },
            Step::Tombstone => {
                let t = Tombstone { purged_at: now_secs(), lost_for: p.lost_for, by: self.leader.to_owned() };
                let body = serde_json::to_vec(&t).expect("tombstone serializes");
                self.etcd
                    .put(format!("{TOMBSTONE_PREFIX}{name}"), body, None)
                    .await
                    .map(drop)
                    .map_err(|e| call(self.endpoint, e).to_string())
            }
            Step::Done => Ok(()),
        }
    }

    /// The purge's history record, its Event, its audit line; the record of
    /// the purge in progress goes.
    async fn finish(&mut self, p: &Purge) -> Result<(), EtcdError> {
        let key = format!("{HISTORY_PREFIX}{:020}-{}", p.started_at, p.node.name);
        let body = serde_json::to_vec(p).expect("purge serializes");
        let txn = Txn::new().and_then([TxnOp::put(key, body, None), TxnOp::delete(CURRENT, None)]);
        self.etcd.txn(txn).await.map_err(|e| call(self.endpoint, e))?;
        info!(target: "audit", node = %p.node.name, role = %p.node.role, lost_for = %human(p.lost_for), by = %p.started_by, "purged a lost node");
        if let Some(kube) = self.kube {
            if let Err(e) = event(kube, p).await {
                warn!(error = %e, "cannot record the purge's Event");
            }
        }
        Ok(())
    }
}

/// The freshest Kubernetes sign of life of a node.
async fn kube_signal(kube: &KubeClient, name: &str) -> Option<u64> {
    let lease = kube
        .get_opt::<objects::Lease>(&format!("lease of {name}"), &objects::node_lease_path(name))
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec.renew_time.as_deref().and_then(objects::unix_secs));
    let ready =
        kube.get_opt::<Node>(&format!("node {name}"), &objects::node_path(name)).await.ok().flatten().and_then(|n| {
            n.condition("Ready").and_then(|c| c.last_heartbeat_time.as_deref().and_then(objects::unix_secs))
        });
    lease.max(ready)
}

async fn event(kube: &KubeClient, p: &Purge) -> Result<(), crate::kube::client::KubeError> {
    let now = crate::cluster::controller::micro_time(time::OffsetDateTime::now_utc());
    let name = format!("{}.hakube-purge.{}", p.node.name, p.started_at);
    let body = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": p.node.name},
        "reason": "NodePurged",
        "message": format!(
            "hakube purged {} {} after it was unreachable for {} (its hakube heartbeat and its Kubernetes signal both stale)",
            p.node.role, p.node.name, human(p.lost_for)
        ),
        "type": "Warning",
        "source": {"component": "hakube"},
        "firstTimestamp": now.split('.').next().map(|s| format!("{s}Z")),
        "lastTimestamp": now.split('.').next().map(|s| format!("{s}Z")),
        "count": 1,
        "reportingComponent": "hakube",
        "reportingInstance": p.started_by,
    });
    kube.create::<serde_json::Value>(&format!("event {name}"), "/api/v1/namespaces/default/events", &body)
        .await
        .map(drop)
}

/// Stores the leader's view for `status`.
pub async fn store_view(client: &mut Client, endpoint: &str, view: &View) -> Result<(), EtcdError> {
    let body = serde_json::to_vec(view).expect("view serializes");
    client.put(VIEW, body, None).await.map_err(|e| call(endpoint, e))?;
    Ok(())
}

/// A record's node as observed (for the registry's own records).
pub fn observed_from(r: &NodeRecord) -> Observed {
    Observed {
        name: r.name.clone(),
        role: r.role,
        address: r.address,
        heartbeat_at: r.heartbeat_at,
        kube_seen_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, role: Role, heartbeat_at: u64, kube: Option<u64>) -> Observed {
        Observed { name: name.into(), role, address: "10.0.0.21".parse().unwrap(), heartbeat_at, kube_seen_at: kube }
    }

    fn after(secs: u64) -> Toleration {
        Toleration::After(Duration::from_secs(secs))
    }

    #[test]
    fn a_node_is_lost_only_when_both_signals_are_stale() {
        let now = 10_000;
        // Its heartbeat is stale, but kubelet still renews its Lease.
        assert_eq!(assess(&node("w1", Role::Worker, now - 500, Some(now - 2)), now, after(60)), Assessment::Alive);
        // Its Lease is stale, but the agent still heartbeats.
        assert_eq!(assess(&node("w1", Role::Worker, now - 3, Some(now - 500)), now, after(60)), Assessment::Alive);
        // Both stale: lost, then due after the toleration.
        assert_eq!(
            assess(&node("w1", Role::Worker, now - 40, Some(now - 45)), now, after(60)),
            Assessment::Lost { lost_for: 40, purge_in: Some(20) }
        );
        assert_eq!(assess(&node("w1", Role::Worker, now - 70, None), now, after(60)), Assessment::Due { lost_for: 70 });
        assert_eq!(
            assess(&node("w1", Role::Worker, now - 9000, None), now, Toleration::Never),
            Assessment::Lost { lost_for: 9000, purge_in: None }
        );
    }

    fn member(id: u64, name: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://{name}:2380")],
            client_urls: vec![],
            is_learner: false,
        }
    }

    #[test]
    fn a_purge_never_takes_the_leader_nor_a_master_whose_removal_costs_quorum() {
        let (m1, m2, m3) = (member(1, "m1"), member(2, "m2"), member(3, "m3"));
        let members = [m1.clone(), m2.clone(), m3.clone()];
        let up = Probe::Healthy;
        let down = Probe::Unhealthy("down".into());
        let lost_m3 = node("m3", Role::Master, 0, None);
        // m3 down, m1 and m2 up: removing m3 leaves 2 healthy of 2.
        let health = [(m1.clone(), up.clone()), (m2.clone(), up.clone()), (m3.clone(), down.clone())];
        assert_eq!(guard(&lost_m3, "m1", &members, &health), Ok(()));
        // m2 down too (a second master of three): removing m3 would leave 1
        // healthy of 2, short of quorum.
        let health = [(m1.clone(), up.clone()), (m2.clone(), down.clone()), (m3.clone(), down)];
        let e = guard(&lost_m3, "m1", &members, &health).unwrap_err();
        assert!(e.contains("would cost quorum"), "{e}");
        // Never a master whose etcd member still answers: only its
        // agent's heartbeat is stale (seen: a loaded host's agent), and
        // removing a healthy voter weakens etcd. Here it would even have
        // passed the quorum check.
        let health_m3_up = [(m1.clone(), up.clone()), (m2.clone(), up.clone()), (m3.clone(), up.clone())];
        let e = guard(&lost_m3, "m1", &members, &health_m3_up).unwrap_err();
        assert!(e.contains("its etcd member still answers"), "{e}");
        let learner_answer =
            [(m1.clone(), up.clone()), (m2.clone(), up.clone()), (m3.clone(), Probe::AnswersAsLearner)];
        assert!(guard(&lost_m3, "m1", &members, &learner_answer).is_err());
        // Never the leader.
        assert!(guard(&node("m1", Role::Master, 0, None), "m1", &members, &health).is_err());
        // A worker has no member to weigh.
        assert_eq!(guard(&node("w1", Role::Worker, 0, None), "m1", &members, &health), Ok(()));
    }

    #[test]
    fn steps_run_in_the_order_that_keeps_a_purge_resumable() {
        let mut s = Step::Taint;
        let mut order = vec![s];
        while s != Step::Done {
            s = s.next();
            order.push(s);
        }
        assert_eq!(
            order,
            [
                Step::Taint,
                Step::DeletePods,
                Step::RemoveMember,
                Step::Unregister,
                Step::DeleteNode,
                Step::Tombstone,
                Step::Done
            ]
        );
        let t = Tombstone { purged_at: 1_795_000_000, lost_for: 3725, by: "m1".into() };
        assert_eq!(
            t.message("w1"),
            "node w1 was purged from the cluster at 2026-11-18T11:06:40Z after being unreachable for 1h2m5s; \
             run `hakube reset` on it and join it again"
        );
    }
}
