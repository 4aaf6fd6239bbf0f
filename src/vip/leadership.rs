//! The holder keeps etcd's leadership off its own member. A holder whose
//! host dies is replaced once etcd expires its lease; when that host was
//! etcd's leader too, the others first wait out an election timeout, and
//! the new leader extends every lease by another (etcd's lessor does so on
//! promotion, so that no lease expires for want of a leader). That doubles
//! the failover. So whenever its member leads, the holder moves the
//! leadership (etcd's MoveLeader) to a voter that answers and follows it,
//! preferring one that holds no virtual IP.
//!
//! A transfer pauses etcd's writes for a moment, and one to a member that
//! cannot take over pauses them for up to an election timeout: hence a
//! transferee only once it answered, and a pause after each move.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use tokio::time::{timeout, Instant};
use tracing::{info, warn};

use crate::etcd::{self, Member};
use crate::host::paths::Paths;

const CALL: Duration = Duration::from_secs(2);
/// How long a transferee has to answer its status.
const ASK: Duration = Duration::from_millis(500);
/// No second move this soon after one: two holders on two masters (a
/// change of address under way) with the third down would otherwise pass
/// the leadership back and forth.
const PAUSE_AFTER_MOVE: Duration = Duration::from_secs(10);

/// The voters this member could hand the leadership to, best first: started
/// voters other than `me`, those that hold no virtual IP (named in
/// `holders`) before those that do, then by id.
pub fn candidates<'a>(members: &'a [Member], me: u64, holders: &[String]) -> Vec<&'a Member> {
    let mut all: Vec<&Member> = members.iter().filter(|m| m.id != me && !m.is_learner && m.started()).collect();
    all.sort_by_key(|m| (holders.contains(&m.name), m.id));
    all
}

/// What one look at the leadership found or did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Another member leads: nothing to do.
    Follows,
    /// This member led and no other voter could take over.
    Alone,
    /// This member led; now the named one does.
    Moved(String),
}

#[derive(Default)]
struct Memory {
    /// The last failure, said once.
    said: Option<String>,
    moved_at: Option<Instant>,
}

/// The holder's watch over its member's leadership: at most one look in
/// flight, one every `every`.
#[derive(Default)]
pub struct Handoff {
    last: Option<Instant>,
    task: Option<tokio::task::JoinHandle<()>>,
    memory: Arc<Mutex<Memory>>,
}

impl Handoff {
    /// Looks (in the background) whether this member leads, and moves the
    /// leadership away if so; unless a look is in flight, the last began
    /// less than `every` ago, or a move was made less than
    /// [`PAUSE_AFTER_MOVE`] ago.
    pub fn poll(&mut self, paths: &Paths, client: &Client, now: Instant, every: Duration) {
        if self.task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        if self.last.is_some_and(|l| now.saturating_duration_since(l) < every) {
            return;
        }
        let moved = self.memory.lock().expect("not poisoned").moved_at;
        if moved.is_some_and(|m| now.saturating_duration_since(m) < PAUSE_AFTER_MOVE) {
            return;
        }
        self.last = Some(now);
        let (client, paths, memory) = (client.clone(), paths.clone(), self.memory.clone());
        self.task = Some(tokio::spawn(async move {
            let outcome = look(client, &paths).await;
            let mut m = memory.lock().expect("not poisoned");
            match outcome {
                Ok(Outcome::Moved(to)) => {
                    info!(to = %to, "moved etcd's leadership off this master's member: a crash of the virtual IP's holder costs no etcd election");
                    m.moved_at = Some(Instant::now());
                    m.said = None;
                }
                Ok(Outcome::Follows) => m.said = None,
                Ok(Outcome::Alone) => {
                    let said = "no other voter answers".to_owned();
                    if m.said.as_ref() != Some(&said) {
                        warn!("this master holds the virtual IP and leads etcd, and no other voter can take etcd's leadership: a crash here costs an etcd election on top of the lease");
                        m.said = Some(said);
                    }
                }
                Err(e) => {
                    if m.said.as_ref() != Some(&e) {
                        warn!(error = %e, "cannot move etcd's leadership off the virtual IP's holder");
                        m.said = Some(e);
                    }
                }
            }
        }));
    }

    /// Stops a look in flight (the holder stops).
    pub fn abort(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn look(mut c: Client, paths: &Paths) -> Result<Outcome, String> {
    let status = bounded(c.status()).await?;
    let me = status.header().map(|h| h.member_id()).ok_or("etcd's status has no header")?;
    if status.leader() != me {
        return Ok(Outcome::Follows);
    }
    let members: Vec<Member> = bounded(c.member_list()).await?.members().iter().map(Member::from).collect();
    let held = bounded(c.get(super::key_prefix(), Some(GetOptions::new().with_prefix()))).await?;
    let holders: Vec<String> = held
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<super::Holder>(kv.value()).ok())
        .map(|h| h.node)
        .collect();
    let creds = etcd::Credentials::load(paths, etcd::CLIENT_CERT).map_err(|e| e.to_string())?;
    for m in candidates(&members, me, &holders) {
        // Only to one that answers and follows this member: a transfer to
        // one that cannot take over stalls etcd's writes meanwhile.
        let Ok(mut peer) = etcd::connect(&m.client_urls, &creds, ASK).await else { continue };
        match timeout(ASK, peer.status()).await {
            Ok(Ok(s)) if s.leader() == me => {}
            _ => continue,
        }
        bounded(c.move_leader(m.id)).await?;
        return Ok(Outcome::Moved(m.name.clone()));
    }
    Ok(Outcome::Alone)
}

async fn bounded<T>(call: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, String> {
    match timeout(CALL, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, learner: bool) -> Member {
        Member { id, name: name.into(), peer_urls: vec![], client_urls: vec![], is_learner: learner }
    }

    #[test]
    fn the_leadership_goes_to_a_started_voter_that_holds_no_address() {
        let members = [
            member(1, "m1", false),
            member(2, "m2", false),
            member(3, "m3", false),
            member(4, "m4", true),
            member(5, "", false),
        ];
        let ids = |holders: &[&str]| {
            let holders: Vec<String> = holders.iter().map(|h| h.to_string()).collect();
            candidates(&members, 1, &holders).iter().map(|m| m.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(&["m1"]), [2, 3], "never itself, a learner or a member not started yet");
        assert_eq!(ids(&["m1", "m2"]), [3, 2], "the one that holds the other address last");
        assert_eq!(ids(&["m2", "m3"]), [2, 3], "both hold one: by id");
        assert!(candidates(&members[..1], 1, &[]).is_empty(), "a lone voter keeps it");
    }
}
