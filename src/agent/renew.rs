//! A master renews its own certificates while it runs. When a leaf of its
//! PKI or of its kubeconfigs comes within `certificateRenewBefore` of its
//! end, the agent takes the cluster's membership lock (so that masters
//! renew one at a time, and never while another joins), reissues what is
//! due with the same keys (nothing that pins a key notices), reloads (the
//! components that read a renewed file restart; etcd and the API server's
//! serving pair are re-read without one) and holds the lock until every
//! component of the node is healthy again.
//!
//! A worker's kubelet renews its own client certificate by CSR.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::state::State;
use crate::config::{self, ClusterConfig, Component};
use crate::etcd;
use crate::host::paths::Paths;

/// How long the node may take to be healthy again after a renewal.
const SETTLE: Duration = Duration::from_secs(300);

/// How often to look: a twentieth of the leaves' life, between 10 s and an
/// hour (an hour for a year's certificates, 6 s → 10 s for a test's 2 minutes).
pub fn check_interval(c: &ClusterConfig) -> Duration {
    (c.cluster.certificate_validity.0 / 20).clamp(Duration::from_secs(10), Duration::from_secs(3600))
}

/// Until `stop` changes: checks, and renews what is due.
pub async fn run(
    paths: Paths,
    reload: mpsc::UnboundedSender<()>,
    state: Rc<RefCell<State>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // The config as it is now (a re-run may have changed the lifetimes).
        let cfg = match config::load_installed(&paths.config_file()) {
            Ok(Some(c)) if c.has(Component::Etcd) => c,
            Ok(_) => return,
            Err(e) => {
                warn!(error = %e, "certificate renewal: cannot read the config");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let due = crate::files::due_for_renewal(&paths, &cfg, time::OffsetDateTime::now_utc());
        if !due.is_empty() {
            let work = renew(&paths, &cfg, &due, &reload, &state);
            tokio::select! {
                r = work => match r {
                    Ok(()) => info!(certificates = ?due, "certificates renewed"),
                    Err(e) => warn!(certificates = ?due, error = %e, "certificate renewal failed: trying again"),
                },
                _ = stop.changed() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(check_interval(&cfg)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn renew(
    paths: &Paths,
    cfg: &ClusterConfig,
    due: &[String],
    reload: &mpsc::UnboundedSender<()>,
    state: &Rc<RefCell<State>>,
) -> Result<(), String> {
    let (mut client, endpoint) =
        etcd::Local::connect(paths, cfg, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let lock = etcd::membership::Lock::acquire(&mut client, &endpoint, Duration::from_secs(600))
        .await
        .map_err(|e| e.to_string())?;
    info!(certificates = ?due, "renewing certificates (one master at a time: holding the membership lock)");
    let before = state.borrow().reloads;
    let result = async {
        let (p, c) = (paths.clone(), cfg.clone());
        tokio::task::spawn_blocking(move || super::converge::converge(&p, &c)).await.map_err(|e| e.to_string())??;
        reload.send(()).map_err(|_| "the agent is stopping".to_owned())?;
        let until = tokio::time::Instant::now() + SETTLE;
        loop {
            {
                let s = state.borrow();
                if s.reloads > before && s.all_healthy(&cfg.node.components) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!("the node was not healthy again within {}s of the renewal", SETTLE.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    .await;
    lock.release(&mut client).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_follows_the_lifetime_within_bounds() {
        let c = |v: &str| {
            crate::config::tests::test_config(&format!(
                "cluster: {{certificateValidity: {v}, certificateRenewBefore: 1m}}"
            ))
        };
        assert_eq!(check_interval(&c("365d")), Duration::from_secs(3600));
        assert_eq!(check_interval(&c("10m")), Duration::from_secs(30));
        assert_eq!(check_interval(&c("2m")), Duration::from_secs(10));
    }
}
