//! What a master's agent does for the cluster besides supervising its own
//! processes: serve the join API, heartbeat into the host registry, and
//! remove learners that a failed join left behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::sleep;
use tracing::{info, warn};

use super::registry::{self, NodeRecord};
use super::Role;
use crate::config::ClusterConfig;
use crate::etcd::{self, membership, Credentials};
use crate::host::clock::now_secs;
use crate::host::paths::Paths;
use crate::join::{api, tls};

const DUTY_INTERVAL: Duration = Duration::from_secs(10);

/// How long a learner may stay a learner before the agents remove it
/// (`HAKUBE_STALLED_LEARNER_SECS`, default 10 minutes): long enough for any
/// real join to finish, short enough that a dead one does not linger.
pub fn stalled_learner_limit() -> Duration {
    let secs = std::env::var("HAKUBE_STALLED_LEARNER_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    Duration::from_secs(secs)
}

/// Serves the join API until `stop` changes.
pub async fn serve_join_api(paths: Paths, cfg: ClusterConfig, mut stop: watch::Receiver<bool>) {
    let addr = std::net::SocketAddr::new(cfg.node.advertise_address, cfg.node.join_api_port);
    loop {
        let ready = async {
            let listener = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let tls = tls::server_config(&paths)?;
            Ok::<_, String>((listener, tls))
        };
        match ready.await {
            Ok((listener, tls)) => {
                info!(%addr, "join API listening");
                let ctx = api::ApiContext::new(paths.clone(), cfg.clone());
                api::serve(listener, std::sync::Arc::new(tls), ctx, async {
                    let _ = stop.changed().await;
                })
                .await;
                return;
            }
            Err(e) => {
                warn!(error = %e, "join API not serving; retrying");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

/// Heartbeats and learner clean-up, every few seconds, until `stop` changes.
pub async fn run(paths: Paths, cfg: ClusterConfig, mut stop: watch::Receiver<bool>) {
    let endpoint = cfg.etcd_client_url();
    let mut client = None;
    let mut learners: HashMap<u64, Instant> = HashMap::new();
    let limit = stalled_learner_limit();
    loop {
        let round = async {
            if client.is_none() {
                let creds = Credentials::load(&paths, "apiserver-etcd-client")?;
                client = Some(etcd::connect(std::slice::from_ref(&endpoint), &creds, Duration::from_secs(3)).await?);
            }
            let c = client.as_mut().expect("connected");
            let now = now_secs();
            let joined_at =
                registry::get(c, &endpoint, cfg.node.name.as_str()).await?.map(|r| r.joined_at).unwrap_or(now);
            let record = NodeRecord {
                name: cfg.node.name.to_string(),
                role: Role::Master,
                address: cfg.node.advertise_address,
                joined_at,
                heartbeat_at: now,
            };
            registry::put(c, &endpoint, &record).await?;
            remove_stalled_learners(c, &endpoint, &mut learners, limit).await;
            Ok::<_, etcd::EtcdError>(())
        };
        // Until a round succeeds (etcd still starting), try again soon.
        let pause = match round.await {
            Ok(()) => DUTY_INTERVAL,
            Err(e) => {
                client = None;
                tracing::debug!(error = %e, "cluster duties skipped a round");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = sleep(pause) => {}
        }
    }
}

async fn remove_stalled_learners(
    client: &mut etcd_client::Client,
    endpoint: &str,
    seen: &mut HashMap<u64, Instant>,
    limit: Duration,
) {
    let Ok(members) = etcd::members(client, endpoint).await else { return };
    seen.retain(|id, _| members.iter().any(|m| m.id == *id && m.is_learner));
    for m in members.iter().filter(|m| m.is_learner) {
        let first = *seen.entry(m.id).or_insert_with(Instant::now);
        if first.elapsed() < limit {
            continue;
        }
        // Only while no join holds the lock: a join in progress owns its learner.
        let Ok(lock) = membership::Lock::acquire(client, endpoint, Duration::from_secs(2)).await else { continue };
        let still = etcd::members(client, endpoint).await.ok().and_then(|ms| ms.into_iter().find(|x| x.id == m.id));
        if still.is_some_and(|x| x.is_learner) {
            match membership::remove_member(client, endpoint, m.id, &lock).await {
                Ok(()) => warn!(
                    member = %format!("{:x}", m.id),
                    peer = %m.peer_urls.join(","),
                    "removed a learner stalled for {}s (a join that did not finish; re-running it adds the member again)",
                    first.elapsed().as_secs()
                ),
                Err(e) => warn!(error = %e, "cannot remove stalled learner {:x}", m.id),
            }
            seen.remove(&m.id);
        }
        lock.release(client).await;
    }
}
