//! Simulated hosts in network namespaces: the one place the tests, the
//! sandbox and the benchmarks set them up. Nothing is created in the
//! machine's own network namespace: a "switch" namespace holds a bridge br0,
//! and each host namespace's eth0 is one end of a veth pair whose other end
//! is a port of that bridge. Each function is safe to run again on what
//! exists. Needs root and iproute2.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `ip ARGS…`, its error output in the error.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
    }
}

/// The machine's named network namespaces.
pub fn list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

pub fn exists(ns: &str) -> bool {
    list().iter().any(|n| n == ns)
}

/// Namespace `ns` with only its loopback, up.
pub fn loopback(ns: &str) -> Result<(), String> {
    if !exists(ns) {
        ip(&["netns", "add", ns]).map_err(|e| format!("cannot create namespace {ns}: {e}"))?;
    }
    ip(&["-n", ns, "link", "set", "lo", "up"])
}

/// Namespace `ns` with the bridge br0, up.
pub fn switch(ns: &str) -> Result<(), String> {
    loopback(ns)?;
    if ip(&["-n", ns, "link", "show", "br0"]).is_err() {
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])
            .map_err(|e| format!("cannot create a bridge in {ns} (is the bridge kernel module available?): {e}"))?;
    }
    ip(&["-n", ns, "link", "set", "br0", "up"])
}

/// Namespace `ns` whose eth0 is on `switch`'s br0 through port `port` (at
/// most 15 bytes), with `addr` (ADDR/BITS) on eth0 and a default route
/// through it (Kubernetes components want one; nothing answers beyond).
pub fn host(ns: &str, switch: &str, port: &str, addr: &str) -> Result<(), String> {
    if port.len() > 15 {
        return Err(format!("port name {port} is longer than 15 bytes"));
    }
    loopback(ns)?;
    if ip(&["-n", switch, "link", "show", port]).is_err() {
        // A half-made pair (say, the switch namespace was deleted) is rebuilt.
        let _ = ip(&["-n", ns, "link", "del", "eth0"]);
        ip(&["-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])
            .map_err(|e| format!("cannot create the veth pair {port}/eth0 of {ns}: {e}"))?;
    }
    ip(&["-n", switch, "link", "set", port, "master", "br0", "up"])?;
    ip(&["-n", ns, "addr", "replace", addr, "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", ns, "route", "replace", "default", "dev", "eth0"])
}

fn pids(ns: &str) -> Vec<i32> {
    let out = Command::new("ip").args(["netns", "pids", ns]).stderr(Stdio::null()).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// TERMs every process in `ns`, KILLs what is left after 10 s; `verbose`
/// says so on standard error.
pub fn stop(ns: &str, verbose: bool) {
    use nix::sys::signal::{kill, Signal};
    let signal_all = |pids: &[i32], signal| {
        for &pid in pids {
            let _ = kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    };
    let left = pids(ns);
    if left.is_empty() {
        return;
    }
    if verbose {
        eprintln!("stopping {} process(es) left in {ns}", left.len());
    }
    signal_all(&left, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if pids(ns).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = pids(ns);
    if verbose {
        eprintln!("killing what is still running in {ns}: {left:?}");
    }
    signal_all(&left, Signal::SIGKILL);
}

/// Stops what runs in `ns`, then deletes it.
pub fn delete(ns: &str) -> Result<(), String> {
    if !exists(ns) {
        return Ok(());
    }
    stop(ns, false);
    ip(&["netns", "del", ns])
}
