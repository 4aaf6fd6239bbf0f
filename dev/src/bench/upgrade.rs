//! How long one re-run on a master takes to move a whole cluster to the
//! next Kubernetes minor, and what clients see meanwhile, against the same
//! move made on every node at once.
//!
//! Per trial, twice, each time on a sandbox of its own brought up on the
//! previous minor's bundle (3 masters + 2 workers by default), with a
//! client of every node's balancer (one request every 0.2 s for a
//! ConfigMap, with a ServiceAccount token) running throughout:
//!   (a) hakube: `install --bundle NEW.tar` on m2, timed from its start
//!       (it unpacks the file, checks, snapshots etcd) to its return (every
//!       node reports the new version from its running processes, healthy);
//!   (b) the baseline, every node at once (what a re-run on every node by
//!       hand comes to, kURL's way): the same file unpacked on every node
//!       in parallel, then every node's `node.bundle` pointed at it and
//!       every agent reloaded at the same moment, timed until every node's
//!       agent reports the same.
//! The figures: the wall time of each and its ratio, and the requests that
//! failed (goal: none for hakube).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{median, ratio, spread, BenchSandbox, WorkDir};
use crate::proc::{self, in_ns, msg};
use crate::sandbox::ns_of;

const MOVE_TIMEOUT: Duration = Duration::from_secs(1800);

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "BENCH_TRIALS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    trials: u32,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    masters: u8,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=9))]
    workers: u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Hakube,
    AllAtOnce,
}

/// One side's trial: seconds, requests made, requests failed.
struct Outcome {
    secs: f64,
    requests: usize,
    failed: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let (bin, new) = super::binary_and_bundle()?;
    let old = proc::script_output("bash \"$script_dir/kube-bundle.sh\" --previous")
        .context("no bundle of the previous Kubernetes minor")?;
    let work = WorkDir::new("bench-upgrade")?;
    let result = bench(&args, &work, &bin, &old, &new);
    work.finish(result)
}

fn bench(args: &Args, work: &WorkDir, bin: &Path, old: &Path, new: &Path) -> Result<()> {
    let file = work.path().join("new.tar");
    msg!("the new bundle as a file: {}", file.display());
    let mut cmd = Command::new(bin);
    cmd.args(["bundle", "create", "--from"]).arg(new).arg("--out").arg(&file);
    proc::output(cmd, "hakube bundle create")?;
    let target = version_of(new)?;
    let (mut ours, mut theirs) = (vec![], vec![]);
    for t in 1..=args.trials {
        for side in [Side::Hakube, Side::AllAtOnce] {
            proc::check_stop()?;
            let name = if side == Side::Hakube { "hakube" } else { "all" };
            let dir = work.path().join(format!("t{t}-{name}"));
            std::fs::create_dir(&dir)?;
            let sb = BenchSandbox::new_in(&dir, bin.to_owned(), old.to_owned())?;
            msg!("trial {t}/{}, {name}: sandbox up on {} (log: {})", args.trials, old.display(), sb.log.display());
            sb.up(args.masters, args.workers, "").with_context(|| format!("trial {t}"))?;
            let hosts: Vec<String> = sb.sandbox.hosts().into_iter().map(|h| h.name).collect();
            wait_reporting(&sb, &hosts, &version_of(old)?, Duration::from_secs(120))?;
            let probes = Probes::start(&sb, &dir, &hosts)?;
            let start = Instant::now();
            match side {
                Side::Hakube => hakube(&sb, bin, &file)?,
                Side::AllAtOnce => all_at_once(&sb, bin, &file, &hosts, &target)?,
            }
            let secs = start.elapsed().as_secs_f64();
            let (requests, failed) = probes.stop();
            msg!("trial {t}, {name}: {secs:.1} s; {requests} requests, {} failed", failed.len());
            let o = Outcome { secs, requests, failed };
            if side == Side::Hakube {
                ours.push(o)
            } else {
                theirs.push(o)
            }
        }
    }
    let times = |v: &[Outcome]| v.iter().map(|o| o.secs).collect::<Vec<f64>>();
    let fails = |v: &[Outcome]| v.iter().map(|o| o.failed.len() as f64).collect::<Vec<f64>>();
    let reqs = |v: &[Outcome]| v.iter().map(|o| o.requests).sum::<usize>();
    println!(
        "\nbench-upgrade, {} trial(s), {} masters + {} workers, {} -> {target}",
        args.trials,
        args.masters,
        args.workers,
        version_of(old)?
    );
    println!("{:<40} {:>22} {:>22} {:>7}", "", "hakube (one re-run)", "every node at once", "ratio");
    let (a, b) = (times(&ours), times(&theirs));
    let r = ratio(median(&a), median(&b)).map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
    println!("{:<40} {:>22} {:>22} {:>7}", "wall time, s: median (min-max)", spread(&a), spread(&b), r);
    let (fa, fb) = (fails(&ours), fails(&theirs));
    println!("{:<40} {:>22} {:>22}", "failed requests per trial", spread(&fa), spread(&fb));
    println!("{:<40} {:>22} {:>22}", "requests made, all trials", reqs(&ours), reqs(&theirs));
    for o in ours.iter().chain(&theirs).flat_map(|o| &o.failed).take(20) {
        println!("  failed: {o}");
    }
    println!("goal: no failed request for hakube; its time is the price of moving one node at a time");
    Ok(())
}

/// The Kubernetes version a bundle directory's kubelet reports.
fn version_of(bundle: &Path) -> Result<String> {
    let out = proc::output(Command::new(bundle.join("kubelet")).arg("--version"), "kubelet --version")?;
    out.split_whitespace().last().map(str::to_owned).context("kubelet --version printed no version")
}

/// (a): one re-run on m2 with the new bundle file.
fn hakube(sb: &BenchSandbox, bin: &Path, file: &Path) -> Result<()> {
    let mut cmd = in_ns(&ns_of("m2"), bin);
    cmd.arg("--root").arg(sb.sandbox.root("m2")).args(["install", "--bundle"]).arg(file);
    sb.logged(proc::bounded(MOVE_TIMEOUT, cmd), "install --bundle NEW on m2")
}

/// (b): the file unpacked on every node at once, then every node pointed at
/// it and reloaded at the same moment; done when every agent reports the
/// target from its running processes, healthy.
fn all_at_once(sb: &BenchSandbox, bin: &Path, file: &Path, hosts: &[String], target: &str) -> Result<()> {
    let dirs: Vec<Result<PathBuf>> = std::thread::scope(|s| {
        let jobs: Vec<_> = hosts
            .iter()
            .map(|h| {
                s.spawn(move || {
                    let mut cmd = Command::new(bin);
                    cmd.arg("--root").arg(sb.sandbox.root(h)).args(["bundle", "unpack"]).arg(file);
                    proc::output(cmd, &format!("bundle unpack on {h}")).map(|o| PathBuf::from(o.trim()))
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().expect("the unpack thread")).collect()
    });
    let mut agents = vec![];
    for (h, dir) in hosts.iter().zip(dirs) {
        let dir = dir?;
        let config = sb.sandbox.root(h).join("etc/hakube/cluster.yaml");
        let text = std::fs::read_to_string(&config).with_context(|| config.display().to_string())?;
        let mut replaced = false;
        let lines: Vec<String> = text
            .lines()
            .map(|l| match l.split_once("bundle:") {
                Some((indent, _)) if indent.trim().is_empty() && !replaced => {
                    replaced = true;
                    format!("{indent}bundle: {}", dir.display())
                }
                _ => l.to_owned(),
            })
            .collect();
        if !replaced {
            bail!("{}: no node.bundle line to point at the new bundle", config.display());
        }
        std::fs::write(&config, lines.join("\n") + "\n")?;
        agents.push(agent_pid(&sb.sandbox.root(h))?);
    }
    for pid in agents {
        proc::output(Command::new("kill").args(["-HUP", &pid.to_string()]), "kill -HUP the agent")?;
    }
    wait_reporting(sb, hosts, target, MOVE_TIMEOUT)
}

fn agent_pid(root: &Path) -> Result<u32> {
    let state = state(root)?;
    state["agent_pid"].as_u64().map(|p| p as u32).context("no agent pid in state.json")
}

fn state(root: &Path) -> Result<serde_json::Value> {
    let path = root.join("var/lib/hakube/state.json");
    Ok(serde_json::from_slice(&std::fs::read(&path).with_context(|| path.display().to_string())?)?)
}

/// Until every host's agent says each Kubernetes component runs `v` and
/// every component is healthy.
fn wait_reporting(sb: &BenchSandbox, hosts: &[String], v: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        proc::check_stop()?;
        let behind: Vec<&String> = hosts
            .iter()
            .filter(|h| {
                let Ok(s) = state(&sb.sandbox.root(h)) else { return true };
                let comps = s["components"].as_object().cloned().unwrap_or_default();
                comps.is_empty()
                    || comps.values().any(|c| c["healthy"] != true || c["version"].as_str().is_some_and(|x| x != v))
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not every node runs {v}, healthy, within {} s: {behind:?}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A client of every node's balancer, from that node's network.
struct Probes {
    children: Vec<(String, Child, PathBuf)>,
}

impl Probes {
    fn start(sb: &BenchSandbox, dir: &Path, hosts: &[String]) -> Result<Probes> {
        let kubectl = |args: &[&str]| proc::output(sb.sandbox.kubectl("m1", args), "kubectl");
        kubectl(&["create", "serviceaccount", "bench-prober"])?;
        let bind = "--serviceaccount=default:bench-prober";
        kubectl(&["create", "clusterrolebinding", "bench-prober", "--clusterrole=view", bind])?;
        let token = dir.join("token");
        std::fs::write(&token, kubectl(&["create", "token", "bench-prober", "--duration=2h"])?.trim())?;
        let ca = sb.sandbox.root("m1").join("var/lib/hakube/pki/ca.crt");
        let url = "https://127.0.0.1:6444/api/v1/namespaces/kube-system/configmaps/kube-root-ca.crt";
        let mut children = vec![];
        for h in hosts {
            let log = dir.join(format!("probe-{h}.log"));
            // Bounded: 9000 requests at most (30 minutes and more).
            let script = format!(
                "for i in $(seq 1 9000); do
                   code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 --cacert {ca} \
                     -H \"Authorization: Bearer $(cat {token})\" {url} 2>/dev/null)
                   echo \"$(date +%s.%N) $code\" >> {log}
                   sleep 0.2
                 done",
                ca = ca.display(),
                token = token.display(),
                log = log.display()
            );
            let child = in_ns(&ns_of(h), "bash").args(["-c", &script]).stdout(Stdio::null()).spawn()?;
            children.push((h.clone(), child, log));
        }
        Ok(Probes { children })
    }

    /// Stops the clients: (requests made, the failed ones).
    fn stop(mut self) -> (usize, Vec<String>) {
        let (mut total, mut failed) = (0, vec![]);
        for (h, child, log) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log.as_path()).unwrap_or_default();
            for l in text.lines() {
                total += 1;
                if !l.ends_with(" 200") {
                    failed.push(format!("{h} {l}"));
                }
            }
        }
        self.children.clear();
        (total, failed)
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
