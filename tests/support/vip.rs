//! The virtual IP as a client and an observer see it: which masters have
//! an address, sampled every 100 ms inside each master's namespace, and a
//! client connecting to it every 100 ms. Shared by the virtual-IP test and
//! its benchmark against keepalived.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// (when, the masters that had the address).
type Samples = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

/// Which masters have the address, sampled every 100 ms from inside each
/// master's namespace, until dropped.
pub struct Watch {
    stop: Arc<AtomicBool>,
    samples: Samples,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    pub fn start(masters: &[&Host], vip: Ipv4Addr) -> Watch {
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
    pub fn holder(&self) -> Option<String> {
        match self.samples.lock().unwrap().last() {
            Some((_, have)) if have.len() == 1 => Some(have[0].clone()),
            _ => None,
        }
    }

    /// Whether the last sample found the address on no master.
    pub fn nowhere(&self) -> bool {
        self.samples.lock().unwrap().last().is_some_and(|(_, have)| have.is_empty())
    }

    /// Waits (bounded) until a master other than `not` has the address;
    /// which, and how long after `since`. Panics, showing the last
    /// samples, when it has not within three times `limit`.
    pub fn moved(&self, not: &str, since: Instant, limit: Duration) -> (String, Duration) {
        self.moved_within(not, since, limit * 3).unwrap_or_else(|| {
            let samples = self.samples.lock().unwrap();
            let tail: Vec<_> = samples.iter().rev().take(5).map(|(at, h)| (*at - since, h.clone())).collect();
            panic!("the address never moved off {not}; the last samples (since the fault, holders): {tail:?}");
        })
    }

    /// Waits until a master other than `not` has the address (whether or
    /// not `not` still has it too), for at most `limit`; which, and how
    /// long after `since`.
    pub fn moved_within(&self, not: &str, since: Instant, limit: Duration) -> Option<(String, Duration)> {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .samples
                .lock()
                .unwrap()
                .iter()
                .filter(|(at, _)| *at >= since)
                .find_map(|(at, have)| have.iter().find(|h| *h != not).map(|h| (h.clone(), *at - since)));
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many samples since `since` found the address on two masters or more.
    pub fn doubles_since(&self, since: Instant) -> usize {
        self.samples.lock().unwrap().iter().filter(|(at, h)| *at >= since && h.len() > 1).count()
    }

    /// Every sample that found the address on two masters or more.
    pub fn doubles(&self) -> Vec<Vec<String>> {
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

/// A check run from `client`'s namespace every 100 ms, until dropped; each
/// result kept with its time: the longest run of failures is the gap a
/// client sees.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A TCP connect to VIP:6443 (300 ms timeout): something listens there.
pub type Connector = Sampler;

impl Sampler {
    /// Connects to VIP:6443 every 100 ms.
    pub fn start(client: &Host, vip: Ipv4Addr) -> Sampler {
        let to = SocketAddr::from((vip, 6443));
        Sampler::run(client, move || TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_ok())
    }

    /// Runs `check` every 100 ms in `client`'s namespace (and so does any
    /// process it starts).
    pub fn run(client: &Host, mut check: impl FnMut() -> bool + Send + 'static) -> Sampler {
        let (stop, results) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(vec![])));
        let (stop2, results2, ns) = (stop.clone(), results.clone(), client.ns.clone());
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("the client's namespace");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            while !stop2.load(Ordering::SeqCst) {
                let started = Instant::now();
                let ok = check();
                results2.lock().unwrap().push((started, ok));
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
        });
        Sampler { stop, results, thread: Some(thread) }
    }

    /// Whether a check succeeded at or after `at`.
    pub fn succeeded_since(&self, at: Instant) -> bool {
        self.results.lock().unwrap().iter().any(|(t, ok)| *ok && *t >= at)
    }

    /// The longest span without a successful check since `since` (up to
    /// the last one, when none succeeded since).
    pub fn longest_gap(&self, since: Instant) -> Duration {
        longest_gap(&self.results.lock().unwrap(), since)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The pid of a host's agent, from its pid file.
pub fn agent(h: &Host) -> u32 {
    std::fs::read_to_string(h.root().join("var/lib/hakube/agent.pid")).unwrap().trim().parse().unwrap()
}

/// Starts a host's agent again, as a booting host's systemd would.
pub fn boot(h: &Host) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(h.root().join("var/lib/hakube/logs/agent.log"))
        .unwrap();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &h.ns, hakube(), "--root"]).arg(h.root()).arg("agent").env("PATH", path_env());
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    // Detached, as systemd's child would be; reaped when it exits (as
    // systemd would), so that a stopped agent leaves no zombie behind.
    match cmd.spawn() {
        Ok(mut child) => drop(std::thread::spawn(move || child.wait())),
        Err(e) => panic!("cannot start the agent of {}: {e}", h.name),
    }
}

/// The longest span without a success in `results` (time, success) since
/// `since`, up to the last result when the last ones failed.
pub fn longest_gap(results: &[(Instant, bool)], since: Instant) -> Duration {
    let mut last_ok = since;
    let mut longest = Duration::ZERO;
    for (at, ok) in results.iter().filter(|(at, _)| *at >= since) {
        if *ok {
            longest = longest.max(*at - last_ok);
            last_ok = *at;
        } else {
            longest = longest.max(at.saturating_duration_since(last_ok));
        }
    }
    longest
}
