//! The join API every master's agent serves (HTTPS, TLS 1.3, the cluster
//! CA's chain). It verifies tokens, issues worker certificates from CSRs,
//! hands masters their sealed key material, and registers the host. Bodies
//! are bounded, requests rate-limited per source address, every bad request
//! gets a clear 4xx, and every decision an audit line.

use std::collections::{BTreeMap, HashMap};
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
use tracing::{info, warn};

use super::store;
use super::tls;
use super::token::{self, JoinToken, Role, TokenError, TokenRecord};
use super::wire::{ApiError, Heartbeat, JoinRequest, JoinResponse, MasterView, NodeView, MAX_BODY};
use crate::cluster::registry::{self, NodeRecord};
use crate::config::{ClusterConfig, NodeName};
use crate::etcd::{self, membership, Credentials};
use crate::host::clock::now_secs;
use crate::host::paths::Paths;
use crate::pki::{self, Ca};

/// Connections served at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 64;

/// Requests a source address may make in a burst, and per second after it.
const BURST: f64 = 20.0;
const PER_SECOND: f64 = 5.0;

pub struct ApiContext {
    pub paths: Paths,
    pub config: ClusterConfig,
    etcd: tokio::sync::Mutex<Option<Client>>,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    binary: std::sync::OnceLock<Bytes>,
}

impl ApiContext {
    pub fn new(paths: Paths, config: ClusterConfig) -> Arc<Self> {
        Arc::new(ApiContext {
            paths,
            config,
            etcd: tokio::sync::Mutex::new(None),
            buckets: Mutex::new(HashMap::new()),
            binary: std::sync::OnceLock::new(),
        })
    }

    fn allow(&self, ip: IpAddr) -> bool {
        let mut buckets = self.buckets.lock().expect("bucket lock");
        if buckets.len() > 4096 {
            buckets.retain(|_, (_, t)| t.elapsed() < Duration::from_secs(60));
        }
        let now = Instant::now();
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

    fn creds(&self) -> Result<Credentials, etcd::EtcdError> {
        Credentials::load(&self.paths, "apiserver-etcd-client")
    }

    async fn client(&self) -> Result<Client, etcd::EtcdError> {
        let mut slot = self.etcd.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let endpoint = self.config.etcd_client_url();
        let c = etcd::connect(std::slice::from_ref(&endpoint), &self.creds()?, Duration::from_secs(3)).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn forget_client(&self) {
        *self.etcd.lock().await = None;
    }
}

/// A refusal: status, message, and the reason for the audit log.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

fn refuse(status: StatusCode, msg: impl Into<String>) -> Refusal {
    Refusal(status, msg.into())
}

#[derive(Clone, Copy)]
struct Remote(SocketAddr);

/// The node a connection's client certificate names (verified against the
/// cluster CA during the handshake), if it presented one.
#[derive(Clone)]
struct Peer(Option<String>);

pub fn router(ctx: Arc<ApiContext>) -> Router {
    Router::new()
        .route("/v1/join", post(join))
        .route("/v1/binary", get(binary))
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/node/cluster", get(node_cluster))
        .route("/v1/node/heartbeat", post(node_heartbeat))
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

/// The master's own binary, for join scripts on bare hosts (they check its
/// hash). Only to a holder of a valid join token (`Authorization: Bearer
/// TOKEN`, as the script sends it): tens of megabytes are not for anyone
/// who can reach the port. Rate-limited like joins; read once, then served
/// from memory.
async fn binary(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Err(Refusal(status, msg)) = binary_allowed(&ctx, &headers).await {
        warn!(target: "audit", %remote, decision = "refused", status = status.as_u16(), reason = %msg, "binary");
        return refuse(status, msg).into_response();
    }
    info!(target: "audit", %remote, decision = "accepted", "binary");
    if ctx.binary.get().is_none() {
        match tokio::task::spawn_blocking(|| std::env::current_exe().and_then(std::fs::read)).await {
            Ok(Ok(b)) => {
                let _ = ctx.binary.set(Bytes::from(b));
            }
            Ok(Err(e)) => {
                let msg = format!("cannot read this master's binary: {e}");
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, msg).into_response();
            }
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
    let bytes = ctx.binary.get().cloned().unwrap_or_default();
    ([("content-type", "application/octet-stream")], bytes).into_response()
}

/// Whether the request carries a join token that is valid now (either role).
async fn binary_allowed(ctx: &ApiContext, headers: &axum::http::HeaderMap) -> Result<(), Refusal> {
    let unauthorized = |why: &str| {
        refuse(
            StatusCode::UNAUTHORIZED,
            format!("{why}: the binary is served to holders of a join token (header `Authorization: Bearer TOKEN`, as join scripts send it)"),
        )
    };
    let value = headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| unauthorized("no join token"))?;
    let tok: JoinToken = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| unauthorized("the Authorization header holds no join token"))?;
    let mut client = ctx.client().await.map_err(unavailable)?;
    let record = token_record(ctx, &mut client, &tok).await?;
    let role = record.as_ref().map(|r| r.role).unwrap_or(Role::Worker);
    token::verify(&tok, record.as_ref(), role, now_secs()).map_err(token_refusal)
}

fn unavailable(e: etcd::EtcdError) -> Refusal {
    refuse(StatusCode::SERVICE_UNAVAILABLE, format!("this master cannot reach etcd: {e}"))
}

/// The record of the token presented, read from this master's own member
/// (a join counts its use linearizably later), or why it cannot be read.
async fn token_record(ctx: &ApiContext, client: &mut Client, tok: &JoinToken) -> Result<Option<TokenRecord>, Refusal> {
    match store::get_with(client, &ctx.config.etcd_client_url(), &tok.id, true).await {
        Ok(r) => Ok(r.map(|(r, _)| r)),
        Err(e) => {
            ctx.forget_client().await;
            Err(unavailable(e))
        }
    }
}

/// A token that does not verify: 401 for one the cluster does not know,
/// 403 for one it knows but that cannot do this.
fn token_refusal(e: TokenError) -> Refusal {
    let status = match e {
        TokenError::Unknown(_) | TokenError::Mismatch(_) => StatusCode::UNAUTHORIZED,
        TokenError::Expired { .. } | TokenError::WrongRole { .. } => StatusCode::FORBIDDEN,
    };
    refuse(status, e.to_string())
}

async fn join(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    body: Bytes,
) -> Response {
    let (node, role) = serde_json::from_slice::<JoinRequest>(&body)
        .map(|r| (r.node_name.clone(), r.role.to_string()))
        .unwrap_or_else(|_| ("?".into(), "?".into()));
    let result = handle_join(&ctx, &body).await;
    match result {
        Ok(resp) => {
            info!(target: "audit", %remote, %node, %role, decision = "accepted", "join");
            Json(resp).into_response()
        }
        Err(Refusal(status, msg)) => {
            warn!(target: "audit", %remote, %node, %role, decision = "refused", status = status.as_u16(), reason = %msg, "join");
            refuse(status, msg).into_response()
        }
    }
}

async fn handle_join(ctx: &ApiContext, body: &[u8]) -> Result<JoinResponse, Refusal> {
    let req: JoinRequest = serde_json::from_slice(body)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("the body is not a join request: {e}")))?;
    let tok: JoinToken = req.token.clone();
    let name: NodeName =
        req.node_name.parse().map_err(|e: crate::config::types::InvalidValue| refuse(StatusCode::BAD_REQUEST, e.0))?;
    if req.advertise_address.is_unspecified() || req.advertise_address.is_multicast() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("advertise address {} cannot be a node's address", req.advertise_address),
        ));
    }
    let endpoint = ctx.config.etcd_client_url();
    let mut client = ctx.client().await.map_err(unavailable)?;
    let record = token_record(ctx, &mut client, &tok).await?;
    token::verify(&tok, record.as_ref(), req.role, now_secs()).map_err(token_refusal)?;
    // Everything from here on writes to etcd: refuse with the reason when
    // it has no quorum (the member list is answered locally).
    let members = etcd::members(&mut client, &endpoint).await.map_err(unavailable)?;
    let creds = ctx.creds().map_err(unavailable)?;
    membership::check_quorum(&members, &creds)
        .await
        .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let existing = registry::get(&mut client, &endpoint, name.as_str()).await.map_err(unavailable)?;
    if let Some(msg) = registry::name_conflict(existing.as_ref(), req.advertise_address, req.role) {
        return Err(refuse(StatusCode::CONFLICT, msg));
    }
    // A worker's address is its own word: a live worker's name is not
    // handed to whoever names its address too.
    if let Some(r) = existing.as_ref().filter(|r| r.role == Role::Worker) {
        let ago = now_secs().saturating_sub(r.heartbeat_at);
        if ago <= crate::cluster::purge::STALE_AFTER {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "node {name} is alive (its heartbeat came {ago}s ago): another host cannot take its name; \
                     if this host is {name} itself, run `hakube reset` on it and join again once its heartbeat \
                     has stopped ({}s)",
                    crate::cluster::purge::STALE_AFTER
                ),
            ));
        }
    }
    // A node being purged joins once its purge is over (the purge's last
    // steps would undo the join).
    if let Some(p) = crate::cluster::purge::in_progress(&mut client, &endpoint)
        .await
        .map_err(unavailable)?
        .filter(|p| p.node.name == name.as_str())
    {
        return Err(refuse(
            StatusCode::CONFLICT,
            format!(
                "node {name} is being purged right now ({:?} next): run the join again in a minute, once \
                 `hakube status` on a master lists it as purged",
                p.step
            ),
        ));
    }
    // An etcd member of that name on another host is a conflict too, even
    // before its agent has registered it.
    let own_host = crate::config::Host::Ip(req.advertise_address).to_string();
    if let Some(m) = members.iter().find(|m| m.name == name.as_str()) {
        if !m.peer_urls.iter().any(|u| crate::etcd::host_of_url(u) == Some(own_host.as_str())) {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "node name {name} is taken by etcd member {} ({}): give this host another --node-name",
                    m.name,
                    m.peer_urls.join(",")
                ),
            ));
        }
    }
    let (mut sealed_material, mut kubelet_cert, mut kube_proxy_cert) = (None, None, None);
    match req.role {
        Role::Master => {
            let sealed = store::material(&mut client, &endpoint, &tok.id).await.map_err(unavailable)?;
            sealed_material = Some(sealed.ok_or_else(|| {
                refuse(StatusCode::GONE, format!("the key material of token {} is gone: print a new script with `hakube node-join-script --master`", tok.id))
            })?);
        }
        Role::Worker => {
            let csr = req
                .kubelet_csr
                .as_deref()
                .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "a worker join needs kubelet_csr"))?;
            let ca = Ca::load(&ctx.paths, "ca")
                .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .ok_or_else(|| refuse(StatusCode::INTERNAL_SERVER_ERROR, "this master has no cluster CA"))?;
            let spec = pki::kubelet_client_spec(name.as_str());
            kubelet_cert = Some(
                ca.sign_csr(csr, &spec, time::OffsetDateTime::now_utc())
                    .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("kubelet_csr: {e}")))?,
            );
            if let Some(csr) = req.kube_proxy_csr.as_deref() {
                let spec = pki::kube_proxy_client_spec();
                kube_proxy_cert = Some(
                    ca.sign_csr(csr, &spec, time::OffsetDateTime::now_utc())
                        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("kube_proxy_csr: {e}")))?,
                );
            }
        }
    }
    // Counting the use re-reads the token linearizably: a token revoked a
    // moment ago (the check above read a local copy) is refused here.
    match store::record_use(&mut client, &endpoint, &tok).await {
        Ok(()) => {}
        Err(store::UseError::Gone) => {
            return Err(refuse(StatusCode::UNAUTHORIZED, TokenError::Unknown(tok.id.clone()).to_string()))
        }
        Err(store::UseError::Etcd(e)) => return Err(unavailable(e)),
    }
    let now = now_secs();
    let record = NodeRecord {
        name: name.to_string(),
        role: req.role,
        address: req.advertise_address,
        joined_at: now,
        heartbeat_at: now,
        settings_revision: 0,
        clock_offset_ms: None,
    };
    // The check above was a read; the claim is the compare-and-swap that
    // settles two joins with one name at once.
    match registry::claim(&mut client, &endpoint, record).await.map_err(unavailable)? {
        registry::Claim::Claimed(_) => {}
        registry::Claim::Conflict(msg) => return Err(refuse(StatusCode::CONFLICT, msg)),
    }
    // A purged node reset and joined again is a member once more.
    crate::cluster::purge::clear_tombstone(&mut client, &endpoint, name.as_str()).await.map_err(unavailable)?;

    let mut ca_certs = BTreeMap::new();
    for name in ["ca.crt", "etcd/ca.crt", "front-proxy-ca.crt"] {
        let text = std::fs::read_to_string(ctx.paths.pki(name))
            .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{name}: {e}")))?;
        ca_certs.insert(name.to_owned(), text);
    }
    let port = ctx.config.node.join_api_port;
    let join_endpoints = members
        .iter()
        .filter(|m| !m.is_learner)
        .filter_map(|m| m.client_urls.first())
        .filter_map(|u| crate::etcd::host_of_url(u).map(|h| format!("{h}:{port}")))
        .collect();
    // The cluster-wide settings as they are now, not as this master's copy
    // has them (it may lag a change made on another master).
    let cluster = match crate::cluster::settings::read(&mut client, &endpoint).await {
        Ok(Some(s)) => s.spec,
        Ok(None) => ctx.config.cluster.clone(),
        Err(e) => {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this master cannot read the cluster's settings: {e}"),
            ))
        }
    };
    Ok(JoinResponse {
        cluster,
        ca_certs,
        sealed_material,
        kubelet_cert,
        kube_proxy_cert,
        etcd_members: members,
        join_endpoints,
        now_ms: Some(crate::host::clock::now_millis()),
        clock_offset_ms: None,
    })
}

/// The node endpoints want a node's certificate.
fn node_of(peer: Option<String>, remote: SocketAddr, path: &str) -> Result<String, Refusal> {
    peer.ok_or_else(|| {
        let msg = "this endpoint is for the cluster's nodes: present the node's client certificate";
        warn!(target: "audit", %remote, %path, decision = "refused", status = 401, reason = msg, "node");
        refuse(StatusCode::UNAUTHORIZED, msg)
    })
}

/// A purged node's identity is refused (410) until it is reset and joined
/// again; the refusal says what happened and what to do.
async fn refuse_purged(ctx: &ApiContext, node: &str, remote: SocketAddr) -> Result<(), Response> {
    let endpoint = ctx.config.etcd_client_url();
    let mut client = match ctx.client().await {
        Ok(c) => c,
        Err(e) => {
            return Err(
                refuse(StatusCode::SERVICE_UNAVAILABLE, format!("this master cannot reach etcd: {e}")).into_response()
            )
        }
    };
    match crate::cluster::purge::tombstone(&mut client, &endpoint, node).await {
        Ok(None) => Ok(()),
        Ok(Some(t)) => {
            let msg = t.message(node);
            warn!(target: "audit", %remote, %node, decision = "refused", status = 410, reason = %msg, "node");
            Err(refuse(StatusCode::GONE, msg).into_response())
        }
        Err(e) => {
            ctx.forget_client().await;
            Err(refuse(StatusCode::SERVICE_UNAVAILABLE, format!("this master cannot reach etcd: {e}")).into_response())
        }
    }
}

/// `GET /v1/node/cluster`: the cluster-wide settings and the masters, for a
/// node that cannot read etcd (a worker).
async fn node_cluster(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    Extension(Peer(peer)): Extension<Peer>,
) -> Response {
    let node = match node_of(peer, remote, "/v1/node/cluster") {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = refuse_purged(&ctx, &node, remote).await {
        return r;
    }
    let endpoint = ctx.config.etcd_client_url();
    let view = async {
        let mut client = ctx.client().await?;
        let settings = crate::cluster::settings::read(&mut client, &endpoint).await.map_err(|e| match e {
            crate::cluster::settings::SettingsError::Etcd(e) => e,
            other => etcd::EtcdError::Call { endpoint: endpoint.clone(), message: other.to_string() },
        })?;
        let masters = registry::list(&mut client, &endpoint)
            .await?
            .into_iter()
            .filter(|r| r.role == crate::cluster::Role::Master)
            .map(|r| MasterView { name: r.name, address: r.address })
            .collect();
        Ok::<_, etcd::EtcdError>(NodeView {
            settings_revision: settings.as_ref().map(|s| s.revision).unwrap_or(0),
            settings: settings.map(|s| s.spec),
            masters,
            now_ms: Some(crate::host::clock::now_millis()),
        })
    };
    match view.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            ctx.forget_client().await;
            refuse(StatusCode::SERVICE_UNAVAILABLE, format!("this master cannot reach etcd: {e}")).into_response()
        }
    }
}

/// `POST /v1/node/heartbeat`: a node says it is alive, and which settings
/// it runs; its name is its certificate's.
async fn node_heartbeat(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    Extension(Peer(peer)): Extension<Peer>,
    body: Bytes,
) -> Response {
    let node = match node_of(peer, remote, "/v1/node/heartbeat") {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = refuse_purged(&ctx, &node, remote).await {
        return r;
    }
    let beat: Heartbeat = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("the body is not a heartbeat: {e}")).into_response(),
    };
    let endpoint = ctx.config.etcd_client_url();
    let result = async {
        let mut client = ctx.client().await?;
        registry::update(&mut client, &endpoint, &node, |r| {
            r.heartbeat_at = now_secs();
            r.settings_revision = beat.settings_revision;
            if beat.clock_offset_ms.is_some() {
                r.clock_offset_ms = beat.clock_offset_ms;
            }
        })
        .await
    };
    match result.await {
        Ok(Some(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(None) => {
            let msg = format!("node {node} is not registered in this cluster: `hakube reset` it and join it again");
            warn!(target: "audit", %remote, %node, decision = "refused", status = 404, reason = %msg, "heartbeat");
            refuse(StatusCode::NOT_FOUND, msg).into_response()
        }
        Err(e) => {
            ctx.forget_client().await;
            refuse(StatusCode::SERVICE_UNAVAILABLE, format!("this master cannot reach etcd: {e}")).into_response()
        }
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(target: "audit", %remote, decision = "refused", reason = "too many connections", "join");
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
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
            let conn = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .into_owned();
            // A client that sends nothing gets dropped.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}
