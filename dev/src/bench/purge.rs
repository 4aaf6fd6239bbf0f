//! How soon after a lost node's toleration runs out hakube has purged it,
//! for a worker and for a master.
//!
//! A sandbox of its own (3 masters, 1 worker, the real control plane) with
//! lost-node-toleration=SECONDS; then, per trial and per role:
//!   (a) the floor, side by side: the same mutations a purge makes, issued by
//!       hand from m1 with kubectl and etcdctl against a stand-in (a Node
//!       object with no kubelet and a pod bound to it; for the master, an
//!       unstarted etcd learner): taint, force-delete the pod, remove the
//!       member, delete the Node. What the purge would cost with no
//!       detection and no bookkeeping.
//!   (b) hakube: every process of the host (w1, or a master that is neither
//!       m1 nor the leader) is killed; from m1 the Node and the etcd member
//!       are polled every 0.2 s until both are gone. The moment the toleration
//!       ran out is the node's last sign of life as the purge recorded it
//!       (the later of its hakube heartbeat and its Lease, whole seconds) plus
//!       the toleration, so the latency is over-stated by less than a second.
//!       The host is then reset and joined again for the next trial.
//! Goal: at most 10 s from the toleration running out to the purge being
//! complete.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{median, ratio, secs, spread, BenchSandbox, WorkDir};
use crate::proc::{self, in_ns, msg};
use crate::sandbox::ns_of;

const PURGE_TIMEOUT: Duration = Duration::from_secs(120); // after the toleration
const POLL: Duration = Duration::from_millis(200);
const GOAL: f64 = 10.0;
const GHOST: &str = "bench-ghost";

#[derive(clap::Args)]
pub struct Args {
    /// Trials per role.
    #[arg(long, env = "BENCH_TRIALS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    trials: u32,
    /// lost-node-toleration in seconds (a node counts as alive for 15 s after
    /// its last sign of life, so at least 16).
    #[arg(long, env = "BENCH_TOLERATION", default_value_t = 20, value_parser = clap::value_parser!(u64).range(16..=3600))]
    toleration: u64,
}

struct Bench {
    sb: BenchSandbox,
    toleration: u64,
}

impl Bench {
    fn kubectl(&self, args: &[&str]) -> Command {
        self.sb.sandbox.kubectl("m1", args)
    }

    fn k(&self, args: &[&str]) -> Result<String> {
        proc::output(self.kubectl(args), &format!("kubectl {}", args.join(" ")))
    }

    /// etcdctl from m1 with the health-check client pair, as JSON.
    fn etcdctl(&self, args: &[&str]) -> Result<Value> {
        let pki = self.sb.sandbox.root("m1").join("var/lib/hakube/pki/etcd");
        let mut cmd = in_ns(&ns_of("m1"), self.sb.bundle.join("etcdctl"));
        cmd.args(["--endpoints", "https://10.77.0.11:2379", "--command-timeout=5s", "-w", "json"]);
        cmd.arg("--cacert").arg(pki.join("ca.crt"));
        cmd.arg("--cert").arg(pki.join("healthcheck-client.crt"));
        cmd.arg("--key").arg(pki.join("healthcheck-client.key"));
        let text = proc::output(cmd.args(args).env("ETCDCTL_API", "3"), &format!("etcdctl {}", args.join(" ")))?;
        serde_json::from_str(&text).with_context(|| format!("etcdctl {} printed no JSON", args.join(" ")))
    }

    /// m1's `hakube status --json` (it exits non-zero while a node is lost).
    fn status(&self) -> Value {
        let root = self.sb.sandbox.root("m1");
        let mut cmd = in_ns(&ns_of("m1"), &self.sb.bin);
        let out = cmd.arg("--root").arg(root).args(["status", "--json"]).output();
        out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default()
    }

    /// Seconds the purge's mutations take by hand, on a stand-in.
    fn floor(&self, master: bool, work: &WorkDir) -> Result<f64> {
        let image = std::fs::read_to_string(self.sb.bundle.join("test-image"))?;
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": GHOST}});
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": GHOST, "namespace": "default"},
            "spec": {"nodeName": GHOST, "containers": [{"name": "c", "image": image.trim()}]}});
        for (what, object) in [("node", node), ("pod", pod)] {
            let file = work.path().join(format!("{what}.json"));
            std::fs::write(&file, object.to_string())?;
            self.k(&["create", "-f", &file.display().to_string()])
                .with_context(|| format!("create the stand-in {what}"))?;
        }
        let member = match master {
            true => {
                let added =
                    self.etcdctl(&["member", "add", GHOST, "--learner", "--peer-urls", "https://10.77.0.99:2380"])?;
                let id = added["member"]["ID"].as_u64().context("etcdctl member add printed no member ID")?;
                Some(format!("{id:x}"))
            }
            false => None,
        };
        let t0 = Instant::now();
        self.k(&["taint", "node", GHOST, "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"])?;
        self.k(&["delete", "pod", GHOST, "--force", "--grace-period=0"])?;
        if let Some(id) = member {
            self.etcdctl(&["member", "remove", &id])?;
        }
        self.k(&["delete", "node", GHOST])?;
        Ok(t0.elapsed().as_secs_f64())
    }

    fn gone(&self, host: &str, master: bool) -> bool {
        let node_gone =
            self.k(&["get", "node", host, "--ignore-not-found", "-o", "name"]).is_ok_and(|o| o.trim().is_empty());
        if !node_gone || !master {
            return node_gone;
        }
        let members = self.etcdctl(&["member", "list"]).unwrap_or_default();
        members["members"].as_array().is_some_and(|m| m.iter().all(|m| m["name"] != host))
    }

    /// (seconds after the toleration ran out, seconds after the host stopped)
    /// until `host` is purged.
    fn measure(&self, host: &str, master: bool) -> Result<(f64, f64)> {
        let t_stop = super::now();
        proc::netns::stop(&ns_of(host), false);
        let deadline = Instant::now() + Duration::from_secs(self.toleration) + PURGE_TIMEOUT;
        while !self.gone(host, master) {
            proc::check_stop()?;
            if Instant::now() > deadline {
                let log = self.sb.sandbox.root("m1").join("var/lib/hakube/logs/agent.log");
                bail!(
                    "{host} was not purged within {} s + {} s (m1's log: {})",
                    self.toleration,
                    PURGE_TIMEOUT.as_secs(),
                    log.display()
                );
            }
            std::thread::sleep(POLL);
        }
        let t_done = super::now();
        let status = self.status();
        let purged = status["cluster"]["purged"].as_array().cloned().unwrap_or_default();
        let record = purged
            .iter()
            .find(|p| p["node"]["name"] == host)
            .with_context(|| format!("no purge of {host} in m1's status"))?;
        let last = [&record["node"]["heartbeat_at"], &record["node"]["kube_seen_at"]]
            .iter()
            .filter_map(|v| v.as_f64())
            .fold(0.0, f64::max);
        let expiry = last + self.toleration as f64;
        Ok((t_done - expiry, t_done - t_stop))
    }

    /// Resets the purged host and joins it again.
    fn rejoin(&self, host: &str) -> Result<()> {
        let mut cmd = in_ns(&ns_of(host), &self.sb.bin);
        cmd.arg("--root").arg(self.sb.sandbox.root(host)).arg("reset");
        self.sb.logged(cmd, &format!("reset {host}"))?;
        self.sb.up(3, 1, "").with_context(|| format!("join {host} again"))
    }
}

#[derive(Default)]
struct Figures {
    after_toleration: Vec<f64>,
    after_stop: Vec<f64>,
    by_hand: Vec<f64>,
}

pub fn run(args: Args) -> Result<()> {
    let (bin, bundle) = super::binary_and_bundle()?;
    let work = WorkDir::new("bench-purge")?;
    let result = bench(&args, &work, bin, bundle);
    work.finish(result)
}

fn bench(args: &Args, work: &WorkDir, bin: std::path::PathBuf, bundle: std::path::PathBuf) -> Result<()> {
    let sb = BenchSandbox::new_in(work.path(), bin, bundle)?;
    let toleration = args.toleration;
    msg!(
        "bringing up a sandbox of 3 masters and 1 worker with lost-node-toleration={toleration}s (log: {})",
        sb.log.display()
    );
    sb.up(3, 1, &format!("lost-node-toleration={toleration}s"))?;
    let bench = Bench { sb, toleration };
    let mut figures = [Figures::default(), Figures::default()];
    for t in 1..=args.trials {
        for (role, f) in ["worker", "master"].into_iter().zip(figures.iter_mut()) {
            proc::check_stop()?;
            let master = role == "master";
            f.by_hand.push(bench.floor(master, work)?);
            let host = match master {
                false => "w1",
                true => {
                    let leader = bench.status()["cluster"]["leader"].as_str().map(str::to_owned);
                    match leader.context("no leader elected")?.as_str() {
                        "m3" => "m2",
                        _ => "m3",
                    }
                }
            };
            let (after, total) = bench.measure(host, master)?;
            f.after_toleration.push(after);
            f.after_stop.push(total);
            msg!("trial {t}/{}: {role} {host} purged {after:.3}s after its toleration ran out ({total:.3}s after it stopped)", args.trials);
            bench.rejoin(host)?;
        }
    }
    println!("\npurge latency, {} trial(s) per role, lost-node-toleration={toleration}s (seconds)", args.trials);
    println!(
        "{:<8} {:<28} {:<16} {:<22} {:<10} goal",
        "role", "after toleration (min-max)", "after stop", "by hand (floor)", "ratio"
    );
    for (role, f) in ["worker", "master"].into_iter().zip(&figures) {
        let m = median(&f.after_toleration);
        let floor = median(&f.by_hand);
        let verdict = if m.is_some_and(|m| m <= GOAL) { "met" } else { "MISSED" };
        let r = ratio(m, floor).map_or("-".into(), |r| format!("{r:.2}"));
        println!(
            "{role:<8} {:<28} {:<16} {:<22} {r:<10} <= {GOAL}s {verdict}",
            spread(&f.after_toleration),
            secs(median(&f.after_stop)),
            secs(floor)
        );
    }
    Ok(())
}
