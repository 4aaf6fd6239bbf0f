//! The node-local load balancer and the cluster's load-balancer address, on
//! real clusters: failover while clients loop through a node's balancer,
//! the backend list following the masters, and an address change driven
//! from one re-run with every node's traffic watched throughout.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hakube::config::HostPort;
use hakube::https::{self, Limits, Request};
use support::*;

/// One request's outcome, as the looping client saw it.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    error: Option<String>,
}

/// A client in a host's namespace sending `GET /readyz` through `target`
/// (fresh TLS connection each time, verified against the cluster CA) every
/// `every`, until dropped.
struct Looper {
    name: String,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Looper {
    fn start(h: &Host, target: &str, every: Duration) -> Looper {
        let (ns, ca) = (h.ns.clone(), std::fs::read(h.pki("ca.crt")).expect("the cluster CA"));
        let target: HostPort = target.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(vec![]));
        let (stop2, samples2) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("the host's namespace");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let tls = Arc::new(https::client_config(&ca, None).unwrap());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let limits =
                Limits { connect: Duration::from_secs(3), exchange: Duration::from_secs(5), max_body: 1 << 16 };
            while !stop2.load(Ordering::SeqCst) {
                let started = Instant::now();
                let result = rt.block_on(https::request(&target, tls.clone(), Request::get("/readyz"), limits));
                let error = match result {
                    Ok(r) if r.status == 200 => None,
                    Ok(r) => Some(format!("{} {}", r.status, String::from_utf8_lossy(&r.body))),
                    Err(e) => Some(e.to_string()),
                };
                samples2.lock().unwrap().push(Sample { at: Instant::now(), error });
                std::thread::sleep(every.saturating_sub(started.elapsed()));
            }
        });
        Looper { name: h.name.clone(), stop, samples, thread: Some(thread) }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    fn errors_since(&self, t: Instant) -> Vec<(Duration, String)> {
        self.samples().into_iter().filter(|s| s.at >= t).filter_map(|s| s.error.map(|e| (s.at - t, e))).collect()
    }

    fn successes_since(&self, t: Instant) -> usize {
        self.samples().iter().filter(|s| s.at >= t && s.error.is_none()).count()
    }
}

impl Drop for Looper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Each backend's health in `h`'s node-local balancer, by name.
fn backends(h: &Host) -> BTreeMap<String, String> {
    let s = h.state();
    s["load_balancer"]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| (b["name"].as_str().unwrap_or("").to_owned(), b["health"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn health(h: &Host, backend: &str) -> String {
    backends(h).get(backend).cloned().unwrap_or_default()
}

fn all_up(h: &Host, names: &[&str]) -> bool {
    let b = backends(h);
    b.len() == names.len() && names.iter().all(|n| b.get(*n).map(String::as_str) == Some("up"))
}

const LOCAL_LB: &str = "127.0.0.1:6444";

#[test]
fn a_workers_balancer_fails_over_at_once_and_follows_the_masters() {
    let cluster = Cluster::new(3, 1);
    let (m2, m3, w1) = (cluster.host("m2"), cluster.host("m3"), cluster.host("w1"));
    // The worker joined knowing m1 alone; the others arrive from the registry.
    wait_for("w1's balancer to have all three masters up", Duration::from_secs(60), || all_up(w1, &["m1", "m2", "m3"]));
    let client = Looper::start(w1, LOCAL_LB, Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    assert!(client.successes_since(t - Duration::from_secs(2)) > 20, "{:?}", client.samples().last());
    assert_eq!(client.errors_since(t - Duration::from_secs(2)), vec![], "through the balancer before any fault");

    // A crash: m2's API server killed. A refused dial marks it down at once
    // and the connection goes to the next master.
    let pid = m2.state()["components"]["kube-apiserver"]["pid"].as_u64().expect("m2's API server runs");
    let killed = Instant::now();
    must_kill(pid);
    wait_for("w1 to mark m2 down", Duration::from_secs(10), || health(w1, "m2") == "down");
    let marked = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let errors = client.errors_since(killed);
    assert!(errors.iter().all(|(after, _)| *after < Duration::from_secs(1)), "failures 1s after the crash: {errors:?}");
    assert_eq!(client.errors_since(marked), vec![], "no failure once m2 is marked down");
    assert!(client.successes_since(marked) > 50);
    // The agent restarts it; it is taken back once /readyz answers twice.
    wait_for("w1 to take m2 back", Duration::from_secs(120), || health(w1, "m2") == "up");

    // Cut off silently: packets to m2 vanish. The dial times out (1 s) and
    // goes on to the next master; the checks mark it down within their
    // period.
    cluster.net.set_link(m2, false);
    let cut = Instant::now();
    wait_for("w1 to mark the silent m2 down", Duration::from_secs(10), || health(w1, "m2") == "down");
    let marked = Instant::now();
    assert!(marked - cut < Duration::from_secs(4), "marked down after {:?}", marked - cut);
    std::thread::sleep(Duration::from_secs(3));
    let errors = client.errors_since(cut);
    assert!(errors.iter().all(|(after, _)| *after < Duration::from_secs(3)), "failures 3s after the cut: {errors:?}");
    assert_eq!(client.errors_since(marked), vec![], "no failure once the silent m2 is marked down");
    let samples: Vec<_> = client.samples().into_iter().filter(|s| s.at >= cut && s.error.is_none()).collect();
    let longest = samples.windows(2).map(|w| w[1].at - w[0].at).max().unwrap_or_default();
    assert!(longest < Duration::from_secs(3), "requests stalled for {longest:?} after the cut");
    cluster.net.set_link(m2, true);
    wait_for("w1 to take the reconnected m2 back", Duration::from_secs(30), || health(w1, "m2") == "up");

    // A master reset leaves every balancer's list within seconds.
    let out = m3.hakube(&["reset", "--force"]);
    assert_ok(&out, "reset of m3");
    assert!(stderr(&out).contains("removed m3 from the cluster's node registry"), "{}", stderr(&out));
    wait_for("w1's balancer to drop m3", Duration::from_secs(20), || all_up(w1, &["m1", "m2"]));
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(client.errors_since(t), vec![], "after m3 left");
    let text = stdout(&w1.hakube(&["status"]));
    assert!(text.contains("m1") && text.contains("m2") && text.contains(LOCAL_LB), "{text}");
}

fn must_kill(pid: u64) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).expect("kill");
}

/// HAProxy in a host of its own, passing TCP through to the masters' API
/// servers with the checks EKCO configures: the external load balancer.
struct Haproxy {
    host: Host,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(net: &Network, name: &str, masters: &[Host]) -> Haproxy {
        let host = net.host(name);
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = format!(
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n\
             frontend api\n  bind {}:6443\n  default_backend masters\n\
             backend masters\n  option httpchk GET /readyz\n  http-check expect status 200\n",
            host.addr
        );
        for m in masters {
            cfg.push_str(&format!(
                "  server {} {}:6443 check check-ssl verify none inter 1s fall 2 rise 3\n",
                m.name, m.addr
            ));
        }
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, cfg).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, "haproxy", "-db", "-f"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian: haproxy)");
        Haproxy { host, child, _dir: dir }
    }

    fn address(&self) -> String {
        format!("{}:6443", self.host.addr)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admin_server(h: &Host) -> String {
    let text = std::fs::read_to_string(h.root().join("var/lib/hakube/kubeconfigs/admin.conf")).unwrap_or_default();
    text.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap_or("").to_owned()
}

fn component_pids(h: &Host) -> BTreeMap<String, u64> {
    let s = h.state();
    s["components"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(n, c)| (n.clone(), c["pid"].as_u64().unwrap_or(0)))
        .collect()
}

fn install_out(h: &Host, extra: &[&str]) -> std::process::Output {
    h.install_master_unchecked(extra, &[])
}

#[test]
fn the_load_balancer_address_changes_from_one_rerun_with_no_request_lost() {
    let cluster = Cluster::new(3, 2);
    let (m1, m2, m3) = (&cluster.masters[0], &cluster.masters[1], &cluster.masters[2]);
    let all: Vec<String> = ["m1", "m2", "m3", "w1", "w2"].map(String::from).to_vec();
    wait_for("all five Nodes to be Ready", Duration::from_secs(300), || ready_nodes(m1) == all);
    let lb1 = Haproxy::start(&cluster.net, "lb1", &cluster.masters);
    let lb2 = Haproxy::start(&cluster.net, "lb2", &cluster.masters);
    let (old, new) = (lb1.address(), lb2.address());
    let api = |m: &Host| format!("{}:6443", m.addr);

    // ha alone: the node-local balancers were all it needed. Now an
    // external one, from m1.
    let out = m1.install_master(&["ha", &format!("load-balancer-address={old}")]);
    assert!(stderr(&out).contains(&format!("every master serves {old}")), "{}", stderr(&out));
    for m in &cluster.masters {
        assert!(m.served_names(&api(m)).contains(&format!("IP Address:{}", lb1.host.addr)), "{}", m.name);
    }

    // The change under watch: a client through every node's balancer, the
    // Nodes, and every component's process.
    let loops: Vec<Looper> = cluster.hosts().map(|h| Looper::start(h, LOCAL_LB, Duration::from_millis(100))).collect();
    let pids: Vec<_> = cluster.hosts().map(component_pids).collect();
    let stop_watch = Arc::new(AtomicBool::new(false));
    // Nothing may panic while the watcher runs: the scope would wait for it.
    let (out, took, not_ready) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut bad = vec![];
            while !stop_watch.load(Ordering::SeqCst) {
                let ready = ready_nodes(m1);
                if ready != all {
                    bad.push(ready);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            bad
        });
        let started = Instant::now();
        let out = install_out(m2, &["ha", &format!("load-balancer-address={new}")]);
        let took = started.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        stop_watch.store(true, Ordering::SeqCst);
        (out, took, watcher.join().unwrap())
    });
    let err = stderr(&out);
    assert_ok(&out, "the address change from m2");
    eprintln!("the address change took {took:?}");
    for phase in ["add-name", "switch", "drop-name"] {
        assert!(err.contains(&format!("phase {phase} done on every master that is up")), "no {phase} in:\n{err}");
    }
    for m in ["m1", "m2", "m3"] {
        assert!(err.lines().any(|l| l.contains(&format!("  {m} ")) && l.contains(": done: ")), "no {m} in:\n{err}");
    }
    assert!(err.contains(&format!("every master serves {new}; the old name is dropped")), "{err}");
    for l in &loops {
        let n = l.samples().len();
        assert!(n > 50, "{}: {n} requests", l.name);
        assert_eq!(l.errors_since(l.samples()[0].at), vec![], "requests failed through {}'s balancer", l.name);
    }
    drop(loops);
    assert_eq!(not_ready, Vec::<Vec<String>>::new(), "a Node was not Ready during the change");
    let after: Vec<_> = cluster.hosts().map(component_pids).collect();
    assert_eq!(after, pids, "no component restarted");
    for m in &cluster.masters {
        let names = m.served_names(&api(m));
        assert!(names.contains(&format!("IP Address:{}", lb2.host.addr)), "{}: {names}", m.name);
        assert!(!names.contains(&format!("IP Address:{}", lb1.host.addr)), "{}: {names}", m.name);
        assert_eq!(admin_server(m), format!("https://{new}"), "{}", m.name);
    }
    assert_ok(&m3.kubectl(&["get", "nodes"]), "kubectl through the new load balancer");

    // Bad input, each refused before anything changes.
    let settings = |h: &Host| {
        let json: serde_json::Value = serde_json::from_slice(&h.hakube(&["status", "--json"]).stdout).unwrap();
        (json["cluster"]["settings_revision"].clone(), json["cluster"]["settings"].clone())
    };
    let before = settings(m3);
    let out = install_out(m3, &[&format!("load-balancer-address={new}")]);
    assert_ok(&out, "the same address again");
    assert!(stderr(&out).contains(&format!("the load-balancer address is {new} already: nothing to change")));
    for (addr, check, says) in [
        ("nowhere.invalid:6443".to_owned(), "load-balancer-resolves", "does not resolve"),
        (format!("{}:7443", lb1.host.addr), "load-balancer-accepts", "accepts no TCP connection"),
        (format!("{}:2379", m1.addr), "load-balancer-reaches-cluster", "does not reach an API server of this cluster"),
    ] {
        let out = install_out(m3, &[&format!("load-balancer-address={addr}")]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{addr}: {err}");
        assert!(err.contains(&format!("[{check}]")) && err.contains(says), "{addr}: {err}");
        assert!(err.contains("nothing was written"), "{err}");
    }
    assert_eq!(settings(m3), before, "refused changes leave the settings alone");

    // A second change while one is under way is refused with the state of
    // the first; a master that is down meanwhile catches up when it returns.
    m3.kill_all();
    let (second, first) = std::thread::scope(|s| {
        let first = s.spawn(|| install_out(m1, &["ha", &format!("load-balancer-address={old}")]));
        let deadline = Instant::now() + Duration::from_secs(30);
        let record = || stdout(&m2.etcdctl(Some("apiserver-etcd-client"), &["get", "/hakube/cluster/settings"]));
        while !record().contains("loadBalancerChange") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let second = install_out(m2, &["ha", &format!("load-balancer-address={}", api(m1))]);
        (second, first.join().unwrap())
    });
    let err = stderr(&second);
    assert!(!second.status.success(), "{err}\nwhile the first said:\n{}", stderr(&first));
    assert!(err.contains(&format!("from {new} to {old} is under way")) && err.contains("started by m1"), "{err}");
    let err = stderr(&first);
    assert_ok(&first, "the change with m3 down");
    assert!(err.lines().any(|l| l.contains("m3") && l.contains("down: no heartbeat")), "{err}");
    assert_ok(&install_out(m3, &["ha"]), "m3 back");
    wait_for("m3 to catch up: its API server presents the address in force", Duration::from_secs(90), || {
        let names = m3.served_names(&api(m3));
        names.contains(&format!("IP Address:{}", lb1.host.addr))
            && !names.contains(&format!("IP Address:{}", lb2.host.addr))
    });
    wait_for("m3's admin kubeconfig to use the address in force", Duration::from_secs(30), || {
        admin_server(m3) == format!("https://{old}")
    });
    wait_for("all five Nodes Ready again", Duration::from_secs(120), || ready_nodes(m1) == all);
}
