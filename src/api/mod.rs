//! The masters' API: the HTTPS service every master's agent serves on the
//! join port (TLS 1.3, the cluster CA's chain). Hosts join through it
//! ([`join`]); nodes that cannot read etcd (workers) learn the cluster's
//! settings and send their heartbeats through it ([`node`]). Bodies are
//! bounded, requests rate-limited per source address, every bad request
//! gets a clear 4xx, and every decision an audit line. It also serves the
//! cluster page ([`console`]).

pub mod console;
pub mod join;
pub mod node;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use etcd_client::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::sleep;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::etcd::{self, Credentials};
use crate::host::paths::Paths;
use crate::join::tls;
use crate::join::wire::{ApiError, MAX_BODY};

/// Connections served at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 64;

/// Requests a source address may make in a burst, and per second after it.
const BURST: f64 = 20.0;
const PER_SECOND: f64 = 5.0;
/// Sources the limiter remembers at once. A source idle for [`REFILL`] is
/// back at a full burst, as if never seen, so it is forgotten first; when
/// every remembered source is newer, a new one is refused until one ages
/// out: the table never grows with the number of addresses a flood uses.
const MAX_SOURCES: usize = 4096;
/// How long an empty bucket takes to fill again (BURST / PER_SECOND).
const REFILL: Duration = Duration::from_secs(4);
/// Connections one source may hold at once: one host cannot take every
/// slot of [`MAX_CONNECTIONS`] (joins, heartbeats and the cluster page
/// share them).
const PER_SOURCE_CONNECTIONS: usize = 16;

/// Who a request counts against: an IPv4 address, or an IPv6 address's
/// /64 (one host commonly has a whole /64 to pick from).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// A source's share of the connection slots, given back when dropped.
struct Share {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Share {
    /// A connection for `source`, unless it holds its share already.
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, source: IpAddr) -> Option<Share> {
        let mut all = counts.lock().expect("connection counts");
        let held = all.entry(source).or_insert(0);
        if *held >= PER_SOURCE_CONNECTIONS {
            return None;
        }
        *held += 1;
        Some(Share { counts: counts.clone(), source })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut all = self.counts.lock().expect("connection counts");
        if let Some(held) = all.get_mut(&self.source) {
            *held -= 1;
            if *held == 0 {
                all.remove(&self.source);
            }
        }
    }
}

pub struct ApiContext {
    pub paths: Paths,
    pub config: ClusterConfig,
    etcd: tokio::sync::Mutex<etcd::Local>,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    pub(crate) binary: std::sync::OnceLock<Bytes>,
    /// The cluster page's last view, reused for a moment, and the lock a
    /// refresh of it holds (one at a time).
    console_view: Mutex<Option<Arc<console::Cached>>>,
    console_refresh: tokio::sync::Mutex<()>,
}

impl ApiContext {
    pub fn new(paths: Paths, config: ClusterConfig) -> Arc<Self> {
        Arc::new(ApiContext {
            etcd: tokio::sync::Mutex::new(etcd::Local::new(&paths, &config, Duration::from_secs(3))),
            paths,
            config,
            buckets: Mutex::new(HashMap::new()),
            binary: std::sync::OnceLock::new(),
            console_view: Mutex::new(None),
            console_refresh: tokio::sync::Mutex::new(()),
        })
    }

    fn allow(&self, ip: IpAddr) -> bool {
        let ip = source(ip);
        let mut buckets = self.buckets.lock().expect("bucket lock");
        let now = Instant::now();
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&ip) {
            buckets.retain(|_, (_, t)| now.duration_since(*t) < REFILL);
            if buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (tokens, last) = buckets.entry(ip).or_insert((BURST, now));
        *tokens = (*tokens + last.elapsed().as_secs_f64() * PER_SECOND).min(BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(crate) fn creds(&self) -> Result<Credentials, etcd::EtcdError> {
        Credentials::load(&self.paths, etcd::CLIENT_CERT)
    }

    pub(crate) async fn client(&self) -> Result<Client, etcd::EtcdError> {
        Ok(self.etcd.lock().await.client().await?.clone())
    }

    pub(crate) async fn forget_client(&self) {
        self.etcd.lock().await.forget();
    }
}

/// A refusal: status, message, and the reason for the audit log.
pub(crate) struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

pub(crate) fn refuse(status: StatusCode, msg: impl Into<String>) -> Refusal {
    Refusal(status, msg.into())
}

#[derive(Clone, Copy)]
pub(crate) struct Remote(SocketAddr);

/// The node a connection's client certificate names (verified against the
/// cluster CA during the handshake), if it presented one.
#[derive(Clone)]
pub(crate) struct Peer(Option<String>);

pub fn router(ctx: Arc<ApiContext>) -> Router {
    Router::new()
        .route("/v1/join", post(join::join))
        .route("/v1/binary", get(join::binary))
        .route("/v1/bundle", get(join::bundle))
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/node/cluster", get(node::cluster))
        .route("/v1/node/heartbeat", post(node::heartbeat))
        .route("/v1/node/certificates", post(node::certificates))
        .route("/v1/node/bundle/{id}", get(node::bundle))
        .route("/console", get(console::page))
        .route("/console/signin", get(console::signin_form).post(console::signin))
        .route("/console/signout", post(console::signout))
        .route("/console/api/state", get(console::state))
        .route("/console/api/join-script", post(console::join_script))
        .route("/console/api/tokens", get(console::tokens))
        .route("/console/api/tokens/revoke", post(console::revoke))
        .route("/console/api/nodes/remove", post(console::remove_node))
        .route("/console/app.js", get(console::app_js))
        .route("/console/app.css", get(console::app_css))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), rate_limit))
        .with_state(ctx)
}

/// Refuses a source over its rate before any of its body is read.
async fn rate_limit(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path() != "/healthz" && !ctx.allow(remote.ip()) {
        let msg = format!("too many requests from {}: wait a few seconds", remote.ip());
        warn!(target: "audit", %remote, path = %req.uri().path(), decision = "refused", status = 429, reason = %msg, "join");
        return refuse(StatusCode::TOO_MANY_REQUESTS, msg).into_response();
    }
    next.run(req).await
}

/// Refuses a body whose declared length is over the limit before reading
/// any of it (so a client waiting on `Expect: 100-continue` gets the 413
/// instead of a reset connection); bodies of undeclared length are cut off
/// at the limit by [`DefaultBodyLimit`].
async fn refuse_declared_oversize(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {MAX_BODY} bytes")).into_response();
    }
    next.run(req).await
}

/// Why a master cannot answer: it cannot reach etcd.
pub(crate) fn unavailable(e: etcd::EtcdError) -> Refusal {
    refuse(StatusCode::SERVICE_UNAVAILABLE, format!("this master cannot reach etcd: {e}"))
}

/// Serves the masters' API until `stop` changes.
pub async fn run(paths: Paths, cfg: ClusterConfig, mut stop: watch::Receiver<bool>) {
    let addr = std::net::SocketAddr::new(cfg.node.advertise_address, cfg.node.join_api_port);
    loop {
        let ready = async {
            let listener = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let tls = tls::server_config(&paths)?;
            Ok::<_, String>((listener, tls))
        };
        match ready.await {
            Ok((listener, tls)) => {
                info!(%addr, "masters' API listening");
                let ctx = ApiContext::new(paths.clone(), cfg.clone());
                serve(listener, Arc::new(tls), ctx, async {
                    let _ = stop.changed().await;
                })
                .await;
                return;
            }
            Err(e) => {
                warn!(error = %e, "masters' API not serving; retrying");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

/// One request through the API as a connection from `remote` takes it
/// (`peer`: the node its client certificate names, if it showed one),
/// without a socket or TLS: what the fuzz target drives.
pub async fn answer<B>(
    ctx: Arc<ApiContext>,
    remote: SocketAddr,
    peer: Option<String>,
    req: hyper::Request<B>,
) -> Response
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    use hyper::service::Service as _;
    let app = router(ctx).layer(Extension(Remote(remote))).layer(Extension(Peer(peer)));
    match hyper_util::service::TowerToHyperService::new(app).call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Serves the join API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<ApiContext>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(ctx);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let shares: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "join API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Beyond the cap a connection is closed at once: a flood of idle
        // connections cannot pile up handshakes and tasks.
        let Some(share) = Share::take(&shares, source(remote.ip())) else {
            warn!(target: "audit", %remote, decision = "refused", reason = "too many connections from this source", "join");
            drop(tcp);
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(target: "audit", %remote, decision = "refused", reason = "too many connections", "join");
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let (_slot, _share) = (slot, share);
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    info!(target: "audit", %remote, decision = "refused", reason = %format!("TLS handshake: {e}"), "join");
                    return;
                }
                Err(_) => return,
            };
            let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| tls::node_of(c));
            let app = app.layer(Extension(Remote(remote))).layer(Extension(Peer(peer)));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // A client that trickles its headers is dropped after 10 s.
            builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service).into_owned();
            // A client that sends nothing gets dropped.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Arc<ApiContext> {
        let dir = std::env::temp_dir();
        ApiContext::new(Paths::new(dir), crate::config::tests::test_config("{}"))
    }

    #[test]
    fn the_rate_limiter_remembers_a_bounded_number_of_sources() {
        let ctx = ctx();
        // One source per /64.
        let v6 = |n: u32| IpAddr::from(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(n) << 64));
        for n in 0..MAX_SOURCES as u32 {
            assert!(ctx.allow(v6(n)));
        }
        assert!(!ctx.allow(v6(MAX_SOURCES as u32)), "a new source beyond the table waits");
        assert!(ctx.allow(v6(7)), "a known source keeps its bucket");
        assert_eq!(ctx.buckets.lock().unwrap().len(), MAX_SOURCES);
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_a_source_holds_a_share_of_the_connections() {
        let ctx = ctx();
        let in_64 = |n: u128| IpAddr::from(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | n));
        let allowed = (0..40).filter(|n| ctx.allow(in_64(*n))).count();
        assert!((20..=21).contains(&allowed), "addresses of one /64 share a burst: {allowed}");
        assert_eq!(source(IpAddr::from([10, 0, 0, 1])), IpAddr::from([10, 0, 0, 1]));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source(mapped), IpAddr::from([10, 0, 0, 1]), "an IPv4-mapped address is its IPv4 address");

        let counts = Arc::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        let held: Vec<Share> = (0..PER_SOURCE_CONNECTIONS).map(|_| Share::take(&counts, a).unwrap()).collect();
        assert!(Share::take(&counts, a).is_none(), "its share is full");
        assert!(Share::take(&counts, IpAddr::from([10, 0, 0, 2])).is_some(), "another source is not held up");
        drop(held);
        let again = Share::take(&counts, a);
        assert!(again.is_some(), "given back as they close");
        drop(again);
        assert!(counts.lock().unwrap().is_empty(), "no entry kept for a source with none");
    }

    #[test]
    fn a_source_gets_its_burst_then_is_refused() {
        let ctx = ctx();
        let ip = IpAddr::from([10, 0, 0, 1]);
        let allowed = (0..40).filter(|_| ctx.allow(ip)).count();
        assert!((20..=21).contains(&allowed), "{allowed}");
    }
}
