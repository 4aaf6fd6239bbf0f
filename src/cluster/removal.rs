//! Taking a host that is gone for good out of the cluster, from a healthy
//! master: its etcd member (a master's; under the membership lock, and only
//! if the voters left keep their quorum) and its registry record. A dead
//! master otherwise blocks every master join, since a membership change
//! needs every voter healthy. `hakube node remove` and the cluster page's
//! "Remove" both come here.

use std::time::Duration;

use etcd_client::Client;

use crate::cluster::registry;
use crate::config::Host;
use crate::etcd::membership::{self, Lock};
use crate::etcd::{self, Credentials};

/// How sure the caller is that the node is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// The operator says so (the command line).
    Trusted,
    /// Only once its heartbeat has been silent for
    /// [`crate::cluster::purge::STALE_AFTER`] (a page's button).
    Silent,
}

/// Removes `name` (never `this`, the node doing it). What was done, a line
/// per step; or why nothing was changed.
pub async fn remove(
    client: &mut Client,
    endpoint: &str,
    creds: &Credentials,
    name: &str,
    this: &str,
    guard: Guard,
    now: u64,
) -> Result<Vec<String>, String> {
    if name == this {
        return Err(format!("{name} is this node: run `hakube reset` on it instead"));
    }
    let record = registry::get(client, endpoint, name).await.map_err(|e| e.to_string())?;
    if guard == Guard::Silent {
        if let Some(r) = &record {
            let ago = now.saturating_sub(r.heartbeat_at);
            if ago <= crate::cluster::purge::STALE_AFTER {
                return Err(format!(
                    "{name} is alive (its heartbeat came {ago}s ago): only a node that is gone is removed here; \
                     run `hakube reset` on it first"
                ));
            }
        }
    }
    let lock = Lock::acquire(client, endpoint, Duration::from_secs(60)).await.map_err(|e| e.to_string())?;
    let result = async {
        let members = etcd::members(client, endpoint).await.map_err(|e| e.to_string())?;
        // By name, or (an unstarted member has none) by the registered address.
        let peer_host = record.as_ref().map(|r| Host::Ip(r.address).to_string());
        let member = members.iter().find(|m| {
            m.name == name
                || peer_host
                    .as_deref()
                    .is_some_and(|h| m.peer_urls.iter().any(|u| crate::etcd::host_of_url(u) == Some(h)))
        });
        if record.is_none() && member.is_none() {
            return Err(format!("no node {name} in the cluster: `hakube status` on a master lists the etcd members"));
        }
        let mut done = vec![];
        if let Some(m) = member {
            if !m.is_learner {
                let health = membership::voter_health(&members, creds).await;
                membership::quorum_after_removal(&health, m.id).map_err(|why| {
                    format!("removing {name} would cost etcd its quorum ({why}): nothing was changed")
                })?;
            }
            membership::remove_member(client, endpoint, m.id, &lock).await.map_err(|e| e.to_string())?;
            done.push(format!("removed etcd member {:x} ({})", m.id, m.peer_urls.join(",")));
        }
        registry::delete(client, endpoint, name).await.map_err(|e| e.to_string())?;
        done.push(format!("{name} is out of the cluster; to bring it back, `hakube reset` it and join it again"));
        Ok(done)
    }
    .await;
    lock.release(client).await;
    result
}
