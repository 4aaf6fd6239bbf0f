//! A node renews its own certificates while it runs. When a leaf of a
//! master's PKI or of its kubeconfigs comes within `certificateRenewBefore`
//! of its end, the agent takes the cluster's membership lock (so that masters
//! renew one at a time, and never while another joins), reissues what is
//! due with the same keys (nothing that pins a key notices), reloads (the
//! components that read a renewed file restart; etcd and the API server's
//! serving pair are re-read without one) and holds the lock until every
//! component of the node is healthy again.
//!
//! A worker's kubelet renews its own client certificate by CSR; the
//! certificates its agent and kube-proxy use (issued at join, in its
//! kubeconfigs) its agent renews through the masters' node endpoint, over
//! the same keys, presenting the certificate it has.

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
    reload: mpsc::UnboundedSender<super::Request>,
    state: Rc<RefCell<State>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // The config as it is now (a re-run may have changed the lifetimes).
        let cfg = match config::load_installed(&paths.config_file()) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "certificate renewal: cannot read the config");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let now = time::OffsetDateTime::now_utc();
        let master = cfg.has(Component::Etcd);
        let due = crate::files::due_for_renewal(&paths, &cfg, now);
        if !due.is_empty() {
            let work = async {
                if master {
                    renew(&paths, &cfg, &due, &reload, &state).await
                } else {
                    renew_worker(&paths, &cfg, &reload, &state).await
                }
            };
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

/// A request over the key of a kubeconfig, and what it holds.
fn request_over(
    path: &std::path::Path,
) -> Result<(String, crate::kube::kubeconfig::Credentials, crate::pki::Key), String> {
    let creds = crate::kube::kubeconfig::read(path)?;
    let key = crate::pki::Key::from_pem(&creds.key_pem).map_err(|e| format!("{}: {e}", path.display()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key.pair)
        .and_then(|r| r.pem())
        .map_err(|e| e.to_string())?;
    Ok((csr, creds, key))
}

/// What a master sent back must be for this node's key and name, issued by
/// the cluster CA this node trusts.
fn check_issued(cert: &str, key: &crate::pki::Key, cn: &str, ca_pem: &str) -> Result<(), String> {
    let ca = crate::pki::observe(ca_pem.as_bytes(), None)?;
    let o = crate::pki::observe(cert.as_bytes(), Some(&ca.spki))?;
    if o.spki != key.spki() || o.common_name != cn || o.signed_by_issuer != Some(true) {
        return Err(format!(
            "a master sent a certificate for {:?} that is not this node's {cn:?} over its key",
            o.common_name
        ));
    }
    Ok(())
}

/// Renews a worker's kubeconfig certificates through a master, writes them
/// (under the root lock, as a converge does) and reloads: kubelet and
/// kube-proxy restart on their new kubeconfigs, the agent's tasks take the
/// new identity.
async fn renew_worker(
    paths: &Paths,
    cfg: &ClusterConfig,
    reload: &mpsc::UnboundedSender<super::Request>,
    state: &Rc<RefCell<State>>,
) -> Result<(), String> {
    use crate::api::node::{CertificateRequest, Certificates};
    use crate::kube::kubeconfig;
    let (kubelet_csr, kubelet, kubelet_key) = request_over(&paths.kubeconfig("kubelet"))?;
    let proxy = paths.kubeconfig("kube-proxy");
    let proxy = if proxy.exists() { Some(request_over(&proxy)?) } else { None };
    let req = CertificateRequest { kubelet_csr, kube_proxy_csr: proxy.as_ref().map(|p| p.0.clone()) };
    let api = super::converge::NodeApi::new(paths, cfg);
    let got: Certificates = api.exchange("/v1/node/certificates", &req).await?;
    let node_user = format!("system:node:{}", cfg.node.name);
    check_issued(&got.kubelet_cert, &kubelet_key, &node_user, &kubelet.ca_pem)?;
    let mut files = vec![crate::host::fs::FileSpec::new(
        paths.kubeconfig("kubelet"),
        kubeconfig::render(
            &cfg.cluster.name,
            &kubelet.server,
            &kubelet.ca_pem,
            &node_user,
            &got.kubelet_cert,
            &kubelet.key_pem,
        ),
        0o600,
    )];
    if let Some((_, creds, key)) = &proxy {
        let cert = got.kube_proxy_cert.as_deref().ok_or("a master renewed no kube-proxy certificate")?;
        check_issued(cert, key, crate::pki::KUBE_PROXY_USER, &creds.ca_pem)?;
        files.push(crate::host::fs::FileSpec::new(
            paths.kubeconfig("kube-proxy"),
            kubeconfig::render(
                &cfg.cluster.name,
                &creds.server,
                &creds.ca_pem,
                crate::pki::KUBE_PROXY_USER,
                cert,
                &creds.key_pem,
            ),
            0o600,
        ));
    }
    let before = state.borrow().reloads;
    {
        let _lock = crate::host::lock::lock_root(paths.root()).map_err(|e| e.to_string())?;
        crate::host::fs::apply_files(&files).map_err(|e| e.to_string())?;
    }
    reload.send(super::Request::Reload).map_err(|_| "the agent is stopping".to_owned())?;
    settle(state, before, cfg).await
}

/// Until the agent has reloaded and every component is healthy, bounded.
async fn settle(state: &Rc<RefCell<State>>, before: u64, cfg: &ClusterConfig) -> Result<(), String> {
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

async fn renew(
    paths: &Paths,
    cfg: &ClusterConfig,
    due: &[String],
    reload: &mpsc::UnboundedSender<super::Request>,
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
        reload.send(super::Request::Reload).map_err(|_| "the agent is stopping".to_owned())?;
        settle(state, before, cfg).await
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
