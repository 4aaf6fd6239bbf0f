//! The node-local load balancer: every node's agent listens on
//! `127.0.0.1:6444` and passes TCP through to the masters' API servers, so
//! the node's kubelet (and, in `ha` mode without an external balancer, the
//! admin kubeconfig) reaches the control plane through whichever master is
//! up, and never has to change when masters come, go or the external
//! balancer's address changes.
//!
//! - Backends: the masters this node knows (`masters.json`, kept by the
//!   agent from the registry, seeded at join), re-read every check
//!   interval; connections to backends that stay are left alone, those to
//!   a removed one are closed; an empty list is never applied.
//! - Health: an active HTTPS `GET /readyz` per backend every interval,
//!   verified against the cluster CA (`fall` failures take it out, `rise`
//!   successes bring it back), and passive: a failed dial takes the
//!   backend out at once and the same client connection goes to the next.
//! - A backend that stops answering has every connection through it closed
//!   at once, so clients reconnect now instead of when their HTTP/2 ping
//!   times out (about 45 s). One that answers "not ready" (an API server
//!   shutting down gracefully, during its `--shutdown-delay-duration`) gets
//!   no new connection, and its open ones are left to finish for [`DRAIN`]:
//!   the server ends them itself (GOAWAY), and a request in flight is not
//!   cut; after that they are closed too (a server that stays unready).
//!   With every backend down it fails open: all are tried.
//! - It runs on a thread of its own, so that nothing the agent does can
//!   delay a byte, and it outlives reloads: nothing restarts when the
//!   backend list changes.
//! - It can hand its listening socket over to the agent's successor (an
//!   agent that moves to another hakube build, [`Handle::hand_over`]): it
//!   stops accepting, lets the connections it relays finish (bounded), and
//!   gives the socket back, open. Clients that connect meanwhile wait in
//!   the socket's queue for the successor to accept them: none is refused.

pub mod health;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{info, warn};

pub use health::Health;
use health::{Track, Transition};

use crate::config::{ClusterConfig, Host, HostPort};
use crate::host::clock::now_secs;
use crate::host::paths::Paths;
use crate::https::{self, Limits, Request};

/// How long the open connections of a backend that answers "not ready"
/// are left to finish before they are closed.
pub const DRAIN: Duration = Duration::from_secs(15);

/// How long a balancer handing its socket over lets the connections it
/// relays finish: a request takes milliseconds; what is still open after
/// this is a watch or a stream, which its client opens again.
pub const HAND_OVER_DRAIN: Duration = Duration::from_secs(2);

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failed {
    /// The server answered, not ready: it is alive (starting, or draining).
    Answered(String),
    /// No answer: what goes through it is dead.
    Silent(String),
}

/// Each direction's buffer: large enough never to throttle a watch or a
/// log stream (small buffers cost whole round trips per request).
const BUFFER: usize = 64 << 10;
/// How long a dial to a backend may take before the next is tried: the
/// masters share a network with the node, where a connect takes well
/// under a millisecond.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle time before TCP keep-alive probes start, then between them.
const KEEPALIVE_IDLE: u32 = 30;
const KEEPALIVE_INTERVAL: u32 = 10;

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub interval: Duration,
    pub fall: u32,
    pub rise: u32,
    /// The cluster CA the backends' certificates must chain to.
    pub ca_file: PathBuf,
}

impl Options {
    pub fn new(paths: &Paths, c: &ClusterConfig) -> Options {
        let lb = &c.node.local_load_balancer;
        let listen = match c.local_lb_endpoint().host {
            Host::Ip(ip) => SocketAddr::new(ip, lb.port),
            Host::Dns(_) => unreachable!("the local endpoint is a loopback address"),
        };
        Options {
            listen,
            interval: Duration::from_millis(lb.check_interval_ms.into()),
            fall: lb.fall,
            rise: lb.rise,
            ca_file: paths.pki("ca.crt"),
        }
    }
}

/// A backend to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
}

/// What the balancer reports (into `state.json`, for `status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub listen: String,
    pub listening: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    pub health: Health,
    /// Since when it is in that state (unix seconds).
    pub since: u64,
    /// Connections through it now.
    pub active: usize,
    /// Connections through it since the balancer started.
    pub connections: u64,
    /// Connections it could not take (dial refused or unanswered), each
    /// then tried on the next backend, since the balancer started.
    #[serde(default)]
    pub dial_failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The running balancer.
pub struct Handle {
    pub status: watch::Receiver<Status>,
    stop: watch::Sender<Stop>,
    /// Where the listening socket comes back after a hand-over.
    given: Given,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How the balancer is told to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// Close the socket and every connection.
    Now,
    /// Stop accepting, keep the socket for a successor, and end once the
    /// connections relayed have finished or at this time.
    HandOver(std::time::Instant),
}

type Given = Arc<std::sync::Mutex<Option<std::net::TcpListener>>>;

impl Handle {
    /// Stops listening and closes every connection.
    pub fn stop(mut self) {
        let _ = self.stop.send(Stop::Now);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops accepting, waits up to `drain` for the connections it relays
    /// to finish (the rest are closed), and returns its listening socket,
    /// still open, for a successor ([`spawn_with`]); None if it was not
    /// listening. Blocks the calling thread until then.
    pub fn hand_over(mut self, drain: Duration) -> Option<std::net::TcpListener> {
        let _ = self.stop.send(Stop::HandOver(std::time::Instant::now() + drain));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.given.lock().ok()?.take()
    }
}

/// Starts the balancer on a thread of its own. `targets` is asked for the
/// backends every check interval; an empty answer keeps the last list.
pub fn spawn(opts: Options, targets: impl FnMut() -> Vec<Target> + Send + 'static) -> std::io::Result<Handle> {
    spawn_with(opts, targets, None)
}

/// As [`spawn`], accepting on `inherited` (a predecessor's socket, from
/// [`Handle::hand_over`]) when it listens on `opts.listen`; otherwise it
/// is closed and the balancer binds its own.
pub fn spawn_with(
    opts: Options,
    targets: impl FnMut() -> Vec<Target> + Send + 'static,
    inherited: Option<std::net::TcpListener>,
) -> std::io::Result<Handle> {
    let (status_tx, status) = watch::channel(Status { listen: opts.listen.to_string(), ..Status::default() });
    let (stop, stop_rx) = watch::channel(Stop::Running);
    let given: Given = Arc::default();
    let inherited = inherited.filter(|l| {
        let fits = l.local_addr().is_ok_and(|a| a == opts.listen) && l.set_nonblocking(true).is_ok();
        if !fits {
            warn!(listen = %opts.listen, "the socket handed over does not listen there: binding anew");
        }
        fits
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let g = given.clone();
    let thread = std::thread::Builder::new().name("hakube-lb".into()).spawn(move || {
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, run(opts, targets, status_tx, stop_rx, inherited, g));
    })?;
    Ok(Handle { status, stop, given, thread: Some(thread) })
}

struct Backend {
    name: String,
    addr: SocketAddr,
    track: Track,
    since: u64,
    last_error: Option<String>,
    active: Rc<Cell<usize>>,
    connections: u64,
    dial_failures: u64,
    /// Bumped to close every connection through this backend.
    cut: watch::Sender<u64>,
    /// Down but answering: its open connections are closed at this time.
    drain_until: Option<std::time::Instant>,
    checker: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    fn close_all(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

#[derive(Default)]
struct Table {
    backends: Vec<Backend>,
    next: usize,
    fall: u32,
    rise: u32,
    /// A backend rose or fell: the status is published now, not at the
    /// next tick (`hakube status` would lag a decision by up to an interval).
    changed: Rc<tokio::sync::Notify>,
    /// Client connections being relayed (or dialled) now.
    relaying: Rc<Cell<usize>>,
}

/// Counts a connection through a backend while it lives.
struct Attached(Rc<Cell<usize>>);

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl Table {
    /// Where to send the next connection, in order: the backends that are
    /// up, round-robin; when none is, every backend (fail open), the
    /// unchecked first.
    fn order(&mut self) -> Vec<SocketAddr> {
        let turn = self.next;
        self.next = self.next.wrapping_add(1);
        let of = |h: Health| {
            let mut v: Vec<SocketAddr> = self.backends.iter().filter(|b| b.track.health == h).map(|b| b.addr).collect();
            if !v.is_empty() {
                let n = v.len();
                v.rotate_left(turn % n);
            }
            v
        };
        let up = of(Health::Up);
        if !up.is_empty() {
            return up;
        }
        let mut all = of(Health::Unchecked);
        all.extend(of(Health::Down));
        all
    }

    fn get(&mut self, addr: SocketAddr) -> Option<&mut Backend> {
        self.backends.iter_mut().find(|b| b.addr == addr)
    }

    /// Applies a new backend list; returns the addresses that are new.
    fn set_targets(&mut self, targets: &[Target]) -> Vec<SocketAddr> {
        if targets.is_empty() {
            return vec![];
        }
        self.backends.retain(|b| {
            let keep = targets.iter().any(|t| t.addr == b.addr);
            if !keep {
                info!(backend = %b.name, address = %b.addr, "API server backend removed: closing its connections");
                b.close_all();
                if let Some(c) = &b.checker {
                    c.abort();
                }
            }
            keep
        });
        let mut added = vec![];
        for t in targets {
            match self.backends.iter_mut().find(|b| b.addr == t.addr) {
                Some(b) => b.name.clone_from(&t.name),
                None => {
                    info!(backend = %t.name, address = %t.addr, "API server backend added");
                    self.backends.push(Backend {
                        name: t.name.clone(),
                        addr: t.addr,
                        track: Track::default(),
                        since: now_secs(),
                        last_error: None,
                        active: Rc::new(Cell::new(0)),
                        connections: 0,
                        dial_failures: 0,
                        cut: watch::channel(0).0,
                        drain_until: None,
                        checker: None,
                    });
                    added.push(t.addr);
                }
            }
        }
        added
    }

    /// Acts on a transition: `sever` closes the connections of a backend
    /// that fell at once, else they drain (see [`DRAIN`]).
    fn apply(&mut self, addr: SocketAddr, t: Transition, why: Option<String>, sever: bool, now: std::time::Instant) {
        if t != Transition::None {
            self.changed.notify_one();
        }
        let Some(b) = self.get(addr) else { return };
        match t {
            Transition::None => {}
            Transition::Rose => {
                b.since = now_secs();
                b.drain_until = None;
                info!(backend = %b.name, address = %b.addr, "API server backend is up");
            }
            Transition::Fell if sever => {
                b.since = now_secs();
                warn!(
                    backend = %b.name,
                    address = %b.addr,
                    reason = why.as_deref().unwrap_or(""),
                    active = b.active.get(),
                    "API server backend is down: closing its connections"
                );
                b.close_all();
            }
            Transition::Fell => {
                b.since = now_secs();
                b.drain_until = Some(now + DRAIN);
                warn!(
                    backend = %b.name,
                    address = %b.addr,
                    reason = why.as_deref().unwrap_or(""),
                    active = b.active.get(),
                    "API server backend is not ready: no new connections; its open ones may finish for {}s",
                    DRAIN.as_secs()
                );
            }
        }
        if b.track.health == Health::Down && b.drain_until.is_some_and(|d| sever || now >= d) {
            b.drain_until = None;
            if t != Transition::Fell {
                warn!(backend = %b.name, address = %b.addr, active = b.active.get(), "API server backend still down: closing its connections");
            }
            b.close_all();
        }
        if why.is_some() {
            b.last_error = why;
        }
    }

    fn checked(&mut self, addr: SocketAddr, result: Result<(), Failed>, now: std::time::Instant) {
        let (fall, rise) = (self.fall, self.rise);
        let Some(b) = self.get(addr) else { return };
        let t = b.track.check(result.is_ok(), fall, rise);
        let (why, sever) = match result {
            Ok(()) => (None, false),
            Err(Failed::Answered(w)) => (Some(w), false),
            Err(Failed::Silent(w)) => (Some(w), true),
        };
        self.apply(addr, t, why, sever, now);
    }

    fn dial_failed(&mut self, addr: SocketAddr, why: String) {
        let fall = self.fall;
        let Some(b) = self.get(addr) else { return };
        b.dial_failures += 1;
        let t = b.track.dial_failed(fall);
        self.apply(addr, t, Some(format!("dial: {why}")), true, std::time::Instant::now());
    }

    /// A connection through `addr` begins: what closes it, and its count.
    fn attach(&mut self, addr: SocketAddr) -> Option<(watch::Receiver<u64>, Attached)> {
        let b = self.get(addr)?;
        b.connections += 1;
        b.active.set(b.active.get() + 1);
        let mut cut = b.cut.subscribe();
        cut.borrow_and_update();
        Some((cut, Attached(b.active.clone())))
    }

    fn status(&self) -> Vec<BackendStatus> {
        self.backends
            .iter()
            .map(|b| BackendStatus {
                name: b.name.clone(),
                address: b.addr.to_string(),
                health: b.track.health,
                since: b.since,
                active: b.active.get(),
                connections: b.connections,
                dial_failures: b.dial_failures,
                last_error: b.last_error.clone(),
            })
            .collect()
    }
}

async fn run(
    opts: Options,
    mut targets: impl FnMut() -> Vec<Target>,
    status: watch::Sender<Status>,
    mut stop: watch::Receiver<Stop>,
    inherited: Option<std::net::TcpListener>,
    given: Given,
) {
    let table = Rc::new(RefCell::new(Table { fall: opts.fall, rise: opts.rise, ..Table::default() }));
    let changed = table.borrow().changed.clone();
    let relaying = table.borrow().relaying.clone();
    let listening: Rc<RefCell<Result<(), String>>> = Rc::new(RefCell::new(Err("starting".into())));
    let server =
        tokio::task::spawn_local(serve(opts.listen, inherited, table.clone(), listening.clone(), stop.clone(), given));
    let tls = Rc::new(RefCell::new(None));
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let added = table.borrow_mut().set_targets(&targets());
        for addr in added {
            let checker = tokio::task::spawn_local(check_loop(addr, opts.clone(), table.clone(), tls.clone()));
            if let Some(b) = table.borrow_mut().get(addr) {
                b.checker = Some(checker);
            }
        }
        let now = {
            let l = listening.borrow();
            Status {
                listen: opts.listen.to_string(),
                listening: l.is_ok(),
                error: l.clone().err(),
                backends: table.borrow().status(),
            }
        };
        status.send_if_modified(|s| {
            let changed = *s != now;
            *s = now;
            changed
        });
        let ending = *stop.borrow();
        match ending {
            Stop::Running => {}
            Stop::Now => break,
            // Handing over: the server gave the socket back; the relays
            // go on (and the checks that may cut them) until they finish.
            Stop::HandOver(until) => {
                if relaying.get() == 0 || std::time::Instant::now() >= until {
                    if relaying.get() > 0 {
                        info!(connections = relaying.get(), "handing over: closing the connections still open");
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = changed.notified() => {}
            _ = stop.changed() => {}
        }
    }
    for b in &table.borrow().backends {
        b.close_all();
        if let Some(c) = &b.checker {
            c.abort();
        }
    }
    let _ = server.await;
}

/// Listens (on the socket handed over, or binding it, retrying while the
/// port is taken) and relays every connection; on a hand-over, stops
/// accepting and puts the socket in `given`.
async fn serve(
    listen: SocketAddr,
    inherited: Option<std::net::TcpListener>,
    table: Rc<RefCell<Table>>,
    listening: Rc<RefCell<Result<(), String>>>,
    mut stop: watch::Receiver<Stop>,
    given: Given,
) {
    let mut inherited = inherited.and_then(|l| match TcpListener::from_std(l) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(error = %e, "cannot use the socket handed over: binding anew");
            None
        }
    });
    let took_over = inherited.is_some();
    let listener = loop {
        if let Some(l) = inherited.take() {
            break l;
        }
        match TcpListener::bind(listen).await {
            Ok(l) => break l,
            Err(e) => {
                let why = format!("cannot listen on {listen}: {e}");
                if listening.borrow().as_ref().err() != Some(&why) {
                    warn!("{why}; retrying every 2s");
                }
                *listening.borrow_mut() = Err(why);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    if took_over {
        info!(%listen, "node-local load balancer listening (on the socket handed over)");
    } else {
        info!(%listen, "node-local load balancer listening");
    }
    *listening.borrow_mut() = Ok(());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let relaying = Relaying::new(&table.borrow().relaying);
                    tokio::task::spawn_local(relay(client, table.clone(), relaying));
                }
                Err(e) => {
                    // Out of descriptors and the like: pause, do not spin.
                    warn!(error = %e, "load balancer cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => {
                let ending = *stop.borrow();
                match ending {
                    Stop::Running => {}
                    Stop::Now => return,
                    Stop::HandOver(_) => {
                        match listener.into_std() {
                            Ok(l) => *given.lock().expect("not poisoned") = Some(l),
                            Err(e) => warn!(error = %e, "cannot hand the listening socket over"),
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// Counts a client connection while it is relayed.
struct Relaying(Rc<Cell<usize>>);

impl Relaying {
    fn new(count: &Rc<Cell<usize>>) -> Relaying {
        count.set(count.get() + 1);
        Relaying(count.clone())
    }
}

impl Drop for Relaying {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

fn tune(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = s.set_nodelay(true);
    let _ = setsockopt(s, sockopt::KeepAlive, &true);
    let _ = setsockopt(s, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE);
    let _ = setsockopt(s, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL);
}

/// One client connection: to the first backend that answers, then bytes
/// both ways until either side closes or the backend is taken out.
async fn relay(mut client: TcpStream, table: Rc<RefCell<Table>>, _relaying: Relaying) {
    tune(&client);
    let order = table.borrow_mut().order();
    for addr in order {
        let mut server = match timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                table.borrow_mut().dial_failed(addr, e.to_string());
                continue;
            }
            Err(_) => {
                table.borrow_mut().dial_failed(addr, format!("no answer within {DIAL_TIMEOUT:?}"));
                continue;
            }
        };
        tune(&server);
        let Some((mut cut, _attached)) = table.borrow_mut().attach(addr) else { return };
        tokio::select! {
            _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER) => {}
            _ = cut.changed() => {}
        }
        return;
    }
    // No backend answered: dropping the client closes its connection.
}

/// Checks one backend every interval for as long as it is in the table.
async fn check_loop(
    addr: SocketAddr,
    opts: Options,
    table: Rc<RefCell<Table>>,
    tls: Rc<RefCell<Option<Arc<rustls::ClientConfig>>>>,
) {
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = check(addr, &opts, &tls).await;
        table.borrow_mut().checked(addr, result, std::time::Instant::now());
    }
}

/// `GET /readyz` on a fresh connection, verified against the cluster CA,
/// bounded by the check interval.
async fn check(
    addr: SocketAddr,
    opts: &Options,
    tls: &Rc<RefCell<Option<Arc<rustls::ClientConfig>>>>,
) -> Result<(), Failed> {
    let cached = tls.borrow().clone();
    let config = match cached {
        Some(c) => c,
        None => {
            let ca =
                std::fs::read(&opts.ca_file).map_err(|e| Failed::Silent(format!("{}: {e}", opts.ca_file.display())))?;
            let c = Arc::new(https::client_config(&ca, None).map_err(|e| Failed::Silent(e.to_string()))?);
            *tls.borrow_mut() = Some(c.clone());
            c
        }
    };
    let bound = opts.interval.min(Duration::from_secs(2));
    let limits = Limits { connect: bound, exchange: bound, max_body: 16 << 10 };
    let at = HostPort::new(Host::Ip(addr.ip()), addr.port());
    let resp = https::request(&at, config, Request::get("/readyz"), limits)
        .await
        .map_err(|e| Failed::Silent(e.to_string()))?;
    if resp.status == 200 {
        Ok(())
    } else {
        Err(Failed::Answered(format!("/readyz answered {}", resp.status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, port: u16) -> Target {
        Target { name: name.into(), addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    fn table(targets: &[Target]) -> Table {
        let mut t = Table { fall: 2, rise: 2, ..Table::default() };
        t.set_targets(targets);
        t
    }

    /// A backend that answers each line with the same line, after a
    /// moment (so that an exchange is in flight when a hand-over starts).
    fn echo_backend() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                std::thread::spawn(move || {
                    use std::io::{BufRead, Write};
                    let mut line = String::new();
                    let _ = std::io::BufReader::new(&c).read_line(&mut line);
                    std::thread::sleep(Duration::from_millis(30));
                    let _ = c.write_all(line.as_bytes());
                });
            }
        });
        addr
    }

    #[test]
    fn a_hand_over_refuses_no_client_and_cuts_no_exchange() {
        let backend = echo_backend();
        // A free port for the balancer (nothing else binds loopback here).
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // Checks every minute: the echo backend does not speak HTTPS, and
        // a failed check would (rightly) cut its connections.
        let opts = Options {
            listen,
            interval: Duration::from_secs(60),
            fall: 2,
            rise: 1,
            ca_file: "/nonexistent/ca.crt".into(),
        };
        let targets = move || vec![Target { name: "echo".into(), addr: backend }];
        let first = spawn(opts.clone(), targets).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(listen).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Clients, one after another, each a whole exchange, for a bounded
        // number of rounds.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || {
                    use std::io::{BufRead, Write};
                    let (mut ok, mut failed) = (0, vec![]);
                    for i in 0..2000 {
                        if stop.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        let want = format!("client {c} exchange {i}\n");
                        let got = std::net::TcpStream::connect(listen).and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(5)))?;
                            s.write_all(want.as_bytes())?;
                            let mut line = String::new();
                            std::io::BufReader::new(&s).read_line(&mut line)?;
                            Ok(line)
                        });
                        match got {
                            Ok(line) if line == want => {
                                ok += 1;
                                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            Ok(line) => failed.push(format!("{want:?}: got {line:?}")),
                            Err(e) => failed.push(format!("{want:?}: {e}")),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let socket = first.hand_over(Duration::from_secs(3)).expect("it was listening");
        // The first balancer is gone; nobody accepts for a while: clients
        // wait in the socket's queue.
        let before = done.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        let second = spawn_with(opts, targets, Some(socket)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut total = 0;
        for c in clients {
            let (ok, failed) = c.join().unwrap();
            assert_eq!(failed, Vec::<String>::new(), "no client is refused or cut");
            total += ok;
        }
        assert!(before > 8, "exchanges before the hand-over: {before}");
        assert!(total > before + 8, "the successor relayed the clients that came after ({before} of {total} before)");
        second.stop();
    }

    #[test]
    fn connections_go_round_robin_over_the_backends_that_are_up() {
        let (a, b, c) = (target("a", 1), target("b", 2), target("c", 3));
        let mut t = table(&[a.clone(), b.clone(), c.clone()]);
        for x in [&a, &b, &c] {
            t.checked(x.addr, Ok(()), now());
        }
        t.dial_failed(b.addr, "refused".into());
        let firsts: Vec<_> = (0..4).map(|_| t.order()[0]).collect();
        assert_eq!(firsts, [a.addr, c.addr, a.addr, c.addr]);
        assert_eq!(t.order(), [a.addr, c.addr], "b is not tried while others are up");
    }

    #[tokio::test]
    async fn a_rise_or_a_fall_is_published_at_once_a_steady_check_is_not() {
        let published = |t: &Table| {
            let changed = t.changed.clone();
            async move { timeout(Duration::from_millis(20), changed.notified()).await.is_ok() }
        };
        let a = target("a", 1);
        let mut t = table(std::slice::from_ref(&a));
        t.checked(a.addr, Ok(()), now());
        assert!(published(&t).await, "unchecked to up");
        t.checked(a.addr, Ok(()), now());
        assert!(!published(&t).await, "still up: the next tick publishes");
        t.checked(a.addr, Err(Failed::Silent("no answer".into())), now());
        assert!(!published(&t).await, "one failure of two");
        t.checked(a.addr, Err(Failed::Silent("no answer".into())), now());
        assert!(published(&t).await, "down");
    }

    #[test]
    fn with_every_backend_down_every_one_is_tried() {
        let (a, b) = (target("a", 1), target("b", 2));
        let mut t = table(&[a.clone(), b.clone()]);
        t.checked(a.addr, Ok(()), now());
        t.dial_failed(a.addr, "refused".into());
        let order = t.order();
        assert_eq!(order.len(), 2);
        assert_eq!(order[0], b.addr, "the unchecked before the down");
    }

    #[test]
    fn a_new_list_keeps_the_backends_that_stay_and_closes_the_removed() {
        let (a, b, c) = (target("a", 1), target("b", 2), target("c", 3));
        let mut t = table(&[a.clone(), b.clone()]);
        t.checked(a.addr, Ok(()), now());
        let (mut cut_a, _ga) = t.attach(a.addr).unwrap();
        let (mut cut_b, _gb) = t.attach(b.addr).unwrap();
        assert_eq!(t.set_targets(&[a.clone(), c.clone()]), [c.addr]);
        assert!(cut_b.has_changed().unwrap_or(true), "b's connections are closed");
        assert!(!cut_a.has_changed().unwrap(), "a's stay");
        assert_eq!(t.get(a.addr).unwrap().track.health, Health::Up, "a keeps its health");
        assert!(t.set_targets(&[]).is_empty());
        assert_eq!(t.backends.len(), 2, "an empty list is never applied");
        let _ = cut_a.borrow_and_update();
        let _ = cut_b.borrow_and_update();
    }

    fn now() -> std::time::Instant {
        std::time::Instant::now()
    }

    #[test]
    fn a_backend_that_stops_answering_has_its_connections_closed_at_once() {
        let a = target("a", 1);
        let mut t = table(std::slice::from_ref(&a));
        t.checked(a.addr, Ok(()), now());
        let (mut cut, guard) = t.attach(a.addr).unwrap();
        assert_eq!(t.status()[0].active, 1);
        t.checked(a.addr, Err(Failed::Silent("connection refused".into())), now());
        assert!(!cut.has_changed().unwrap());
        t.checked(a.addr, Err(Failed::Silent("connection refused".into())), now());
        assert!(cut.has_changed().unwrap());
        cut.borrow_and_update();
        drop(guard);
        let s = &t.status()[0];
        assert_eq!((s.health, s.active, s.connections), (Health::Down, 0, 1));
        assert_eq!(s.last_error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn a_backend_that_answers_not_ready_drains_before_its_connections_are_closed() {
        let a = target("a", 1);
        let mut t = table(std::slice::from_ref(&a));
        let t0 = now();
        t.checked(a.addr, Ok(()), t0);
        let (mut cut, _guard) = t.attach(a.addr).unwrap();
        let unready = || Err(Failed::Answered("/readyz answered 500".into()));
        t.checked(a.addr, unready(), t0);
        t.checked(a.addr, unready(), t0);
        assert_eq!(t.status()[0].health, Health::Down, "no new connection goes to it");
        assert!(!t.order().is_empty(), "fails open: it is the only one");
        assert!(!cut.has_changed().unwrap(), "a request in flight on it finishes");
        t.checked(a.addr, unready(), t0 + DRAIN - Duration::from_secs(1));
        assert!(!cut.has_changed().unwrap());
        t.checked(a.addr, unready(), t0 + DRAIN);
        assert!(cut.has_changed().unwrap(), "a server that stays unready loses them after the drain");
        cut.borrow_and_update();

        // Unready, then silent (the process exited): closed at once.
        let mut t = table(std::slice::from_ref(&a));
        t.checked(a.addr, Ok(()), t0);
        let (mut cut, _guard) = t.attach(a.addr).unwrap();
        t.checked(a.addr, unready(), t0);
        t.checked(a.addr, unready(), t0);
        t.checked(a.addr, Err(Failed::Silent("connection refused".into())), t0);
        assert!(cut.has_changed().unwrap());
        cut.borrow_and_update();

        // Unready, then ready again within the drain: nothing is closed.
        let mut t = table(std::slice::from_ref(&a));
        t.checked(a.addr, Ok(()), t0);
        let (cut, _guard) = t.attach(a.addr).unwrap();
        t.checked(a.addr, unready(), t0);
        t.checked(a.addr, unready(), t0);
        t.checked(a.addr, Ok(()), t0);
        t.checked(a.addr, Ok(()), t0);
        t.checked(a.addr, unready(), t0 + DRAIN * 2);
        assert!(!cut.has_changed().unwrap(), "the drain ended when it rose");
    }
}
