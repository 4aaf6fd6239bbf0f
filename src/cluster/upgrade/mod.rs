//! The plan of a Kubernetes upgrade, as the elected agent will drive it:
//! which upgrades Kubernetes' version skew policy allows, and which node
//! moves next. Pure: it reads the versions every node reports and decides.
//! The record of an upgrade is [`record`], the elected agent's round that
//! follows this plan is [`drive`], and each node's own move (fetching the
//! bundle, restarting its part from it) is [`crate::agent::upgrade`].
//!
//! The order is upstream's (kubernetes.io "Version Skew Policy", "Upgrading
//! kubeadm clusters"): the control plane first, one master at a time
//! (kube-apiserver, then kube-controller-manager and kube-scheduler), each
//! step gated on every master being healthy; only when every API server
//! runs the target do the kubelets and kube-proxies move, one node at a
//! time, masters' included. So at no instant is a kubelet newer than an
//! API server, API servers are never more than one minor apart, and a
//! controller-manager or scheduler, which talk to their own node's API
//! server, is never newer than it (a master's step restarts its API server
//! first).

pub mod drive;
pub mod record;

use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::cluster::Role;
use crate::kube::version::KubeVersion;

/// A build of hakube: its version, and the SHA-256 of its binary (two
/// builds of one version differ by their digest). An upgrade whose bundle
/// carries another build moves every agent to it at its node's step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub version: String,
    pub sha256: String,
}

impl Build {
    /// Whether an agent running `self` moves to `target`: another binary,
    /// and not of an older version (hakube never goes back by itself; a
    /// bundle that carries an older hakube moves Kubernetes alone).
    pub fn moves_to(&self, target: &Build) -> bool {
        self.sha256 != target.sha256 && !older(&target.version, &self.version)
    }

    /// `version 0.1.0 (sha256 0123456789ab)`, for people.
    pub fn short(&self) -> String {
        format!("{} ({})", self.version, &self.sha256[..self.sha256.len().min(12)])
    }

    /// The build this process runs: its version, and the digest of the
    /// binary it was started from (`/proc/self/exe`, which names the file
    /// it runs even after another was put in its place).
    pub fn of_this_process() -> Result<Build, String> {
        let sha256 = crate::runtime::images::sha256_file(std::path::Path::new("/proc/self/exe"))?;
        Ok(Build { version: env!("CARGO_PKG_VERSION").to_owned(), sha256 })
    }
}

/// Whether version `a` is older than `b` (`MAJOR.MINOR.PATCH`, anything
/// after a `-` or `+` ignored). Unreadable versions are never older.
fn older(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let core = v.trim_start_matches('v').split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
        let t = (it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(t)
    };
    matches!((parse(a), parse(b)), (Some(x), Some(y)) if x < y)
}

static RUNNING: OnceLock<Build> = OnceLock::new();

/// The build this agent runs, once [`set_running`] recorded it (the agent
/// does at start).
pub fn running() -> Option<&'static Build> {
    RUNNING.get()
}

pub fn set_running(b: Build) {
    let _ = RUNNING.set(b);
}

/// What one node runs, as its agent reports it (None: not run there, or
/// not known yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVersions {
    pub name: String,
    pub role: Role,
    /// Its agent reported within the staleness bound and every component
    /// it runs is healthy.
    pub healthy: bool,
    pub apiserver: Option<KubeVersion>,
    pub controller_manager: Option<KubeVersion>,
    pub scheduler: Option<KubeVersion>,
    pub kubelet: Option<KubeVersion>,
    pub kube_proxy: Option<KubeVersion>,
    /// The hakube its agent runs (None: an agent too old to say).
    pub hakube: Option<Build>,
}

impl NodeVersions {
    fn control_plane(&self) -> impl Iterator<Item = KubeVersion> + '_ {
        [self.apiserver, self.controller_manager, self.scheduler].into_iter().flatten()
    }

    fn node_components(&self) -> impl Iterator<Item = KubeVersion> + '_ {
        [self.kubelet, self.kube_proxy].into_iter().flatten()
    }

    fn all(&self) -> impl Iterator<Item = KubeVersion> + '_ {
        self.control_plane().chain(self.node_components())
    }
}

/// Why an upgrade to a target is refused before it starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{node}'s {component} is {found}: {target} would skip {skipped}; upgrade one minor at a time \
         (first to the newest v{}.{}.x)",
        found.major,
        found.minor + 1
    )]
    SkipsMinor { node: String, component: &'static str, found: KubeVersion, target: KubeVersion, skipped: String },
    #[error(
        "{node}'s {component} is {found}, newer than {target}: Kubernetes does not support going back a minor \
         (restore a snapshot taken before the upgrade instead)"
    )]
    Downgrade { node: String, component: &'static str, found: KubeVersion, target: KubeVersion },
    #[error("{node} is not healthy: an upgrade starts only when every node is (`hakube status` says what is wrong)")]
    Unhealthy { node: String },
    #[error("no node reports its versions yet: nothing to upgrade from")]
    Unknown,
}

fn named(n: &NodeVersions) -> [(&'static str, Option<KubeVersion>); 5] {
    [
        ("kube-apiserver", n.apiserver),
        ("kube-controller-manager", n.controller_manager),
        ("kube-scheduler", n.scheduler),
        ("kubelet", n.kubelet),
        ("kube-proxy", n.kube_proxy),
    ]
}

/// Whether the cluster may start moving to `target`: every node healthy,
/// no component more than one minor behind it (no skipped minor: upstream
/// tests each minor's upgrade from the previous one only) and none a minor
/// ahead (a patch downgrade within a minor is allowed). Every refusal is
/// listed, so one run tells the operator all that stands in the way.
pub fn preflight(target: KubeVersion, nodes: &[NodeVersions]) -> Result<(), Vec<Refusal>> {
    let mut out = vec![];
    if nodes.iter().all(|n| n.all().next().is_none()) {
        return Err(vec![Refusal::Unknown]);
    }
    for n in nodes {
        if !n.healthy {
            out.push(Refusal::Unhealthy { node: n.name.clone() });
        }
        for (component, v) in named(n) {
            let Some(found) = v else { continue };
            let behind = (target.major, target.minor) > (found.major, found.minor + 1);
            if found.major != target.major || behind {
                let skipped = (found.minor + 1..target.minor).map(|m| format!("v{}.{m}", found.major)).collect();
                let skipped: Vec<String> = skipped;
                out.push(Refusal::SkipsMinor {
                    node: n.name.clone(),
                    component,
                    found,
                    target,
                    skipped: skipped.join(", "),
                });
            } else if (found.major, found.minor) > (target.major, target.minor) {
                out.push(Refusal::Downgrade { node: n.name.clone(), component, found, target });
            }
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

/// The next move of an upgrade under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// This master's control plane (kube-apiserver, controller-manager,
    /// scheduler) moves to the target.
    ControlPlane(String),
    /// This node's kubelet and kube-proxy move to the target.
    Node(String),
    /// Nothing moves this round, for this reason.
    Wait(String),
    /// Every node that is up runs the target; those listed were down and
    /// move when they come back.
    Done { pending: Vec<String> },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::ControlPlane(n) => write!(f, "{n}'s control plane"),
            Step::Node(n) => write!(f, "{n}'s kubelet and kube-proxy"),
            Step::Wait(why) => write!(f, "waiting: {why}"),
            Step::Done { pending } if pending.is_empty() => f.write_str("done"),
            Step::Done { pending } => write!(f, "done but for {} (down: upgraded when back)", pending.join(", ")),
        }
    }
}

/// The next step towards `target`. Masters' control planes first, in name
/// order, each only while every master is healthy (the one that moved
/// last included: the gate is what makes it one at a time); then every
/// node's kubelet and kube-proxy, once no API server is older than the
/// target, skipping nodes that are down (they are listed in `Done`).
pub fn next(target: KubeVersion, nodes: &[NodeVersions]) -> Step {
    let behind = |v: KubeVersion| v != target;
    let mut nodes: Vec<&NodeVersions> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let masters: Vec<&&NodeVersions> = nodes.iter().filter(|n| n.role == Role::Master).collect();
    if let Some(m) = masters.iter().find(|m| m.control_plane().any(behind)) {
        if let Some(sick) = masters.iter().find(|m| !m.healthy) {
            return Step::Wait(format!(
                "{} is not healthy: the control plane moves one healthy master at a time",
                sick.name
            ));
        }
        return Step::ControlPlane(m.name.clone());
    }
    // Every API server that reports runs the target now.
    if let Some(sick) = masters.iter().find(|m| !m.healthy) {
        return Step::Wait(format!("{} is not healthy: kubelets move only under a healthy control plane", sick.name));
    }
    let mut pending = vec![];
    for n in &nodes {
        if !n.node_components().any(behind) {
            continue;
        }
        if n.healthy {
            return Step::Node(n.name.clone());
        }
        pending.push(n.name.clone());
    }
    Step::Done { pending }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_moves_to_another_build_of_its_version_or_a_newer_one_never_an_older() {
        let b = |v: &str, sha: &str| Build { version: v.into(), sha256: sha.into() };
        assert!(b("0.1.0", "a").moves_to(&b("0.1.0", "b")), "another build of the same version");
        assert!(b("0.1.0", "a").moves_to(&b("0.2.0", "b")));
        assert!(b("0.9.9", "a").moves_to(&b("0.10.0", "b")), "numbers, not text");
        assert!(!b("0.1.0", "a").moves_to(&b("0.1.0", "a")), "the same binary");
        assert!(!b("0.2.0", "a").moves_to(&b("0.1.9", "b")), "never back");
        assert!(b("0.2.0-rc.1", "a").moves_to(&b("0.2.0", "b")));
        assert!(b("0.2.0", "a").moves_to(&b("garbled", "b")), "an unreadable version is not older");
    }

    const V36: KubeVersion = KubeVersion::new(1, 36, 3);
    const V37: KubeVersion = KubeVersion::new(1, 37, 2);

    fn node(name: &str, role: Role, cp: KubeVersion, kubelet: KubeVersion) -> NodeVersions {
        let master = role == Role::Master;
        NodeVersions {
            name: name.into(),
            role,
            healthy: true,
            apiserver: master.then_some(cp),
            controller_manager: master.then_some(cp),
            scheduler: master.then_some(cp),
            kubelet: Some(kubelet),
            kube_proxy: Some(kubelet),
            hakube: None,
        }
    }

    fn cluster(v: KubeVersion) -> Vec<NodeVersions> {
        vec![
            node("m1", Role::Master, v, v),
            node("m2", Role::Master, v, v),
            node("m3", Role::Master, v, v),
            node("w1", Role::Worker, v, v),
            node("w2", Role::Worker, v, v),
        ]
    }

    /// Applies `step` as the node's agent would.
    fn apply(nodes: &mut [NodeVersions], step: &Step, target: KubeVersion) {
        match step {
            Step::ControlPlane(n) => {
                let m = nodes.iter_mut().find(|x| &x.name == n).unwrap();
                m.apiserver = Some(target);
                m.controller_manager = Some(target);
                m.scheduler = Some(target);
            }
            Step::Node(n) => {
                let m = nodes.iter_mut().find(|x| &x.name == n).unwrap();
                m.kubelet = Some(target);
                m.kube_proxy = Some(target);
            }
            _ => panic!("nothing to apply: {step}"),
        }
    }

    /// Kubernetes' skew rules at one instant, for hakube's topology: API
    /// servers within one minor of each other; a kubelet or kube-proxy
    /// (through the node-local balancer, to any API server) never newer
    /// than the oldest API server; a controller-manager or scheduler (to
    /// its own node's API server, `kube::kubeconfig::server_for`) never
    /// newer than that one.
    fn within_skew(nodes: &[NodeVersions]) -> bool {
        let apis: Vec<KubeVersion> = nodes.iter().filter_map(|n| n.apiserver).collect();
        let (oldest, newest) = (apis.iter().min().unwrap(), apis.iter().max().unwrap());
        let minor = |v: &KubeVersion| (v.major, v.minor);
        newest.minor - oldest.minor <= 1
            && nodes.iter().all(|n| {
                n.node_components().all(|v| minor(&v) <= minor(oldest))
                    && [n.controller_manager, n.scheduler]
                        .into_iter()
                        .flatten()
                        .all(|v| n.apiserver.is_some_and(|a| minor(&v) <= minor(&a)))
            })
    }

    #[test]
    fn one_minor_up_moves_every_control_plane_first_one_at_a_time_then_every_node() {
        let mut nodes = cluster(V36);
        preflight(V37, &nodes).expect("one minor up is allowed");
        let mut order = vec![];
        loop {
            let step = next(V37, &nodes);
            if let Step::Done { pending } = &step {
                assert!(pending.is_empty());
                break;
            }
            order.push(step.to_string());
            apply(&mut nodes, &step, V37);
            assert!(within_skew(&nodes), "out of skew after {step}: {nodes:?}");
        }
        assert_eq!(
            order,
            [
                "m1's control plane",
                "m2's control plane",
                "m3's control plane",
                "m1's kubelet and kube-proxy",
                "m2's kubelet and kube-proxy",
                "m3's kubelet and kube-proxy",
                "w1's kubelet and kube-proxy",
                "w2's kubelet and kube-proxy",
            ]
        );
        assert!(nodes.iter().all(|n| n.all().all(|v| v == V37)));
    }

    #[test]
    fn an_unhealthy_master_holds_the_control_plane_and_a_down_worker_is_left_for_later() {
        let mut nodes = cluster(V36);
        apply(&mut nodes, &Step::ControlPlane("m1".into()), V37);
        nodes[0].healthy = false; // m1 came back unhealthy after its move
        assert_eq!(
            next(V37, &nodes),
            Step::Wait("m1 is not healthy: the control plane moves one healthy master at a time".into())
        );
        nodes[0].healthy = true;
        for m in ["m2", "m3"] {
            assert_eq!(next(V37, &nodes), Step::ControlPlane(m.into()));
            apply(&mut nodes, &Step::ControlPlane(m.into()), V37);
        }
        nodes[4].healthy = false; // w2 is down
        while let step @ (Step::Node(_) | Step::ControlPlane(_)) = next(V37, &nodes) {
            assert_ne!(step, Step::Node("w2".into()));
            apply(&mut nodes, &step, V37);
        }
        assert_eq!(next(V37, &nodes), Step::Done { pending: vec!["w2".into()] });
        assert_eq!(next(V37, &nodes).to_string(), "done but for w2 (down: upgraded when back)");
        nodes[4].healthy = true; // back: it moves
        assert_eq!(next(V37, &nodes), Step::Node("w2".into()));
    }

    #[test]
    fn skipped_minors_downgrades_and_unhealthy_nodes_are_refused_and_all_named() {
        let nodes = cluster(KubeVersion::new(1, 35, 4));
        let e = preflight(V37, &nodes).unwrap_err();
        assert_eq!(e.len(), 5 * 3 + 2 * 2, "every component of every node: {e:?}");
        assert_eq!(
            e[0].to_string(),
            "m1's kube-apiserver is v1.35.4: v1.37.2 would skip v1.36; upgrade one minor at a time (first to the newest v1.36.x)"
        );
        let e = preflight(V36, &cluster(V37)).unwrap_err();
        assert!(e[0].to_string().starts_with("m1's kube-apiserver is v1.37.2, newer than v1.36.3"), "{}", e[0]);
        // A patch within the minor, either way, is fine.
        preflight(KubeVersion::new(1, 37, 1), &cluster(V37)).unwrap();
        preflight(KubeVersion::new(1, 37, 3), &cluster(V37)).unwrap();
        let mut sick = cluster(V36);
        sick[3].healthy = false;
        assert_eq!(preflight(V37, &sick).unwrap_err(), [Refusal::Unhealthy { node: "w1".into() }]);
        assert_eq!(preflight(V37, &[]).unwrap_err(), [Refusal::Unknown]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A cluster somewhere in an upgrade from 1.36.3 to 1.37.2 that
        /// the planner itself could have left (so within skew): each
        /// master's control plane moved or not, and kubelets moved only if
        /// every control plane had; any node healthy or not.
        fn mid_upgrade() -> impl Strategy<Value = Vec<NodeVersions>> {
            (1usize..=5, 0usize..=4, any::<u64>(), any::<u64>()).prop_map(|(masters, workers, moved, healthy)| {
                let total = masters + workers;
                let mut nodes: Vec<NodeVersions> = (0..total)
                    .map(|i| {
                        let (name, role) = if i < masters {
                            (format!("m{}", i + 1), Role::Master)
                        } else {
                            (format!("w{}", i - masters + 1), Role::Worker)
                        };
                        let mut n = node(&name, role, V36, V36);
                        n.healthy = healthy >> i & 1 == 1;
                        n
                    })
                    .collect();
                let cps = (moved as usize) % (masters + 1);
                for n in nodes.iter_mut().filter(|n| n.role == Role::Master).take(cps) {
                    let step = Step::ControlPlane(n.name.clone());
                    apply(std::slice::from_mut(n), &step, V37);
                }
                if cps == masters {
                    let kubelets = ((moved >> 8) as usize) % (total + 1);
                    for n in nodes.iter_mut().take(kubelets) {
                        let step = Step::Node(n.name.clone());
                        apply(std::slice::from_mut(n), &step, V37);
                    }
                }
                nodes
            })
        }

        proptest! {
            /// From any state it could have left, with health changing at
            /// random between rounds, the planner never takes the cluster
            /// out of skew, never moves an unhealthy node nor anything while
            /// a master is unhealthy, and once every
            /// node stays healthy it finishes within one step per node and
            /// component group.
            #[test]
            fn any_run_stays_in_skew_and_finishes_once_nodes_are_healthy(
                mut nodes in mid_upgrade(),
                flaps in proptest::collection::vec(any::<u64>(), 0..20),
            ) {
                for flap in flaps {
                    for (i, n) in nodes.iter_mut().enumerate() {
                        n.healthy = flap >> i & 1 == 1;
                    }
                    let step = next(V37, &nodes);
                    match &step {
                        Step::ControlPlane(n) | Step::Node(n) => {
                            prop_assert!(nodes.iter().any(|x| &x.name == n && x.healthy), "moved unhealthy {n}");
                            let masters_healthy = nodes.iter().filter(|x| x.role == Role::Master).all(|x| x.healthy);
                            prop_assert!(masters_healthy, "{step} while a master is not healthy");
                            apply(&mut nodes, &step, V37);
                        }
                        Step::Wait(_) | Step::Done { .. } => {}
                    }
                    prop_assert!(within_skew(&nodes), "out of skew after {step}: {nodes:?}");
                }
                for n in nodes.iter_mut() {
                    n.healthy = true;
                }
                let bound = 2 * nodes.len();
                for _ in 0..=bound {
                    match next(V37, &nodes) {
                        Step::Done { pending } => {
                            prop_assert!(pending.is_empty());
                            prop_assert!(nodes.iter().all(|n| n.all().all(|v| v == V37)));
                            return Ok(());
                        }
                        Step::Wait(why) => prop_assert!(false, "waits with every node healthy: {why}"),
                        step => {
                            apply(&mut nodes, &step, V37);
                            prop_assert!(within_skew(&nodes), "out of skew after {step}");
                        }
                    }
                }
                prop_assert!(false, "not done within {bound} steps");
            }
        }
    }
}
