//! The purge against a recording fake of its world, in paused time: the
//! decisions (unknown is not stale, clocks are not compared, a new leader
//! waits), the order of the steps, and every way a purge is called off.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::decide::{assess, guard};
use super::*;
use crate::cluster::Role;
use crate::etcd::membership::Probe;
use crate::etcd::Member;

const TOLERATION: u64 = 60;

fn after(secs: u64) -> Toleration {
    Toleration::After(Duration::from_secs(secs))
}

/// What the fake cluster holds; `log` records every change, in order.
#[derive(Default)]
struct State {
    /// name → (role, heartbeat as written)
    records: BTreeMap<String, (Role, u64)>,
    /// Kubernetes signals (absent: no Lease nor Node).
    kube: BTreeMap<String, KubeSignal>,
    /// Registered Nodes and their taints.
    nodes: BTreeSet<String>,
    tainted: BTreeSet<String>,
    pods: BTreeMap<String, Vec<String>>,
    members: Vec<Member>,
    health: Vec<(Member, Probe)>,
    current: Option<(Purge, i64)>,
    revision: i64,
    history: Vec<Purge>,
    tombstones: BTreeSet<String>,
    term_lost: bool,
    /// A call (by name) that fails once.
    fail: Option<&'static str>,
    log: Vec<String>,
    rereads: usize,
}

type Hook = Box<dyn FnMut(&mut State, &str)>;

/// The fake world: `hook` runs at every call, named, before it answers,
/// so a test can make a node come back at an exact point of a purge.
struct Fake {
    s: State,
    hook: Option<Hook>,
}

impl Fake {
    fn new() -> Self {
        Fake { s: State::default(), hook: None }
    }

    fn worker(mut self, name: &str, heartbeat: u64, kube: KubeSignal) -> Self {
        self.s.records.insert(name.into(), (Role::Worker, heartbeat));
        self.s.kube.insert(name.into(), kube);
        self.s.nodes.insert(name.into());
        self.s.pods.insert(name.into(), vec![format!("{name}-db-0")]);
        self
    }

    fn on(&mut self, call: &str) -> Result<(), ClusterError> {
        if let Some(mut h) = self.hook.take() {
            h(&mut self.s, call);
            self.hook = Some(h);
        }
        if self.s.fail == Some(call) {
            self.s.fail = None;
            return Err(ClusterError::Etcd(EtcdError::Call {
                endpoint: "fake".into(),
                message: format!("{call} failed (injected)"),
            }));
        }
        Ok(())
    }

    fn beat(&mut self, name: &str) {
        beat(&mut self.s, name);
    }
}

fn beat(s: &mut State, name: &str) {
    if let Some(r) = s.records.get_mut(name) {
        r.1 += 3;
    }
}

impl World for &mut Fake {
    async fn readings(&mut self) -> Result<Vec<Reading>, ClusterError> {
        self.on("readings")?;
        Ok(self
            .s
            .records
            .iter()
            .map(|(name, (role, hb))| Reading {
                name: name.clone(),
                role: *role,
                address: "10.0.0.21".parse().unwrap(),
                heartbeat_at: *hb,
                kube: self.s.kube.get(name).cloned().unwrap_or(KubeSignal::Absent),
            })
            .collect())
    }

    async fn reread(&mut self, name: &str) -> Result<(Option<u64>, KubeSignal), ClusterError> {
        self.s.rereads += 1;
        self.on("reread")?;
        let kube = self.s.kube.get(name).cloned().unwrap_or(KubeSignal::Absent);
        Ok((self.s.records.get(name).map(|r| r.1), kube))
    }

    async fn members(&mut self) -> Result<(Vec<Member>, Vec<(Member, Probe)>), ClusterError> {
        self.on("members")?;
        Ok((self.s.members.clone(), self.s.health.clone()))
    }

    async fn holds_term(&mut self) -> bool {
        self.on("holds_term").is_ok() && !self.s.term_lost
    }

    async fn current(&mut self) -> Result<Option<(Purge, i64)>, ClusterError> {
        self.on("current")?;
        Ok(self.s.current.clone())
    }

    async fn advance(&mut self, p: &Purge, rev: i64) -> Result<Option<i64>, ClusterError> {
        self.on("advance")?;
        let at = self.s.current.as_ref().map_or(0, |c| c.1);
        if at != rev {
            return Ok(None);
        }
        self.s.revision += 1;
        self.s.current = Some((p.clone(), self.s.revision));
        Ok(Some(self.s.revision))
    }

    async fn call_off(&mut self, rev: i64) -> Result<(), ClusterError> {
        self.on("call_off")?;
        if self.s.current.as_ref().is_some_and(|c| c.1 == rev) {
            let (p, _) = self.s.current.take().unwrap();
            self.s.log.push(format!("call-off {}", p.node.name));
        }
        Ok(())
    }

    async fn finish(&mut self, p: &Purge) -> Result<(), ClusterError> {
        self.on("finish")?;
        self.s.current = None;
        self.s.history.push(p.clone());
        self.s.log.push(format!("finish {}", p.node.name));
        Ok(())
    }

    async fn taint(&mut self, name: &str, on: bool) -> Result<(), ClusterError> {
        self.on(if on { "taint" } else { "untaint" })?;
        if !self.s.nodes.contains(name) {
            return Ok(());
        }
        let changed = if on { self.s.tainted.insert(name.into()) } else { self.s.tainted.remove(name) };
        if changed {
            self.s.log.push(format!("{} {name}", if on { "taint" } else { "untaint" }));
        }
        Ok(())
    }

    async fn delete_pods(&mut self, name: &str) -> Result<(), ClusterError> {
        self.on("delete_pods")?;
        if self.s.pods.remove(name).is_some() {
            self.s.log.push(format!("delete-pods {name}"));
        }
        Ok(())
    }

    async fn remove_member(&mut self, node: &Observed, leader: &str) -> Result<(), ClusterError> {
        self.on("remove_member")?;
        guard(node, leader, &self.s.members, &self.s.health).map_err(ClusterError::Held)?;
        let before = self.s.members.len();
        self.s.members.retain(|m| m.name != node.name);
        self.s.health.retain(|(m, _)| m.name != node.name);
        if self.s.members.len() < before {
            self.s.log.push(format!("remove-member {}", node.name));
        }
        Ok(())
    }

    async fn unregister(&mut self, name: &str) -> Result<(), ClusterError> {
        self.on("unregister")?;
        if self.s.records.remove(name).is_some() {
            self.s.log.push(format!("unregister {name}"));
        }
        Ok(())
    }

    async fn registered(&mut self, name: &str) -> Result<bool, ClusterError> {
        self.on("registered")?;
        Ok(self.s.records.contains_key(name))
    }

    async fn delete_node(&mut self, name: &str) -> Result<(), ClusterError> {
        self.on("delete_node")?;
        if self.s.nodes.remove(name) {
            self.s.log.push(format!("delete-node {name}"));
        }
        Ok(())
    }

    async fn tombstone(&mut self, name: &str, _t: &Tombstone) -> Result<bool, ClusterError> {
        self.on("tombstone")?;
        if self.s.records.contains_key(name) {
            return Ok(false);
        }
        self.s.tombstones.insert(name.into());
        self.s.log.push(format!("tombstone {name}"));
        Ok(true)
    }

    async fn sweep_tombstoned_nodes(&mut self) {}
}

/// Rounds every 2 s of paused time for `secs`, the leader's tracker kept;
/// `each` runs before every round (a live node beats there).
async fn rounds(fake: &mut Fake, tracker: &mut Tracker, secs: u64, mut each: impl FnMut(&mut Fake)) -> View {
    let mut view = View::default();
    let mut t = 0;
    while t < secs {
        each(fake);
        let mut p = Purger { world: &mut *fake, tracker, leader: "m1", toleration: after(TOLERATION) };
        view = p.round(1_800_000_000 + t).await.unwrap_or_else(|e| panic!("round at {t}s: {e}"));
        tokio::time::advance(Duration::from_secs(2)).await;
        t += 2;
    }
    view
}

fn state_of<'a>(view: &'a View, name: &str) -> &'a Assessment {
    &view.nodes.iter().find(|n| n.name == name).expect("viewed").assessment
}

#[tokio::test(start_paused = true)]
async fn a_lost_worker_is_purged_in_order_after_the_toleration() {
    let mut fake = Fake::new().worker("w1", 1000, KubeSignal::Seen(1000)).worker("w2", 1000, KubeSignal::Seen(1000));
    let mut tracker = Tracker::default();
    // w2 lives (its heartbeat moves), w1 is silent: nothing before the
    // toleration has passed on the leader's clock.
    let view = rounds(&mut fake, &mut tracker, TOLERATION, |f| f.beat("w2")).await;
    assert!(fake.s.log.is_empty(), "{:?}", fake.s.log);
    assert!(matches!(state_of(&view, "w1"), Assessment::Lost { .. }), "{view:?}");
    assert_eq!(state_of(&view, "w2"), &Assessment::Alive);
    rounds(&mut fake, &mut tracker, 6, |f| f.beat("w2")).await;
    assert_eq!(
        fake.s.log,
        ["taint w1", "delete-pods w1", "unregister w1", "delete-node w1", "tombstone w1", "finish w1"]
    );
    assert_eq!(fake.s.history[0].node.name, "w1");
    assert!(fake.s.history[0].lost_for > TOLERATION);
    assert!(fake.s.records.contains_key("w2") && fake.s.nodes.contains("w2"), "the live node is untouched");
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_kubernetes_signal_cannot_be_read_is_never_purged() {
    // w1's port 9443 is blocked (no hakube heartbeat) while its kubelet is
    // fine; the API servers do not answer: its signal is unknown, not stale.
    let mut fake =
        Fake::new().worker("w1", 1000, KubeSignal::Unknown("the API server at 10.0.0.11:6443 answered 503".into()));
    let mut tracker = Tracker::default();
    let view = rounds(&mut fake, &mut tracker, 10 * TOLERATION, |_| {}).await;
    assert!(fake.s.log.is_empty(), "{:?}", fake.s.log);
    assert!(matches!(state_of(&view, "w1"), Assessment::Unknown { .. }), "{view:?}");
    let note = view.note.expect("the view says why nothing is purged");
    assert!(note.contains("w1 cannot be judged") && note.contains("503"), "{note}");
    // Readable again and renewing: alive, never purged.
    let mut lease = 5000;
    rounds(&mut fake, &mut tracker, 3 * TOLERATION, |f| {
        lease += 10;
        f.s.kube.insert("w1".into(), KubeSignal::Seen(lease));
    })
    .await;
    assert!(fake.s.log.is_empty(), "{:?}", fake.s.log);
}

#[tokio::test(start_paused = true)]
async fn staleness_is_timed_on_the_leaders_clock_never_compared_across_hosts() {
    // w1's clock is two hours behind (its stamps look ancient) but moves:
    // alive. w2's clock is an hour ahead (its stamps look fresh) but stands
    // still: lost, and purged once the toleration has passed.
    let far_past = 1_800_000_000 - 7200;
    let future = 1_800_000_000 + 3600;
    let mut fake =
        Fake::new().worker("w1", far_past, KubeSignal::Seen(far_past)).worker("w2", future, KubeSignal::Seen(future));
    let mut tracker = Tracker::default();
    let mut lease = far_past;
    rounds(&mut fake, &mut tracker, TOLERATION + 10, |f| {
        lease += 2;
        f.s.kube.insert("w1".into(), KubeSignal::Seen(lease));
    })
    .await;
    assert_eq!(fake.s.history.iter().map(|p| p.node.name.as_str()).collect::<Vec<_>>(), ["w2"]);
    assert!(fake.s.records.contains_key("w1"));
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_watches_for_a_whole_toleration_before_it_purges() {
    // Silent for days by its stamps: a leader that just took over still
    // watches for the toleration on its own clock first.
    let mut fake = Fake::new().worker("w1", 1000, KubeSignal::Seen(1000));
    let mut tracker = Tracker::default();
    rounds(&mut fake, &mut tracker, TOLERATION, |_| {}).await;
    assert!(fake.s.log.is_empty(), "{:?}", fake.s.log);
    rounds(&mut fake, &mut tracker, 4, |_| {}).await;
    assert!(fake.s.log.contains(&"finish w1".to_owned()), "{:?}", fake.s.log);
}

/// w1 is due; the purge starts in the next round.
async fn due(fake: &mut Fake) -> Tracker {
    let mut tracker = Tracker::default();
    rounds(fake, &mut tracker, TOLERATION, |_| {}).await;
    assert!(fake.s.log.is_empty(), "{:?}", fake.s.log);
    tokio::time::advance(Duration::from_secs(2)).await;
    tracker
}

#[tokio::test(start_paused = true)]
async fn a_node_that_comes_back_right_before_the_taint_is_left_alone() {
    let mut fake = Fake::new().worker("w1", 1000, KubeSignal::Seen(1000));
    let mut tracker = due(&mut fake).await;
    // Its heartbeat moves between the decision and the first step.
    fake.hook = Some(Box::new(|s, call| {
        if call == "reread" && s.rereads == 1 {
            beat(s, "w1");
        }
    }));
    rounds(&mut fake, &mut tracker, 2, |_| {}).await;
    assert_eq!(fake.s.log, ["call-off w1"], "nothing done but calling it off");
    assert!(fake.s.current.is_none());
    assert!(fake.s.pods.contains_key("w1") && fake.s.records.contains_key("w1"));
}

#[tokio::test(start_paused = true)]
async fn a_node_that_comes_back_after_its_taint_gets_it_removed_and_keeps_its_pods() {
    let mut fake = Fake::new().worker("w1", 1000, KubeSignal::Seen(1000));
    let mut tracker = due(&mut fake).await;
    // Tainted, then its kubelet renews its Lease before its pods go; the
    // taint cannot be removed at first (the API server fails once).
    fake.hook = Some(Box::new(|s, call| {
        if call == "reread" && s.rereads == 2 {
            s.kube.insert("w1".into(), KubeSignal::Seen(1010));
            s.fail = Some("untaint");
        }
    }));
    let mut p = Purger { world: &mut fake, tracker: &mut tracker, leader: "m1", toleration: after(TOLERATION) };
    let e = p.round(1_800_000_100).await.unwrap_err();
    let e = e.to_string();
    assert!(e.contains("w1 came back") && e.contains("taint cannot be removed"), "{e}");
    assert_eq!(fake.s.log, ["taint w1"]);
    assert!(fake.s.current.is_some(), "the purge stays recorded until its taint is gone");
    // Next round: still back, the taint goes, then the record.
    rounds(&mut fake, &mut tracker, 2, |_| {}).await;
    assert_eq!(fake.s.log, ["taint w1", "untaint w1", "call-off w1"]);
    assert!(fake.s.current.is_none());
    assert!(fake.s.pods.contains_key("w1"), "its pods were never deleted");
}

#[tokio::test(start_paused = true)]
async fn a_purge_waits_while_its_node_cannot_be_read_again() {
    let mut fake = Fake::new().worker("w1", 1000, KubeSignal::Seen(1000));
    let mut tracker = due(&mut fake).await;
    // Before the pods go, the API servers stop answering.
    fake.hook = Some(Box::new(|s, call| {
        if call == "reread" && s.rereads == 2 {
            s.kube.insert("w1".into(), KubeSignal::Unknown("cannot reach the API server".into()));
        }
    }));
    let view = rounds(&mut fake, &mut tracker, 20, |_| {}).await;
    assert_eq!(fake.s.log, ["taint w1"], "nothing irreversible while it cannot be judged");
    assert!(view.note.as_deref().is_some_and(|n| n.contains("waits")), "{view:?}");
    assert_eq!(fake.s.current.as_ref().map(|c| c.0.step), Some(Step::DeletePods));
    // Readable again, unchanged: the purge goes on from where it stood.
    fake.s.kube.insert("w1".into(), KubeSignal::Seen(1000));
    rounds(&mut fake, &mut tracker, 2, |_| {}).await;
    assert_eq!(
        fake.s.log,
        ["taint w1", "delete-pods w1", "unregister w1", "delete-node w1", "tombstone w1", "finish w1"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_that_joins_again_during_the_purges_tail_keeps_its_node_and_gets_no_tombstone() {
    let mut fake = Fake::new().worker("w1", 1000, KubeSignal::Seen(1000));
    let mut tracker = due(&mut fake).await;
    // Reset and joined again right after its record went.
    fake.hook = Some(Box::new(|s, call| {
        if call == "registered" {
            s.records.insert("w1".into(), (Role::Worker, 9999));
            s.nodes.insert("w1".into());
        }
    }));
    rounds(&mut fake, &mut tracker, 2, |_| {}).await;
    assert_eq!(fake.s.log, ["taint w1", "delete-pods w1", "unregister w1", "finish w1"]);
    assert!(fake.s.nodes.contains("w1") && fake.s.tombstones.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_purge_stops_when_the_leadership_is_lost_and_is_resumed_where_it_stood() {
    let mut fake = Fake::new().worker("w1", 1000, KubeSignal::Seen(1000));
    let mut tracker = due(&mut fake).await;
    fake.hook = Some(Box::new(|s, call| {
        if call == "delete_pods" {
            s.term_lost = true;
        }
    }));
    let mut p = Purger { world: &mut fake, tracker: &mut tracker, leader: "m1", toleration: after(TOLERATION) };
    let e = p.round(1_800_000_100).await.unwrap_err();
    assert!(matches!(e, ClusterError::NotLeader(_)) && e.to_string().contains("leadership was lost"), "{e}");
    assert_eq!(fake.s.log, ["taint w1", "delete-pods w1"]);
    // Another leader, with a tracker of its own, resumes from the record.
    fake.hook = None;
    fake.s.term_lost = false;
    let mut fresh = Tracker::default();
    rounds(&mut fake, &mut fresh, 2, |_| {}).await;
    assert_eq!(
        fake.s.log,
        ["taint w1", "delete-pods w1", "unregister w1", "delete-node w1", "tombstone w1", "finish w1"]
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

#[tokio::test(start_paused = true)]
async fn a_lost_master_loses_its_member_only_while_quorum_holds() {
    let (m1, m2, m3) = (member(1, "m1"), member(2, "m2"), member(3, "m3"));
    let mut fake = Fake::new();
    for (name, _) in [("m1", 1), ("m2", 2), ("m3", 3)] {
        fake.s.records.insert(name.into(), (Role::Master, 1000));
    }
    fake.s.members = vec![m1.clone(), m2.clone(), m3.clone()];
    let down = Probe::Unhealthy("down".into());
    fake.s.health = vec![(m1, Probe::Healthy), (m2.clone(), down.clone()), (m3, down)];
    let mut tracker = Tracker::default();
    // m2 and m3 both lost: removing either costs quorum; held back, said so.
    let view = rounds(&mut fake, &mut tracker, TOLERATION + 10, |f| f.beat("m1")).await;
    assert!(fake.s.log.is_empty(), "{:?}", fake.s.log);
    let note = view.note.unwrap_or_default();
    assert!(note.contains("would cost quorum"), "{note}");
    // m2 is back as a voter (its agent still silent: nothing moves): m3 goes.
    fake.s.health[1] = (m2, Probe::Healthy);
    let view = rounds(&mut fake, &mut tracker, 4, |f| f.beat("m1")).await;
    assert_eq!(fake.s.log, ["remove-member m3", "unregister m3", "tombstone m3", "finish m3"]);
    assert!(view
        .nodes
        .iter()
        .any(|n| n.name == "m2" && n.held_back.as_deref().is_some_and(|h| h.contains("still answers"))));
}

fn node(name: &str, role: Role) -> Observed {
    Observed { name: name.into(), role, address: "10.0.0.21".parse().unwrap(), heartbeat_at: 0, kube_seen_at: None }
}

#[test]
fn a_node_is_lost_only_when_both_signals_stand_still() {
    let s = Duration::from_secs;
    let seen = KubeSignal::Seen(1);
    assert_eq!(assess(s(10), &seen, after(60)), Assessment::Alive);
    assert_eq!(assess(s(40), &seen, after(60)), Assessment::Lost { lost_for: 40, purge_in: Some(20) });
    assert_eq!(assess(s(70), &KubeSignal::Absent, after(60)), Assessment::Due { lost_for: 70 });
    assert_eq!(assess(s(9000), &seen, Toleration::Never), Assessment::Lost { lost_for: 9000, purge_in: None });
    let unknown = KubeSignal::Unknown("x".into());
    assert_eq!(assess(s(10), &unknown, after(60)), Assessment::Alive);
    assert_eq!(assess(s(9000), &unknown, after(60)), Assessment::Unknown { silent_for: 9000, why: "x".into() });
}

#[test]
fn a_purge_never_takes_the_leader_nor_a_master_whose_removal_costs_quorum() {
    let (m1, m2, m3) = (member(1, "m1"), member(2, "m2"), member(3, "m3"));
    let members = [m1.clone(), m2.clone(), m3.clone()];
    let up = Probe::Healthy;
    let down = Probe::Unhealthy("down".into());
    let lost_m3 = node("m3", Role::Master);
    // m3 down, m1 and m2 up: removing m3 leaves 2 healthy of 2.
    let health = [(m1.clone(), up.clone()), (m2.clone(), up.clone()), (m3.clone(), down.clone())];
    assert_eq!(guard(&lost_m3, "m1", &members, &health), Ok(()));
    // m2 down too (a second master of three): removing m3 would leave 1
    // healthy of 2, short of quorum.
    let health = [(m1.clone(), up.clone()), (m2.clone(), down.clone()), (m3.clone(), down)];
    let e = guard(&lost_m3, "m1", &members, &health).unwrap_err();
    assert!(e.contains("would cost quorum"), "{e}");
    // Never a master whose etcd member still answers: only its agent's
    // heartbeat is stale (seen: a loaded host's agent), and removing a
    // healthy voter weakens etcd.
    let health_m3_up = [(m1.clone(), up.clone()), (m2.clone(), up.clone()), (m3.clone(), up.clone())];
    let e = guard(&lost_m3, "m1", &members, &health_m3_up).unwrap_err();
    assert!(e.contains("its etcd member still answers"), "{e}");
    let learner_answer = [(m1.clone(), up.clone()), (m2.clone(), up.clone()), (m3.clone(), Probe::AnswersAsLearner)];
    assert!(guard(&lost_m3, "m1", &members, &learner_answer).is_err());
    // Never the leader.
    assert!(guard(&node("m1", Role::Master), "m1", &members, &health).is_err());
    // A worker has no member to weigh.
    assert_eq!(guard(&node("w1", Role::Worker), "m1", &members, &health), Ok(()));
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

/// The decision over many rounds of generated clusters: nodes that live,
/// die, have their heartbeat stuck while their kubelet renews, or whose
/// Kubernetes signal cannot be read for a while.
mod properties {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::decide::{decide, judge, KubeSignal, PurgeDecision, Reading, Tracker};
    use crate::cluster::Role;
    use crate::config::Toleration;

    const ROUNDS: usize = 80;
    /// The leader's round: every 5 s.
    const ROUND_SECS: u64 = 5;

    #[derive(Debug, Clone)]
    struct Node {
        master: bool,
        /// The round its host goes down for good (both signals stop).
        dies_at: Option<usize>,
        /// Its agent's heartbeat never moves (cut off from the masters' API)
        /// while its kubelet lives.
        heartbeat_stuck: bool,
        /// Rounds whose Kubernetes signal cannot be read.
        unknown: Vec<bool>,
    }

    fn node() -> impl Strategy<Value = Node> {
        (
            any::<bool>(),
            proptest::option::of(0..ROUNDS),
            any::<bool>(),
            proptest::collection::vec(proptest::bool::weighted(0.15), ROUNDS),
        )
            .prop_map(|(master, dies_at, heartbeat_stuck, unknown)| Node {
                master,
                dies_at,
                heartbeat_stuck,
                unknown,
            })
    }

    proptest! {
        /// A node whose kubelet renews is never purged, whatever its
        /// heartbeat does and however long its signal cannot be read; a
        /// node is purged only when read this round, silent for longer than
        /// the toleration; and a dead node read this round and silent past
        /// the toleration is purged (some purge starts).
        #[test]
        fn only_dead_nodes_are_purged_and_only_after_the_toleration(
            nodes in proptest::collection::vec(node(), 1..6),
            toleration in 20u64..200,
        ) {
            let start = tokio::time::Instant::now();
            let mut tracker = Tracker::default();
            for round in 0..ROUNDS {
                let now = start + Duration::from_secs(ROUND_SECS * round as u64);
                let readings: Vec<Reading> = nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let last_alive = n.dies_at.map_or(round, |d| round.min(d.saturating_sub(1)));
                        let kube = match n.unknown[round] {
                            true => KubeSignal::Unknown("the API servers do not answer".into()),
                            false => KubeSignal::Seen(1_000 + last_alive as u64),
                        };
                        let heartbeat_at = if n.heartbeat_stuck { 7 } else { 2_000 + last_alive as u64 };
                        Reading {
                            name: format!("n{i}"),
                            role: if n.master { Role::Master } else { Role::Worker },
                            address: std::net::IpAddr::from([10, 0, 0, 10 + i as u8]),
                            heartbeat_at,
                            kube,
                        }
                    })
                    .collect();
                let silences = tracker.observe(&readings, now);
                let judged = judge(readings, silences, Toleration::After(Duration::from_secs(toleration)), "leader", &[], &[]);
                let decision = decide(&judged);
                if let PurgeDecision::Start { node, lost_for } = &decision {
                    let i: usize = node.name[1..].parse().unwrap();
                    let n = &nodes[i];
                    let died = n.dies_at.filter(|d| *d <= round);
                    prop_assert!(died.is_some(), "round {round}: purged {} whose kubelet renews", node.name);
                    prop_assert!(!n.unknown[round], "round {round}: purged {} whose signal cannot be read", node.name);
                    prop_assert!(*lost_for > toleration, "round {round}: purged after {lost_for} s of {toleration}");
                }
                let overdue = judged.iter().any(|j| {
                    let i: usize = j.reading.name[1..].parse().unwrap();
                    !nodes[i].unknown[round] && j.silent.as_secs() > toleration
                });
                if overdue {
                    prop_assert!(matches!(decision, PurgeDecision::Start { .. }), "round {round}: an overdue node is not purged");
                }
            }
        }
    }
}
