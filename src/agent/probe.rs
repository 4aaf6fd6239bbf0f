//! Health probes of the supervised components: a component counts as
//! healthy only when it answers, the way kubeadm's static-pod probes ask:
//! etcd a linearizable read, kube-apiserver `/readyz`, controller-manager
//! and scheduler `/healthz` on their secure ports, kubelet `/healthz` on
//! 10248, kube-proxy `/healthz` on 10256, containerd its socket (and the
//! bundle's images imported).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;

use crate::config::{ClusterConfig, Component, Host, HostPort};
use crate::etcd;
use crate::host::paths::Paths;
use crate::https::{self, Limits, Request};

pub use crate::kube::components::{
    CONTROLLER_MANAGER_PORT, KUBELET_HEALTHZ_PORT, KUBE_PROXY_HEALTHZ_PORT, KUBE_PROXY_METRICS_PORT, SCHEDULER_PORT,
};

/// How one component is asked whether it is healthy.
pub enum Prober {
    Etcd { endpoint: String, client: Option<Box<etcd_client::Client>> },
    Socket { path: std::path::PathBuf },
    Https { what: &'static str, at: HostPort, path: &'static str, tls: Option<Arc<rustls::ClientConfig>>, verify: bool },
    Http { at: HostPort, path: &'static str },
}

impl Prober {
    pub fn new(comp: Component, c: &ClusterConfig, paths: &Paths) -> Prober {
        let lo = |port| HostPort::new(Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), port);
        match comp {
            Component::Etcd => Prober::Etcd { endpoint: c.etcd_client_url(), client: None },
            Component::Containerd => Prober::Socket { path: paths.containerd_socket() },
            Component::KubeApiserver => Prober::Https {
                what: "kube-apiserver",
                at: HostPort::new(Host::Ip(c.node.advertise_address), c.node.api_server_port),
                path: "/readyz",
                tls: None,
                verify: true,
            },
            Component::KubeControllerManager => Prober::Https {
                what: "kube-controller-manager",
                at: lo(CONTROLLER_MANAGER_PORT),
                path: "/healthz",
                tls: None,
                verify: false,
            },
            Component::KubeScheduler => Prober::Https {
                what: "kube-scheduler",
                at: lo(SCHEDULER_PORT),
                path: "/healthz",
                tls: None,
                verify: false,
            },
            Component::Kubelet => Prober::Http { at: lo(KUBELET_HEALTHZ_PORT), path: "/healthz" },
            Component::KubeProxy => Prober::Http { at: lo(KUBE_PROXY_HEALTHZ_PORT), path: "/healthz" },
        }
    }

    /// What the probe asks, for `status`.
    pub fn describe(&self) -> String {
        match self {
            Prober::Etcd { .. } => "etcd linearizable read".into(),
            Prober::Socket { path } => format!("socket {}", path.display()),
            Prober::Https { at, path, .. } => format!("GET https://{at}{path}"),
            Prober::Http { at, path } => format!("GET http://{at}{path}"),
        }
    }

    /// Asks once; `Err` says why the component is not healthy.
    pub async fn check(&mut self, paths: &Paths) -> Result<(), String> {
        match self {
            Prober::Etcd { endpoint, client } => {
                if client.is_none() {
                    let creds = etcd::Credentials::load(paths, "etcd/healthcheck-client").map_err(|e| e.to_string())?;
                    let c = etcd::connect(std::slice::from_ref(endpoint), &creds, Duration::from_secs(2))
                        .await
                        .map_err(|e| e.to_string())?;
                    *client = Some(Box::new(c));
                }
                let result = etcd::check_health(client.as_mut().expect("connected"), endpoint).await;
                if result.is_err() {
                    *client = None;
                }
                result.map_err(|e| e.to_string())
            }
            Prober::Socket { path } => timeout(Duration::from_secs(2), tokio::net::UnixStream::connect(&*path))
                .await
                .map_err(|_| format!("{} does not accept within 2s", path.display()))?
                .map(drop)
                .map_err(|e| format!("{}: {e}", path.display())),
            Prober::Https { what, at, path, tls, verify } => {
                if tls.is_none() {
                    let config = if *verify {
                        let ca = std::fs::read(paths.pki("ca.crt"))
                            .map_err(|e| format!("{}: {e}", paths.pki("ca.crt").display()))?;
                        https::client_config(&ca, None).map_err(|e| e.to_string())?
                    } else {
                        https::unverified_client_config()
                    };
                    *tls = Some(Arc::new(config));
                }
                let tls = tls.clone().expect("set above");
                let resp = https::request(at, tls, Request::get(path), short_limits())
                    .await
                    .map_err(|e| format!("{what} at https://{at}{path}: {e}"))?;
                ok_status(resp.status, &resp.body)
            }
            Prober::Http { at, path } => http_get(at, path).await,
        }
    }
}

fn short_limits() -> Limits {
    Limits { connect: Duration::from_secs(2), exchange: Duration::from_secs(3), max_body: 64 << 10 }
}

fn ok_status(status: u16, body: &[u8]) -> Result<(), String> {
    if status == 200 {
        return Ok(());
    }
    // /readyz lists its failing checks ("[-]etcd failed: ..."): keep them short.
    let text = String::from_utf8_lossy(body);
    let failing: Vec<_> = text.lines().filter(|l| l.starts_with("[-]")).take(3).collect();
    let why = if failing.is_empty() { text.trim().chars().take(200).collect() } else { failing.join("; ") };
    Err(format!("answered {status}: {why}"))
}

/// A plain HTTP GET on loopback (kubelet's healthz), bounded.
async fn http_get(at: &HostPort, path: &str) -> Result<(), String> {
    use http_body_util::{BodyExt, Empty};
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(https::target(at)).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", at.to_string())
            .body(Empty::<axum::body::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        ok_status(status, &body)
    };
    timeout(Duration::from_secs(3), exchange)
        .await
        .map_err(|_| format!("http://{at}{path}: no answer within 3s"))?
        .map_err(|e| format!("http://{at}{path}: {e}"))
}
