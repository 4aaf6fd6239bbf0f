//! The elected agent's part in an upgrade: each round it reads what every
//! node reports (the versions its processes were started from, and its
//! health), asks the planner for the next step, and tells that node to
//! move by adding its name to the record. The node's own agent does the
//! rest ([`crate::agent::upgrade`]) and reports; the planner's health gate
//! makes the next step wait for it. Nothing else is kept: a new leader
//! reads the same record and the same reports, and goes on.

use etcd_client::Client;
use tracing::info;

use super::record::{self, Upgrade};
use super::{next, NodeVersions, Step};
use crate::cluster::purge::STALE_AFTER;
use crate::cluster::registry::NodeRecord;
use crate::etcd::EtcdError;
use crate::kube::version;

/// What the registry says of each node, for the planner: a node is
/// healthy when its last beat said so and came within [`STALE_AFTER`].
pub fn versions(records: &[NodeRecord], now: u64) -> Vec<NodeVersions> {
    records
        .iter()
        .map(|r| {
            let v = |name: &str| r.versions.get(name).and_then(|s| version::parse(s));
            NodeVersions {
                name: r.name.clone(),
                role: r.role,
                healthy: r.healthy == Some(true) && now.saturating_sub(r.heartbeat_at) <= STALE_AFTER,
                apiserver: v("kube-apiserver"),
                controller_manager: v("kube-controller-manager"),
                scheduler: v("kube-scheduler"),
                kubelet: v("kubelet"),
                kube_proxy: v("kube-proxy"),
                hakube: r.hakube.clone(),
            }
        })
        .collect()
}

/// The record after one round: the next node told to move, where it
/// stands in words, and the time it finished once every node that is up
/// runs the target and none is down. Pure; the same record back when
/// nothing changes.
pub fn advance(up: &Upgrade, nodes: &[NodeVersions], now: u64) -> Upgrade {
    let mut out = up.clone();
    if !up.running() {
        return out;
    }
    let v = up.version;
    // One at a time: the node told last must run the target, healthy,
    // before the planner is asked for the next (while it restarts it
    // reports its old version, or unhealthy, and the planner would take
    // it for one that is down and move on).
    if let Some(why) = unfinished(up, nodes) {
        out.step = why;
        return out;
    }
    let step = next(v, nodes);
    out.step = match &step {
        Step::ControlPlane(n) if up.told(n).0 => {
            format!("waiting for {n}'s control plane to run {v} and be healthy")
        }
        Step::ControlPlane(n) => {
            out.control_plane.push(n.clone());
            format!("{n}'s control plane moves to {v}")
        }
        Step::Node(n) if up.told(n).1 => format!("waiting for {n}'s kubelet and kube-proxy to run {v} and be healthy"),
        Step::Node(n) => {
            out.nodes.push(n.clone());
            format!("{n}'s kubelet and kube-proxy move to {v}")
        }
        Step::Wait(why) => why.clone(),
        Step::Done { pending } if pending.is_empty() => {
            out.finished_at = Some(now);
            format!("every node runs {v}")
        }
        Step::Done { pending } => {
            format!("every node that is up runs {v}; {} will move when back", pending.join(", "))
        }
    };
    out
}

/// The first node told to move that does not yet run the target healthy,
/// in words (a node no longer registered, purged, holds nothing).
fn unfinished(up: &Upgrade, nodes: &[NodeVersions]) -> Option<String> {
    let v = up.version;
    let find = |name: &String| nodes.iter().find(|n| &n.name == name);
    let state = |n: &NodeVersions, mut versions: Box<dyn Iterator<Item = crate::kube::version::KubeVersion> + '_>| {
        match versions.find(|x| *x != v) {
            Some(old) => Some(format!("it runs {old}")),
            None if !n.healthy => Some("it is not healthy".to_owned()),
            None => None,
        }
    };
    // A node told both is judged on its last move, its kubelet's.
    let cp_only = up.control_plane.iter().filter(|n| !up.nodes.contains(n));
    for n in cp_only.filter_map(find) {
        if let Some(why) = state(n, Box::new(n.control_plane())) {
            return Some(format!("waiting for {}'s control plane to run {v} and be healthy ({why})", n.name));
        }
    }
    for n in up.nodes.iter().filter_map(find) {
        if let Some(why) = state(n, Box::new(n.node_components())) {
            return Some(format!("waiting for {}'s kubelet and kube-proxy to run {v} and be healthy ({why})", n.name));
        }
        // Its agent moves to the bundle's hakube last, once all it runs
        // is healthy on the target; an agent that does not say which it
        // runs is too old to move itself, and is not waited for.
        if let (Some(target), Some(runs)) = (&up.hakube, &n.hakube) {
            if runs.moves_to(target) {
                return Some(format!(
                    "waiting for {}'s agent to run hakube {} (it runs {})",
                    n.name,
                    target.short(),
                    runs.short()
                ));
            }
        }
    }
    None
}

/// One round: the record moved on if the reports allow it. Returns the
/// record as it now stands (None: no upgrade recorded).
pub async fn round(
    client: &mut Client,
    endpoint: &str,
    records: &[NodeRecord],
    now: u64,
) -> Result<Option<Upgrade>, EtcdError> {
    let Some(up) = record::read(client, endpoint).await? else { return Ok(None) };
    let next = advance(&up, &versions(records, now), now);
    if next != up {
        if record::update(client, endpoint, &next).await? {
            if next.step != up.step {
                info!(target_version = %next.version, "upgrade: {}", next.step);
            }
        } else {
            return Ok(Some(up));
        }
    }
    Ok(Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Role;
    use crate::kube::version::KubeVersion;

    const V36: KubeVersion = KubeVersion::new(1, 36, 3);
    const V37: KubeVersion = KubeVersion::new(1, 37, 2);

    fn node(name: &str, role: Role, v: KubeVersion) -> NodeVersions {
        let master = role == Role::Master;
        NodeVersions {
            name: name.into(),
            role,
            healthy: true,
            apiserver: master.then_some(v),
            controller_manager: master.then_some(v),
            scheduler: master.then_some(v),
            kubelet: Some(v),
            kube_proxy: Some(v),
            hakube: Some(build("old")),
        }
    }

    fn build(sha256: &str) -> crate::cluster::upgrade::Build {
        crate::cluster::upgrade::Build { version: "0.1.0".into(), sha256: sha256.into() }
    }

    /// What a told node's agent does: its processes start from the new
    /// bundle, unhealthy until their probes pass.
    fn act(up: &Upgrade, nodes: &mut [NodeVersions]) {
        for n in nodes.iter_mut() {
            let (cp, node) = up.told(&n.name);
            if cp && n.apiserver != Some(up.version) {
                (n.apiserver, n.controller_manager, n.scheduler) =
                    (Some(up.version), Some(up.version), Some(up.version));
                n.healthy = false;
            } else if node && n.kubelet != Some(up.version) {
                (n.kubelet, n.kube_proxy) = (Some(up.version), Some(up.version));
                n.healthy = false;
            } else {
                n.healthy = true;
            }
        }
    }

    #[test]
    fn the_leader_tells_one_node_at_a_time_and_waits_for_each_to_report_the_target_healthy() {
        let mut nodes =
            vec![node("m1", Role::Master, V36), node("m2", Role::Master, V36), node("w1", Role::Worker, V36)];
        let mut up = Upgrade::new("b37".into(), V37, "m2".into(), 100);
        let mut told = vec![];
        for round in 0..40 {
            let next = advance(&up, &nodes, 100 + round);
            let newly: Vec<String> = next
                .control_plane
                .iter()
                .skip(up.control_plane.len())
                .map(|n| format!("cp:{n}"))
                .chain(next.nodes.iter().skip(up.nodes.len()).map(|n| format!("node:{n}")))
                .collect();
            assert!(newly.len() <= 1, "round {round} told {newly:?} at once");
            told.extend(newly);
            up = next;
            if !up.running() {
                break;
            }
            act(&up, &mut nodes);
        }
        assert_eq!(told, ["cp:m1", "cp:m2", "node:m1", "node:m2", "node:w1"]);
        assert!(up.finished_at.is_some(), "finished: {}", up.step);
        assert_eq!(up.step, "every node runs v1.37.2");
        // Finished stays finished.
        assert_eq!(advance(&up, &nodes, 999), up);
    }

    #[test]
    fn a_told_master_that_stays_unhealthy_holds_the_upgrade_where_it_is_and_says_why() {
        let mut nodes = vec![node("m1", Role::Master, V36), node("m2", Role::Master, V36)];
        let up = advance(&Upgrade::new("b37".into(), V37, "m1".into(), 1), &nodes, 1);
        assert_eq!(up.control_plane, ["m1"]);
        // m1's new API server starts and never becomes healthy.
        (nodes[0].apiserver, nodes[0].controller_manager, nodes[0].scheduler) = (Some(V37), Some(V37), Some(V37));
        nodes[0].healthy = false;
        let held = advance(&up, &nodes, 2);
        assert_eq!(held.control_plane, ["m1"], "m2 must not move while m1 is unhealthy");
        assert_eq!(held.step, "waiting for m1's control plane to run v1.37.2 and be healthy (it is not healthy)");
        assert!(held.running());
    }

    #[test]
    fn a_worker_restarting_after_its_move_holds_the_next_one_back() {
        let mut nodes =
            vec![node("m1", Role::Master, V37), node("w1", Role::Worker, V36), node("w2", Role::Worker, V36)];
        let up = advance(&Upgrade::new("b37".into(), V37, "m1".into(), 1), &nodes, 1);
        assert_eq!(up.nodes, ["w1"]);
        // w1's agent reloads: its kubelet stops (unhealthy) before the new
        // one starts, still reporting the old version.
        nodes[1].healthy = false;
        let held = advance(&up, &nodes, 2);
        assert_eq!(held.nodes, ["w1"], "w2 must wait for w1: {}", held.step);
        assert_eq!(
            held.step,
            "waiting for w1's kubelet and kube-proxy to run v1.37.2 and be healthy (it runs v1.36.3)"
        );
        (nodes[1].kubelet, nodes[1].kube_proxy) = (Some(V37), Some(V37));
        assert!(advance(&up, &nodes, 3).step.ends_with("(it is not healthy)"));
        nodes[1].healthy = true;
        assert_eq!(advance(&up, &nodes, 4).nodes, ["w1", "w2"]);
    }

    #[test]
    fn a_node_whose_bundle_carries_another_hakube_is_done_once_its_agent_runs_it() {
        let mut nodes =
            vec![node("m1", Role::Master, V37), node("w1", Role::Worker, V37), node("w2", Role::Worker, V36)];
        let mut up = Upgrade::new("b37".into(), V37, "m1".into(), 1);
        up.hakube = Some(build("new"));
        up.nodes = vec!["m1".into(), "w1".into()];
        nodes[0].hakube = Some(build("new"));
        // w1 runs the target, healthy, but its agent is the old build.
        let held = advance(&up, &nodes, 2);
        assert_eq!(held.nodes, ["m1", "w1"], "w2 must wait for w1's agent: {}", held.step);
        assert_eq!(held.step, "waiting for w1's agent to run hakube 0.1.0 (new) (it runs 0.1.0 (old))");
        nodes[1].hakube = Some(build("new"));
        assert_eq!(advance(&up, &nodes, 3).nodes, ["m1", "w1", "w2"]);
        // An agent newer than the bundle's hakube stays, and is not waited for.
        nodes[1].hakube = Some(crate::cluster::upgrade::Build { version: "0.2.0".into(), sha256: "newer".into() });
        assert_eq!(advance(&up, &nodes, 4).nodes, ["m1", "w1", "w2"]);
        // Nor is one too old to say which hakube it runs.
        nodes[1].hakube = None;
        assert_eq!(advance(&up, &nodes, 5).nodes, ["m1", "w1", "w2"]);
    }

    #[test]
    fn a_node_down_at_the_end_keeps_the_upgrade_open_until_it_returns_and_moves() {
        let mut nodes = vec![node("m1", Role::Master, V37), node("w1", Role::Worker, V36)];
        nodes[1].healthy = false;
        let up = advance(&Upgrade::new("b37".into(), V37, "m1".into(), 1), &nodes, 1);
        assert!(up.running());
        assert!(up.step.contains("w1 will move when back"), "{}", up.step);
        nodes[1].healthy = true;
        let up = advance(&up, &nodes, 2);
        assert_eq!(up.nodes, ["w1"]);
    }

    #[test]
    fn reports_older_than_the_staleness_bound_are_not_healthy() {
        let mut r = NodeRecord {
            name: "w1".into(),
            role: Role::Worker,
            address: "10.0.0.1".parse().unwrap(),
            joined_at: 0,
            heartbeat_at: 100,
            settings_revision: 0,
            clock_offset_ms: None,
            versions: [("kubelet".to_owned(), "v1.36.3".to_owned())].into(),
            hakube: None,
            balancer: None,
            healthy: Some(true),
        };
        assert!(versions(std::slice::from_ref(&r), 100 + STALE_AFTER)[0].healthy);
        assert!(!versions(std::slice::from_ref(&r), 101 + STALE_AFTER)[0].healthy);
        assert_eq!(versions(std::slice::from_ref(&r), 100)[0].kubelet, Some(V36));
        r.healthy = None;
        assert!(!versions(&[r], 100)[0].healthy);
    }
}
