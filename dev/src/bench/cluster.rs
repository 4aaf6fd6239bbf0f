//! How long hakube takes from nothing to a cluster that runs applications,
//! and what the bundle costs to build.
//!
//! Each trial, with the bundle cached: a sandbox of its own is brought up
//! (3 masters + 2 workers by default, joined at once), then the trial waits
//! until CoreDNS answers a name through the kube-dns Service from the first
//! master's network (busybox's nslookup against the cluster DNS address:
//! kube-proxy's rules and a ready CoreDNS both needed). The time is from the
//! start of `up` (the binary built and the bundle found beforehand) to that
//! answer; `up` itself returns once every Node is Ready. The sandbox is taken
//! down after each trial (not timed). `--cold-bundle` also times
//! `kube-bundle.sh` into an empty cache directory (Go's build cache included;
//! the module download cache is the machine's own), as many times as
//! `--trials`: 15 to 45 minutes each on 2 cores. There is no like-for-like
//! baseline on this machine (no kubeadm, no images to pull), so the goal
//! (a warm bring-up under 90 s) is absolute.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{median, min_max, secs, BenchSandbox, WorkDir};
use crate::proc::{self, in_ns, msg};

const DNS_TIMEOUT: Duration = Duration::from_secs(300);
const DNS_IP: &str = "10.96.0.10";

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    trials: u32,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    masters: u8,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=9))]
    workers: u8,
    /// Also time the bundle's build into an empty cache.
    #[arg(long)]
    cold_bundle: bool,
}

/// CoreDNS answers for the API's Service name, through its Service.
fn answers() -> bool {
    let mut cmd = in_ns("hk-m1", "timeout");
    cmd.args(["5", "busybox", "nslookup", "kubernetes.default.svc.cluster.local", DNS_IP]);
    let out = proc::output(cmd, "nslookup").unwrap_or_default();
    out.lines().any(|l| l.trim() == "Address: 10.96.0.1")
}

pub fn run(args: Args) -> Result<()> {
    let (bin, bundle) = super::binary_and_bundle()?;
    let work = WorkDir::new("bench-cluster")?;
    let result = bench(&args, &work, bin, bundle);
    work.finish(result)
}

fn bench(args: &Args, work: &WorkDir, bin: std::path::PathBuf, bundle: std::path::PathBuf) -> Result<()> {
    let (mut up_times, mut dns_times, mut cold_times) = (vec![], vec![], vec![]);
    for t in 1..=args.trials {
        proc::check_stop()?;
        let trial = work.path().join(format!("trial-{t}"));
        std::fs::create_dir(&trial)?;
        let sb = BenchSandbox::new_in(&trial, bin.clone(), bundle.clone())?;
        msg!(
            "trial {t}/{}: sandbox up --masters {} --workers {} (log: {})",
            args.trials,
            args.masters,
            args.workers,
            sb.log.display()
        );
        let start = Instant::now();
        sb.up(args.masters, args.workers, "").with_context(|| format!("trial {t}"))?;
        let ready = start.elapsed().as_secs_f64();
        let deadline = Instant::now() + DNS_TIMEOUT;
        while !answers() {
            proc::check_stop()?;
            if Instant::now() > deadline {
                bail!("trial {t}: CoreDNS did not answer within {} s of up", DNS_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let dns = start.elapsed().as_secs_f64();
        msg!("trial {t}: Nodes Ready in {ready:.3} s, CoreDNS answering in {dns:.3} s");
        up_times.push(ready);
        dns_times.push(dns);
    }
    let cold_trials = if args.cold_bundle { args.trials } else { 0 };
    for t in 1..=cold_trials {
        let cache = work.path().join(format!("cold-cache-{t}"));
        msg!("cold bundle build {t}/{} into {} (15 to 45 minutes on 2 cores)", args.trials, cache.display());
        let start = Instant::now();
        let mut cmd = Command::new("bash");
        cmd.arg(proc::repo().join("scripts/kube-bundle.sh")).env("HAKUBE_CACHE_DIR", &cache);
        proc::output(cmd, "kube-bundle.sh into an empty cache")?;
        cold_times.push(start.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&cache)?;
    }
    let bundle_name = bundle.file_name().unwrap_or_default().to_string_lossy();
    println!(
        "\nbench-cluster, {} trial(s), {} masters + {} workers, bundle {bundle_name}",
        args.trials, args.masters, args.workers
    );
    println!("{:<44} {:>9} {:>9} {:>9}   goal", "seconds", "min", "median", "max");
    let row = |what: &str, goal: &str, v: &[f64]| {
        let (lo, hi) = min_max(v).unzip();
        println!("{what:<44} {:>9} {:>9} {:>9}   {goal}", secs(lo), secs(median(v)), secs(hi));
    };
    row("up: nothing to every Node Ready", "", &up_times);
    row("up + CoreDNS answering through its Service", "< 90", &dns_times);
    if args.cold_bundle {
        row("kube-bundle.sh into an empty cache", "", &cold_times);
    }
    Ok(())
}
