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

use super::state::{now_secs, ComponentState, Phase, State};
use crate::config::{self, ClusterConfig, Component};
use crate::etcd;
use crate::host::fs::write_atomic;
use crate::host::paths::Paths;
use crate::host::process::PidFile;
use crate::kube::components::{find_binary, specs, ComponentSpec};

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
    fingerprint: String,
}

/// Digest of a spec's command line and the content of its input files: when
/// it changes, the process must restart to see the change.
pub fn fingerprint(spec: &ComponentSpec) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for a in &spec.args {
        ctx.update(a.as_bytes());
        ctx.update(b"\0");
    }
    for f in &spec.inputs {
        ctx.update(&std::fs::read(f).unwrap_or_default());
        ctx.update(b"\0");
    }
    crate::pki::hex(&ctx.finish().as_ref()[..12])
}

fn launches(paths: &Paths, c: &ClusterConfig) -> BTreeMap<Component, Launch> {
    specs(paths, c)
        .into_iter()
        .map(|s| {
            let launch = Launch { bundle: c.node.bundle.clone(), fingerprint: fingerprint(&s), args: s.args };
            (s.component, launch)
        })
        .collect()
}

type Shared = Rc<RefCell<State>>;

fn update(state: &Shared, dirty: &Notify, comp: Component, f: impl FnOnce(&mut ComponentState)) {
    let mut st = state.borrow_mut();
    let probe = if comp == Component::Etcd { "etcd" } else { "process" };
    let entry = st.components.entry(comp.name().to_owned()).or_insert_with(|| ComponentState {
        phase: Phase::Stopped,
        healthy: false,
        probe: probe.into(),
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

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(paths: Paths) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let _pid = PidFile::acquire(&paths.agent_pid_file())
        .with_context(|| format!("cannot start the agent for root {}", paths.root().display()))?;
    let config_file = paths.config_file();
    let load = move || -> anyhow::Result<ClusterConfig> {
        config::load_installed(&config_file)?
            .with_context(|| format!("{} does not exist: run `hakube install` first", config_file.display()))
    };
    let mut cfg = load()?;
    info!(root = %paths.root().display(), node = %cfg.node.name, "agent starting");

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
                let task = tokio::task::spawn_local(supervise(comp, rx, paths.clone(), state.clone(), dirty.clone()));
                senders.insert(comp, (tx, task));
            };
            for (comp, launch) in launches(&paths, &cfg) {
                start(comp, launch, &mut senders);
            }
            if cfg.has(Component::Etcd) {
                tokio::task::spawn_local(probe_etcd(paths.clone(), cfg.clone(), state.clone(), dirty.clone()));
            }
            // The join API and the cluster duties start again on every
            // reload, so they serve the current certificate and config.
            let cluster_tasks = |cfg: &ClusterConfig| {
                let (stop_tx, stop_rx) = watch::channel(false);
                if cfg.has(Component::Etcd) {
                    tokio::task::spawn_local(super::cluster::serve_join_api(paths.clone(), cfg.clone(), stop_rx.clone()));
                    tokio::task::spawn_local(super::cluster::duties(paths.clone(), cfg.clone(), stop_rx));
                }
                stop_tx
            };
            let mut stop_tx = cluster_tasks(&cfg);

            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => {
                        match load() {
                            Ok(new) => {
                                cfg = new;
                                let wanted = launches(&paths, &cfg);
                                for (comp, (tx, _)) in &senders {
                                    let next = wanted.get(comp).cloned();
                                    if *tx.borrow() != next {
                                        // Not healthy until restarted: whoever waits on this
                                        // reload must not see the old process's health.
                                        update(&state, &dirty, *comp, |s| {
                                            s.phase = Phase::Starting;
                                            s.healthy = false;
                                            s.pid = None;
                                        });
                                        let _ = tx.send(next);
                                    }
                                }
                                let _ = stop_tx.send(true);
                                stop_tx = cluster_tasks(&cfg);
                                for (comp, launch) in wanted {
                                    if !senders.contains_key(&comp) {
                                        start(comp, launch, &mut senders);
                                    }
                                }
                                info!("configuration reloaded");
                            }
                            Err(e) => warn!(error = %format!("{e:#}"), "reload refused: keeping the running configuration"),
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
            for (comp, (tx, task)) in senders.into_iter().rev() {
                let _ = tx.send(None);
                drop(tx);
                if timeout(STOP_GRACE + Duration::from_secs(2), task).await.is_err() {
                    warn!(component = %comp, "did not stop in time");
                }
            }
            let json = serde_json::to_vec_pretty(&*state.borrow()).expect("state serializes");
            let _ = write_atomic(&paths.state_file(), &json, 0o644);
            info!("agent stopped");
        })
        .await;
    Ok(())
}

/// Keeps one component running as `rx` describes it.
async fn supervise(
    comp: Component,
    mut rx: watch::Receiver<Option<Launch>>,
    paths: Paths,
    state: Shared,
    dirty: Rc<Notify>,
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
        let Some(binary) = find_binary(&paths, launch.bundle.as_deref(), comp.name()) else {
            let msg = format!("no {comp} binary in {} or PATH", paths.bin_dir().display());
            update(&state, &dirty, comp, |s| {
                s.phase = Phase::Failed;
                s.message = Some(msg.clone());
            });
            // Look again later: the binary may be installed meanwhile.
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = sleep(BACKOFF_MAX) => {}
            }
            continue;
        };
        let started = Instant::now();
        let child = spawn(&binary, &launch.args, &paths, comp);
        let mut child = match child {
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
        let pid = child.id();
        info!(component = %comp, pid, "started");
        update(&state, &dirty, comp, |s| {
            s.phase = if comp == Component::Etcd { Phase::Starting } else { Phase::Running };
            s.healthy = comp != Component::Etcd;
            s.pid = pid;
            s.message = None;
        });
        tokio::select! {
            status = child.wait() => {
                let exit = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
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
                info!(component = %comp, "stopping for a configuration change");
                stop(&mut child).await;
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
        if empty && paths.etcd_bootstrapped_marker().exists() && args.iter().any(|a| a == "--initial-cluster-state=new")
        {
            // Starting again with `new` on empty data would found a second,
            // empty cluster under the same name: a split brain.
            return Err(std::io::Error::other(format!(
                "{} is empty, but this member was bootstrapped before: its data is lost; restore it from a snapshot, \
                 or `hakube reset` this node and join it again",
                paths.etcd_data_dir().display()
            )));
        }
        crate::host::fs::create_dir_all(&paths.etcd_data_dir(), 0o700).map_err(std::io::Error::other)?;
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = Command::new(binary);
    cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
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

/// Probes etcd: often until it is first healthy, then at a steady pace.
async fn probe_etcd(paths: Paths, cfg: ClusterConfig, state: Shared, dirty: Rc<Notify>) {
    let endpoint = cfg.etcd_client_url();
    let mut client = None;
    loop {
        let seen = state.borrow().components.get("etcd").map(|c| (c.phase, c.healthy, c.pid));
        let (phase, was_healthy, pid) = seen.unwrap_or((Phase::Stopped, false, None));
        // Only a probe of the process the state names counts (not one that
        // is being replaced after a reload).
        if matches!(phase, Phase::Starting | Phase::Running) && pid.is_some() {
            let result = async {
                if client.is_none() {
                    let creds = etcd::Credentials::load(&paths, "etcd/healthcheck-client")?;
                    client =
                        Some(etcd::connect(std::slice::from_ref(&endpoint), &creds, Duration::from_secs(2)).await?);
                }
                etcd::check_health(client.as_mut().expect("connected"), &endpoint).await
            }
            .await;
            let healthy = result.is_ok();
            if healthy && !paths.etcd_bootstrapped_marker().exists() {
                if let Err(e) =
                    write_atomic(&paths.etcd_bootstrapped_marker(), cfg.node.name.as_str().as_bytes(), 0o644)
                {
                    warn!(error = %e, "cannot record that etcd was bootstrapped");
                }
            }
            if let Err(e) = &result {
                client = None;
                if was_healthy {
                    warn!(error = %e, "etcd is unhealthy");
                }
            }
            let message = result.err().map(|e| e.to_string());
            update(&state, &dirty, Component::Etcd, |s| {
                if matches!(s.phase, Phase::Starting | Phase::Running) && s.pid == pid {
                    s.phase = if healthy { Phase::Running } else { s.phase };
                    s.healthy = healthy;
                    s.message = message;
                }
            });
        }
        let pace = if was_healthy { Duration::from_secs(2) } else { Duration::from_millis(100) };
        sleep(pace).await;
    }
}
