//! Test hosts: each a network namespace with its own loopback (so every host
//! can use etcd's real ports) and its own root directory. Hosts on a
//! [`Network`] also share a bridge that lives in a namespace of its own:
//! nothing is created in the machine's own network namespace.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const HAKUBE: &str = env!("CARGO_BIN_EXE_hakube");

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    // Short: interface names are limited to 15 characters.
    format!("{prefix}{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::SeqCst))
}

pub fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn must(cmd: &str, args: &[&str]) {
    let out = sh(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A simulated host.
pub struct Host {
    pub ns: String,
    /// Its node name.
    pub name: String,
    pub root: tempfile::TempDir,
    /// The address its components advertise.
    pub addr: String,
}

impl Host {
    /// A host alone, reachable only on its own loopback.
    pub fn isolated() -> Host {
        let ns = unique("hkt");
        must("ip", &["netns", "add", &ns]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        Host { ns, name: "m1".into(), root: tempfile::tempdir().expect("tempdir"), addr: "127.0.0.1".into() }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn pki(&self, name: &str) -> PathBuf {
        self.root().join("var/lib/hakube/pki").join(name)
    }

    /// Runs a command inside the host's namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, cmd])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }

    /// Runs `bash SCRIPT ARGS…` inside the host's namespace with extra environment.
    pub fn bash(&self, script: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "bash"]).arg(script).args(args).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("bash")
    }

    /// `hakube --root ROOT ARGS…` with extra environment.
    pub fn hakube_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let root = self.root().display().to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, HAKUBE, "--root", &root]).args(args).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("hakube")
    }

    /// `hakube --root ROOT ARGS…` on this host.
    pub fn hakube(&self, args: &[&str]) -> Output {
        let root = self.root().display().to_string();
        let mut all = vec!["--root", root.as_str()];
        all.extend_from_slice(args);
        self.exec(HAKUBE, &all)
    }

    /// `install` of an etcd-only master (what this machine can run), asserting success.
    pub fn install(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "install",
            "--advertise-address",
            &self.addr,
            "--node-name",
            "m1",
            "--components",
            "etcd",
            "--no-systemd",
        ];
        args.extend_from_slice(extra);
        let out = self.hakube(&args);
        assert_ok(&out, "install");
        out
    }

    /// etcdctl against this host's etcd with the given client pair under pki/.
    pub fn etcdctl(&self, client: Option<&str>, args: &[&str]) -> Output {
        let endpoint = format!("https://{}:2379", self.addr);
        let ca = self.pki("etcd/ca.crt").display().to_string();
        let mut all: Vec<String> = vec![
            "--endpoints".into(),
            endpoint,
            "--cacert".into(),
            ca,
            "--dial-timeout=3s".into(),
            "--command-timeout=5s".into(),
        ];
        if let Some(c) = client {
            all.extend(["--cert".into(), self.pki(&format!("{c}.crt")).display().to_string()]);
            all.extend(["--key".into(), self.pki(&format!("{c}.key")).display().to_string()]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcdctl"]).args(&refs).env("ETCDCTL_API", "3");
        cmd.output().expect("etcdctl")
    }

    /// Pids of the processes running in this host's namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = sh("ip", &["netns", "pids", &self.ns]);
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }

    /// Kills every process of the host, as a power cut would, and waits
    /// (bounded) until they are gone and their sockets closed.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in pids {
                let _ = sh("kill", &["-9", &pid.to_string()]);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_all();
        let _ = sh("ip", &["netns", "del", &self.ns]);
    }
}

/// Hosts on one bridge, in 10.x addresses private to the test's namespaces.
pub struct Network {
    pub switch: String,
    subnet: u8,
    next_host: AtomicU32,
}

impl Network {
    pub fn new() -> Network {
        let switch = unique("hks");
        must("ip", &["netns", "add", &switch]);
        must("ip", &["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &switch, "link", "set", "br0", "up"]);
        let subnet = (std::process::id() % 200) as u8 + NEXT.fetch_add(1, Ordering::SeqCst) as u8 % 50;
        Network { switch, subnet, next_host: AtomicU32::new(11) }
    }

    /// A host with an address on the bridge, named `name`.
    pub fn host(&self, name: &str) -> Host {
        let n = self.next_host.fetch_add(1, Ordering::SeqCst);
        let ns = unique("hkt");
        let addr = format!("10.{}.0.{n}", 100 + self.subnet % 100);
        must("ip", &["netns", "add", &ns]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        let (outside, inside) = (format!("v{ns}"), "eth0");
        let outside = &outside[..outside.len().min(15)];
        must("ip", &["-n", &self.switch, "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", &ns]);
        must("ip", &["-n", &self.switch, "link", "set", outside, "master", "br0", "up"]);
        must("ip", &["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", inside]);
        must("ip", &["-n", &ns, "link", "set", inside, "up"]);
        Host { ns, name: name.into(), root: tempfile::tempdir().expect("tempdir"), addr }
    }

    /// Cuts a host off the network (its link down) or reconnects it.
    pub fn set_link(&self, host: &Host, up: bool) {
        must("ip", &["-n", &host.ns, "link", "set", "eth0", if up { "up" } else { "down" }]);
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.switch]);
    }
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (bounded) for `f` to hold.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every file below `dir`, relative, with its content's digest.
pub fn digests(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// `openssl` as the independent verifier of what hakube issued.
pub fn openssl(args: &[&str]) -> Output {
    sh("openssl", args)
}
