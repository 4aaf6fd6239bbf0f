//! Starting the agent and waiting for it: what `install` and `join` do once
//! the node's files are written. A running agent is told to reload
//! (SIGHUP); otherwise the systemd unit is started, or the agent detached.
//! The wait reads `state.json` until every component of the node is
//! healthy, and fails early, naming why, when the agent died, systemd gave
//! up on the unit, or the agent refused the new configuration.

use std::path::Path;
use std::time::{Duration, Instant};

use super::state::{Phase, State};
use crate::config::{self, Component};
use crate::host::clock::now_secs;
use crate::host::paths::Paths;
use crate::host::process::{self, PidFile};
use crate::host::systemd;
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot signal the running agent (pid {pid}) to reload: {source}")]
    Signal { pid: u32, source: nix::Error },
    #[error("cannot start the agent ({exe}): {reason}")]
    Start { exe: String, reason: String },
    #[error("{0}")]
    Systemd(String),
    #[error("the agent (pid {pid}) exited during start-up; its log {log} ends with:\n{tail}")]
    Exited { pid: u32, log: String, tail: String },
    #[error(
        "hakube.service is {state}: the agent does not start; `journalctl -u hakube.service` and its log {log} say why:\n{tail}"
    )]
    UnitFailed { state: String, log: String, tail: String },
    #[error("the running agent refused the new configuration and keeps the old one: {reason}")]
    ReloadRefused { reason: String },
    #[error("{0}")]
    Purged(String),
    #[error(
        "the node did not become healthy within {secs}s: {problems}\n{logs}\n(the agent keeps trying; `hakube status` shows progress)"
    )]
    Unhealthy { secs: u64, problems: String, logs: String },
    #[error(transparent)]
    Fs(#[from] crate::host::fs::FsError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// What to wait for after starting or reloading the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A new agent with this pid.
    Started(u32),
    /// Whichever agent systemd starts, from this time (unix seconds) on.
    Unit { since: u64 },
    /// The running agent, once it has handled one more reload.
    Reloaded { pid: u32, reloads: u64 },
    /// The running agent's process, once the build it handed over to has
    /// started in it, from this time (unix seconds) on.
    HandedOver { pid: u32, since: u64 },
}

/// Tells a running agent to reload, or starts one. The agent's pid is read
/// here, right before the signal, not earlier (a pid read long before may
/// name another process by then).
pub fn start(paths: &Paths, use_systemd: bool) -> Result<Expect, ControlError> {
    let exe = std::env::current_exe().map_err(|e| ControlError::Start {
        exe: "hakube".into(),
        reason: format!("cannot find the binary being run: {e}"),
    })?;
    let start_err = |reason: String| ControlError::Start { exe: exe.display().to_string(), reason };
    let running = PidFile::holder(&paths.agent_pid_file());
    // The binary goes to /usr/local/bin where the unit runs it from, and on
    // a real server without systemd too: the detached agent then runs from
    // there (not from wherever the operator unpacked it), and `hakube` is on
    // PATH for the commands install suggests. Simulated roots keep theirs.
    let mut new_binary = false;
    let exe = if use_systemd || paths.is_host_root() {
        let target = paths.installed_binary();
        let bytes = std::fs::read(&exe).map_err(|e| start_err(format!("cannot read it: {e}")))?;
        new_binary = std::fs::read(&target).ok().as_deref() != Some(&bytes[..]);
        if new_binary {
            crate::host::fs::write_atomic(&target, &bytes, 0o755)?;
            crate::host::fs::write_atomic(&paths.installed_binary_marker(), b"", 0o644)?;
        }
        target
    } else {
        exe.clone()
    };
    let start_err = |reason: String| ControlError::Start { exe: exe.display().to_string(), reason };
    if use_systemd {
        systemd::systemctl(&["daemon-reload"]).map_err(ControlError::Systemd)?;
    }
    // A new binary is installed: a running agent that can hand over does
    // (SIGUSR2): the new build takes over in its process, and every
    // component it would run the same way runs on. One that cannot (an
    // older build) is restarted (below).
    if let Some(pid) = running.filter(|p| new_binary && process::catches(*p, nix::sys::signal::Signal::SIGUSR2)) {
        let since = now_secs();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGUSR2)
            .map_err(|source| ControlError::Signal { pid, source })?;
        return Ok(Expect::HandedOver { pid, since });
    }
    if use_systemd {
        // A new binary is installed and run: systemd restarts the agent
        // (the unit's KillMode=process keeps the pods). A unit file the
        // plan rewrote is read again either way.
        if running.is_none() || new_binary {
            // Before the start: the agent systemd starts records its own
            // start time, which must count.
            let since = now_secs();
            systemd::systemctl(&["enable", systemd::UNIT_NAME]).map_err(ControlError::Systemd)?;
            systemd::systemctl(&["restart", systemd::UNIT_NAME]).map_err(ControlError::Systemd)?;
            return Ok(Expect::Unit { since });
        }
    }
    if let Some(pid) = running {
        let reloads = State::read(&paths.state_file()).map(|s| s.reloads).unwrap_or(0);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGHUP)
            .map_err(|source| ControlError::Signal { pid, source })?;
        return Ok(Expect::Reloaded { pid, reloads });
    }
    let args = vec!["--root".to_owned(), paths.root().display().to_string(), "agent".to_owned()];
    let pid =
        process::spawn_detached(&exe, &args, &paths.component_log("agent")).map_err(|e| start_err(e.to_string()))?;
    Ok(Expect::Started(pid))
}

/// The components a previous agent of this root started that outlived it
/// (an agent killed outright: its children got SIGTERM from the kernel, but
/// nobody sends the SIGKILL after the grace, and an API server whose etcd
/// stopped with it has been seen to take minutes, holding its port).
/// Stopped before anything starts: SIGTERM, then SIGKILL after the grace.
/// Only processes run from a binary under this root's data directory (its
/// bundles, its bin/) or the node's bundle count: a pid read from an old
/// state may name anything by now. `keep`: the pids a predecessor handed
/// over (left running on purpose).
pub fn stop_leftovers(paths: &Paths, keep: &[u32]) {
    let Some(previous) = State::read(&paths.state_file()) else { return };
    let mut dirs = vec![paths.data_dir()];
    if let Ok(Some(c)) = crate::config::load_installed(&paths.config_file()) {
        dirs.extend(c.node.bundle.into_iter().chain(c.node.control_plane_bundle));
    }
    let ours = |pid: u32| {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| dirs.iter().any(|d| exe.starts_with(d)))
            && pid != std::process::id()
            && !keep.contains(&pid)
    };
    let left: Vec<(String, u32)> =
        previous.components.iter().filter_map(|(n, c)| Some((n.clone(), c.pid?))).filter(|(_, p)| ours(*p)).collect();
    if left.is_empty() {
        return;
    }
    let signal = |sig| {
        for (_, pid) in &left {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), sig);
        }
    };
    tracing::warn!(components = ?left, "a previous agent's components still run: stopping them first");
    signal(nix::sys::signal::Signal::SIGTERM);
    let grace = std::time::Duration::from_secs(10);
    let until = std::time::Instant::now() + grace;
    while left.iter().any(|(_, p)| ours(*p)) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if left.iter().any(|(_, p)| ours(*p)) {
        tracing::warn!("a previous agent's components outlived {grace:?} after SIGTERM: killing them");
        signal(nix::sys::signal::Signal::SIGKILL);
        while left.iter().any(|(_, p)| ours(*p))
            && std::time::Instant::now() < until + std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Where a wait stands (pure: from what `state.json` says).
#[derive(Debug, PartialEq, Eq)]
pub enum Progressing {
    Done,
    Waiting(Vec<String>),
    Failed(String),
}

pub fn judge(expect: Expect, state: Option<&State>, expected: &[Component]) -> Progressing {
    let Some(s) = state else { return Progressing::Waiting(vec!["the agent has not reported yet".into()]) };
    let current = match expect {
        Expect::Unit { since } => s.started_at >= since,
        Expect::Started(pid) => s.agent_pid == pid,
        Expect::Reloaded { pid, reloads } => s.agent_pid == pid && s.reloads > reloads,
        Expect::HandedOver { pid, since } => s.agent_pid == pid && s.started_at >= since,
    };
    if !current {
        return Progressing::Waiting(vec!["the agent has not reported yet".into()]);
    }
    if let (Expect::Reloaded { .. }, Some(reason)) = (expect, &s.reload_error) {
        return Progressing::Failed(reason.clone());
    }
    if let Some(msg) = &s.purged {
        return Progressing::Failed(msg.clone());
    }
    if s.all_healthy(expected) {
        return Progressing::Done;
    }
    let problems = expected
        .iter()
        .map(|c| match s.components.get(c.name()) {
            None => format!("{c} has not started"),
            Some(cs) if cs.phase == Phase::Running && cs.healthy => String::new(),
            Some(cs) => {
                let why = cs.message.as_deref().or(cs.last_exit.as_deref()).unwrap_or("");
                format!("{c} is {}: {why}", format!("{:?}", cs.phase).to_lowercase())
            }
        })
        .filter(|p| !p.is_empty())
        .collect();
    Progressing::Waiting(problems)
}

/// Polls `state.json` until the agent reports every component healthy.
pub fn wait_healthy(
    paths: &Paths,
    expect: Expect,
    limit: Duration,
    progress: &Progress,
) -> Result<State, ControlError> {
    let deadline = Instant::now() + limit;
    let expected = config::load_installed(&paths.config_file())?.map(|c| c.node.components).unwrap_or_default();
    let agent_log = paths.component_log("agent");
    let mut last_report = Instant::now();
    // systemctl is a process of its own, and PID 1's time: asked once a
    // second, not on every look at the state.
    let mut unit_checked = Instant::now() - Duration::from_secs(1);
    let mut restarts_at_start = None;
    loop {
        let state = State::read(&paths.state_file());
        let problems = match judge(expect, state.as_ref(), &expected) {
            Progressing::Done => return Ok(state.expect("judged done on a state")),
            Progressing::Failed(reason) if state.as_ref().is_some_and(|s| s.purged.is_some()) => {
                return Err(ControlError::Purged(reason))
            }
            Progressing::Failed(reason) => return Err(ControlError::ReloadRefused { reason }),
            Progressing::Waiting(p) => p,
        };
        match expect {
            Expect::Started(pid) | Expect::Reloaded { pid, .. } | Expect::HandedOver { pid, .. }
                if !process::alive(pid) =>
            {
                return Err(ControlError::Exited {
                    pid,
                    log: agent_log.display().to_string(),
                    tail: tail(&agent_log, 15),
                });
            }
            Expect::Unit { .. } if unit_checked.elapsed() >= Duration::from_secs(1) => {
                unit_checked = Instant::now();
                if let Some(unit) = systemd::unit_state(systemd::UNIT_NAME) {
                    let first = *restarts_at_start.get_or_insert(unit.restarts);
                    if let Some(state) = unit_gave_up(&unit, first) {
                        return Err(ControlError::UnitFailed {
                            state,
                            log: agent_log.display().to_string(),
                            tail: tail(&agent_log, 15),
                        });
                    }
                }
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            let logs: Vec<_> = expected
                .iter()
                .map(|c| {
                    let log = paths.component_log(c.name());
                    format!("--- {} (last lines)\n{}", log.display(), tail(&log, 10))
                })
                .collect();
            return Err(ControlError::Unhealthy {
                secs: limit.as_secs(),
                problems: problems.join("; "),
                logs: logs.join("\n"),
            });
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            progress.note(format!("  still waiting: {}", problems.join("; ")));
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Restarts of the unit while waiting that mean the agent crash-loops:
/// with `Restart=always` and no start limit the unit never reaches `failed`,
/// so three restarts (15 s of RestartSec at least) are the agent failing.
const CRASH_LOOP_RESTARTS: u32 = 3;

/// Whether the unit shows the agent will not come up by itself: `failed`,
/// or restarted [`CRASH_LOOP_RESTARTS`] times since the wait began.
fn unit_gave_up(unit: &systemd::UnitState, restarts_at_start: u32) -> Option<String> {
    let restarts = unit.restarts.saturating_sub(restarts_at_start);
    if unit.active == "failed" {
        Some("failed".into())
    } else if restarts >= CRASH_LOOP_RESTARTS {
        Some(format!("{} and restarted {restarts} times while install waited (the agent crash-loops)", unit.active))
    } else {
        None
    }
}

/// The last `n` lines of a log, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::state::ComponentState;

    fn state(pid: u32, reloads: u64, healthy: bool, reload_error: Option<&str>) -> State {
        let c = ComponentState {
            phase: if healthy { Phase::Running } else { Phase::Starting },
            healthy,
            probe: String::new(),
            pid: Some(7),
            restarts: 0,
            since: 0,
            last_exit: None,
            message: (!healthy).then(|| "GET /readyz: answered 500".to_owned()),
            version: None,
        };
        State {
            agent_pid: pid,
            started_at: 100,
            reloads,
            reload_error: reload_error.map(str::to_owned),
            purged: None,
            load_balancer: None,
            leading_since: None,
            vip: Default::default(),
            hakube: None,
            components: [("etcd".to_owned(), c)].into(),
            versions: Default::default(),
        }
    }

    #[test]
    fn a_refused_reload_is_a_failure_not_a_success() {
        let expect = Expect::Reloaded { pid: 1, reloads: 3 };
        let refused = state(1, 4, true, Some("cluster.yaml: node.bundle: invalid"));
        assert_eq!(
            judge(expect, Some(&refused), &[Component::Etcd]),
            Progressing::Failed("cluster.yaml: node.bundle: invalid".into())
        );
        let done = state(1, 4, true, None);
        assert_eq!(judge(expect, Some(&done), &[Component::Etcd]), Progressing::Done);
        let not_yet = state(1, 3, true, None);
        assert!(matches!(judge(expect, Some(&not_yet), &[Component::Etcd]), Progressing::Waiting(_)));
    }

    #[test]
    fn a_state_without_the_expected_components_is_not_healthy() {
        let s = state(1, 0, true, None);
        let w = judge(Expect::Started(1), Some(&s), &[Component::Etcd, Component::Kubelet]);
        assert_eq!(w, Progressing::Waiting(vec!["kubelet has not started".into()]));
        let sick = state(1, 0, false, None);
        let w = judge(Expect::Started(1), Some(&sick), &[Component::Etcd]);
        assert_eq!(w, Progressing::Waiting(vec!["etcd is starting: GET /readyz: answered 500".into()]));
        assert!(matches!(judge(Expect::Started(2), Some(&s), &[]), Progressing::Waiting(_)), "another agent's state");
        assert!(
            matches!(judge(Expect::Unit { since: 101 }, Some(&s), &[]), Progressing::Waiting(_)),
            "an older agent's"
        );
    }

    #[test]
    fn a_crash_looping_unit_is_judged_by_its_restarts_not_a_failed_state_it_never_reaches() {
        let unit = |active: &str, restarts| systemd::UnitState { active: active.into(), restarts };
        assert_eq!(unit_gave_up(&unit("active", 7), 7), None, "restarts from before the wait do not count");
        assert_eq!(unit_gave_up(&unit("activating", 9), 7), None);
        let why = unit_gave_up(&unit("activating", 10), 7).expect("three restarts while waiting");
        assert!(why.contains("restarted 3 times") && why.contains("crash-loops"), "{why}");
        assert_eq!(unit_gave_up(&unit("failed", 0), 0).as_deref(), Some("failed"));
    }
}
