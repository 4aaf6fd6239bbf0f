//! The purge's decisions, pure: how long each node has been silent as the
//! leader itself saw it, whether it is lost, whether a guard holds it back,
//! and whether a purge under way may take its next irreversible step.
//!
//! Staleness is never judged by comparing clocks of different hosts. A
//! heartbeat is stamped by the node's (or a master's) clock, a Lease by the
//! kubelet's: the leader only asks whether a value *changed*, and times the
//! silence on its own monotonic clock, as the node lifecycle controller does
//! with its probe timestamps. A skewed clock cannot make a live node look
//! lost, and a new leader watches for a full toleration before it purges.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::super::Role;
use crate::config::Toleration;
use crate::etcd::membership::{self, Probe};
use crate::etcd::Member;

/// A node counts as alive while either signal changed within this long.
pub const STALE_AFTER: u64 = 15;

/// A node's Kubernetes sign of life, as read this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeSignal {
    /// The freshest of its Lease's `renewTime` and its Ready condition's
    /// heartbeat (unix seconds by the kubelet's clock: compared only for
    /// change).
    Seen(u64),
    /// Neither a Lease nor a Node: nothing of Kubernetes speaks for the node
    /// (an etcd-only master, a cluster without Kubernetes).
    Absent,
    /// It could not be read (the API servers unreachable, an error, a time
    /// that does not parse): the node cannot be judged, so it is not purged.
    Unknown(String),
}

impl KubeSignal {
    pub fn value(&self) -> Option<u64> {
        match self {
            KubeSignal::Seen(v) => Some(*v),
            _ => None,
        }
    }
}

/// One reading of one node's two signals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub name: String,
    pub role: Role,
    pub address: IpAddr,
    /// The hakube heartbeat in the registry, as written.
    pub heartbeat_at: u64,
    pub kube: KubeSignal,
}

/// What a purge records of its node when it starts (etcd: the purge
/// record), to tell later whether the node came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub name: String,
    pub role: Role,
    pub address: IpAddr,
    /// The hakube heartbeat (registry) when the purge started.
    pub heartbeat_at: u64,
    /// The Kubernetes signal when the purge started, when there was one.
    pub kube_seen_at: Option<u64>,
}

impl From<&Reading> for Observed {
    fn from(r: &Reading) -> Self {
        Observed {
            name: r.name.clone(),
            role: r.role,
            address: r.address,
            heartbeat_at: r.heartbeat_at,
            kube_seen_at: r.kube.value(),
        }
    }
}

/// When the leader last saw each node's signals change, on its own clock.
/// Kept for one term: a new leader starts by assuming every node was just
/// seen.
#[derive(Debug, Default)]
pub struct Tracker {
    nodes: HashMap<String, Track>,
}

#[derive(Debug)]
struct Track {
    heartbeat_at: u64,
    kube: Option<u64>,
    changed: Instant,
}

impl Tracker {
    /// Takes in this round's readings (forgetting nodes no longer
    /// registered) and returns how long each has been silent.
    pub fn observe(&mut self, readings: &[Reading], now: Instant) -> Vec<Duration> {
        self.nodes.retain(|name, _| readings.iter().any(|r| &r.name == name));
        readings
            .iter()
            .map(|r| {
                let t = self.nodes.entry(r.name.clone()).or_insert_with(|| Track {
                    heartbeat_at: r.heartbeat_at,
                    kube: r.kube.value(),
                    changed: now,
                });
                let mut changed = r.heartbeat_at != t.heartbeat_at;
                t.heartbeat_at = r.heartbeat_at;
                // An unknown signal changes nothing: the last value read stays.
                if let Some(v) = r.kube.value() {
                    changed |= t.kube != Some(v);
                    t.kube = Some(v);
                }
                if changed {
                    t.changed = now;
                }
                now.saturating_duration_since(t.changed)
            })
            .collect()
    }
}

/// Where a node stands (pure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Assessment {
    Alive,
    /// Both signals silent, not yet for the toleration.
    Lost {
        lost_for: u64,
        purge_in: Option<u64>,
    },
    /// Lost for longer than the toleration.
    Due {
        lost_for: u64,
    },
    /// Its heartbeat is silent and its Kubernetes signal cannot be read:
    /// it cannot be judged, and a node that cannot be judged is never
    /// purged.
    Unknown {
        silent_for: u64,
        why: String,
    },
}

pub fn assess(silent: Duration, kube: &KubeSignal, toleration: Toleration) -> Assessment {
    let silent = silent.as_secs();
    if silent <= STALE_AFTER {
        return Assessment::Alive;
    }
    if let KubeSignal::Unknown(why) = kube {
        return Assessment::Unknown { silent_for: silent, why: why.clone() };
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
    members
        .iter()
        .find(|m| m.name == o.name || m.peer_urls.iter().any(|u| crate::etcd::host_of_url(u) == Some(host.as_str())))
}

/// What the leader does about the nodes this round, when no purge is under
/// way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeDecision {
    /// Start purging this node (the one silent longest that no guard holds
    /// back), recording what it was last seen as.
    Start { node: Observed, lost_for: u64 },
    /// Nothing to purge; why, when something was held back.
    Nothing { why: Option<String> },
}

/// One node's place in the round: its reading, how long it has been silent
/// (the leader's clock), its assessment and what holds it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub reading: Reading,
    pub silent: Duration,
    pub assessment: Assessment,
    pub held_back: Option<String>,
}

pub fn judge(
    readings: Vec<Reading>,
    silences: Vec<Duration>,
    toleration: Toleration,
    leader: &str,
    members: &[Member],
    health: &[(Member, Probe)],
) -> Vec<Judged> {
    readings
        .into_iter()
        .zip(silences)
        .map(|(reading, silent)| {
            let assessment = assess(silent, &reading.kube, toleration);
            let held_back = match assessment {
                Assessment::Due { .. } => guard(&Observed::from(&reading), leader, members, health).err(),
                _ => None,
            };
            Judged { reading, silent, assessment, held_back }
        })
        .collect()
}

pub fn decide(judged: &[Judged]) -> PurgeDecision {
    let due = judged
        .iter()
        .filter(|j| matches!(j.assessment, Assessment::Due { .. }) && j.held_back.is_none())
        .max_by_key(|j| j.silent);
    match due {
        Some(j) => PurgeDecision::Start { node: Observed::from(&j.reading), lost_for: j.silent.as_secs() },
        None => {
            let why: Vec<String> = judged
                .iter()
                .filter_map(|j| match (&j.assessment, &j.held_back) {
                    (_, Some(why)) => Some(format!("{} is held back: {why}", j.reading.name)),
                    (Assessment::Unknown { why, .. }, _) => {
                        Some(format!("{} cannot be judged (its Kubernetes signal: {why})", j.reading.name))
                    }
                    _ => None,
                })
                .collect();
            PurgeDecision::Nothing { why: (!why.is_empty()).then(|| why.join("; ")) }
        }
    }
}

/// Whether a purge under way may take its next irreversible step, judged
/// on a reading of its one node taken right before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recheck {
    Proceed,
    /// A signal moved since the purge started: the node is back, the purge
    /// is called off.
    CameBack(String),
    /// The node cannot be judged now: nothing is done this round.
    Unsure(String),
}

/// `heartbeat_at` is the registry's value now (None: no record any more).
pub fn recheck(recorded: &Observed, heartbeat_at: Option<u64>, kube: &KubeSignal) -> Recheck {
    if let Some(h) = heartbeat_at.filter(|h| *h != recorded.heartbeat_at) {
        return Recheck::CameBack(format!(
            "its hakube heartbeat moved (from {} to {h}) since the purge started",
            recorded.heartbeat_at
        ));
    }
    match kube {
        KubeSignal::Unknown(why) => Recheck::Unsure(format!("its Kubernetes signal cannot be read: {why}")),
        KubeSignal::Seen(v) if Some(*v) != recorded.kube_seen_at => {
            Recheck::CameBack("its kubelet renewed its Lease since the purge started".into())
        }
        _ => Recheck::Proceed,
    }
}
