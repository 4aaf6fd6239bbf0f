//! `hakube check`: one line per check, ✓ / ‼ / ×, each with a hint, grouped
//! (host, etcd, control plane, nodes, add-ons, certificates). Everything is
//! read once into a [`Reading`]; [`judge`] is pure, so every verdict is
//! tested without a cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::agent::state::{Phase, State};
use crate::cluster::report::{ClusterReport, EtcdReport};
use crate::config::{ClusterConfig, Component};
use crate::host::paths::Paths;
use crate::kube::inventory::Row;
use crate::metrics::etcd::EtcdMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Warning,
    Error,
}

impl Outcome {
    fn mark(self) -> &'static str {
        match self {
            Outcome::Ok => "✓",
            Outcome::Warning => "‼",
            Outcome::Error => "×",
        }
    }

    /// The exit code of a run whose worst result is this.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::Warning => 1,
            Outcome::Error => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub group: &'static str,
    pub name: String,
    pub outcome: Outcome,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// What the Kubernetes API says, read through this master's API server.
#[derive(Debug, Clone, Default)]
pub struct KubeReading {
    pub schedulable: usize,
    pub addons: Vec<crate::addons::AddonStatus>,
    /// Each add-on's running pods' nodes.
    pub addon_nodes: BTreeMap<String, Vec<String>>,
    /// PodDisruptionBudgets that allow no disruption now (`ns/name`).
    pub blocking_pdbs: Vec<String>,
    pub kube_system_labels: BTreeMap<String, String>,
}

/// Everything the checks judge, read once.
#[derive(Debug)]
pub struct Reading {
    pub now: i64,
    pub config: ClusterConfig,
    pub agent_running: bool,
    pub state: Option<State>,
    /// Swap in use or configured, in KiB (None: unreadable).
    pub swap_kib: Option<u64>,
    /// Each kernel setting hakube needs and its value (None: absent).
    pub sysctls: Vec<(&'static str, Option<String>)>,
    /// Free and total bytes of the file system holding the data directory.
    pub disk: Option<(u64, u64)>,
    pub certs: Vec<Row>,
    pub etcd: Option<EtcdReport>,
    pub etcd_local: Option<EtcdMetrics>,
    pub cluster: Option<ClusterReport>,
    pub kube: Option<Result<KubeReading, String>>,
}

use crate::addons::WEBHOOK_EXCLUSION;

/// etcd's own guidance: the 99th percentile of WAL fsyncs under 10 ms.
const FSYNC_P99_LIMIT: f64 = 0.010;

pub fn judge(r: &Reading) -> Vec<Check> {
    let mut out = vec![];
    let mut add = |group: &'static str, name: &str, outcome, message: String, hint: Option<&str>| {
        out.push(Check { group, name: name.to_owned(), outcome, message, hint: hint.map(str::to_owned) })
    };
    use Outcome::{Error as Fail, Ok as Pass, Warning as Warn};

    // host
    let h = "host";
    if r.agent_running {
        add(h, "agent", Pass, "the hakube agent runs".into(), None);
    } else {
        add(
            h,
            "agent",
            Fail,
            "the hakube agent is not running".into(),
            Some("`systemctl start hakube`, or re-run `hakube install`"),
        );
    }
    match r.swap_kib {
        Some(0) => add(h, "swap", Pass, "no swap".into(), None),
        Some(kib) => add(
            h,
            "swap",
            Warn,
            format!("{} MiB of swap is configured", kib / 1024),
            Some("kubelet's memory accounting assumes none: `swapoff -a` and remove it from /etc/fstab"),
        ),
        None => add(h, "swap", Warn, "/proc/swaps cannot be read".into(), None),
    }
    for (name, value) in &r.sysctls {
        let want = crate::host::sysctl::SETTINGS.iter().find(|(n, _)| n == name).map(|(_, v)| *v).unwrap_or("1");
        let key = name.replace('/', ".");
        match value.as_deref() {
            Some(v) if v == want => add(h, &key, Pass, format!("{key} = {v}"), None),
            Some(v) => add(
                h,
                &key,
                Fail,
                format!("{key} = {v}, Services need {want}"),
                Some("the agent sets it at start: restart it, and check nothing resets it"),
            ),
            None => add(
                h,
                &key,
                Fail,
                format!("{key} is missing"),
                Some("load the br_netfilter module (`modprobe br_netfilter`) and list it in /etc/modules-load.d/"),
            ),
        }
    }
    if let Some((free, total)) = r.disk {
        let pct = if total > 0 { free as f64 * 100.0 / total as f64 } else { 0.0 };
        let msg = format!("{} GiB free of {} GiB ({pct:.0}%) under the data directory", free >> 30, total >> 30);
        let hint = Some("kubelet evicts pods under 10% free and etcd stops at its quota: free space or grow the disk");
        match pct {
            p if p < 5.0 => add(h, "disk", Fail, msg, hint),
            p if p < 15.0 => add(h, "disk", Warn, msg, hint),
            _ => add(h, "disk", Pass, msg, None),
        }
    }

    // etcd
    if let Some(e) = &r.etcd {
        let g = "etcd";
        if !e.healthy {
            add(
                g,
                "quorum",
                Fail,
                format!("no quorum through {}: {}", e.endpoint, e.error.as_deref().unwrap_or("")),
                Some("bring the stopped masters back; nothing is written, joined or purged meanwhile"),
            );
        } else {
            let tolerated = e.failures_tolerated;
            let msg = format!("{} voting member(s), quorum {}, {tolerated} failure(s) tolerated", e.voters, e.quorum);
            if r.config.cluster.ha && e.voters < 3 {
                add(g, "quorum", Warn, msg, Some("ha wants at least 3 masters: join masters"));
            } else {
                add(g, "quorum", Pass, msg, None);
            }
            if e.voters >= 2 && e.voters % 2 == 0 {
                add(
                    g,
                    "member count",
                    Warn,
                    format!(
                        "{} voting members: an even count tolerates no more failures than {} would",
                        e.voters,
                        e.voters - 1
                    ),
                    Some("join one more master, or remove one (`hakube node remove`)"),
                );
            } else {
                add(g, "member count", Pass, format!("{} voting member(s), an odd count", e.voters), None);
            }
            for m in &e.members {
                match m.healthy {
                    Some(true) => add(g, &format!("member {}", m.member.name), Pass, "healthy".into(), None),
                    Some(false) => add(
                        g,
                        &format!("member {}", m.member.name),
                        Fail,
                        m.error.clone().unwrap_or_else(|| "unhealthy".into()),
                        Some("`hakube status` on that master"),
                    ),
                    None => add(g, &format!("member {}", m.member.name), Pass, "a learner (joining)".into(), None),
                }
            }
        }
        match &r.etcd_local {
            Some(m) => {
                if let (Some(size), Some(quota)) = (m.db_size_bytes, m.quota_bytes) {
                    let pct = size * 100.0 / quota.max(1.0);
                    let msg = format!(
                        "database {:.1} MiB of its {} MiB quota ({pct:.0}%)",
                        size / 1048576.0,
                        quota as u64 >> 20
                    );
                    let hint = Some("at its quota etcd takes no writes: compact and defragment");
                    match pct {
                        p if p >= 95.0 => add(g, "database size", Fail, msg, hint),
                        p if p >= 80.0 => add(g, "database size", Warn, msg, hint),
                        _ => add(g, "database size", Pass, msg, None),
                    }
                }
                match m.fsync_quantile(0.99) {
                    Some(p99) if p99 > FSYNC_P99_LIMIT => add(
                        g,
                        "disk latency",
                        Warn,
                        format!("99% of WAL fsyncs take up to {:.0} ms (etcd wants under 10 ms)", p99 * 1000.0),
                        Some("give etcd's data directory a faster disk (SSD), not shared with busy writers"),
                    ),
                    Some(p99) => {
                        add(g, "disk latency", Pass, format!("99% of WAL fsyncs within {:.1} ms", p99 * 1000.0), None)
                    }
                    None => {}
                }
            }
            None => add(
                g,
                "own metrics",
                Warn,
                "this member's metrics listener does not answer".into(),
                Some("`hakube logs etcd`"),
            ),
        }
    }

    // control plane (and whatever else the node runs)
    let g = "control plane";
    if let Some(state) = &r.state {
        for comp in &r.config.node.components {
            let name = comp.name();
            match state.components.get(name) {
                Some(s) if s.phase == Phase::Running && s.healthy => {
                    add(g, name, Pass, format!("running, {} restart(s)", s.restarts), None)
                }
                Some(s) => add(
                    g,
                    name,
                    Fail,
                    format!(
                        "{:?}: {}",
                        s.phase,
                        s.message.as_deref().or(s.last_exit.as_deref()).unwrap_or("no details")
                    )
                    .to_lowercase(),
                    Some(&format!("`hakube logs {name}`")),
                ),
                None => add(g, name, Fail, "not started".into(), Some("`hakube status`")),
            }
        }
    } else if r.agent_running {
        add(g, "components", Warn, "the agent has not recorded its components yet".into(), None);
    }

    // nodes
    if let Some(c) = &r.cluster {
        let g = "nodes";
        let now = r.now.max(0) as u64;
        let view: BTreeMap<&str, &crate::cluster::purge::NodeView> =
            c.purge.iter().flat_map(|v| &v.nodes).map(|n| (n.name.as_str(), n)).collect();
        for n in &c.nodes {
            let age = now.saturating_sub(n.heartbeat_at);
            let judged = view.get(n.name.as_str());
            let alive = judged.is_some_and(|v| v.assessment == crate::cluster::purge::Assessment::Alive);
            let key = format!("node {}", n.name);
            if judged.is_some_and(|v| v.assessment != crate::cluster::purge::Assessment::Alive) {
                let held = judged.and_then(|v| v.held_back.clone());
                add(
                    g,
                    &key,
                    Warn,
                    format!(
                        "lost: no heartbeat for {age} s and no kubelet{}",
                        held.map(|h| format!("; its purge is held back: {h}")).unwrap_or_default()
                    ),
                    Some("bring it back, or remove it for good with `hakube node remove`"),
                );
            } else if alive && age > crate::cluster::purge::STALE_AFTER * 2 {
                add(g, &key, Warn, format!("its kubelet is alive but its agent's heartbeat is {age} s old"), Some("the node cannot reach the masters' API (port 9443) or its agent is stuck: `hakube check` on it"));
            } else if n.healthy == Some(false) {
                add(g, &key, Warn, "reports a component unhealthy".into(), Some("`hakube status` on it"));
            } else if c.not_converged.contains(&n.name) {
                add(
                    g,
                    &key,
                    Warn,
                    format!("runs settings revision {}, not {}", n.settings_revision, c.settings_revision),
                    Some("its agent applies them within a minute; if not, `hakube logs agent` on it"),
                );
            } else {
                add(g, &key, Pass, format!("heartbeat {age} s ago"), None);
            }
            if let Some(ms) = n.clock_offset_ms {
                let s = ms.unsigned_abs() as f64 / 1000.0;
                let msg = format!("{}'s clock is {s:.1} s off a master's", n.name);
                let hint = Some(
                    "run NTP (chrony or systemd-timesyncd) on every node: certificates, leases and logs need one time",
                );
                if s > 30.0 {
                    add(g, &format!("clock {}", n.name), Fail, msg, hint);
                } else if s > 1.0 {
                    add(g, &format!("clock {}", n.name), Warn, msg, hint);
                }
            }
        }
    }

    // add-ons
    if let Some(k) = &r.kube {
        let g = "add-ons";
        match k {
            Err(e) => {
                add(g, "API server", Fail, format!("cannot read the cluster's objects: {e}"), Some("`hakube status`"))
            }
            Ok(k) => {
                if r.config.cluster.ha && k.schedulable < 3 {
                    add(
                        g,
                        "schedulable nodes",
                        Warn,
                        format!("ha with {} schedulable node(s): CoreDNS cannot spread over 3", k.schedulable),
                        Some("join workers, or leave the masters untainted"),
                    );
                }
                for a in &k.addons {
                    if a.is_ready() {
                        add(g, a.name, Pass, a.message.clone(), None);
                    } else {
                        add(
                            g,
                            a.name,
                            Warn,
                            a.message.clone(),
                            Some(&format!("`kubectl -n {} describe deployment {}`", a.namespace, a.name)),
                        );
                    }
                    let nodes = k.addon_nodes.get(a.name).cloned().unwrap_or_default();
                    let distinct: std::collections::BTreeSet<&String> = nodes.iter().collect();
                    if nodes.len() >= 2 && distinct.len() == 1 {
                        add(
                            g,
                            &format!("{} spread", a.name),
                            Warn,
                            format!("its {} replicas all run on {}", nodes.len(), nodes[0]),
                            Some("losing that node loses the add-on: join nodes so the replicas can spread"),
                        );
                    }
                }
                for p in &k.blocking_pdbs {
                    add(
                        g,
                        &format!("PodDisruptionBudget {p}"),
                        Warn,
                        "allows no disruption now: a drain or an upgrade waits on it".into(),
                        Some("`kubectl describe pdb`: give its workload more replicas or loosen it"),
                    );
                }
                let (key, want) = WEBHOOK_EXCLUSION;
                if k.kube_system_labels.get(key).map(String::as_str) == Some(want) {
                    add(g, "kube-system webhooks", Pass, format!("kube-system is labelled {key}={want}"), None);
                } else {
                    add(g, "kube-system webhooks", Warn, format!("kube-system lacks the label {key}={want}"), Some(&format!("`kubectl label namespace kube-system {key}={want}`: a webhook down then never blocks the control plane's pods")));
                }
            }
        }
    }

    // certificates
    let g = "certificates";
    let soon = 30 * 86_400;
    let mut fine = 0;
    for row in &r.certs {
        match row.not_after {
            None => add(
                g,
                &row.name,
                Fail,
                row.problem.clone().unwrap_or_else(|| "unreadable".into()),
                Some("`hakube certs check-expiration`"),
            ),
            Some(t) if t <= r.now => {
                add(g, &row.name, Fail, "expired".into(), Some(&format!("`hakube certs renew {}`", row.name)))
            }
            Some(t) if t - r.now < soon => add(
                g,
                &row.name,
                Warn,
                format!("expires in {} day(s)", (t - r.now) / 86_400),
                Some(if row.is_ca {
                    "a CA is never renewed by itself: plan its rotation"
                } else {
                    "the agent should have renewed it: `hakube certs renew NAME`, and see `hakube logs agent`"
                }),
            ),
            Some(_) => fine += 1,
        }
    }
    if fine > 0 {
        add(g, "validity", Pass, format!("{fine} certificate(s) valid for 30 days or more"), None);
    }
    out
}

/// The worst outcome of `checks` (Ok when there are none).
pub fn worst(checks: &[Check]) -> Outcome {
    checks.iter().map(|c| c.outcome).max().unwrap_or(Outcome::Ok)
}

/// The text `hakube check` prints.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    let mut group = "";
    for c in checks {
        if c.group != group {
            if !group.is_empty() {
                out.push('\n');
            }
            out.push_str(c.group);
            out.push('\n');
            out.push_str(&"-".repeat(c.group.chars().count()));
            out.push('\n');
            group = c.group;
        }
        out.push_str(&format!("{} {}: {}\n", c.outcome.mark(), c.name, c.message));
        if let (Some(h), true) = (&c.hint, c.outcome != Outcome::Ok) {
            out.push_str(&format!("    hint: {h}\n"));
        }
    }
    let (w, e) = (
        checks.iter().filter(|c| c.outcome == Outcome::Warning).count(),
        checks.iter().filter(|c| c.outcome == Outcome::Error).count(),
    );
    out.push_str(&format!("\n{} checks: {} error(s), {} warning(s)\n", checks.len(), e, w));
    out
}

/// Reads everything the checks judge (each part bounded).
pub async fn read(paths: &Paths) -> anyhow::Result<Reading> {
    let config: ClusterConfig =
        crate::config::load_installed(&paths.config_file())?.ok_or_else(|| super::status::NotInstalled {
            root: paths.root().display().to_string(),
            file: paths.config_file().display().to_string(),
        })?;
    let agent_running = crate::host::process::PidFile::holder(&paths.agent_pid_file()).is_some();
    let state = State::read(&paths.state_file());
    let swap_kib = std::fs::read_to_string("/proc/swaps")
        .ok()
        .map(|t| t.lines().skip(1).filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()).sum());
    let sysctls = crate::host::sysctl::SETTINGS.iter().map(|(n, _)| (*n, crate::host::sysctl::current(n))).collect();
    let disk = nix::sys::statvfs::statvfs(&paths.data_dir())
        .ok()
        .map(|s| (s.blocks_available() * s.fragment_size(), s.blocks() * s.fragment_size()));
    let certs = crate::kube::inventory::inventory(paths);
    let bound = |d| Duration::from_secs(d);
    let (mut etcd, mut etcd_local, mut cluster, mut kube) = (None, None, None, None);
    if config.has(Component::Etcd) {
        etcd = tokio::time::timeout(bound(8), crate::cluster::report::probe_etcd(paths, &config)).await.ok();
        etcd_local = crate::metrics::etcd::fetch(config.etcd_metrics_address(), bound(3)).await.ok();
        if etcd.as_ref().is_some_and(|e| e.healthy) {
            cluster = tokio::time::timeout(bound(8), crate::cluster::report::probe_cluster(paths, &config))
                .await
                .ok()
                .and_then(Result::ok);
        }
    }
    if config.has(Component::KubeApiserver) && agent_running {
        kube = Some(
            tokio::time::timeout(bound(15), read_kube(paths, &config))
                .await
                .unwrap_or_else(|_| Err("the API server did not answer within 15s".into())),
        );
    }
    Ok(Reading {
        now: crate::host::clock::now_secs() as i64,
        config,
        agent_running,
        state,
        swap_kib,
        sysctls,
        disk,
        certs,
        etcd,
        etcd_local,
        cluster,
        kube,
    })
}

async fn read_kube(paths: &Paths, c: &ClusterConfig) -> Result<KubeReading, String> {
    use crate::kube::objects::{self, List, Node};
    let client = crate::cluster::report::own_api_server(paths, c, Duration::from_secs(5))?;
    let nodes = client.get::<List<Node>>("the nodes", objects::nodes_path()).await.map_err(|e| e.to_string())?;
    let addons = crate::addons::status(&client).await;
    let mut addon_nodes = BTreeMap::new();
    for a in &addons {
        let path = objects::deployment_path(a.namespace, a.name);
        let Ok(Some(d)) = client.get_opt::<Value>("an add-on", &path).await else { continue };
        let selector: Vec<String> = d["spec"]["selector"]["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
            .collect();
        let pods_path = format!("/api/v1/namespaces/{}/pods?labelSelector={}", a.namespace, selector.join(","));
        let pods = client.get::<Value>("an add-on's pods", &pods_path).await.map_err(|e| e.to_string())?;
        let on: Vec<String> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
            .collect();
        addon_nodes.insert(a.name.to_owned(), on);
    }
    let pdbs = client
        .get::<Value>("the PodDisruptionBudgets", "/apis/policy/v1/poddisruptionbudgets")
        .await
        .map_err(|e| e.to_string())?;
    let blocking_pdbs = pdbs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["expectedPods"].as_u64().unwrap_or(0) > 0
                && p["status"]["disruptionsAllowed"].as_u64() == Some(0)
        })
        .map(|p| {
            format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap_or(""),
                p["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    let ns = client
        .get::<Value>("namespace kube-system", "/api/v1/namespaces/kube-system")
        .await
        .map_err(|e| e.to_string())?;
    let kube_system_labels = ns["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    Ok(KubeReading {
        schedulable: crate::addons::count_schedulable(&nodes.items),
        addons,
        addon_nodes,
        blocking_pdbs,
        kube_system_labels,
    })
}

#[cfg(test)]
mod tests;
