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

use std::time::Duration;

use etcd_client::{Client, LockOptions, MemberAddOptions};
use tokio::time::{sleep, timeout, Instant};

use super::{check_health, connect, Credentials, EtcdError, Member};

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
    #[error("etcd member {name} ({endpoint}) is not healthy: {why}")]
    Unhealthy { name: String, endpoint: String, why: String },
    #[error("etcd member {id:x} ({peer}) was added but has not started: a join in progress, or one that died")]
    Unstarted { id: u64, peer: String },
    #[error("learner {id:x} ({peer}) is pending: another master is joining, or a failed join left it (the agents remove it after a while)")]
    LearnerPending { id: u64, peer: String },
    #[error("timed out after {secs}s {what}")]
    Timeout { secs: u64, what: String },
}

fn call(endpoint: &str, e: etcd_client::Error) -> EtcdError {
    EtcdError::Call { endpoint: endpoint.to_owned(), message: e.to_string() }
}

/// Majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Health of each voting member, probed on its own client URL.
pub async fn voter_health(members: &[Member], creds: &Credentials) -> Vec<(Member, Result<(), String>)> {
    let probes = members.iter().filter(|m| !m.is_learner).map(|m| async move {
        let endpoint = m.client_urls.first().cloned().unwrap_or_default();
        let result = async {
            if endpoint.is_empty() {
                return Err("has no client URL (not started)".to_owned());
            }
            let mut c = connect(std::slice::from_ref(&endpoint), creds, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            timeout(Duration::from_secs(3), check_health(&mut c, &endpoint))
                .await
                .map_err(|_| "no answer within 3s".to_owned())?
                .map_err(|e| e.to_string())
        }
        .await;
        (m.clone(), result)
    });
    futures_util::future::join_all(probes).await
}

/// Refuses when etcd has no healthy majority of voters.
pub async fn check_quorum(members: &[Member], creds: &Credentials) -> Result<(), MembershipError> {
    quorum_of(&voter_health(members, creds).await)
}

/// The quorum check on probes already made (pure).
pub fn quorum_of(health: &[(Member, Result<(), String>)]) -> Result<(), MembershipError> {
    let voters = health.len();
    let healthy = health.iter().filter(|(_, r)| r.is_ok()).count();
    if healthy < quorum(voters) {
        let unhealthy: Vec<_> = health
            .iter()
            .filter_map(|(m, r)| {
                r.as_ref().err().map(|e| format!("{} at {}: {e}", display_name(m), m.client_urls.join(",")))
            })
            .collect();
        return Err(MembershipError::QuorumLost {
            healthy,
            voters,
            needed: quorum(voters),
            unhealthy: unhealthy.join("; "),
        });
    }
    Ok(())
}

fn display_name(m: &Member) -> String {
    if m.name.is_empty() {
        format!("{:x}", m.id)
    } else {
        m.name.clone()
    }
}

/// The gate: every voter started and healthy, and no learner pending other
/// than `own_peer`'s.
pub async fn gate(
    client: &mut Client,
    endpoint: &str,
    creds: &Credentials,
    own_peer: &str,
) -> Result<Vec<Member>, MembershipError> {
    let members = super::members(client, endpoint).await?;
    for m in &members {
        let own = m.peer_urls.iter().any(|u| u == own_peer);
        if m.is_learner && !own {
            return Err(MembershipError::LearnerPending { id: m.id, peer: m.peer_urls.join(",") });
        }
        if !m.is_learner && !m.started() && !own {
            return Err(MembershipError::Unstarted { id: m.id, peer: m.peer_urls.join(",") });
        }
    }
    let health = voter_health(&members, creds).await;
    quorum_of(&health)?;
    // This host's own member (a stale one being replaced) need not be up.
    for (m, r) in health.into_iter().filter(|(m, _)| !m.peer_urls.iter().any(|u| u == own_peer)) {
        if let Err(why) = r {
            return Err(MembershipError::Unhealthy { name: display_name(&m), endpoint: m.client_urls.join(","), why });
        }
    }
    Ok(members)
}

/// Retries the gate until it passes or `limit` runs out (quorum loss is final).
pub async fn wait_gate(
    client: &mut Client,
    endpoint: &str,
    creds: &Credentials,
    own_peer: &str,
    limit: Duration,
    mut on_wait: impl FnMut(&MembershipError),
) -> Result<Vec<Member>, MembershipError> {
    let deadline = Instant::now() + limit;
    loop {
        match gate(client, endpoint, creds, own_peer).await {
            Ok(m) => return Ok(m),
            Err(e @ MembershipError::QuorumLost { .. }) => return Err(e),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                on_wait(&e);
                sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The cluster lock, held on a kept-alive lease.
pub struct Lock {
    key: Vec<u8>,
    lease: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Lock {
    /// Waits (bounded) for the membership lock.
    pub async fn acquire(client: &mut Client, endpoint: &str, limit: Duration) -> Result<Lock, MembershipError> {
        let lease = client.lease_grant(LOCK_TTL_SECS, None).await.map_err(|e| call(endpoint, e))?.id();
        let keeper_task = tokio::task::spawn({
            let mut client = client.clone();
            async move {
                // Keep the lease alive; when the stream breaks (a leader
                // change, a member restart), open a new one and go on.
                loop {
                    if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await {
                        while keeper.keep_alive().await.is_ok() && stream.message().await.ok().flatten().is_some() {
                            sleep(Duration::from_secs((LOCK_TTL_SECS / 6) as u64)).await;
                        }
                    }
                    sleep(Duration::from_secs(1)).await;
                }
            }
        });
        match timeout(limit, client.lock(MEMBERSHIP_LOCK, Some(LockOptions::new().with_lease(lease)))).await {
            Ok(Ok(resp)) => Ok(Lock { key: resp.key().to_vec(), lease, keeper: keeper_task }),
            Ok(Err(e)) => {
                keeper_task.abort();
                let _ = client.lease_revoke(lease).await;
                Err(call(endpoint, e).into())
            }
            Err(_) => {
                keeper_task.abort();
                let _ = client.lease_revoke(lease).await;
                Err(MembershipError::Timeout {
                    secs: limit.as_secs(),
                    what: format!("waiting for the etcd membership lock {MEMBERSHIP_LOCK} (another master is joining)"),
                })
            }
        }
    }

    pub async fn release(self, client: &mut Client) {
        let _ = client.unlock(self.key.clone()).await;
        self.keeper.abort();
        let _ = client.lease_revoke(self.lease).await;
    }
}

/// How long a membership change may wait for etcd to consider itself healthy.
const RECONFIG_WAIT: Duration = Duration::from_secs(60);

/// Refusals etcd lifts by itself within seconds.
fn is_transient(e: &etcd_client::Error) -> bool {
    let s = e.to_string();
    s.contains("unhealthy cluster") || s.contains("in sync") || s.contains("not ready") || s.contains("leader changed")
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
) -> Result<(u64, Vec<Member>), MembershipError> {
    if let Some(m) = members.iter().find(|m| m.peer_urls.iter().any(|u| u == peer_url)) {
        return Ok((m.id, members));
    }
    // etcd refuses a membership change ("unhealthy cluster") until every
    // voter has been connected to the leader for 5 s (its HealthInterval):
    // right after the previous member was promoted, that is a matter of
    // seconds, so wait it out rather than fail.
    let deadline = Instant::now() + RECONFIG_WAIT;
    let resp = loop {
        match client.member_add([peer_url], Some(MemberAddOptions::new().with_is_learner())).await {
            Ok(r) => break r,
            // The caller's view lagged: the member is there after all.
            Err(e) if e.to_string().contains("already exists") => {
                let now = super::members(client, endpoint).await?;
                if let Some(m) = now.iter().find(|m| m.peer_urls.iter().any(|u| u == peer_url)) {
                    return Ok((m.id, now));
                }
                return Err(call(endpoint, e).into());
            }
            // Right after a removal, a member that has not applied it yet
            // answers an add with "member not found"; that settles too.
            Err(e) if (is_transient(&e) || e.to_string().contains("member not found")) && Instant::now() < deadline => {
                sleep(Duration::from_millis(250)).await
            }
            Err(e) => return Err(call(endpoint, e).into()),
        }
    };
    let id = resp.member().map(|m| m.id()).unwrap_or_default();
    // The membership as the leader applied the add (a follower's view
    // read separately might lag it).
    let after = resp.member_list().iter().map(Member::from).collect();
    Ok((id, after))
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

/// Waits until the member has started (etcd reports its name), then promotes
/// it, retrying while the learner is still catching up.
pub async fn promote_when_ready(
    client: &mut Client,
    endpoint: &str,
    id: u64,
    limit: Duration,
) -> Result<(), MembershipError> {
    let deadline = Instant::now() + limit;
    loop {
        let members = super::members(client, endpoint).await?;
        match members.iter().find(|m| m.id == id) {
            Some(m) if !m.is_learner => return Ok(()),
            Some(m) if m.started() => match client.member_promote(id).await {
                Ok(_) => return Ok(()),
                // "can only promote a learner member which is in sync with leader",
                // or the cluster's 5 s connectivity check (see add_learner).
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(call(endpoint, e).into()),
            },
            Some(_) => {}
            None => {
                return Err(EtcdError::Call {
                    endpoint: endpoint.to_owned(),
                    message: format!(
                        "member {id:x} disappeared while joining (removed as a stalled learner?): run the join again"
                    ),
                }
                .into())
            }
        }
        if Instant::now() >= deadline {
            return Err(MembershipError::Timeout {
                secs: limit.as_secs(),
                what: format!("waiting for learner {id:x} to start and catch up with the leader"),
            });
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the voters left after removing `leaving` still have a healthy
/// majority among themselves (pure).
pub fn quorum_after_removal(health: &[(Member, Result<(), String>)], leaving: u64) -> Result<(), String> {
    let rest: Vec<_> = health.iter().filter(|(m, _)| m.id != leaving).collect();
    let healthy = rest.iter().filter(|(_, r)| r.is_ok()).count();
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

/// Removes a member, waiting out etcd's connectivity check (see add_learner).
pub async fn remove_member(client: &mut Client, endpoint: &str, id: u64) -> Result<(), MembershipError> {
    let deadline = Instant::now() + RECONFIG_WAIT;
    loop {
        match client.member_remove(id).await {
            Ok(_) => return Ok(()),
            Err(e) if is_transient(&e) && Instant::now() < deadline => sleep(Duration::from_millis(250)).await,
            Err(e) => return Err(call(endpoint, e).into()),
        }
    }
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
                    healthy: health.iter().filter(|(m, r)| m.id != me.id && r.is_ok()).count(),
                    voters: members.iter().filter(|m| !m.is_learner && m.id != me.id).count(),
                    needed: quorum(members.iter().filter(|m| !m.is_learner && m.id != me.id).count()),
                    unhealthy: why,
                });
            }
        }
        remove_member(client, endpoint, me.id).await?;
        Ok(Some(me.id))
    }
    .await;
    lock.release(client).await;
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

    #[test]
    fn leaving_is_refused_when_the_rest_would_lose_quorum() {
        let ok = || Ok(());
        let down = || Err("down".to_owned());
        let three = [(m(1, "a", "p1", false), ok()), (m(2, "b", "p2", false), ok()), (m(3, "c", "p3", false), down())];
        assert!(quorum_after_removal(&three, 1).is_err(), "b alone of b, c cannot make 2");
        assert!(quorum_after_removal(&three, 3).is_ok(), "removing the dead one is fine");
        let two = [(m(1, "a", "p1", false), ok()), (m(2, "b", "p2", false), ok())];
        assert!(quorum_after_removal(&two, 1).is_ok());
    }
}
