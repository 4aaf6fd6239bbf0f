//! The node endpoints, for nodes that cannot read etcd (workers): `GET
//! /v1/node/cluster` (the cluster-wide settings and the masters), `POST
//! /v1/node/heartbeat`, `POST /v1/node/certificates` (a worker's client
//! certificates renewed) and `GET /v1/node/bundle/ID` (a bundle this
//! master keeps, for an upgrade). A node is named by its client certificate; a
//! purged node is refused until it is reset and joined again.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{refuse, unavailable, ApiContext, Peer, Refusal, Remote};
use crate::cluster::registry;
use crate::config::ClusterSpec;
use crate::etcd;
use crate::host::clock::now_secs;

/// What a node learns from `GET /v1/node/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The cluster-wide settings and their revision (None before the first
    /// master's agent wrote them). Read leniently: a newer master's fields
    /// are set aside.
    #[serde(default, deserialize_with = "crate::config::lenient::cluster_spec")]
    pub settings: Option<ClusterSpec>,
    pub settings_revision: i64,
    /// Every master: name and address.
    pub masters: Vec<MasterView>,
    /// The answering master's wall clock (ms since the epoch).
    #[serde(default)]
    pub now_ms: Option<u64>,
    /// The upgrade under way, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<crate::cluster::upgrade::record::Upgrade>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterView {
    pub name: String,
    pub address: IpAddr,
}

/// What a node reports with `POST /v1/node/heartbeat` (its name is its
/// certificate's, never the request's).
/// Strict: a field it does not know (a `name`, say) is refused. Masters
/// move to a new hakube before workers do, so a worker never sends what
/// its masters cannot read; the other way, a master's view, is read
/// leniently ([`NodeView`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The revision of the cluster-wide settings the node has applied.
    pub settings_revision: i64,
    /// The node's clock minus a master's, as it last measured it (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
    /// Its versions and health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::cluster::heartbeat::Report>,
}

/// What a worker sends to renew its client certificates: requests over its
/// current keys (its kubelet's identity, which its agent uses too, and
/// kube-proxy's when it has one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    pub kubelet_csr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_proxy_csr: Option<String>,
}

/// The renewed certificates, issued for the cluster's leaf lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificates {
    pub kubelet_cert: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_proxy_cert: Option<String>,
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
        Err(e) => return Err(unavailable(e).into_response()),
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
            Err(unavailable(e).into_response())
        }
    }
}

/// The node a request comes from: named by its certificate, and not purged.
async fn node_calling(
    ctx: &ApiContext,
    peer: Option<String>,
    remote: SocketAddr,
    path: &str,
) -> Result<String, Response> {
    let node = node_of(peer, remote, path).map_err(IntoResponse::into_response)?;
    refuse_purged(ctx, &node, remote).await?;
    Ok(node)
}

/// A node the registry does not know (removed, or never joined): 404, audited.
fn not_registered(node: &str, remote: SocketAddr, what: &str) -> Response {
    let msg = format!("node {node} is not registered in this cluster: `hakube reset` it and join it again");
    warn!(target: "audit", %remote, %node, decision = "refused", status = 404, reason = %msg, "{what}");
    refuse(StatusCode::NOT_FOUND, msg).into_response()
}

/// `GET /v1/node/cluster`: the cluster-wide settings and the masters, for a
/// node that cannot read etcd (a worker).
pub(crate) async fn cluster(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    Extension(Peer(peer)): Extension<Peer>,
) -> Response {
    if let Err(r) = node_calling(&ctx, peer, remote, "/v1/node/cluster").await {
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
        let upgrade = crate::cluster::upgrade::record::read(&mut client, &endpoint).await?;
        Ok::<_, etcd::EtcdError>(NodeView {
            settings_revision: settings.as_ref().map(|s| s.revision).unwrap_or(0),
            settings: settings.map(|s| s.spec),
            masters,
            now_ms: Some(crate::host::clock::now_millis()),
            upgrade,
        })
    };
    match view.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            ctx.forget_client().await;
            unavailable(e).into_response()
        }
    }
}

/// `GET /v1/node/bundle/ID`: a bundle this master keeps under `bundles/`
/// (an upgrade's, or the one it runs), streamed in the bundle format to a
/// node of the cluster; 404 when it has none of that id (the node asks
/// the next master).
pub(crate) async fn bundle(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    Extension(Peer(peer)): Extension<Peer>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let node = match node_calling(&ctx, peer, remote, "/v1/node/bundle").await {
        Ok(n) => n,
        Err(r) => return r,
    };
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        let msg = format!("{id:?} is not a bundle id (16 hexadecimal digits)");
        return refuse(StatusCode::BAD_REQUEST, msg).into_response();
    }
    let dir = ctx.paths.bundles_dir().join(&id);
    if !dir.join(crate::bundle::MANIFEST).is_file() {
        return refuse(StatusCode::NOT_FOUND, format!("this master has no bundle {id}")).into_response();
    }
    tracing::info!(target: "audit", %remote, %node, bundle = %id, decision = "accepted", "bundle");
    super::join::stream_bundle(dir)
}

/// `POST /v1/node/heartbeat`: a node says it is alive, and which settings
/// it runs; its name is its certificate's.
pub(crate) async fn heartbeat(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    Extension(Peer(peer)): Extension<Peer>,
    body: Bytes,
) -> Response {
    let node = match node_calling(&ctx, peer, remote, "/v1/node/heartbeat").await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let beat: Heartbeat = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("the body is not a heartbeat: {e}")).into_response(),
    };
    let endpoint = ctx.config.etcd_client_url();
    let result = async {
        let mut client = ctx.client().await?;
        registry::update(&mut client, &endpoint, &node, |r| {
            crate::cluster::heartbeat::beat(
                r,
                now_secs(),
                beat.settings_revision,
                beat.clock_offset_ms,
                beat.report.as_ref(),
            )
        })
        .await
    };
    match result.await {
        Ok(Some(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(None) => not_registered(&node, remote, "heartbeat"),
        Err(e) => {
            ctx.forget_client().await;
            unavailable(e).into_response()
        }
    }
}

/// `POST /v1/node/certificates`: a registered worker's client certificates
/// renewed, for the name its current certificate carries and over the keys
/// its requests hold (only the key is taken from a request).
pub(crate) async fn certificates(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    Extension(Peer(peer)): Extension<Peer>,
    body: Bytes,
) -> Response {
    let node = match node_calling(&ctx, peer, remote, "/v1/node/certificates").await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let req: CertificateRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return refuse(StatusCode::BAD_REQUEST, format!("the body is not a certificate request: {e}"))
                .into_response()
        }
    };
    let endpoint = ctx.config.etcd_client_url();
    let record = async { registry::get(&mut ctx.client().await?, &endpoint, &node).await };
    match record.await {
        Ok(Some(r)) if r.role == crate::cluster::Role::Worker => {}
        Ok(Some(_)) => {
            return refuse(StatusCode::FORBIDDEN, "a master renews its own certificates with the cluster's CA")
                .into_response()
        }
        Ok(None) => return not_registered(&node, remote, "certificates"),
        Err(e) => {
            ctx.forget_client().await;
            return unavailable(e).into_response();
        }
    }
    let ca = match crate::pki::Ca::load(&ctx.paths, "ca") {
        Ok(Some(ca)) => ca,
        Ok(None) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "this master has no cluster CA").into_response(),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let life = crate::pki::Lifetime::of(&ctx.config);
    let now = time::OffsetDateTime::now_utc();
    let kubelet = crate::pki::kubelet_client_spec(&node).with_lifetime(life);
    let kubelet_cert = match ca.sign_csr(&req.kubelet_csr, &kubelet, now) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("kubelet_csr: {e}")).into_response(),
    };
    let kube_proxy_cert = match req.kube_proxy_csr.as_deref() {
        None => None,
        Some(csr) => match ca.sign_csr(csr, &crate::pki::kube_proxy_client_spec().with_lifetime(life), now) {
            Ok(c) => Some(c),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("kube_proxy_csr: {e}")).into_response(),
        },
    };
    tracing::info!(target: "audit", %remote, %node, decision = "renewed", kube_proxy = kube_proxy_cert.is_some(), "certificates");
    Json(Certificates { kubelet_cert, kube_proxy_cert }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_masters_view_is_read_with_what_this_hakube_knows_and_a_beat_strictly() {
        let spec = crate::config::tests::test_config("{}").cluster;
        let mut settings = serde_json::to_value(&spec).unwrap();
        settings["nextRelease"] = serde_json::json!({"target": "v1.38.0"});
        let view = serde_json::json!({
            "settings": settings,
            "settings_revision": 7,
            "masters": [{"name": "m1", "address": "10.0.0.11"}],
            "now_ms": 1,
        });
        let v: NodeView = serde_json::from_value(view).expect("a newer master's view reads");
        assert_eq!(v.settings, Some(spec));
        let none: NodeView =
            serde_json::from_value(serde_json::json!({"settings_revision": 0, "masters": []})).unwrap();
        assert_eq!(none.settings, None);
        // A worker's beat is read strictly: an older worker's (no report)
        // reads, a field nobody sends is refused.
        let beat: Heartbeat = serde_json::from_value(serde_json::json!({"settings_revision": 3})).unwrap();
        assert_eq!((beat.settings_revision, beat.report), (3, None));
        assert!(serde_json::from_value::<Heartbeat>(serde_json::json!({"settings_revision": 3, "name": "m1"})).is_err());
    }
}
