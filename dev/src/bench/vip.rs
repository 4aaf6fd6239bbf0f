//! The virtual IP against keepalived (VRRP) floating another address over
//! the same masters, side by side in one run.
//!
//! A cluster of its own: 3 masters and a worker on one bridge, installed
//! with `vip=X.100` (hakube's address). On every master, Debian's
//! keepalived floats X.101 as k0s's control-plane load balancer configures
//! it: every node `state BACKUP`, `priority 200`, `advert_int 1`, multicast
//! VRRP, no check script (takeover after 3 adverts missed plus the skew,
//! about 3.2 s). A client on the worker connects to each address's port
//! 6443 every 100 ms, and asks it for `/readyz` (curl, a ServiceAccount's
//! token) every 100 ms: a connect shows that something listens, a request
//! that the API answers. Every master's addresses are sampled every 100 ms.
//!
//! Each trial hits, for each system in turn, whoever holds its address:
//!   stop      the daemon stops gracefully (hakube's agent, keepalived);
//!   apiserver the holder's kube-apiserver is killed (its agent restarts it);
//!   power     the host loses power: every process killed and its link down,
//!             back up (addresses gone, as after a reboot) once measured;
//!   cut off   the host's link goes down, back up once measured.
//! Reported per fault and system, over the trials: when the address was on
//! another master ("moved"; "stayed" when it did not), the client's longest
//! span without a connect and without an answered request, and the samples
//! that found the address on two masters at once. keepalived's files and
//! logs are kept (and named) when a fault left an address unreachable. Goal: no worse than keepalived on a crash; better when
//! the API server dies while its host lives, which keepalived's default
//! check does not see.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{median, spread};
use crate::proc::msg;
use crate::support::vip::{agent, boot, Connector, Sampler, Watch};
use crate::support::{self, sh, wait_for, Cluster, Host};

const KEEPALIVED: &str = "/usr/sbin/keepalived";
/// How long a fault is given to move an address, or the client to connect
/// again, before the trial is recorded as "did not move".
const LIMIT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Trials of each fault on each system.
    #[arg(long, env = "BENCH_TRIALS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    trials: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Hakube,
    Keepalived,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Hakube => "hakube",
            System::Keepalived => "keepalived",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Stop,
    Apiserver,
    Power,
    CutOff,
}

const FAULTS: [Fault; 4] = [Fault::Stop, Fault::Apiserver, Fault::Power, Fault::CutOff];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Stop => "the daemon stops gracefully",
            Fault::Apiserver => "the holder's kube-apiserver is killed",
            Fault::Power => "the holder loses power",
            Fault::CutOff => "the holder is cut off",
        }
    }
}

/// One fault's figures: seconds until the address was elsewhere (None when
/// it stayed), the client's longest gap, the samples with two holders.
struct Trial {
    moved: Option<f64>,
    gap: f64,
    request_gap: f64,
    doubles: usize,
}

pub fn run(args: Args) -> Result<()> {
    if !Path::new(KEEPALIVED).exists() {
        bail!("{KEEPALIVED} is missing: install Debian's keepalived (scripts/bench-vip.sh does)");
    }
    let (bin, bundle) = super::binary_and_bundle()?;
    std::env::set_var("HAKUBE_BIN", &bin);
    std::env::set_var("HAKUBE_TEST_BUNDLE", &bundle);
    msg!("building the cluster: 3 masters and a worker, vip=X.100 (a few minutes)");
    let c = Cluster::with_install_for(3, 1, |m1| vec!["ha".into(), format!("vip={}", address(m1, 100))], &[]);
    let ours = address(c.m1(), 100);
    let theirs = address(c.m1(), 101);
    let work = super::WorkDir::new("bench-vip")?;
    let keepalived = Keepalived { theirs, dir: work.path().to_owned() };
    for m in &c.masters {
        keepalived.start(m)?;
    }
    let masters: Vec<&Host> = c.masters.iter().collect();
    let watches = [Watch::start(&masters, ours), Watch::start(&masters, theirs)];
    let w1 = c.host("w1");
    let clients = [Connector::start(w1, ours), Connector::start(w1, theirs)];
    let token = support::stdout(&c.m1().kubectl(&["create", "token", "default", "-n", "default", "--duration", "2h"]));
    if token.trim().is_empty() {
        bail!("no ServiceAccount token for the requests (kubectl create token default)");
    }
    let requests = [requests(w1, ours, token.trim()), requests(w1, theirs, token.trim())];
    let mut unreachable = false;
    let mut results: Vec<(Fault, System, Trial)> = vec![];
    for trial in 1..=args.trials {
        for fault in FAULTS {
            for (i, system) in [System::Hakube, System::Keepalived].into_iter().enumerate() {
                crate::proc::check_stop()?;
                steady(&c, &keepalived, &watches, &clients)?;
                let t = hit(&c, &keepalived, &watches[i], (&clients[i], &requests[i]), system, fault)?;
                msg!(
                    "trial {trial}, {} on {}: moved {}, longest gap {:.2}s (connect), {:.2}s (request), {} samples with two holders",
                    fault.name(),
                    system.name(),
                    t.moved.map_or("-".into(), |m| format!("in {m:.2}s")),
                    t.gap,
                    t.request_gap,
                    t.doubles
                );
                if t.gap >= LIMIT.as_secs_f64() {
                    unreachable = true;
                    msg!("{} left its address unreachable for {:.0}s or more", system.name(), LIMIT.as_secs_f64());
                }
                results.push((fault, system, t));
            }
        }
    }
    drop(requests);
    drop(clients);
    drop(watches);
    for m in &c.masters {
        keepalived.stop(m);
    }
    print_table(args.trials, &results);
    if unreachable {
        work.keep("keepalived's configuration and logs");
    }
    Ok(())
}

/// The address `last` of the cluster's /24.
fn address(h: &Host, last: u8) -> Ipv4Addr {
    let o: Vec<u8> = h.addr.split('.').map(|o| o.parse().unwrap()).collect();
    Ipv4Addr::new(o[0], o[1], o[2], last)
}

/// keepalived on a master, floating `theirs`, its files in the host's root.
struct Keepalived {
    theirs: Ipv4Addr,
    dir: PathBuf,
}

impl Keepalived {
    fn dir(&self, h: &Host) -> PathBuf {
        self.dir.join(format!("keepalived-{}", h.name))
    }

    /// The running keepalived's pid, when it and its VRRP child are alive.
    fn pid(&self, h: &Host) -> Option<u32> {
        let read = |f: &str| -> Option<u32> { std::fs::read_to_string(self.dir(h).join(f)).ok()?.trim().parse().ok() };
        let (main, vrrp) = (read("keepalived.pid")?, read("vrrp.pid")?);
        (alive(main) && alive(vrrp)).then_some(main)
    }

    /// k0s's control-plane template (cplb_templates.go), the address ours.
    fn config(&self, h: &Host) -> String {
        format!(
            "global_defs {{\n    router_id {name}\n}}\n\
             vrrp_instance bench_vip {{\n    state BACKUP\n    interface eth0\n    virtual_router_id 51\n    \
             priority 200\n    advert_int 1\n    authentication {{\n        auth_type PASS\n        \
             auth_pass benchvip\n    }}\n    virtual_ipaddress {{\n        {vip}/24\n    }}\n}}\n",
            name = h.name,
            vip = self.theirs
        )
    }

    fn start(&self, h: &Host) -> Result<()> {
        let dir = self.dir(h);
        std::fs::create_dir_all(&dir)?;
        // A host that lost power starts with no pid file, as /run is after
        // a reboot (a dead daemon's pid may still name a zombie here).
        for f in ["keepalived.pid", "vrrp.pid"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, self.config(h))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("keepalived.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "--vrrp"]);
        cmd.arg("--use-file").arg(&conf);
        cmd.arg("--pid").arg(dir.join("keepalived.pid")).arg("--vrrp_pid").arg(dir.join("vrrp.pid"));
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let mut child = cmd.spawn().with_context(|| format!("cannot start keepalived on {}", h.name))?;
        // Reaped when it exits, as its init would.
        drop(std::thread::spawn(move || child.wait()));
        let started = Instant::now();
        while self.pid(h).is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!(
                    "keepalived on {} wrote no pid file in 10 s; see {}",
                    h.name,
                    dir.join("keepalived.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops keepalived gracefully (it gives the address up), bounded.
    fn stop(&self, h: &Host) {
        if let Some(pid) = self.pid(h) {
            sh("kill", &["-TERM", &pid.to_string()]);
            let started = Instant::now();
            while alive(pid) && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Whether `pid` runs: neither gone nor a zombie (keepalived is never
/// waited for, and this machine's PID 1 reaps no orphan).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "PID (COMM) STATE ...".
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

/// Whether a master's agent is live and its etcd and kube-apiserver healthy.
fn healthy(h: &Host) -> bool {
    let s = h.state();
    let live = s["agent_pid"].as_u64().is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
    live && ["etcd", "kube-apiserver"].iter().all(|c| s["components"][c]["healthy"] == true)
}

/// Waits (bounded) until every master is healthy with keepalived running,
/// each address has one holder, and the client reached both in the last
/// second; then three seconds more.
fn steady(c: &Cluster, k: &Keepalived, watches: &[Watch; 2], clients: &[Connector; 2]) -> Result<()> {
    let limit = Duration::from_secs(300);
    let started = Instant::now();
    loop {
        let now = Instant::now();
        let ok = c.masters.iter().all(|m| healthy(m) && k.pid(m).is_some())
            && watches.iter().all(|w| w.holder().is_some())
            && clients.iter().all(|cl| cl.succeeded_since(now - Duration::from_secs(1)));
        if ok {
            break;
        }
        if started.elapsed() > limit {
            let states: Vec<String> = c
                .masters
                .iter()
                .map(|m| format!("{}: healthy {}, keepalived {:?}", m.name, healthy(m), k.pid(m)))
                .collect();
            bail!(
                "the cluster did not settle in {limit:?} ({}; holders {:?} and {:?})",
                states.join("; "),
                watches[0].holder(),
                watches[1].holder()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    Ok(())
}

/// One fault on the holder of `system`'s address, measured, then healed.
fn hit(
    c: &Cluster,
    k: &Keepalived,
    watch: &Watch,
    (client, requests): (&Connector, &Sampler),
    system: System,
    fault: Fault,
) -> Result<Trial> {
    let holder = watch.holder().context("no holder before the fault")?;
    let h = c.host(&holder);
    let t = Instant::now();
    match (fault, system) {
        (Fault::Stop, System::Hakube) => {
            sh("kill", &["-TERM", &agent(h).to_string()]);
        }
        (Fault::Stop, System::Keepalived) => k.stop(h),
        (Fault::Apiserver, _) => {
            let pid = h.state()["components"]["kube-apiserver"]["pid"].to_string();
            sh("kill", &["-KILL", &pid]);
        }
        (Fault::Power, _) => {
            c.net.set_link(h, false);
            h.kill_all();
            h.kill_pods();
        }
        (Fault::CutOff, _) => c.net.set_link(h, false),
    }
    let moved = watch.moved_within(&holder, t, LIMIT).map(|(_, took)| took.as_secs_f64());
    // The client's gap ends with its first connect after the move, or
    // after the holder served again.
    let back_from = t + moved.map_or(Duration::ZERO, Duration::from_secs_f64);
    let deadline = Instant::now() + LIMIT;
    while !client.succeeded_since(back_from.max(t + Duration::from_millis(500))) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let gap = client.longest_gap(t).as_secs_f64();
    // The API answering again can take longer than a connect (an API
    // server that restarts listens before it is ready).
    let deadline = Instant::now() + LIMIT;
    while !requests.succeeded_since(back_from.max(t + Duration::from_millis(500))) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let request_gap = requests.longest_gap(t).as_secs_f64();
    let doubles = watch.doubles_since(t);
    // Healing, before the next fault.
    match fault {
        Fault::Stop => {
            if system == System::Hakube {
                let pid = agent(h);
                wait_for("the agent to stop", Duration::from_secs(120), || {
                    !Path::new(&format!("/proc/{pid}")).exists()
                });
                boot(h);
            } else {
                k.start(h)?;
            }
        }
        Fault::Apiserver => {}
        Fault::Power => {
            // A reboot: no address survives it.
            for a in [address(h, 100), address(h, 101)] {
                let _ = Command::new("ip")
                    .args(["-n", &h.ns, "address", "del", &format!("{a}/32"), "dev", "eth0"])
                    .output();
                let _ = Command::new("ip")
                    .args(["-n", &h.ns, "address", "del", &format!("{a}/24"), "dev", "eth0"])
                    .output();
            }
            c.net.set_link(h, true);
            boot(h);
            k.start(h)?;
        }
        Fault::CutOff => c.net.set_link(h, true),
    }
    Ok(Trial { moved, gap, request_gap, doubles })
}

fn print_table(trials: u32, results: &[(Fault, System, Trial)]) {
    println!();
    println!("virtual IP failover, {trials} trials each; seconds: median (min-max)");
    println!(
        "{:<38} {:<10} {:>22} {:>22} {:>22} {:>9}",
        "fault", "system", "moved to another", "longest connect gap", "longest request gap", "2 holders"
    );
    for fault in FAULTS {
        let mut gaps = [(0.0f64, 0.0f64); 2];
        for (i, system) in [System::Hakube, System::Keepalived].into_iter().enumerate() {
            let rows: Vec<&Trial> =
                results.iter().filter(|(f, s, _)| *f == fault && *s == system).map(|(_, _, t)| t).collect();
            let moved: Vec<f64> = rows.iter().filter_map(|t| t.moved).collect();
            let stayed = rows.len() - moved.len();
            let moved_text = match (moved.is_empty(), stayed) {
                (true, _) => "stayed".to_string(),
                (false, 0) => spread(&moved),
                (false, n) => format!("{} ({n} stayed)", spread(&moved)),
            };
            let gap: Vec<f64> = rows.iter().map(|t| t.gap).collect();
            let request_gap: Vec<f64> = rows.iter().map(|t| t.request_gap).collect();
            gaps[i] = (median(&gap).unwrap_or(f64::NAN), median(&request_gap).unwrap_or(f64::NAN));
            let doubles: usize = rows.iter().map(|t| t.doubles).sum();
            let label = if i == 0 { fault.name() } else { "" };
            println!(
                "{label:<38} {:<10} {moved_text:>22} {:>22} {:>22} {doubles:>9}",
                system.name(),
                spread(&gap),
                spread(&request_gap)
            );
        }
        let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}x", a / b) } else { "-".into() };
        println!(
            "{:<38} {:<10} {:>22} {:>22} {:>22}",
            "",
            "ratio",
            "",
            ratio(gaps[0].0, gaps[1].0),
            ratio(gaps[0].1, gaps[1].1)
        );
    }
    println!("goal: no worse than keepalived when the holder loses power; better when its kube-apiserver dies");
}

/// `GET /readyz` on ADDRESS:6443 from a host's namespace every 100 ms
/// (curl, 500 ms timeout, any certificate: keepalived's address is in
/// none): success is a 200.
fn requests(client: &Host, address: Ipv4Addr, token: &str) -> Sampler {
    let auth = format!("Authorization: Bearer {token}");
    let url = format!("https://{address}:6443/readyz");
    Sampler::run(client, move || {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "0.5", "-H", &auth, &url])
            .stdin(Stdio::null())
            .output();
        out.is_ok_and(|o| o.stdout == b"200")
    })
}
