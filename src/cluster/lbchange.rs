//! Changing the load-balancer address of the whole cluster from one re-run
//! of `install load-balancer-address=NEW` on any master.
//!
//! The re-run checks NEW (it resolves, accepts TCP, and reaches an API
//! server of this cluster) and records the change in the cluster-wide
//! settings; the elected agent then drives it, one revision of the
//! settings per phase, and moves on only once every master that is up has
//! confirmed the phase:
//! 1. `add-name`: every master's API server certificate names both
//!    addresses (issued locally, reloaded by kube-apiserver without a
//!    restart); confirmed by a TLS handshake to each master;
//! 2. `switch`: the address in force is NEW: admin kubeconfigs use it, and
//!    nodes joining from now on take it; confirmed by each master running
//!    that revision;
//! 3. `drop-name`: the certificates name NEW only; confirmed by handshake.
//!
//! Node components never see any of it: kubelet goes through the
//! node-local load balancer, controller-manager and scheduler to their own
//! API server. A master that is down is not waited for: its agent applies
//! the settings in force before it starts anything when it comes back.
//! Progress, per master, is kept under [`PROGRESS`] for `install` and
//! `status`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::registry::NodeRecord;
use super::Role;
use crate::config::{ClusterSpec, Host, HostPort, LbChange, LbPhase};
use crate::etcd::EtcdError;
use crate::https::{self, Limits};
use crate::pki::San;

pub const PROGRESS: &str = "/hakube/lb/progress";

/// Where a change stands, as the elected agent last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub change: LbChange,
    /// The settings revision the phase was written at.
    pub revision: i64,
    pub leader: String,
    pub at: u64,
    pub masters: Vec<MasterProgress>,
    /// What else the phase waits for (a master to hold the new virtual IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterProgress {
    pub name: String,
    pub address: IpAddr,
    pub state: Confirm,
}

/// One master's part in the current phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum Confirm {
    Done(String),
    Waiting(String),
    /// Not heartbeating: not waited for; it catches up when it returns.
    Down(String),
}

impl std::fmt::Display for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Confirm::Done(d) => write!(f, "done: {d}"),
            Confirm::Waiting(d) => write!(f, "waiting: {d}"),
            Confirm::Down(d) => write!(f, "down: {d}"),
        }
    }
}

/// What an install asks of the load-balancer address (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// The address is not part of this run.
    Nothing,
    /// Asked for the address already in force, with no change under way.
    AlreadyThere,
    /// A change to start.
    Start(LbChange),
    /// The change asked for is under way already: wait for it.
    Join(LbChange),
}

/// Decides what a re-run does with the load-balancer address: `current`
/// and `pending` from the record, `wanted` from the merged options, `given`
/// whether the options named it.
pub fn ask(
    current: Option<&HostPort>,
    pending: Option<&LbChange>,
    wanted: Option<&HostPort>,
    given: bool,
    by: &str,
    now: u64,
) -> Result<Ask, String> {
    if !given && wanted == current {
        return Ok(Ask::Nothing);
    }
    let Some(wanted) = wanted else {
        return match current {
            None => Ok(Ask::Nothing),
            Some(c) => Err(format!(
                "the load-balancer address cannot be removed (it is {c}): give another one with \
                 load-balancer-address=HOST:PORT"
            )),
        };
    };
    match pending {
        Some(p) if &p.to == wanted => Ok(Ask::Join(p.clone())),
        Some(p) => Err(format!(
            "a change of the load-balancer address from {} to {} is under way (phase {}, started by {} at {}): \
             wait for it to finish (`hakube status` shows where it stands), then run this again",
            p.from.as_ref().map(ToString::to_string).unwrap_or_else(|| "none".into()),
            p.to,
            p.phase,
            p.started_by,
            crate::host::clock::rfc3339(p.started_at),
        )),
        None if current == Some(wanted) => Ok(Ask::AlreadyThere),
        None => Ok(Ask::Start(LbChange {
            from: current.cloned(),
            to: wanted.clone(),
            phase: LbPhase::AddName,
            started_by: by.to_owned(),
            started_at: now,
            from_vip: None,
            to_vip: None,
        })),
    }
}

/// The settings for the next phase once every master that is up has
/// confirmed this one (pure); `None` to wait. A change to a virtual IP
/// switches only once a master holds it (`to_vip_held`); the virtual IP in
/// force switches with the address.
pub fn advance(spec: &ClusterSpec, masters: &[MasterProgress], to_vip_held: bool) -> Option<ClusterSpec> {
    let ch = spec.load_balancer_change.as_ref()?;
    let up: Vec<_> = masters.iter().filter(|m| !matches!(m.state, Confirm::Down(_))).collect();
    if up.is_empty() || up.iter().any(|m| matches!(m.state, Confirm::Waiting(_))) {
        return None;
    }
    let mut next = spec.clone();
    match ch.phase {
        LbPhase::AddName => {
            if ch.to_vip.is_some() && !to_vip_held {
                return None;
            }
            if ch.from_vip.is_some() || ch.to_vip.is_some() {
                next.vip = ch.to_vip;
            }
            next.load_balancer_address = Some(ch.to.clone());
            next.load_balancer_change.as_mut().expect("checked").phase = LbPhase::Switch;
        }
        LbPhase::Switch => next.load_balancer_change.as_mut().expect("checked").phase = LbPhase::DropName,
        LbPhase::DropName => next.load_balancer_change = None,
    }
    Some(next)
}

fn san_of(h: &Host) -> San {
    match h {
        Host::Ip(ip) => San::Ip(*ip),
        Host::Dns(d) => San::Dns(d.clone()),
    }
}

/// The names a master's API server presents right now; `Ok(None)` when it
/// does not accept connections (it serves no one, so it cannot serve an
/// old certificate).
pub async fn presented_names(at: &HostPort, ca_pem: &[u8]) -> Result<Option<Vec<San>>, String> {
    let tls = Arc::new(https::client_config(ca_pem, None).map_err(|e| e.to_string())?);
    let limits = Limits { connect: Duration::from_secs(2), exchange: Duration::from_secs(3), max_body: 0 };
    match https::peer_certificate(at, tls, limits).await {
        Ok(der) => Ok(Some(crate::pki::observe_der(der.as_ref(), None)?.sans.into_iter().collect())),
        Err(https::HttpsError::Connect(e)) if e.contains("refused") => Ok(None),
        Err(e) => Err(format!("TLS handshake with {at}: {e}")),
    }
}

/// One master's part in the phase (what the elected agent checks).
pub async fn confirm(ch: &LbChange, revision: i64, m: &NodeRecord, api_port: u16, ca_pem: &[u8]) -> Confirm {
    if m.settings_revision < revision {
        return Confirm::Waiting(format!(
            "runs settings revision {}, not yet {revision} (its agent converges within seconds)",
            m.settings_revision
        ));
    }
    if ch.phase == LbPhase::Switch {
        return Confirm::Done(format!("its admin kubeconfig uses {}", ch.to));
    }
    judge(ch, m, presented_names(&HostPort::new(Host::Ip(m.address), api_port), ca_pem).await)
}

/// Whether a master presents `host` for a reason of its own, whatever the
/// load-balancer address: its address, its name, loopback. Its
/// certificate keeps such a name when the address that was the same is
/// dropped (an address that was one master's own API server, as a first
/// master's often is before a balancer exists).
fn its_own(m: &NodeRecord, host: &Host) -> bool {
    match host {
        Host::Ip(ip) => *ip == m.address || ip.is_loopback(),
        Host::Dns(d) => d.eq_ignore_ascii_case(&m.name) || d.eq_ignore_ascii_case("localhost"),
    }
}

/// The add-name and drop-name phases, judged from the names `m`'s API
/// server presents (`Ok(None)`: it does not accept connections).
fn judge(ch: &LbChange, m: &NodeRecord, names: Result<Option<Vec<San>>, String>) -> Confirm {
    let (must_have, must_not) = match ch.phase {
        LbPhase::AddName => (Some(&ch.to), None),
        LbPhase::Switch => return Confirm::Done(format!("its admin kubeconfig uses {}", ch.to)),
        LbPhase::DropName => (None, ch.from.as_ref().filter(|f| f.host != ch.to.host)),
    };
    let sans = match names {
        Err(e) => return Confirm::Waiting(e),
        Ok(None) => return Confirm::Done("its API server is not serving; it starts with the new certificate".into()),
        Ok(Some(sans)) => sans,
    };
    if let Some(to) = must_have {
        if !sans.contains(&san_of(&to.host)) {
            return Confirm::Waiting(format!("its API server does not present {} yet", to.host));
        }
        return Confirm::Done(format!("its API server presents {}", to.host));
    }
    match must_not {
        Some(from) if its_own(m, &from.host) => {
            Confirm::Done(format!("{} is its own name, which its API server keeps presenting", from.host))
        }
        Some(from) if sans.contains(&san_of(&from.host)) => {
            Confirm::Waiting(format!("its API server still presents {}", from.host))
        }
        Some(from) => Confirm::Done(format!("its API server no longer presents {}", from.host)),
        None => Confirm::Done("nothing to drop".into()),
    }
}

fn call(endpoint: &str, e: etcd_client::Error) -> EtcdError {
    EtcdError::Call { endpoint: endpoint.into(), message: e.to_string() }
}

pub async fn read_progress(client: &mut Client, endpoint: &str) -> Result<Option<Progress>, EtcdError> {
    let resp = client.get(PROGRESS, None).await.map_err(|e| call(endpoint, e))?;
    Ok(resp.kvs().first().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// The elected agent's round: confirm the phase on every master that is
/// up, record where it stands, and move to the next phase when all have.
pub async fn round(
    client: &mut Client,
    endpoint: &str,
    leader: &str,
    nodes: &[NodeRecord],
    api_port: u16,
    ca_pem: &[u8],
) -> Result<(), super::ClusterError> {
    let Some(s) = super::settings::read(client, endpoint).await? else {
        return Ok(());
    };
    let Some(ch) = s.spec.load_balancer_change.clone() else {
        if read_progress(client, endpoint).await?.is_some() {
            client.delete(PROGRESS, None).await.map_err(|e| call(endpoint, e))?;
        }
        return Ok(());
    };
    let now = crate::host::clock::now_secs();
    let mut masters = vec![];
    for m in nodes.iter().filter(|n| n.role == Role::Master) {
        let silent = now.saturating_sub(m.heartbeat_at);
        let state = if silent > super::purge::STALE_AFTER {
            Confirm::Down(format!(
                "no heartbeat since {}: not waited for; its agent applies the settings in force before it starts \
                 anything when it comes back",
                crate::host::clock::rfc3339(m.heartbeat_at)
            ))
        } else {
            confirm(&ch, s.revision, m, api_port, ca_pem).await
        };
        masters.push(MasterProgress { name: m.name.clone(), address: m.address, state });
    }
    let to_vip_held = match ch.to_vip {
        Some(vip) if ch.phase == LbPhase::AddName => crate::vip::holder(client, vip).await.is_some(),
        _ => true,
    };
    let waiting = ch.to_vip.filter(|_| !to_vip_held).map(|vip| format!("no master holds the virtual IP {vip} yet"));
    let progress =
        Progress { change: ch.clone(), revision: s.revision, leader: leader.to_owned(), at: now, masters, waiting };
    client
        .put(PROGRESS, serde_json::to_vec(&progress).expect("progress serializes"), None)
        .await
        .map_err(|e| call(endpoint, e))?;
    let Some(next) = advance(&s.spec, &progress.masters, to_vip_held) else { return Ok(()) };
    match super::settings::write(client, endpoint, &next, Some(&s), leader, now).await {
        Ok(rev) => {
            let what = match &next.load_balancer_change {
                Some(n) => format!("phase {}", n.phase),
                None => "complete".to_owned(),
            };
            info!(from = ?ch.from.as_ref().map(ToString::to_string), to = %ch.to, revision = rev,
                "load-balancer address change: phase {} confirmed by every master that is up; {what}", ch.phase);
            Ok(())
        }
        Err(e) => {
            warn!(error = %e, "load-balancer address change: the next phase was not recorded; next round");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        s.parse().unwrap()
    }

    fn change(from: Option<&str>, to: &str, phase: LbPhase) -> LbChange {
        LbChange {
            from: from.map(hp),
            to: hp(to),
            phase,
            started_by: "m1".into(),
            started_at: 1,
            from_vip: None,
            to_vip: None,
        }
    }

    #[test]
    fn a_rerun_starts_joins_or_refuses_a_change() {
        let (old, new, other) = (hp("lb1:6443"), hp("lb2:6443"), hp("lb3:6443"));
        assert_eq!(ask(Some(&old), None, Some(&old), false, "m2", 5), Ok(Ask::Nothing));
        assert_eq!(ask(Some(&old), None, Some(&old), true, "m2", 5), Ok(Ask::AlreadyThere));
        let started = ask(Some(&old), None, Some(&new), true, "m2", 5).unwrap();
        let Ask::Start(ch) = &started else { panic!("{started:?}") };
        assert_eq!((ch.from.as_ref(), &ch.to, ch.phase), (Some(&old), &new, LbPhase::AddName));
        assert_eq!(ask(None, None, Some(&new), true, "m2", 5).map(|a| matches!(a, Ask::Start(_))), Ok(true));
        let pending = change(Some("lb1:6443"), "lb2:6443", LbPhase::Switch);
        assert_eq!(ask(Some(&new), Some(&pending), Some(&new), true, "m2", 5), Ok(Ask::Join(pending.clone())));
        let e = ask(Some(&new), Some(&pending), Some(&other), true, "m2", 5).unwrap_err();
        assert!(e.contains("from lb1:6443 to lb2:6443 is under way (phase switch, started by m1"), "{e}");
        assert_eq!(ask(Some(&new), Some(&pending), Some(&new), false, "m2", 5), Ok(Ask::Nothing));
        let e = ask(Some(&old), None, None, true, "m2", 5).unwrap_err();
        assert!(e.contains("cannot be removed"), "{e}");
    }

    fn spec_with(ch: LbChange, lb: &str) -> ClusterSpec {
        let mut spec = crate::config::tests::test_config("{}").cluster;
        spec.load_balancer_address = Some(hp(lb));
        spec.load_balancer_change = Some(ch);
        spec
    }

    fn m(name: &str, state: Confirm) -> MasterProgress {
        MasterProgress { name: name.into(), address: "10.0.0.1".parse().unwrap(), state }
    }

    #[test]
    fn a_master_keeps_its_own_address_when_the_old_balancer_address_was_it() {
        let m1 = NodeRecord {
            name: "m1".into(),
            role: Role::Master,
            address: "10.0.0.11".parse().unwrap(),
            joined_at: 1,
            heartbeat_at: 1,
            settings_revision: 5,
            clock_offset_ms: None,
            versions: Default::default(),
            healthy: None,
            hakube: None,
            balancer: None,
        };
        let ip = |s: &str| San::Ip(s.parse().unwrap());
        let dns = |s: &str| San::Dns(s.into());
        let names = |sans: &[San]| Ok(Some(sans.to_vec()));
        // The cluster first used m1's own API server, then a balancer.
        let drop = change(Some("10.0.0.11:6443"), "lb.example:6443", LbPhase::DropName);
        let m1_sans = [dns("m1"), ip("10.0.0.11"), ip("127.0.0.1"), dns("lb.example")];
        let done = judge(&drop, &m1, names(&m1_sans));
        assert!(matches!(&done, Confirm::Done(d) if d.contains("its own name")), "{done:?}");
        // Another master must drop it.
        let m2 = NodeRecord { name: "m2".into(), address: "10.0.0.12".parse().unwrap(), ..m1.clone() };
        let stale = [dns("m2"), ip("10.0.0.12"), ip("10.0.0.11"), dns("lb.example")];
        assert_eq!(
            judge(&drop, &m2, names(&stale)),
            Confirm::Waiting("its API server still presents 10.0.0.11".into())
        );
        let dropped = [dns("m2"), ip("10.0.0.12"), dns("lb.example")];
        assert!(matches!(judge(&drop, &m2, names(&dropped)), Confirm::Done(_)));
        // The same by name.
        let by_name = change(Some("m1:6443"), "lb.example:6443", LbPhase::DropName);
        assert!(matches!(judge(&by_name, &m1, names(&m1_sans)), Confirm::Done(_)));
        assert!(matches!(judge(&by_name, &m2, names(&[dns("m1")])), Confirm::Waiting(_)));
        // Adding a name is judged as before; an API server that is down waits for nothing.
        let add = change(Some("10.0.0.11:6443"), "lb.example:6443", LbPhase::AddName);
        assert!(matches!(judge(&add, &m1, names(&[ip("10.0.0.11")])), Confirm::Waiting(_)));
        assert!(matches!(judge(&add, &m1, names(&m1_sans)), Confirm::Done(_)));
        assert!(matches!(judge(&drop, &m2, Ok(None)), Confirm::Done(_)));
        assert_eq!(judge(&drop, &m2, Err("TLS handshake".into())), Confirm::Waiting("TLS handshake".into()));
    }

    #[test]
    fn each_phase_waits_for_every_master_that_is_up() {
        let spec = spec_with(change(Some("lb1:6443"), "lb2:6443", LbPhase::AddName), "lb1:6443");
        let done = || Confirm::Done("ok".into());
        assert_eq!(advance(&spec, &[m("m1", done()), m("m2", Confirm::Waiting("not yet".into()))], true), None);
        assert_eq!(advance(&spec, &[m("m1", Confirm::Down("gone".into()))], true), None, "nobody confirmed");
        let next = advance(&spec, &[m("m1", done()), m("m2", Confirm::Down("gone".into()))], true).unwrap();
        assert_eq!(next.load_balancer_address, Some(hp("lb2:6443")));
        assert_eq!(next.load_balancer_change.as_ref().unwrap().phase, LbPhase::Switch);
        let names: Vec<_> = next.load_balancer_names().into_iter().map(ToString::to_string).collect();
        assert_eq!(names, ["lb2:6443", "lb1:6443"], "both names while switching");
        let next = advance(&next, &[m("m1", done())], true).unwrap();
        assert_eq!(next.load_balancer_change.as_ref().unwrap().phase, LbPhase::DropName);
        let names: Vec<_> = next.load_balancer_names().into_iter().map(ToString::to_string).collect();
        assert_eq!(names, ["lb2:6443"], "the old name is dropped");
        let next = advance(&next, &[m("m1", done())], true).unwrap();
        assert_eq!(next.load_balancer_change, None);
        assert_eq!(next.load_balancer_address, Some(hp("lb2:6443")));
    }

    #[test]
    fn a_change_to_a_virtual_ip_switches_once_a_master_holds_it_and_the_vip_switches_with_the_address() {
        let a: std::net::Ipv4Addr = [10, 0, 0, 100].into();
        let b: std::net::Ipv4Addr = [10, 0, 0, 101].into();
        let mut ch = change(Some("10.0.0.100:6443"), "10.0.0.101:6443", LbPhase::AddName);
        (ch.from_vip, ch.to_vip) = (Some(a), Some(b));
        let mut spec = spec_with(ch, "10.0.0.100:6443");
        spec.vip = Some(a);
        let done = [m("m1", Confirm::Done("ok".into()))];
        assert_eq!(advance(&spec, &done, false), None, "nobody holds the new address yet");
        let next = advance(&spec, &done, true).unwrap();
        assert_eq!((next.vip, next.load_balancer_address.clone()), (Some(b), Some(hp("10.0.0.101:6443"))));
        let next = advance(&advance(&next, &done, false).unwrap(), &done, false).unwrap();
        assert_eq!((next.vip, next.load_balancer_change), (Some(b), None), "done; only the switch waits for a holder");
        // Removed in favour of a balancer: the virtual IP goes at the switch.
        let mut ch = change(Some("10.0.0.100:6443"), "lb:6443", LbPhase::AddName);
        ch.from_vip = Some(a);
        let mut spec = spec_with(ch, "10.0.0.100:6443");
        spec.vip = Some(a);
        let next = advance(&spec, &done, false).unwrap();
        assert_eq!((next.vip, next.load_balancer_address), (None, Some(hp("lb:6443"))));
        // A change between balancers leaves a virtual IP alone (there is none).
        let spec = spec_with(change(Some("lb1:6443"), "lb2:6443", LbPhase::AddName), "lb1:6443");
        assert_eq!(advance(&spec, &done, false).unwrap().vip, None);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// One round of one master: it goes down, comes back (catching up
        /// with the settings in force before anything starts, as its agent
        /// does), applies the newest revision, or lags.
        #[derive(Debug, Clone, Copy)]
        enum Event {
            Down,
            Up,
            Apply,
            Lag,
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![1 => Just(Event::Down), 1 => Just(Event::Up), 4 => Just(Event::Apply), 2 => Just(Event::Lag)]
        }

        /// Whether the names a master presents (those of the settings
        /// revision it runs) include `addr`.
        fn names(spec: &ClusterSpec, addr: &HostPort) -> bool {
            spec.load_balancer_names().contains(&addr)
        }

        proptest! {
            /// With masters lagging, going down and coming back at random,
            /// every master that is up presents the address in force at
            /// every moment (no client told to use it is refused), phases
            /// only move forward, and once every master stays up and
            /// applies, the change finishes with the new address alone.
            #[test]
            fn every_master_up_presents_the_address_in_force_and_the_change_finishes(
                rounds in proptest::collection::vec(proptest::collection::vec(event(), 3), 1..40),
                from_none in any::<bool>(),
            ) {
                // Revision 0 before the change, 1 the change as a re-run
                // records it; every master runs revision 0.
                let mut before = crate::config::tests::test_config("{}").cluster;
                before.load_balancer_address = (!from_none).then(|| hp("lb1:6443"));
                let mut started = before.clone();
                started.load_balancer_change = Some(LbChange {
                    from: before.load_balancer_address.clone(),
                    to: hp("lb2:6443"),
                    phase: LbPhase::AddName,
                    started_by: "m1".into(),
                    started_at: 1,
                    from_vip: None,
                    to_vip: None,
                });
                let mut history = vec![before, started];
                // (up, the revision it runs)
                let mut masters = [(true, 0usize); 3];
                let mut run = |events: &[Event], history: &mut Vec<ClusterSpec>| -> Result<(), TestCaseError> {
                    let latest = history.len() - 1;
                    for (m, e) in masters.iter_mut().zip(events) {
                        match e {
                            Event::Down => m.0 = false,
                            Event::Up if !m.0 => *m = (true, latest),
                            Event::Apply if m.0 => m.1 = latest,
                            _ => {}
                        }
                    }
                    let now = &history[latest];
                    let ch = now.load_balancer_change.clone();
                    let progress: Vec<MasterProgress> = masters
                        .iter()
                        .enumerate()
                        .map(|(i, (up, rev))| {
                            let runs = &history[*rev];
                            let state = match (&ch, up) {
                                (_, false) => Confirm::Down("no heartbeat".into()),
                                (_, true) if *rev < latest => Confirm::Waiting("behind".into()),
                                (Some(c), true) => match c.phase {
                                    LbPhase::AddName if !names(runs, &c.to) => Confirm::Waiting("no new name".into()),
                                    LbPhase::DropName if c.from.as_ref().is_some_and(|f| f.host != c.to.host && names(runs, f)) => {
                                        Confirm::Waiting("old name".into())
                                    }
                                    _ => Confirm::Done("ok".into()),
                                },
                                (None, true) => Confirm::Done("ok".into()),
                            };
                            MasterProgress { name: format!("m{i}"), address: IpAddr::from([10, 0, 0, 11 + i as u8]), state }
                        })
                        .collect();
                    if let Some(next) = advance(now, &progress, true) {
                        let rank = |s: &ClusterSpec| s.load_balancer_change.as_ref().map_or(3, |c| c.phase as u8);
                        prop_assert_eq!(rank(&next), rank(now) + 1, "one phase at a time, forward");
                        history.push(next);
                    }
                    let latest = &history[history.len() - 1];
                    if let Some(addr) = &latest.load_balancer_address {
                        for (i, (up, rev)) in masters.iter().enumerate() {
                            if *up {
                                prop_assert!(names(&history[*rev], addr), "m{i} at revision {rev} does not present {addr}");
                            }
                        }
                    }
                    Ok(())
                };
                for events in &rounds {
                    run(events, &mut history)?;
                }
                // Then every master up and applying: it finishes.
                for _ in 0..8 {
                    run(&[Event::Up, Event::Up, Event::Up], &mut history)?;
                    run(&[Event::Apply, Event::Apply, Event::Apply], &mut history)?;
                }
                let last = &history[history.len() - 1];
                prop_assert!(last.load_balancer_change.is_none(), "not finished: {:?}", last.load_balancer_change);
                let new = hp("lb2:6443");
                prop_assert_eq!(last.load_balancer_names(), vec![&new]);
            }
        }
    }
}
