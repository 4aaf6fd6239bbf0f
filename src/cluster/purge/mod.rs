//! Lost nodes, purged by the elected leader, one at a time, never at the
//! cost of etcd's quorum, and never a node that is alive.
//!
//! A node is lost when its hakube heartbeat *and* its Kubernetes signal
//! (its Lease in `kube-node-lease`, or its Ready condition's heartbeat)
//! have both stood still for longer than the cluster's
//! `lost-node-toleration`, timed on the leader's own clock ([`decide`]).
//! A signal that cannot be read is unknown, not stale: a node that cannot
//! be judged is never purged, and a leader that reaches no API server
//! purges nothing and says why. The `NoExecute` unreachable taint is not
//! used: the node lifecycle controller stops adding it when much of a
//! small cluster is down.
//!
//! A purge is a record in etcd that names its next step, so that a new
//! leader resumes what its predecessor started. The steps, each idempotent:
//! taint the Node out-of-service (non-graceful shutdown: volumes detach),
//! force-delete its pods (a StatefulSet's come back elsewhere: the reason to
//! purge), remove a master's etcd member (under the membership lock, only if
//! the voters left keep their quorum), unregister it, delete the Node, and
//! leave a tombstone: the node's identity is refused until it is reset and
//! joined again. Right before each of the first three the one node is read
//! again: if either signal moved since the purge started, the purge is
//! called off and its taint removed; if it cannot be read, nothing is done
//! this round. A node that joins again after its record went keeps its
//! Node and gets no tombstone.

mod decide;
mod live;
#[cfg(test)]
mod tests;

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

pub use decide::{Assessment, KubeSignal, Observed, Reading, Tracker, STALE_AFTER};
pub use live::{signal, Live, Signals, World};

use super::ClusterError;
use crate::config::Toleration;
use crate::etcd::EtcdError;
use decide::{decide, judge, recheck, PurgeDecision, Recheck};

pub const CURRENT: &str = "/hakube/purge/current";
pub const VIEW: &str = "/hakube/purge/view";
pub const HISTORY_PREFIX: &str = "/hakube/purge/history/";
pub const TOMBSTONE_PREFIX: &str = "/hakube/tombstones/";
/// The taint of Kubernetes' non-graceful node shutdown.
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute";

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

    /// Whether the node is read again before this step, and the purge
    /// called off if it came back: true until its etcd member is gone.
    fn can_be_called_off(self) -> bool {
        self <= Step::RemoveMember
    }

    /// What a purge called off before this step had done to the node
    /// (for its audit line: an operator, and the soak, tell a purge that
    /// never touched the node from one that did).
    fn done_before(self) -> &'static str {
        match self {
            Step::Taint => "nothing",
            Step::DeletePods => "the out-of-service taint, removed again",
            _ => "the out-of-service taint, removed again, and its pods deleted",
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
            crate::host::clock::rfc3339(self.purged_at),
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
    /// Why nothing is purged although a node is lost.
    #[serde(default)]
    pub note: Option<String>,
    /// How long the leader's round took (ms), reading every node's signals
    /// and judging them: what grows with the cluster's size.
    #[serde(default)]
    pub round_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// When the leader last saw a signal of it move (its own clock, as
    /// unix seconds).
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

/// The purge under way, if any (for `status`, and for a join of the node
/// being purged, which waits for it).
pub async fn in_progress(client: &mut Client, endpoint: &str) -> Result<Option<Purge>, EtcdError> {
    Ok(current(client, endpoint).await?.map(|(p, _)| p))
}

async fn current(client: &mut Client, endpoint: &str) -> Result<Option<(Purge, i64)>, EtcdError> {
    let resp = client.get(CURRENT, None).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok().map(|p| (p, kv.mod_revision()))))
}

/// Stores the leader's view for `status`.
pub async fn store_view(client: &mut Client, endpoint: &str, view: &View) -> Result<(), EtcdError> {
    let body = serde_json::to_vec(view).expect("view serializes");
    client.put(VIEW, body, None).await.map_err(|e| call(endpoint, e))?;
    Ok(())
}

/// Test hook: `HAKUBE_FAULT=slow-purge` makes every recorded step take
/// seconds, so that a test can kill the leader in the middle of a purge.
async fn fault_after(_step: Step) {
    if std::env::var("HAKUBE_FAULT").as_deref() == Ok("slow-purge") {
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
}

/// The leader's purge, one round at a time: resume the purge in progress,
/// or look for a node that is due and start on it. The tracker lives as
/// long as the leader's term.
pub struct Purger<'a, W: World> {
    pub world: W,
    pub tracker: &'a mut Tracker,
    pub leader: &'a str,
    pub toleration: Toleration,
}

impl<W: World> Purger<'_, W> {
    /// One round at `wall` (unix seconds, for the records): returns the
    /// view for `status`.
    pub async fn round(&mut self, wall: u64) -> Result<View, ClusterError> {
        let now = Instant::now();
        let readings = self.world.readings().await?;
        let silences = self.tracker.observe(&readings, now);
        let (members, health) = self.world.members().await?;
        let judged = judge(readings, silences, self.toleration, self.leader, &members, &health);
        let mut view = View {
            at: wall,
            leader: self.leader.to_owned(),
            nodes: judged
                .iter()
                .map(|j| NodeView {
                    name: j.reading.name.clone(),
                    last_seen: wall.saturating_sub(j.silent.as_secs()),
                    assessment: j.assessment.clone(),
                    held_back: j.held_back.clone(),
                })
                .collect(),
            current: None,
            note: None,
            round_ms: None,
        };
        self.world.sweep_tombstoned_nodes().await;
        let (mut purge, mut rev) = match self.world.current().await? {
            Some(p) => p,
            None => match decide(&judged) {
                PurgeDecision::Nothing { why } => {
                    if let Some(why) = &why {
                        warn!(reason = %why, "lost node not purged");
                    }
                    view.note = why;
                    return Ok(view);
                }
                PurgeDecision::Start { node, lost_for } => {
                    let p = Purge {
                        node,
                        lost_for,
                        started_at: wall,
                        started_by: self.leader.to_owned(),
                        step: Step::Taint,
                        finished_at: None,
                        finished_by: None,
                    };
                    let Some(r) = self.world.advance(&p, 0).await? else { return Ok(view) };
                    warn!(node = %p.node.name, lost_for = %human(lost_for), "purging a lost node");
                    crate::metrics::count_purge("started");
                    (p, r)
                }
            },
        };
        let name = purge.node.name.clone();
        // Resume, step by step; each recorded before the next.
        while purge.step != Step::Done {
            if !self.world.holds_term().await {
                return Err(ClusterError::NotLeader(format!(
                    "the leadership was lost in the middle of purging {name}"
                )));
            }
            if purge.step.can_be_called_off() {
                let (heartbeat, kube) = self.world.reread(&name).await?;
                match recheck(&purge.node, heartbeat, &kube) {
                    Recheck::Proceed => {}
                    Recheck::Unsure(why) => {
                        warn!(node = %name, next = ?purge.step, reason = %why, "purge waits: the node cannot be read again");
                        view.current = Some(purge);
                        view.note = Some(format!("the purge of {name} waits: {why}"));
                        return Ok(view);
                    }
                    Recheck::CameBack(why) => {
                        // Its taint goes first: a NoExecute taint left on a
                        // live node would drain it for good.
                        self.world.taint(&name, false).await.map_err(|e| {
                            e.during(format!("{name} came back, but its out-of-service taint cannot be removed yet"))
                        })?;
                        self.world.call_off(rev).await?;
                        warn!(target: "audit", node = %name, done = purge.step.done_before(), reason = %why, "a lost node came back: its purge is called off");
                        crate::metrics::count_purge("called_off");
                        return Ok(view);
                    }
                }
            }
            let step = purge.step;
            self.step(&purge).await.map_err(|e| e.during(format!("purging {name} ({step:?})")))?;
            purge.step = step.next();
            if purge.step == Step::Done {
                purge.finished_at = Some(wall);
                purge.finished_by = Some(self.leader.to_owned());
            }
            match self.world.advance(&purge, rev).await? {
                Some(r) => rev = r,
                // Another leader took over meanwhile: it goes on.
                None => return Ok(view),
            }
            fault_after(purge.step).await;
        }
        self.world.finish(&purge).await?;
        crate::metrics::count_purge("finished");
        Ok(view)
    }

    async fn step(&mut self, p: &Purge) -> Result<(), ClusterError> {
        let name = p.node.name.as_str();
        match p.step {
            Step::Taint => self.world.taint(name, true).await,
            Step::DeletePods => self.world.delete_pods(name).await,
            Step::RemoveMember if p.node.role == super::Role::Master => {
                self.world.remove_member(&p.node, self.leader).await
            }
            Step::RemoveMember => Ok(()),
            Step::Unregister => self.world.unregister(name).await,
            Step::DeleteNode => {
                // Registered again: the node joined again after its record
                // went, and its kubelet's Node is the new one.
                if self.world.registered(name).await? {
                    info!(node = %name, "joined again during its purge: its Node stays");
                    return Ok(());
                }
                self.world.delete_node(name).await
            }
            Step::Tombstone => {
                let t = Tombstone {
                    purged_at: crate::host::clock::now_secs(),
                    lost_for: p.lost_for,
                    by: self.leader.to_owned(),
                };
                if !self.world.tombstone(name, &t).await? {
                    info!(node = %name, "joined again during its purge: no tombstone");
                }
                Ok(())
            }
            Step::Done => Ok(()),
        }
    }
}
