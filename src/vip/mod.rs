//! A floating virtual IP for the API servers: one healthy master holds it,
//! so that clients outside the cluster need one address that survives the
//! loss of any master, and no load balancer.
//!
//! **Exactly one holder.** Masters campaign for the key
//! `/hakube/vip/<address>`, created only if absent, on an etcd lease of its
//! own ([`TTL_SECS`]); only once the local kube-apiserver has been ready for
//! [`Health::CAMPAIGN_AFTER`], and the holder resigns once it has been
//! unready for [`Health::RESIGN_AFTER`] (at once when the process is gone).
//! A new holder adds the address only once the key is its own, and the old
//! one has dropped it by then:
//! - it **fences itself**: it stops counting on the lease [`FENCE_MARGIN`]
//!   before etcd could expire it (from the send time of the last keep-alive
//!   etcd answered), and drops the address at that moment;
//! - the kernel drops the address by itself when the agent stops
//!   refreshing it (hung, killed): it is added with a valid lifetime of
//!   [`VALID_SECS`], refreshed every [`HOLD_ROUND`], shorter than the lease;
//! - an agent that starts removes any copy a previous run left before it
//!   campaigns; one that stops removes the address, then revokes the lease,
//!   so that another master takes over at once.
//!
//! **Failing over as fast as VRRP.** A holder that dies is replaced once
//! etcd expires its lease: [`TTL_SECS`] after its last keep-alive. That
//! holds only while the holder's host is not etcd's leader too: a dead
//! leader costs an election first, and the new leader extends every lease
//! by an election timeout. So the holder hands etcd's leadership to another
//! voter whenever its own member has it ([`leadership`]).
//!
//! **Its own thread.** The task runs on a thread and runtime of its own
//! (see the supervisor), so that its refreshes and keep-alives never wait
//! behind the rest of the agent: the timings above leave little slack.
//!
//! **Announcing the move.** A new holder sends gratuitous ARP (a request and
//! a reply each time) at 0, 0.5 and 1 s, again at 5, 5.5 and 6 s (keepalived
//! sends its second set after 5 s), then every 10 s while it holds.

pub mod address;
pub mod arp;
pub mod leadership;

use std::net::Ipv4Addr;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::etcd::lease::Held;
use crate::etcd::{self, EtcdError};
use crate::host::paths::Paths;

/// The holder's lease: a holder that dies is replaced within about this
/// long (plus etcd's check for expired leases, every 500 ms).
pub const TTL_SECS: i64 = 3;
/// The holder stops counting on its lease this long before etcd could
/// expire it: keep-alives go every half second, so three in a row may be
/// lost or late first.
pub const FENCE_MARGIN: Duration = Duration::from_secs(1);
/// The address's valid lifetime in the kernel, refreshed every
/// [`HOLD_ROUND`] while held: gone within this long of the agent's last
/// refresh (the kernel checks lifetimes on whole seconds, up to a quarter
/// of a second late).
pub const VALID_SECS: u32 = 2;
/// The holder's round: the address refreshed, announcements, the fence.
pub const HOLD_ROUND: Duration = Duration::from_millis(500);
/// A standby's round (a vacancy wakes it at once).
const STANDBY_ROUND: Duration = Duration::from_secs(1);
/// How often the holder asks whether its etcd member leads.
const LEADERSHIP_EVERY: Duration = Duration::from_secs(2);
const CALL: Duration = Duration::from_secs(2);
/// When a new holder announces the address, from the takeover.
const BURST_MS: [u64; 6] = [0, 500, 1000, 5000, 5500, 6000];
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// The virtual IPs the masters float under `spec`: the cluster's, and
/// while a change moves or removes it, the old and the new one both.
pub fn floated(spec: &crate::config::ClusterSpec) -> std::collections::BTreeSet<Ipv4Addr> {
    let mut all: std::collections::BTreeSet<Ipv4Addr> = spec.vip.into_iter().collect();
    if let Some(ch) = &spec.load_balancer_change {
        all.extend(ch.from_vip);
        all.extend(ch.to_vip);
    }
    all
}

/// Where the holders' keys live.
pub fn key_prefix() -> &'static str {
    "/hakube/vip/"
}

/// The key the holder owns.
pub fn key(vip: Ipv4Addr) -> String {
    format!("{}{vip}", key_prefix())
}

/// What the holder writes under [`key`]: who, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    pub node: String,
    /// Seconds since the epoch.
    pub since: u64,
    /// The holder before this one, as this one last saw it: the last
    /// takeover was from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// When the `n`th announcement (from 0) after a takeover is due.
pub fn announcement_due(n: u32) -> Duration {
    match BURST_MS.get(n as usize) {
        Some(ms) => Duration::from_millis(*ms),
        None => Duration::from_millis(BURST_MS[BURST_MS.len() - 1]) + REFRESH_EVERY * (n + 1 - BURST_MS.len() as u32),
    }
}

/// What the agent knows of the local kube-apiserver at one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Running, and its readiness probe passes.
    Ready,
    /// Running, and its probe fails (a blip, or the start of an outage).
    Unready,
    /// Not running: it exited, or has not started.
    Down,
}

/// The local API server's readiness over time: a master campaigns once it
/// has been ready for [`Self::CAMPAIGN_AFTER`], and a holder resigns once
/// it has been unready for [`Self::RESIGN_AFTER`] (a probe that blips is
/// no reason to move the address), or at once when the process is gone (no
/// probe can come back from that sooner than a restart). Judged on time,
/// not on rounds, so that the holder's faster round changes nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Health {
    ready_since: Option<Instant>,
    unready_since: Option<Instant>,
    down: bool,
}

impl Health {
    pub const CAMPAIGN_AFTER: Duration = Duration::from_secs(2);
    pub const RESIGN_AFTER: Duration = Duration::from_secs(2);

    pub fn observe(&mut self, now: Readiness, at: Instant) {
        match now {
            Readiness::Ready => {
                self.ready_since.get_or_insert(at);
                self.unready_since = None;
                self.down = false;
            }
            Readiness::Unready | Readiness::Down => {
                self.unready_since.get_or_insert(at);
                self.ready_since = None;
                self.down = now == Readiness::Down;
            }
        }
    }

    pub fn may_campaign(&self, now: Instant) -> bool {
        self.ready_since.is_some_and(|s| now.saturating_duration_since(s) >= Self::CAMPAIGN_AFTER)
    }

    pub fn should_resign(&self, now: Instant) -> bool {
        self.down || self.unready_since.is_some_and(|s| now.saturating_duration_since(s) >= Self::RESIGN_AFTER)
    }
}

/// This master's term as the holder.
struct Term {
    lease: i64,
    held: Held,
    keeper: tokio::task::JoinHandle<()>,
    began: Instant,
    announced: u32,
}

/// What this master's part in the virtual IP is, for `status` and the
/// metrics: whether it holds the address, and since when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// Seconds since the epoch, while this master holds the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding_since: Option<u64>,
    /// Why this master cannot take part (no interface for it), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Times this master took the address since its agent started.
    #[serde(default)]
    pub takeovers: u64,
}

/// Holds `vip` on this master while it is the elected holder, until `stop`
/// changes. `ready` tells how the local kube-apiserver is.
pub async fn run(
    paths: Paths,
    cfg: ClusterConfig,
    vip: Ipv4Addr,
    ready: watch::Receiver<Readiness>,
    part: watch::Sender<Part>,
    mut stop: watch::Receiver<bool>,
) {
    let name = cfg.node.name.to_string();
    // A copy a previous run left (the agent killed while it held) goes
    // before anything else: two hosts must never answer for it.
    match address::release(vip) {
        Ok(from) if !from.is_empty() => {
            warn!(%vip, interfaces = %from.join(","), "removed a stale copy of the virtual IP")
        }
        Ok(_) => {}
        Err(e) => warn!(%vip, error = %e, "cannot remove a stale copy of the virtual IP"),
    }
    let home = loop {
        match address::assigned().and_then(|all| address::home(cfg.node.advertise_address, &all)) {
            Ok(home) => break home,
            Err(e) => {
                part.send_modify(|p| p.problem = Some(e.clone()));
                warn!(%vip, error = %e, "this master cannot hold the virtual IP; trying again in 10s");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = sleep(Duration::from_secs(10)) => {}
                }
            }
        }
    };
    part.send_modify(|p| p.problem = None);
    let key = key(vip);
    let mut etcd = etcd::Local::new(&paths, &cfg, CALL);
    let mut health = Health::default();
    let mut term: Option<Term> = None;
    let mut campaign_error: Option<String> = None;
    // The last other master seen holding the key: the one a takeover follows.
    let mut last_holder: Option<String> = None;
    // While another master holds the key, a watch on it: this master
    // campaigns the moment the key goes (a holder that stops revokes its
    // lease), not at its next round.
    let mut vacancy: Option<etcd_client::WatchStream> = None;
    let mut handoff = leadership::Handoff::default();
    loop {
        let now = Instant::now();
        health.observe(*ready.borrow(), now);
        if let Some(t) = &mut term {
            if !t.held.is_held() {
                drop_term(&mut term, vip, &part, "its lease's fence passed: this master was cut off from etcd");
            } else if health.should_resign(now) {
                let lease = t.lease;
                drop_term(&mut term, vip, &part, "the local kube-apiserver stopped, or stopped being ready");
                if let Ok(c) = etcd.client().await {
                    let _ = timeout(CALL, c.lease_revoke(lease)).await;
                }
            } else {
                // Gone while held: this agent fell behind its refreshes by
                // more than the valid lifetime (a stalled host), and the
                // address was missing meanwhile.
                if !address::present(vip) {
                    warn!(%vip, "the kernel had dropped the virtual IP: this agent fell behind refreshing it; adding it again");
                }
                if let Err(e) = address::hold(&home.interface, vip, VALID_SECS) {
                    warn!(%vip, error = %e, "cannot refresh the virtual IP");
                }
                let since = t.began.elapsed();
                if since >= announcement_due(t.announced) {
                    t.announced += 1;
                    if let Err(e) = arp::announce(&home.interface, vip) {
                        warn!(%vip, error = %e, "cannot announce the virtual IP");
                    }
                }
                // In the background, and only on the connection the
                // campaign made: the holder's round never waits on etcd
                // (the fence must not be late).
                if let Some(c) = etcd.connected() {
                    handoff.poll(&paths, c, now, LEADERSHIP_EVERY);
                }
            }
        } else if health.may_campaign(now) {
            match campaign(&mut etcd, &key, &name, &mut last_holder).await {
                Ok(Some((lease, held, keeper, holder))) => {
                    // The key is this master's: only now the address.
                    if let Err(e) = address::hold(&home.interface, vip, VALID_SECS) {
                        warn!(%vip, error = %e, "cannot add the virtual IP");
                    }
                    let _ = arp::announce(&home.interface, vip);
                    info!(%vip, interface = %home.interface, after = ?holder.after, "took the virtual IP");
                    part.send_modify(|p| {
                        p.holding_since = Some(holder.since);
                        p.takeovers += 1;
                    });
                    record_takeover(&paths, vip, holder);
                    term = Some(Term { lease, held, keeper, began: Instant::now(), announced: 1 });
                    vacancy = None;
                    if let Some(c) = etcd.connected() {
                        handoff.poll(&paths, c, Instant::now(), Duration::ZERO);
                    }
                }
                Ok(None) => {
                    campaign_error = None;
                    if vacancy.is_none() {
                        if let Ok(c) = etcd.client().await {
                            vacancy = timeout(CALL, c.watch(key.as_str(), None)).await.ok().and_then(Result::ok);
                        }
                    }
                }
                Err(e) => {
                    etcd.forget();
                    // Said once per kind of failure, not every second.
                    let said = e.to_string();
                    if campaign_error.as_deref() != Some(&said) {
                        warn!(%vip, error = %said, "cannot campaign for the virtual IP");
                        campaign_error = Some(said);
                    }
                }
            }
        }
        // The next round soon, or at once when the fence passes.
        let mut fence = term.as_ref().map(|t| t.held.clone());
        let fenced = etcd::lease::lost(fence.as_mut());
        let next_announcement = term.as_ref().map(|t| t.began + announcement_due(t.announced));
        let tick = match next_announcement {
            Some(at) => HOLD_ROUND.min(at.saturating_duration_since(Instant::now())),
            None => STANDBY_ROUND,
        };
        let vacated = async {
            match vacancy.as_mut() {
                Some(stream) => loop {
                    match stream.message().await {
                        Ok(Some(resp)) if resp.events().iter().any(|e| e.event_type() == EventType::Delete) => {
                            return true
                        }
                        Ok(Some(_)) => {}
                        // Broken or closed: made again after the next campaign.
                        _ => return false,
                    }
                },
                None => std::future::pending().await,
            }
        };
        let mut watch_broken = false;
        tokio::select! {
            _ = stop.changed() => break,
            () = fenced => {
                drop_term(&mut term, vip, &part, "its lease's fence passed: this master was cut off from etcd");
            }
            // The holder's key is gone: campaign now.
            vacant = vacated => watch_broken = !vacant,
            _ = sleep(tick.max(Duration::from_millis(50))) => {}
        }
        if watch_broken {
            vacancy = None;
        }
    }
    handoff.abort();
    // Stopping: the address first, then the lease, so that another master
    // takes over at once and never beside this one.
    if let Some(t) = term.take() {
        t.keeper.abort();
        let _ = address::release(vip);
        if let Ok(c) = etcd.client().await {
            let _ = timeout(CALL, c.lease_revoke(t.lease)).await;
        }
        info!(%vip, "handed the virtual IP over (this agent stops)");
    }
    part.send_modify(|p| p.holding_since = None);
}

/// Records a takeover as an Event on the new holder's Node, in the
/// background (bounded): the address never waits for the API.
fn record_takeover(paths: &Paths, vip: Ipv4Addr, holder: Holder) {
    let admin = paths.kubeconfig("admin");
    tokio::spawn(async move {
        let kube = match crate::kube::client::KubeClient::from_kubeconfig(&admin) {
            Ok(k) => k.with_timeout(CALL),
            Err(e) => return warn!(%vip, error = %e, "cannot record the takeover as an Event"),
        };
        let message = match &holder.after {
            Some(before) => format!("{} holds the virtual IP {vip}, after {before}", holder.node),
            None => format!("{} holds the virtual IP {vip}", holder.node),
        };
        let event = crate::kube::event::NodeEvent {
            node: &holder.node,
            reason: "VirtualIPTaken",
            message,
            warning: false,
            reporter: &holder.node,
            unique: holder.since,
        };
        match timeout(Duration::from_secs(15), event.record(&kube)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(%vip, error = %e, "cannot record the takeover as an Event"),
            Err(_) => warn!(%vip, "cannot record the takeover as an Event: timed out"),
        }
    });
}

/// Ends this master's term: the address goes at once.
fn drop_term(term: &mut Option<Term>, vip: Ipv4Addr, part: &watch::Sender<Part>, why: &str) {
    if let Some(t) = term.take() {
        t.keeper.abort();
        if let Err(e) = address::release(vip) {
            warn!(%vip, error = %e, "cannot remove the virtual IP");
        }
        warn!(%vip, "gave the virtual IP up: {why}");
        part.send_modify(|p| p.holding_since = None);
    }
}

/// One campaign: the key, created on a fresh lease if absent. The lease,
/// its keeper and fence, and what was written when won; `last_holder`
/// follows who else holds it.
async fn campaign(
    etcd: &mut etcd::Local,
    key: &str,
    name: &str,
    last_holder: &mut Option<String>,
) -> Result<Option<(i64, Held, tokio::task::JoinHandle<()>, Holder)>, EtcdError> {
    let (c, endpoint) = etcd.parts().await?;
    let call = |e: etcd_client::Error| EtcdError::Call { endpoint: endpoint.to_owned(), message: e.to_string() };
    let now = timeout(CALL, c.get(key, None))
        .await
        .map_err(|_| EtcdError::Call { endpoint: endpoint.to_owned(), message: "timed out".into() })?
        .map_err(call)?;
    if let Some(kv) = now.kvs().first() {
        if let Ok(h) = serde_json::from_slice::<Holder>(kv.value()) {
            if h.node != name {
                *last_holder = Some(h.node);
            }
        }
        return Ok(None);
    }
    let granted = Instant::now();
    let lease = c.lease_grant(TTL_SECS, None).await.map_err(call)?.id();
    let holder = Holder { node: name.to_owned(), since: crate::host::clock::now_secs(), after: last_holder.clone() };
    let value = serde_json::to_vec(&holder).expect("a holder serializes");
    let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key,
        value,
        Some(PutOptions::new().with_lease(lease)),
    )]);
    if c.txn(txn).await.map_err(call)?.succeeded() {
        let (keeper, held) = etcd::lease::keep_alive_fenced(c.clone(), lease, TTL_SECS, granted, FENCE_MARGIN);
        return Ok(Some((lease, held, keeper, holder)));
    }
    let _ = c.lease_revoke(lease).await;
    Ok(None)
}

/// Who holds `vip` now, as etcd says.
pub async fn holder(client: &mut etcd_client::Client, vip: Ipv4Addr) -> Option<Holder> {
    let resp = timeout(CALL, client.get(key(vip), None)).await.ok()?.ok()?;
    resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masters_float_the_clusters_address_and_both_while_it_moves() {
        let (a, b): (Ipv4Addr, Ipv4Addr) = ([10, 0, 0, 100].into(), [10, 0, 0, 101].into());
        let mut spec = crate::config::tests::test_config("{}").cluster;
        assert!(floated(&spec).is_empty());
        spec.vip = Some(a);
        assert_eq!(floated(&spec).into_iter().collect::<Vec<_>>(), [a]);
        spec.load_balancer_change = Some(crate::config::LbChange {
            from: Some(format!("{a}:6443").parse().unwrap()),
            to: format!("{b}:6443").parse().unwrap(),
            phase: crate::config::LbPhase::AddName,
            started_by: "m1".into(),
            started_at: 1,
            from_vip: Some(a),
            to_vip: Some(b),
        });
        assert_eq!(floated(&spec).into_iter().collect::<Vec<_>>(), [a, b]);
        // Removed in favour of a balancer: the old one until the change is done.
        spec.vip = None;
        spec.load_balancer_change.as_mut().unwrap().to_vip = None;
        assert_eq!(floated(&spec).into_iter().collect::<Vec<_>>(), [a]);
        spec.load_balancer_change = None;
        assert!(floated(&spec).is_empty());
    }

    #[test]
    fn a_new_holder_announces_in_two_bursts_then_every_ten_seconds() {
        let ms: Vec<u64> = (0..9).map(|n| announcement_due(n).as_millis() as u64).collect();
        assert_eq!(ms, [0, 500, 1000, 5000, 5500, 6000, 16000, 26000, 36000]);
    }

    #[test]
    fn a_master_campaigns_after_two_ready_seconds_and_resigns_after_two_unready_ones() {
        use Readiness::*;
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let mut h = Health::default();
        h.observe(Ready, at(0));
        h.observe(Ready, at(1500));
        assert!(!h.may_campaign(at(1500)));
        assert!(h.may_campaign(at(2000)) && !h.should_resign(at(2000)));
        // The holder's round is faster than a standby's: rounds do not count.
        for ms in (2000..3500).step_by(500) {
            h.observe(Unready, at(ms));
        }
        assert!(!h.should_resign(at(3500)), "unready for 1.5 s: a blip");
        h.observe(Ready, at(3600));
        h.observe(Unready, at(3700));
        assert!(!h.should_resign(at(5600)), "a pass in between starts the count again");
        assert!(h.should_resign(at(5700)) && !h.may_campaign(at(5700)));
    }

    #[test]
    fn a_holder_whose_api_server_exits_resigns_at_once() {
        use Readiness::*;
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let mut h = Health::default();
        h.observe(Ready, at(0));
        assert!(h.may_campaign(at(5)));
        h.observe(Down, at(5));
        assert!(h.should_resign(at(5)) && !h.may_campaign(at(5)));
        // Running again, not ready yet: no longer down, and unready since
        // it went down.
        h.observe(Unready, at(6));
        assert!(!h.should_resign(at(6)) && h.should_resign(at(7)));
        // Ready again: campaigns only after two seconds of it.
        h.observe(Ready, at(7));
        assert!(!h.may_campaign(at(8)) && !h.should_resign(at(8)));
        assert!(h.may_campaign(at(9)));
    }

    #[test]
    fn the_address_goes_before_etcd_could_expire_the_lease_and_before_the_kernel_would() {
        let ttl = Duration::from_secs(TTL_SECS as u64);
        let t = Instant::now();
        let fence = etcd::lease::fence(t, ttl, FENCE_MARGIN);
        assert!(fence < t + ttl, "the holder lets go before etcd can");
        // The keeper sends every sixth of the TTL: a blip of three lost or
        // late keep-alives does not move the address.
        let keep_alive_every = ttl / 6;
        assert!(fence >= t + 3 * keep_alive_every);
        // A hung agent: the kernel drops the address VALID_SECS after the
        // last refresh, up to a quarter second late (it checks lifetimes on
        // whole seconds); the last keep-alive went at most one keep-alive
        // period before that refresh, so etcd's expiry comes later still.
        let kernel_late = Duration::from_millis(250);
        assert!(Duration::from_secs(u64::from(VALID_SECS)) + kernel_late < ttl - keep_alive_every);
        // A holder that refreshes on time is never caught out by the kernel:
        // two rounds fit in the lifetime, so one late round costs nothing.
        assert!(2 * HOLD_ROUND < Duration::from_secs(u64::from(VALID_SECS)));
    }
}
