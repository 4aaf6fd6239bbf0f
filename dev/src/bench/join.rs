//! N masters joining an etcd cluster at the same moment, with hakube and with
//! two raw-etcd baselines.
//!
//! For every size N and every trial, each variant gets a fresh network of
//! its own: a switch namespace holding a bridge and N host namespaces h1..hN
//! wired to it (10.X.0.11, .12, …; X picked per run), each host with its own
//! root directory. Nothing is created in the machine's own network namespace.
//!   (a) hakube concurrent: `hakube install ha --components etcd` on h1, then
//!       h2..hN all run the script `hakube node-join-script --master` printed,
//!       at the same moment. Timed from the start of the joins until all have
//!       exited; a success when every join exited 0 and etcd then has N
//!       started voting members (no learner) and a healthy cluster.
//!   (b) naive concurrent: a PKI made with `hakube certs generate` (the same
//!       CAs on every host), etcd started by hand on h1, then h2..hN at once
//!       each run `etcdctl member add` (a voter, no serialization) and start
//!       their etcd with the initial cluster it answered. Timed until N
//!       started voting members and a healthy cluster (at most 60 s); a
//!       failure when an add is refused, an etcd exits, or the bound passes.
//!   (c) sequential learner: the same PKI and h1, then one host at a time:
//!       `member add --learner` (retried every 0.2 s while etcd answers
//!       "unhealthy cluster"), start its etcd, `member promote` retried every
//!       0.2 s until the learner is in sync. Timed from the first add until
//!       the last promote is done and the cluster is healthy. What a careful
//!       operator achieves by hand: the floor to compare hakube with.
//! The variants take turns going first from one trial to the next. Each run
//! of a variant is bounded (180 s); one past the bound counts as a failure.
//! The table gives successes, median/min/max times over the successful
//! trials and the ratio of the medians to the sequential one, and per N the
//! goal: hakube succeeds every time and its median is at most 1.3 x the
//! sequential median. The logs of failed trials are kept (etcd data aside).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{median, min_max, ratio, secs};
use crate::proc::{self, bounded, bounded_group, in_ns, msg, warning};

const VARIANT_TIMEOUT: Duration = Duration::from_secs(180);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
const RAW_TIMEOUT: Duration = Duration::from_secs(60);
const RESET_TIMEOUT: Duration = Duration::from_secs(60);
const GOAL_FACTOR: f64 = 1.3;

#[derive(clap::Args)]
pub struct Args {
    /// Cluster sizes, masters in all (2-20 each), separated by spaces or commas.
    #[arg(long, env = "BENCH_SIZES", default_value = "3 5 7", value_parser = parse_sizes)]
    sizes: Sizes,
    /// Trials per size and variant.
    #[arg(long, env = "BENCH_TRIALS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    trials: u32,
}

#[derive(Clone, Debug)]
struct Sizes(Vec<usize>);

fn parse_sizes(s: &str) -> Result<Sizes, String> {
    let sizes: Vec<usize> = s
        .split([' ', ','])
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.parse()
                .ok()
                .filter(|n| (2..=20).contains(n))
                .ok_or(format!("each size must be between 2 and 20 masters (got '{w}')"))
        })
        .collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        return Err("no sizes given".into());
    }
    Ok(Sizes(sizes))
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Variant {
    Hakube,
    Naive,
    Sequential,
}

const VARIANTS: [Variant; 3] = [Variant::Hakube, Variant::Naive, Variant::Sequential];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Hakube => "hakube concurrent",
            Variant::Naive => "naive concurrent",
            Variant::Sequential => "sequential learner",
        }
    }
}

/// What a variant's run came to: timed, a success or a failure with a reason.
struct Outcome {
    ok: bool,
    secs: f64,
    reason: String,
}

impl Outcome {
    fn ok(t0: Instant) -> Outcome {
        Outcome { ok: true, secs: t0.elapsed().as_secs_f64(), reason: String::new() }
    }
    fn fail(t0: Instant, reason: impl Into<String>) -> Outcome {
        Outcome { ok: false, secs: t0.elapsed().as_secs_f64(), reason: reason.into() }
    }
}

/// The last non-empty line of a text, for reasons.
fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_owned()
}

/// One trial's hosts: namespaces `PREFIX-h1..hN` on bridge `PREFIX-sw`, each
/// with its root under the trial's directory.
struct Net {
    prefix: String,
    subnet: String,
    n: usize,
    dir: PathBuf,
    bin: PathBuf,
    etcds: Vec<(usize, Child)>,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }
    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }
    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }
    fn root(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}"))
    }
    fn pki(&self, i: usize) -> PathBuf {
        self.root(i).join("var/lib/hakube/pki")
    }

    fn build(&self) -> Result<()> {
        proc::ns(proc::netns::switch(&self.switch()))?;
        for i in 1..=self.n {
            let addr = format!("{}/24", self.ip(i));
            proc::ns(proc::netns::host(&self.ns(i), &self.switch(), &format!("p{i}"), &addr))?;
            fs::create_dir_all(self.root(i))?;
        }
        Ok(())
    }

    /// `hakube --root ROOT ARGS…` in host i's namespace, bounded by `limit`,
    /// its output to the trial's file `log`.
    fn hakube(&self, i: usize, args: &[&str], limit: Duration, log: &str) -> Result<Command> {
        let mut cmd = in_ns(&self.ns(i), &self.bin);
        cmd.arg("--root").arg(self.root(i)).args(args);
        proc::to_log(bounded(limit, cmd), &self.dir.join(log))
    }

    /// etcdctl from h1 against h1's client URL with its health-check client
    /// pair: standard output, or the last line it printed on failure.
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let pki = self.pki(1).join("etcd");
        let mut cmd = in_ns(&self.ns(1), "etcdctl");
        cmd.args([
            "--endpoints",
            &format!("https://{}:2379", self.ip(1)),
            "--dial-timeout",
            "2s",
            "--command-timeout",
            "5s",
        ]);
        cmd.arg("--cacert").arg(pki.join("ca.crt")).arg("--cert").arg(pki.join("healthcheck-client.crt"));
        cmd.arg("--key").arg(pki.join("healthcheck-client.key")).args(args).env("ETCDCTL_API", "3");
        match cmd.output() {
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(o) => Err(last_line(&format!(
                "{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ))),
            Err(e) => Err(format!("etcdctl: {e}")),
        }
    }

    /// Ok when etcd has N members, all started, none a learner, and the
    /// cluster is healthy; else why not. Both with a summary of what it saw.
    fn check(&self) -> (Result<(), String>, String) {
        let list = match self.ctl(&["member", "list", "-w", "json"]) {
            Ok(l) => serde_json::from_str::<Value>(&l).unwrap_or_default(),
            Err(e) => return (Err(format!("member list: {e}")), "member list failed".into()),
        };
        let members = crate::vm_test::members_of(&list);
        let started = members.iter().filter(|m| m.started).count();
        let learners = members.iter().filter(|m| m.learner).count();
        let summary = format!("{} members, {started} started, {learners} learner(s)", members.len());
        if members.len() != self.n || started != self.n || learners != 0 {
            return (Err(format!("expected {} started voting members, found {summary}", self.n)), summary);
        }
        match self.ctl(&["endpoint", "health", "--cluster"]) {
            Ok(_) => (Ok(()), format!("{summary}, healthy")),
            Err(e) => (Err(format!("endpoint health --cluster: {e}")), format!("{summary}, unhealthy")),
        }
    }

    /// What etcd looks like, for a failure's reason.
    fn describe(&self) -> String {
        let (ok, summary) = self.check();
        if ok.is_ok() || summary == "member list failed" || summary.ends_with("healthy") {
            return summary;
        }
        match self.ctl(&["endpoint", "health", "--cluster"]) {
            Ok(_) => format!("{summary}, the started ones healthy"),
            Err(e) => format!("{summary}, unhealthy ({e})"),
        }
    }

    /// The first etcd started by hand that has exited, with why.
    fn dead_etcd(&mut self) -> Option<String> {
        let i = self.etcds.iter_mut().find_map(|(i, c)| (!matches!(c.try_wait(), Ok(None))).then_some(*i))?;
        let log = fs::read_to_string(self.dir.join(format!("etcd-h{i}.log"))).unwrap_or_default();
        Some(format!("etcd of h{i} exited ({})", why_dead(&log)))
    }

    fn spawn_etcd(&self, i: usize, state: &str, cluster: &str) -> Result<Child> {
        let (ip, pki, data) = (self.ip(i), self.pki(i).join("etcd"), self.root(i).join("etcd-data"));
        fs::create_dir(&data)?;
        fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut cmd = in_ns(&self.ns(i), "etcd");
        cmd.args(["--name", &format!("h{i}"), "--logger", "zap", "--log-outputs", "stderr"])
            .arg("--data-dir")
            .arg(&data);
        cmd.args([
            "--listen-client-urls",
            &format!("https://{ip}:2379"),
            "--advertise-client-urls",
            &format!("https://{ip}:2379"),
        ]);
        cmd.args([
            "--listen-peer-urls",
            &format!("https://{ip}:2380"),
            "--initial-advertise-peer-urls",
            &format!("https://{ip}:2380"),
        ]);
        cmd.args([
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            state,
            "--client-cert-auth",
            "--peer-client-cert-auth",
        ]);
        for (flag, file) in
            [("--trusted-ca-file", "ca.crt"), ("--cert-file", "server.crt"), ("--key-file", "server.key")]
        {
            cmd.arg(flag).arg(pki.join(file));
        }
        for (flag, file) in
            [("--peer-trusted-ca-file", "ca.crt"), ("--peer-cert-file", "peer.crt"), ("--peer-key-file", "peer.key")]
        {
            cmd.arg(flag).arg(pki.join(file));
        }
        let log = File::create(self.dir.join(format!("etcd-h{i}.log")))?;
        Ok(cmd.stdout(log.try_clone()?).stderr(log).spawn()?)
    }

    fn start_etcd(&mut self, i: usize, state: &str, cluster: &str) -> Result<()> {
        let child = self.spawn_etcd(i, state, cluster)?;
        self.etcds.push((i, child));
        Ok(())
    }

    /// Resets the hakube hosts (last first, so each leaves etcd while the
    /// others keep quorum), stops what still runs, deletes the namespaces
    /// and the trial's files (only the bulky etcd data when `keep`).
    fn teardown(&mut self, hakube: bool, keep: bool) {
        for i in (1..=self.n).rev().filter(|&i| hakube && self.root(i).join("var/lib/hakube").is_dir()) {
            if keep {
                let _ = Command::new("cp")
                    .arg("-r")
                    .arg(self.root(i).join("var/lib/hakube/logs"))
                    .arg(self.dir.join(format!("h{i}-logs")))
                    .status();
            }
            let reset = self.hakube(i, &["reset"], RESET_TIMEOUT, "teardown.log").map(|mut c| c.status());
            if reset.is_ok_and(|s| s.is_ok_and(|s| s.success())) {
                continue;
            }
            // Refused (leaving etcd would cost quorum) or too slow: stop the
            // host's processes, then reset only removes files.
            proc::netns::stop(&self.ns(i), false);
            let mut cmd = Command::new(&self.bin);
            cmd.arg("--root").arg(self.root(i)).arg("reset");
            let reset =
                proc::to_log(bounded(RESET_TIMEOUT, cmd), &self.dir.join("teardown.log")).map(|mut c| c.status());
            if !reset.is_ok_and(|s| s.is_ok_and(|s| s.success())) {
                warning!("hakube reset of {} failed", self.root(i).display());
            }
        }
        for ns in (1..=self.n).rev().map(|i| self.ns(i)).chain([self.switch()]) {
            if proc::netns::exists(&ns) {
                proc::netns::stop(&ns, false);
                if !Command::new("ip").args(["netns", "del", &ns]).status().is_ok_and(|s| s.success()) {
                    warning!("could not delete network namespace {ns}");
                }
            }
        }
        for (_, mut c) in self.etcds.drain(..) {
            let _ = c.wait();
        }
        crate::sandbox::unmount_below(&self.dir);
        let targets: Vec<PathBuf> = match keep {
            true => (1..=self.n)
                .flat_map(|i| [self.root(i).join("etcd-data"), self.root(i).join("var/lib/hakube/etcd")])
                .collect(),
            false => vec![self.dir.clone()],
        };
        for t in targets.iter().filter(|t| t.exists()) {
            let _ = Command::new("rm").arg("-rf").arg("--one-file-system").arg("--").arg(t).status();
        }
    }
}

/// The last error an etcd logged (zap JSON lines), or its last line.
fn why_dead(log: &str) -> String {
    let error = log.lines().rev().find_map(|l| {
        let v: Value = serde_json::from_str(l).ok()?;
        matches!(v["level"].as_str(), Some("fatal" | "panic" | "error")).then(|| match v["error"].as_str() {
            Some(e) => format!("{}: {e}", v["msg"].as_str().unwrap_or_default()),
            None => v["msg"].as_str().unwrap_or_default().to_owned(),
        })
    });
    error.unwrap_or_else(|| match last_line(log) {
        l if l.is_empty() => "no log".into(),
        l => l,
    })
}

/// ETCD_INITIAL_CLUSTER for the member a `member add -w json` added, as
/// etcdctl prints it: every member's peer URLs, the new one named `name`.
fn initial_cluster(added: &Value, name: &str) -> Option<String> {
    let new_id = added["member"]["ID"].as_u64()?;
    let mut parts = vec![];
    for m in added["members"].as_array()? {
        let n = if m["ID"].as_u64() == Some(new_id) { name } else { m["name"].as_str().unwrap_or_default() };
        for u in m["peerURLs"].as_array().into_iter().flatten() {
            parts.push(format!("{n}={}", u.as_str()?));
        }
    }
    Some(parts.join(","))
}

fn variant_hakube(net: &mut Net, deadline: Instant) -> Result<Outcome> {
    let (ip1, bin) = (net.ip(1), net.bin.clone());
    let install = net.hakube(
        1,
        &["install", "ha", "--advertise-address", &ip1, "--node-name", "h1", "--components", "etcd", "--no-systemd"],
        INSTALL_TIMEOUT,
        "install-h1.log",
    )?;
    proc::run(install, "hakube install on h1")
        .with_context(|| format!("log: {}", net.dir.join("install-h1.log").display()))?;
    let mut script = in_ns(&net.ns(1), &bin);
    script.arg("--root").arg(net.root(1)).args(["node-join-script", "--master"]);
    let script = proc::output(script, "hakube node-join-script --master on h1")?;
    let join = net.dir.join("join.sh");
    fs::write(&join, script)?;
    let t0 = Instant::now();
    let mut joins = vec![];
    for i in 2..=net.n {
        let mut cmd = in_ns(&net.ns(i), "bash");
        cmd.arg(&join).arg("--root").arg(net.root(i)).args([
            "--advertise-address",
            &net.ip(i),
            "--node-name",
            &format!("h{i}"),
        ]);
        cmd.args(["--components", "etcd", "--no-systemd"]).env("HAKUBE_BIN", &bin);
        let log = File::create(net.dir.join(format!("join-h{i}.log")))?;
        let limit = deadline.saturating_duration_since(Instant::now());
        joins.push((i, bounded_group(limit, cmd).stdout(log.try_clone()?).stderr(log).spawn()?));
    }
    let mut first = None;
    for (i, mut child) in joins {
        let status = child.wait()?;
        if !status.success() && first.is_none() {
            let log = fs::read_to_string(net.dir.join(format!("join-h{i}.log"))).unwrap_or_default();
            first = Some(format!("h{i} join exited {status}: {}", last_line(&log)));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let reason = match (first, net.check().0) {
        (Some(first), _) => format!("{first}; etcd then: {}", net.describe()),
        (None, Ok(())) => return Ok(Outcome { ok: true, secs, reason: String::new() }),
        (None, Err(why)) => format!("every join exited 0 but {why}"),
    };
    Ok(Outcome { ok: false, secs, reason })
}

/// The PKI of every host, made with hakube; hosts 2..N get h1's CAs and
/// service-account key first, so their leaves are signed by the same CAs.
fn raw_pki(net: &Net) -> Result<()> {
    const SHARED: [&str; 8] = [
        "ca.crt",
        "ca.key",
        "front-proxy-ca.crt",
        "front-proxy-ca.key",
        "etcd/ca.crt",
        "etcd/ca.key",
        "sa.key",
        "sa.pub",
    ];
    for i in 1..=net.n {
        let pki = net.pki(i);
        if i > 1 {
            fs::create_dir_all(pki.join("etcd"))?;
            for f in SHARED {
                fs::copy(net.pki(1).join(f), pki.join(f)).with_context(|| format!("copying {f} from h1 to h{i}"))?;
            }
        }
        let mut cmd = Command::new(&net.bin);
        cmd.arg("--root").arg(net.root(i)).args([
            "certs",
            "generate",
            "--advertise-address",
            &net.ip(i),
            "--node-name",
            &format!("h{i}"),
        ]);
        proc::output(bounded(Duration::from_secs(120), cmd), &format!("hakube certs generate on h{i}"))?;
        for f in ["etcd/server.crt", "etcd/peer.crt", "etcd/healthcheck-client.crt"] {
            anyhow::ensure!(pki.join(f).is_file(), "hakube certs generate wrote no {}", pki.join(f).display());
        }
        if i > 1 && fs::read(net.pki(1).join("etcd/ca.crt"))? != fs::read(pki.join("etcd/ca.crt"))? {
            bail!("hakube certs generate on h{i} replaced the etcd CA copied from h1");
        }
    }
    Ok(())
}

/// PKI, then etcd on h1 as a new one-member cluster, healthy.
fn raw_setup(net: &mut Net) -> Result<()> {
    raw_pki(net)?;
    let cluster = format!("h1=https://{}:2380", net.ip(1));
    net.start_etcd(1, "new", &cluster)?;
    let deadline = Instant::now() + RAW_TIMEOUT;
    while net.ctl(&["endpoint", "health"]).is_err() {
        if let Some(why) = net.dead_etcd() {
            bail!("{why}");
        }
        if Instant::now() > deadline {
            bail!(
                "etcd on h1 not healthy after {} s (log: {})",
                RAW_TIMEOUT.as_secs(),
                net.dir.join("etcd-h1.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn variant_naive(net: &mut Net, deadline: Instant) -> Result<Outcome> {
    raw_setup(net)?;
    let t0 = Instant::now();
    // Each add and its etcd's start on a thread of its own, at once.
    let (tx, rx) = mpsc::channel::<(usize, Instant, Result<Child, String>)>();
    let (first, added) = std::thread::scope(|s| {
        let shared: &Net = net;
        for i in 2..=shared.n {
            let tx = tx.clone();
            s.spawn(move || {
                let peer = format!("--peer-urls=https://{}:2380", shared.ip(i));
                let joined = shared
                    .ctl(&["member", "add", &format!("h{i}"), &peer, "-w", "json"])
                    .map_err(|e| format!("h{i}: member add: {e}"))
                    .and_then(|out| {
                        let added: Value = serde_json::from_str(&out).unwrap_or_default();
                        let cluster = initial_cluster(&added, &format!("h{i}"))
                            .ok_or(format!("h{i}: no member in member add's answer: {}", last_line(&out)))?;
                        shared.spawn_etcd(i, "existing", &cluster).map_err(|e| format!("h{i}: start etcd: {e}"))
                    });
                let _ = tx.send((i, Instant::now(), joined));
            });
        }
        drop(tx);
        let limit = (Instant::now() + RAW_TIMEOUT).min(deadline);
        let mut added: Vec<(usize, Child)> = vec![];
        let mut refused: Vec<(Instant, String)> = vec![];
        let first = loop {
            while let Ok((i, at, r)) = rx.try_recv() {
                match r {
                    Ok(child) => added.push((i, child)),
                    Err(why) => refused.push((at, why)),
                }
            }
            // The first refused add, by the time it was refused.
            refused.sort_by_key(|r| r.0);
            if let Some((_, why)) = refused.first() {
                break Some(why.clone());
            }
            let mut dead = None;
            for (i, c) in added.iter_mut() {
                if !matches!(c.try_wait(), Ok(None)) {
                    let log = fs::read_to_string(shared.dir.join(format!("etcd-h{i}.log"))).unwrap_or_default();
                    dead = Some(format!("etcd of h{i} exited ({})", why_dead(&log)));
                }
            }
            if dead.is_some() {
                break dead;
            }
            let all = added.len() == shared.n - 1;
            let checked = if all { Some(shared.check().0) } else { None };
            if matches!(checked, Some(Ok(()))) {
                break None;
            }
            if Instant::now() > limit {
                break Some(match checked {
                    None => format!("a member add still had no answer after {} s", RAW_TIMEOUT.as_secs()),
                    Some(why) => format!(
                        "not {} healthy voting members after {} s: {}",
                        shared.n,
                        RAW_TIMEOUT.as_secs(),
                        why.unwrap_err()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        // The adds still in flight finish (etcdctl's own timeouts bound them).
        for (i, _, r) in rx {
            if let Ok(c) = r {
                added.push((i, c));
            }
        }
        (first, added)
    });
    net.etcds.extend(added);
    let secs = t0.elapsed().as_secs_f64();
    let Some(first) = first else {
        return Ok(Outcome { ok: true, secs, reason: String::new() });
    };
    // What became of the cluster: the members settle (at most 10 s).
    let settle = Instant::now() + Duration::from_secs(10);
    while net.check().0.is_err() && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(Outcome { ok: false, secs, reason: format!("{first}; etcd then: {}", net.describe()) })
}

/// etcdctl ARGS every 0.2 s while it fails with a message containing
/// `pattern` (any failure when None), at most `bound`: (output or last
/// message, tries).
fn retry_ctl(net: &Net, bound: Duration, pattern: Option<&str>, args: &[&str]) -> (Result<String, String>, u32) {
    let deadline = Instant::now() + bound;
    let mut tries = 0;
    loop {
        tries += 1;
        let r = net.ctl(args);
        match &r {
            Ok(_) => return (r, tries),
            Err(e) if pattern.is_some_and(|p| !e.contains(p)) => return (r, tries),
            Err(_) if Instant::now() > deadline => return (r, tries),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn variant_sequential(net: &mut Net, deadline: Instant) -> Result<Outcome> {
    raw_setup(net)?;
    let t0 = Instant::now();
    let mut tries = String::new();
    for i in 2..=net.n {
        let bound = RAW_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let peer = format!("--peer-urls=https://{}:2380", net.ip(i));
        let (added, n) = retry_ctl(
            net,
            bound,
            Some("unhealthy cluster"),
            &["member", "add", &format!("h{i}"), "--learner", &peer, "-w", "json"],
        );
        let added = match added {
            Ok(a) => serde_json::from_str::<Value>(&a).unwrap_or_default(),
            Err(e) => return Ok(Outcome::fail(t0, format!("h{i}: member add --learner: {e}"))),
        };
        tries += &format!(" h{i} add x{n}");
        let (Some(id), Some(cluster)) = (added["member"]["ID"].as_u64(), initial_cluster(&added, &format!("h{i}")))
        else {
            return Ok(Outcome::fail(t0, format!("h{i}: no member ID in member add's answer")));
        };
        net.start_etcd(i, "existing", &cluster)?;
        let (promoted, n) = retry_ctl(net, bound, None, &["member", "promote", &format!("{id:x}")]);
        if let Err(e) = promoted {
            let why = net.dead_etcd().unwrap_or(format!("h{i}: member promote: {e}"));
            return Ok(Outcome::fail(t0, why));
        }
        tries += &format!(", promote x{n}");
    }
    let limit = (Instant::now() + RAW_TIMEOUT).min(deadline);
    loop {
        match net.check().0 {
            Ok(()) => break,
            Err(why) if Instant::now() > limit => {
                return Ok(Outcome::fail(t0, format!("after the last promote: {why}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    fs::write(net.dir.join("tries"), tries)?;
    Ok(Outcome::ok(t0))
}

/// Runs `variant` on a fresh network; a setup that cannot be run is an error.
fn measure(variant: Variant, n: usize, trial: u32, work: &Path, bin: &Path, subnet: &str) -> Result<Outcome> {
    let dir = work.join(format!("n{n}-t{trial}-{variant:?}").to_lowercase());
    fs::create_dir_all(&dir)?;
    let prefix = format!("hkbj{}", std::process::id() % 100_000);
    let mut net = Net { prefix, subnet: subnet.into(), n, dir, bin: bin.to_path_buf(), etcds: vec![] };
    let deadline = Instant::now() + VARIANT_TIMEOUT;
    let result = net.build().and_then(|()| match variant {
        Variant::Hakube => variant_hakube(&mut net, deadline),
        Variant::Naive => variant_naive(&mut net, deadline),
        Variant::Sequential => variant_sequential(&mut net, deadline),
    });
    let result = result.map(|mut o| {
        if o.secs > VARIANT_TIMEOUT.as_secs_f64() {
            o = Outcome {
                ok: false,
                secs: VARIANT_TIMEOUT.as_secs_f64(),
                reason: format!("past the bound of {} s: {}", VARIANT_TIMEOUT.as_secs(), o.reason),
            };
        }
        o
    });
    let keep = !matches!(result, Ok(Outcome { ok: true, .. }));
    net.teardown(variant == Variant::Hakube, keep);
    result
        .with_context(|| format!("{variant:?} (N={n}, trial {trial}) could not be run; files in {}", net.dir.display()))
}

pub fn run(args: Args) -> Result<()> {
    let bin = proc::script_output("hakube_binary \"$repo\"").context("no hakube binary to run")?;
    let etcd = Command::new("etcd").arg("--version").output();
    anyhow::ensure!(etcd.is_ok_and(|o| o.status.success()), "etcd --version failed: is etcd installed?");
    let work = super::WorkDir::new("bench-join")?;
    let subnet = format!("10.{}.0", 88 + std::process::id() % 160);
    match bench(&args, work.path(), &bin, &subnet) {
        Ok(false) => Ok(()),
        Ok(true) => {
            work.keep("the logs of the failed runs");
            Ok(())
        }
        Err(e) => work.finish(Err(e)),
    }
}

/// The trials and the table; true when a run failed (its logs are kept).
fn bench(args: &Args, work: &Path, bin: &Path, subnet: &str) -> Result<bool> {
    let sizes = &args.sizes.0;
    msg!("sizes: {sizes:?}; {} trial(s) each; subnet {subnet}.0/24; hakube: {}", args.trials, bin.display());
    let mut times: BTreeMap<(Variant, usize), Vec<f64>> = BTreeMap::new();
    let mut reasons: BTreeMap<(Variant, usize), Vec<String>> = BTreeMap::new();
    for &n in sizes {
        for t in 1..=args.trials {
            let mut parts = vec![];
            for k in 0..VARIANTS.len() {
                proc::check_stop()?;
                let v = VARIANTS[(k + t as usize - 1) % VARIANTS.len()];
                let o = measure(v, n, t, work, bin, subnet)?;
                if o.ok {
                    times.entry((v, n)).or_default().push(o.secs);
                    parts.push(format!("{v:?} ok {:.3}s", o.secs));
                } else {
                    parts.push(format!("{v:?} FAILED after {:.3}s ({})", o.secs, o.reason));
                    reasons.entry((v, n)).or_default().push(format!("trial {t}: {}", o.reason));
                }
            }
            msg!("N={n} trial {t}/{}: {}", args.trials, parts.join("; ").to_lowercase());
        }
    }
    println!(
        "\nN masters joined at once; times in seconds over the successful trials; {} trial(s) each.\n",
        args.trials
    );
    println!(
        "{:<3} {:<20} {:<9} {:>9} {:>7} {:>7}  ratio to sequential",
        "N", "variant", "success", "median s", "min s", "max s"
    );
    let none = vec![];
    for &n in sizes {
        let seq = median(times.get(&(Variant::Sequential, n)).unwrap_or(&none));
        for v in VARIANTS {
            let vals = times.get(&(v, n)).unwrap_or(&none);
            let (lo, hi) = min_max(vals).unzip();
            let r = ratio(median(vals), seq).map_or("-".into(), |r| format!("{r:.2}"));
            let success = format!("{}/{}", vals.len(), args.trials);
            println!(
                "{n:<3} {:<20} {success:<9} {:>9} {:>7} {:>7}  {r}",
                v.label(),
                secs(median(vals)),
                secs(lo),
                secs(hi)
            );
        }
    }
    println!();
    for &n in sizes {
        let vals = times.get(&(Variant::Hakube, n)).unwrap_or(&none);
        let (m, seq) = (median(vals), median(times.get(&(Variant::Sequential, n)).unwrap_or(&none)));
        let limit = seq.map(|s| s * GOAL_FACTOR);
        let met = vals.len() == args.trials as usize && m.zip(limit).is_some_and(|(m, l)| m <= l);
        println!(
            "N={n:<2} goal (hakube {}/{} succeed, median {} s <= {GOAL_FACTOR} x sequential median {} s = {} s): {}",
            vals.len(),
            args.trials,
            secs(m),
            secs(seq),
            secs(limit),
            if met { "met" } else { "not met" }
        );
    }
    if !reasons.is_empty() {
        println!("\nFailures:");
        for ((v, n), rs) in &reasons {
            println!("  N={n} {v:?}:");
            for r in rs {
                println!("    {r}");
            }
        }
    }
    Ok(!reasons.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_cluster_names_the_new_member_and_keeps_unstarted_ones() {
        let added = serde_json::json!({
            "member": {"ID": 3, "peerURLs": ["https://10.90.0.13:2380"]},
            "members": [
                {"ID": 1, "name": "h1", "peerURLs": ["https://10.90.0.11:2380"]},
                {"ID": 2, "peerURLs": ["https://10.90.0.12:2380"]},
                {"ID": 3, "peerURLs": ["https://10.90.0.13:2380"]}
            ]
        });
        assert_eq!(
            initial_cluster(&added, "h3").unwrap(),
            "h1=https://10.90.0.11:2380,=https://10.90.0.12:2380,h3=https://10.90.0.13:2380"
        );
    }

    #[test]
    fn why_an_etcd_died_comes_from_its_last_error() {
        let log = r#"{"level":"info","msg":"starting"}
{"level":"fatal","msg":"discovery failed","error":"member count is unequal"}
{"level":"info","msg":"bye"}"#;
        assert_eq!(why_dead(log), "discovery failed: member count is unequal");
        assert_eq!(why_dead("plain text\n"), "plain text");
        assert_eq!(why_dead(""), "no log");
    }

    #[test]
    fn sizes_are_two_to_twenty() {
        assert_eq!(parse_sizes("3 5,7").unwrap().0, [3, 5, 7]);
        assert!(parse_sizes("1").unwrap_err().contains("between 2 and 20"));
        assert!(parse_sizes("x").is_err());
        assert!(parse_sizes(" ").is_err());
    }
}
