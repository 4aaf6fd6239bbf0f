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
use super::probe::Prober;
use super::state::{ComponentState, Phase, State};
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
                bundle: c.node.bundle.clone(),
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
fn start_lb(paths: &Paths, cfg: &ClusterConfig) -> std::io::Result<crate::lb::Handle> {
    let (p, c) = (paths.clone(), cfg.clone());
    let port = cfg.node.api_server_port;
    crate::lb::spawn(crate::lb::Options::new(paths, cfg), move || {
        super::masters::read(&p, &c)
            .into_iter()
            .map(|m| crate::lb::Target {
                name: if m.name.is_empty() { m.address.to_string() } else { m.name },
                addr: std::net::SocketAddr::new(m.address, port),
            })
            .collect()
    })
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(paths: Paths) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // Signal handlers first: a SIGHUP from an install that finds the pid
    // file must never meet the default action (death).
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let _pid = PidFile::acquire(&paths.agent_pid_file())
        .with_context(|| format!("cannot start the agent for root {}", paths.root().display()))?;
    let config_file = paths.config_file();
    let load = move || -> anyhow::Result<ClusterConfig> {
        config::load_installed(&config_file)?
            .with_context(|| format!("{} does not exist: run `hakube install` first", config_file.display()))
    };
    let mut cfg = load()?;
    info!(root = %paths.root().display(), node = %cfg.node.name, "agent starting");
    let mut versions = VersionCache::default();
    let observe = |paths: &Paths, cfg: &ClusterConfig, versions: &mut VersionCache| {
        let (facts, problems) = facts::observe(paths, cfg, versions);
        for (comp, why) in &problems {
            warn!(component = %comp, "cannot run: {why}");
        }
        launches(paths, cfg, &facts, &problems)
    };

    let state: Shared =
        Rc::new(RefCell::new(State { agent_pid: std::process::id(), started_at: now_secs(), ..State::default() }));
    let dirty = Rc::new(Notify::new());
    let local = tokio::task::LocalSet::new();

    local
        .run_until(async move {
            // State writer: one atomic write per burst of changes.
            {
                let (state, dirty, path) = (state.clone(), dirty.clone(), paths.state_file());
                tokio::task::spawn_local(async move {
                    loop {
                        let json = serde_json::to_vec_pretty(&*state.borrow()).expect("state serializes");
                        if let Err(e) = write_atomic(&path, &json, 0o644) {
                            warn!(error = %e, "cannot record state");
                        }
                        dirty.notified().await;
                    }
                });
            }

            type Supervised = (watch::Sender<Option<Launch>>, tokio::task::JoinHandle<()>);
            let mut senders: BTreeMap<Component, Supervised> = BTreeMap::new();
            let start = |comp: Component, launch: Launch, senders: &mut BTreeMap<_, _>| {
                let (tx, rx) = watch::channel(Some(launch));
                let runner = Processes { paths: paths.clone() };
                let task =
                    tokio::task::spawn_local(supervise(comp, rx, paths.clone(), state.clone(), dirty.clone(), runner));
                senders.insert(comp, (tx, task));
            };
            // A node the cluster purged runs nothing until it is reset.
            let mut purged_before = std::fs::read_to_string(paths.purged_marker()).ok();
            if purged_before.is_none() {
                let told = super::converge::at_start(&paths, &cfg).await;
                if let Some(msg) = told.purged {
                    let _ = write_atomic(&paths.purged_marker(), format!("{msg}\n").as_bytes(), 0o644);
                    purged_before = Some(msg);
                }
                // A node that was down while the settings changed (a new
                // load-balancer address) catches up before anything starts.
                if let Some(spec) = told.settings.filter(|s| *s != cfg.cluster) {
                    let mut next = cfg.clone();
                    next.cluster = spec;
                    match super::converge::converge(&paths, &next).and_then(|()| load().map_err(|e| e.to_string())) {
                        Ok(new) => {
                            info!("caught up with the cluster-wide settings changed while this node was away");
                            cfg = new;
                        }
                        Err(e) => warn!(error = %e, "not caught up with the cluster-wide settings before starting"),
                    }
                }
            }
            // The node-local load balancer, before anything that uses it
            // (kubelet), for as long as the agent runs.
            let mut lb = None;
            if purged_before.is_none() && cfg.runs_local_lb() {
                match start_lb(&paths, &cfg) {
                    Ok(h) => {
                        let (state, dirty, mut rx) = (state.clone(), dirty.clone(), h.status.clone());
                        tokio::task::spawn_local(async move {
                            loop {
                                state.borrow_mut().load_balancer = Some(rx.borrow_and_update().clone());
                                dirty.notify_one();
                                if rx.changed().await.is_err() {
                                    break;
                                }
                            }
                        });
                        lb = Some(h);
                    }
                    Err(e) => warn!(error = %e, "cannot start the node-local load balancer"),
                }
            }
            if let Some(msg) = &purged_before {
                warn!("{}", msg.trim());
                state.borrow_mut().purged = Some(msg.trim().to_owned());
                dirty.notify_one();
            } else {
                for (comp, launch) in observe(&paths, &cfg, &mut versions) {
                    start(comp, launch, &mut senders);
                }
            }
            // The logs under logs/ stay under their cap for as long as the agent runs.
            let log_dir = paths.log_dir();
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
            // The election lives as long as the agent (a reload must not
            // hand the leadership over); the rest starts again on every
            // reload, so it sees the current certificates and config.
            let (agent_stop_tx, agent_stop_rx) = watch::channel(false);
            let (view_tx, view_rx) = watch::channel(crate::cluster::election::View::default());
            let election = cfg.has(Component::Etcd).then(|| {
                // Fit to lead while its kube-apiserver (if it runs one) is healthy.
                let fit = {
                    let state = state.clone();
                    let needs_apiserver = cfg.has(Component::KubeApiserver);
                    move || !needs_apiserver || healthy(&state, Component::KubeApiserver)
                };
                tokio::task::spawn_local(crate::cluster::election::run(
                    paths.clone(),
                    cfg.clone(),
                    fit,
                    crate::cluster::election::Yield::default(),
                    view_tx,
                    agent_stop_rx,
                ))
            });
            let applied = Rc::new(watch::channel(0i64).0);
            let purged = Rc::new(watch::channel(None::<String>).0);
            let mut purged_rx = purged.subscribe();
            let (reload_tx, mut reload_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let node_tasks = |cfg: &ClusterConfig| {
                let (stop_tx, stop_rx) = watch::channel(false);
                for comp in cfg.node.components.iter().copied() {
                    let prober = Prober::new(comp, cfg, &paths);
                    let args = (paths.clone(), cfg.clone(), state.clone(), dirty.clone(), stop_rx.clone());
                    tokio::task::spawn_local(probe_loop(comp, prober, args));
                }
                let sync = super::converge::run(
                    paths.clone(),
                    cfg.clone(),
                    applied.clone(),
                    reload_tx.clone(),
                    purged.clone(),
                    stop_rx.clone(),
                );
                tokio::task::spawn_local(sync);
                if cfg.has(Component::Etcd) {
                    use crate::cluster::{controller, heartbeat};
                    tokio::task::spawn_local(crate::api::run(paths.clone(), cfg.clone(), stop_rx.clone()));
                    let beat = heartbeat::run(paths.clone(), cfg.clone(), applied.subscribe(), stop_rx.clone());
                    tokio::task::spawn_local(beat);
                    let control = controller::run(paths.clone(), cfg.clone(), view_rx.clone(), stop_rx.clone());
                    tokio::task::spawn_local(control);
                }
                if cfg.has(Component::Kubelet) {
                    tokio::task::spawn_local(super::podnet::run(paths.clone(), cfg.clone(), stop_rx));
                }
                stop_tx
            };
            let mut stop_tx = if purged_before.is_some() { watch::channel(false).0 } else { node_tasks(&cfg) };

            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = purged_rx.changed() => {
                        let Some(msg) = purged_rx.borrow_and_update().clone() else { continue };
                        // Stop everything, touch nothing of the cluster, and
                        // keep saying why until the node is reset.
                        warn!("{msg}: stopping every component");
                        if let Err(e) = write_atomic(&paths.purged_marker(), format!("{msg}\n").as_bytes(), 0o644) {
                            warn!(error = %e, "cannot record the purge");
                        }
                        let _ = stop_tx.send(true);
                        let _ = agent_stop_tx.send(true);
                        for (tx, _) in senders.values() {
                            let _ = tx.send(None);
                        }
                        if let Some(h) = lb.take() {
                            h.stop();
                        }
                        state.borrow_mut().purged = Some(msg);
                        dirty.notify_one();
                        // The cluster has given its pods to other nodes (a
                        // StatefulSet's may run elsewhere already): its
                        // containers, which outlive kubelet and containerd,
                        // go too, once those two have stopped.
                        let (state, paths) = (state.clone(), paths.clone());
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
                    _ = async { tokio::select! { _ = hup.recv() => {}, _ = reload_rx.recv() => {} } } => {
                        if state.borrow().purged.is_some() {
                            warn!("this node was purged: a reload changes nothing until it is reset");
                            continue;
                        }
                        match load() {
                            Ok(new) => {
                                cfg = new;
                                let wanted = observe(&paths, &cfg, &mut versions);
                                let running = senders.iter().map(|(c, (tx, _))| (*c, tx.borrow().clone())).collect();
                                let plan = reload_plan(&running, wanted);
                                let _ = stop_tx.send(true);
                                stop_tx = node_tasks(&cfg);
                                for (comp, change) in plan {
                                    match change {
                                        Change::Start(launch) => start(comp, launch, &mut senders),
                                        Change::Relaunch(next) => {
                                            // Not healthy until restarted: whoever waits on this
                                            // reload must not see the old process's health.
                                            update(&state, &dirty, comp, |s| {
                                                s.phase = Phase::Starting;
                                                s.healthy = false;
                                                s.pid = None;
                                            });
                                            let _ = senders[&comp].0.send(next);
                                        }
                                    }
                                }
                                info!("configuration reloaded");
                                state.borrow_mut().reload_error = None;
                            }
                            Err(e) => {
                                let reason = format!("{e:#}");
                                warn!(error = %reason, "reload refused: keeping the running configuration");
                                state.borrow_mut().reload_error = Some(reason);
                            }
                        }
                        state.borrow_mut().reloads += 1;
                        dirty.notify_one();
                    }
                }
            }
            // Stop in reverse start order: kubelet and the control plane
            // before the etcd they write to.
            info!("stopping components");
            let _ = stop_tx.send(true);
            let _ = agent_stop_tx.send(true);
            if let Some(e) = election {
                let _ = timeout(Duration::from_secs(6), e).await;
            }
            for (comp, (tx, task)) in senders.into_iter().rev() {
                let _ = tx.send(None);
                drop(tx);
                if timeout(STOP_GRACE + Duration::from_secs(2), task).await.is_err() {
                    warn!(component = %comp, "did not stop in time");
                }
            }
            if let Some(h) = lb.take() {
                h.stop();
            }
            let json = serde_json::to_vec_pretty(&*state.borrow()).expect("state serializes");
            let _ = write_atomic(&paths.state_file(), &json, 0o644);
            info!("agent stopped");
        })
        .await;
    Ok(())
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

impl Runner for Processes {
    type Child = tokio::process::Child;
    fn start(&self, binary: &std::path::Path, args: &[String], comp: Component) -> std::io::Result<Self::Child> {
        spawn(binary, args, &self.paths, comp)
    }
}

impl Running for tokio::process::Child {
    fn pid(&self) -> Option<u32> {
        self.id()
    }

    async fn exited(&mut self) -> String {
        match self.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        }
    }

    async fn stop(&mut self) {
        stop(self).await
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
) {
    let mut backoff = BACKOFF_START;
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
        let prepared = apply_files(&launch.files)
            .map_err(|e| format!("cannot write its config: {e}"))
            .and_then(|_| launch.cgroup.as_deref().map(crate::host::cgroups::ensure).unwrap_or(Ok(())));
        if let Err(msg) = prepared {
            warn!(component = %comp, error = %msg);
            update(&state, &dirty, comp, |s| {
                s.phase = Phase::Backoff;
                s.message = Some(msg.clone());
            });
            sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        let started = Instant::now();
        let mut child = match runner.start(&binary, &launch.args, comp) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start {}: {e}", binary.display());
                warn!(component = %comp, error = %msg);
                update(&state, &dirty, comp, |s| {
                    s.phase = Phase::Backoff;
                    s.message = Some(msg.clone());
                });
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
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
                 healthy, `hakube reset` this node and join it again; if it was the cluster's only member, restore \
                 its data from an etcd snapshot (`etcdutl snapshot restore`) if one exists",
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
    // SAFETY: prctl is async-signal-safe. If the agent dies, its children
    // get SIGTERM rather than running on unsupervised.
    unsafe {
        cmd.pre_exec(|| {
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
