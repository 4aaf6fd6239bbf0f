//! Joining: `POST /v1/join` verifies the token, issues a worker's
//! certificates from its CSRs, hands a master its sealed key material and
//! registers the host; `GET /v1/binary` serves this master's binary and
//! `GET /v1/bundle` its bundle to holders of a join token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use etcd_client::Client;
use tracing::{info, warn};

use super::{refuse, unavailable, ApiContext, Refusal, Remote};
use crate::cluster::registry::{self, NodeRecord};
use crate::config::NodeName;
use crate::etcd::{self, membership};
use crate::host::clock::now_secs;
use crate::join::store;
use crate::join::token::{self, JoinToken, Role, TokenError, TokenRecord};
use crate::join::wire::{JoinRequest, JoinResponse};
use crate::pki::{self, Ca};

/// The master's own binary, for join scripts on bare hosts (they check its
/// hash). Only to a holder of a valid join token (`Authorization: Bearer
/// TOKEN`, as the script sends it): tens of megabytes are not for anyone
/// who can reach the port. Rate-limited like joins; read once, then served
/// from memory.
pub(crate) async fn binary(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Err(refused) = token_gate(&ctx, &headers, remote, "binary").await {
        return refused;
    }
    if ctx.binary.get().is_none() {
        // The file this process runs, even when another was put in its
        // path since (an install that replaced /usr/local/bin/hakube
        // without restarting this agent): the build that answers is the
        // build a joining host gets.
        match tokio::task::spawn_blocking(|| std::fs::read("/proc/self/exe")).await {
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

/// The bundle this master runs from, streamed in the bundle format to a
/// holder of a join token: a joining host gets every binary and image from
/// the cluster, and nothing is copied by hand. 404 when this master was
/// installed from a bundle directory (it has no manifest to serve).
pub(crate) async fn bundle(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Err(refused) = token_gate(&ctx, &headers, remote, "bundle").await {
        return refused;
    }
    let Some(dir) = ctx.config.node.bundle.clone().filter(|d| d.join(crate::bundle::MANIFEST).is_file()) else {
        let msg = "this master was installed from a bundle directory, not a bundle file: it has no bundle to give";
        return refuse(StatusCode::NOT_FOUND, msg).into_response();
    };
    info!(bundle = %dir.display(), "serving the bundle");
    stream_bundle(dir)
}

/// `dir`'s bundle as a response body, in the bundle format, written as it
/// is sent (a client that goes away stops the writing).
pub(crate) fn stream_bundle(dir: std::path::PathBuf) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    // Test hook: `HAKUBE_FAULT=bundle-break-off` breaks every stream off
    // after 64 MiB, as a master that dies mid-way.
    let limit = match std::env::var("HAKUBE_FAULT").as_deref() {
        Ok("bundle-break-off") => 64 << 20,
        _ => u64::MAX,
    };
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, ChunkWriter { tx: tx.clone(), left: limit });
        if let Err(e) = crate::bundle::write_unpacked(&dir, &mut out) {
            warn!(error = %e, "serving the bundle stopped");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    ([("content-type", "application/x-tar")], axum::body::Body::from_stream(body)).into_response()
}

/// Sends what is written as chunks of a response body; a client that went
/// away ends the writing, and so does the end of `left` (the fault hook).
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    left: u64,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left < buf.len() as u64 {
            return Err(std::io::Error::other("HAKUBE_FAULT=bundle-break-off: breaking the stream off"));
        }
        self.left -= buf.len() as u64;
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::other("the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lets a holder of a valid join token through to `what`, with an audit
/// line either way; the refusal as the response otherwise.
async fn token_gate(
    ctx: &ApiContext,
    headers: &axum::http::HeaderMap,
    remote: std::net::SocketAddr,
    what: &str,
) -> Result<(), Response> {
    match token_allowed(ctx, headers, &format!("the {what}")).await {
        Ok(()) => {
            info!(target: "audit", %remote, decision = "accepted", "{what}");
            Ok(())
        }
        Err(Refusal(status, msg)) => {
            warn!(target: "audit", %remote, decision = "refused", status = status.as_u16(), reason = %msg, "{what}");
            Err(refuse(status, msg).into_response())
        }
    }
}

/// Whether the request carries a join token that is valid now (either
/// role); `what` is named in the refusal.
async fn token_allowed(ctx: &ApiContext, headers: &axum::http::HeaderMap, what: &str) -> Result<(), Refusal> {
    let unauthorized = |why: &str| {
        refuse(
            StatusCode::UNAUTHORIZED,
            format!("{why}: {what} is served to holders of a join token (header `Authorization: Bearer TOKEN`, as join scripts send it)"),
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

pub(crate) async fn join(
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
            crate::metrics::count_join(&role, "accepted");
            Json(resp).into_response()
        }
        Err(Refusal(status, msg)) => {
            warn!(target: "audit", %remote, %node, %role, decision = "refused", status = status.as_u16(), reason = %msg, "join");
            crate::metrics::count_join(&role, "refused");
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
            let life = pki::Lifetime::of(&ctx.config);
            let spec = pki::kubelet_client_spec(name.as_str()).with_lifetime(life);
            kubelet_cert = Some(
                ca.sign_csr(csr, &spec, time::OffsetDateTime::now_utc())
                    .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("kubelet_csr: {e}")))?,
            );
            if let Some(csr) = req.kube_proxy_csr.as_deref() {
                let spec = pki::kube_proxy_client_spec().with_lifetime(life);
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
        versions: Default::default(),
        hakube: None,
        balancer: None,
        healthy: None,
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
