//! The node-local load balancer against HAProxy and against direct
//! connections, on the same real API servers, and the load-balancer address
//! change.
//!
//! A sandbox of its own (3 masters, 1 worker). On w1, side by side and
//! against the same three kube-apiservers:
//!   hakube   the agent's balancer at 127.0.0.1:6444;
//!   haproxy  HAProxy at 127.0.0.1:6445 as EKCO configures it (mode tcp,
//!            option httpchk GET /readyz, check check-ssl verify none
//!            inter 1s fall 2 rise 3);
//!   direct   the client's connections spread over the three masters.
//! The client is examples/lb_load.rs: 8 keep-alive HTTPS connections sending
//! GET /readyz (verified against the cluster CA).
//!   (1) latency (p50, p99) and throughput: S seconds per path, the three
//!       paths in turn, N rounds; medians.
//!   (2) failover, per balancer and per fault, N trials: the client runs
//!       20 s; 5 s in, m2's kube-apiserver is killed (its agent restarts it)
//!       or m2 is cut off silently (its link down, back up after the run).
//!       Reported: the longest time without a successful response from the
//!       fault on, and the requests that failed.
//!   (3) the address change: HAProxy on two hosts of its own (lb1, lb2);
//!       m1 sets lb1; then, with the client looping through every node's
//!       balancer, `install load-balancer-address=lb2` on m2. Reported: the
//!       time until it returned complete, and the failed requests.
//! Goals: p50 and p99 within 1.1x HAProxy's; crash failover under 1 s;
//! silent failover under 3 s; no failed request during the address change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{median, min_max, ratio, BenchSandbox, WorkDir};
use crate::proc::{self, in_ns, msg};
use crate::sandbox::ns_of;

const NET: &str = "10.77.0";
const MASTERS: [&str; 3] = ["10.77.0.11", "10.77.0.12", "10.77.0.13"];
const HAKUBE_LB: &str = "127.0.0.1:6444";
const HAPROXY_LB: &str = "127.0.0.1:6445";

#[derive(clap::Args)]
pub struct Args {
    /// Rounds of (1), trials of (2).
    #[arg(long, env = "BENCH_TRIALS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    trials: u32,
    /// Seconds per path and round in (1).
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
}

pub fn run(args: Args) -> Result<()> {
    let (bin, bundle) = super::binary_and_bundle()?;
    msg!("building the load client: cargo build --release --example lb_load");
    let mut build = Command::new("cargo");
    build.current_dir(proc::repo()).args(["build", "--release", "--locked", "--quiet", "--example", "lb_load"]);
    proc::run(build, "cargo build --example lb_load")?;
    let work = WorkDir::new("bench-lb")?;
    let result = bench(&args, &work, bin, bundle);
    work.finish(result)
}

/// The namespaces the benchmark adds to the sandbox, and HAProxy on w1:
/// stopped before the sandbox goes down.
struct Extras;

impl Drop for Extras {
    fn drop(&mut self) {
        for ns in ["hk-lb1", "hk-lb2"] {
            if proc::netns::exists(ns) {
                proc::netns::stop(ns, false);
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
        proc::netns::stop("hk-w1", false);
    }
}

struct Bench<'a> {
    sb: BenchSandbox,
    dir: &'a Path,
    load: PathBuf,
    ca: PathBuf,
}

impl Bench<'_> {
    fn haproxy(&self, ns: &str, bind: &str) -> Result<()> {
        let mut cfg = String::from("global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n");
        cfg += "  timeout client 1h\n  timeout server 1h\n";
        cfg += &format!("frontend api\n  bind {bind}\n  default_backend masters\n");
        cfg += "backend masters\n  option httpchk GET /readyz\n  http-check expect status 200\n";
        for (i, m) in MASTERS.iter().enumerate() {
            cfg += &format!("  server m{} {m}:6443 check check-ssl verify none inter 1s fall 2 rise 3\n", i + 1);
        }
        let path = self.dir.join(format!("haproxy-{ns}.cfg"));
        std::fs::write(&path, cfg)?;
        let mut cmd = in_ns(ns, "haproxy");
        cmd.arg("-D").arg("-f").arg(&path).arg("-p").arg(self.dir.join(format!("haproxy-{ns}.pid")));
        proc::run(cmd, &format!("HAProxy in {ns}"))
    }

    fn client(&self, ns: &str, connections: u32, targets: &[&str], extra: &[&str]) -> Command {
        let mut cmd = in_ns(ns, &self.load);
        cmd.arg("--ca").arg(&self.ca).args(["--connections", &connections.to_string()]).args(extra);
        for t in targets {
            cmd.args(["--target", t]);
        }
        cmd
    }

    /// The client's report of `seconds` of load on `targets` from w1.
    fn load(&self, seconds: u64, targets: &[&str]) -> Result<Value> {
        let cmd = self.client("hk-w1", 8, targets, &["--seconds", &seconds.to_string()]);
        Ok(serde_json::from_str(&proc::output(cmd, "the load client")?)?)
    }

    /// Every backend of w1's balancer up.
    fn lb_up(&self) -> bool {
        let mut cmd = in_ns("hk-w1", &self.sb.bin);
        cmd.arg("--root").arg(self.sb.sandbox.root("w1")).args(["status", "--json"]);
        let status: Value = cmd.output().ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default();
        let backends = status["load_balancer"]["backends"].as_array().cloned().unwrap_or_default();
        backends.iter().filter(|b| b["health"] == "up").count() == 3
    }

    /// `curl https://ADDR/readyz` from `ns` succeeds (verified against the CA, or not).
    fn ready(&self, ns: &str, addr: &str, verify: bool) -> bool {
        let mut cmd = in_ns(ns, "curl");
        cmd.args(["-sf", "--max-time", "2"]);
        match verify {
            true => cmd.arg("--cacert").arg(&self.ca),
            false => cmd.arg("-k"),
        };
        cmd.arg(format!("https://{addr}/readyz")).output().is_ok_and(|o| o.status.success())
    }

    fn wait_until(&self, limit: u64, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(limit);
        while !f() {
            proc::check_stop()?;
            if Instant::now() > deadline {
                let log = self.sb.sandbox.root("m2").join("var/lib/hakube/logs/agent.log");
                bail!("{what} not within {limit} s (m2's log: {})", log.display());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// (longest time without a success after the fault, ms; failed requests after it).
    fn fault(&self, silent: bool, target: &str) -> Result<(f64, f64)> {
        let mark = self.dir.join("mark");
        let _ = std::fs::remove_file(&mark);
        let mark_arg = mark.display().to_string();
        let extra = ["--seconds", "20", "--timeout-ms", "5000", "--mark", &mark_arg];
        let client = self.client("hk-w1", 8, &[target], &extra).stdout(std::process::Stdio::piped()).spawn()?;
        std::thread::sleep(Duration::from_secs(5));
        if silent {
            proc::run(Command::new("ip").args(["-n", "hk-m2", "link", "set", "eth0", "down"]), "cut m2 off")?;
        } else {
            let state: Value = serde_json::from_str(&std::fs::read_to_string(
                self.sb.sandbox.root("m2").join("var/lib/hakube/state.json"),
            )?)?;
            let pid = state["components"]["kube-apiserver"]["pid"].as_i64().context("m2's kube-apiserver pid")?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)?;
        }
        let now_ms = (super::now() * 1000.0) as u64;
        std::fs::write(&mark, now_ms.to_string())?;
        let out = client.wait_with_output()?;
        if silent {
            proc::run(Command::new("ip").args(["-n", "hk-m2", "link", "set", "eth0", "up"]), "reconnect m2")?;
        }
        anyhow::ensure!(out.status.success(), "the load client during the fault failed ({})", out.status);
        let report: Value = serde_json::from_slice(&out.stdout)?;
        let m2 = format!("{}:6443", MASTERS[1]);
        self.wait_until(180, "m2's API server ready again", || self.ready("hk-w1", &m2, true))?;
        self.wait_until(60, "w1's balancer with m2 up again", || self.lb_up())?;
        std::thread::sleep(Duration::from_secs(4)); // HAProxy's rise 3
        let f = |k: &str| report[k].as_f64().unwrap_or_default();
        Ok((f("longest_gap_after_mark_ms"), f("failed_after_mark")))
    }

    fn install_on(&self, host: &str, word: &str, log: &Path) -> Result<()> {
        let mut cmd = in_ns(&ns_of(host), &self.sb.bin);
        cmd.arg("--root").arg(self.sb.sandbox.root(host)).args(["install", word]);
        let log_file = std::fs::File::create(log)?;
        cmd.stdout(log_file.try_clone()?).stderr(log_file);
        proc::run(cmd, &format!("install {word} on {host} (log: {})", log.display()))
    }

    /// (seconds until the change returned, requests, failed requests).
    fn address_change(&self) -> Result<(f64, f64, f64)> {
        for (ns, port, ip) in [("hk-lb1", "p-lb1", "201"), ("hk-lb2", "p-lb2", "202")] {
            proc::ns(proc::netns::host(ns, "hk-sw", port, &format!("{NET}.{ip}/24")))?;
            self.haproxy(ns, &format!("{NET}.{ip}:6443"))?;
        }
        for ip in ["201", "202"] {
            let lb = format!("{NET}.{ip}:6443");
            self.wait_until(30, &format!("HAProxy on {lb} with a master up"), || self.ready("hk-m1", &lb, false))?;
        }
        self.install_on("m1", &format!("load-balancer-address={NET}.201:6443"), &self.dir.join("set-lb1.log"))?;
        let stop = self.dir.join("stop");
        let stop_arg = stop.display().to_string();
        let mut clients: Vec<Child> = vec![];
        for host in ["m1", "m2", "m3", "w1"] {
            let extra = ["--seconds", "900", "--until-file", &stop_arg];
            let cmd = &mut self.client(&ns_of(host), 2, &[HAKUBE_LB], &extra);
            clients.push(cmd.stdout(std::process::Stdio::piped()).spawn()?);
        }
        std::thread::sleep(Duration::from_secs(2));
        let t0 = Instant::now();
        let changed =
            self.install_on("m2", &format!("load-balancer-address={NET}.202:6443"), &self.dir.join("change.log"));
        let took = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        std::fs::write(&stop, "")?;
        let (mut requests, mut failed) = (0.0, 0.0);
        for c in clients {
            let out = c.wait_with_output()?;
            anyhow::ensure!(out.status.success(), "a load client during the change failed ({})", out.status);
            let r: Value = serde_json::from_slice(&out.stdout)?;
            requests += r["requests"].as_f64().unwrap_or_default();
            failed += r["failed"].as_f64().unwrap_or_default();
        }
        changed?;
        Ok((took, requests, failed))
    }
}

/// Per (fault, path): the longest gaps and the failed requests of each trial.
type Failover = BTreeMap<(&'static str, &'static str), (Vec<f64>, Vec<f64>)>;

fn bench(args: &Args, work: &WorkDir, bin: PathBuf, bundle: PathBuf) -> Result<()> {
    let sb = BenchSandbox::new_in(work.path(), bin, bundle)?;
    msg!("bringing up a sandbox of 3 masters and 1 worker (log: {})", sb.log.display());
    sb.up(3, 1, "")?;
    let ca = sb.sandbox.root("m1").join("var/lib/hakube/pki/ca.crt");
    let load = proc::repo().join("target/release/examples/lb_load");
    let b = Bench { sb, dir: work.path(), load, ca };
    // Dropped first, before the sandbox goes down.
    let _extras = Extras;
    b.haproxy("hk-w1", HAPROXY_LB)?;
    b.wait_until(60, "w1's balancer with every master up", || b.lb_up())?;
    std::thread::sleep(Duration::from_secs(3)); // HAProxy's rise 3

    let direct: Vec<String> = MASTERS.iter().map(|m| format!("{m}:6443")).collect();
    let direct: Vec<&str> = direct.iter().map(String::as_str).collect();
    let paths: [(&str, &[&str]); 3] = [("direct", &direct), ("haproxy", &[HAPROXY_LB]), ("hakube", &[HAKUBE_LB])];
    let mut latency: BTreeMap<&str, [Vec<f64>; 3]> = BTreeMap::new();
    for t in 1..=args.trials {
        for (path, targets) in paths {
            proc::check_stop()?;
            let r = b.load(args.seconds, targets)?;
            let f = |k: &str| r[k].as_f64().unwrap_or_default();
            if f("failed") > 0.0 {
                msg!("round {t}: {path} had {} failed requests", f("failed"));
            }
            let e = latency.entry(path).or_default();
            for (v, k) in e.iter_mut().zip(["p50_us", "p99_us", "rps"]) {
                v.push(f(k));
            }
            msg!("round {t}/{}: {path} p50 {}us p99 {}us {:.0} req/s", args.trials, f("p50_us"), f("p99_us"), f("rps"));
        }
    }

    let mut failover: Failover = BTreeMap::new();
    for t in 1..=args.trials {
        for (kind, silent) in [("crash", false), ("silent", true)] {
            for (path, target) in [("hakube", HAKUBE_LB), ("haproxy", HAPROXY_LB)] {
                proc::check_stop()?;
                let (gap, lost) = b.fault(silent, target)?;
                let e = failover.entry((kind, path)).or_default();
                e.0.push(gap);
                e.1.push(lost);
                msg!("trial {t}/{}: {kind} via {path}: no success for {gap} ms, {lost} failed", args.trials);
            }
        }
    }

    let (took, requests, failed) = b.address_change()?;

    let med = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    println!(
        "\nlatency and throughput of GET /readyz, 8 keep-alive connections from w1, {} round(s) of {}s (medians)",
        args.trials, args.seconds
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>16} {:>16}",
        "path", "p50 (us)", "p99 (us)", "req/s", "p50 vs haproxy", "p99 vs haproxy"
    );
    let haproxy = &latency["haproxy"];
    let vs = |a: &[f64], b: &[f64]| ratio(median(a), median(b)).map_or("-".into(), |r| format!("{r:.2}"));
    for (path, _) in paths {
        let [p50, p99, rps] = &latency[path];
        let (r50, r99) = (vs(p50, &haproxy[0]), vs(p99, &haproxy[1]));
        println!("{path:<8} {:>10} {:>10} {:>10.0} {r50:>16} {r99:>16}", med(p50), med(p99), med(rps));
    }
    let hakube = &latency["hakube"];
    let within = |i: usize| if med(&hakube[i]) <= 1.1 * med(&haproxy[i]) { "met" } else { "MISSED" };
    println!("goal: hakube within 1.1x HAProxy (p50 {}, p99 {})", within(0), within(1));

    println!("\nfailover from w1, {} trial(s): longest time without a successful response after the fault (ms), failed requests", args.trials);
    println!("{:<8} {:<8} {:<24} {:<18} goal", "fault", "path", "no success, ms (min-max)", "failed (median)");
    for (kind, goal) in [("crash", 1000.0), ("silent", 3000.0)] {
        for path in ["hakube", "haproxy"] {
            let (gaps, lost) = &failover[&(kind, path)];
            let (lo, hi) = min_max(gaps).unwrap_or_default();
            let m = med(gaps);
            let verdict = match path {
                "hakube" => format!("< {goal} ms {}", if m < goal { "met" } else { "MISSED" }),
                _ => String::new(),
            };
            println!("{kind:<8} {path:<8} {:<24} {:<18} {verdict}", format!("{m} ({lo}-{hi})"), med(lost));
        }
    }

    println!("\naddress change from m2 (lb1 -> lb2) with 2 keep-alive connections through each node's balancer");
    let verdict = if failed == 0.0 { "met" } else { "MISSED" };
    println!("complete after {took:.3}s; {failed} of {requests} requests failed (goal: 0, {verdict})");
    Ok(())
}
