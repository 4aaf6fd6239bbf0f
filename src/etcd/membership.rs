//! Changing etcd's membership without ever risking quorum (DESIGN.md § etcd
//! membership): one change at a time under a lease-backed cluster lock, a
//! health gate before and after, new members added as non-voting learners
//! (a learner does not count toward quorum until promoted), promotion only
//! once the learner has caught up.
//!
//! This is what makes "any number of masters joining at once" safe: etcd's
//! "re-configuration failed due to not enough started members" comes from
//! two voting members being added before either has started; here the
//! second add cannot happen before the first member is started and voting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, LockOptions, MemberAddOptions};
use tokio::time::{timeout, Instant};

use super::{check_health, connect, Credentials, ErrorKind, EtcdError, Member};
use crate::retry::{Failure, Retry};

/// The name of the cluster-wide membership lock.
pub const MEMBERSHIP_LOCK: &str = "/hakube/locks/etcd-membership";
/// Lease of the lock holder: a crashed joiner's lock expires this soon. Long
/// enough that a slow step while holding it (RSA keys, systemctl) or a
/// keep-alive stream lost to a leader change does not let it lapse.
const LOCK_TTL_SECS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(
        "etcd has lost quorum: {healthy} of {voters} voting members are healthy and {needed} are needed \
         ({unhealthy}); no master can join until quorum is restored"
    )]
    QuorumLost { healthy: usize, voters: usize, needed: usize, unhealthy: String },
    #[error(
        "etcd member {name} ({endpoint}) is not healthy: {why}. Every voting member must be healthy before a \
         membership change; if {name} is gone for good, remove it with `hakube node remove {name}` on a healthy master \
         (hakube purges a master lost for longer than the cluster's lost-node-toleration by itself)"
    )]
    Unhealthy { name: String, endpoint: String, why: String },
    #[error("etcd member {id:x} ({peer}) was added but has not started: a join in progress, or one that died")]
    Unstarted { id: u64, peer: String },
    #[error("learner {id:x} ({peer}) is pending: another master is joining, or a failed join left it (the agents remove it after a while)")]
    LearnerPending { id: u64, peer: String },
    #[error("timed out after {secs}s {what}")]
    Timeout { secs: u64, what: String },
    #[error(
        "the etcd membership lock ({key}) was lost (its lease expired: this host was cut off from etcd for too long); \
         nothing more was changed: run the join again"
    )]
    LockLost { key: String },
}

fn call(endpoint: &str, e: etcd_client::Error) -> EtcdError {
    EtcdError::Call { endpoint: endpoint.to_owned(), message: e.to_string() }
}

/// Majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// What a probe of one voting member found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A linearizable read succeeded: the member is part of a quorum.
    Healthy,
    /// The member answers, but still as a learner: the membership lists it
    /// as a voter, and it has not applied its own promotion yet. This lasts
    /// a moment after `MemberPromote`, longer on a busy host.
    AnswersAsLearner,
    Unhealthy(String),
}

impl Probe {
    pub fn is_healthy(&self) -> bool {
        *self == Probe::Healthy
    }

    /// Why the member is not healthy, for messages.
    pub fn problem(&self) -> Option<String> {
        match self {
            Probe::Healthy => None,
            Probe::AnswersAsLearner => Some("still answers as a learner (applying its promotion)".into()),
            Probe::Unhealthy(why) => Some(why.clone()),
        }
    }
}

/// Health of each voting member, probed on its own client URL.
pub async fn voter_health(members: &[Member], creds: &Credentials) -> Vec<(Member, Probe)> {
    let probes = members.iter().filter(|m| !m.is_learner).map(|m| async move {
        let endpoint = m.client_urls.first().cloned().unwrap_or_default();
        let probe = async {
            if endpoint.is_empty() {
                return Probe::Unhealthy("has no client URL (not started)".to_owned());
            }
            let mut c = match connect(std::slice::from_ref(&endpoint), creds, Duration::from_secs(2)).await {
                Ok(c) => c,
                Err(e) => return Probe::Unhealthy(e.to_string()),
            };
            match timeout(Duration::from_secs(3), check_health(&mut c, &endpoint)).await {
                Ok(Ok(())) => Probe::Healthy,
                Err(_) => Probe::Unhealthy("no answer within 3s".to_owned()),
                // A learner refuses the read; its status says whether it
                // still takes itself for one (etcd >= 3.4 reports it). It
                // may have applied its promotion between the two calls: then
                // a second read tells.
                Ok(Err(e)) => match timeout(Duration::from_secs(3), c.status()).await {
                    Ok(Ok(s)) if s.is_learner() => Probe::AnswersAsLearner,
                    Ok(Ok(_)) => match timeout(Duration::from_secs(3), check_health(&mut c, &endpoint)).await {
                        Ok(Ok(())) => Probe::Healthy,
                        _ => Probe::Unhealthy(e.to_string()),
                    },
                    _ => Probe::Unhealthy(e.to_string()),
                },
            }
        }
        .await;
        (m.clone(), probe)
    });
    futures_util::future::join_all(probes).await
}

/// Refuses when etcd has no healthy majority of voters. A member that is
/// only applying its promotion counts: the leader has its quorum.
pub async fn check_quorum(members: &[Member], creds: &Credentials) -> Result<(), MembershipError> {
    match quorum_of(&voter_health(members, creds).await) {
        Quorum::Lost(e) => Err(e),
        Quorum::Healthy | Quorum::Settling(_) => Ok(()),
    }
}

/// The quorum as probes show it.
#[derive(Debug)]
pub enum Quorum {
    Healthy,
    /// Short of a healthy majority only because members are still applying
    /// their promotion: it settles by itself.
    Settling(MembershipError),
    Lost(MembershipError),
}

/// The quorum check on probes already made (pure).
pub fn quorum_of(health: &[(Member, Probe)]) -> Quorum {
    let voters = health.len();
    let healthy = health.iter().filter(|(_, p)| p.is_healthy()).count();
    let settling = health.iter().filter(|(_, p)| *p == Probe::AnswersAsLearner).count();
    if healthy >= quorum(voters) {
        return Quorum::Healthy;
    }
    let unhealthy: Vec<_> = health
        .iter()
        .filter_map(|(m, p)| p.problem().map(|e| format!("{} at {}: {e}", display_name(m), m.client_urls.join(","))))
        .collect();
    let err = MembershipError::QuorumLost { healthy, voters, needed: quorum(voters), unhealthy: unhealthy.join("; ") };
    if healthy + settling >= quorum(voters) {
        Quorum::Settling(err)
    } else {
        Quorum::Lost(err)
    }
}

fn display_name(m: &Member) -> String {
    if m.name.is_empty() {
        format!("{:x}", m.id)
    } else {
        m.name.clone()
    }
}

/// When the gate is passed: before this node's member is added (the
/// member may be a stale one being replaced, down), or after it was
/// promoted (it must itself answer as a healthy voter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatePoint {
    BeforeAdd,
    AfterPromotion,
}

/// What the gate decides.
#[derive(Debug)]
pub enum GateVerdict {
    Pass,
    /// Not yet: a state that passes by itself (a join in progress, a member
    /// starting or applying its promotion).
    Wait(MembershipError),
    /// Final: waiting would not help.
    Refuse(MembershipError),
}

/// The gate's decision on a membership and its probes (pure): every voter
/// started and healthy, no learner pending other than `own_peer`'s, and,
/// after promotion, this node's member a healthy voter.
pub fn judge_gate(members: &[Member], health: &[(Member, Probe)], own_peer: &str, point: GatePoint) -> GateVerdict {
    let own = |m: &Member| m.peer_urls.iter().any(|u| u == own_peer);
    for m in members {
        if m.is_learner && !own(m) {
            return GateVerdict::Wait(MembershipError::LearnerPending { id: m.id, peer: m.peer_urls.join(",") });
        }
        if !m.is_learner && !m.started() && !own(m) {
            return GateVerdict::Wait(MembershipError::Unstarted { id: m.id, peer: m.peer_urls.join(",") });
        }
    }
    // After promotion, this node's own member may not answer yet: it is
    // catching up on the log the moment it became a voter (with two voters,
    // even the other's reads wait for it). That settles by itself, so it
    // counts as settling, never as a lost quorum; the caller's limit bounds
    // the wait.
    let adjusted: Vec<(Member, Probe)>;
    let for_quorum = if point == GatePoint::AfterPromotion {
        adjusted = health
            .iter()
            .map(|(m, p)| match p {
                Probe::Unhealthy(_) if own(m) => (m.clone(), Probe::AnswersAsLearner),
                _ => (m.clone(), p.clone()),
            })
            .collect();
        &adjusted[..]
    } else {
        health
    };
    match quorum_of(for_quorum) {
        Quorum::Lost(e) => return GateVerdict::Refuse(e),
        Quorum::Settling(e) => return GateVerdict::Wait(e),
        Quorum::Healthy => {}
    }
    for (m, probe) in health {
        // Before the add, this host's own member (a stale one being
        // replaced) need not be up.
        if own(m) && point == GatePoint::BeforeAdd {
            continue;
        }
        if let Some(why) = probe.problem() {
            return GateVerdict::Wait(MembershipError::Unhealthy {
                name: display_name(m),
                endpoint: m.client_urls.join(","),
                why,
            });
        }
    }
    if point == GatePoint::AfterPromotion && !health.iter().any(|(m, _)| own(m)) {
        // The list came from a member that has not applied the promotion.
        return GateVerdict::Wait(MembershipError::Unhealthy {
            name: "this node".into(),
            endpoint: own_peer.into(),
            why: "not listed as a voting member yet".into(),
        });
    }
    GateVerdict::Pass
}

/// Reads the membership, probes it and judges it.
pub async fn gate(
    client: &mut Client,
    endpoint: &str,
    creds: &Credentials,
    own_peer: &str,
    point: GatePoint,
) -> Result<(Vec<Member>, GateVerdict), MembershipError> {
    let members = super::members(client, endpoint).await?;
    let health = voter_health(&members, creds).await;
    let verdict = judge_gate(&members, &health, own_peer, point);
    Ok((members, verdict))
}

/// Retries the gate until it passes or `limit` runs out; a refusal (quorum
/// genuinely lost) is final at once.
pub async fn wait_gate(
    client: &mut Client,
    endpoint: &str,
    creds: &Credentials,
    own_peer: &str,
    point: GatePoint,
    limit: Duration,
    mut on_wait: impl FnMut(&MembershipError),
) -> Result<Vec<Member>, MembershipError> {
    Retry::within(limit, Duration::from_millis(500))
        .run_noting(
            || {
                let mut client = client.clone();
                async move {
                    match gate(&mut client, endpoint, creds, own_peer, point).await {
                        Ok((members, GateVerdict::Pass)) => Ok(members),
                        Ok((_, GateVerdict::Refuse(e))) => Err(Failure::Final(e)),
                        Ok((_, GateVerdict::Wait(e))) => Err(Failure::Again(e)),
                        // The member answering the list may itself be restarting.
                        Err(e) => Err(Failure::Again(e)),
                    }
                }
            },
            |e, _| on_wait(e),
        )
        .await
}

/// Every call the lock makes is bounded by this (the caller's client may
/// have no request timeout, so that waiting for the lock itself can last).
const LOCK_CALL: Duration = Duration::from_secs(5);

/// How long taking the lock waits out an election (a few election
/// timeouts): a join or reset right after a master died is not refused for
/// a state that lasts a second or two.
const ELECTION_WAIT: Duration = Duration::from_secs(15);

/// The cluster lock, held on a kept-alive lease.
///
/// Holding it is checked, not assumed: the keeper marks the lock lost when
/// etcd answers a keep-alive with TTL 0 (the lease expired or was revoked)
/// or when no keep-alive has succeeded for a whole TTL, and
/// [`Lock::ensure_held`] (called right before each membership change) also
/// reads the lock key back: it must still exist on this lock's lease. A
/// dropped lock stops its keeper and revokes its lease.
pub struct Lock {
    key: Vec<u8>,
    lease: i64,
    held: super::lease::Held,
    /// Set once the lock key was found gone or on another lease.
    key_lost: AtomicBool,
    keeper: tokio::task::JoinHandle<()>,
    client: Client,
    released: bool,
}

impl Lock {
    /// Waits (bounded) for the membership lock.
    pub async fn acquire(client: &mut Client, endpoint: &str, limit: Duration) -> Result<Lock, MembershipError> {
        Self::acquire_with_ttl(client, endpoint, limit, LOCK_TTL_SECS).await
    }

    pub async fn acquire_with_ttl(
        client: &mut Client,
        endpoint: &str,
        limit: Duration,
        ttl: i64,
    ) -> Result<Lock, MembershipError> {
        // The client's own request timeout (seconds, on most clients) may
        // end a lock call long before `limit`: the wait goes on with
        // another call until `limit`, each on a lease of its own. etcd
        // names a waiter's key after its lease, and the server side of a
        // call that timed out deletes that key when it notices: on a shared
        // lease it would delete the next call's key ("mutex: session is
        // expired", or worse, a lock held without its key). Dropping the
        // previous attempt's `Lock` revokes its lease and key.
        let until = Instant::now() + limit;
        let timed_out = || MembershipError::Timeout {
            secs: limit.as_secs(),
            what: format!("waiting for the etcd membership lock {MEMBERSHIP_LOCK} (another master is joining)"),
        };
        loop {
            // Only a leader grants a lease: while the members elect one (the
            // leader just died or left), the grant is tried again, bounded.
            let grant_within = until.saturating_duration_since(Instant::now()).min(ELECTION_WAIT);
            let (lease, granted) = Retry::within(grant_within, Duration::from_millis(500))
                .run(|| {
                    let mut client = client.clone();
                    async move {
                        let sent = Instant::now();
                        match bounded(endpoint, "granting the lock's lease", client.lease_grant(ttl, None)).await {
                            Ok(r) => Ok((r.id(), sent)),
                            Err(b) => {
                                Err(Failure::Again(unwrap_call(b).map_or_else(|e| e, |e| call(endpoint, e).into())))
                            }
                        }
                    }
                })
                .await?;
            let (keeper, held) = super::lease::keep_alive(client.clone(), lease, ttl, granted);
            let mut lock = Lock {
                key: vec![],
                lease,
                held,
                key_lost: AtomicBool::new(false),
                keeper,
                client: client.clone(),
                released: false,
            };
            let left = until.saturating_duration_since(Instant::now());
            match timeout(left, client.lock(MEMBERSHIP_LOCK, Some(LockOptions::new().with_lease(lease)))).await {
                Ok(Ok(resp)) => {
                    lock.key = resp.key().to_vec();
                    return Ok(lock);
                }
                Ok(Err(e)) if super::is_request_timeout(&e) => {
                    if Instant::now() >= until {
                        return Err(timed_out());
                    }
                }
                // Dropping `lock` stops the keeper and revokes the lease.
                Ok(Err(e)) => return Err(call(endpoint, e).into()),
                Err(_) => return Err(timed_out()),
            }
        }
    }

    /// Refuses unless this lock is still held: its lease alive and the lock
    /// key still on it. Call it right before every membership change (etcd
    /// has no transaction that spans a member change and a key).
    pub async fn ensure_held(&self, client: &mut Client, endpoint: &str) -> Result<(), MembershipError> {
        let lost = || MembershipError::LockLost { key: String::from_utf8_lossy(&self.key).into_owned() };
        if !self.held.is_held() || self.key_lost.load(Ordering::SeqCst) {
            return Err(lost());
        }
        let resp = bounded(endpoint, "reading the lock key", client.get(self.key.clone(), None))
            .await
            .map_err(|b| unwrap_call(b).map_or_else(|e| e, |e| call(endpoint, e).into()))?;
        match resp.kvs().first() {
            Some(kv) if kv.lease() == self.lease => Ok(()),
            _ => {
                self.key_lost.store(true, Ordering::SeqCst);
                Err(lost())
            }
        }
    }

    /// Unlocks and revokes the lease (bounded; a lease that cannot be
    /// revoked expires by itself).
    pub async fn release(mut self, client: &mut Client) {
        self.keeper.abort();
        let _ = timeout(LOCK_CALL, client.unlock(self.key.clone())).await;
        let _ = timeout(LOCK_CALL, client.lease_revoke(self.lease)).await;
        self.released = true;
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.keeper.abort();
        if self.released {
            return;
        }
        // A holder whose future was dropped must not keep the lock for as
        // long as the process lives: revoke the lease (which deletes the
        // lock key), in the background when a runtime is still there.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (mut client, lease) = (self.client.clone(), self.lease);
            rt.spawn(async move {
                let _ = timeout(LOCK_CALL, client.lease_revoke(lease)).await;
            });
        }
    }
}

/// One etcd call, bounded by [`LOCK_CALL`].
async fn bounded<T>(
    endpoint: &str,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Bounded> {
    match timeout(LOCK_CALL, f).await {
        Ok(r) => r.map_err(Bounded::Etcd),
        Err(_) => Err(Bounded::Timeout(MembershipError::Timeout {
            secs: LOCK_CALL.as_secs(),
            what: format!("{what} at {endpoint}"),
        })),
    }
}

/// A bounded call's failure: etcd's own error (to classify), or the bound.
enum Bounded {
    Etcd(etcd_client::Error),
    Timeout(MembershipError),
}

/// `Ok(etcd error)` to look at, or `Err(final error)`.
fn unwrap_call(b: Bounded) -> Result<etcd_client::Error, MembershipError> {
    match b {
        Bounded::Etcd(e) => Ok(e),
        Bounded::Timeout(e) => Err(e),
    }
}

/// How long a membership change may wait for etcd to consider itself
/// healthy, and how often it asks.
const RECONFIG_WAIT: Duration = Duration::from_secs(60);
const RECONFIG: Retry = Retry::within(RECONFIG_WAIT, Duration::from_millis(250));

/// A learner added now, or found added before (its id and the members).
enum Added {
    Now(etcd_client::MemberAddResponse),
    Before(u64, Vec<Member>),
}

/// Adds `peer_url` as a learner unless a member with it exists; returns that
/// member's id and the membership after the add.
/// `members` is the caller's view under the lock; it decides whether to
/// reuse (a second read could come from a follower that lags a change the
/// caller just made).
pub async fn add_learner(
    client: &mut Client,
    endpoint: &str,
    peer_url: &str,
    members: Vec<Member>,
    lock: &Lock,
) -> Result<(u64, Vec<Member>), MembershipError> {
    if let Some(m) = members.iter().find(|m| m.peer_urls.iter().any(|u| u == peer_url)) {
        return Ok((m.id, members));
    }
    // etcd refuses a membership change ("unhealthy cluster") until every
    // voter has been connected to the leader for 5 s (its HealthInterval):
    // right after the previous member was promoted, that is a matter of
    // seconds, so wait it out rather than fail.
    let added = RECONFIG
        .run(|| {
            let mut client = client.clone();
            async move {
                let client = &mut client;
                lock.ensure_held(client, endpoint).await.map_err(Failure::Final)?;
                let add = client.member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()));
                match bounded(endpoint, "adding a learner", add).await.map_err(unwrap_call) {
                    Ok(r) => Ok(Added::Now(r)),
                    Err(Err(e)) => Err(Failure::Final(e)),
                    // The caller's view lagged: the member is there after all.
                    Err(Ok(e)) if ErrorKind::of(&e) == ErrorKind::MemberExists => {
                        let now = super::members(client, endpoint).await.map_err(|e| Failure::Final(e.into()))?;
                        match now.iter().find(|m| m.peer_urls.iter().any(|u| u == peer_url)).map(|m| m.id) {
                            Some(id) => Ok(Added::Before(id, now)),
                            None => Err(Failure::Final(call(endpoint, e).into())),
                        }
                    }
                    // Right after a removal, a member that has not applied it
                    // yet answers an add with "member not found"; that settles
                    // too.
                    Err(Ok(e)) => {
                        let kind = ErrorKind::of(&e);
                        Err(Failure::when(
                            kind.is_transient() || kind == ErrorKind::MemberNotFound,
                            call(endpoint, e).into(),
                        ))
                    }
                }
            }
        })
        .await?;
    let resp = match added {
        Added::Now(resp) => resp,
        Added::Before(id, members) => return Ok((id, members)),
    };
    let id = resp.member().map(|m| m.id()).unwrap_or_default();
    // The membership as the leader applied the add (a follower's view
    // read separately might lag it).
    let after = resp.member_list().iter().map(Member::from).collect();
    Ok((id, after))
}

/// What a master's etcd join does, decided under the lock from the
/// membership, the voters' health and this host's data (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdJoinPlan {
    /// A voter of this node's peer URL whose data is gone (a reset that
    /// could not leave etcd): etcd would crash-loop on an empty log under
    /// that identity, so it is removed first, and the node joins afresh.
    pub remove_stale: Option<u64>,
    /// The member of an interrupted join of this host, taken up again.
    pub reuse: Option<u64>,
    /// Data of an earlier membership, which etcd would refuse to start on
    /// as a new member: moved aside.
    pub move_data_aside: bool,
}

pub fn plan_etcd_join(
    members: &[Member],
    health: &[(Member, Probe)],
    own_peer: &str,
    has_data: bool,
) -> Result<EtcdJoinPlan, String> {
    let own = members.iter().find(|m| m.peer_urls.iter().any(|u| u == own_peer));
    match own {
        Some(m) if !m.is_learner && !has_data => {
            quorum_after_removal(health, m.id).map_err(|why| {
                format!(
                    "etcd still has a voting member {:x} for {own_peer} from this host's earlier life, and removing it \
                     would cost quorum ({why})",
                    m.id
                )
            })?;
            Ok(EtcdJoinPlan { remove_stale: Some(m.id), reuse: None, move_data_aside: false })
        }
        Some(m) => Ok(EtcdJoinPlan { remove_stale: None, reuse: Some(m.id), move_data_aside: false }),
        None => Ok(EtcdJoinPlan { remove_stale: None, reuse: None, move_data_aside: has_data }),
    }
}

/// `name=peerURL,…` for a member starting with `initial-cluster-state=existing`:
/// every member (etcd checks the count), unstarted ones with an empty name as
/// `etcdctl member add` prints them, the new one under its own name.
pub fn initial_cluster(members: &[Member], own_name: &str, own_peer: &str) -> String {
    let mut parts: Vec<String> = members
        .iter()
        .filter(|m| !m.peer_urls.iter().any(|u| u == own_peer))
        .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
        .collect();
    parts.push(format!("{own_name}={own_peer}"));
    parts.sort();
    parts.join(",")
}

/// How long a member may be missing from the membership list before a
/// promotion gives up on it.
const ABSENCE_GRACE: Duration = Duration::from_secs(10);

/// Waits until the member has started (etcd reports its name), then promotes
/// it, retrying while the learner is still catching up.
pub async fn promote_when_ready(
    client: &mut Client,
    endpoint: &str,
    id: u64,
    limit: Duration,
    lock: &Lock,
) -> Result<(), MembershipError> {
    // What is said if the time runs out while the learner is not ready.
    let not_yet = || {
        Failure::Again(MembershipError::Timeout {
            secs: limit.as_secs(),
            what: format!("waiting for learner {id:x} to start and catch up with the leader"),
        })
    };
    // The list comes from whichever member the client asks, which may lag
    // the add: only an absence that lasts is taken as a removal.
    let absent_since = std::sync::Mutex::new(None::<Instant>);
    let absent_since = &absent_since;
    Retry::within(limit, Duration::from_millis(200))
        .run(|| {
            let mut client = client.clone();
            async move {
                let client = &mut client;
                let members = super::members(client, endpoint).await.map_err(|e| Failure::Final(e.into()))?;
                let found = members.iter().find(|m| m.id == id);
                let absent_for = {
                    let mut since = absent_since.lock().expect("not poisoned");
                    match found {
                        Some(_) => *since = None,
                        None => {
                            since.get_or_insert_with(Instant::now);
                        }
                    }
                    since.map(|t| t.elapsed())
                };
                match found {
                    Some(m) if !m.is_learner => Ok(()),
                    Some(m) if m.started() => {
                        lock.ensure_held(client, endpoint).await.map_err(Failure::Final)?;
                        let promote = client.member_promote(id);
                        match bounded(endpoint, "promoting the learner", promote).await.map_err(unwrap_call) {
                            Ok(_) => Ok(()),
                            Err(Err(e)) => Err(Failure::Final(e)),
                            // "can only promote a learner member which is in sync with leader",
                            // or the cluster's 5 s connectivity check (see add_learner).
                            Err(Ok(e)) if ErrorKind::of(&e).is_transient() => Err(not_yet()),
                            Err(Ok(e)) => Err(Failure::Final(call(endpoint, e).into())),
                        }
                    }
                    Some(_) => Err(not_yet()),
                    None if absent_for.is_some_and(|d| d < ABSENCE_GRACE) => Err(not_yet()),
                    None => Err(Failure::Final(
                        EtcdError::Call {
                            endpoint: endpoint.to_owned(),
                            message: format!(
                            "member {id:x} disappeared while joining (removed as a stalled learner?): run the join \
                             again"
                        ),
                        }
                        .into(),
                    )),
                }
            }
        })
        .await
}

/// Whether the voters left after removing `leaving` still have a healthy
/// majority among themselves (pure).
pub fn quorum_after_removal(health: &[(Member, Probe)], leaving: u64) -> Result<(), String> {
    let rest: Vec<_> = health.iter().filter(|(m, _)| m.id != leaving).collect();
    let healthy = rest.iter().filter(|(_, p)| p.is_healthy()).count();
    if rest.is_empty() || healthy >= quorum(rest.len()) {
        Ok(())
    } else {
        Err(format!(
            "after it leaves, {healthy} of the {} remaining voting members would be healthy and {} are needed",
            rest.len(),
            quorum(rest.len())
        ))
    }
}

/// Removes a member under `lock`, waiting out etcd's connectivity check
/// (see add_learner).
pub async fn remove_member(client: &mut Client, endpoint: &str, id: u64, lock: &Lock) -> Result<(), MembershipError> {
    RECONFIG
        .run(|| {
            let mut client = client.clone();
            async move {
                lock.ensure_held(&mut client, endpoint).await.map_err(Failure::Final)?;
                match bounded(endpoint, "removing a member", client.member_remove(id)).await.map_err(unwrap_call) {
                    Ok(_) => Ok(()),
                    Err(Err(e)) => Err(Failure::Final(e)),
                    Err(Ok(e)) => Err(Failure::when(ErrorKind::of(&e).is_transient(), call(endpoint, e).into())),
                }
            }
        })
        .await
}

/// Removes the member with `own_peer` from the cluster, under the lock and
/// only if the rest keeps its quorum. Returns the removed id, or None when
/// this member is alone (nothing to leave) or not a member.
pub async fn leave(
    client: &mut Client,
    endpoint: &str,
    creds: &Credentials,
    own_peer: &str,
) -> Result<Option<u64>, MembershipError> {
    let lock = Lock::acquire(client, endpoint, Duration::from_secs(60)).await?;
    let mut rest = Vec::new();
    let result = async {
        let members = super::members(client, endpoint).await?;
        let Some(me) = members.iter().find(|m| m.peer_urls.iter().any(|u| u == own_peer)) else { return Ok(None) };
        if members.len() == 1 {
            return Ok(None);
        }
        if !me.is_learner {
            let health = voter_health(&members, creds).await;
            if let Err(why) = quorum_after_removal(&health, me.id) {
                return Err(MembershipError::QuorumLost {
                    healthy: health.iter().filter(|(m, p)| m.id != me.id && p.is_healthy()).count(),
                    voters: members.iter().filter(|m| !m.is_learner && m.id != me.id).count(),
                    needed: quorum(members.iter().filter(|m| !m.is_learner && m.id != me.id).count()),
                    unhealthy: why,
                });
            }
        }
        let others: Vec<String> =
            members.iter().filter(|m| m.id != me.id).flat_map(|m| m.client_urls.clone()).collect();
        if let Err(e) = remove_member(client, endpoint, me.id, &lock).await {
            // A member removing itself through its own endpoint may stop
            // ("server stopped") before it answers: the removal took
            // effect if the members left no longer list it.
            let gone = match super::connect_with(&others, creds, Duration::from_secs(3), None).await {
                Ok(mut other) => super::members(&mut other, &others.join(","))
                    .await
                    .is_ok_and(|now| now.iter().all(|m| m.id != me.id)),
                Err(_) => false,
            };
            if !gone {
                return Err(e);
            }
        }
        if me.client_urls.iter().any(|u| u == endpoint) {
            rest = others;
        }
        Ok(Some(me.id))
    }
    .await;
    // A member that removed itself through its own etcd can no longer
    // reach the cluster that way: the lock goes through the members left,
    // else it would stay held, blocking every join, until its lease ran out.
    let through_rest =
        if rest.is_empty() { None } else { super::connect_with(&rest, creds, Duration::from_secs(3), None).await.ok() };
    match through_rest {
        Some(mut other) => lock.release(&mut other).await,
        None => lock.release(client).await,
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, name: &str, peer: &str, learner: bool) -> Member {
        Member { id, name: name.into(), peer_urls: vec![peer.into()], client_urls: vec![], is_learner: learner }
    }

    #[test]
    fn initial_cluster_lists_started_members_and_self() {
        let members = [
            m(1, "m1", "https://a:2380", false),
            m(2, "", "https://b:2380", true),
            m(3, "m3", "https://c:2380", false),
        ];
        assert_eq!(
            initial_cluster(&members, "m2", "https://b:2380"),
            "m1=https://a:2380,m2=https://b:2380,m3=https://c:2380"
        );
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
    }

    fn voter(id: u64, name: &str, peer: &str) -> Member {
        let mut v = m(id, name, peer, false);
        v.client_urls = vec![format!("https://{name}:2379")];
        v
    }

    #[test]
    fn a_just_promoted_member_still_answering_as_a_learner_is_waited_for() {
        // Two voters: m1 healthy, m2 promoted a moment ago and still acting
        // as a learner. Counting m2 as down would read as a lost quorum (1 of
        // 2 when 2 are needed); it is a promotion being applied.
        let (m1, m2) = (voter(1, "m1", "https://a:2380"), voter(2, "m2", "https://b:2380"));
        let members = [m1.clone(), m2.clone()];
        let health = [(m1.clone(), Probe::Healthy), (m2.clone(), Probe::AnswersAsLearner)];
        let verdict = judge_gate(&members, &health, "https://b:2380", GatePoint::AfterPromotion);
        assert!(matches!(verdict, GateVerdict::Wait(MembershipError::QuorumLost { .. })), "{verdict:?}");
        assert!(matches!(quorum_of(&health), Quorum::Settling(_)));
        // Once it answers as a voter, the gate passes.
        let healthy = [(m1.clone(), Probe::Healthy), (m2.clone(), Probe::Healthy)];
        assert!(matches!(
            judge_gate(&members, &healthy, "https://b:2380", GatePoint::AfterPromotion),
            GateVerdict::Pass
        ));
        // A list that does not show this node as a voter yet is not a pass.
        let only_m1 = [(m1.clone(), Probe::Healthy)];
        let verdict = judge_gate(std::slice::from_ref(&m1), &only_m1, "https://b:2380", GatePoint::AfterPromotion);
        assert!(matches!(verdict, GateVerdict::Wait(_)), "{verdict:?}");
    }

    #[test]
    fn a_just_promoted_member_that_does_not_answer_yet_is_waited_for() {
        // Two voters, the second promoted a moment ago and still catching
        // up: its read times out. Not a lost quorum: it settles by itself.
        let (m1, m2) = (voter(1, "m1", "https://a:2380"), voter(2, "m2", "https://b:2380"));
        let members = [m1.clone(), m2.clone()];
        let slow = [(m1.clone(), Probe::Healthy), (m2.clone(), Probe::Unhealthy("no answer within 3s".into()))];
        let verdict = judge_gate(&members, &slow, "https://b:2380", GatePoint::AfterPromotion);
        assert!(matches!(verdict, GateVerdict::Wait(_)), "{verdict:?}");
        // Another member down is still a lost quorum, promotion or not.
        let other = judge_gate(&members, &slow, "https://c:2380", GatePoint::AfterPromotion);
        assert!(matches!(other, GateVerdict::Refuse(_)), "{other:?}");
    }

    #[test]
    fn a_genuinely_lost_quorum_is_refused_at_once() {
        let (m1, m2, m3) =
            (voter(1, "m1", "https://a:2380"), voter(2, "m2", "https://b:2380"), voter(3, "m3", "https://c:2380"));
        let members = [m1.clone(), m2.clone(), m3.clone()];
        let down = |why: &str| Probe::Unhealthy(why.into());
        let health =
            [(m1.clone(), Probe::Healthy), (m2.clone(), down("connection refused")), (m3.clone(), down("timeout"))];
        let verdict = judge_gate(&members, &health, "https://d:2380", GatePoint::BeforeAdd);
        match verdict {
            GateVerdict::Refuse(e @ MembershipError::QuorumLost { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("1 of 3 voting members are healthy and 2 are needed"), "{msg}");
                assert!(msg.contains("m2 at https://m2:2379: connection refused"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // One voter down of three keeps quorum: the gate waits for it (every
        // voter must be healthy before a change), it does not refuse.
        let one_down = [(m1.clone(), Probe::Healthy), (m2.clone(), Probe::Healthy), (m3.clone(), down("timeout"))];
        let verdict = judge_gate(&members, &one_down, "https://d:2380", GatePoint::BeforeAdd);
        assert!(matches!(verdict, GateVerdict::Wait(MembershipError::Unhealthy { .. })), "{verdict:?}");
        // Before the add, this host's own stale member may be down.
        let own_down = [(m1.clone(), Probe::Healthy), (m2.clone(), Probe::Healthy), (m3.clone(), down("refused"))];
        assert!(matches!(judge_gate(&members, &own_down, "https://c:2380", GatePoint::BeforeAdd), GateVerdict::Pass));
    }

    #[test]
    fn foreign_learners_and_unstarted_members_are_waited_for() {
        let m1 = voter(1, "m1", "https://a:2380");
        let learner = m(2, "", "https://b:2380", true);
        let members = [m1.clone(), learner];
        let health = [(m1.clone(), Probe::Healthy)];
        let verdict = judge_gate(&members, &health, "https://c:2380", GatePoint::BeforeAdd);
        assert!(matches!(verdict, GateVerdict::Wait(MembershipError::LearnerPending { id: 2, .. })), "{verdict:?}");
        assert!(matches!(judge_gate(&members, &health, "https://b:2380", GatePoint::BeforeAdd), GateVerdict::Pass));
        let unstarted = m(3, "", "https://c:2380", false);
        let members = [m1.clone(), unstarted];
        let verdict = judge_gate(&members, &health, "https://d:2380", GatePoint::BeforeAdd);
        assert!(matches!(verdict, GateVerdict::Wait(MembershipError::Unstarted { id: 3, .. })), "{verdict:?}");
    }

    #[test]
    fn the_etcd_join_plan_covers_each_state_a_host_can_be_in() {
        let (m1, m2, m3) = (voter(1, "m1", "p1"), voter(2, "m2", "p2"), voter(3, "m3", "p3"));
        let healthy = |ms: &[&Member]| ms.iter().map(|m| ((*m).clone(), Probe::Healthy)).collect::<Vec<_>>();
        let members = [m1.clone(), m2.clone(), m3.clone()];
        // A fresh host: add a learner; data of another life goes aside.
        let fresh = plan_etcd_join(&members, &healthy(&[&m1, &m2, &m3]), "p4", false).unwrap();
        assert_eq!(fresh, EtcdJoinPlan { remove_stale: None, reuse: None, move_data_aside: false });
        assert!(plan_etcd_join(&members, &healthy(&[&m1, &m2, &m3]), "p4", true).unwrap().move_data_aside);
        // A join interrupted after the add: its learner is taken up again.
        let learner = m(4, "", "p4", true);
        let with_learner = [m1.clone(), m2.clone(), m3.clone(), learner];
        let resumed = plan_etcd_join(&with_learner, &healthy(&[&m1, &m2, &m3]), "p4", false).unwrap();
        assert_eq!(resumed.reuse, Some(4));
        // A voter with data of its own: a re-run after promotion.
        assert_eq!(plan_etcd_join(&members, &healthy(&[&m1, &m2, &m3]), "p3", true).unwrap().reuse, Some(3));
        // A voter whose data is gone: removed first, if the rest keeps quorum.
        let mut health = healthy(&[&m1, &m2]);
        health.push((m3.clone(), Probe::Unhealthy("down".into())));
        let stale = plan_etcd_join(&members, &health, "p3", false).unwrap();
        assert_eq!(stale, EtcdJoinPlan { remove_stale: Some(3), reuse: None, move_data_aside: false });
        let mut health = healthy(&[&m1]);
        health.push((m2.clone(), Probe::Unhealthy("down".into())));
        health.push((m3.clone(), Probe::Unhealthy("down".into())));
        let e = plan_etcd_join(&members, &health, "p3", false).unwrap_err();
        assert!(e.contains("would cost quorum"), "{e}");
    }

    #[test]
    fn leaving_is_refused_when_the_rest_would_lose_quorum() {
        let ok = || Probe::Healthy;
        let down = || Probe::Unhealthy("down".to_owned());
        let three = [(m(1, "a", "p1", false), ok()), (m(2, "b", "p2", false), ok()), (m(3, "c", "p3", false), down())];
        assert!(quorum_after_removal(&three, 1).is_err(), "b alone of b, c cannot make 2");
        assert!(quorum_after_removal(&three, 3).is_ok(), "removing the dead one is fine");
        let two = [(m(1, "a", "p1", false), ok()), (m(2, "b", "p2", false), ok())];
        assert!(quorum_after_removal(&two, 1).is_ok());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// One member as the generator makes it: learner or not, started
        /// or not, and what its probe finds.
        fn member() -> impl Strategy<Value = (bool, bool, u8)> {
            (proptest::bool::weighted(0.2), proptest::bool::weighted(0.85), 0u8..4)
        }

        fn probe(p: u8) -> Probe {
            match p {
                0 | 1 => Probe::Healthy,
                2 => Probe::AnswersAsLearner,
                _ => Probe::Unhealthy("connection refused".into()),
            }
        }

        proptest! {
            /// Whatever the membership and the probes, the gate lets a
            /// master join only into a cluster of started, healthy voters
            /// with no other learner pending, refuses only a quorum truly
            /// lost, and after a promotion passes only when the new member
            /// itself answers as a healthy voter.
            #[test]
            fn the_gate_passes_only_a_whole_cluster_and_refuses_only_a_lost_quorum(
                members in proptest::collection::vec(member(), 1..7),
                own in proptest::option::of(0usize..7),
                after in any::<bool>(),
            ) {
                let own_peer = "https://own:2380";
                let list: Vec<Member> = members
                    .iter()
                    .enumerate()
                    .map(|(i, (learner, started, _))| {
                        let peer = if own == Some(i) { own_peer.to_owned() } else { format!("https://p{i}:2380") };
                        let name = if *started { format!("m{i}") } else { String::new() };
                        Member { id: i as u64 + 1, name, peer_urls: vec![peer], client_urls: vec![], is_learner: *learner }
                    })
                    .collect();
                // Voters are probed; learners are not.
                let health: Vec<(Member, Probe)> = list
                    .iter()
                    .zip(&members)
                    .filter(|(m, _)| !m.is_learner)
                    .map(|(m, (_, _, p))| (m.clone(), probe(*p)))
                    .collect();
                let point = if after { GatePoint::AfterPromotion } else { GatePoint::BeforeAdd };
                let is_own = |m: &Member| m.peer_urls[0] == own_peer;
                let verdict = judge_gate(&list, &health, own_peer, point);
                let voters = health.len();
                let healthy = health.iter().filter(|(_, p)| p.is_healthy()).count();
                let settling = health
                    .iter()
                    .filter(|(m, p)| *p == Probe::AnswersAsLearner || (after && is_own(m) && !p.is_healthy()))
                    .count();
                let others_whole = list.iter().all(|m| is_own(m) || (!m.is_learner && m.started()));
                if others_whole && healthy + settling < quorum(voters) {
                    prop_assert!(matches!(verdict, GateVerdict::Refuse(_)), "a lost quorum is refused: {verdict:?}");
                }
                match &verdict {
                    GateVerdict::Pass => {
                        prop_assert!(others_whole, "{list:?}");
                        prop_assert!(healthy >= quorum(voters), "{healthy} of {voters}");
                        for (m, p) in &health {
                            if !is_own(m) || after {
                                prop_assert!(p.is_healthy(), "{m:?} is {p:?}");
                            }
                        }
                        if after {
                            prop_assert!(health.iter().any(|(m, p)| is_own(m) && p.is_healthy()), "own not a healthy voter");
                        }
                    }
                    GateVerdict::Refuse(_) => {
                        prop_assert!(healthy + settling < quorum(voters), "{healthy} + {settling} of {voters}");
                    }
                    GateVerdict::Wait(_) => {}
                }
            }
        }
    }
}
