//! The soak: a cluster of three masters and two workers, in network
//! namespaces, under a workload for N minutes while a seeded schedule
//! ([`plan`]) injects faults one or two at a time; then the invariants are
//! checked and printed.
//!
//! The workload: every host writes ConfigMaps through its own node-local
//! balancer (a new one, then its counter, each half second); a StatefulSet
//! on w1 appends a numbered line to its volume every second; a master is
//! reset and joined again; the load-balancer address is changed from a
//! re-run. The faults, each bounded: power loss (every process killed, the
//! agent started again as a booting host's systemd would), a link cut
//! shorter or longer than the purge toleration (a purged host is reset and
//! joined again when it is back), a component or the agent killed, the
//! elected agent killed, the clock stepped (libfaketime under the agent),
//! the disk under m2's etcd filled (it is a 512 MiB tmpfs), packet loss
//! (iptables' statistic match: the kernel here has no netem).
//!
//! The invariants:
//! - every write the API acknowledged is there at the end (a counter at
//!   least at its last acknowledged value), and the volume's lines run
//!   1..N with nothing the soak saw lost;
//! - etcd never had fewer healthy voters than its quorum unless the
//!   faults and operations of the last minute had touched two masters;
//! - no node was purged unless it was out (power or link) and had been for
//!   the toleration (less the 5 s between two heartbeats: the silence
//!   starts at the last one), and still was (give or take kubelet's 10 s
//!   report interval); two outages count as one when the observer read
//!   the same signals of the node before the gap between them and after
//!   it (a link back for seconds need not let a report through);
//! - at most one agent claimed the leader's term at any sampled instant
//!   (every 200 ms, from each live agent's state file);
//! - once the faults stop, the cluster heals: every Node Ready, every etcd
//!   voter healthy, every node on the final settings, no address change
//!   left under way, `hakube check` with
//!   no error on every master.

mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hakube::kube::client::{KubeClient, Patch};

use crate::proc::msg;
use crate::support::{self, Cluster, Host, Network};
use plan::{Fault, Op, Shape, Step, What};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const LOCAL_LB: &str = "127.0.0.1:6444";
/// The master whose etcd directory is a filesystem of its own, small
/// enough to fill.
const SMALL_DISK: &str = "m2";
const SMALL_DISK_SIZE: &str = "512m";
/// Where the appending application's volume lives.
const VOLUME_NODE: &str = "w1";
/// kubelet renews its Lease every 10 s: a node back from an outage has not
/// necessarily reported for that long.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// A node is lost once its signals were silent for the toleration, from
/// the last heartbeat before an outage: up to hakube's heartbeat interval
/// (5 s) before the outage began, and a second either way for the logs.
const SILENCE_SLACK: Duration = Duration::from_secs(7);
/// How long after a disturbance of a master etcd may still be recovering
/// from it.
const RECOVERY: Duration = Duration::from_secs(60);
const HEAL_LIMIT: Duration = Duration::from_secs(600);
const MIN_FREE: u64 = 10 << 30;
const GIB: f64 = (1u64 << 30) as f64;

/// Bytes free for an unprivileged writer on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir).map(|s| s.blocks_available() * s.fragment_size()).unwrap_or(0)
}

#[derive(clap::Args)]
pub struct Args {
    /// How long the faults go on.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=1440))]
    minutes: u64,
    /// The schedule's seed (default: from the clock; printed, to replay).
    #[arg(long)]
    seed: Option<u64>,
    /// The cluster's lost-node toleration, in seconds: outages are planned
    /// shorter and longer than it.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(20..=600))]
    toleration: u64,
    /// Print the schedule and stop.
    #[arg(long)]
    plan_only: bool,
    /// Where the fault log, the samples and the agents' logs go (default
    /// target/soak/seed-S).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn run(args: Args) -> Result<()> {
    let seed = args.seed.unwrap_or_else(|| now_ms() % 1_000_000);
    let shape = Shape {
        minutes: args.minutes,
        masters: ["m1", "m2", "m3"].map(String::from).to_vec(),
        workers: ["w1", "w2"].map(String::from).to_vec(),
        small_disk: SMALL_DISK.into(),
        volume_node: VOLUME_NODE.into(),
        toleration: Duration::from_secs(args.toleration),
    };
    let steps = plan::plan(seed, &shape);
    println!("soak: seed {seed}, {} minutes, toleration {}s", args.minutes, args.toleration);
    println!("soak: replay with: scripts/soak.sh --minutes {} --seed {seed}", args.minutes);
    println!("soak: the schedule ({} steps):", steps.len());
    for s in &steps {
        println!("  {s}");
    }
    if args.plan_only {
        return Ok(());
    }
    if !Path::new(LIBFAKETIME).exists() {
        bail!("{LIBFAKETIME} is missing: install Debian's faketime (scripts/soak.sh does)");
    }
    // The binary and the bundle every host runs, found (or built) once.
    let (bin, bundle) = crate::bench::binary_and_bundle()?;
    std::env::set_var("HAKUBE_BIN", &bin);
    std::env::set_var("HAKUBE_TEST_BUNDLE", &bundle);
    // The hosts' roots (etcd's data among them) live under TMPDIR: a disk
    // that fills during the run fails etcd on every master at once, a fault
    // no schedule planned.
    let tmp = std::env::temp_dir();
    let free = free_bytes(&tmp);
    if free < MIN_FREE {
        bail!(
            "{} has {:.1} GiB free; the soak needs {} GiB (5 hosts' roots, etcd's data, the images): free space or set TMPDIR",
            tmp.display(),
            free as f64 / GIB,
            MIN_FREE >> 30
        );
    }
    let out = args.out.unwrap_or_else(|| crate::proc::repo().join(format!("target/soak/seed-{seed}")));
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(out.join("logs")).with_context(|| format!("cannot create {}", out.display()))?;
    fs::write(out.join("schedule.txt"), steps.iter().map(|s| format!("{s}\n")).collect::<String>())?;

    let started = Instant::now();
    msg!("building the cluster: 3 masters, 2 workers, every agent under libfaketime (offset 0)");
    let soak = Soak::up(&out, args.toleration)?;
    msg!("cluster and workload up in {:.0}s; the faults start", started.elapsed().as_secs_f64());
    let report = soak.run(&steps, &shape);
    fs::write(out.join("report.txt"), &report.text)?;
    print!("{}", report.text);
    soak.keep(report.violations > 0);
    soak.down();
    if report.violations > 0 {
        bail!("{} invariant(s) violated (seed {seed}; files in {})", report.violations, out.display());
    }
    println!("soak: every invariant held (seed {seed}, {:.0} min in all)", started.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

/// A span of time one host spent under a fault or an operation, in
/// milliseconds of the machine's clock.
#[derive(Clone, Debug)]
struct Span {
    host: String,
    kind: String,
    /// Whether it takes the host's etcd member (or the whole host) out.
    hits_etcd: bool,
    /// Whether the host is off the network or dead (kubelet cannot report).
    out: bool,
    from: u64,
    to: Option<u64>,
}

/// A clock offset applied to a host's agent, while it held.
#[derive(Clone, Debug)]
struct Offset {
    host: String,
    secs: i64,
    from: u64,
    to: Option<u64>,
}

#[derive(Default)]
struct Record {
    log: Vec<String>,
    spans: Vec<Span>,
    offsets: Vec<Offset>,
    /// Operations (and rejoins after purges): what, and how it ended.
    ops: Vec<(String, Result<Duration, String>)>,
    /// Instants at which more than one live agent claimed the term.
    double_claims: Vec<(u64, Vec<String>)>,
    /// Each change of the claimed leader: when, who.
    leaders: Vec<(u64, Option<String>)>,
    /// Samples with etcd below quorum: when, healthy voters, voters.
    below_quorum: Vec<(u64, usize, usize)>,
    quorum_samples: usize,
    /// Samples in which fewer than a quorum of voters served a linearizable read.
    unavailable: usize,
    claim_samples: usize,
    /// The least free space seen on the hosts' filesystem (bytes).
    min_free: Option<u64>,
    /// The volume's line count, as the soak last read it.
    volume_seen: u64,
    volume_reads: usize,
    /// Each node's signals as the observer read them: when, the node, its
    /// hakube heartbeat and its Kubernetes signal (both read, or no sample).
    signals: Vec<(u64, String, Heard)>,
    /// Threads of the soak (writers, samplers, operations) that panicked.
    panicked: usize,
}

/// A node's two signs of life, as the purge reads them: its registry
/// heartbeat and the freshest of its Lease and Ready heartbeat (None: it
/// has neither). Equal readings mean it reported nothing in between: both
/// only move forward, save for a clock stepped back.
type Heard = (u64, Option<u64>);

/// A host's ConfigMap writer's tally.
#[derive(Default, Clone)]
struct Tally {
    created: Vec<u64>,
    failed: usize,
    counter_acked: u64,
}

struct Soak {
    c: Cluster,
    obs: Host,
    out: PathBuf,
    /// Copies of m1's admin kubeconfig and etcd client files: m1 may be
    /// reset during the run.
    admin: PathBuf,
    creds: hakube::etcd::Credentials,
    toleration: Duration,
    t0: std::sync::atomic::AtomicU64,
    record: Mutex<Record>,
    tallies: Mutex<BTreeMap<String, Tally>>,
    stop: AtomicBool,
    /// Hosts the soak is working on (a rejoin in progress): no fault starts there.
    busy: Mutex<BTreeSet<String>>,
    /// Hosts whose rejoin failed (reset, not joined): the healing joins
    /// them again, as an operator would re-run the script.
    unjoined: Mutex<BTreeSet<String>>,
    /// Hosts back from an outage, to look at (were they purged meanwhile?).
    returned: Mutex<Vec<String>>,
}

fn host_env(out: &Path, name: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME_TIMESTAMP_FILE".into(), out.join(format!("clock-{name}")).display().to_string()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn etcd_dir(h: &Host) -> PathBuf {
    h.root().join("var/lib/hakube/etcd")
}

fn mount_small_disk(h: &Host) -> Result<()> {
    let dir = etcd_dir(h);
    fs::create_dir_all(&dir)?;
    let opts = format!("size={SMALL_DISK_SIZE},mode=0700");
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", &opts, "soak-etcd"]).arg(&dir).status()?;
    if !st.success() {
        bail!("cannot mount a tmpfs on {}", dir.display());
    }
    Ok(())
}

fn is_agent(pid: u64) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        args.iter().any(|a| a.ends_with(b"hakube")) && args.iter().any(|a| *a == b"agent")
    })
}

/// The pid of the host's agent, when it runs.
fn agent_pid(h: &Host) -> Option<u64> {
    let pid = fs::read_to_string(h.root().join("var/lib/hakube/agent.pid")).ok()?.trim().parse().ok()?;
    is_agent(pid).then_some(pid)
}

fn kill(pid: u64) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

/// The packet-loss rules, one for each way.
fn loss_rules(percent: u8) -> [Vec<String>; 2] {
    let p = format!("{:.2}", f64::from(percent) / 100.0);
    let rule = |chain: &str, dir: &str| {
        [chain, dir, "eth0", "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"]
            .map(String::from)
            .to_vec()
    };
    [rule("INPUT", "-i"), rule("OUTPUT", "-o")]
}

fn iptables(h: &Host, op: &str, rule: &[String]) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &h.ns, "iptables", "-w", op]).args(rule);
    cmd.status().is_ok_and(|s| s.success())
}

/// Fills the filesystem under `dir` (a tmpfs) with a ballast file.
fn fill(dir: &Path) -> Result<u64> {
    let mut f = fs::File::create(dir.join("soak-ballast"))?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

fn statefulset(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: app, namespace: soak}}
spec:
  serviceName: app
  replicas: 1
  selector: {{matchLabels: {{app: soak-app}}}}
  template:
    metadata: {{labels: {{app: soak-app}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {VOLUME_NODE}}}
      terminationGracePeriodSeconds: 5
      containers:
      - name: c
        image: {image}
        imagePullPolicy: Never
        command: [sh, -c, 'touch /data/log; i=$(wc -l < /data/log); while true; do i=$((i+1)); echo $i >> /data/log; sync; sleep 1; done']
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 64Mi}}}}
"#
    )
}

/// Whether `lines` is 1, 2, …, N: how many, or where it breaks.
fn contiguous(text: &str) -> Result<u64, String> {
    let mut n = 0u64;
    for (i, l) in text.lines().enumerate() {
        match l.trim().parse::<u64>() {
            Ok(v) if v == i as u64 + 1 => n = v,
            _ => return Err(format!("line {} is {l:?}", i + 1)),
        }
    }
    Ok(n)
}

/// `2026-12-05T14:10:00.123456Z` as milliseconds since the epoch.
fn parse_log_time(s: &str) -> Option<u64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms).ok()
}

impl Soak {
    fn up(out: &Path, toleration: u64) -> Result<Soak> {
        let words = ["ha".to_owned(), format!("lost-node-toleration={toleration}s")];
        for name in ["m1", "m2", "m3", "w1", "w2"] {
            fs::write(out.join(format!("clock-{name}")), "+0\n")?;
        }
        let c = build_cluster(out, &words)?;
        let obs = c.net.host("obs");
        let m1 = c.m1();
        let admin = out.join("admin.conf");
        fs::copy(m1.root().join("var/lib/hakube/kubeconfigs/admin.conf"), &admin)?;
        let creds =
            hakube::etcd::Credentials::load(&hakube::host::paths::Paths::new(m1.root()), "apiserver-etcd-client")
                .context("m1's etcd client credentials")?;
        let soak = Soak {
            c,
            obs,
            out: out.to_path_buf(),
            admin,
            creds,
            toleration: Duration::from_secs(toleration),
            t0: std::sync::atomic::AtomicU64::new(now_ms()),
            record: Mutex::default(),
            tallies: Mutex::default(),
            stop: AtomicBool::new(false),
            busy: Mutex::default(),
            unjoined: Mutex::default(),
            returned: Mutex::default(),
        };
        let all: Vec<String> = ["m1", "m2", "m3", "w1", "w2"].map(String::from).to_vec();
        let deadline = Instant::now() + Duration::from_secs(300);
        while soak.ready_nodes() != all {
            if Instant::now() > deadline {
                bail!("the five Nodes were not Ready within 300 s: {:?}", soak.ready_nodes());
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        let image = support::test_image();
        let ns = soak.kubectl(&["create", "namespace", "soak"]);
        if !ns.status.success() {
            bail!("cannot create the soak namespace: {}", support::stderr(&ns));
        }
        let manifest = out.join("app.yaml");
        fs::write(&manifest, statefulset(&image))?;
        let applied = soak.kubectl(&["apply", "-f", &manifest.display().to_string()]);
        if !applied.status.success() {
            bail!("cannot create the appending StatefulSet: {}", support::stderr(&applied));
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        while soak.read_volume().is_none() {
            if Instant::now() > deadline {
                bail!("the appending application never wrote its volume");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        Ok(soak)
    }

    fn down(self) {
        let Soak { c, obs, .. } = self;
        if let Ok(h) = c.hosts().find(|h| h.name == SMALL_DISK).ok_or(()) {
            h.kill_all();
            let _ = Command::new("umount").arg("-l").arg(etcd_dir(h)).status();
        }
        drop(obs);
        drop(c);
    }

    fn host(&self, name: &str) -> &Host {
        self.c.host(name)
    }

    fn masters(&self) -> impl Iterator<Item = &Host> {
        self.c.masters.iter()
    }

    /// When the schedule started (ms since the epoch).
    fn t0(&self) -> u64 {
        self.t0.load(Ordering::SeqCst)
    }

    fn since(&self) -> String {
        format!("{:>5}s", now_ms().saturating_sub(self.t0()) / 1000)
    }

    fn note(&self, line: String) {
        let line = format!("{} {line}", self.since());
        println!("  {line}");
        self.record.lock().unwrap().log.push(line);
    }

    /// kubectl in the observer's namespace, with the admin identity, to
    /// whichever master answers.
    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        let admin = self.admin.display().to_string();
        let mut last = None;
        for m in self.masters() {
            let server = format!("https://{}:6443", m.addr);
            let mut all = vec!["--kubeconfig", &admin, "--server", &server, "--request-timeout=15s"];
            all.extend_from_slice(args);
            let out = self.obs.exec("kubectl", &all);
            if out.status.success() {
                return out;
            }
            last = Some(out);
        }
        last.expect("three masters")
    }

    fn ready_nodes(&self) -> Vec<String> {
        let out = self.kubectl(&["get", "nodes", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        crate::sandbox::ready_in(&v).into_iter().collect()
    }

    /// The volume's whole text, through kubectl exec.
    fn read_volume(&self) -> Option<String> {
        let out = self.kubectl(&["-n", "soak", "exec", "app-0", "--", "cat", "/data/log"]);
        out.status.success().then(|| support::stdout(&out)).filter(|t| !t.is_empty())
    }

    /// Starts a host's agent, as a booting host's systemd would.
    fn boot(&self, h: &Host) {
        let log = hakube::host::paths::Paths::new(h.root()).component_log("agent");
        let Ok(file) = fs::OpenOptions::new().create(true).append(true).open(&log) else { return };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, support::hakube(), "--root"]).arg(h.root()).arg("agent");
        cmd.env("PATH", support::path_env()).envs(host_env(&self.out, &h.name));
        cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file).process_group(0);
        if let Err(e) = cmd.spawn() {
            self.note(format!("cannot start the agent of {}: {e}", h.name));
        }
    }

    fn open_span(&self, host: &str, kind: &str, hits_etcd: bool, out: bool) {
        let span = Span { host: host.into(), kind: kind.into(), hits_etcd, out, from: now_ms(), to: None };
        self.record.lock().unwrap().spans.push(span);
    }

    fn close_span(&self, host: &str, kind: &str) {
        let mut r = self.record.lock().unwrap();
        if let Some(s) = r.spans.iter_mut().rev().find(|s| s.host == host && s.kind == kind && s.to.is_none()) {
            s.to = Some(now_ms());
        }
    }

    fn set_clock(&self, host: &str, secs: i64) {
        let _ = fs::write(self.out.join(format!("clock-{host}")), format!("{secs:+}s\n"));
        let mut r = self.record.lock().unwrap();
        if let Some(o) = r.offsets.iter_mut().rev().find(|o| o.host == host && o.to.is_none()) {
            o.to = Some(now_ms());
        }
        if secs != 0 {
            r.offsets.push(Offset { host: host.into(), secs, from: now_ms(), to: None });
        }
    }

    /// The master whose live agent claims the term, if exactly one does.
    fn claimed_leader(&self) -> Vec<String> {
        self.masters()
            .filter(|m| {
                let s = m.state();
                s["leading_since"].is_u64() && s["agent_pid"].as_u64().is_some_and(is_agent)
            })
            .map(|m| m.name.clone())
            .collect()
    }

    /// Starts a fault; returns what undoes it.
    fn inject(&self, step: &Step) -> Option<Undo> {
        let What::Fault(fault) = &step.what else { return None };
        let name = match (&step.host, fault) {
            (Some(h), _) => h.clone(),
            (None, _) => match self.claimed_leader().as_slice() {
                [one] => one.clone(),
                other => {
                    self.note(format!("no single elected agent to kill ({other:?}): skipped"));
                    return None;
                }
            },
        };
        if self.busy.lock().unwrap().contains(&name) {
            self.note(format!("{name} is being rejoined: {step} skipped"));
            return None;
        }
        let h = self.host(&name);
        let is_master = name.starts_with('m');
        self.note(format!("{step}{}", if step.host.is_none() { format!(" ({name})") } else { String::new() }));
        match fault {
            Fault::PowerLoss => {
                self.open_span(&name, "power loss", is_master, true);
                h.kill_all();
                h.kill_pods();
                Some(Box::new(move |s: &Soak| {
                    let h = s.host(&name);
                    s.boot(h);
                    s.close_span(&name, "power loss");
                    s.note(format!("{name} powered on"));
                    s.returned.lock().unwrap().push(name);
                }))
            }
            Fault::LinkCut => {
                self.open_span(&name, "link cut", is_master, true);
                self.c.net.set_link(h, false);
                Some(Box::new(move |s: &Soak| {
                    s.c.net.set_link(s.host(&name), true);
                    s.close_span(&name, "link cut");
                    s.note(format!("{name}'s link up"));
                    s.returned.lock().unwrap().push(name);
                }))
            }
            Fault::KillComponent(c) => {
                let pid = h.state()["components"][*c]["pid"].as_u64();
                match pid {
                    Some(pid) => {
                        let now = now_ms();
                        let span = Span {
                            host: name.clone(),
                            kind: format!("kill {c}"),
                            hits_etcd: *c == "etcd",
                            out: false,
                            from: now,
                            to: Some(now + 1),
                        };
                        self.record.lock().unwrap().spans.push(span);
                        kill(pid);
                    }
                    None => self.note(format!("{c} has no process on {name}: nothing killed")),
                }
                None
            }
            Fault::KillAgent | Fault::KillLeader => {
                let Some(pid) = agent_pid(h) else {
                    self.note(format!("no agent runs on {name}: nothing killed"));
                    return None;
                };
                // The agent's components die with it (they are told to by
                // the kernel), etcd included.
                self.open_span(&name, "agent killed", is_master, false);
                kill(pid);
                Some(Box::new(move |s: &Soak| {
                    s.boot(s.host(&name));
                    s.close_span(&name, "agent killed");
                    s.note(format!("{name}'s agent started again"));
                }))
            }
            Fault::ClockStep(secs) => {
                self.set_clock(&name, *secs);
                Some(Box::new(move |s: &Soak| {
                    s.set_clock(&name, 0);
                    s.note(format!("{name}'s clock back"));
                }))
            }
            Fault::FullDisk => {
                self.open_span(&name, "full disk", true, false);
                match fill(&etcd_dir(h)) {
                    Ok(n) => self.note(format!("{name}: {} MiB of ballast fill etcd's filesystem", n >> 20)),
                    Err(e) => self.note(format!("{name}: cannot fill etcd's filesystem: {e}")),
                }
                Some(Box::new(move |s: &Soak| {
                    let _ = fs::remove_file(etcd_dir(s.host(&name)).join("soak-ballast"));
                    s.close_span(&name, "full disk");
                    s.note(format!("{name}'s etcd disk has room again"));
                }))
            }
            Fault::PacketLoss(p) => {
                self.open_span(&name, "packet loss", is_master, false);
                let rules = loss_rules(*p);
                for r in &rules {
                    if !iptables(h, "-I", r) {
                        self.note(format!("{name}: cannot add {r:?}"));
                    }
                }
                Some(Box::new(move |s: &Soak| {
                    for r in &rules {
                        iptables(s.host(&name), "-D", r);
                    }
                    s.close_span(&name, "packet loss");
                    s.note(format!("{name}'s packets flow again"));
                }))
            }
        }
    }

    /// After an outage: a host the cluster purged meanwhile is reset and
    /// joined again (in the background: it takes minutes).
    fn after_outage(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let h = self.host(name);
        while Instant::now() < deadline {
            if h.state()["purged"].is_string() {
                self.note(format!("{name} was purged while out: reset and joined again"));
                let what = format!("rejoin of {name} after its purge");
                let took = self.rejoin(name);
                self.record.lock().unwrap().ops.push((what, took));
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A live master other than `not`, to run commands on.
    fn live_master(&self, not: &str) -> Option<&Host> {
        let busy = self.busy.lock().unwrap().clone();
        let spans = self.record.lock().unwrap().spans.clone();
        self.masters().find(|m| {
            m.name != not
                && !busy.contains(&m.name)
                && agent_pid(m).is_some()
                && !spans.iter().any(|s| s.host == m.name && s.to.is_none() && s.hits_etcd)
        })
    }

    /// Resets `name` and joins it again with a fresh script from a live master.
    fn rejoin(&self, name: &str) -> Result<Duration, String> {
        let started = Instant::now();
        self.busy.lock().unwrap().insert(name.to_owned());
        let is_master = name.starts_with('m');
        if is_master {
            self.open_span(name, "rejoin", true, false);
        }
        let result = (|| {
            let h = self.host(name);
            self.save_logs(h, "before-reset");
            let env = host_env(&self.out, name);
            let reset = h.hakube_env(&["reset"], &env_refs(&env));
            if !reset.status.success() {
                return Err(format!("reset failed: {}", support::stderr(&reset)));
            }
            if name == SMALL_DISK {
                mount_small_disk(h).map_err(|e| e.to_string())?;
            }
            let from = self.live_master(name).ok_or("no live master to print a join script")?;
            let flags: &[&str] = if is_master { &["node-join-script", "--master"] } else { &["node-join-script"] };
            let script = from.hakube(flags);
            if !script.status.success() {
                return Err(format!("node-join-script on {}: {}", from.name, support::stderr(&script)));
            }
            let path = self.out.join(format!("join-{name}.sh"));
            fs::write(&path, &script.stdout).map_err(|e| e.to_string())?;
            let components = if is_master { support::MASTER } else { support::WORKER };
            let mut env = env_refs(&env);
            env.push(support::bin());
            let joined = support::run_join(h, &path, components, &env);
            let _ = fs::remove_file(&path);
            if !joined.status.success() {
                return Err(format!("join failed: {}", support::stderr(&joined)));
            }
            Ok(started.elapsed())
        })();
        if is_master {
            self.close_span(name, "rejoin");
        }
        self.busy.lock().unwrap().remove(name);
        match &result {
            Ok(d) => {
                self.unjoined.lock().unwrap().remove(name);
                self.note(format!("{name} joined again in {:.0}s", d.as_secs_f64()))
            }
            Err(e) => {
                self.unjoined.lock().unwrap().insert(name.to_owned());
                self.note(format!("{name} could not join again: {}", e.trim_end()))
            }
        }
        result
    }

    /// What a later look at the run needs, kept in the output directory:
    /// the fault log (faults.txt), the observer's readings of the nodes'
    /// signals (signals.txt: seconds into the run, node, hakube heartbeat,
    /// Kubernetes signal), and after a violation every host's logs as they
    /// stand.
    fn keep(&self, violated: bool) {
        let t0 = self.t0();
        let r = self.record.lock().unwrap();
        let _ = fs::write(self.out.join("faults.txt"), r.log.iter().map(|l| format!("{l}\n")).collect::<String>());
        let text: String = r
            .signals
            .iter()
            .map(|(at, node, (beat, kube))| {
                let kube = kube.map_or("-".to_owned(), |k| k.to_string());
                format!("{:.1} {node} {beat} {kube}\n", at.saturating_sub(t0) as f64 / 1000.0)
            })
            .collect();
        drop(r);
        let _ = fs::write(self.out.join("signals.txt"), text);
        if violated {
            for h in self.c.hosts() {
                self.save_logs(h, "at-end");
            }
        }
    }

    fn save_logs(&self, h: &Host, tag: &str) {
        let dir = h.root().join("var/lib/hakube/logs");
        let dest = self.out.join("logs").join(format!("{}-{tag}-{}", h.name, now_ms()));
        let _ = fs::create_dir_all(&dest);
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = fs::copy(e.path(), dest.join(e.file_name()));
        }
    }

    fn operate(&self, op: &Op) {
        let started = Instant::now();
        let (what, result) = match op {
            Op::Rejoin(m) => (format!("reset and rejoin of {m}"), self.rejoin(m)),
            Op::AddressChange { from_master, to } => {
                // An operator re-runs install on a master of the cluster: one
                // purged, left unjoined or being rejoined is not one, and the
                // first master that is takes its place.
                let outside = |name: &str| {
                    self.busy.lock().unwrap().contains(name)
                        || self.unjoined.lock().unwrap().contains(name)
                        || self.host(name).state()["purged"].is_string()
                };
                let from_master = match outside(from_master) {
                    false => from_master.clone(),
                    true => match self.masters().map(|m| m.name.clone()).find(|m| !outside(m)) {
                        Some(other) => {
                            self.note(format!(
                                "{from_master} is out of the cluster: the address change runs on {other}"
                            ));
                            other
                        }
                        None => from_master.clone(),
                    },
                };
                let from_master = &from_master;
                let (from, to_host) = (self.host(from_master), self.host(to));
                let word = format!("load-balancer-address={}:6443", to_host.addr);
                let env = host_env(&self.out, from_master);
                let out = from.hakube_env(&["install", "ha", &word], &env_refs(&env));
                let result = match out.status.success() {
                    true => Ok(started.elapsed()),
                    false => Err(support::stderr(&out).lines().rev().take(6).collect::<Vec<_>>().join(" | ")),
                };
                match &result {
                    Ok(d) => self.note(format!("the address is {word} ({:.0}s)", d.as_secs_f64())),
                    Err(e) => self.note(format!("the address change failed: {e}")),
                }
                (format!("address change to {to}'s API server, from {from_master}"), result)
            }
        };
        self.record.lock().unwrap().ops.push((what, result));
    }

    /// Each host's writer: through its own balancer, a new ConfigMap and
    /// then its counter, every half second, until told to stop.
    fn writer(&self, h: &Host) {
        let name = h.name.clone();
        h.within(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let Ok(client) = KubeClient::from_kubeconfig(&self.admin) else { return };
            let client = client.with_servers(vec![LOCAL_LB.parse().unwrap()]).with_timeout(Duration::from_secs(5));
            let base = "/api/v1/namespaces/soak/configmaps";
            let counter = format!("{base}/c-{name}");
            let body = serde_json::json!({"metadata": {"name": format!("c-{name}")}, "data": {"seq": "0"}});
            let _ = rt.block_on(client.create::<serde_json::Value>("counter", base, &body));
            let mut seq = 0u64;
            while !self.stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                seq += 1;
                let body = serde_json::json!({
                    "metadata": {"name": format!("w-{name}-{seq}")},
                    "data": {"seq": seq.to_string()},
                });
                let created = rt.block_on(client.create::<serde_json::Value>("write", base, &body)).is_ok();
                let patch = serde_json::json!({"data": {"seq": seq.to_string()}});
                let counted =
                    rt.block_on(client.patch::<serde_json::Value>("counter", &counter, Patch::Merge, &patch)).is_ok();
                {
                    let mut t = self.tallies.lock().unwrap();
                    let t = t.entry(name.clone()).or_default();
                    if created {
                        t.created.push(seq);
                    } else {
                        t.failed += 1;
                    }
                    if counted {
                        t.counter_acked = seq;
                    }
                }
                std::thread::sleep(Duration::from_millis(500).saturating_sub(started.elapsed()));
            }
        });
    }

    /// Every 200 ms: which live agents claim the term.
    fn claims_sampler(&self) {
        let mut last: Option<Option<String>> = None;
        while !self.stop.load(Ordering::SeqCst) {
            let claims = self.claimed_leader();
            let mut r = self.record.lock().unwrap();
            r.claim_samples += 1;
            if claims.len() > 1 {
                r.double_claims.push((now_ms(), claims.clone()));
            }
            let now = claims.first().cloned();
            if last.as_ref() != Some(&now) {
                r.leaders.push((now_ms(), now.clone()));
                last = Some(now);
            }
            drop(r);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every 2 s, from the observer: how many voters are up (answer a
    /// status call: running and reachable) and how many serve (answer a
    /// linearizable read, which needs a leader: an election after a fault
    /// on the leader stops it for seconds with every voter up). The voters
    /// are those a serving member lists; while none serves, the last ones
    /// known.
    fn quorum_sampler(&self) {
        let endpoints: Vec<String> = self.masters().map(|m| format!("https://{}:2379", m.addr)).collect();
        self.obs.within(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut known: Vec<String> = endpoints.clone();
            while !self.stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let probe = rt.block_on(self.quorum(&endpoints));
                if let Some(v) = probe.voters {
                    known = v;
                }
                let up = known.iter().filter(|v| probe.up.contains(*v)).count();
                let serving = known.iter().filter(|v| probe.serving.contains(*v)).count();
                let free = free_bytes(&std::env::temp_dir());
                let mut r = self.record.lock().unwrap();
                r.min_free = Some(r.min_free.map_or(free, |m| m.min(free)));
                r.quorum_samples += 1;
                if up < known.len() / 2 + 1 {
                    r.below_quorum.push((now_ms(), up, known.len()));
                }
                if serving < known.len() / 2 + 1 {
                    r.unavailable += 1;
                }
                drop(r);
                std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
            }
        });
    }

    /// A client of one etcd member, as the samplers ask it: 1 s to connect,
    /// 2 s for each request.
    async fn member(&self, endpoint: &str) -> Option<etcd_client::Client> {
        let endpoints = [endpoint.to_owned()];
        hakube::etcd::connect_with(&endpoints, &self.creds, Duration::from_secs(1), Some(Duration::from_secs(2)))
            .await
            .ok()
    }

    /// Each endpoint's answer to a status call and to a linearizable read,
    /// and the voters' client URLs.
    async fn quorum(&self, endpoints: &[String]) -> Probe {
        let mut probe = Probe::default();
        for e in endpoints {
            let call = async {
                let mut c = self.member(e).await?;
                let list = c.member_list().await.ok();
                c.status().await.ok()?;
                probe.up.insert(e.clone());
                c.get("soak-health", None).await.ok()?;
                // The voters as a member that serves linearizable reads
                // lists them: a member removed while cut off still lists
                // the cluster it was cut from, itself included.
                if probe.voters.is_none() {
                    probe.voters = list.map(|list| {
                        list.members()
                            .iter()
                            .filter(|m| !m.is_learner())
                            .flat_map(|m| m.client_urls().to_vec())
                            .collect()
                    });
                }
                Some(())
            };
            if tokio::time::timeout(Duration::from_secs(3), call).await.ok().flatten().is_some() {
                probe.serving.insert(e.clone());
            }
        }
        probe
    }

    /// Every 2 s, from the observer: every registered node's signals, read
    /// as the purge reads them (its registry record linearizably from any
    /// serving member, its Lease and Node from any master's API server).
    /// A node whose link comes back is not heard at once (its kubelet's
    /// requests from during the cut time out first): these readings show
    /// when it was silent across such a gap.
    fn signal_sampler(&self) {
        let endpoints: Vec<String> = self.masters().map(|m| format!("https://{}:2379", m.addr)).collect();
        let servers = self.masters().map(|m| format!("{}:6443", m.addr).parse().unwrap()).collect();
        self.obs.within(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let Ok(kube) = KubeClient::from_kubeconfig(&self.admin) else { return };
            let kube = kube.with_servers(servers).with_timeout(Duration::from_secs(2));
            while !self.stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let read = async {
                    // One member at a time: any that serves will do.
                    let mut records = None;
                    for e in &endpoints {
                        let one = async {
                            let mut c = self.member(e).await?;
                            hakube::cluster::registry::list(&mut c, e).await.ok()
                        };
                        records = tokio::time::timeout(Duration::from_secs(3), one).await.ok().flatten();
                        if records.is_some() {
                            break;
                        }
                    }
                    let records = records?;
                    let mut heard = vec![];
                    for r in records {
                        let signal = hakube::cluster::purge::signal(Some(&kube), &r.name).await;
                        if matches!(signal, hakube::cluster::purge::KubeSignal::Unknown(_)) {
                            continue;
                        }
                        heard.push((r.name, (r.heartbeat_at, signal.value())));
                    }
                    Some(heard)
                };
                let at = now_ms();
                if let Ok(Some(heard)) =
                    rt.block_on(async { tokio::time::timeout(Duration::from_secs(12), read).await })
                {
                    let mut r = self.record.lock().unwrap();
                    r.signals.extend(heard.into_iter().map(|(name, h)| (at, name, h)));
                }
                std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
            }
        });
    }

    /// Every 15 s: the volume's lines, checked and counted.
    fn volume_sampler(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            if let Some(text) = self.read_volume() {
                let mut r = self.record.lock().unwrap();
                r.volume_reads += 1;
                if let Ok(n) = contiguous(&text) {
                    r.volume_seen = r.volume_seen.max(n);
                }
            }
            for _ in 0..75 {
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    fn run(&self, steps: &[Step], shape: &Shape) -> Report {
        let end = Duration::from_secs(shape.minutes * 60);
        std::thread::scope(|s| {
            let mut workers = vec![];
            for h in self.c.hosts() {
                workers.push(s.spawn(move || self.writer(h)));
            }
            workers.push(s.spawn(|| self.claims_sampler()));
            workers.push(s.spawn(|| self.quorum_sampler()));
            workers.push(s.spawn(|| self.signal_sampler()));
            workers.push(s.spawn(|| self.volume_sampler()));

            let start = Instant::now();
            self.t0.store(now_ms(), Ordering::SeqCst);
            let mut undo: Vec<(Duration, Undo)> = vec![];
            let mut ops = vec![];
            let mut next = steps.iter().peekable();
            loop {
                let now = start.elapsed();
                // Undo what is due first, then start what is due.
                undo.sort_by_key(|(at, _)| *at);
                while undo.first().is_some_and(|(at, _)| *at <= now) {
                    let (_, f) = undo.remove(0);
                    f(self);
                }
                // Hosts back from an outage: rejoined if they were purged.
                for name in std::mem::take(&mut *self.returned.lock().unwrap()) {
                    ops.push(s.spawn(move || self.after_outage(&name)));
                }
                while let Some(step) = next.next_if(|st| st.at <= now) {
                    match &step.what {
                        What::Op(op) => {
                            self.note(format!("{step}"));
                            let op = op.clone();
                            ops.push(s.spawn(move || self.operate(&op)));
                        }
                        What::Fault(_) => {
                            if let Some(f) = self.inject(step) {
                                undo.push((now + step.hold, f));
                            }
                        }
                    }
                }
                if now >= end && undo.is_empty() && next.peek().is_none() && self.returned.lock().unwrap().is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut panicked = 0;
            for o in ops {
                panicked += usize::from(o.join().is_err());
            }
            self.note("the faults stopped; the workload runs on 15 s more".into());
            std::thread::sleep(Duration::from_secs(15));
            self.stop.store(true, Ordering::SeqCst);
            for w in workers {
                panicked += usize::from(w.join().is_err());
            }
            // A sampler that died would leave its invariant checked on
            // nothing: the run does not pass.
            self.record.lock().unwrap().panicked = panicked;
        });
        self.judge(steps)
    }

    /// Waits (bounded) for the cluster to heal; what is still wrong.
    fn heal(&self) -> (Option<Duration>, Vec<String>) {
        let started = Instant::now();
        let all: Vec<String> = ["m1", "m2", "m3", "w1", "w2"].map(String::from).to_vec();
        let endpoints: Vec<String> = self.masters().map(|m| format!("https://{}:2379", m.addr)).collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut wrong;
        loop {
            wrong = vec![];
            // A host purged while out, or whose rejoin failed, stays out
            // until someone joins it again: the soak does, as an operator
            // would.
            for h in self.c.hosts() {
                let purged = h.state()["purged"].is_string();
                let unjoined = self.unjoined.lock().unwrap().contains(&h.name);
                if (purged || unjoined) && !self.busy.lock().unwrap().contains(&h.name) {
                    let why = if purged { "is purged" } else { "was left unjoined" };
                    self.note(format!("{} {why}: reset and joined again", h.name));
                    let what = format!("rejoin of {} after its purge", h.name);
                    let took = self.rejoin(&h.name);
                    self.record.lock().unwrap().ops.push((what, took));
                }
            }
            let ready = self.ready_nodes();
            if ready != all {
                wrong.push(format!("Ready Nodes: {ready:?}"));
            }
            let probe = self.obs.within(|| rt.block_on(self.quorum(&endpoints)));
            let (healthy, voters) = (probe.serving, probe.voters.unwrap_or_default());
            if voters.len() != 3 || !voters.iter().all(|v| healthy.contains(v)) {
                wrong.push(format!("etcd voters {voters:?}, healthy {healthy:?}"));
            }
            let status = self.masters().find_map(|m| {
                let out = m.hakube(&["status", "--json"]);
                serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().filter(|v| v["cluster"].is_object())
            });
            match status {
                Some(s) => {
                    let c = &s["cluster"];
                    let nodes = c["nodes"].as_array().map(Vec::len).unwrap_or(0);
                    let not_converged = c["not_converged"].as_array().cloned().unwrap_or_default();
                    if nodes != 5 || !not_converged.is_empty() {
                        wrong.push(format!("settings: {nodes} nodes, not converged: {not_converged:?}"));
                    }
                    // An address change the faults held up completes once they stop.
                    let (change, progress) = (&c["settings"]["loadBalancerChange"], &c["load_balancer_change"]);
                    if !change.is_null() {
                        let waiting: Vec<String> = progress["masters"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|m| format!("{}: {}", m["name"], m["state"]["detail"]))
                            .collect();
                        wrong.push(format!(
                            "the address change to {} is still under way (phase {}): {}",
                            change["to"],
                            change["phase"],
                            waiting.join("; ")
                        ));
                    }
                }
                None => wrong.push("no master answers hakube status".into()),
            }
            if wrong.is_empty() {
                for m in self.masters() {
                    let out = m.hakube(&["check"]);
                    if out.status.code().is_none_or(|c| c > 1) {
                        let errors: Vec<String> =
                            support::stdout(&out).lines().filter(|l| l.contains('×')).map(str::to_owned).collect();
                        wrong.push(format!("hakube check on {}: {}", m.name, errors.join("; ")));
                    }
                }
            }
            if wrong.is_empty() {
                return (Some(started.elapsed()), wrong);
            }
            if started.elapsed() > HEAL_LIMIT {
                return (None, wrong);
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    /// Every purge the leaders logged: (when, by whom, node), corrected
    /// for the clock offset the logging agent ran under ([`real_times`]),
    /// and how many were called off before they did anything.
    fn purges(&self) -> (Vec<(u64, String, String)>, usize) {
        let offsets = self.record.lock().unwrap().offsets.clone();
        let mut files: Vec<(String, PathBuf)> = vec![];
        for h in self.c.hosts() {
            for f in ["agent.log", "agent.log.1", "agent.log.2"] {
                files.push((h.name.clone(), h.root().join("var/lib/hakube/logs").join(f)));
            }
        }
        for e in fs::read_dir(self.out.join("logs")).into_iter().flatten().flatten() {
            let host = e.file_name().to_string_lossy().split('-').next().unwrap_or_default().to_owned();
            for f in ["agent.log", "agent.log.1", "agent.log.2"] {
                files.push((host.clone(), e.path().join(f)));
            }
        }
        let mut events = BTreeSet::new();
        for (host, path) in files {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<(u64, &str)> =
                text.lines().filter_map(|l| Some((parse_log_time(l.split_whitespace().next()?)?, l))).collect();
            let own: Vec<&Offset> = offsets.iter().filter(|o| o.host == host).collect();
            let real = real_times(&lines.iter().map(|(t, _)| *t).collect::<Vec<_>>(), &own);
            for ((_, line), at) in lines.iter().zip(real) {
                if let Some(e) = purge_event(line) {
                    events.insert((at, host.clone(), e));
                }
            }
        }
        carried_out(events.into_iter().collect())
    }

    fn judge(&self, steps: &[Step]) -> Report {
        let mut text = String::new();
        let mut text_ops: Vec<String> = vec![];
        let mut violations = 0;
        let mut say = |ok: bool, line: String| {
            if !ok {
                violations += 1;
            }
            text.push_str(&format!("{} {line}\n", if ok { "✓" } else { "×" }));
        };
        let panicked = self.record.lock().unwrap().panicked;
        say(
            panicked == 0,
            format!("every writer, sampler and operation of the soak ran to its end ({panicked} panicked)"),
        );
        let (healed, wrong) = self.heal();
        say(
            healed.is_some(),
            match healed {
                Some(d) => format!("the cluster healed {:.0}s after the faults stopped", d.as_secs_f64()),
                None => format!("the cluster did not heal within {}s: {}", HEAL_LIMIT.as_secs(), wrong.join("; ")),
            },
        );

        // Acknowledged writes.
        let tallies = self.tallies.lock().unwrap().clone();
        let listed = self.obs.within(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let client = KubeClient::from_kubeconfig(&self.admin).ok()?;
            let servers = self.masters().map(|m| format!("{}:6443", m.addr).parse().unwrap()).collect();
            let client = client.with_servers(servers);
            let path = "/api/v1/namespaces/soak/configmaps";
            rt.block_on(client.list_all::<serde_json::Value>("configmaps", path)).ok().map(|(items, _)| items)
        });
        match listed {
            None => say(false, "cannot list the ConfigMaps to check the writes".into()),
            Some(items) => {
                let data: BTreeMap<String, String> = items
                    .iter()
                    .filter_map(|i| {
                        Some((i["metadata"]["name"].as_str()?.to_owned(), i["data"]["seq"].as_str()?.to_owned()))
                    })
                    .collect();
                let (mut acked, mut lost, mut failed) = (0usize, vec![], 0usize);
                for (host, t) in &tallies {
                    failed += t.failed;
                    for seq in &t.created {
                        acked += 1;
                        if data.get(&format!("w-{host}-{seq}")) != Some(&seq.to_string()) {
                            lost.push(format!("w-{host}-{seq}"));
                        }
                    }
                    let counter = data.get(&format!("c-{host}")).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    if counter < t.counter_acked {
                        lost.push(format!("c-{host} is {counter}, acknowledged {}", t.counter_acked));
                    }
                }
                say(
                    lost.is_empty() && acked > 0,
                    format!(
                        "{acked} acknowledged ConfigMap writes through 5 balancers, {} missing ({failed} writes \
                         refused or unanswered, not counted); counters at or past their last acknowledged value{}",
                        lost.len(),
                        if lost.is_empty() { String::new() } else { format!(": {}", lost.join(", ")) }
                    ),
                );
            }
        }

        let r = self.record.lock().unwrap();
        // The volume.
        match self.read_volume().map(|t| contiguous(&t)) {
            Some(Ok(n)) => say(
                n >= r.volume_seen && n > 0,
                format!(
                    "the volume holds lines 1..{n}, contiguous; the most seen during the run was {}",
                    r.volume_seen
                ),
            ),
            Some(Err(e)) => say(false, format!("the volume's lines are broken: {e}")),
            None => say(false, "the volume could not be read at the end".into()),
        }

        // The machine's own disk, which no schedule fills.
        if let Some(min) = r.min_free {
            say(
                min >= 1 << 30,
                format!("the hosts' filesystem had at least {:.1} GiB free throughout", min as f64 / GIB),
            );
        }

        // Quorum.
        // Below quorum is excused while (or shortly after) the schedule's
        // faults and operations hit as many masters as it takes: with V
        // voters, V - (V/2 + 1) + 1.
        let excused = |at: u64, voters: usize| {
            let hit: BTreeSet<&str> = r
                .spans
                .iter()
                .filter(|s| s.hits_etcd && s.from <= at && s.to.is_none_or(|to| to + RECOVERY.as_millis() as u64 >= at))
                .map(|s| s.host.as_str())
                .collect();
            hit.len() > voters - (voters / 2 + 1)
        };
        let unexcused: Vec<String> = r
            .below_quorum
            .iter()
            .filter(|(at, _, voters)| !excused(*at, *voters))
            .map(|(at, h, v)| format!("{}s: {h} of {v}", at.saturating_sub(self.t0()) / 1000))
            .collect();
        say(
            unexcused.is_empty() && r.quorum_samples > 0,
            format!(
                "fewer voters up than a quorum in {} of {} samples, each while the faults held enough masters{} \
                 (no linearizable read served in {} samples: elections after faults on the leader included)",
                r.below_quorum.len(),
                r.quorum_samples,
                if unexcused.is_empty() { String::new() } else { format!("; not so at {}", unexcused.join(", ")) },
                r.unavailable,
            ),
        );

        // The leader.
        let changes = r.leaders.len().saturating_sub(1);
        say(
            r.double_claims.is_empty() && r.claim_samples > 0,
            format!(
                "at most one agent claimed the leader's term in each of {} samples ({changes} changes of leader){}",
                r.claim_samples,
                match r.double_claims.first() {
                    Some((at, who)) => format!(
                        "; {} samples with two, the first at {}s: {who:?}",
                        r.double_claims.len(),
                        at.saturating_sub(self.t0()) / 1000
                    ),
                    None => String::new(),
                }
            ),
        );

        // Purges.
        let spans = r.spans.clone();
        let signals = r.signals.clone();
        let ops = r.ops.clone();
        let log = r.log.clone();
        drop(r);
        let (purges, called_off) = self.purges();
        let tol = self.toleration;
        let mut bad = vec![];
        for (at, by, node) in &purges {
            // Still out when purged: back for less than kubelet's report
            // interval, or proven silent since it came back.
            let out = silent_spans(&spans, node, &signals).into_iter().any(|(from, to)| {
                from + tol.as_millis() as u64 <= at + SILENCE_SLACK.as_millis() as u64
                    && to.is_none_or(|to| {
                        *at <= to + REPORT_INTERVAL.as_millis() as u64 || silent_between(&signals, node, to, *at)
                    })
            });
            // Or silenced by what no outage span marks (heavy packet loss
            // can stop every report): the readings alone must prove it.
            let covered = out || proven_silent(&signals, node, *at, tol.saturating_sub(SILENCE_SLACK));
            if !covered {
                bad.push(format!("{node} at {}s by {by}", at.saturating_sub(self.t0()) / 1000));
            }
        }
        let list: Vec<String> =
            purges.iter().map(|(at, _, n)| format!("{n} at {}s", at.saturating_sub(self.t0()) / 1000)).collect();
        say(
            bad.is_empty(),
            format!(
                "{} purge(s), each of a node out (power or link, or proven silent between two such outages) or proven \
                 silent by the observer's readings of its signals ({} of them) for the toleration less a heartbeat, \
                 and still out{}{}{}",
                purges.len(),
                signals.len(),
                if list.is_empty() { String::new() } else { format!(" ({})", list.join(", ")) },
                if bad.is_empty() { String::new() } else { format!("; of a node that was not: {}", bad.join(", ")) },
                match called_off {
                    0 => String::new(),
                    n => format!(" ({n} more started and called off before touching the node: it was heard again)"),
                }
            ),
        );

        // Operations: not invariants (one run while faults hold etcd's
        // quorum fails, with its reason), but each is shown.
        for (what, result) in &ops {
            match result {
                Ok(d) => text_ops.push(format!("  {what}: done in {:.0}s", d.as_secs_f64())),
                Err(e) => text_ops.push(format!("  {what}: failed: {}", e.trim_end())),
            }
        }

        text.push_str(&format!("the operations ({}):\n{}\n", text_ops.len(), text_ops.join("\n")));
        let faults = log.len();
        let header =
            format!("soak: {} lines in the fault log ({} steps planned); the invariants:\n", faults, steps.len());
        Report { text: format!("{header}{text}"), violations }
    }
}

/// One look at etcd from the observer.
#[derive(Default)]
struct Probe {
    /// Members that answered a status call.
    up: BTreeSet<String>,
    /// Members that answered a linearizable read.
    serving: BTreeSet<String>,
    voters: Option<Vec<String>>,
}

/// What ends a fault.
type Undo = Box<dyn FnOnce(&Soak) + Send>;

struct Report {
    text: String,
    violations: usize,
}

/// As the tests' [`Cluster::with_install_env`], with each host's agent
/// under its own libfaketime clock file, and m2's etcd directory a small
/// filesystem of its own.
fn build_cluster(out: &Path, words: &[String]) -> Result<Cluster> {
    let net = Network::new();
    let m1 = net.host("m1");
    let env = |name: &str| host_env(out, name);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let m1_env = env("m1");
    m1.install_master_env(&words, &env_refs(&m1_env));
    let (_dm, master_script) = support::join_script(&m1, true, &[]);
    let (_dw, worker_script) = support::join_script(&m1, false, &[]);
    let more: Vec<Host> = (2..=3).map(|i| net.host(&format!("m{i}"))).collect();
    let workers: Vec<Host> = (1..=2).map(|i| net.host(&format!("w{i}"))).collect();
    for h in more.iter().filter(|h| h.name == SMALL_DISK) {
        mount_small_disk(h)?;
    }
    let failed: Vec<String> = std::thread::scope(|s| {
        let joins: Vec<_> = more
            .iter()
            .map(|h| (h, &master_script, support::MASTER))
            .chain(workers.iter().map(|h| (h, &worker_script, support::WORKER)))
            .map(|(h, script, components)| {
                let e = env(&h.name);
                (
                    h,
                    s.spawn(move || {
                        let mut e = env_refs(&e);
                        e.push(support::bin());
                        support::run_join(h, script, components, &e)
                    }),
                )
            })
            .collect();
        joins
            .into_iter()
            .filter_map(|(h, j)| {
                let out = j.join().unwrap();
                (!out.status.success()).then(|| format!("{}: {}", h.name, support::stderr(&out)))
            })
            .collect()
    });
    if !failed.is_empty() {
        bail!("joins failed:\n{}", failed.join("\n"));
    }
    let mut masters = vec![m1];
    masters.extend(more);
    Ok(Cluster { masters, workers, net })
}

/// The real times of one agent log's lines, from the times they carry
/// (the agent's clock, stepped by `offsets`). A step back makes a logged
/// time ambiguous (a line logged during a -254 s step reads as one logged
/// 254 s earlier without it); the file is in real order, so each line
/// takes the earliest reading, among those its offsets allow, that is not
/// before the line above (give or take libfaketime's 1 s cache).
fn real_times(logged: &[u64], offsets: &[&Offset]) -> Vec<u64> {
    const CACHE: u64 = 1500;
    let during = |o: &Offset, r: u64| r + CACHE >= o.from && o.to.is_none_or(|to| r < to + CACHE);
    let mut prev = 0u64;
    logged
        .iter()
        .map(|&l| {
            // As logged (no offset held), or less an offset that held then.
            let mut candidates: Vec<u64> = offsets
                .iter()
                .filter_map(|o| {
                    let r = u64::try_from(l as i64 - o.secs * 1000).ok()?;
                    during(o, r).then_some(r)
                })
                .chain([l])
                .collect();
            candidates.sort();
            // None fits (a line out of order): the latest reading.
            let latest = candidates[candidates.len() - 1];
            let at = candidates.iter().copied().find(|r| *r + CACHE >= prev).unwrap_or(latest);
            prev = prev.max(at);
            at
        })
        .collect()
}

/// What an agent's log line says of a purge: started on a node, or
/// called off, and whether it had done anything to the node by then.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PurgeEvent {
    Started(String),
    CalledOff { node: String, untouched: bool },
}

fn purge_event(line: &str) -> Option<PurgeEvent> {
    let field = |name: &str| -> Option<String> {
        let v = line.split(&format!(" {name}=")).nth(1)?;
        Some(
            if let Some(q) = v.strip_prefix('"') { q.split('"').next()? } else { v.split_whitespace().next()? }
                .to_owned(),
        )
    };
    if line.contains("purging a lost node") {
        return Some(PurgeEvent::Started(field("node")?));
    }
    if line.contains("its purge is called off") {
        return Some(PurgeEvent::CalledOff { node: field("node")?, untouched: field("done")? == "nothing" });
    }
    None
}

/// The purges that were carried out (or got as far as touching the node),
/// from the purge events in real-time order: a purge called off before
/// its first step is none (the leader found the node heard again when it
/// read it once more, as it must). One purge runs at a time, so a call-off
/// ends the last purge started on its node. Also returns how many were
/// called off untouched.
fn carried_out(events: Vec<(u64, String, PurgeEvent)>) -> (Vec<(u64, String, String)>, usize) {
    let mut purges: Vec<(u64, String, String)> = vec![];
    let mut called_off = 0;
    for (at, by, e) in events {
        match e {
            PurgeEvent::Started(node) => purges.push((at, by, node)),
            PurgeEvent::CalledOff { node, untouched: true } => {
                if let Some(i) = purges.iter().rposition(|(t, _, n)| *n == node && *t <= at) {
                    purges.remove(i);
                    called_off += 1;
                }
            }
            PurgeEvent::CalledOff { untouched: false, .. } => {}
        }
    }
    (purges, called_off)
}

/// Whether the observer proved `host` silent from `from` to `to`: the same
/// signals read at or before `from` and at or after `to`, and nothing
/// else read between.
fn silent_between(signals: &[(u64, String, Heard)], host: &str, from: u64, to: u64) -> bool {
    let read: Vec<(u64, Heard)> = signals.iter().filter(|(_, n, _)| n == host).map(|(t, _, h)| (*t, *h)).collect();
    let before = read.iter().rposition(|(t, _)| *t <= from);
    let after = read.iter().position(|(t, _)| *t >= to);
    match (before, after) {
        (Some(b), Some(a)) => read[b..=a].iter().all(|(_, h)| *h == read[b].1),
        _ => false,
    }
}

/// Whether the observer's readings prove `host` silent for `span` before
/// a purge at `at`, whatever silenced it: the same signals read at or
/// before `at - span` and at every reading since, the last of them within
/// kubelet's report interval of `at` (what the node said in that last
/// moment only the purge's own recheck can see).
fn proven_silent(signals: &[(u64, String, Heard)], host: &str, at: u64, span: Duration) -> bool {
    let last = signals.iter().filter(|(t, n, _)| n == host && *t <= at).map(|(t, _, _)| *t).max();
    last.is_some_and(|last| {
        last + REPORT_INTERVAL.as_millis() as u64 >= at
            && silent_between(signals, host, at.saturating_sub(span.as_millis() as u64), last)
    })
}

/// The spans in which `host` was out (power or link), joined where they
/// overlap, and across a gap between two when the observer proved it
/// silent there: the same signals read at or before the gap's start and
/// at or after its end, and nothing else read between. A link that comes
/// back for less time than the node takes to be heard again does not end
/// its silence; a node heard in the gap, or not read across it, starts
/// anew.
fn silent_spans(spans: &[Span], host: &str, signals: &[(u64, String, Heard)]) -> Vec<(u64, Option<u64>)> {
    let mut out: Vec<(u64, Option<u64>)> =
        spans.iter().filter(|s| s.host == host && s.out).map(|s| (s.from, s.to)).collect();
    out.sort();
    let silent_across = |from: u64, to: u64| silent_between(signals, host, from, to);
    let mut joined: Vec<(u64, Option<u64>)> = vec![];
    for (from, to) in out {
        if let Some(last) = joined.last_mut() {
            match last.1 {
                None => continue,
                Some(end) if from <= end || silent_across(end, from) => {
                    last.1 = to.map(|to| to.max(end));
                    continue;
                }
                Some(_) => {}
            }
        }
        joined.push((from, to));
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(host: &str, from: u64, to: Option<u64>) -> Span {
        Span { host: host.into(), kind: "link".into(), hits_etcd: true, out: true, from, to }
    }

    #[test]
    fn a_purge_called_off_before_touching_its_node_is_no_purge() {
        // The case of seed 11: m1's link back at 1632 s, a purge started at
        // 1642 s and called off at once (the leader heard it again),
        // m1's power lost at 1651 s and a purge carried out at 1711 s.
        let lines = [
            "2026-12-06T13:08:42.120000Z  WARN purging a lost node node=m1 lost_for=1m1s",
            "2026-12-06T13:08:42.310000Z  WARN a lost node came back: its purge is called off node=m1 \
             done=\"nothing\" reason=its kubelet renewed its Lease since the purge started",
            "2026-12-06T13:09:51.002000Z  WARN purging a lost node node=m1 lost_for=1m1s",
            "2026-12-06T13:20:00.000000Z  WARN purging a lost node node=w1 lost_for=1m",
            "2026-12-06T13:20:03.000000Z  WARN a lost node came back: its purge is called off node=w1 \
             done=\"the out-of-service taint, removed again\" reason=its hakube heartbeat moved (from 1 to 2)",
            "2026-12-06T13:20:04.000000Z  INFO purged a lost node node=w2 role=worker lost_for=1m by=m3",
        ];
        let events: Vec<(u64, String, PurgeEvent)> = lines
            .iter()
            .filter_map(|l| Some((parse_log_time(l.split_whitespace().next()?)?, "m3".to_owned(), purge_event(l)?)))
            .collect();
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(
            events[1].2,
            PurgeEvent::CalledOff { node: "m1".into(), untouched: true },
            "the call-off's fields are read"
        );
        let (purges, called_off) = carried_out(events.clone());
        let nodes: Vec<&str> = purges.iter().map(|(_, _, n)| n.as_str()).collect();
        // The second purge of m1 stands; w1's was called off after its taint,
        // so it touched the node and is judged like any purge.
        assert_eq!(nodes, ["m1", "w1"]);
        assert_eq!(purges[0].0, events[2].0);
        assert_eq!(called_off, 1);
        // A call-off ends the purge it follows, never a later one.
        let mut reordered = events;
        reordered.swap(0, 1);
        reordered[0].0 = reordered[1].0 - 1;
        let (purges, called_off) = carried_out(reordered);
        assert_eq!((purges.len(), called_off), (3, 0));
    }

    #[test]
    fn a_node_proven_silent_across_a_short_return_stays_out() {
        // The case of seed 7: link cut 1632..1647 s, power lost at 1656 s.
        let spans = [out("m3", 1632, Some(1647)), out("m3", 1656, Some(1753)), out("w1", 1640, Some(1700))];
        let heard = |t: u64, h: Heard| (t, "m3".to_string(), h);
        let quiet = [heard(1600, (90, Some(88))), heard(1645, (95, Some(95))), heard(1658, (95, Some(95)))];
        assert_eq!(silent_spans(&spans, "m3", &quiet), vec![(1632, Some(1753))]);
        // Heard in the gap: its silence starts again at the second span.
        let spoke = [heard(1645, (95, Some(95))), heard(1650, (100, Some(95))), heard(1658, (100, Some(95)))];
        assert_eq!(silent_spans(&spans, "m3", &spoke), vec![(1632, Some(1647)), (1656, Some(1753))]);
        // Not read after the gap (or before it): nothing proves silence.
        assert_eq!(silent_spans(&spans, "m3", &quiet[..2]), vec![(1632, Some(1647)), (1656, Some(1753))]);
        assert_eq!(silent_spans(&spans, "m3", &quiet[2..]), vec![(1632, Some(1647)), (1656, Some(1753))]);
        // Proven silent from its return to a moment after it.
        assert!(silent_between(&quiet, "m3", 1647, 1658));
        assert!(!silent_between(&spoke, "m3", 1647, 1658));
        assert!(!silent_between(&quiet, "m3", 1647, 1700), "nothing read that late");
        // Readings of another node prove nothing of this one.
        let other: Vec<_> = quiet.iter().map(|(t, _, h)| (*t, "w1".to_string(), *h)).collect();
        assert_eq!(silent_spans(&spans, "m3", &other), vec![(1632, Some(1647)), (1656, Some(1753))]);
    }

    #[test]
    fn a_node_the_readings_prove_silent_for_the_toleration_may_be_purged() {
        // The case of seed 5: m2 under 40% then 29% packet loss from 2614 s
        // to 2709 s, no outage; its heartbeat last moved at 2611 s, its
        // Lease at 2631 s; m3 purged it at 2704 s (toleration 60 s).
        let s = 1000;
        let heard = |t: u64, h: Heard| (t, "m2".to_string(), h);
        let mut readings = vec![heard(2607 * s, (343, Some(337))), heard(2611 * s, (348, Some(348)))];
        readings.push(heard(2623 * s, (348, Some(357))));
        readings.extend((0..19).map(|i| heard((2631 + 4 * i) * s, (348, Some(368)))));
        let tol = Duration::from_secs(60) - SILENCE_SLACK;
        assert!(proven_silent(&readings, "m2", 2704 * s, tol));
        // Not yet silent long enough a minute earlier; nor if its Lease had
        // moved within the window, however late.
        assert!(!proven_silent(&readings, "m2", 2680 * s, tol));
        let mut spoke = readings.clone();
        spoke[15].2 = (348, Some(369));
        assert!(!proven_silent(&spoke, "m2", 2704 * s, tol));
        // Unread in the last report interval before the purge: unproven.
        assert!(!proven_silent(&readings[..15], "m2", 2704 * s, tol));
        // Readings of another node prove nothing of this one.
        assert!(!proven_silent(&readings, "m1", 2704 * s, tol));
    }

    #[test]
    fn a_log_line_under_a_clock_stepped_back_reads_at_its_real_time() {
        // The case of seed 11: m1 stepped -254 s from 3308 s to 3364 s; a
        // purge it logged at 3074 s, before the step, read as 3328 s.
        let s = 1000;
        let back = Offset { host: "m1".into(), secs: -254, from: 3308 * s, to: Some(3364 * s) };
        let logged = [3070 * s, 3074 * s, 3300 * s, 3310 * s - 254 * s, 3350 * s - 254 * s, 3370 * s, 3380 * s];
        assert_eq!(
            real_times(&logged, &[&back]),
            vec![3070 * s, 3074 * s, 3300 * s, 3310 * s, 3350 * s, 3370 * s, 3380 * s]
        );
        // A step forward is never ambiguous the same way.
        let fwd = Offset { host: "m3".into(), secs: 191, from: 1607 * s, to: Some(1665 * s) };
        let logged = [1600 * s, 1642 * s + 191 * s, 1670 * s, 1700 * s];
        assert_eq!(real_times(&logged, &[&fwd]), vec![1600 * s, 1642 * s, 1670 * s, 1700 * s]);
        // No offsets: the times as logged.
        assert_eq!(real_times(&[5, 3, 9], &[]), vec![5, 3, 9]);
    }

    #[test]
    fn overlapping_spans_join_and_an_open_one_stays_open() {
        let spans = [out("m1", 10, Some(50)), out("m1", 20, Some(40)), out("m1", 45, None), out("m1", 90, Some(95))];
        assert_eq!(silent_spans(&spans, "m1", &[]), vec![(10, None)]);
        let mut not_out = out("m1", 0, Some(100));
        not_out.out = false;
        assert_eq!(silent_spans(&[not_out], "m1", &[]), vec![]);
    }

    #[test]
    fn log_times_read_as_the_epoch_counts() {
        assert_eq!(parse_log_time("1970-01-01T00:00:00.000000Z"), Some(0));
        assert_eq!(parse_log_time("2026-12-05T14:10:00.123456Z"), Some(1_796_479_800_123));
        assert_eq!(parse_log_time("2000-02-29T23:59:59Z"), Some(951_868_799_000));
        assert_eq!(parse_log_time("not a time"), None);
    }

    #[test]
    fn a_volume_counts_only_while_its_lines_run_on() {
        assert_eq!(contiguous("1\n2\n3\n"), Ok(3));
        assert_eq!(contiguous(""), Ok(0));
        assert!(contiguous("1\n3\n").is_err());
        assert!(contiguous("1\n2\n2\n").is_err());
    }
}
