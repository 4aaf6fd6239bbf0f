//! What hakube costs as the cluster grows, with simulated nodes.
//!
//! Brings up a sandbox (3 masters + 1 worker, lost-node-toleration=60s),
//! then for each size runs examples/hollow_nodes.rs in the first master's
//! network: that many hollow Nodes, each with a Lease renewed every 10 s and
//! a hakube heartbeat every 5 s, one of them lost after 60 s. It reports the
//! API server's request rate (from its /metrics; the hollow nodes' own
//! renewals are given apart), the leader's purge round time, the time from
//! the loss to the purge's start, and every agent's CPU and memory.
//! `--baseline-bin` runs the same sizes with another hakube binary in a
//! second sandbox, side by side in the table (an older build: the comparison
//! is hakube with itself, as no other tool does this job).
//! Goals: the leader's round under 1 s at 500 nodes; the lost node's purge
//! starting within toleration + 10 s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{BenchSandbox, WorkDir};
use crate::proc::{self, in_ns, msg};

#[derive(clap::Args)]
pub struct Args {
    /// Numbers of hollow nodes, separated by commas.
    #[arg(long, default_value = "50,500", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=5000))]
    sizes: Vec<u32>,
    /// Seconds each size runs (one node is lost after 60 s).
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(120..))]
    seconds: u64,
    /// Another hakube binary to run the same sizes with, side by side.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(b) = &args.baseline_bin {
        anyhow::ensure!(b.is_file(), "--baseline-bin {}: no such file", b.display());
    }
    let (bin, bundle) = super::binary_and_bundle()?;
    msg!("building the hollow-node simulator");
    let mut build = std::process::Command::new("cargo");
    build.current_dir(proc::repo()).args(["build", "--release", "--locked", "--quiet", "--example", "hollow_nodes"]);
    proc::run(build, "cargo build --example hollow_nodes")?;
    let work = WorkDir::new("bench-scale")?;
    let result = bench(&args, &work, bin, bundle);
    work.finish(result)
}

/// One JSON report of the simulator per size.
type Reports = BTreeMap<u32, Value>;

fn bench(args: &Args, work: &WorkDir, bin: PathBuf, bundle: PathBuf) -> Result<()> {
    let now = run_sizes(args, work, "hakube", bin, &bundle)?;
    let base = match &args.baseline_bin {
        Some(b) => run_sizes(args, work, "baseline", std::path::absolute(b)?, &bundle)?,
        None => Reports::new(),
    };
    print!("{}", table(&now, &base));
    print!("{}", growth(&now));
    Ok(())
}

/// The requests that grew most from the smallest size to the largest, by
/// verb and resource: which part of the load follows the node count (the
/// hollow nodes' own Lease renewals are `PATCH leases`; hakube's own are
/// its watches and the few GETs above; the rest are Kubernetes' own
/// controllers and kubelets).
fn growth(now: &Reports) -> String {
    let (Some((lo, first)), Some((hi, last))) = (now.first_key_value(), now.last_key_value()) else {
        return String::new();
    };
    if lo == hi {
        return String::new();
    }
    let rates = |r: &Value| -> std::collections::BTreeMap<String, f64> {
        r["api_requests_per_s"]["by_verb_and_resource"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
            .collect()
    };
    let (a, b) = (rates(first), rates(last));
    let mut grew: Vec<(String, f64, f64)> = b
        .iter()
        .map(|(k, &v)| (k.clone(), a.get(k).copied().unwrap_or(0.0), v))
        .filter(|(_, x, y)| y - x >= 0.05)
        .collect();
    grew.sort_by(|p, q| (q.2 - q.1).total_cmp(&(p.2 - p.1)).then(p.0.cmp(&q.0)));
    let mut out = format!("\nrequests/s that grew most from N={lo} to N={hi} (hakube's run)\n");
    for (k, x, y) in grew.iter().take(8) {
        out += &format!("  {k:42}{x:>10.2}{y:>12.2}\n");
    }
    out
}

/// A sandbox with `bin`, every size in it.
fn run_sizes(args: &Args, work: &WorkDir, label: &str, bin: PathBuf, bundle: &Path) -> Result<Reports> {
    let dir = work.path().join(label);
    std::fs::create_dir(&dir)?;
    let sb = BenchSandbox::new_in(&dir, bin.clone(), bundle.to_path_buf())?;
    msg!("{label}: sandbox up (3 masters, 1 worker) with {} (log: {})", bin.display(), sb.log.display());
    sb.up(3, 1, "lost-node-toleration=60s").with_context(|| label.to_owned())?;
    let sim = proc::repo().join("target/release/examples/hollow_nodes");
    let mut reports = Reports::new();
    for &n in &args.sizes {
        proc::check_stop()?;
        msg!("{label}: {n} hollow nodes for {}s (one lost after 60s)", args.seconds);
        let mut cmd = in_ns("hk-m1", &sim);
        cmd.arg("--root").arg(sb.sandbox.root("m1"));
        cmd.args([
            "--count",
            &n.to_string(),
            "--seconds",
            &args.seconds.to_string(),
            "--lose",
            "1",
            "--lose-after",
            "60",
        ]);
        for h in ["m1", "m2", "m3", "w1"] {
            cmd.arg("--agent-root").arg(sb.sandbox.root(h));
        }
        let out = proc::output(cmd, &format!("the simulator at {n} nodes"))?;
        reports.insert(n, serde_json::from_str(&out).context("the simulator printed no JSON")?);
    }
    Ok(reports)
}

type Row = (&'static str, fn(&Value) -> String, &'static str);

fn per_s(r: &Value, key: &str) -> String {
    format!("{}", r["api_requests_per_s"]["by_verb_and_resource"][key].as_f64().unwrap_or(0.0))
}

fn round_ms(r: &Value, p: &str) -> String {
    // A build that does not record its round time shows "-".
    match r["leader_round_ms"]["samples"].as_u64() {
        Some(n) if n > 0 => r["leader_round_ms"][p].to_string(),
        _ => "-".into(),
    }
}

fn agents(r: &Value, key: &str, scale: f64, unit: &str) -> String {
    let v: Vec<f64> =
        r["agents"].as_array().into_iter().flatten().filter_map(|a| a[key].as_f64()).map(|v| v / scale).collect();
    match super::min_max(&v) {
        Some((lo, hi)) if scale > 1.0 => format!("{}-{} {unit}", lo.floor(), hi.floor()),
        Some((lo, hi)) => format!("{lo}-{hi}{unit}"),
        None => "-".into(),
    }
}

const ROWS: &[Row] = &[
    ("API requests/s, all", |r| r["api_requests_per_s"]["total"].to_string(), ""),
    (
        "API requests/s, not the hollow nodes' own",
        |r| {
            let t = &r["api_requests_per_s"];
            let own = t["total"].as_f64().unwrap_or(0.0) - t["hollow_nodes_own"].as_f64().unwrap_or(0.0);
            format!("{:.1}", own)
        },
        "flat in N",
    ),
    ("LIST nodes/s", |r| per_s(r, "LIST nodes"), ""),
    ("GET leases/s", |r| per_s(r, "GET leases"), ""),
    ("leader round ms, p50", |r| round_ms(r, "p50"), ""),
    ("leader round ms, p95", |r| round_ms(r, "p95"), "< 1000 at 500"),
    (
        // Sampled every 2 s.
        "loss to purge start, s",
        |r| {
            let v = r["purge_began_after_loss_s"].as_object().into_iter().flatten().filter_map(|(_, v)| v.as_f64());
            v.min_by(f64::total_cmp).map_or("-".into(), |s| format!("{s:.1}"))
        },
        "< 70 (60 s + 10)",
    ),
    ("agents' CPU (min-max)", |r| agents(r, "cpu_percent", 1.0, "%"), ""),
    ("agents' memory (min-max)", |r| agents(r, "max_rss_kib", 1024.0, "MiB"), ""),
];

fn table(now: &Reports, base: &Reports) -> String {
    let mut out = String::from("\nbench-scale: hollow nodes against 3 masters + 1 worker\n");
    out += &format!("{:44}", "");
    for n in now.keys() {
        out += &format!("{:>16}", format!("N={n}"));
        if !base.is_empty() {
            out += &format!("{:>12}", "baseline");
        }
    }
    out += "   goal\n";
    for (name, f, goal) in ROWS {
        out += &format!("{name:44}");
        for (n, r) in now {
            out += &format!("{:>16}", f(r));
            if !base.is_empty() {
                out += &format!("{:>12}", base.get(n).map_or("-".into(), f));
            }
        }
        out += &format!("   {goal}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_puts_the_baseline_beside_each_size() {
        let report = |total: f64, own: f64, cpu: f64| {
            serde_json::json!({
                "api_requests_per_s": {"total": total, "hollow_nodes_own": own,
                    "by_verb_and_resource": {"LIST nodes": 0.09, "GET leases": 1.61}},
                "leader_round_ms": {"samples": 10, "p50": 12, "p95": 39},
                "purge_began_after_loss_s": {"hollow-7": 59.94},
                "agents": [{"cpu_percent": cpu, "max_rss_kib": 12_800}, {"cpu_percent": 1.5, "max_rss_kib": 14_500}]
            })
        };
        let now = Reports::from([(50, report(40.0, 18.6, 0.3))]);
        let base = Reports::from([(50, report(90.0, 18.7, 2.0))]);
        let text = table(&now, &base);
        let cells = |name: &str| {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {text}"));
            line[name.len()..].split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert_eq!(cells(" "), "N=50 baseline goal");
        assert_eq!(cells("API requests/s, not the hollow nodes' own"), "21.4 71.3 flat in N");
        assert_eq!(cells("leader round ms, p95"), "39 39 < 1000 at 500");
        assert_eq!(cells("loss to purge start, s"), "59.9 59.9 < 70 (60 s + 10)");
        assert_eq!(cells("agents' CPU (min-max)"), "0.3-1.5% 1.5-2%");
        assert_eq!(cells("agents' memory (min-max)"), "12-14 MiB 12-14 MiB");
    }

    #[test]
    fn growth_lists_what_follows_the_node_count_largest_first() {
        let report = |rates: Value| serde_json::json!({"api_requests_per_s": {"by_verb_and_resource": rates}});
        let now = Reports::from([
            (50, report(serde_json::json!({"PATCH leases": 5.0, "LIST nodes": 0.1, "PATCH nodes": 0.2}))),
            (
                500,
                report(
                    serde_json::json!({"PATCH leases": 50.0, "LIST nodes": 0.1, "PATCH nodes": 3.0, "POST events": 1.0}),
                ),
            ),
        ]);
        let text = growth(&now);
        let rows: Vec<Vec<&str>> = text.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            rows,
            [
                vec!["PATCH", "leases", "5.00", "50.00"],
                vec!["PATCH", "nodes", "0.20", "3.00"],
                vec!["POST", "events", "0.00", "1.00"]
            ],
            "{text}"
        );
        assert_eq!(growth(&Reports::from([(50, report(serde_json::json!({})))])), "");
    }
}
