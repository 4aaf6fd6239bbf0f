//! An agent moving to another hakube build without stopping what it runs.
//!
//! At its node's step of an upgrade whose bundle carries another hakube
//! ([`crate::cluster::upgrade::Build`]), the agent resigns what it leads,
//! stops its own tasks, lets its node-local balancer finish the
//! connections it relays, and `exec`s the new binary in its own process:
//! the same pid (systemd's main pid, the detached agent's recorded one),
//! the same children. What the new program needs comes through the
//! environment ([`ENV`], read once and removed before anything starts):
//!
//! - the pid file's lock, still held (no second agent can start between);
//! - the balancer's listening socket, still open: clients that connect
//!   meanwhile wait in its queue, none is refused;
//! - each component left running, with its pid and a digest of how it was
//!   launched. The new agent adopts a component it would launch the same
//!   way (the process is its own child already) and restarts any other.
//!   So etcd, the API server and kubelet run on undisturbed.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::host::paths::Paths;

/// The environment variable that carries a [`Handover`] (JSON).
pub const ENV: &str = "HAKUBE_AGENT_HANDOVER";

/// What an agent leaves to the build it `exec`s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The pid file's descriptor, locked.
    pub lock_fd: RawFd,
    /// The node-local balancer's listening socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_fd: Option<RawFd>,
    /// The components left running, by name.
    #[serde(default)]
    pub components: BTreeMap<String, Kept>,
    /// The reloads the predecessor handled (an `install` waiting for one
    /// more counts on from there).
    #[serde(default)]
    pub reloads: u64,
}

/// The signals the agent acts on. They stay blocked across the exec, so
/// that one sent meanwhile waits for the successor's handlers instead of
/// meeting the default action (death); [`unblock_signals`] lets them in.
fn agent_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGUSR2, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    set
}

/// Lets in the agent's signals (blocked across a hand-over's exec), once
/// their handlers are installed.
pub fn unblock_signals() {
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK, Some(&agent_signals()), None);
}

/// A component left running for the successor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub pid: u32,
    /// The binary it runs.
    pub binary: PathBuf,
    /// How it was launched ([`super::supervisor`]'s digest of its launch):
    /// adopted only when the successor would launch it the same way.
    pub launch: String,
    /// The bundle it was launched from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
}

/// The hand-over this process was started with, if any; removes it from
/// the environment. Call while the process has one thread (before any
/// runtime starts): the environment is not for threads to change.
pub fn take() -> Option<Result<Handover, String>> {
    let raw = std::env::var_os(ENV)?;
    std::env::remove_var(ENV);
    Some(
        serde_json::from_slice(raw.as_encoded_bytes())
            .map_err(|e| format!("{ENV} is not a hand-over from another agent: {e}")),
    )
}

/// The balancer's socket handed over, as a listener (None when it is not
/// an open socket of this process).
pub fn listener(fd: RawFd) -> Option<std::net::TcpListener> {
    std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).ok()?;
    // SAFETY: the descriptor is open, and came through exec: nothing else
    // in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::host::process::close_on_exec(&owned, true).ok()?;
    Some(std::net::TcpListener::from(owned))
}

/// Checks that `binary` runs here (`--version`, bounded) before anything
/// is stopped for it: a binary that cannot run is no successor.
pub fn runs(binary: &Path) -> Result<String, String> {
    let out = crate::host::process::version_output(binary, Duration::from_secs(20))
        .map_err(|e| format!("{} --version: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !text.starts_with("hakube ") {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{} --version: {} {text} {}", binary.display(), out.status, err.trim()));
    }
    Ok(text)
}

/// Replaces this process with `binary`, handing `h` over; returns only if
/// that fails. On a host where the agent runs from the installed binary
/// (`/usr/local/bin/hakube`, as the systemd unit starts it), `binary` is
/// installed there first and run from there, so that the unit, and the
/// `hakube` on PATH, are the new build too. The arguments stay the same.
pub fn exec(paths: &Paths, binary: &Path, h: &Handover) -> std::io::Error {
    let installed = paths.installed_binary();
    let running = std::env::current_exe().ok();
    let from_installed = running.as_deref().is_some_and(|p| {
        let p = p.to_string_lossy();
        p.strip_suffix(" (deleted)").unwrap_or(&p) == installed.to_string_lossy()
    });
    let target = if binary == installed {
        installed
    } else if paths.is_host_root() && from_installed {
        match std::fs::read(binary)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::host::fs::write_atomic(&installed, &bytes, 0o755).map_err(std::io::Error::other))
        {
            Ok(()) => installed,
            Err(e) => {
                warn!(error = %e, "cannot install the new hakube in {}: running it from the bundle", installed.display());
                binary.to_owned()
            }
        }
    } else {
        binary.to_owned()
    };
    exec_as(&target, h)
}

/// `execv` of `binary` with this process's arguments (the first replaced)
/// and `h` in the environment; returns only on failure.
pub fn exec_as(binary: &Path, h: &Handover) -> std::io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let json = serde_json::to_string(h).expect("a hand-over serializes");
    let cstr = |b: &[u8]| CString::new(b).map_err(std::io::Error::other);
    let args: Result<Vec<CString>, _> = std::iter::once(binary.as_os_str().as_bytes().to_vec())
        .chain(std::env::args_os().skip(1).map(|a| a.as_bytes().to_vec()))
        .map(|a| cstr(&a))
        .collect();
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(k, _)| k != ENV)
        .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
        .collect();
    env.push(format!("{ENV}={json}").into_bytes());
    let env: Result<Vec<CString>, _> = env.iter().map(|e| cstr(e)).collect();
    let (args, env, path) = match (args, env, cstr(binary.as_os_str().as_bytes())) {
        (Ok(a), Ok(e), Ok(p)) => (a, e, p),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
    };
    info!(binary = %binary.display(), "handing over to the new hakube");
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&agent_signals()), None);
    let e = match nix::unistd::execve(&path, &args, &env) {
        Err(e) => std::io::Error::from(e),
        Ok(never) => match never {},
    };
    unblock_signals();
    e
}

/// A component's process left running by the predecessor: this process's
/// child already, watched through a pidfd.
pub struct Adopted {
    pid: u32,
    fd: AsyncFd<OwnedFd>,
}

impl Adopted {
    /// Adopts `k`: only a live child of this process that runs `k.binary`.
    pub fn new(k: &Kept) -> std::io::Result<Adopted> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", k.pid))?;
        // `pid (comm) state ppid ...`: comm may hold anything but ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid != Some(std::process::id()) {
            return Err(std::io::Error::other(format!("process {} is not this agent's child", k.pid)));
        }
        let exe = std::fs::read_link(format!("/proc/{}/exe", k.pid))?;
        if exe != k.binary {
            return Err(std::io::Error::other(format!(
                "process {} runs {}, not {}",
                k.pid,
                exe.display(),
                k.binary.display()
            )));
        }
        // SAFETY: a plain syscall; the result is checked before use.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, k.pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: an OwnedFd, open, and only closed when dropped (with the
        // AsyncFd that owns it).
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Adopted { pid: k.pid, fd })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until it exits (reaping it); says how.
    pub async fn exited(&mut self) -> String {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(WaitStatus::Exited(_, code)) => return format!("exit status: {code}"),
                Ok(WaitStatus::Signaled(_, sig, _)) => return format!("signal: {} ({sig})", sig as i32),
                Ok(other) => return format!("{other:?}"),
                Err(e) => return format!("cannot wait for it: {e}"),
            }
            match self.fd.readable().await {
                Ok(mut g) => g.clear_ready(),
                Err(e) => return format!("cannot watch it: {e}"),
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for it.
    pub async fn stop(&mut self, grace: Duration) {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            self.exited().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_adopted_child_is_watched_reaped_and_stopped() {
        let sleeper = |secs: &str| std::process::Command::new("/bin/sleep").arg(secs).spawn().unwrap();
        let exe = std::fs::canonicalize("/bin/sleep").unwrap();
        let (short, long) = (sleeper("0.3"), sleeper("30"));
        let kept = |pid: u32| Kept { pid, binary: exe.clone(), launch: String::new(), bundle: None };
        let mut a = Adopted::new(&kept(short.id())).unwrap();
        assert_eq!(a.exited().await, "exit status: 0", "it ends by itself, and is reaped");
        assert!(Adopted::new(&kept(short.id())).is_err(), "a process that is gone is not adopted");
        let mut b = Adopted::new(&kept(long.id())).unwrap();
        let other = Kept { binary: "/bin/true".into(), ..kept(long.id()) };
        assert!(Adopted::new(&other).is_err(), "one that runs another binary is not adopted");
        assert!(Adopted::new(&kept(1)).is_err(), "nor another's child");
        b.stop(Duration::from_secs(5)).await;
        assert!(!std::path::Path::new(&format!("/proc/{}", long.id())).exists(), "stopped and reaped");
    }

    #[test]
    fn a_hand_over_round_trips_through_its_text() {
        let h = Handover {
            lock_fd: 3,
            lb_fd: Some(7),
            components: [(
                "etcd".into(),
                Kept { pid: 42, binary: "/b/etcd".into(), launch: "ab12".into(), bundle: Some("/b".into()) },
            )]
            .into(),
            reloads: 4,
        };
        let back: Handover = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }
}
