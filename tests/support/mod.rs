//! Test hosts: each a network namespace with its own loopback (so every host
//! can use etcd's real ports) and its own root directory. Hosts on a
//! [`Network`] also share a bridge that lives in a namespace of its own:
//! nothing is created in the machine's own network namespace.
#![allow(dead_code)]

pub mod netns;
pub mod vip;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository: this file is shared by the tests and by the dev tools
/// (`dev/`), whose manifest is one level down.
pub fn repo() -> &'static Path {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    if dir.join("scripts").is_dir() {
        dir
    } else {
        dir.parent().expect("dev/ is inside the repository")
    }
}

/// The hakube binary: the one cargo built for the tests, else (the dev
/// tools) `HAKUBE_BIN`, else the release build.
pub fn hakube() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| match option_env!("CARGO_BIN_EXE_hakube") {
        Some(bin) => bin.to_owned(),
        None => {
            std::env::var("HAKUBE_BIN").unwrap_or_else(|_| repo().join("target/release/hakube").display().to_string())
        }
    })
}

/// Every component of a master, and of a worker that runs pods.
pub const MASTER: &str = "etcd,containerd,kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy";
pub const WORKER: &str = "containerd,kubelet,kube-proxy";

/// The Kubernetes bundle: `HAKUBE_TEST_BUNDLE` (scripts/test.sh builds it
/// first), else what `scripts/kube-bundle.sh` prints (it builds it once per
/// machine and caches it).
pub fn bundle() -> &'static Path {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        if let Some(b) = std::env::var_os("HAKUBE_TEST_BUNDLE") {
            return PathBuf::from(b);
        }
        let script = repo().join("scripts/kube-bundle.sh");
        let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("kube-bundle.sh");
        assert!(out.status.success(), "scripts/kube-bundle.sh failed: the Kubernetes tests need its bundle");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The bundle of the Kubernetes minor before [`bundle`]'s, which the
/// upgrade test starts from: `HAKUBE_TEST_PREVIOUS_BUNDLE` (scripts/test.sh
/// builds it first), else what `scripts/kube-bundle.sh --previous` prints.
pub fn previous_bundle() -> &'static Path {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        if let Some(b) = std::env::var_os("HAKUBE_TEST_PREVIOUS_BUNDLE") {
            return PathBuf::from(b);
        }
        let script = repo().join("scripts/kube-bundle.sh");
        let out = Command::new("bash")
            .args([script.to_str().unwrap(), "--previous"])
            .stderr(Stdio::inherit())
            .output()
            .expect("kube-bundle.sh");
        assert!(out.status.success(), "scripts/kube-bundle.sh --previous failed: the upgrade test needs its bundle");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// `PATH` for what runs on a test host: the bundle's etcd, etcdctl and
/// kubectl first (the versions hakube ships), never whatever the machine
/// has; the bundle's other binaries only where a test passes `--bundle`.
pub fn path_env() -> std::ffi::OsString {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    let tools = TOOLS.get_or_init(|| {
        let digest =
            bundle().display().to_string().bytes().fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64));
        let dir = std::env::temp_dir().join(format!("hakube-test-tools-{digest:x}"));
        std::fs::create_dir_all(&dir).unwrap();
        for tool in ["etcd", "etcdctl", "kubectl"] {
            // Test processes race to make the same links: one wins.
            match std::os::unix::fs::symlink(bundle().join(tool), dir.join(tool)) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => panic!("{tool}: {e}"),
                _ => {}
            }
        }
        dir
    });
    let rest = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(tools.clone()).chain(std::env::split_paths(&rest));
    std::env::join_paths(dirs).expect("PATH joins")
}

/// Whether hakube left `h`'s root as the test made it: empty, or nothing
/// but the host's own `etc/resolv.conf` (hosts on a network have one).
pub fn untouched(h: &Host) -> bool {
    let entries = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let top = entries(h.root());
    top.is_empty() || (top == ["etc"] && entries(&h.root().join("etc")) == ["resolv.conf"])
}

/// The test image of the bundle (a busybox with its applets).
pub fn test_image() -> String {
    std::fs::read_to_string(bundle().join("test-image")).expect("the bundle names its test image").trim().to_owned()
}

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
        netns::loopback(&ns).expect("a loopback namespace");
        // Loopback only, no pod network to resolve for: an empty root.
        Host { ns, name: "m1".into(), root: tempfile::tempdir().expect("tempdir"), addr: "127.0.0.1".into() }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn pki(&self, name: &str) -> PathBuf {
        self.root().join("var/lib/hakube/pki").join(name)
    }

    /// Runs `f` on a thread that lives in the host's network namespace: for
    /// tests that drive the library against the host's etcd.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(format!("/run/netns/{}", self.ns)).expect("the host's namespace");
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("the thread in the namespace")
        })
    }

    /// An etcd client of this host's etcd with its `apiserver-etcd-client`
    /// pair (call inside [`Self::within`]).
    pub async fn etcd_client(&self, request_timeout: Option<Duration>) -> etcd_client::Client {
        let creds =
            hakube::etcd::Credentials::load(&hakube::host::paths::Paths::new(self.root()), "apiserver-etcd-client")
                .expect("etcd credentials");
        let endpoint = format!("https://{}:2379", self.addr);
        hakube::etcd::connect_with(&[endpoint], &creds, Duration::from_secs(5), request_timeout).await.expect("connect")
    }

    /// Runs a command inside the host's namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, cmd])
            .args(args)
            .env("PATH", path_env())
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }

    /// The subject alternative names the TLS server at `addr` presents, as
    /// `openssl s_client` sees it from this host's namespace (empty when
    /// nothing answers).
    pub fn served_names(&self, addr: &str) -> String {
        let script = format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName 2>/dev/null"
        );
        stdout(&self.exec("timeout", &["10", "sh", "-c", &script]))
    }

    /// Runs `bash SCRIPT ARGS…` inside the host's namespace with extra environment.
    pub fn bash(&self, script: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "bash"])
            .arg(script)
            .args(args)
            .env("PATH", path_env())
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("bash")
    }

    /// `hakube --root ROOT ARGS…` with extra environment.
    pub fn hakube_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let root = self.root().display().to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, hakube(), "--root", &root])
            .args(args)
            .env("PATH", path_env())
            .stdin(Stdio::null());
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
        self.exec(hakube(), &all)
    }

    /// `install` of a master with every component, from the bundle.
    pub fn install_master(&self, extra: &[&str]) -> Output {
        self.install_master_env(extra, &[])
    }

    /// As [`Self::install_master`], with extra environment for the agent.
    pub fn install_master_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self.install_master_unchecked(extra, env);
        assert_ok(&out, &format!("install on {}", self.name));
        out
    }

    /// As [`Self::install_master_env`], whether or not it succeeds.
    pub fn install_master_unchecked(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let bundle = bundle().display().to_string();
        let mut args = vec![
            "install",
            "--advertise-address",
            &self.addr,
            "--node-name",
            &self.name,
            "--components",
            MASTER,
            "--bundle",
            &bundle,
            "--no-systemd",
        ];
        args.extend_from_slice(extra);
        self.hakube_env(&args, env)
    }

    /// kubectl (the bundle's) with this host's admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let kc = self.root().join("var/lib/hakube/kubeconfigs/admin.conf").display().to_string();
        let cache = self.root().join(".kube-cache").display().to_string();
        let mut all = vec!["--kubeconfig", kc.as_str(), "--cache-dir", cache.as_str(), "--request-timeout=20s"];
        all.extend_from_slice(args);
        self.exec("kubectl", &all)
    }

    /// kubectl's output as JSON, asserting success.
    pub fn kubectl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl(&all);
        assert_ok(&out, &format!("kubectl {args:?}"));
        serde_json::from_slice(&out.stdout).expect("kubectl prints JSON")
    }

    /// The agent's `state.json`.
    pub fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.root().join("var/lib/hakube/state.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    /// `install` of an etcd-only master (the bundle's etcd), asserting success.
    pub fn install(&self, extra: &[&str]) -> Output {
        let bundle = bundle().display().to_string();
        let mut args = vec![
            "install",
            "--advertise-address",
            &self.addr,
            "--node-name",
            "m1",
            "--components",
            "etcd",
            "--no-systemd",
            "--bundle",
            &bundle,
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
        cmd.args(["netns", "exec", &self.ns, "etcdctl"]).args(&refs).env("ETCDCTL_API", "3").env("PATH", path_env());
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

    /// The cgroup this host's kubelet puts its pods under, from its config.
    pub fn pod_cgroup(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.root().join("var/lib/hakube/kubelet/config.yaml")).ok()?;
        text.lines().find_map(|l| l.strip_prefix("cgroupRoot: ")).map(|s| s.trim().trim_start_matches('/').to_owned())
    }

    /// The cgroup directories of the host's pods, in every hierarchy.
    fn pod_cgroup_dirs(&self) -> Vec<PathBuf> {
        let Some(cgroup) = self.pod_cgroup() else { return vec![] };
        let tops: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(&cgroup))
            .filter(|p| p.is_dir())
            .collect();
        let mut dirs = vec![];
        let mut stack = tops;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            dirs.push(d);
        }
        dirs
    }

    /// Pids of the processes of the host's pods (in their own network
    /// namespaces, so not among [`Host::pids`]).
    pub fn pod_pids(&self) -> Vec<String> {
        pids_in(&self.pod_cgroup_dirs())
    }

    /// Kills the host's pods (they live in network namespaces of their own,
    /// so `kill_all` misses them) and removes their cgroups.
    pub fn kill_pods(&self) {
        let mut dirs = self.pod_cgroup_dirs();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = pids_in(&dirs);
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                let _ = sh("kill", &["-9", &pid]);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn pids_in(dirs: &[PathBuf]) -> Vec<String> {
    hakube::host::cgroups::pids_in(dirs).iter().map(i32::to_string).collect()
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_all();
        self.kill_pods();
        let _ = sh("ip", &["netns", "del", &self.ns]);
    }
}

/// A test host's root, with the host's own resolvers: pods with
/// `dnsPolicy: Default` (CoreDNS forwards what is not the cluster's there)
/// get the host itself, where nothing answers on port 53, so a lookup
/// outside the cluster fails at once and never leaves the test's network.
fn host_root(addr: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/resolv.conf"), format!("nameserver {addr}\n")).unwrap();
    root
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
        netns::switch(&switch).expect("a switch namespace");
        let subnet = (std::process::id() % 200) as u8 + NEXT.fetch_add(1, Ordering::SeqCst) as u8 % 50;
        Network { switch, subnet, next_host: AtomicU32::new(11) }
    }

    /// A host with an address on the bridge, named `name`.
    pub fn host(&self, name: &str) -> Host {
        let n = self.next_host.fetch_add(1, Ordering::SeqCst);
        let ns = unique("hkt");
        let addr = format!("10.{}.0.{n}", 100 + self.subnet % 100);
        let port = format!("v{ns}");
        let port = &port[..port.len().min(15)];
        netns::host(&ns, &self.switch, port, &format!("{addr}/24")).expect("a host namespace");
        Host { ns, name: name.into(), root: host_root(&addr), addr }
    }

    /// A host as [`Network::host`] makes it, but with no default route: its
    /// bridge is all it reaches, as on an airgap server.
    pub fn host_with_no_route_out(&self, name: &str) -> Host {
        let h = self.host(name);
        must("ip", &["-n", &h.ns, "route", "del", "default"]);
        h
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

/// `node-join-script [--master]` on `master`, saved to a file.
pub fn join_script(master: &Host, role_master: bool, extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let mut args = vec!["node-join-script"];
    if role_master {
        args.push("--master");
    }
    args.extend_from_slice(extra);
    let out = master.hakube(&args);
    assert_ok(&out, "node-join-script");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("join.sh");
    std::fs::write(&path, &out.stdout).unwrap();
    (dir, path)
}

/// What a join script gets on a test host; every component comes from the
/// bundle.
pub fn join_args(h: &Host, components: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--root",
        h.root().to_str().unwrap(),
        "--advertise-address",
        &h.addr,
        "--node-name",
        &h.name,
        "--components",
        components,
        "--no-systemd",
    ]
    .map(String::from)
    .to_vec();
    if components != "none" {
        args.extend(["--bundle".to_owned(), bundle().display().to_string()]);
    }
    args
}

/// Runs a join script on `h`.
pub fn run_join(h: &Host, script: &Path, components: &str, env: &[(&str, &str)]) -> Output {
    let args = join_args(h, components);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.bash(script, &refs, env)
}

/// The binary is on no PATH inside the hosts: scripts fetch it from the
/// master and check its hash, unless told where it is.
pub fn bin() -> (&'static str, &'static str) {
    ("HAKUBE_BIN", hakube())
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

/// A cluster: `m1` installed, the other hosts joined with the scripts it
/// prints, all at the same moment.
pub struct Cluster {
    pub masters: Vec<Host>,
    pub workers: Vec<Host>,
    pub net: Network,
}

impl Cluster {
    pub fn new(masters: usize, workers: usize) -> Cluster {
        Self::with_install_env(masters, workers, &["ha"], &[])
    }

    /// A cluster whose first master is installed with `words`.
    pub fn with_install(masters: usize, workers: usize, words: &[&str]) -> Cluster {
        Self::with_install_env(masters, workers, words, &[])
    }

    /// As [`Self::with_install`], every agent started with `env`.
    pub fn with_install_env(masters: usize, workers: usize, words: &[&str], env: &[(&str, &str)]) -> Cluster {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        Self::with_install_for(masters, workers, |_| words.clone(), env)
    }

    /// As [`Self::with_install_env`], with m1's words made from m1 (its
    /// address, for words that name one of the network's).
    pub fn with_install_for(
        masters: usize,
        workers: usize,
        words: impl Fn(&Host) -> Vec<String>,
        env: &[(&str, &str)],
    ) -> Cluster {
        let net = Network::new();
        let m1 = net.host("m1");
        let words = words(&m1);
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        m1.install_master_env(&words, env);
        let mut join_env = vec![bin()];
        join_env.extend_from_slice(env);
        let (_dm, master_script) = join_script(&m1, true, &[]);
        let (_dw, worker_script) = join_script(&m1, false, &[]);
        let more: Vec<Host> = (2..=masters).map(|i| net.host(&format!("m{i}"))).collect();
        let workers: Vec<Host> = (1..=workers).map(|i| net.host(&format!("w{i}"))).collect();
        std::thread::scope(|s| {
            let joins: Vec<_> = more
                .iter()
                .map(|h| (h, s.spawn(|| run_join(h, &master_script, MASTER, &join_env))))
                .chain(workers.iter().map(|h| (h, s.spawn(|| run_join(h, &worker_script, WORKER, &join_env)))))
                .collect();
            for (h, j) in joins {
                let out = j.join().unwrap();
                if !out.status.success() {
                    panic!("join of {} failed:\n{}\n{}", h.name, stderr(&out), logs(h));
                }
            }
        });
        let mut masters = vec![m1];
        masters.extend(more);
        Cluster { masters, workers, net }
    }

    pub fn m1(&self) -> &Host {
        &self.masters[0]
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.masters.iter().chain(&self.workers)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts().find(|h| h.name == name).unwrap_or_else(|| panic!("no host {name}"))
    }
}

/// The tails of a host's logs, for failure messages.
pub fn logs(h: &Host) -> String {
    let dir = h.root().join("var/lib/hakube/logs");
    let mut out = String::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let tail: Vec<_> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        out.push_str(&format!("--- {} ({})\n{}\n", e.path().display(), h.name, tail.join("\n")));
    }
    out
}

/// Names of the Nodes whose Ready condition is True.
pub fn ready_nodes(m: &Host) -> Vec<String> {
    let out = m.kubectl(&["get", "nodes", "-o", "json"]);
    if !out.status.success() {
        return vec![];
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut names: Vec<String> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Kills every process of `h`, empties its etcd data directory (the member
/// had been healthy) and runs install again: it must refuse to start etcd
/// and say the data is lost. Returns install's stderr.
pub fn restart_with_lost_etcd_data(h: &Host) -> String {
    h.kill_all();
    let data = h.root().join("var/lib/hakube/etcd");
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    let out = h.hakube(&["install", "--no-systemd", "--timeout", "5s"]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("this member was bootstrapped before: its data is lost"), "{err}");
    assert!(std::fs::read_dir(&data).unwrap().next().is_none(), "etcd did not start on the empty data directory");
    err
}

/// A config file giving leaf certificates 2 minutes of life, renewed 1
/// minute before their end, and no scheduled snapshots: for the renewal tests.
pub fn short_lived_certificates(dir: &Path) -> PathBuf {
    let file = dir.join("short.yaml");
    std::fs::write(
        &file,
        "apiVersion: hakube.io/v1alpha1\nkind: ClusterConfig\n\
         cluster: {certificateValidity: 2m, certificateRenewBefore: 1m, etcdSnapshotInterval: never}\n",
    )
    .unwrap();
    file
}

/// The operator's backup: a manual snapshot taken on `master` copied into
/// `into` with its record, and a copy of the master's PKI directory.
/// Returns (the snapshot file, the PKI copy).
pub fn snapshot_backup(master: &Host, into: &Path) -> (PathBuf, PathBuf) {
    let out = master.hakube(&["etcd", "snapshot", "save"]);
    assert_ok(&out, "snapshot save");
    let text = stdout(&out);
    let saved = PathBuf::from(text.strip_prefix("saved ").and_then(|t| t.split(' ').next()).expect(&text));
    let file = into.join(saved.file_name().unwrap());
    std::fs::copy(&saved, &file).unwrap();
    std::fs::copy(format!("{}.json", saved.display()), format!("{}.json", file.display())).unwrap();
    let pki = into.join("pki");
    let from = master.root().join("var/lib/hakube/pki");
    assert_ok(&sh("cp", &["-a", from.to_str().unwrap(), pki.to_str().unwrap()]), "copy the PKI");
    (file, pki)
}

/// A client of one node's balancer: one request every 0.3 s (at most 1500)
/// until dropped, each logged as `<unix seconds> <HTTP code>` (000: no
/// answer).
pub struct Prober {
    child: std::process::Child,
    log: PathBuf,
    pub node: String,
}

impl Prober {
    pub fn start(h: &Host, dir: &Path, ca: &Path, token: &Path) -> Prober {
        let log = dir.join(format!("probe-{}.log", h.name));
        let url = "https://127.0.0.1:6444/api/v1/namespaces/kube-system/configmaps/kube-root-ca.crt";
        let script = format!(
            "for i in $(seq 1 1500); do
               code=$(curl -s -o {log}.body -w '%{{http_code}}' --max-time 10 --cacert {ca} \
                 -H \"Authorization: Bearer $(cat {token})\" {url} 2>&1)
               if [ \"$code\" = 200 ]; then echo \"$(date +%s.%N) $code\" >> {log}
               else echo \"$(date +%s.%N) $code $(head -c 300 {log}.body 2>/dev/null | tr '\\n' ' ')\" >> {log}; fi
               sleep 0.3
             done",
            ca = ca.display(),
            token = token.display(),
            log = log.display()
        );
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &h.ns, "bash", "-c", &script])
            .env("PATH", path_env())
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("the probe loop");
        Prober { child, log, node: h.name.clone() }
    }

    /// (requests so far, the failed ones as `time code`).
    pub fn results(&self) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let failed = lines.iter().filter(|l| !l.ends_with(" 200")).map(|l| format!("{} {l}", self.node)).collect();
        (lines.len(), failed)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A join script run on `h` with no bundle given: the binaries must come
/// from the cluster.
pub fn join_without_bundle(h: &Host, script: &std::path::Path, components: &str) -> std::process::Output {
    join_without_bundle_env(h, script, components, &[])
}

/// As [`join_without_bundle`], with extra environment (the agent's too).
pub fn join_without_bundle_env(
    h: &Host,
    script: &std::path::Path,
    components: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let args: Vec<String> = join_args(h, components);
    let cut = args.iter().position(|a| a == "--bundle").map_or(args.len(), |i| i);
    let refs: Vec<&str> = args[..cut].iter().map(String::as_str).collect();
    h.bash(script, &refs, &[&[bin()], env].concat())
}

/// The `node.bundle` a host's config records.
pub fn recorded_bundle(h: &Host) -> std::path::PathBuf {
    let config = std::fs::read_to_string(h.root().join("etc/hakube/cluster.yaml")).unwrap();
    let line = config.lines().find(|l| l.trim_start().starts_with("bundle:")).expect("node.bundle is recorded");
    std::path::PathBuf::from(line.split_once(':').unwrap().1.trim())
}
