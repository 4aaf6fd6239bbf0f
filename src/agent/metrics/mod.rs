//! `/metrics`: what the agent knows of its node and, on the leader, of the
//! cluster, in Prometheus' text format.
//!
//! Every scrape is read fresh: the node's part from `state.json` (what the
//! agent last saw of its components and balancer) and the certificates on
//! disk; a master's etcd part from etcd itself and its member's own metrics
//! listener; the cluster's part (every node's heartbeat, the purge's view,
//! the add-ons) only from the elected leader, so that each of those series
//! has one source and an alert on it fires once. Nothing is sampled while
//! nobody scrapes, which keeps the idle agent small. Each part is bounded,
//! and the scrape as a whole by [`SCRAPE_BUDGET`]: a part that has not
//! answered by then is left out, so a scrape answers within Prometheus'
//! default 10 s timeout however etcd or the API server stall.

pub mod serve;

use std::time::Duration;

use crate::agent::state::{Phase, State};
use crate::cluster::report::{ClusterReport, EtcdReport};
use crate::config::{ClusterConfig, Component};
use crate::host::paths::Paths;
use crate::kube::inventory::Row;
use crate::metrics::{counter_series, etcd, flag, label, Series as Out};

/// The longest a scrape takes, under Prometheus' default timeout of 10 s
/// (its parts' own bounds add up to more).
const SCRAPE_BUDGET: Duration = Duration::from_secs(9);

/// Everything one scrape of this agent shows.
pub async fn render(paths: &Paths, cfg: &ClusterConfig) -> String {
    let deadline = tokio::time::Instant::now() + SCRAPE_BUDGET;
    let bounded = |limit: Duration| (tokio::time::Instant::now() + limit).min(deadline);
    let mut out = Out::default();
    let state = State::read(&paths.state_file());
    node_series(&mut out, cfg, state.as_ref());
    certificate_series(&mut out, &crate::kube::inventory::inventory(paths));
    process_series(&mut out);
    if cfg.has(Component::Etcd) {
        let (etcd, local) = tokio::join!(
            tokio::time::timeout_at(bounded(Duration::from_secs(5)), crate::cluster::report::probe_etcd(paths, cfg)),
            tokio::time::timeout_at(
                bounded(Duration::from_secs(2)),
                etcd::fetch(cfg.etcd_metrics_address(), Duration::from_secs(2))
            ),
        );
        let (etcd, local) = (etcd.ok(), local.ok().and_then(Result::ok));
        etcd_series(&mut out, etcd.as_ref(), local.as_ref());
        let cluster = match &etcd {
            Some(e) if e.healthy => tokio::time::timeout_at(
                bounded(Duration::from_secs(4)),
                crate::cluster::report::probe_cluster(paths, cfg),
            )
            .await
            .ok()
            .and_then(Result::ok),
            _ => None,
        };
        let leads = cluster.as_ref().is_some_and(|c| c.leader.as_deref() == Some(cfg.node.name.as_str()));
        out.one(
            "hakube_cluster_leader",
            "Whether this agent is the elected leader of the masters' agents",
            flag(leads),
        );
        if let (true, Some(c)) = (leads, &cluster) {
            cluster_series(&mut out, c, crate::host::clock::now_secs());
            let queue = tokio::time::timeout_at(bounded(Duration::from_secs(2)), lock_queue(paths, cfg));
            let addons = async {
                if !cfg.has(Component::KubeApiserver) {
                    return None;
                }
                let probe = crate::cluster::report::probe_addons(paths, cfg);
                tokio::time::timeout_at(bounded(Duration::from_secs(4)), probe).await.ok().map(|(a, _)| a)
            };
            let (queue, addons) = tokio::join!(queue, addons);
            if let Some(n) = queue.ok().flatten() {
                out.one(
                    "hakube_etcd_membership_lock_queue",
                    "Holders and waiters of the etcd membership lock (a join or removal holds it)",
                    n as f64,
                );
            }
            if cfg.has(Component::KubeApiserver) {
                addon_series(&mut out, &addons.unwrap_or_default());
            }
        }
    }
    counter_series(&mut out);
    out.encode()
}

fn node_series(out: &mut Out, cfg: &ClusterConfig, state: Option<&State>) {
    if let Some(b) = crate::cluster::upgrade::running() {
        out.gauge(
            "hakube_build_info",
            "The hakube build this agent runs",
            [(vec![("version", b.version.clone()), ("sha256", b.sha256.clone())], 1.0)],
        );
    }
    let Some(state) = state else { return };
    out.one("hakube_agent_start_time_seconds", "When the agent started, in unix seconds", state.started_at as f64);
    out.one(
        "hakube_config_reload_failed",
        "Whether the agent refused its last configuration (it runs the one before)",
        flag(state.reload_error.is_some()),
    );
    out.one(
        "hakube_node_purged",
        "Whether the cluster purged this node (it runs nothing until reset)",
        flag(state.purged.is_some()),
    );
    let comps: Vec<(&str, Option<&crate::agent::state::ComponentState>)> =
        cfg.node.components.iter().map(|c| (c.name(), state.components.get(c.name()))).collect();
    out.gauge(
        "hakube_component_running",
        "Whether the component's process runs (started and not exited)",
        comps.iter().map(|(n, s)| (label("component", *n), flag(s.is_some_and(|s| s.phase == Phase::Running)))),
    );
    out.gauge(
        "hakube_component_healthy",
        "Whether the component runs and its health probe passes",
        comps
            .iter()
            .map(|(n, s)| (label("component", *n), flag(s.is_some_and(|s| s.phase == Phase::Running && s.healthy)))),
    );
    out.counter(
        "hakube_component_restarts",
        "Times the agent restarted the component after it exited or failed its probe",
        comps.iter().map(|(n, s)| (label("component", *n), s.map_or(0, |s| u64::from(s.restarts)))),
    );
    if !state.vip.is_empty() {
        let address = |a: &String| label("address", a.clone());
        out.gauge(
            "hakube_vip_held",
            "Whether this master holds the virtual IP",
            state.vip.iter().map(|(a, p)| (address(a), flag(p.holding_since.is_some()))),
        );
        out.counter(
            "hakube_vip_takeovers",
            "Times this master took the virtual IP since its agent started",
            state.vip.iter().map(|(a, p)| (address(a), p.takeovers)),
        );
        out.gauge(
            "hakube_vip_unusable",
            "Whether this master cannot hold the virtual IP (no interface for its subnet)",
            state.vip.iter().map(|(a, p)| (address(a), flag(p.problem.is_some()))),
        );
    }
    if let Some(lb) = &state.load_balancer {
        out.one("hakube_lb_listening", "Whether the node-local API load balancer listens", flag(lb.listening));
        let backend = |b: &crate::lb::BackendStatus| vec![("backend", b.name.clone()), ("address", b.address.clone())];
        out.gauge(
            "hakube_lb_backend_up",
            "Whether the node-local load balancer sends connections to this API server",
            lb.backends.iter().map(|b| (backend(b), flag(b.health == crate::lb::Health::Up))),
        );
        out.gauge(
            "hakube_lb_backend_active_connections",
            "Connections relayed to this API server now",
            lb.backends.iter().map(|b| (backend(b), b.active as f64)),
        );
        out.counter(
            "hakube_lb_backend_connections",
            "Connections relayed to this API server since the balancer started",
            lb.backends.iter().map(|b| (backend(b), b.connections)),
        );
        out.counter(
            "hakube_lb_backend_dial_failures",
            "Connections this API server did not take, each failed over to the next one",
            lb.backends.iter().map(|b| (backend(b), b.dial_failures)),
        );
    }
}

fn certificate_series(out: &mut Out, rows: &[Row]) {
    out.gauge(
        "hakube_certificate_expiry_timestamp_seconds",
        "When the certificate expires (notAfter), in unix seconds",
        rows.iter().filter_map(|r| {
            let kind = if r.is_ca { "ca" } else { "leaf" };
            Some((vec![("certificate", r.name.clone()), ("kind", kind.to_owned())], r.not_after? as f64))
        }),
    );
    out.one(
        "hakube_certificates_unreadable",
        "Certificate files the agent cannot read or parse (`hakube certs check-expiration` names them)",
        rows.iter().filter(|r| r.not_after.is_none()).count() as f64,
    );
}

/// The two process series every Prometheus client exports (Linux only).
fn process_series(out: &mut Out) {
    if let Some(rss) = crate::host::process::resident_bytes() {
        out.one("process_resident_memory_bytes", "Resident memory size in bytes", rss as f64);
    }
    if let Some(cpu) = crate::host::process::cpu_seconds() {
        out.counter_f("process_cpu_seconds", "Total user and system CPU time spent in seconds", cpu);
    }
}

fn etcd_series(out: &mut Out, etcd: Option<&EtcdReport>, local: Option<&etcd::EtcdMetrics>) {
    out.one(
        "hakube_etcd_healthy",
        "Whether a linearizable read through this master's etcd member succeeds (the cluster has quorum)",
        flag(etcd.is_some_and(|e| e.healthy)),
    );
    if let Some(e) = etcd.filter(|e| e.healthy) {
        out.one("hakube_etcd_voters", "Voting members of etcd", e.voters as f64);
        out.one(
            "hakube_etcd_learners",
            "Learners of etcd (a master joining)",
            e.members.iter().filter(|m| m.member.is_learner).count() as f64,
        );
        out.one(
            "hakube_etcd_failures_tolerated",
            "Voting members etcd can lose and keep its quorum",
            e.failures_tolerated as f64,
        );
        out.gauge(
            "hakube_etcd_member_healthy",
            "Whether the voting member answers a health check, as this master sees it",
            e.members.iter().filter_map(|m| Some((label("member", m.member.name.clone()), flag(m.healthy?)))),
        );
    }
    let Some(m) = local else { return };
    if let Some(v) = m.db_size_bytes {
        out.one("hakube_etcd_db_size_bytes", "Size of this member's database file", v);
    }
    if let Some(v) = m.quota_bytes {
        out.one("hakube_etcd_db_quota_bytes", "The database size at which etcd stops taking writes", v);
    }
    if let Some(v) = m.has_leader {
        out.one("hakube_etcd_has_leader", "Whether this member knows a Raft leader", flag(v));
    }
    if let Some(v) = m.leader_changes {
        out.counter(
            "hakube_etcd_leader_changes",
            "Raft leader changes this member saw since it started",
            [(vec![], v as u64)],
        );
    }
}

fn cluster_series(out: &mut Out, c: &ClusterReport, now: u64) {
    let node = |name: &str| label("node", name);
    out.gauge(
        "hakube_node_heartbeat_age_seconds",
        "Seconds since the node's agent last wrote its heartbeat (the leader's clock)",
        c.nodes.iter().map(|n| {
            (vec![("node", n.name.clone()), ("role", n.role.to_string())], now.saturating_sub(n.heartbeat_at) as f64)
        }),
    );
    out.gauge(
        "hakube_node_healthy",
        "Whether everything the node runs was healthy at its last heartbeat",
        c.nodes.iter().filter_map(|n| Some((node(&n.name), flag(n.healthy?)))),
    );
    out.gauge(
        "hakube_node_clock_offset_seconds",
        "The node's clock minus a master's, as the node last measured it",
        c.nodes.iter().filter_map(|n| Some((node(&n.name), n.clock_offset_ms? as f64 / 1000.0))),
    );
    out.one("hakube_settings_revision", "The revision of the cluster-wide settings", c.settings_revision as f64);
    out.gauge(
        "hakube_node_settings_converged",
        "Whether the node runs the current revision of the cluster-wide settings",
        c.nodes.iter().map(|n| (node(&n.name), flag(!c.not_converged.contains(&n.name)))),
    );
    let view = c.purge.as_ref();
    out.gauge(
        "hakube_node_lost",
        "Whether the leader judges the node lost: its heartbeat and its kubelet are both silent, or cannot be read",
        view.into_iter()
            .flat_map(|v| &v.nodes)
            .map(|n| (node(&n.name), flag(n.assessment != crate::cluster::purge::Assessment::Alive))),
    );
    out.gauge(
        "hakube_node_purge_held_back",
        "Whether the node is due to be purged and a guard (quorum, a lock, a doubt) holds the purge back",
        view.into_iter().flat_map(|v| &v.nodes).map(|n| (node(&n.name), flag(n.held_back.is_some()))),
    );
    out.one(
        "hakube_purge_in_progress",
        "Whether a purge of a lost node is under way",
        flag(view.is_some_and(|v| v.current.is_some())),
    );
    out.one(
        "hakube_upgrade_in_progress",
        "Whether an upgrade of the cluster is under way",
        flag(c.upgrade.as_ref().is_some_and(|u| u.running())),
    );
    out.one(
        "hakube_load_balancer_change_in_progress",
        "Whether a change of the cluster's load-balancer address is under way",
        flag(c.settings.as_ref().is_some_and(|s| s.load_balancer_change.is_some())),
    );
}

fn addon_series(out: &mut Out, addons: &[crate::addons::AddonStatus]) {
    let addon =
        |a: &crate::addons::AddonStatus| vec![("addon", a.name.to_owned()), ("namespace", a.namespace.to_owned())];
    out.gauge(
        "hakube_addon_ready",
        "Whether every wanted replica of the add-on is ready",
        addons.iter().map(|a| (addon(a), flag(a.is_ready()))),
    );
    out.gauge(
        "hakube_addon_replicas_ready",
        "Ready replicas of the add-on",
        addons.iter().map(|a| (addon(a), f64::from(a.ready))),
    );
    out.gauge(
        "hakube_addon_replicas_desired",
        "Replicas of the add-on wanted",
        addons.iter().map(|a| (addon(a), f64::from(a.desired))),
    );
}

/// Keys under the membership lock: its holder and who waits for it.
async fn lock_queue(paths: &Paths, cfg: &ClusterConfig) -> Option<i64> {
    let (mut client, _) = crate::etcd::Local::connect(paths, cfg, Duration::from_secs(2)).await.ok()?;
    let prefix = format!("{}/", crate::etcd::membership::MEMBERSHIP_LOCK);
    let opts = etcd_client::GetOptions::new().with_prefix().with_count_only();
    client.get(prefix, Some(opts)).await.ok().map(|r| r.count())
}

#[cfg(test)]
mod tests;
