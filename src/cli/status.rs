//! `hakube status`: the node's components as the agent last saw them, and
//! etcd as this command sees it right now.

use serde::Serialize;

use crate::agent::state::{ComponentState, Phase, State};
use crate::cluster::report::{probe_addons, probe_cluster, probe_etcd, ClusterReport, EtcdReport};
use crate::config::{self, ClusterConfig, Component};
use crate::host::paths::Paths;
use crate::host::process::PidFile;

#[derive(Debug, Serialize)]
pub struct Report {
    pub node: String,
    pub root: String,
    pub agent_pid: Option<u32>,
    pub components: Vec<(String, ComponentState)>,
    /// The node-local load balancer, as the agent last saw it.
    pub load_balancer: Option<crate::lb::Status>,
    pub etcd: Option<EtcdReport>,
    /// The cluster as a whole, as a master sees it in etcd.
    pub cluster: Option<ClusterReport>,
    /// The cluster's add-ons, as this master's API server reports them.
    pub addons: Vec<crate::addons::AddonStatus>,
    /// What is worth knowing but does not make the node unhealthy (an
    /// add-on still starting, fewer nodes than `ha` wants).
    pub warnings: Vec<String>,
    pub healthy: bool,
    pub problems: Vec<String>,
}

/// `status` exits with this when there is nothing installed to report on
/// (1 means installed but unhealthy).
pub const EXIT_NOT_INSTALLED: i32 = 3;

#[derive(Debug, thiserror::Error)]
#[error("hakube is not installed under {root}: no {file}")]
pub struct NotInstalled {
    pub root: String,
    pub file: String,
}

pub async fn gather(paths: &Paths) -> anyhow::Result<Report> {
    let c: ClusterConfig = config::load_installed(&paths.config_file())?.ok_or_else(|| NotInstalled {
        root: paths.root().display().to_string(),
        file: paths.config_file().display().to_string(),
    })?;
    let agent_pid = PidFile::holder(&paths.agent_pid_file());
    let state = State::read(&paths.state_file()).unwrap_or_default();
    let mut problems = vec![];
    if agent_pid.is_none() {
        problems.push(
            "the agent is not running: start it with `hakube install` (re-run) or `systemctl start hakube`".into(),
        );
    }
    let mut components = vec![];
    for comp in &c.node.components {
        match state.components.get(comp.name()) {
            Some(s) if agent_pid.is_some() => {
                if !(s.phase == Phase::Running && s.healthy) {
                    let why = s.message.as_deref().or(s.last_exit.as_deref()).unwrap_or("no details");
                    problems.push(format!("{comp} is {:?}: {why}", s.phase).to_lowercase());
                }
                components.push((comp.name().to_owned(), s.clone()));
            }
            _ => problems.push(format!("{comp} is not running")),
        }
    }
    if let Some(msg) = &state.purged {
        problems.push(msg.clone());
    }
    let load_balancer = agent_pid.and(state.load_balancer.clone());
    if let Some(lb) = &load_balancer {
        use crate::lb::Health;
        if let Some(e) = &lb.error {
            problems.push(format!("the node-local load balancer is not listening: {e}"));
        } else if !lb.backends.is_empty() && lb.backends.iter().all(|b| b.health == Health::Down) {
            problems.push(format!(
                "every API server behind the node-local load balancer {} is down (it tries them all anyway)",
                lb.listen
            ));
        }
    }
    if let (Some(_), Some(reason)) = (agent_pid, &state.reload_error) {
        problems.push(format!(
            "the agent refused the last configuration and runs the one before: {reason} (fix {} and re-run install)",
            paths.config_file().display()
        ));
    }
    let etcd = if c.has(Component::Etcd) { Some(probe_etcd(paths, &c).await) } else { None };
    if let Some(e) = &etcd {
        if !e.healthy {
            problems.push(format!(
                "etcd at {} is unhealthy: {} (without a quorum nothing is purged and no master joins: \
                 a member is never removed when that would cost quorum; bring the masters back)",
                e.endpoint,
                e.error.as_deref().unwrap_or("")
            ));
        }
    }
    let cluster = match &etcd {
        Some(e) if e.healthy => probe_cluster(paths, &c).await.ok(),
        _ => None,
    };
    let (addons, warnings) = if agent_pid.is_some() && c.has(Component::KubeApiserver) {
        probe_addons(paths, &c).await
    } else {
        (vec![], vec![])
    };
    Ok(Report {
        node: c.node.name.to_string(),
        root: paths.root().display().to_string(),
        agent_pid,
        components,
        load_balancer,
        etcd,
        cluster,
        addons,
        warnings,
        healthy: problems.is_empty(),
        problems,
    })
}

/// The upgrade under way (or the last one), for a person.
fn upgrade_lines(up: &crate::cluster::upgrade::record::Upgrade) -> String {
    use crate::host::clock::rfc3339;
    let mut out = match up.finished_at {
        Some(t) => format!(
            "  last upgrade: to {} (bundle {}), started by {} at {}, finished at {}\n",
            up.version,
            up.bundle,
            up.started_by,
            rfc3339(up.started_at),
            rfc3339(t)
        ),
        None => format!(
            "  UPGRADE UNDER WAY to {} (bundle {}), started by {} at {}: {}\n",
            up.version,
            up.bundle,
            up.started_by,
            rfc3339(up.started_at),
            up.step
        ),
    };
    if up.running() {
        let list = |v: &[String]| if v.is_empty() { "none yet".to_owned() } else { v.join(", ") };
        out.push_str(&format!("    control planes moved: {}\n", list(&up.control_plane)));
        out.push_str(&format!("    kubelets moved:       {}\n", list(&up.nodes)));
    }
    if let Some(s) = &up.snapshot {
        out.push_str(&format!("    etcd snapshot taken before it: {s}\n"));
    }
    out
}

/// A node's Kubernetes versions for one line: the one version when every
/// component runs it (the usual case), else each component's; `-` when the
/// node does not report them.
fn versions(v: &std::collections::BTreeMap<String, String>) -> String {
    let mut distinct: Vec<&String> = v.values().collect();
    distinct.dedup();
    match distinct.as_slice() {
        [] => "-".into(),
        [one] if v.values().all(|x| x == *one) => (*one).clone(),
        _ => v.iter().map(|(c, x)| format!("{c} {x}")).collect::<Vec<_>>().join(", "),
    }
}

/// The cluster's Kubernetes in one line: the one version every component
/// of every node runs, or each version with the nodes that run any of it
/// (as during an upgrade); None when no node reports its versions.
fn cluster_versions(nodes: &[crate::cluster::registry::NodeRecord]) -> Option<String> {
    let mut by_version: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for n in nodes {
        let mut mine: Vec<&str> = n.versions.values().map(String::as_str).collect();
        mine.sort_unstable();
        mine.dedup();
        for v in mine {
            by_version.entry(v).or_default().push(n.name.as_str());
        }
    }
    match by_version.len() {
        0 => None,
        1 => by_version.keys().next().map(|v| format!("{v} on every node that reports it")),
        _ => Some(
            by_version.iter().map(|(v, names)| format!("{v} ({})", names.join(", "))).collect::<Vec<_>>().join(", "),
        ),
    }
}

/// The hakube builds the agents run, in one line as [`cluster_versions`]
/// says Kubernetes' (two builds of one version differ by their digest).
fn cluster_builds(nodes: &[crate::cluster::registry::NodeRecord]) -> Option<String> {
    let mut by_build: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for n in nodes {
        if let Some(b) = &n.hakube {
            by_build.entry(b.short()).or_default().push(n.name.as_str());
        }
    }
    match by_build.len() {
        0 => None,
        1 => by_build.keys().next().map(|b| format!("{b} on every node that reports it")),
        _ => Some(
            by_build.iter().map(|(b, names)| format!("{b} on {}", names.join(", "))).collect::<Vec<_>>().join("; "),
        ),
    }
}

pub fn render(r: &Report) -> String {
    let mut out = format!(
        "node {} (root {})\nagent: {}\n",
        r.node,
        r.root,
        r.agent_pid.map(|p| format!("running, pid {p}")).unwrap_or_else(|| "NOT RUNNING".into())
    );
    out.push_str("components:\n");
    for (name, s) in &r.components {
        out.push_str(&format!(
            "  {name:<24} {:<9} {:<10} pid {:<8} restarts {}\n",
            format!("{:?}", s.phase).to_lowercase(),
            if s.healthy { "healthy" } else { "unhealthy" },
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.restarts
        ));
    }
    if let Some(lb) = &r.load_balancer {
        let now = crate::host::clock::now_secs();
        out.push_str(&format!(
            "load balancer {}: {}\n",
            lb.listen,
            lb.error.as_deref().unwrap_or(if lb.listening { "listening" } else { "starting" })
        ));
        for b in &lb.backends {
            out.push_str(&format!(
                "  backend {:<16} {:<22} {:<9} for {:<8} {} active{}\n",
                b.name,
                b.address,
                format!("{:?}", b.health).to_lowercase(),
                crate::cluster::purge::human(now.saturating_sub(b.since)),
                b.active,
                match (&b.last_error, b.health) {
                    (Some(e), crate::lb::Health::Down) => format!(" ({e})"),
                    _ => String::new(),
                }
            ));
        }
    }
    if let Some(e) = &r.etcd {
        out.push_str(&format!("etcd {}: {}\n", e.endpoint, if e.healthy { "healthy" } else { "UNHEALTHY" }));
        for m in &e.members {
            let health = match (m.healthy, &m.error) {
                (Some(true), _) => "healthy".to_owned(),
                (Some(false), Some(err)) => format!("UNHEALTHY ({err})"),
                _ => "-".to_owned(),
            };
            out.push_str(&format!(
                "  member {:<16} {:<8} {:<10} {:<10} {}\n",
                if m.member.name.is_empty() { "(unstarted)" } else { &m.member.name },
                if m.member.is_learner { "learner" } else { "voting" },
                if m.started { "started" } else { "unstarted" },
                health,
                m.member.peer_urls.join(",")
            ));
        }
        if e.healthy {
            out.push_str(&format!(
                "  quorum {} of {} voting members; survives {} failure(s)\n",
                e.quorum, e.voters, e.failures_tolerated
            ));
        }
        for w in &e.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
    }
    if let Some(cl) = &r.cluster {
        out.push_str(&format!("cluster: leader {}\n", cl.leader.as_deref().unwrap_or("(none elected)")));
        if let Some(s) = &cl.settings {
            out.push_str(&format!(
                "  settings revision {} (written by {}): ha {}, load-balancer-address {}, taint-control-plane {}, lost-node-toleration {}\n",
                cl.settings_revision,
                cl.settings_written_by,
                s.ha,
                s.load_balancer_address.as_ref().map(ToString::to_string).unwrap_or_else(|| "none".into()),
                s.taint_control_plane,
                s.lost_node_toleration,
            ));
            for (vip, holder) in &cl.vip_holders {
                // Not the one in force: one a change under way moves to or from.
                let role = match &s.load_balancer_change {
                    Some(ch) if s.vip != Some(*vip) && ch.to_vip == Some(*vip) => " (the change's new address)",
                    Some(_) if s.vip != Some(*vip) => " (the change's old address)",
                    _ => "",
                };
                out.push_str(&match holder {
                    Some(h) => format!(
                        "  virtual IP {vip}{role}: held by {} since {}{}\n",
                        h.node,
                        crate::host::clock::rfc3339(h.since),
                        h.after.as_ref().map_or(String::new(), |before| format!(" (took it over from {before})"))
                    ),
                    None => {
                        format!("  virtual IP {vip}{role}: held by no master (none ready, or etcd without quorum)\n")
                    }
                });
            }
            out.push_str(&format!(
                "  etcd snapshots: every {}, the newest {} kept on each master\n",
                s.etcd_snapshot_interval, s.etcd_snapshot_retention
            ));
            if let Some(ch) = &s.load_balancer_change {
                out.push_str(&format!(
                    "  load-balancer address: {} in force, {} pending (phase {}, started by {} at {})\n",
                    s.load_balancer_address.as_ref().map(ToString::to_string).unwrap_or_else(|| "none".into()),
                    ch.to,
                    ch.phase,
                    ch.started_by,
                    crate::host::clock::rfc3339(ch.started_at),
                ));
                for m in cl.load_balancer_change.iter().flat_map(|p| &p.masters) {
                    out.push_str(&format!("    {:<12} {}\n", m.name, m.state));
                }
                if let Some(w) = cl.load_balancer_change.as_ref().and_then(|p| p.waiting.as_ref()) {
                    out.push_str(&format!("    waiting for: {w}\n"));
                }
            }
        }
        let now = crate::host::clock::now_secs();
        if let Some(line) = cluster_versions(&cl.nodes) {
            out.push_str(&format!("  kubernetes: {line}\n"));
        }
        if let Some(line) = cluster_builds(&cl.nodes) {
            out.push_str(&format!("  hakube: {line}\n"));
        }
        if let Some(up) = &cl.upgrade {
            out.push_str(&upgrade_lines(up));
        }
        for n in &cl.nodes {
            let mut lag = if n.settings_revision == cl.settings_revision {
                String::new()
            } else {
                format!("  NOT CONVERGED (runs revision {})", n.settings_revision)
            };
            use crate::cluster::purge::{human, Assessment};
            if let Some(v) = cl.purge.as_ref().and_then(|p| p.nodes.iter().find(|v| v.name == n.name)) {
                match &v.assessment {
                    Assessment::Alive => {}
                    Assessment::Lost { lost_for, purge_in: Some(d) } => {
                        lag.push_str(&format!("  LOST for {}, purge in {}", human(*lost_for), human(*d)))
                    }
                    Assessment::Lost { lost_for, purge_in: None } => lag.push_str(&format!(
                        "  LOST for {} (lost-node-toleration is never: not purged)",
                        human(*lost_for)
                    )),
                    Assessment::Due { lost_for } => {
                        lag.push_str(&format!("  LOST for {}, purge due", human(*lost_for)))
                    }
                    Assessment::Unknown { silent_for, why } => lag.push_str(&format!(
                        "  SILENT for {} but its Kubernetes signal cannot be read, so it is not judged: {why}",
                        human(*silent_for)
                    )),
                }
                if let Some(why) = &v.held_back {
                    lag.push_str(&format!(" but held back: {why}"));
                }
            }
            if let Some(w) = n.clock_offset_ms.and_then(crate::host::clock::describe_offset) {
                lag.push_str(&format!("  WARNING: {w}"));
            }
            if n.healthy == Some(false) {
                lag.push_str("  NOT HEALTHY (`hakube status` on it says what)");
            }
            out.push_str(&format!(
                "  node {:<16} {:<7} {:<15} {:<8} heartbeat {}s ago{lag}\n",
                n.name,
                n.role.to_string(),
                n.address.to_string(),
                versions(&n.versions),
                now.saturating_sub(n.heartbeat_at)
            ));
        }
        if let Some(note) = cl.purge.as_ref().and_then(|v| v.note.as_ref()) {
            out.push_str(&format!("  purge: {note}\n"));
        }
        if let Some(p) = cl.purge.as_ref().and_then(|v| v.current.as_ref()) {
            out.push_str(&format!("  purging {} ({:?} next), started by {}\n", p.node.name, p.step, p.started_by));
        }
        for p in &cl.purged {
            out.push_str(&format!(
                "  purged {} {} at {} after {} lost (by {})\n",
                p.node.role,
                p.node.name,
                crate::host::clock::rfc3339(p.finished_at.unwrap_or(p.started_at)),
                crate::cluster::purge::human(p.lost_for),
                p.started_by
            ));
        }
    }
    if !r.addons.is_empty() {
        out.push_str("add-ons:\n");
        for a in &r.addons {
            out.push_str(&format!("  {:<24} {}/{:<3} {}\n", a.name, a.ready, a.desired, a.message));
        }
    }
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if r.healthy {
        out.push_str("status: healthy\n");
    } else {
        out.push_str("status: UNHEALTHY\n");
        for p in &r.problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_reads_as_one_version_or_each_with_its_nodes() {
        let node = |name: &str, pairs: &[(&str, &str)]| crate::cluster::registry::NodeRecord {
            name: name.into(),
            role: crate::cluster::Role::Worker,
            address: "10.0.0.1".parse().unwrap(),
            joined_at: 0,
            heartbeat_at: 0,
            settings_revision: 0,
            clock_offset_ms: None,
            versions: pairs.iter().map(|(c, v)| (c.to_string(), v.to_string())).collect(),
            hakube: None,
            balancer: None,
            healthy: None,
        };
        assert_eq!(cluster_versions(&[node("m1", &[])]), None);
        let same = [node("m1", &[("kubelet", "v1.37.2")]), node("w1", &[("kubelet", "v1.37.2")])];
        assert_eq!(cluster_versions(&same).unwrap(), "v1.37.2 on every node that reports it");
        let mixed = [
            node("m1", &[("kube-apiserver", "v1.37.2"), ("kubelet", "v1.36.3")]),
            node("w1", &[("kubelet", "v1.36.3")]),
        ];
        assert_eq!(cluster_versions(&mixed).unwrap(), "v1.36.3 (m1, w1), v1.37.2 (m1)");
        let build = |sha: &str| crate::cluster::upgrade::Build { version: "0.1.0".into(), sha256: sha.into() };
        let built = |name: &str, sha: Option<&str>| crate::cluster::registry::NodeRecord {
            hakube: sha.map(build),
            balancer: None,
            ..node(name, &[])
        };
        assert_eq!(cluster_builds(&[built("m1", None)]), None);
        assert_eq!(
            cluster_builds(&[built("m1", Some("0123456789abcdef")), built("w1", Some("0123456789abcdef"))]).unwrap(),
            "0.1.0 (0123456789ab) on every node that reports it"
        );
        assert_eq!(
            cluster_builds(&[built("m1", Some("aaaa")), built("m2", Some("bbbb")), built("w1", Some("aaaa"))]).unwrap(),
            "0.1.0 (aaaa) on m1, w1; 0.1.0 (bbbb) on m2"
        );
    }

    #[test]
    fn a_nodes_versions_read_as_one_when_they_agree_and_each_when_they_do_not() {
        let v = |pairs: &[(&str, &str)]| pairs.iter().map(|(c, x)| (c.to_string(), x.to_string())).collect();
        assert_eq!(versions(&v(&[])), "-");
        assert_eq!(versions(&v(&[("kubelet", "v1.37.2"), ("kube-proxy", "v1.37.2")])), "v1.37.2");
        assert_eq!(
            versions(&v(&[("kube-apiserver", "v1.37.2"), ("kubelet", "v1.36.3"), ("kube-proxy", "v1.37.2")])),
            "kube-apiserver v1.37.2, kube-proxy v1.37.2, kubelet v1.36.3"
        );
    }
}
