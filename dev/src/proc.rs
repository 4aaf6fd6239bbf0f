//! Processes and network namespaces, for the tools.

use std::borrow::BorrowMut;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

/// The name messages start with: the script that ran the tool.
pub fn prog() -> String {
    std::env::var("HAKUBE_DEV_PROG").unwrap_or_else(|_| "hakube-dev".into())
}

macro_rules! msg {
    ($($arg:tt)*) => { eprintln!("{}: {}", $crate::proc::prog(), format_args!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { eprintln!("{}: warning: {}", $crate::proc::prog(), format_args!($($arg)*)) };
}
pub(crate) use {msg, warning};

/// The repository the tool was built from.
pub fn repo() -> PathBuf {
    crate::support::repo().to_path_buf()
}

/// `PROGRAM` run inside network namespace `ns`.
pub fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).stdin(Stdio::null());
    cmd
}

/// `cmd`, stopped (TERM, then KILL 10 s later) when it runs longer than
/// `limit`; in the foreground, so that Ctrl-C reaches it. Only the program,
/// its arguments and environment carry over: set the standard streams on
/// what this returns.
pub fn bounded(limit: Duration, cmd: Command) -> Command {
    timeout(&["--foreground"], limit, cmd)
}

/// As [`bounded`], in a process group of its own, which a timeout stops whole.
pub fn bounded_group(limit: Duration, cmd: Command) -> Command {
    timeout(&[], limit, cmd)
}

fn timeout(flags: &[&str], limit: Duration, cmd: Command) -> Command {
    let mut outer = Command::new("timeout");
    outer.args(flags).args(["-k", "10", &limit.as_secs().to_string()]).arg(cmd.get_program());
    outer.args(cmd.get_args()).stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => outer.env(k, v),
            None => outer.env_remove(k),
        };
    }
    outer
}

/// `cmd` with its standard output and error appended to `log`.
pub fn to_log(mut cmd: Command, log: &Path) -> Result<Command> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    cmd.stdout(file.try_clone()?).stderr(file);
    Ok(cmd)
}

/// Runs `cmd` with the tool's own output, failing when it exits non-zero.
pub fn run(mut cmd: impl BorrowMut<Command>, what: &str) -> Result<()> {
    let status = cmd.borrow_mut().status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its standard output, failing when it exits non-zero.
pub fn output(mut cmd: impl BorrowMut<Command>, what: &str) -> Result<String> {
    let out = cmd.borrow_mut().stderr(Stdio::piped()).output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The path a bash snippet prints, run with `scripts/lib.sh`'s functions
/// (the builds stay in bash); its messages go to the tool's standard error.
pub fn script_output(snippet: &str) -> Result<PathBuf> {
    let lib = repo().join("scripts/lib.sh");
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &format!("set -euo pipefail; source \"$1\"; {snippet}"), "bash"]).arg(lib);
    cmd.env("HAKUBE_DEV_PROG", prog()).env("prog", prog());
    // Its messages pass straight through: a cold bundle build takes half an
    // hour and says how far it is.
    let out =
        cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output().with_context(|| format!("cannot run {snippet}"))?;
    if !out.status.success() {
        bail!("{snippet} failed ({})", out.status);
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Namespaces are made the one way the tests make them.
pub use crate::support::netns;

/// A namespace helper's refusal as an error.
pub fn ns(result: Result<(), String>) -> Result<()> {
    result.map_err(|e| anyhow::anyhow!(e))
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: nix::libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// INT, TERM and HUP no longer end the tool at once: they are noticed at the
/// next [`check_stop`], so that what it made is taken down (the benchmarks'
/// sandboxes). A child in the foreground gets a Ctrl-C itself and ends.
pub fn stop_on_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let action = SigAction::new(SigHandler::Handler(on_stop_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

/// Fails once a stop signal has come.
pub fn check_stop() -> Result<()> {
    if STOP.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("stopped by a signal");
    }
    Ok(())
}
