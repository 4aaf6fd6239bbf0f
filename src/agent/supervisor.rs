use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, timeout, Instant};
use tracing::{info, warn};

use super::facts::{self, VersionCache};
use super::handover::{Adopted, Handover, Kept};
use super::probe::Prober;
use super::state::{ComponentState, Phase, State};
use super::Request;
use crate::config::{self, ClusterConfig, Component};
use crate::host::clock::now_secs;
use crate::host::fs::{apply_files, write_atomic, FileSpec};
use crate::host::paths::Paths;
use crate::host::process::find_binary;
use crate::host::process::PidFile;
use crate::kube::components::{specs, ComponentSpec, HostFacts};

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting starts again from the
/// shortest backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How one component is to be run; `None` in the channel means stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Launch {
    bundle: Option<PathBuf>,
    /// The Kubernetes version of its binary, when it is a Kubernetes one.
    version: Option<String>,
    args: Vec<String>,
    /// Its own config files, written before it starts.
    files: Vec<FileSpec>,
    fingerprint: String,
    /// Components of this node that must be healthy before it starts.
    after: Vec<Component>,
    /// Why it cannot be started at all (an unsupported binary, ...).
    refused: Option<String>,
    cgroup: Option<String>,
}

/// Digest of a spec's command line, its own files and the content of its
/// input files: when it changes, the process must restart to see the change.
pub fn fingerprint(spec: &ComponentSpec) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for a in &spec.args {
        ctx.update(a.as_bytes());
        ctx.update(b"\0");
    }
    for f in &spec.files {
        ctx.update(&f.contents);
        ctx.update(b"\0");
    }
    for f in spec.inputs.iter().filter(|i| !spec.files.iter().any(|f| &f.path == *i)) {
        ctx.update(&std::fs::read(f).unwrap_or_default());
        ctx.update(b"\0");
    }
    crate::pki::hex(&ctx.finish().as_ref()[..12])
}

/// Whether `binary` is another build than this agent's (or cannot be
/// told apart: then it is taken for one).
fn another_build(binary: &std::path::Path) -> bool {
    let Some(running) = crate::cluster::upgrade::running() else { return true };
    crate::runtime::images::sha256_file(binary).map_or(true, |sha| sha != running.sha256)
}

/// Digest of everything a launch says (its binary included): a component
/// left running by a predecessor is adopted only when this matches.
fn launch_digest(binary: &std::path::Path, launch: &Launch) -> String {
    let text = format!("{binary:?}\0{launch:?}");
    crate::pki::hex(&ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref()[..16])
}

/// What a component waits for before it starts: the API server for its
/// local etcd member, kubelet for the container runtime.
fn dependencies(comp: Component, c: &ClusterConfig) -> Vec<Component> {
    let wants: &[Component] = match comp {
        Component::KubeApiserver => &[Component::Etcd],
        Component::Kubelet => &[Component::Containerd],
        _ => &[],
    };
    wants.iter().copied().filter(|d| c.has(*d)).collect()
}

fn launches(
    paths: &Paths,
    c: &ClusterConfig,
    facts: &HostFacts,
    problems: &BTreeMap<Component, String>,
) -> BTreeMap<Component, Launch> {
    specs(paths, c, facts)
        .into_iter()
        .map(|s| {
            let launch = Launch {
                bundle: c.node.bundle_for(s.component).map(PathBuf::from),
                version: facts.versions.get(&s.component).map(ToString::to_string),
                fingerprint: fingerprint(&s),
                after: dependencies(s.component, c),
                refused: problems.get(&s.component).cloned(),
                args: s.args,
                files: s.files,
                cgroup: s.cgroup,
            };
            (s.component, launch)
        })
        .collect()
}

/// Whether `name` is the same binary in the bundles `a` and `b`: the same
/// SHA-256 in both manifests, or, for a directory without one (a bundle
/// given by hand), in the files themselves.
pub(super) fn same_member(a: &std::path::Path, b: &std::path::Path, name: &str) -> bool {
    use crate::bundle::Manifest;
    use crate::runtime::images::sha256_file;
    match (Manifest::of_dir(a), Manifest::of_dir(b)) {
        (Some(x), Some(y)) => x.sha256_of(name).is_some_and(|d| y.sha256_of(name) == Some(d)),
        _ => match (sha256_file(&a.join(name)), sha256_file(&b.join(name))) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        },
    }
}

/// etcd moves to another bundle only when its binary differs: with the
/// same binary and the same everything else, the running member is left
/// as it runs (an upgrade that does not change etcd restarts no member,
/// and the quorum is never at stake for nothing).
fn keep_identical_etcd(
    running: &BTreeMap<Component, Option<Launch>>,
    wanted: &mut BTreeMap<Component, Launch>,
    same: impl Fn(&std::path::Path, &std::path::Path, &str) -> bool,
) {
    let (Some(Some(now)), Some(next)) = (running.get(&Component::Etcd), wanted.get_mut(&Component::Etcd)) else {
        return;
    };
    if let (Some(a), Some(b)) = (&now.bundle, &next.bundle) {
        let kept = Launch { bundle: now.bundle.clone(), ..next.clone() };
        if a != b && kept == *now && same(a, b, Component::Etcd.name()) {
            *next = kept;
        }
    }
}

/// What a reload does to one component.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// Not supervised yet: a task of its own.
    Start(Launch),
    /// Supervised, and to run differently (or, with None, not at all).
    Relaunch(Option<Launch>),
}

/// The changes that take the components from how they run (`running`:
/// every supervised one, None if stopped) to `wanted`; one that runs as
/// wanted is left alone.
fn reload_plan(
    running: &BTreeMap<Component, Option<Launch>>,
    mut wanted: BTreeMap<Component, Launch>,
) -> BTreeMap<Component, Change> {
    let mut plan = BTreeMap::new();
    for (comp, now) in running {
        let next = wanted.remove(comp);
        if *now != next {
            plan.insert(*comp, Change::Relaunch(next));
        }
    }
    plan.extend(wanted.into_iter().map(|(comp, launch)| (comp, Change::Start(launch))));
    plan
}

type Shared = Rc<RefCell<State>>;

fn update(state: &Shared, dirty: &Notify, comp: Component, f: impl FnOnce(&mut ComponentState)) {
    let mut st = state.borrow_mut();
    let entry = st.components.entry(comp.name().to_owned()).or_insert_with(|| ComponentState {
        phase: Phase::Stopped,
        healthy: false,
        probe: String::new(),
        pid: None,
        restarts: 0,
        since: now_secs(),
        last_exit: None,
        message: None,
        version: None,
    });
    let before = entry.clone();
    f(entry);
    if entry.phase != before.phase {
        entry.since = now_secs();
    }
    if *entry != before {
        dirty.notify_one();
    }
}

fn healthy(state: &Shared, comp: Component) -> bool {
    state.borrow().components.get(comp.name()).is_some_and(|s| s.phase == Phase::Running && s.healthy)
}

/// Starts the node-local load balancer over the masters this node knows
/// (re-read as the agent keeps them current).
fn start_lb(
    paths: &Paths,
    cfg: &ClusterConfig,
    inherited: Option<std::net::TcpListener>,
) -> std::io::Result<crate::lb::Handle> {
    let (p, c) = (paths.clone(), cfg.clone());
    let port = cfg.node.api_server_port;
    let targets = move || {
        super::masters::read(&p, &c)
            .into_iter()
            .map(|m| crate::lb::Target {
                name: if m.name.is_empty() { m.address.to_string() } else { m.name },
                addr: std::net::SocketAddr::new(m.address, port),
            })
            .collect()
    };
    crate::lb::spawn_with(crate::lb::Options::new(paths, cfg), targets, inherited)
}

/// The agent's signals: stop (SIGTERM, SIGINT), reload (SIGHUP), and
/// hand over to the installed binary (SIGUSR2, as `install` sends when it
/// installed another build).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

/// Runs the agent until SIGTERM/SIGINT, or until it hands over to another
/// hakube build (then this process is that build's agent, and this never
/// returns). `handed`: what a predecessor left, when this agent is one's
/// successor ([`super::handover`]).
pub async fn run(paths: Paths, handed: Option<Handover>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // Signal handlers first: a SIGHUP from an install that finds the pid
    // file must never meet the default action (death).
    let signals = Signals {
        term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        usr2: signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?,
    };
    // Blocked when a predecessor handed over: one sent during its exec is
    // delivered now, to these handlers.
    super::handover::unblock_signals();
    let pid_file = match &handed {
        Some(h) => PidFile::inherit(&paths.agent_pid_file(), h.lock_fd),
        None => PidFile::acquire(&paths.agent_pid_file()),
    }
    .with_context(|| format!("cannot start the agent for root {}", paths.root().display()))?;
    let cfg = load(&paths)?;
    let taking_over = handed.is_some();
    let handed = handed.unwrap_or_default();
    let lb_socket = handed.lb_fd.and_then(super::handover::listener);
    if taking_over {
        info!(root = %paths.root().display(), node = %cfg.node.name, left_running = ?handed.components.keys().collect::<Vec<_>>(), "agent starting, taking over from its predecessor");
    } else {
        info!(root = %paths.root().display(), node = %cfg.node.name, "agent starting");
    }
    let p = paths.clone();
    let keep: Vec<u32> = handed.components.values().map(|k| k.pid).collect();
    let _ = tokio::task::spawn_blocking(move || super::control::stop_leftovers(&p, &keep)).await;
    let build = tokio::task::spawn_blocking(crate::cluster::upgrade::Build::of_this_process)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    let hakube = match build {
        Ok(b) => {
            crate::cluster::upgrade::set_running(b.clone());
            Some(b)
        }
        Err(e) => {
            warn!(error = %e, "cannot tell which hakube build this is: an upgrade will not move this agent");
            None
        }
    };
    let state: Shared = Rc::new(RefCell::new(State {
        agent_pid: std::process::id(),
        started_at: now_secs(),
        hakube,
        reloads: handed.reloads,
        ..State::default()
    }));
    let (agent_stop, _) = watch::channel(false);
    let agent = Agent {
        paths,
        cfg,
        versions: VersionCache::default(),
        state,
        dirty: Rc::new(Notify::new()),
        senders: BTreeMap::new(),
        lb: None,
        agent_stop,
        vips: BTreeMap::new(),
        vips_leaving: vec![],
        applied: Rc::new(watch::channel(0i64).0),
        purged: Rc::new(watch::channel(None::<String>).0),
        report: Rc::new(watch::channel(Default::default()).0),
        reload: tokio::sync::mpsc::unbounded_channel(),
        kept: handed.components,
        lb_socket,
        pid_file: Some(pid_file),
    };
    tokio::task::LocalSet::new().run_until(agent.main(signals)).await;
    Ok(())
}

/// The installed config, or why there is none to run.
fn load(paths: &Paths) -> anyhow::Result<ClusterConfig> {
    use anyhow::Context as _;
    let file = paths.config_file();
    config::load_installed(&file)?
        .with_context(|| format!("{} does not exist: run `hakube install` first", file.display()))
}

type Supervised = (watch::Sender<Option<Launch>>, tokio::task::JoinHandle<()>);

/// The running agent: what it supervises and the node's own tasks.
struct Agent {
    paths: Paths,
    cfg: ClusterConfig,
    versions: VersionCache,
    state: Shared,
    /// Told when `state` changed (one write per burst).
    dirty: Rc<Notify>,
    senders: BTreeMap<Component, Supervised>,
    lb: Option<crate::lb::Handle>,
    /// Stops what lives as long as the agent (the election, the virtual IP).
    agent_stop: watch::Sender<bool>,
    /// The settings revision this node runs, as [`super::converge`] says.
    applied: Rc<watch::Sender<i64>>,
    /// Set when the cluster purged this node.
    purged: Rc<watch::Sender<Option<String>>>,
    /// What the heartbeat says of the node, from `state` as it is written.
    report: Rc<watch::Sender<crate::cluster::heartbeat::Report>>,
    /// Reloads and hand-overs asked for by the node's tasks.
    reload: (tokio::sync::mpsc::UnboundedSender<Request>, tokio::sync::mpsc::UnboundedReceiver<Request>),
    /// Components a predecessor left running, until adopted or stopped.
    kept: BTreeMap<String, Kept>,
    /// The balancer's socket a predecessor handed over.
    lb_socket: Option<std::net::TcpListener>,
    /// Held for as long as the agent runs (kept across a hand-over).
    pid_file: Option<PidFile>,
    /// The virtual IPs this master floats (one during a change of the
    /// cluster's, two): each task and what stops it.
    vips: BTreeMap<std::net::Ipv4Addr, (watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    /// Tasks of addresses no longer floated, handing them over.
    vips_leaving: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// The agent's life: start, then one event at a time until told to stop.
    async fn main(mut self, mut signals: Signals) {
        self.spawn_state_writer();
        // A balancer socket handed over has clients waiting in its queue:
        // accept them before anything else (the question to the other
        // masters below may take seconds).
        if self.lb_socket.is_some() && self.cfg.runs_local_lb() {
            self.start_lb();
        }
        // A node the cluster purged runs nothing until it is reset.
        let purged_before = self.catch_up().await;
        // The node-local load balancer, before anything that uses it
        // (kubelet), for as long as the agent runs.
        if purged_before.is_none() && self.cfg.runs_local_lb() && self.lb.is_none() {
            self.start_lb();
        }
        if let Some(msg) = &purged_before {
            warn!("{}", msg.trim());
            if let Some(h) = self.lb.take() {
                h.stop();
            }
            self.state.borrow_mut().purged = Some(msg.trim().to_owned());
            self.dirty.notify_one();
        } else {
            for (comp, launch) in self.observe() {
                self.start(comp, launch);
            }
        }
        self.stop_unadopted();
        spawn_log_rotation(self.paths.log_dir());
        // Renewal reloads the agent, which restarts the node's tasks: it
        // lives beside them, as long as the agent.
        if purged_before.is_none() {
            tokio::task::spawn_local(super::renew::run(
                self.paths.clone(),
                self.reload.0.clone(),
                self.state.clone(),
                self.agent_stop.subscribe(),
            ));
        }
        // The election lives as long as the agent (a reload must not hand
        // the leadership over); the node's tasks start again on every
        // reload, so they see the current certificates and config.
        let (view_tx, view_rx) = watch::channel(crate::cluster::election::View::default());
        let election = self.spawn_election(view_tx);
        self.spawn_leading_recorder(view_rx.clone());
        // What lives as long as the agent, awaited (bounded) when it stops.
        let lifelong: Vec<tokio::task::JoinHandle<()>> = election.into_iter().collect();
        self.reconcile_vips();
        let mut purged_rx = self.purged.subscribe();
        let mut stop_tx = if purged_before.is_some() { watch::channel(false).0 } else { self.node_tasks(&view_rx) };
        let successor = loop {
            let asked = tokio::select! {
                _ = signals.term.recv() => break None,
                _ = signals.int.recv() => break None,
                _ = purged_rx.changed() => {
                    let Some(msg) = purged_rx.borrow_and_update().clone() else { continue };
                    let _ = stop_tx.send(true);
                    self.on_purged(msg);
                    continue;
                }
                _ = signals.hup.recv() => Request::Reload,
                _ = signals.usr2.recv() => Request::HandOver(self.paths.installed_binary()),
                r = self.reload.1.recv() => r.unwrap_or(Request::Reload),
            };
            if self.state.borrow().purged.is_some() {
                warn!("this node was purged: a reload changes nothing until it is reset");
                continue;
            }
            match asked {
                Request::Reload => self.reload_config(&mut stop_tx, &view_rx),
                Request::HandOver(binary) if !another_build(&binary) => {
                    info!(binary = %binary.display(), "asked to hand over to the build this agent runs: nothing to do");
                }
                Request::HandOver(binary) => {
                    let b = binary.clone();
                    match tokio::task::spawn_blocking(move || super::handover::runs(&b)).await {
                        Ok(Ok(version)) => {
                            info!(%version, "the new hakube runs here");
                            break Some(binary);
                        }
                        Ok(Err(e)) => warn!(error = %e, "not handing over: the new hakube does not run here"),
                        Err(e) => warn!(error = %e, "not handing over"),
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        match successor {
            Some(binary) => self.hand_over(lifelong, &binary).await,
            None => self.stop(lifelong).await,
        }
    }

    /// Hands the node over to the hakube `binary`, in this process: resigns
    /// what it leads, leaves every component running, lets the balancer
    /// finish what it relays, and `exec`s the binary with what it needs to
    /// take over ([`super::handover`]). Nothing is dropped on the way (a
    /// dropped child would be killed): this returns only if the exec
    /// failed, and then the process ends.
    async fn hand_over(mut self, lifelong: Vec<tokio::task::JoinHandle<()>>, binary: &std::path::Path) {
        info!(binary = %binary.display(), "handing over to the new hakube: the components keep running");
        self.agent_stop.send_replace(true);
        let vips = self.stop_vips();
        for task in lifelong.into_iter().chain(vips) {
            let _ = timeout(Duration::from_secs(6), task).await;
        }
        // From here on nothing awaits: no supervised process is restarted
        // behind the record made of them.
        let mut components = BTreeMap::new();
        for (comp, (tx, _)) in &self.senders {
            let Some(launch) = tx.borrow().clone() else { continue };
            let st = self.state.borrow();
            let Some(pid) = st.components.get(comp.name()).and_then(|c| c.pid) else { continue };
            let Ok(running) = std::fs::read_link(format!("/proc/{pid}/exe")) else { continue };
            let digest = launch_digest(&running, &launch);
            components
                .insert(comp.name().to_owned(), Kept { pid, launch: digest, binary: running, bundle: launch.bundle });
        }
        let lb_fd = self.lb.take().and_then(|h| h.hand_over(crate::lb::HAND_OVER_DRAIN)).and_then(|l| {
            let kept = crate::host::process::close_on_exec(&l, false).map(|()| std::os::fd::IntoRawFd::into_raw_fd(l));
            kept.map_err(|e| warn!(error = %e, "cannot keep the balancer's socket for the successor")).ok()
        });
        let lock_fd = match self.pid_file.take().map(PidFile::keep_across_exec) {
            Some(Ok(fd)) => fd,
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot keep the pid file locked across the hand-over: the agent exits");
                std::process::exit(1);
            }
            None => unreachable!("the pid file is held while the agent runs"),
        };
        let reloads = self.state.borrow().reloads;
        let handover = Handover { lock_fd, lb_fd, components, reloads };
        let json = serde_json::to_vec_pretty(&*self.state.borrow()).expect("state serializes");
        let _ = write_atomic(&self.paths.state_file(), &json, 0o644);
        let e = super::handover::exec(&self.paths, binary, &handover);
        tracing::error!(error = %e, binary = %binary.display(), "cannot run the new hakube: this agent starts again");
        let e = super::handover::exec_as(std::path::Path::new("/proc/self/exe"), &handover);
        tracing::error!(error = %e, "cannot start this agent again: exiting");
        std::process::exit(1);
    }

    /// Components the predecessor left that this agent does not run (its
    /// node purged, or the component no longer wanted): stopped.
    fn stop_unadopted(&mut self) {
        for (name, k) in std::mem::take(&mut self.kept) {
            match Adopted::new(&k) {
                Ok(mut a) => {
                    info!(component = %name, pid = k.pid, "left running by the predecessor and not run now: stopping it");
                    tokio::task::spawn_local(async move { a.stop(STOP_GRACE).await });
                }
                Err(e) => {
                    warn!(component = %name, pid = k.pid, error = %e, "left running by the predecessor: not found")
                }
            }
        }
    }

    /// One atomic write of `state.json` per burst of changes.
    fn spawn_state_writer(&self) {
        let (state, dirty, path) = (self.state.clone(), self.dirty.clone(), self.paths.state_file());
        let report = self.report.clone();
        tokio::task::spawn_local(async move {
            loop {
                let now = state.borrow().report();
                report.send_if_modified(|r| std::mem::replace(r, now.clone()) != now);
                let json = serde_json::to_vec_pretty(&*state.borrow()).expect("state serializes");
                if let Err(e) = write_atomic(&path, &json, 0o644) {
                    warn!(error = %e, "cannot record state");
                }
                dirty.notified().await;
            }
        });
    }

    /// Before anything starts: whether the cluster purged this node while
    /// it was away (recorded, and said), and the cluster-wide settings
    /// changed meanwhile (a new load-balancer address), caught up with.
    async fn catch_up(&mut self) -> Option<String> {
        if let Ok(msg) = std::fs::read_to_string(self.paths.purged_marker()) {
            return Some(msg);
        }
        let told = super::converge::at_start(&self.paths, &self.cfg).await;
        if let Some(msg) = told.purged {
            let _ = write_atomic(&self.paths.purged_marker(), format!("{msg}\n").as_bytes(), 0o644);
            return Some(msg);
        }
        if let Some(spec) = told.settings.filter(|s| *s != self.cfg.cluster) {
            let mut next = self.cfg.clone();
            next.cluster = spec;
            match super::converge::converge(&self.paths, &next)
                .and_then(|()| load(&self.paths).map_err(|e| e.to_string()))
            {
                Ok(new) => {
                    info!("caught up with the cluster-wide settings changed while this node was away");
                    self.cfg = new;
                }
                Err(e) => warn!(error = %e, "not caught up with the cluster-wide settings before starting"),
            }
        }
        None
    }

    /// Starts the node-local load balancer and mirrors its status into
    /// `state.json`.
    fn start_lb(&mut self) {
        match start_lb(&self.paths, &self.cfg, self.lb_socket.take()) {
            Ok(h) => {
                let (state, dirty, mut rx) = (self.state.clone(), self.dirty.clone(), h.status.clone());
                tokio::task::spawn_local(async move {
                    loop {
                        state.borrow_mut().load_balancer = Some(rx.borrow_and_update().clone());
                        dirty.notify_one();
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                });
                self.lb = Some(h);
            }
            Err(e) => warn!(error = %e, "cannot start the node-local load balancer"),
        }
    }

    /// The components to run now, as this host's facts allow.
    fn observe(&mut self) -> BTreeMap<Component, Launch> {
        let (facts, problems) = facts::observe(&self.paths, &self.cfg, &mut self.versions);
        let versions = facts.versions.iter().map(|(c, v)| (c.name().to_owned(), v.to_string())).collect();
        self.state.borrow_mut().versions = versions;
        self.dirty.notify_one();
        for (comp, why) in &problems {
            warn!(component = %comp, "cannot run: {why}");
        }
        launches(&self.paths, &self.cfg, &facts, &problems)
    }

    /// Supervises one more component: the process a predecessor left
    /// running for it when that runs as this launch says, else a new one.
    fn start(&mut self, comp: Component, launch: Launch) {
        let (left, launch) = match self.kept.remove(comp.name()) {
            Some(k) => self.adopt(comp, launch, k),
            None => (None, launch),
        };
        let (tx, rx) = watch::channel(Some(launch));
        let runner = Processes { paths: self.paths.clone() };
        let task = tokio::task::spawn_local(supervise(
            comp,
            rx,
            self.paths.clone(),
            self.state.clone(),
            self.dirty.clone(),
            runner,
            left,
        ));
        self.senders.insert(comp, (tx, task));
    }

    /// What becomes of the process a predecessor left for `comp`, and the
    /// launch to supervise: `launch`, or, for an etcd member the
    /// predecessor kept on an older bundle's identical binary
    /// ([`keep_identical_etcd`]), the same on that bundle.
    fn adopt(&self, comp: Component, launch: Launch, k: Kept) -> (Option<Left<Proc>>, Launch) {
        let adopted = match Adopted::new(&k) {
            Ok(a) => a,
            Err(e) => {
                warn!(component = %comp, pid = k.pid, error = %e, "left running by the predecessor: not adopted");
                return (None, launch);
            }
        };
        let mut candidates = vec![launch.clone()];
        if let (Component::Etcd, Some(kept), Some(wanted)) = (comp, &k.bundle, &launch.bundle) {
            if kept != wanted && same_member(kept, wanted, comp.name()) {
                candidates.push(Launch { bundle: Some(kept.clone()), ..launch.clone() });
            }
        }
        let runs_as = |l: &Launch| {
            let binary =
                find_binary(&self.paths, l.bundle.as_deref(), comp.name()).and_then(|b| std::fs::canonicalize(b).ok());
            binary.as_ref() == Some(&k.binary) && launch_digest(&k.binary, l) == k.launch
        };
        match candidates.into_iter().find(runs_as) {
            Some(same) => {
                info!(component = %comp, pid = k.pid, "adopted, as the predecessor left it running");
                (Some(Left::Adopt(Proc::Adopted(adopted))), same)
            }
            None => {
                info!(component = %comp, pid = k.pid, "this build runs it differently: restarting it");
                (Some(Left::Replace(Proc::Adopted(adopted))), launch)
            }
        }
    }

    /// A master's part in the election, fit to lead while its
    /// kube-apiserver (if it runs one) is healthy.
    fn spawn_election(
        &self,
        view: watch::Sender<crate::cluster::election::View>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.cfg.has(Component::Etcd).then(|| {
            let fit = {
                let state = self.state.clone();
                let needs_apiserver = self.cfg.has(Component::KubeApiserver);
                move || !needs_apiserver || healthy(&state, Component::KubeApiserver)
            };
            tokio::task::spawn_local(crate::cluster::election::run(
                self.paths.clone(),
                self.cfg.clone(),
                fit,
                crate::cluster::election::Yield::default(),
                view,
                self.agent_stop.subscribe(),
            ))
        })
    }

    /// Records in the state file whether (and since when) this agent holds
    /// the leader's term, as the election publishes it: what `status` and
    /// an outside observer read of this agent's own belief.
    fn spawn_leading_recorder(&self, mut view: watch::Receiver<crate::cluster::election::View>) {
        let (state, dirty) = (self.state.clone(), self.dirty.clone());
        tokio::task::spawn_local(async move {
            loop {
                let leads = view.borrow_and_update().term.is_some();
                let changed = {
                    let mut s = state.borrow_mut();
                    let was = s.leading_since.is_some();
                    if leads != was {
                        s.leading_since = leads.then(crate::host::clock::now_millis);
                    }
                    leads != was
                };
                if changed {
                    dirty.notify_one();
                }
                if view.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Floats the virtual IPs the settings name ([`crate::vip::floated`]):
    /// a task per address, started when the address appears and stopped
    /// when it goes. A reload that leaves an address in place leaves its
    /// task alone (the address must not move for it), and what each holds
    /// is recorded in the state file.
    fn reconcile_vips(&mut self) {
        let wanted = if self.cfg.has(Component::KubeApiserver) {
            crate::vip::floated(&self.cfg.cluster)
        } else {
            Default::default()
        };
        self.vips_leaving.retain(|t| !t.is_finished());
        let gone: Vec<std::net::Ipv4Addr> = self.vips.keys().filter(|a| !wanted.contains(a)).copied().collect();
        for vip in gone {
            if let Some((stop, task)) = self.vips.remove(&vip) {
                info!(%vip, "the cluster no longer floats this virtual IP: releasing it");
                let _ = stop.send(true);
                self.vips_leaving.push(task);
            }
        }
        for vip in wanted {
            if !self.vips.contains_key(&vip) {
                let spawned = self.spawn_vip(vip);
                self.vips.insert(vip, spawned);
            }
        }
    }

    /// Tells every virtual IP task to hand its address over; their handles.
    fn stop_vips(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = std::mem::take(&mut self.vips_leaving);
        for (_, (stop, task)) in std::mem::take(&mut self.vips) {
            let _ = stop.send(true);
            tasks.push(task);
        }
        tasks
    }

    /// This master's part in one virtual IP, on a thread and runtime of its
    /// own: its refreshes and keep-alives have under a second of slack, and
    /// nothing else the agent does (a blocking call, a busy task) may eat
    /// it. The returned task ends when the thread does.
    fn spawn_vip(&self, vip: std::net::Ipv4Addr) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        use crate::vip::Readiness;
        let readiness = |state: &Shared| match state.borrow().components.get(Component::KubeApiserver.name()) {
            Some(s) if s.phase == Phase::Running && s.healthy => Readiness::Ready,
            Some(s) if s.phase == Phase::Running => Readiness::Unready,
            _ => Readiness::Down,
        };
        // The local kube-apiserver's readiness, carried over to the thread.
        let (ready_tx, ready_rx) = watch::channel(readiness(&self.state));
        let state = self.state.clone();
        tokio::task::spawn_local(async move {
            loop {
                tokio::select! {
                    () = ready_tx.closed() => return,
                    _ = sleep(Duration::from_millis(100)) => {}
                }
                let now = readiness(&state);
                ready_tx.send_if_modified(|r| std::mem::replace(r, now) != now);
            }
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (part_tx, mut part_rx) = watch::channel(crate::vip::Part::default());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let (paths, cfg) = (self.paths.clone(), self.cfg.clone());
        let spawned = std::thread::Builder::new().name(format!("vip {vip}")).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(crate::vip::run(paths, cfg, vip, ready_rx, part_tx, stop_rx)),
                Err(e) => warn!(%vip, error = %e, "cannot start the virtual IP's runtime"),
            }
            let _ = done_tx.send(());
        });
        if let Err(e) = spawned {
            warn!(%vip, error = %e, "cannot start the virtual IP's thread");
        }
        let task = tokio::task::spawn_local(async move {
            let _ = done_rx.await;
        });
        let (state, dirty) = (self.state.clone(), self.dirty.clone());
        let key = vip.to_string();
        tokio::task::spawn_local(async move {
            while part_rx.changed().await.is_ok() {
                let part = part_rx.borrow_and_update().clone();
                state.borrow_mut().vip.insert(key.clone(), part);
                dirty.notify_one();
            }
            // The task ended: this master has no part in the address now.
            state.borrow_mut().vip.remove(&key);
            dirty.notify_one();
        });
        (stop_tx, task)
    }

    /// The node's tasks for the config as it is now: health probes,
    /// convergence to the cluster-wide settings, a master's API, heartbeat,
    /// controller and etcd snapshots, a kubelet node's pod network. They stop when the
    /// returned sender is told.
    fn node_tasks(&self, view: &watch::Receiver<crate::cluster::election::View>) -> watch::Sender<bool> {
        let (paths, cfg) = (&self.paths, &self.cfg);
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::task::spawn_local(super::metrics::serve::run(paths.clone(), cfg.clone(), stop_rx.clone()));
        for comp in cfg.node.components.iter().copied() {
            let prober = Prober::new(comp, cfg, paths);
            let args = (paths.clone(), cfg.clone(), self.state.clone(), self.dirty.clone(), stop_rx.clone());
            tokio::task::spawn_local(probe_loop(comp, prober, args));
        }
        tokio::task::spawn_local(super::converge::run(
            paths.clone(),
            cfg.clone(),
            self.applied.clone(),
            self.reload.0.clone(),
            self.purged.clone(),
            self.report.subscribe(),
            stop_rx.clone(),
        ));
        if cfg.has(Component::Etcd) {
            use crate::cluster::{controller, heartbeat};
            tokio::task::spawn_local(crate::api::run(paths.clone(), cfg.clone(), stop_rx.clone()));
            tokio::task::spawn_local(heartbeat::run(
                paths.clone(),
                cfg.clone(),
                self.applied.subscribe(),
                self.report.subscribe(),
                stop_rx.clone(),
            ));
            tokio::task::spawn_local(controller::run(paths.clone(), cfg.clone(), view.clone(), stop_rx.clone()));
            tokio::task::spawn_local(crate::etcd::snapshot::run(paths.clone(), cfg.clone(), stop_rx.clone()));
        }
        if cfg.has(Component::Kubelet) {
            tokio::task::spawn_local(super::podnet::run(paths.clone(), cfg.clone(), stop_rx));
        }
        stop_tx
    }

    /// The cluster purged this node: stop everything, touch nothing of the
    /// cluster, and keep saying why until the node is reset.
    fn on_purged(&mut self, msg: String) {
        warn!("{msg}: stopping every component");
        if let Err(e) = write_atomic(&self.paths.purged_marker(), format!("{msg}\n").as_bytes(), 0o644) {
            warn!(error = %e, "cannot record the purge");
        }
        self.agent_stop.send_replace(true);
        for (tx, _) in self.senders.values() {
            let _ = tx.send(None);
        }
        if let Some(h) = self.lb.take() {
            h.stop();
        }
        self.state.borrow_mut().purged = Some(msg);
        self.dirty.notify_one();
        // The cluster has given its pods to other nodes (a StatefulSet's
        // may run elsewhere already): its containers, which outlive
        // kubelet and containerd, go too, once those two have stopped.
        let (state, paths) = (self.state.clone(), self.paths.clone());
        tokio::task::spawn_local(async move {
            let stopped = || {
                let s = state.borrow();
                [Component::Kubelet, Component::Containerd]
                    .iter()
                    .all(|c| s.components.get(c.name()).is_none_or(|c| c.pid.is_none()))
            };
            let until = tokio::time::Instant::now() + STOP_GRACE + Duration::from_secs(5);
            while !stopped() && tokio::time::Instant::now() < until {
                sleep(Duration::from_millis(200)).await;
            }
            let left = tokio::task::spawn_blocking(move || crate::runtime::pods::stop_all(&paths)).await;
            warn!(cgroups_left = ?left.unwrap_or_default(), "stopped this purged node's pods");
        });
    }

    /// Reads the config again and applies the [`reload_plan`]; the node's
    /// tasks (stopped through `stop_tx`) start again for the new config.
    fn reload_config(
        &mut self,
        stop_tx: &mut watch::Sender<bool>,
        view: &watch::Receiver<crate::cluster::election::View>,
    ) {
        match load(&self.paths) {
            Ok(new) => {
                self.cfg = new;
                let mut wanted = self.observe();
                let running = self.senders.iter().map(|(c, (tx, _))| (*c, tx.borrow().clone())).collect();
                keep_identical_etcd(&running, &mut wanted, same_member);
                let plan = reload_plan(&running, wanted);
                let _ = stop_tx.send(true);
                *stop_tx = self.node_tasks(view);
                for (comp, change) in plan {
                    match change {
                        Change::Start(launch) => self.start(comp, launch),
                        Change::Relaunch(next) => {
                            // Not healthy until restarted: whoever waits on
                            // this reload must not see the old process's health.
                            update(&self.state, &self.dirty, comp, |s| {
                                s.phase = Phase::Starting;
                                s.healthy = false;
                                s.pid = None;
                            });
                            let _ = self.senders[&comp].0.send(next);
                        }
                    }
                }
                self.reconcile_vips();
                info!("configuration reloaded");
                self.state.borrow_mut().reload_error = None;
            }
            Err(e) => {
                let reason = format!("{e:#}");
                warn!(error = %reason, "reload refused: keeping the running configuration");
                self.state.borrow_mut().reload_error = Some(reason);
            }
        }
        self.state.borrow_mut().reloads += 1;
        self.dirty.notify_one();
    }

    /// Stops in reverse start order: kubelet and the control plane before
    /// the etcd they write to.
    async fn stop(mut self, lifelong: Vec<tokio::task::JoinHandle<()>>) {
        info!("stopping components");
        // The election and the virtual IP first, while etcd still runs:
        // the next leader and holder take over at once.
        self.agent_stop.send_replace(true);
        let vips = self.stop_vips();
        for task in lifelong.into_iter().chain(vips) {
            let _ = timeout(Duration::from_secs(6), task).await;
        }
        for (comp, (tx, task)) in std::mem::take(&mut self.senders).into_iter().rev() {
            let _ = tx.send(None);
            drop(tx);
            if timeout(STOP_GRACE + Duration::from_secs(2), task).await.is_err() {
                warn!(component = %comp, "did not stop in time");
            }
        }
        if let Some(h) = self.lb.take() {
            h.stop();
        }
        let json = serde_json::to_vec_pretty(&*self.state.borrow()).expect("state serializes");
        let _ = write_atomic(&self.paths.state_file(), &json, 0o644);
        info!("agent stopped");
    }
}

/// Keeps the logs under `logs/` under their cap for as long as the agent runs.
fn spawn_log_rotation(log_dir: PathBuf) {
    tokio::task::spawn_local(async move {
        loop {
            let dir = log_dir.clone();
            let policy = crate::host::logrotate::DEFAULT;
            match tokio::task::spawn_blocking(move || crate::host::logrotate::rotate_dir(&dir, policy)).await {
                Ok(Ok(rotated)) => {
                    for log in rotated {
                        info!(log = %log.display(), "log rotated (over {} MiB)", policy.max_bytes >> 20);
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "cannot rotate the logs"),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
}

/// How [`supervise`] runs a component's process: [`Processes`] for real,
/// a recording fake in the tests, so that restarts, backoff and reloads are
/// tested in paused time.
trait Runner {
    type Child: Running;
    fn start(&self, binary: &std::path::Path, args: &[String], comp: Component) -> std::io::Result<Self::Child>;
}

/// A started component's process.
trait Running {
    fn pid(&self) -> Option<u32>;
    /// Waits until it exits by itself; says how.
    async fn exited(&mut self) -> String;
    /// Stops it: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    async fn stop(&mut self);
}

/// Real processes, their output in the component's log.
struct Processes {
    paths: Paths,
}

/// A real process: started by this agent, or left running by its
/// predecessor and adopted.
enum Proc {
    Spawned(tokio::process::Child),
    Adopted(Adopted),
}

/// The process a predecessor left running for a component.
enum Left<C> {
    /// It runs as it should: supervised as it is.
    Adopt(C),
    /// It runs otherwise: stopped before the new one starts.
    Replace(C),
}

impl Runner for Processes {
    type Child = Proc;
    fn start(&self, binary: &std::path::Path, args: &[String], comp: Component) -> std::io::Result<Self::Child> {
        spawn(binary, args, &self.paths, comp).map(Proc::Spawned)
    }
}

impl Running for Proc {
    fn pid(&self) -> Option<u32> {
        match self {
            Proc::Spawned(c) => c.id(),
            Proc::Adopted(a) => Some(a.pid()),
        }
    }

    async fn exited(&mut self) -> String {
        match self {
            Proc::Spawned(c) => match c.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            },
            Proc::Adopted(a) => a.exited().await,
        }
    }

    async fn stop(&mut self) {
        match self {
            Proc::Spawned(c) => stop(c).await,
            Proc::Adopted(a) => a.stop(STOP_GRACE).await,
        }
    }
}

/// Keeps one component running as `rx` describes it.
async fn supervise<R: Runner>(
    comp: Component,
    mut rx: watch::Receiver<Option<Launch>>,
    paths: Paths,
    state: Shared,
    dirty: Rc<Notify>,
    runner: R,
    left: Option<Left<R::Child>>,
) {
    let mut backoff = BACKOFF_START;
    let mut adopted = match left {
        Some(Left::Adopt(c)) => Some(c),
        Some(Left::Replace(mut c)) => {
            c.stop().await;
            None
        }
        None => None,
    };
    loop {
        let Some(launch) = rx.borrow_and_update().clone() else {
            update(&state, &dirty, comp, |s| {
                s.phase = Phase::Stopped;
                s.pid = None;
                s.healthy = false;
            });
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let started = Instant::now();
        // A process the predecessor left running as this launch says
        // runs on: no dependency to wait for, nothing to write.
        let mut child = if let Some(c) = adopted.take() {
            c
        } else {
            let binary = find_binary(&paths, launch.bundle.as_deref(), comp.name());
            let refusal = launch.refused.clone().or_else(|| {
                binary.is_none().then(|| {
                    let bundle = launch.bundle.as_ref().map(|b| format!("{}, ", b.display())).unwrap_or_default();
                    format!("no {comp} binary in {}, {bundle}or PATH", paths.bin_dir().display())
                })
            });
            if let Some(msg) = refusal {
                update(&state, &dirty, comp, |s| {
                    s.phase = Phase::Failed;
                    s.healthy = false;
                    s.message = Some(msg.clone());
                });
                // Look again later: the binary may be installed meanwhile.
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = sleep(BACKOFF_MAX) => {}
                }
                continue;
            }
            let binary = binary.expect("checked above");
            // Dependencies first (a restart waits too: an API server is no use
            // without its etcd).
            let mut waiting_noted = false;
            while let Some(dep) = launch.after.iter().find(|d| !healthy(&state, **d)) {
                if !waiting_noted {
                    let msg = format!("waiting for {dep} to be healthy");
                    update(&state, &dirty, comp, |s| {
                        s.phase = Phase::Starting;
                        s.healthy = false;
                        s.message = Some(msg);
                    });
                    waiting_noted = true;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return } else { break },
                    _ = sleep(Duration::from_millis(200)) => {}
                }
            }
            if rx.has_changed().unwrap_or(true) {
                continue;
            }
            let started = apply_files(&launch.files)
                .map_err(|e| format!("cannot write its config: {e}"))
                .and_then(|_| launch.cgroup.as_deref().map(crate::host::cgroups::ensure).unwrap_or(Ok(())))
                .and_then(|()| {
                    let started = runner.start(&binary, &launch.args, comp);
                    started.map_err(|e| format!("cannot start {}: {e}", binary.display()))
                });
            match started {
                Ok(c) => c,
                Err(msg) => {
                    warn!(component = %comp, error = %msg);
                    update(&state, &dirty, comp, |s| {
                        s.phase = Phase::Backoff;
                        s.message = Some(msg.clone());
                    });
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        };
        let pid = child.pid();
        info!(component = %comp, pid, "started");
        // Healthy only once its probe says so.
        update(&state, &dirty, comp, |s| {
            s.phase = Phase::Starting;
            s.healthy = false;
            s.pid = pid;
            s.message = None;
            s.version = launch.version.clone();
        });
        tokio::select! {
            exit = child.exited() => {
                warn!(component = %comp, %exit, "exited; restarting after {backoff:?}");
                if started.elapsed() > STABLE_AFTER {
                    backoff = BACKOFF_START;
                }
                update(&state, &dirty, comp, |s| {
                    s.phase = Phase::Backoff;
                    s.healthy = false;
                    s.pid = None;
                    s.restarts += 1;
                    s.last_exit = Some(exit.clone());
                });
                tokio::select! {
                    _ = sleep(backoff) => {}
                    r = rx.changed() => if r.is_err() { return },
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            r = rx.changed() => {
                if rx.borrow().is_some() {
                    info!(component = %comp, "stopping for a configuration change");
                } else {
                    info!(component = %comp, "stopping");
                }
                child.stop().await;
                backoff = BACKOFF_START;
                if r.is_err() {
                    update(&state, &dirty, comp, |s| { s.phase = Phase::Stopped; s.pid = None; s.healthy = false; });
                    return;
                }
            }
        }
    }
}

fn spawn(
    binary: &std::path::Path,
    args: &[String],
    paths: &Paths,
    comp: Component,
) -> std::io::Result<tokio::process::Child> {
    let log_path = paths.component_log(comp.name());
    crate::host::fs::create_dir_all(&paths.log_dir(), 0o755).map_err(std::io::Error::other)?;
    if comp == Component::Etcd {
        let empty = std::fs::read_dir(paths.etcd_data_dir()).map(|mut d| d.next().is_none()).unwrap_or(true);
        if empty && paths.etcd_bootstrapped_marker().exists() {
            // The first master starting again with `new` on empty data would
            // found a second, empty cluster under the same name (a split
            // brain); a joined one (`existing`) would crash-loop on "member
            // has already been bootstrapped". Either way: say what happened.
            return Err(std::io::Error::other(format!(
                "{} is empty, but this member was bootstrapped before: its data is lost; if other masters are \
                 healthy, `hakube reset` this node and join it again; if it was the cluster's only member, `hakube \
                 reset` it and make it the first master again from a snapshot with `hakube etcd restore`",
                paths.etcd_data_dir().display()
            )));
        }
        crate::host::fs::create_dir_all(&paths.etcd_data_dir(), 0o700).map_err(std::io::Error::other)?;
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = Command::new(binary);
    cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
    // What a component runs in turn comes from where it came from first:
    // containerd's shim, and the shim's runc, from the same bundle.
    if let Some(dir) = binary.parent() {
        let rest = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest)));
        if let Ok(path) = path {
            cmd.env("PATH", path);
        }
    }
    // SAFETY: prctl and umask are async-signal-safe. If the agent dies, its
    // children get SIGTERM rather than running on unsupervised. Components
    // get the umask a service gets from systemd (022), whatever the agent
    // was started with (a join script's 077): containerd makes its image
    // snapshots with it, and under 077 a container's root directory is
    // root's alone, so a pod that runs as any other user cannot start
    // ("stat /bin/sh: permission denied").
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
}

async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    if timeout(STOP_GRACE, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

type ProbeArgs = (Paths, ClusterConfig, Shared, Rc<Notify>, watch::Receiver<bool>);

/// Probes one component: often until it is healthy, then at a steady pace.
async fn probe_loop(comp: Component, mut prober: Prober, (paths, cfg, state, dirty, mut stop): ProbeArgs) {
    let describe = prober.describe();
    update(&state, &dirty, comp, |s| s.probe = describe);
    // containerd counts as healthy once the bundle's images are in it.
    let mut imported_for: Option<u32> = None;
    loop {
        let seen = state.borrow().components.get(comp.name()).map(|c| (c.phase, c.healthy, c.pid));
        let (phase, was_healthy, pid) = seen.unwrap_or((Phase::Stopped, false, None));
        // Only a probe of the process the state names counts (not one that
        // is being replaced after a reload).
        if matches!(phase, Phase::Starting | Phase::Running) && pid.is_some() {
            let mut result = prober.check(&paths).await;
            if comp == Component::Etcd && result.is_ok() && !paths.etcd_bootstrapped_marker().exists() {
                if let Err(e) =
                    write_atomic(&paths.etcd_bootstrapped_marker(), cfg.node.name.as_str().as_bytes(), 0o644)
                {
                    warn!(error = %e, "cannot record that etcd was bootstrapped");
                }
            }
            // Only where kubelet runs pods: nothing else uses the images,
            // and importing them costs minutes on a slow host.
            if comp == Component::Containerd && cfg.has(Component::Kubelet) && result.is_ok() && imported_for != pid {
                let (p, bundle) = (paths.clone(), cfg.node.bundle.clone());
                let n = bundle.as_deref().map_or(0, |b| crate::runtime::images::archives(b).len());
                update(&state, &dirty, comp, |s| {
                    if s.pid == pid {
                        s.message = Some(format!("importing the bundle's {n} image archive(s)"));
                    }
                });
                result = match tokio::task::spawn_blocking(move || {
                    crate::runtime::images::import_bundle(&p, bundle.as_deref())
                })
                .await
                {
                    Ok(Ok(_)) => {
                        imported_for = pid;
                        Ok(())
                    }
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(e.to_string()),
                };
            }
            let healthy = result.is_ok();
            if let Err(e) = &result {
                if was_healthy {
                    warn!(component = %comp, error = %e, "unhealthy");
                }
            }
            let message = result.err();
            update(&state, &dirty, comp, |s| {
                if matches!(s.phase, Phase::Starting | Phase::Running) && s.pid == pid {
                    s.phase = if healthy { Phase::Running } else { s.phase };
                    s.healthy = healthy;
                    s.message = message;
                }
            });
        }
        let pace = if was_healthy { Duration::from_secs(2) } else { Duration::from_millis(200) };
        tokio::select! {
            _ = stop.changed() => return,
            _ = sleep(pace) => {}
        }
    }
}

#[cfg(test)]
mod tests;
