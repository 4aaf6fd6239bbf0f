//! The virtual IP on a real cluster: three masters and a worker on one
//! bridge, `vip=` at install and no load balancer. A client on the worker
//! connects to VIP:6443 every 100 ms; every master's addresses are sampled
//! every 100 ms. Each fault moves the address within its bound, and no
//! sample ever finds it on two masters.

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// (when, the masters that had the address).
type Samples = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

/// Which masters have the address, sampled every 100 ms from inside each
/// master's namespace, until dropped.
struct Watch {
    stop: Arc<AtomicBool>,
    samples: Samples,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(masters: &[&Host], vip: Ipv4Addr) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(vec![]));
        let hosts: Vec<(String, String)> = masters.iter().map(|m| (m.name.clone(), m.ns.clone())).collect();
        let (stop2, samples2) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            // One thread per master, each in its namespace, answering on demand.
            let (tx, rx) = std::sync::mpsc::channel::<(usize, bool)>();
            let asks: Vec<std::sync::mpsc::Sender<()>> = hosts
                .iter()
                .enumerate()
                .map(|(i, (_, ns))| {
                    let (ask_tx, ask_rx) = std::sync::mpsc::channel::<()>();
                    let (ns, tx) = (ns.clone(), tx.clone());
                    std::thread::spawn(move || {
                        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("the master's namespace");
                        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                        while ask_rx.recv().is_ok() {
                            let _ = tx.send((i, hakube::vip::address::present(vip)));
                        }
                    });
                    ask_tx
                })
                .collect();
            while !stop2.load(Ordering::SeqCst) {
                for a in &asks {
                    let _ = a.send(());
                }
                let mut have = vec![];
                for _ in 0..asks.len() {
                    if let Ok((i, true)) = rx.recv_timeout(Duration::from_secs(2)) {
                        have.push(hosts[i].0.clone());
                    }
                }
                have.sort();
                samples2.lock().unwrap().push((Instant::now(), have));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watch { stop, samples, thread: Some(thread) }
    }

    /// The one master that has the address now, if exactly one does.
    fn holder(&self) -> Option<String> {
        match self.samples.lock().unwrap().last() {
            Some((_, have)) if have.len() == 1 => Some(have[0].clone()),
            _ => None,
        }
    }

    /// Waits (bounded) until a master other than `not` has the address;
    /// which, and how long after `since`.
    fn moved(&self, not: &str, since: Instant, limit: Duration) -> (String, Duration) {
        let deadline = Instant::now() + limit * 3;
        loop {
            let found = self
                .samples
                .lock()
                .unwrap()
                .iter()
                .find(|(at, have)| *at >= since && have.len() == 1 && have[0] != not)
                .map(|(at, have)| (have[0].clone(), *at - since));
            if let Some(f) = found {
                return f;
            }
            if Instant::now() > deadline {
                let samples = self.samples.lock().unwrap();
                let tail: Vec<_> = samples.iter().rev().take(5).map(|(at, h)| (*at - since, h.clone())).collect();
                panic!("the address never moved off {not}; the last samples (since the fault, holders): {tail:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every sample that found the address on two masters or more.
    fn doubles(&self) -> Vec<Vec<String>> {
        self.samples.lock().unwrap().iter().filter(|(_, h)| h.len() > 1).map(|(_, h)| h.clone()).collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connect to VIP:6443 from `client`'s namespace every 100 ms (300 ms
/// timeout), until dropped: the longest run of failures is the gap a
/// client sees.
struct Connector {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Connector {
    fn start(client: &Host, vip: Ipv4Addr) -> Connector {
        let (stop, results) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(vec![])));
        let (stop2, results2, ns) = (stop.clone(), results.clone(), client.ns.clone());
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("the client's namespace");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let to = SocketAddr::from((vip, 6443));
            while !stop2.load(Ordering::SeqCst) {
                let started = Instant::now();
                let ok = TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_ok();
                results2.lock().unwrap().push((started, ok));
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
        });
        Connector { stop, results, thread: Some(thread) }
    }

    /// Whether a connect succeeded at or after `at`.
    fn succeeded_since(&self, at: Instant) -> bool {
        self.results.lock().unwrap().iter().any(|(t, ok)| *ok && *t >= at)
    }

    /// The longest span without a successful connect since `since`.
    fn longest_gap(&self, since: Instant) -> Duration {
        let r = self.results.lock().unwrap();
        let mut last_ok = since;
        let mut longest = Duration::ZERO;
        for (at, ok) in r.iter().filter(|(at, _)| *at >= since) {
            if *ok {
                longest = longest.max(*at - last_ok);
                last_ok = *at;
            }
        }
        longest
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn agent(h: &Host) -> u32 {
    std::fs::read_to_string(h.root().join("var/lib/hakube/agent.pid")).unwrap().trim().parse().unwrap()
}

/// Starts a host's agent again, as a booting host's systemd would.
fn boot(h: &Host) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(h.root().join("var/lib/hakube/logs/agent.log"))
        .unwrap();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &h.ns, hakube(), "--root"]).arg(h.root()).arg("agent").env("PATH", path_env());
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    // Detached, as systemd's child would be: never waited for here.
    if let Err(e) = cmd.spawn() {
        panic!("cannot start the agent of {}: {e}", h.name);
    }
}

#[test]
fn one_master_holds_the_virtual_ip_and_it_moves_within_bounds_never_to_two() {
    // The address .100 of the cluster's subnet.
    let vip_of = |h: &Host| {
        let o: Vec<u8> = h.addr.split('.').map(|o| o.parse().unwrap()).collect();
        Ipv4Addr::new(o[0], o[1], o[2], 100)
    };
    let c = Cluster::with_install_for(3, 1, |m1| vec!["ha".into(), format!("vip={}", vip_of(m1))], &[]);
    let (m1, w1) = (c.host("m1"), c.host("w1"));
    let vip = vip_of(m1);
    let masters: Vec<&Host> = c.masters.iter().collect();
    let watch = Watch::start(&masters, vip);
    wait_for("a master to hold the virtual IP", Duration::from_secs(120), || watch.holder().is_some());
    let client = Connector::start(w1, vip);
    wait_for("kubectl through the virtual IP", Duration::from_secs(60), || {
        m1.kubectl(&["get", "nodes"]).status.success()
    });
    let status = stdout(&m1.hakube(&["status"]));
    let first = watch.holder().unwrap();
    assert!(status.contains(&format!("virtual IP {vip}: held by {first} since")), "{status}");

    // Each fault on whoever holds the address, the bound it must move within.
    let mut figures: Vec<(&str, Duration, Duration)> = vec![];
    let mut fault = |what: &'static str, bound: Duration, hit: &dyn Fn(&Host), heal: &dyn Fn(&Host)| {
        let holder = watch.holder().expect("a holder before the fault");
        let h = c.host(&holder);
        let t = Instant::now();
        hit(h);
        let moved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| watch.moved(&holder, t, bound)));
        let (next, took) = moved.unwrap_or_else(|e| {
            for m in &c.masters {
                let log = std::fs::read_to_string(m.root().join("var/lib/hakube/logs/agent.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains("virtual IP") || l.contains("vip")).collect();
                eprintln!("--- {} agent.log, virtual IP lines:\n{}", m.name, lines.join("\n"));
                let state = m.state();
                let health: Vec<String> = state["components"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(c, s)| format!("{c} {} {}", s["phase"], s["healthy"]))
                    .collect();
                eprintln!("--- {} components: {}; vip part {}", m.name, health.join(", "), state["vip"]);
            }
            std::panic::resume_unwind(e)
        });
        // The client reaches the new holder (its neighbour cache told by
        // the announcements), then the gap it saw is known.
        wait_for("the client to connect to the new holder", Duration::from_secs(10), || {
            client.succeeded_since(t + took)
        });
        let gap = client.longest_gap(t);
        eprintln!(
            "{what}: {holder} -> {next} in {:.2}s; the client's longest gap {:.2}s",
            took.as_secs_f64(),
            gap.as_secs_f64()
        );
        figures.push((what, took, gap));
        assert!(took <= bound, "{what}: the address moved after {took:?}, more than {bound:?}");
        let n = c.host(&next);
        wait_for("kubectl through the virtual IP after the move", Duration::from_secs(30), || {
            n.kubectl(&["get", "nodes"]).status.success()
        });
        heal(h);
        // Healthy as a running agent says: its own state, written by a live agent.
        wait_for("the old holder healthy again", Duration::from_secs(240), || {
            let s = h.state();
            let live = s["agent_pid"].as_u64().is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            live && ["etcd", "kube-apiserver"].iter().all(|c| s["components"][c]["healthy"] == true)
        });
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(watch.holder().as_deref(), Some(next.as_str()), "{what}: the address stays where it went");
    };
    let nothing = |_: &Host| {};
    // A graceful stop: the agent hands the address over, then stops its
    // components; the host is started again once it has stopped.
    let stop = |h: &Host| {
        sh("kill", &["-TERM", &agent(h).to_string()]);
    };
    let boot_once_stopped = |h: &Host| {
        let pid = agent(h);
        wait_for("the agent to stop", Duration::from_secs(120), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        boot(h);
    };
    fault("the holder's agent stops", Duration::from_secs(1), &stop, &boot_once_stopped);
    fault(
        "the holder's kube-apiserver is killed",
        Duration::from_secs(5),
        &|h| {
            let s = h.state();
            sh("kill", &["-KILL", &s["components"]["kube-apiserver"]["pid"].to_string()]);
        },
        &nothing,
    );
    fault(
        "the holder loses power",
        Duration::from_secs(8),
        &|h| {
            h.kill_all();
            h.kill_pods();
        },
        &boot,
    );
    fault("the holder is cut off", Duration::from_secs(10), &|h| c.net.set_link(h, false), &|h| {
        c.net.set_link(h, true)
    });
    assert_eq!(watch.doubles(), Vec::<Vec<String>>::new(), "the address on two masters at once");
    for (what, moved, gap) in &figures {
        eprintln!("{what:<40} moved in {:>5.2}s, longest connect gap {:>5.2}s", moved.as_secs_f64(), gap.as_secs_f64());
    }

    // A re-run keeps the address; another one is refused before anything changes.
    let m2 = c.host("m2");
    assert_ok(&m2.install_master_unchecked(&["ha"], &[]), "a re-run without vip=");
    let other = Ipv4Addr::new(vip.octets()[0], vip.octets()[1], vip.octets()[2], 101);
    let out = m2.install_master_unchecked(&["ha", &format!("vip={other}")], &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("cannot change (it is {vip}, asked for {other}): nothing was written")), "{err}");
    let status = stdout(&m2.hakube(&["status"]));
    assert!(status.contains(&format!("virtual IP {vip}: held by")), "{status}");
    drop(watch);
    drop(client);
}
