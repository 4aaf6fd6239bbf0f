//! One leader among the masters' agents, elected through etcd: a key
//! created only if absent (compare-and-swap on its create revision) on a
//! lease the leader keeps alive. The TTL is enforced by etcd, not by any
//! host's clock: when the leader dies, its lease expires and another master
//! takes the key within about a TTL. The leader's work checks it still
//! holds the key (on its own lease) before acting; a leader that stops
//! resigns by revoking its lease, so another takes over at once.
//!
//! The leader's work needs its own control plane: a leader whose local
//! kube-apiserver stays unhealthy for [`Yield::resign_after`] resigns, and
//! an agent whose control plane is unhealthy campaigns for a vacancy only
//! once it has stood for [`Yield::vacancy_wait`], so that a healthy master
//! takes it first. When none is healthy, one still leads (the purge reads
//! nodes through any API server, and etcd's own duties need none), and it
//! keeps a term won while unhealthy: no hand-over back and forth.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::etcd::lease::Held;
use crate::etcd::{self, EtcdError};
use crate::host::paths::Paths;

pub const LEADER_KEY: &str = "/hakube/leader";
/// The leader's lease: a dead leader is replaced within about this long.
pub const LEADER_TTL_SECS: i64 = 10;
const CALL: Duration = Duration::from_secs(5);

/// How an agent whose local control plane is unhealthy makes way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Yield {
    /// A leader unhealthy this long, continuously, resigns. Longer than a
    /// kube-apiserver's restart, so that a restart alone hands nothing over.
    pub resign_after: Duration,
    /// An unhealthy agent campaigns only for a vacancy this old: a healthy
    /// master, which campaigns at once, gets it first.
    pub vacancy_wait: Duration,
}

impl Default for Yield {
    fn default() -> Self {
        Yield { resign_after: Duration::from_secs(30), vacancy_wait: Duration::from_secs(2 * LEADER_TTL_SECS as u64) }
    }
}

/// The election's memory of this agent's health and of a vacancy: the
/// rule of [`Yield`], kept apart from etcd so that it is tested alone.
#[derive(Debug, Clone)]
pub struct Fitness {
    rule: Yield,
    unhealthy_since: Option<Instant>,
    vacant_since: Option<Instant>,
}

impl Fitness {
    pub fn new(rule: Yield) -> Self {
        Fitness { rule, unhealthy_since: None, vacant_since: None }
    }

    /// Records what the probe says now.
    pub fn observe(&mut self, healthy: bool, now: Instant) {
        if healthy {
            self.unhealthy_since = None;
        } else {
            self.unhealthy_since.get_or_insert(now);
        }
    }

    /// Whether a leader whose term began at `began` resigns: unhealthy for
    /// `resign_after` since a moment inside its term.
    pub fn should_resign(&self, began: Instant, now: Instant) -> bool {
        self.unhealthy_since.is_some_and(|u| u > began && now.duration_since(u) >= self.rule.resign_after)
    }

    /// Whether to campaign, seeing the leadership `vacant` or not. A
    /// campaign ends the vacancy as this agent saw it: the next one, after
    /// a term of its own or another's, is timed anew.
    pub fn may_campaign(&mut self, vacant: bool, now: Instant) -> bool {
        if !vacant {
            self.vacant_since = None;
            return false;
        }
        let since = *self.vacant_since.get_or_insert(now);
        let campaign = self.unhealthy_since.is_none() || now.duration_since(since) >= self.rule.vacancy_wait;
        if campaign {
            self.vacant_since = None;
        }
        campaign
    }
}

/// Who leads, as this agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// The leader's node name, if there is one.
    pub leader: Option<String>,
    /// Whether it is this node, with the term's fence.
    pub term: Option<Term>,
}

/// This node's term as leader: valid while its lease is held and the key
/// still is its own.
#[derive(Debug, Clone)]
pub struct Term {
    lease: i64,
    held: Held,
    began: Instant,
}

impl PartialEq for Term {
    fn eq(&self, other: &Self) -> bool {
        self.lease == other.lease
    }
}

impl Eq for Term {}

impl Term {
    /// Whether its keeper still holds the lease (without asking etcd):
    /// false from the moment the fence falls.
    pub fn lease_held(&self) -> bool {
        self.held.is_held()
    }

    /// Whether the term still holds: its lease alive, and the leader key
    /// still on it (read back, linearizably).
    pub async fn holds(&self, client: &mut Client) -> bool {
        if !self.held.is_held() {
            return false;
        }
        match timeout(CALL, client.get(LEADER_KEY, None)).await {
            Ok(Ok(resp)) => resp.kvs().first().is_some_and(|kv| kv.lease() == self.lease),
            _ => false,
        }
    }
}

/// The current leader's name (for `status`).
pub async fn leader(client: &mut Client, endpoint: &str) -> Result<Option<String>, EtcdError> {
    let resp = client
        .get(LEADER_KEY, None)
        .await
        .map_err(|e| EtcdError::Call { endpoint: endpoint.into(), message: e.to_string() })?;
    Ok(resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

/// Ends this agent's term, if it has one: its keeper stopped and the end
/// published at once, before any call that may hang (reading who leads
/// now can hang as long as the call that found the term over).
fn end_term(current: &mut Option<(Term, tokio::task::JoinHandle<()>)>, tx: &watch::Sender<View>) -> Option<Term> {
    let (term, keeper) = current.take()?;
    keeper.abort();
    tx.send_replace(View::default());
    Some(term)
}

/// Campaigns for leadership until `stop` changes, publishing who leads.
/// `healthy` tells whether this node's control plane can do the leader's
/// work (its kube-apiserver answers, when it runs one); `rule` is how an
/// unhealthy agent makes way.
pub async fn run(
    paths: Paths,
    cfg: ClusterConfig,
    healthy: impl Fn() -> bool,
    rule: Yield,
    tx: watch::Sender<View>,
    mut stop: watch::Receiver<bool>,
) {
    let endpoint = cfg.etcd_client_url();
    let name = cfg.node.name.to_string();
    let mut etcd = etcd::Local::new(&paths, &cfg, CALL);
    let mut current: Option<(Term, tokio::task::JoinHandle<()>)> = None;
    let mut fitness = Fitness::new(rule);
    loop {
        fitness.observe(healthy(), Instant::now());
        // The term's fence, watched while the round runs: however long a
        // call hangs, this agent stops claiming the term the moment its
        // keeper gives the lease up, before etcd can expire it.
        let mut fence = current.as_ref().map(|(t, _)| t.held.clone());
        let round = async {
            let c = etcd.client().await?;
            // A term whose lease was lost is over.
            if let Some((term, _)) = &current {
                if fitness.should_resign(term.began, Instant::now()) {
                    let term = end_term(&mut current, &tx).expect("checked");
                    let _ = timeout(CALL, c.lease_revoke(term.lease)).await;
                    warn!(
                        "resigned the leadership: this master's control plane has been unhealthy for {}s",
                        rule.resign_after.as_secs()
                    );
                } else if term.holds(c).await {
                    return Ok(View { leader: Some(name.clone()), term: Some(term.clone()) });
                } else {
                    end_term(&mut current, &tx);
                    warn!("lost the leadership (the lease expired: this master was cut off from etcd)");
                }
            }
            let holder = leader(c, &endpoint).await?;
            if !fitness.may_campaign(holder.is_none(), Instant::now()) {
                return Ok(View { leader: holder, term: None });
            }
            // Vacant: campaign.
            let call = |e: etcd_client::Error| EtcdError::Call { endpoint: endpoint.clone(), message: e.to_string() };
            let granted = Instant::now();
            let lease = c.lease_grant(LEADER_TTL_SECS, None).await.map_err(call)?.id();
            let txn = Txn::new()
                .when([Compare::create_revision(LEADER_KEY, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(LEADER_KEY, name.as_bytes(), Some(PutOptions::new().with_lease(lease)))]);
            if c.txn(txn).await.map_err(call)?.succeeded() {
                let (keeper, held) = etcd::lease::keep_alive(c.clone(), lease, LEADER_TTL_SECS, granted);
                let term = Term { lease, held, began: Instant::now() };
                info!("elected leader of the masters' agents");
                current = Some((term.clone(), keeper));
                return Ok(View { leader: Some(name.clone()), term: Some(term) });
            }
            let _ = c.lease_revoke(lease).await;
            Ok::<_, EtcdError>(View { leader: leader(c, &endpoint).await?, term: None })
        };
        let fenced = etcd::lease::lost(fence.as_mut());
        tokio::select! {
            result = timeout(Duration::from_secs(15), round) => match result {
                Ok(Ok(view)) => {
                    tx.send_if_modified(|v| {
                        let changed = *v != view;
                        *v = view;
                        changed
                    });
                }
                Ok(Err(e)) => {
                    etcd.forget();
                    debug!(error = %e, "election round failed");
                }
                Err(_) => etcd.forget(),
            },
            () = fenced => {
                end_term(&mut current, &tx);
                etcd.forget();
                warn!("lost the leadership (no keep-alive answered within the lease: this master was cut off from etcd)");
            }
        }
        // The fence is watched between rounds too: a lease lost during the
        // pause ends the claim at once, not at the next round, a second
        // later, when etcd may have expired it and another master claimed.
        let mut fence = current.as_ref().map(|(t, _)| t.held.clone());
        tokio::select! {
            _ = stop.changed() => break,
            () = etcd::lease::lost(fence.as_mut()) => {
                end_term(&mut current, &tx);
                etcd.forget();
                warn!("lost the leadership (no keep-alive answered within the lease: this master was cut off from etcd)");
            }
            _ = sleep(Duration::from_secs(1)) => {}
        }
    }
    // Resign: the next leader need not wait for the lease to expire.
    if let Some((term, keeper)) = current {
        keeper.abort();
        if let Ok(c) = etcd.client().await {
            let _ = timeout(CALL, c.lease_revoke(term.lease)).await;
            info!("resigned the leadership");
        }
    }
    tx.send_replace(View::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn rule() -> Yield {
        Yield { resign_after: 30 * S, vacancy_wait: 20 * S }
    }

    #[test]
    fn a_leader_resigns_only_after_staying_unhealthy() {
        let t0 = Instant::now();
        let mut f = Fitness::new(rule());
        f.observe(true, t0);
        let began = t0 + S;
        f.observe(false, t0 + 10 * S);
        assert!(!f.should_resign(began, t0 + 39 * S), "29 s unhealthy: a restart, not a reason");
        assert!(f.should_resign(began, t0 + 40 * S));
        // A probe that passes in between starts the count again.
        f.observe(true, t0 + 35 * S);
        f.observe(false, t0 + 36 * S);
        assert!(!f.should_resign(began, t0 + 60 * S));
        assert!(f.should_resign(began, t0 + 66 * S));
    }

    #[test]
    fn a_term_won_while_unhealthy_is_kept_until_health_comes_and_goes_again() {
        let t0 = Instant::now();
        let mut f = Fitness::new(rule());
        f.observe(false, t0);
        let began = t0 + 25 * S;
        assert!(!f.should_resign(began, t0 + 300 * S), "nobody healthier took it: no hand-over back and forth");
        f.observe(true, t0 + 301 * S);
        f.observe(false, t0 + 302 * S);
        assert!(f.should_resign(began, t0 + 332 * S));
    }

    #[test]
    fn a_healthy_agent_campaigns_at_once_an_unhealthy_one_after_the_vacancy_wait() {
        let t0 = Instant::now();
        let mut healthy = Fitness::new(rule());
        healthy.observe(true, t0);
        assert!(healthy.may_campaign(true, t0));
        assert!(!healthy.may_campaign(false, t0), "someone leads");

        let mut sick = Fitness::new(rule());
        sick.observe(false, t0);
        assert!(!sick.may_campaign(true, t0));
        assert!(!sick.may_campaign(true, t0 + 19 * S));
        assert!(sick.may_campaign(true, t0 + 20 * S));
        // A vacancy that was filled and opened again is timed anew.
        assert!(!sick.may_campaign(false, t0 + 21 * S));
        assert!(!sick.may_campaign(true, t0 + 22 * S));
        assert!(sick.may_campaign(true, t0 + 42 * S));
    }

    #[test]
    fn an_agent_that_resigns_waits_out_the_next_vacancy_like_any_unhealthy_one() {
        let t0 = Instant::now();
        let mut f = Fitness::new(rule());
        f.observe(true, t0);
        assert!(f.may_campaign(true, t0), "healthy: campaigns at once (and wins)");
        f.observe(false, t0 + 100 * S);
        assert!(f.should_resign(t0, t0 + 130 * S));
        // The vacancy its own resignation opens is a new one: a healthy
        // master gets the vacancy wait to take it.
        assert!(!f.may_campaign(true, t0 + 130 * S));
        assert!(!f.may_campaign(true, t0 + 149 * S));
        assert!(f.may_campaign(true, t0 + 150 * S));
    }
}
