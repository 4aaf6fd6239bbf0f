//! One leader among the masters' agents, elected through etcd: a key
//! created only if absent (compare-and-swap on its create revision) on a
//! lease the leader keeps alive. The TTL is enforced by etcd, not by any
//! host's clock: when the leader dies, its lease expires and another master
//! takes the key within about a TTL. The leader's work checks it still
//! holds the key (on its own lease) before acting; a leader that stops
//! resigns by revoking its lease, so another takes over at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::etcd::{self, Credentials, EtcdError};
use crate::host::paths::Paths;

pub const LEADER_KEY: &str = "/hakube/leader";
/// The leader's lease: a dead leader is replaced within about this long.
pub const LEADER_TTL_SECS: i64 = 10;
const CALL: Duration = Duration::from_secs(5);

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
    held: Arc<AtomicBool>,
}

impl PartialEq for Term {
    fn eq(&self, other: &Self) -> bool {
        self.lease == other.lease
    }
}

impl Eq for Term {}

impl Term {
    /// Whether the term still holds: its lease alive, and the leader key
    /// still on it (read back, linearizably).
    pub async fn holds(&self, client: &mut Client) -> bool {
        if !self.held.load(Ordering::SeqCst) {
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

/// Campaigns for leadership until `stop` changes, publishing who leads.
pub async fn run(paths: Paths, cfg: ClusterConfig, tx: watch::Sender<View>, mut stop: watch::Receiver<bool>) {
    let endpoint = cfg.etcd_client_url();
    let name = cfg.node.name.to_string();
    let mut client: Option<Client> = None;
    let mut current: Option<(Term, tokio::task::JoinHandle<()>)> = None;
    loop {
        let round = async {
            if client.is_none() {
                let creds = Credentials::load(&paths, "apiserver-etcd-client")?;
                client = Some(etcd::connect(std::slice::from_ref(&endpoint), &creds, CALL).await?);
            }
            let c = client.as_mut().expect("connected");
            // A term whose lease was lost is over.
            if let Some((term, _)) = &current {
                if term.holds(c).await {
                    return Ok(View { leader: Some(name.clone()), term: Some(term.clone()) });
                }
                let (_, keeper) = current.take().expect("checked");
                keeper.abort();
                warn!("lost the leadership (the lease expired: this master was cut off from etcd)");
            }
            let holder = leader(c, &endpoint).await?;
            if holder.is_some() {
                return Ok(View { leader: holder, term: None });
            }
            // Vacant: campaign.
            let call = |e: etcd_client::Error| EtcdError::Call { endpoint: endpoint.clone(), message: e.to_string() };
            let lease = c.lease_grant(LEADER_TTL_SECS, None).await.map_err(call)?.id();
            let txn = Txn::new()
                .when([Compare::create_revision(LEADER_KEY, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(LEADER_KEY, name.as_bytes(), Some(PutOptions::new().with_lease(lease)))]);
            if c.txn(txn).await.map_err(call)?.succeeded() {
                let held = Arc::new(AtomicBool::new(true));
                let keeper = tokio::spawn(etcd::lease::keep_alive(c.clone(), lease, LEADER_TTL_SECS, held.clone()));
                let term = Term { lease, held };
                info!("elected leader of the masters' agents");
                current = Some((term.clone(), keeper));
                return Ok(View { leader: Some(name.clone()), term: Some(term) });
            }
            let _ = c.lease_revoke(lease).await;
            Ok::<_, EtcdError>(View { leader: leader(c, &endpoint).await?, term: None })
        };
        match timeout(Duration::from_secs(15), round).await {
            Ok(Ok(view)) => {
                tx.send_if_modified(|v| {
                    let changed = *v != view;
                    *v = view;
                    changed
                });
            }
            Ok(Err(e)) => {
                client = None;
                debug!(error = %e, "election round failed");
            }
            Err(_) => client = None,
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = sleep(Duration::from_secs(1)) => {}
        }
    }
    // Resign: the next leader need not wait for the lease to expire.
    if let (Some((term, keeper)), Some(c)) = (current, client.as_mut()) {
        keeper.abort();
        let _ = timeout(CALL, c.lease_revoke(term.lease)).await;
        info!("resigned the leadership");
    }
    tx.send_replace(View::default());
}
