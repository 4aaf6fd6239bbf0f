//! What every master's agent does for the cluster: serve the masters' API
//! (joins, and the node endpoints workers use) and heartbeat into the host
//! registry with the settings revision it runs. What only the elected
//! leader does is in [`super::controller`].

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::sleep;
use tracing::{debug, info, warn};

use super::registry::{self, Claim, NodeRecord};
use super::Role;
use crate::config::ClusterConfig;
use crate::etcd::{self, Credentials};
use crate::host::clock::now_secs;
use crate::host::paths::Paths;
use crate::join::{api, tls};

/// How often a node says it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Serves the masters' API until `stop` changes.
pub async fn serve_api(paths: Paths, cfg: ClusterConfig, mut stop: watch::Receiver<bool>) {
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

/// A master's heartbeat into the registry, with the settings revision it
/// runs (`applied`), until `stop` changes.
pub async fn heartbeat(
    paths: Paths,
    cfg: ClusterConfig,
    mut applied: watch::Receiver<i64>,
    mut stop: watch::Receiver<bool>,
) {
    let endpoint = cfg.etcd_client_url();
    let mut client = None;
    let mut registered = false;
    loop {
        let round = async {
            if client.is_none() {
                let creds = Credentials::load(&paths, "apiserver-etcd-client")?;
                client = Some(etcd::connect(std::slice::from_ref(&endpoint), &creds, Duration::from_secs(3)).await?);
            }
            let c = client.as_mut().expect("connected");
            let (now, revision) = (now_secs(), *applied.borrow_and_update());
            let beat = |r: &mut NodeRecord| {
                r.heartbeat_at = now;
                r.settings_revision = revision;
            };
            if registry::update(c, &endpoint, cfg.node.name.as_str(), beat).await?.is_some() {
                registered = true;
            } else {
                // A purged master stays out (its agent learns it and stops).
                if crate::cluster::purge::tombstone(c, &endpoint, cfg.node.name.as_str()).await?.is_some() {
                    return Ok(());
                }
                // A record that was there and is gone was removed on
                // purpose (a reset leaving the cluster): never put back.
                // Only the first master, never registered by a join,
                // registers itself, once.
                if registered || cfg.node.etcd.initial_cluster_state != crate::config::InitialClusterState::New {
                    warn!("this master's record is gone from the registry (a reset or a purge): not registering again");
                    return Ok(());
                }
                // The first master registers itself.
                let record = NodeRecord {
                    name: cfg.node.name.to_string(),
                    role: Role::Master,
                    address: cfg.node.advertise_address,
                    joined_at: now,
                    heartbeat_at: now,
                    settings_revision: revision,
                    clock_offset_ms: None,
                };
                match registry::claim(c, &endpoint, record).await? {
                    Claim::Conflict(msg) => warn!("cannot register this master: {msg}"),
                    _ => registered = true,
                }
            }
            Ok::<_, etcd::EtcdError>(())
        };
        // Until a round succeeds (etcd still starting), try again soon.
        let pause = match round.await {
            Ok(()) => HEARTBEAT_INTERVAL,
            Err(e) => {
                client = None;
                debug!(error = %e, "heartbeat skipped a round");
                Duration::from_millis(500)
            }
        };
        // A newly applied settings revision is told at once: a change of
        // the load-balancer address waits on it.
        tokio::select! {
            _ = stop.changed() => return,
            _ = applied.changed() => {}
            _ = sleep(pause) => {}
        }
    }
}
