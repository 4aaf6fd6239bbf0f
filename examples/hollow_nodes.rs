//! Hollow nodes for `scripts/bench-scale.sh`: N Nodes that look alive to the
//! cluster without running anything, as kubemark's hollow kubelets do but
//! in one small process. Each has a Node (Ready, an InternalIP on the
//! sandbox's network), a Lease in `kube-node-lease` renewed every 10 s as a
//! kubelet renews its own, and a hakube registry record whose heartbeat is
//! written every 5 s (straight into etcd: the write a master makes for a
//! worker's heartbeat, without the worker's certificate and request).
//!
//! After `--lose-after` seconds the first `--lose` nodes stop renewing both
//! (a lost node). For `--seconds` in all it samples: the API server's
//! request counts (its /metrics), the leader's purge view (its round time,
//! and when each lost node's purge began), and every agent's CPU time and
//! memory. Prints one JSON object; removes the hollow nodes at the end.
//!
//!   hollow_nodes --root DIR (a master's hakube root) --count N
//!                [--seconds 180] [--lose 1] [--lose-after 60]
//!                [--agent-root DIR ...] [--address-base 10.77.0.100]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hakube::cluster::registry::{self, NodeRecord};
use hakube::cluster::Role;
use hakube::host::paths::Paths;
use hakube::kube::client::{KubeClient, Patch};
use serde_json::json;

struct Args {
    root: String,
    count: usize,
    seconds: u64,
    lose: usize,
    lose_after: u64,
    agent_roots: Vec<String>,
    address_base: Ipv4Addr,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        root: String::new(),
        count: 0,
        seconds: 180,
        lose: 1,
        lose_after: 60,
        agent_roots: vec![],
        address_base: Ipv4Addr::new(10, 77, 0, 100),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--root" => a.root = value()?,
            "--count" => a.count = number(value()?)? as usize,
            "--seconds" => a.seconds = number(value()?)?,
            "--lose" => a.lose = number(value()?)? as usize,
            "--lose-after" => a.lose_after = number(value()?)?,
            "--agent-root" => a.agent_roots.push(value()?),
            "--address-base" => a.address_base = value()?.parse().map_err(|e| format!("--address-base: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.root.is_empty() || a.count == 0 {
        return Err("usage: hollow_nodes --root DIR --count N [--seconds S] [--lose K] [--lose-after S]".into());
    }
    Ok(a)
}

fn micro_now() -> String {
    hakube::kube::event::micro_time(time::OffsetDateTime::now_utc())
}

fn name(i: usize) -> String {
    format!("hollow-{i:04}")
}

/// The hollow node's address: one of 150 unused ones on the sandbox's /24
/// (routes to its pods go via it; nothing answers there, nothing needs to).
fn address(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    let [a, b, c, d] = base.octets();
    Ipv4Addr::new(a, b, c, d.wrapping_add((i % 150) as u8))
}

/// Sums of `apiserver_request_total` by "VERB resource", over every
/// master's API server (each counts what it served itself).
async fn request_counts(kube: &KubeClient, servers: &[hakube::config::HostPort]) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for server in servers {
        let Ok(text) = kube.with_servers(vec![server.clone()]).get_text("metrics", "/metrics").await else {
            eprintln!("hollow_nodes: no metrics from {server}");
            continue;
        };
        add_counts(&text, &mut sums);
    }
    sums
}

fn add_counts(text: &str, sums: &mut BTreeMap<String, f64>) {
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |k: &str| {
            labels.split(&format!("{k}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_owned()
        };
        let key = format!("{} {}", label("verb"), label("resource"));
        *sums.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
}

/// An agent's CPU seconds and resident memory (KiB), from /proc.
fn agent_usage(root: &str) -> Option<(f64, u64)> {
    let pid = std::fs::read_to_string(Paths::new(root).agent_pid_file()).ok()?.trim().parse::<u32>().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((ticks / 100.0, rss))
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hollow_nodes: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(a).await {
        eprintln!("hollow_nodes: {e}");
        std::process::exit(1);
    }
}

async fn run(a: Args) -> Result<(), String> {
    let paths = Paths::new(&a.root);
    let cfg = hakube::config::load_installed(&paths.config_file())
        .map_err(|e| e.to_string())?
        .ok_or("no cluster.yaml under --root")?;
    let kube = KubeClient::from_kubeconfig(&paths.kubeconfig("admin")).map_err(|e| e.to_string())?;
    let (mut etcd, endpoint) =
        hakube::etcd::Local::connect(&paths, &cfg, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let names: Vec<String> = (0..a.count).map(name).collect();

    // Create: Node, Lease, registry record (a tombstone of an earlier run
    // goes first, as a reset and a join again would clear it).
    let t = Instant::now();
    for (i, n) in names.iter().enumerate() {
        hakube::cluster::purge::clear_tombstone(&mut etcd, &endpoint, n).await.map_err(|e| e.to_string())?;
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n, "labels": {"hakube.io/hollow": "true"}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": address(a.address_base, i).to_string()}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "lastHeartbeatTime": hakube::host::clock::rfc3339(hakube::host::clock::now_secs()),
                                "lastTransitionTime": hakube::host::clock::rfc3339(hakube::host::clock::now_secs())}]
            }
        });
        kube.create::<serde_json::Value>(&format!("node {n}"), "/api/v1/nodes", &node)
            .await
            .or_else(|e| if e.is_conflict() { Ok(json!({})) } else { Err(e) })
            .map_err(|e| e.to_string())?;
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": n, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": n, "leaseDurationSeconds": 40, "renewTime": micro_now()}
        });
        kube.create::<serde_json::Value>(&format!("lease {n}"), hakube::kube::objects::node_leases_path(), &lease)
            .await
            .or_else(|e| if e.is_conflict() { Ok(json!({})) } else { Err(e) })
            .map_err(|e| e.to_string())?;
        let now = hakube::host::clock::now_secs();
        let record = NodeRecord {
            name: n.clone(),
            role: Role::Worker,
            address: address(a.address_base, i).into(),
            joined_at: now,
            heartbeat_at: now,
            settings_revision: 0,
            clock_offset_ms: None,
            versions: Default::default(),
            healthy: None,
            hakube: None,
            balancer: None,
        };
        registry::claim(&mut etcd, &endpoint, record).await.map_err(|e| e.to_string())?;
    }
    let created_s = t.elapsed().as_secs_f64();
    eprintln!("hollow_nodes: {} nodes created in {created_s:.1}s", a.count);

    // Every master's API server, for its own request counts.
    let masters: Vec<hakube::config::HostPort> = registry::list(&mut etcd, &endpoint)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|r| r.role == Role::Master)
        .map(|r| hakube::config::HostPort::new(hakube::config::Host::Ip(r.address), cfg.node.api_server_port))
        .collect();

    // Keep them alive; sample.
    let started = Instant::now();
    let before = request_counts(&kube, &masters).await;
    let usage_before: Vec<_> = a.agent_roots.iter().map(|r| agent_usage(r)).collect();
    let mut own_requests = 0u64;
    let mut rounds = Vec::new();
    let mut lost_at: Option<Instant> = None;
    let mut lost_wall = u64::MAX;
    let mut purge_began: BTreeMap<String, f64> = BTreeMap::new();
    let mut max_rss = vec![0u64; a.agent_roots.len()];
    let mut next_lease = 0usize;
    let mut last_beat = Instant::now() - Duration::from_secs(10);
    let mut last_sample = Instant::now();
    let tick = Duration::from_millis(100);
    while started.elapsed() < Duration::from_secs(a.seconds) {
        let lost = started.elapsed() >= Duration::from_secs(a.lose_after);
        if lost && lost_at.is_none() {
            lost_at = Some(Instant::now());
            lost_wall = hakube::host::clock::now_secs();
            eprintln!("hollow_nodes: {} node(s) lost now", a.lose);
        }
        let alive = |i: usize| !(lost && i < a.lose);
        // Leases: each every 10 s (100 ticks), spread over the ticks.
        let batch: Vec<usize> = (0..a.count).filter(|i| i % 100 == next_lease && alive(*i)).collect();
        next_lease = (next_lease + 1) % 100;
        let renew = batch.iter().map(|i| {
            let path = format!("{}/{}", hakube::kube::objects::node_leases_path(), names[*i]);
            let body = json!({"spec": {"renewTime": micro_now()}});
            let kube = &kube;
            async move { kube.patch::<serde_json::Value>("lease", &path, Patch::Merge, &body).await.is_ok() }
        });
        own_requests += futures_util::future::join_all(renew).await.len() as u64;
        // Heartbeats every 5 s.
        if last_beat.elapsed() >= Duration::from_secs(5) {
            last_beat = Instant::now();
            let now = hakube::host::clock::now_secs();
            for (_, n) in names.iter().enumerate().filter(|(i, _)| alive(*i)) {
                let _ = registry::update(&mut etcd, &endpoint, n, |r| r.heartbeat_at = now).await;
            }
        }
        // Samples every 2 s: the leader's view, the agents' memory.
        if last_sample.elapsed() >= Duration::from_secs(2) {
            last_sample = Instant::now();
            if let Ok(Some(view)) = hakube::cluster::purge::read_view(&mut etcd, &endpoint).await {
                if let Some(ms) = view.round_ms {
                    rounds.push((view.at, ms));
                }
                if let (Some(lost), Some(p)) = (lost_at, view.current.as_ref().filter(|p| p.started_at >= lost_wall)) {
                    purge_began.entry(p.node.name.clone()).or_insert(lost.elapsed().as_secs_f64());
                }
            }
            if let Ok(history) = hakube::cluster::purge::history(&mut etcd, &endpoint).await {
                // Purges of this run only (the history keeps earlier ones).
                for p in history.into_iter().filter(|p| p.started_at >= lost_wall) {
                    if let Some(lost) = lost_at {
                        purge_began.entry(p.node.name.clone()).or_insert(lost.elapsed().as_secs_f64());
                    }
                }
            }
            for (k, r) in a.agent_roots.iter().enumerate() {
                if let Some((_, rss)) = agent_usage(r) {
                    max_rss[k] = max_rss[k].max(rss);
                }
            }
        }
        tokio::time::sleep(tick).await;
    }
    let window = started.elapsed().as_secs_f64();
    let after = request_counts(&kube, &masters).await;
    let usage_after: Vec<_> = a.agent_roots.iter().map(|r| agent_usage(r)).collect();

    let mut rates = BTreeMap::new();
    let mut total = 0.0;
    for (k, v) in &after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        total += d;
        if d > 0.0 {
            rates.insert(k.clone(), ((d / window) * 100.0).round() / 100.0);
        }
    }
    rounds.dedup();
    let mut round_ms: Vec<u64> = rounds.iter().map(|(_, ms)| *ms).collect();
    let agents: Vec<_> = a
        .agent_roots
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let cpu = match (usage_before[k], usage_after[k]) {
                (Some((b, _)), Some((e, _))) => ((e - b) / window * 1000.0).round() / 10.0,
                _ => -1.0,
            };
            json!({"root": r, "cpu_percent": cpu, "max_rss_kib": max_rss[k]})
        })
        .collect();
    let report = json!({
        "hollow_nodes": a.count,
        "created_s": (created_s * 10.0).round() / 10.0,
        "window_s": window.round(),
        "api_requests_per_s": {
            "total": ((total / window) * 10.0).round() / 10.0,
            "hollow_nodes_own": ((own_requests as f64 / window) * 10.0).round() / 10.0,
            "by_verb_and_resource": rates,
        },
        "leader_round_ms": {"p50": percentile(&mut round_ms.clone(), 0.5), "p95": percentile(&mut round_ms.clone(), 0.95), "max": percentile(&mut round_ms, 1.0), "samples": rounds.len()},
        "lost": a.lose,
        "toleration": cfg.cluster.lost_node_toleration.to_string(),
        "purge_began_after_loss_s": purge_began,
        "agents": agents,
    });
    println!("{report}");

    // Remove the hollow nodes (purged ones are gone already).
    for n in &names {
        let _ = kube.delete(&format!("node {n}"), &format!("/api/v1/nodes/{n}"), &json!({})).await;
        let lease = format!("{}/{}", hakube::kube::objects::node_leases_path(), n);
        let _ = kube.delete(&format!("lease {n}"), &lease, &json!({})).await;
        let _ = registry::delete(&mut etcd, &endpoint, n).await;
    }
    Ok(())
}
