//! A throwaway multi-host hakube sandbox on one machine, built from network
//! namespaces.
//!
//! A private "switch" namespace (hk-sw) holds the bridge br0; each host gets
//! its own namespace (hk-m1, hk-m2, …, hk-w1, …) whose eth0 is one end of a
//! veth pair, the other end a port of br0 in hk-sw. Masters are 10.77.0.11,
//! .12, …; workers 10.77.0.21, .22, …. Nothing is created in the machine's own
//! network namespace. Each installed host keeps its whole filesystem state
//! under `<state dir>/<host>` (hakube --root).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::proc::{self, bounded, bounded_group, in_ns, msg, warning};

const SWITCH: &str = "hk-sw";
/// Where every sandbox agent serves /metrics (on its own address, so that
/// the sandbox's Prometheus on m1 scrapes them all).
const METRICS_PORT: u16 = 9469;
/// The sandbox's Prometheus, on m1's address.
const PROMETHEUS_PORT: u16 = 9090;
const NET: &str = "10.77.0";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
const READY_TIMEOUT: Duration = Duration::from_secs(300);
const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
const RESET_TIMEOUT: Duration = Duration::from_secs(120);
const LOCK_WAIT: Duration = Duration::from_secs(60);
pub const MASTER_COMPONENTS: &str =
    "etcd,containerd,kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy";
pub const WORKER_COMPONENTS: &str = "containerd,kubelet,kube-proxy";

#[derive(clap::Subcommand)]
pub enum Action {
    /// Create the namespaces, install m1, join every other host at once,
    /// wait for every Node to be Ready.
    Up {
        /// Master hosts m1..mN, 10.77.0.11..
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
        masters: u8,
        /// Worker hosts w1..wM, 10.77.0.21..
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=9))]
        workers: u8,
        /// The hakube binary to install (default: HAKUBE_BIN, else a release build).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// The Kubernetes bundle (default: what scripts/kube-bundle.sh builds or finds).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Extra words for m1's install, which set the cluster's settings.
        #[arg(long, env = "HAKUBE_SANDBOX_INSTALL", default_value = "")]
        install_words: String,
    },
    /// `hakube status` on every installed host (extra flags go to it).
    Status {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Reset every host, stop what still runs in the namespaces, delete them
    /// and the state directory.
    Down,
    /// The cluster page from this machine: prints a sign-in link on
    /// 127.0.0.1:PORT and forwards that port to m1's page until interrupted
    /// (from another machine: ssh -L PORT:127.0.0.1:PORT to this one).
    Console {
        #[arg(long, default_value_t = 9443)]
        port: u16,
    },
}

pub fn run(action: Action) -> Result<()> {
    let sandbox = Sandbox::from_env();
    match action {
        Action::Up { masters, workers, bin, bundle, install_words } => {
            let words: Vec<String> = install_words.split_whitespace().map(str::to_owned).collect();
            let bin = match bin {
                Some(bin) => bin,
                None => proc::script_output("hakube_binary \"$repo\"").context("no hakube binary to run")?,
            };
            let bundle = match bundle {
                Some(bundle) => bundle,
                None => proc::script_output("bash \"$script_dir/kube-bundle.sh\"")
                    .context("could not build or find the Kubernetes bundle")?,
            };
            let result = sandbox.up(masters, workers, &bin, &bundle, &words);
            if result.is_err() && sandbox.marker().exists() {
                warning!(
                    "up did not finish; what it made is left for inspection. Remove it with: scripts/sandbox.sh down"
                );
            }
            result
        }
        Action::Status { args } => sandbox.status(&args),
        Action::Down => sandbox.down(),
        Action::Console { port } => sandbox.console(port),
    }
}

/// The sandbox's state directory and what it records there.
pub struct Sandbox {
    pub dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostEntry {
    pub name: String,
    pub ip: String,
}

pub fn ns_of(name: &str) -> String {
    format!("hk-{name}")
}

/// A name the sandbox gives its hosts: m1..m9, w1..w9.
fn is_host_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('m' | 'w')) && chars.as_str().parse::<u8>().is_ok_and(|n| n >= 1)
}

/// Whether `ns` is a namespace the sandbox makes.
fn is_sandbox_ns(ns: &str) -> bool {
    ns == SWITCH || ns.strip_prefix("hk-").is_some_and(is_host_name)
}

/// The hosts of a hosts file: one "NAME IP" line each, anything else skipped.
fn parse_hosts(text: &str) -> Vec<HostEntry> {
    let mut seen = BTreeSet::new();
    text.lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [name, ip] if is_host_name(name) && seen.insert(name.to_owned()) => {
                Some(HostEntry { name: name.into(), ip: ip.into() })
            }
            _ => None,
        })
        .collect()
}

impl Sandbox {
    /// `HAKUBE_SANDBOX_DIR`, else `<repo>/.sandbox`.
    pub fn from_env() -> Sandbox {
        let dir =
            std::env::var_os("HAKUBE_SANDBOX_DIR").map(PathBuf::from).unwrap_or_else(|| proc::repo().join(".sandbox"));
        Sandbox { dir: std::path::absolute(&dir).unwrap_or(dir) }
    }

    fn marker(&self) -> PathBuf {
        self.dir.join(".hakube-sandbox")
    }

    pub fn root(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The hosts `up` recorded.
    pub fn hosts(&self) -> Vec<HostEntry> {
        parse_hosts(&fs::read_to_string(self.dir.join("hosts")).unwrap_or_default())
    }

    fn record(&self, host: &HostEntry) -> Result<()> {
        if self.hosts().contains(host) {
            return Ok(());
        }
        let mut f = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("hosts"))?;
        writeln!(f, "{} {}", host.name, host.ip)?;
        Ok(())
    }

    /// A host "has a root" once hakube was installed there.
    pub fn has_root(&self, name: &str) -> bool {
        self.root(name).join("var/lib/hakube").is_dir()
    }

    fn agent_alive(&self, name: &str) -> bool {
        let pid = fs::read_to_string(self.root(name).join("var/lib/hakube/agent.pid")).unwrap_or_default();
        let Ok(pid) = pid.trim().parse::<u32>() else { return false };
        fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("hakube"))
    }

    /// The file naming the binary (or bundle) `up` used.
    fn recorded(&self, what: &str) -> Option<PathBuf> {
        let path = PathBuf::from(fs::read_to_string(self.dir.join(what)).ok()?.trim());
        path.exists().then_some(path)
    }

    /// The binary for status and down: the one `up` used if it is still there.
    fn binary(&self) -> Option<PathBuf> {
        let candidates = [
            self.recorded("bin"),
            std::env::var_os("HAKUBE_BIN").map(PathBuf::from),
            Some(proc::repo().join("target/release/hakube")),
        ];
        candidates.into_iter().flatten().find(|p| p.is_file())
    }

    /// The bundle's kubectl (the version the cluster runs), else the machine's.
    fn kubectl_bin(&self) -> PathBuf {
        self.recorded("bundle").map(|b| b.join("kubectl")).filter(|k| k.is_file()).unwrap_or_else(|| "kubectl".into())
    }

    /// kubectl on `host`'s network with m1's admin kubeconfig.
    pub fn kubectl(&self, host: &str, args: &[&str]) -> Command {
        let mut cmd = in_ns(&ns_of(host), self.kubectl_bin());
        cmd.arg("--kubeconfig").arg(self.root("m1").join("var/lib/hakube/kubeconfigs/admin.conf"));
        cmd.arg("--request-timeout=10s").args(args);
        cmd
    }

    /// `hakube --root ROOT ARGS…` in `name`'s namespace.
    fn hakube(&self, bin: &Path, name: &str, args: &[&str]) -> Command {
        let mut cmd = in_ns(&ns_of(name), bin);
        cmd.arg("--root").arg(self.root(name)).args(args);
        cmd
    }

    /// Prints a sign-in link to m1's cluster page through 127.0.0.1:`port`
    /// and forwards that port into m1's network namespace (the page checks
    /// a request's origin against its Host, so it works through a forwarded
    /// port) until interrupted.
    fn console(&self, port: u16) -> Result<()> {
        use std::net::{TcpListener, TcpStream};
        let bin = self.binary().context("no hakube binary: is the sandbox up (scripts/sandbox.sh up)?")?;
        if !self.agent_alive("m1") {
            bail!("m1's agent is not running: scripts/sandbox.sh status shows the hosts, scripts/sandbox.sh up makes them");
        }
        let listener = TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("cannot listen on 127.0.0.1:{port}: choose another port with --port"))?;
        let out = bounded(STATUS_TIMEOUT, self.hakube(&bin, "m1", &["console"])).output()?;
        if !out.status.success() {
            bail!("hakube console on m1 failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let target = format!("{NET}.11:{}", 9443);
        let link = text
            .split_whitespace()
            .find(|w| w.contains("/console/signin?code="))
            .context("hakube console printed no link")?
            .replace(&format!("https://{target}/"), &format!("https://127.0.0.1:{port}/"));
        let ca = self.root("m1").join("var/lib/hakube/pki/ca.crt");
        println!(
            "Open this link within 5 minutes; it signs in once:\n\n  {link}\n\n\
             The page's certificate is issued by the cluster's CA ({}), which no browser knows, and names \
             m1's address: accept the warning. From another machine: ssh -L {port}:127.0.0.1:{port} to this \
             one first. Forwarding 127.0.0.1:{port} to m1's {target}; Ctrl-C stops.",
            ca.display()
        );
        // The connecting thread lives in m1's network namespace; a socket
        // keeps the namespace it was made in, so the copies run anywhere.
        let netns = File::open(format!("/run/netns/{}", ns_of("m1"))).context("m1's network namespace")?;
        let (tx, rx) = std::sync::mpsc::channel::<TcpStream>();
        std::thread::spawn(move || {
            if let Err(e) = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET) {
                warning!("cannot enter m1's network namespace: {e}");
                return;
            }
            for client in rx {
                match TcpStream::connect(&target) {
                    Ok(server) => splice(client, server),
                    Err(e) => warning!("cannot reach m1's page at {target}: {e}"),
                }
            }
        });
        for client in listener.incoming() {
            match client {
                Ok(c) => tx.send(c).context("the forwarder stopped")?,
                Err(e) => warning!("accept on 127.0.0.1:{port}: {e}"),
            }
        }
        Ok(())
    }

    /// Serialises up and down: namespace names are machine-wide. The lock is
    /// held while the returned value lives (and never inherited: Rust opens
    /// files close-on-exec).
    fn lock(&self) -> Result<Flock<File>> {
        let dir = if Path::new("/run/lock").is_dir() { "/run/lock" } else { "/tmp" };
        let path = format!("{dir}/hakube-sandbox.lock");
        let mut file = File::create(&path).with_context(|| format!("cannot open {path}"))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((f, _)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(_) => bail!("another sandbox.sh up/down has held {path} for {} s", LOCK_WAIT.as_secs()),
            }
        }
    }

    /// The host's root, with its own resolv.conf: pods with dnsPolicy Default
    /// (CoreDNS) get it, and it names the host itself, where nothing answers
    /// on port 53, so a name outside the cluster fails at once and no query
    /// leaves the sandbox's network.
    fn make_root(&self, host: &HostEntry) -> Result<()> {
        let etc = self.root(&host.name).join("etc");
        fs::create_dir_all(&etc)?;
        fs::write(etc.join("resolv.conf"), format!("nameserver {}\n", host.ip))?;
        Ok(())
    }

    fn up(&self, masters: u8, workers: u8, bin: &Path, bundle: &Path, words: &[String]) -> Result<()> {
        let _lock = self.lock()?;
        let repo = proc::repo();
        if self.dir == Path::new("/") || self.dir == repo {
            bail!("HAKUBE_SANDBOX_DIR must be a directory of its own, not {}", self.dir.display());
        }
        let foreign = fs::read_dir(&self.dir).map(|mut d| d.next().is_some()).unwrap_or(false);
        if foreign && !self.marker().exists() {
            bail!(
                "{} exists, is not empty and was not made by sandbox.sh; set HAKUBE_SANDBOX_DIR elsewhere",
                self.dir.display()
            );
        }
        fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        File::create(self.marker())?;
        fs::write(self.dir.join("bin"), format!("{}\n", bin.display()))?;
        fs::write(self.dir.join("bundle"), format!("{}\n", bundle.display()))?;

        proc::ns(proc::netns::switch(SWITCH)).context("cannot set up the switch namespace")?;
        let wanted = (1..=masters)
            .map(|i| HostEntry { name: format!("m{i}"), ip: format!("{NET}.{}", 10 + i) })
            .chain((1..=workers).map(|i| HostEntry { name: format!("w{i}"), ip: format!("{NET}.{}", 20 + i) }));
        for host in wanted {
            // The switch-side end is p-NAME (interface names are at most 15 bytes).
            let port = format!("p-{}", host.name);
            proc::ns(proc::netns::host(&ns_of(&host.name), SWITCH, &port, &format!("{}/24", host.ip)))
                .with_context(|| format!("cannot set up host {}", host.name))?;
            self.record(&host)?;
        }

        let m1 = &self.hosts()[0];
        if self.agent_alive(&m1.name) {
            msg!("the sandbox is already up (the agent of m1 runs); its status:");
        } else {
            if self.has_root(&m1.name) {
                msg!("m1 has a root but no running agent; installing again");
            }
            self.make_root(m1)?;
            msg!(
                "installing hakube on m1 (etcd, containerd, the control plane and kubelet; at most {} s)",
                INSTALL_TIMEOUT.as_secs()
            );
            let mut args = vec!["install", "ha"];
            args.extend(words.iter().map(String::as_str));
            let bundle = bundle.display().to_string();
            let metrics = format!("metrics-address={}:{METRICS_PORT}", m1.ip);
            args.push(&metrics);
            args.extend(["--advertise-address", &m1.ip, "--node-name", "m1", "--components", MASTER_COMPONENTS]);
            args.extend(["--bundle", &bundle, "--no-systemd"]);
            proc::run(bounded(INSTALL_TIMEOUT, self.hakube(bin, "m1", &args)), "hakube install on m1")
                .with_context(|| format!("logs: {}", self.root("m1").join("var/lib/hakube/logs").display()))?;
        }
        self.join_hosts(bin, Path::new(&bundle))?;
        self.wait_nodes_ready()?;
        self.start_prometheus(bin);

        let mut healthy = true;
        for host in self.hosts().iter().filter(|h| self.has_root(&h.name)) {
            println!("== {}", host.name);
            healthy &= self.host_status(bin, &host.name, &[]).is_ok_and(|s| s.success());
        }
        print!("{}", self.summary(bin, bundle));
        if !healthy {
            bail!("a host is not healthy (see hakube status above)");
        }
        Ok(())
    }

    /// Joins every host but m1, all at the same moment, with the scripts m1
    /// prints: the way a user adds servers, and the case that breaks etcd
    /// when masters join unserialized.
    fn join_hosts(&self, bin: &Path, bundle: &Path) -> Result<()> {
        let todo: Vec<HostEntry> =
            self.hosts().into_iter().filter(|h| h.name != "m1" && !self.agent_alive(&h.name)).collect();
        if todo.is_empty() {
            return Ok(());
        }
        for (role, flags) in [("master", &["--master"][..]), ("worker", &[][..])] {
            let mut args = vec!["node-join-script"];
            args.extend_from_slice(flags);
            let script = proc::output(self.hakube(bin, "m1", &args), &format!("node-join-script {flags:?} on m1"))?;
            let path = self.dir.join(format!("join-{role}.sh"));
            write_private(&path, &script)?;
        }
        let names: Vec<&str> = todo.iter().map(|h| h.name.as_str()).collect();
        msg!("joining {} host(s) at once: {}", todo.len(), names.join(" "));
        let mut children = vec![];
        for host in &todo {
            self.make_root(host)?;
            let (script, components) = match host.name.starts_with('m') {
                true => ("join-master.sh", MASTER_COMPONENTS),
                false => ("join-worker.sh", WORKER_COMPONENTS),
            };
            let log_path = self.dir.join(format!("join-{}.log", host.name));
            let log = File::create(&log_path)?;
            let mut cmd = in_ns(&ns_of(&host.name), "bash");
            cmd.arg(self.dir.join(script)).arg("--root").arg(self.root(&host.name));
            cmd.args(["--advertise-address", &host.ip, "--node-name", &host.name, "--components", components]);
            cmd.arg("--bundle").arg(bundle).arg("--no-systemd").env("HAKUBE_BIN", bin);
            cmd.arg("--metrics-address").arg(format!("{}:{METRICS_PORT}", host.ip));
            // In a process group of its own: a timeout stops the whole join.
            let mut cmd = bounded_group(INSTALL_TIMEOUT, cmd);
            let child = cmd.stdout(log.try_clone()?).stderr(log).spawn().context("cannot run a join script")?;
            children.push((host.name.clone(), log_path, child));
        }
        let mut failed = vec![];
        for (name, log, mut child) in children {
            if child.wait().is_ok_and(|s| s.success()) {
                msg!("{name} joined");
            } else {
                warning!("{name} failed to join; its output: {}", log.display());
                let text = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
                failed.push(name);
            }
        }
        if !failed.is_empty() {
            bail!("some hosts did not join: {}", failed.join(" "));
        }
        Ok(())
    }

    /// A real Prometheus (Debian's package) in m1's namespace, scraping every
    /// agent with hakube's alert rules loaded; left running until `down`
    /// (which stops everything in the namespaces). Skipped, and said, when
    /// the package is not installed.
    fn start_prometheus(&self, bin: &Path) {
        let pid_file = self.dir.join("prometheus.pid");
        let running = fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok());
        if running.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
            return;
        }
        if !Command::new("sh")
            .args(["-c", "command -v prometheus"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            warning!("no prometheus binary (Debian's prometheus package): the sandbox runs without one");
            return;
        }
        let dir = self.dir.join("prometheus");
        let started = (|| -> Result<u32> {
            fs::create_dir_all(&dir)?;
            let rules = proc::output(
                {
                    let mut c = Command::new(bin);
                    c.args(["monitoring", "rules"]);
                    c
                },
                "hakube monitoring rules",
            )?;
            fs::write(dir.join("hakube.rules.yaml"), rules)?;
            let targets: Vec<String> = self.hosts().iter().map(|h| format!("'{}:{METRICS_PORT}'", h.ip)).collect();
            fs::write(
                dir.join("prometheus.yml"),
                format!(
                    "global: {{scrape_interval: 10s, evaluation_interval: 10s}}\n\
                     rule_files: [{}]\n\
                     scrape_configs:\n  - job_name: hakube\n    static_configs: [{{targets: [{}]}}]\n",
                    dir.join("hakube.rules.yaml").display(),
                    targets.join(", ")
                ),
            )?;
            let log = File::create(dir.join("prometheus.log"))?;
            let mut cmd = in_ns(&ns_of("m1"), "prometheus");
            cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={NET}.11:{PROMETHEUS_PORT}"))
                .stdout(log.try_clone()?)
                .stderr(log);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd.spawn().context("cannot start prometheus")?;
            Ok(child.id())
        })();
        match started {
            Ok(pid) => {
                let _ = fs::write(&pid_file, format!("{pid}\n"));
                msg!(
                    "Prometheus scrapes every agent: http://{NET}.11:{PROMETHEUS_PORT} in hk-m1 (log {})",
                    dir.join("prometheus.log").display()
                );
            }
            Err(e) => warning!("the sandbox runs without Prometheus: {e:#}"),
        }
    }

    /// Waits (bounded) until every installed host's Node is Ready.
    fn wait_nodes_ready(&self) -> Result<()> {
        let want: BTreeSet<String> = self.hosts().into_iter().map(|h| h.name).filter(|h| self.has_root(h)).collect();
        let list: Vec<&str> = want.iter().map(String::as_str).collect();
        msg!("waiting for the Nodes to be Ready: {} (at most {} s)", list.join(" "), READY_TIMEOUT.as_secs());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = self.ready_nodes();
            if ready == want {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.kubectl("m1", &["get", "nodes"]).status();
                let ready: Vec<&str> = ready.iter().map(String::as_str).collect();
                bail!(
                    "not every Node became Ready within {} s (Ready: {}); see the hosts' logs under {}/*/var/lib/hakube/logs/",
                    READY_TIMEOUT.as_secs(),
                    if ready.is_empty() { "none".into() } else { ready.join(" ") },
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        proc::run(self.kubectl("m1", &["get", "nodes", "-o", "wide"]), "kubectl get nodes")
    }

    /// The names of the Nodes whose Ready condition is True.
    pub fn ready_nodes(&self) -> BTreeSet<String> {
        let out = self.kubectl("m1", &["get", "nodes", "-o", "json"]).stderr(Stdio::null()).output();
        let list: serde_json::Value = out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default();
        ready_in(&list)
    }

    fn host_status(&self, bin: &Path, name: &str, args: &[String]) -> Result<std::process::ExitStatus> {
        if !proc::netns::exists(&ns_of(name)) {
            warning!("{name}: namespace {} is gone", ns_of(name));
            bail!("{name} has no namespace");
        }
        let mut cmd = self.hakube(bin, name, &["status"]);
        cmd.args(args);
        Ok(bounded(STATUS_TIMEOUT, cmd).status()?)
    }

    fn status(&self, args: &[String]) -> Result<()> {
        if !self.marker().exists() && !proc::netns::list().iter().any(|n| is_sandbox_ns(n)) {
            msg!("the sandbox is not up (start it with: scripts/sandbox.sh up)");
            std::process::exit(1);
        }
        let bin = self.binary().context("no hakube binary found (set HAKUBE_BIN)")?;
        let (mut any, mut healthy) = (false, true);
        for host in self.hosts() {
            if !self.has_root(&host.name) {
                println!("{} ({}): namespace only, not installed", host.name, host.ip);
                continue;
            }
            any = true;
            println!("== {} ({}, namespace {})", host.name, host.ip, ns_of(&host.name));
            healthy &= self.host_status(&bin, &host.name, args).is_ok_and(|s| s.success());
        }
        if !any {
            msg!("no host has hakube installed");
            std::process::exit(1);
        }
        if !healthy {
            std::process::exit(1);
        }
        Ok(())
    }

    fn down(&self) -> Result<()> {
        let _lock = self.lock()?;
        let bin = self.binary();
        if bin.is_none() {
            warning!("no hakube binary found: skipping hakube reset, stopping processes directly");
        }
        // Every host recorded, plus any root directory left behind.
        let mut hosts: Vec<String> = self.hosts().into_iter().map(|h| h.name).collect();
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_host_name(&name) && entry.path().is_dir() && !hosts.contains(&name) {
                hosts.push(name);
            }
        }
        for name in hosts.iter().filter(|h| self.has_root(h)) {
            let Some(bin) = &bin else { break };
            msg!("resetting {name}");
            let cmd = if proc::netns::exists(&ns_of(name)) {
                self.hakube(bin, name, &["reset"])
            } else {
                let mut cmd = Command::new(bin);
                cmd.arg("--root").arg(self.root(name)).arg("reset");
                cmd
            };
            if !bounded(RESET_TIMEOUT, cmd).status().is_ok_and(|s| s.success()) {
                warning!("hakube reset on {name} failed; stopping its processes directly");
            }
        }

        // Hosts first, the switch last; deleting a host namespace removes its veth pair.
        let mut namespaces: Vec<String> = hosts.iter().map(|h| ns_of(h)).collect();
        for ns in proc::netns::list().into_iter().filter(|n| is_sandbox_ns(n) && n != SWITCH) {
            if !namespaces.contains(&ns) {
                namespaces.push(ns);
            }
        }
        namespaces.push(SWITCH.into());
        let mut complete = true;
        for ns in namespaces.iter().filter(|n| proc::netns::exists(n)) {
            proc::netns::stop(ns, true);
            if Command::new("ip").args(["netns", "del", ns]).status().is_ok_and(|s| s.success()) {
                msg!("deleted namespace {ns}");
            } else {
                warning!("could not delete namespace {ns}");
                complete = false;
            }
        }

        complete &= self.remove_dir();
        if !complete {
            bail!("the sandbox was not removed completely");
        }
        msg!("the sandbox is down");
        Ok(())
    }

    /// Removes the state directory, if the sandbox made it.
    fn remove_dir(&self) -> bool {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/".into());
        if [Path::new("/"), &proc::repo(), &home].contains(&self.dir.as_path()) {
            warning!("refusing to remove {}; remove the sandbox files by hand", self.dir.display());
            return false;
        }
        if !self.dir.is_dir() {
            return true;
        }
        let empty = fs::read_dir(&self.dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !self.marker().exists() && !empty {
            warning!("{} was not made by sandbox.sh (no .hakube-sandbox); leaving it alone", self.dir.display());
            return false;
        }
        unmount_below(&fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone()));
        let removed = Command::new("rm").arg("-rf").arg("--one-file-system").arg("--").arg(&self.dir).status();
        if removed.is_ok_and(|s| s.success()) {
            msg!("removed {}", self.dir.display());
            true
        } else {
            warning!("could not remove all of {}", self.dir.display());
            false
        }
    }

    fn summary(&self, bin: &Path, bundle: &Path) -> String {
        let sudo = if std::env::var_os("SUDO_USER").is_some() { "sudo " } else { "" };
        let (dir, m1) = (self.dir.display(), self.root("m1"));
        let (m1, bin, bundle) = (m1.display(), bin.display(), bundle.display());
        let read = |f: &str| fs::read_to_string(Path::new(&bundle.to_string()).join(f)).unwrap_or_default();
        let (version, image) = (read("VERSION"), read("test-image"));
        let (version, image) = (version.trim(), image.trim());
        let mut hosts = String::new();
        for h in self.hosts() {
            let ns = ns_of(&h.name);
            let what = match self.has_root(&h.name) {
                true => format!("hakube root {}", self.root(&h.name).display()),
                false => "namespace only (not joined yet)".into(),
            };
            hosts += &format!("  host    {:<6} {:<6} eth0 {:<12} {what}\n", h.name, ns, h.ip);
        }
        format!(
            r#"
Sandbox state: {dir}
  switch  {SWITCH}  bridge br0 for {NET}.0/24 (nothing in the host's own network namespace)
{hosts}
Look inside:
  {sudo}ip netns exec hk-m1 bash                     # a shell on m1's network
  {sudo}ip netns exec hk-m1 ss -ltnp                 # what listens on m1
  {sudo}ip netns exec hk-m1 {bin} --root {m1} status
  ls {m1}/var/lib/hakube/logs/               # component logs
  {sudo}ip netns exec hk-m1 {bundle}/etcdctl --endpoints https://{NET}.11:2379 \
      --cacert {m1}/var/lib/hakube/pki/etcd/ca.crt \
      --cert {m1}/var/lib/hakube/pki/etcd/healthcheck-client.crt \
      --key {m1}/var/lib/hakube/pki/etcd/healthcheck-client.key endpoint health
  cat {dir}/join-m2.log                  # how a master joined (serialized etcd join)
  {sudo}ip netns exec hk-m1 {bin} --root {m1} check      # ✓ ‼ × with hints
  {sudo}ip netns exec hk-m1 curl -s http://{NET}.11:{METRICS_PORT}/metrics   # what m1's agent exports
  {sudo}ip netns exec hk-m1 curl -s http://{NET}.11:{PROMETHEUS_PORT}/api/v1/alerts   # Prometheus, with hakube's rules
  scripts/sandbox.sh console                # the cluster page, forwarded to 127.0.0.1:9443, with a sign-in link
  scripts/sandbox.sh status | down

kubectl (the bundle's {version}, on m1's network, with its admin kubeconfig):
  alias k='{sudo}ip netns exec hk-m1 {bundle}/kubectl --kubeconfig {m1}/var/lib/hakube/kubeconfigs/admin.conf'
  k get nodes -o wide
  k -n kube-system get pods -o wide                 # kube-proxy runs on every node as a host process; CoreDNS here

A sample application: a web server behind a Service, and a volume that outlives its pod.
  k create deployment web --image={image} --replicas=2 --port=8080 -- \
      sh -c 'mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www'
  k expose deployment web --port=80 --target-port=8080 --type=NodePort
  k run client --image={image} --image-pull-policy=Never --restart=Never -- sleep 3600
  k exec client -- wget -qO- http://web/index.html        # by name, through CoreDNS and kube-proxy
  {sudo}ip netns exec hk-m2 busybox wget -qO- http://{NET}.21:$(k get svc web -o jsonpath='{{.spec.ports[0].nodePort}}')/index.html
  k apply -f - <<<'{{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{{"name":"data"}},"spec":{{"accessModes":["ReadWriteOnce"],"resources":{{"requests":{{"storage":"64Mi"}}}}}}}}'
  k get pvc data                                   # Pending until a pod uses it (WaitForFirstConsumer), then Bound
(no image registry is reachable here: the bundle's images are imported into every node's
containerd, and a pinned tag is never pulled; use imagePullPolicy: Never for :latest ones.
A local-path volume lives on one node's disk: if that node is lost, so is its data.)
"#
        )
    }
}

/// Copies both ways between two connections until either side closes.
fn splice(a: std::net::TcpStream, b: std::net::TcpStream) {
    let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => {
            pipe(a, b2);
            pipe(b, a2);
        }
        _ => warning!("cannot forward a connection: out of file descriptors?"),
    }
}

/// Ready Nodes in a `kubectl get nodes -o json` list.
pub fn ready_in(list: &serde_json::Value) -> BTreeSet<String> {
    let items = list["items"].as_array().map(Vec::as_slice).unwrap_or_default();
    items
        .iter()
        .filter(|n| {
            let conditions = n["status"]["conditions"].as_array().map(Vec::as_slice).unwrap_or_default();
            conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// A join script holds a token: readable by root only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Unmounts (lazily) whatever is still mounted below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut below: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/self/mounts escapes spaces as \040.
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    below.sort_by(|a, b| b.cmp(a));
    for m in below {
        if nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH).is_err() {
            warning!("could not unmount {m}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_keeps_the_first_line_of_each_sandbox_host() {
        let text = "m1 10.77.0.11\nm1 10.77.0.99\nbad line here\nx1 10.0.0.1\nw2 10.77.0.22\nm0 1.2.3.4\n";
        let names: Vec<_> = parse_hosts(text).into_iter().map(|h| format!("{} {}", h.name, h.ip)).collect();
        assert_eq!(names, ["m1 10.77.0.11", "w2 10.77.0.22"]);
    }

    #[test]
    fn only_the_sandbox_namespaces_are_its_own() {
        for ns in ["hk-sw", "hk-m1", "hk-w9"] {
            assert!(is_sandbox_ns(ns), "{ns}");
        }
        for ns in ["hk-m", "hk-x1", "hkt123x1", "hk-m1a", "sw", "hk-w0"] {
            assert!(!is_sandbox_ns(ns), "{ns}");
        }
    }

    #[test]
    fn ready_means_the_ready_condition_is_true() {
        let list = serde_json::json!({"items": [
            {"metadata": {"name": "m1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "m2"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
            {"metadata": {"name": "w1"}, "status": {"conditions": [{"type": "MemoryPressure", "status": "True"}]}},
            {"metadata": {"name": "w2"}}
        ]});
        assert_eq!(ready_in(&list).into_iter().collect::<Vec<_>>(), ["m1"]);
    }
}
