//! The cluster page's routes ([`crate::console`]): sign-in by a one-time
//! link, sign-out, the page and its JSON view. Every decision is an audit
//! line with who (the link's printer) and from where; nothing changes on a
//! GET; every POST of a signed-in browser carries the session's CSRF token
//! and, when the browser says where it comes from, this origin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{ApiContext, Remote};
use crate::console::session::{self, Refused, Secret, SessionRecord};
use crate::console::{self as page, CSP};
use crate::host::clock::now_secs;

/// How long the JSON view is reused: open tabs poll every few seconds, and
/// each fresh view probes every etcd member and the API server.
const VIEW_REUSED: Duration = Duration::from_secs(2);
/// The whole view is bounded: a page that hangs is worse than one that
/// says what it could not read.
const VIEW_LIMIT: Duration = Duration::from_secs(8);

/// The page's headers: no caching, no framing, no sniffing, and the CSP.
fn guarded(status: StatusCode, content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Same-origin: the sign-in link never leaks to another site, and the
    // page's own form posts still name their origin.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    r
}

const HTML: &str = "text/html; charset=utf-8";

fn html(status: StatusCode, body: String) -> Response {
    guarded(status, HTML, body)
}

fn see_other(to: &'static str, cookie: Option<String>) -> Response {
    let mut r = guarded(StatusCode::SEE_OTHER, HTML, "");
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

pub(crate) async fn app_js() -> Response {
    guarded(StatusCode::OK, "text/javascript; charset=utf-8", page::APP_JS)
}

pub(crate) async fn app_css() -> Response {
    guarded(StatusCode::OK, "text/css; charset=utf-8", page::APP_CSS)
}

/// The session a request's cookie opens, or why none.
async fn signed_in(ctx: &ApiContext, headers: &HeaderMap) -> Result<(Secret, SessionRecord), Response> {
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let Some(secret) = session::from_cookies(cookies) else {
        return Err(refusal(StatusCode::UNAUTHORIZED, "Not signed in", &Refused::NoSession.to_string()));
    };
    let record = lookup(ctx, &secret).await?;
    match session::check_session(record.as_ref(), now_secs()) {
        Ok(()) => Ok((secret, record.expect("checked"))),
        Err(e) => {
            // The browser's cookie opens nothing: it goes.
            let mut r = refusal(StatusCode::UNAUTHORIZED, "Not signed in", &e.to_string());
            if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            Err(r)
        }
    }
}

async fn lookup(ctx: &ApiContext, secret: &Secret) -> Result<Option<SessionRecord>, Response> {
    let endpoint = ctx.config.etcd_client_url();
    let mut client = ctx.client().await.map_err(|e| unavailable(&e.to_string()))?;
    match session::session(&mut client, &endpoint, secret).await {
        Ok(r) => Ok(r),
        Err(e) => {
            ctx.forget_client().await;
            Err(unavailable(&e.to_string()))
        }
    }
}

fn refusal(status: StatusCode, title: &str, message: &str) -> Response {
    html(status, page::message_html(title, message))
}

/// This master cannot read etcd: the detail (endpoints, files) goes to the
/// log, not to a browser that may not be signed in.
fn unavailable(e: &str) -> Response {
    warn!(error = %e, "the cluster page cannot reach etcd");
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "This master cannot reach etcd",
        "this master cannot reach etcd right now (its log says why): try another master",
    )
}

/// `GET /console`: the page for a signed-in browser, else how to sign in.
pub(crate) async fn page(State(ctx): State<Arc<ApiContext>>, headers: HeaderMap) -> Response {
    match signed_in(&ctx, &headers).await {
        Ok(_) => html(StatusCode::OK, page::PAGE_HTML.to_owned()),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub(crate) struct Code {
    code: String,
}

/// `GET /console/signin?code=…`: a button that trades the code. Nothing
/// is traded here: a link preview or a prefetch must not spend the link.
pub(crate) async fn signin_form(query: Result<Query<Code>, QueryRejection>) -> Response {
    match query.ok().and_then(|Query(q)| Secret::parse(&q.code)) {
        Some(code) => html(StatusCode::OK, page::signin_html(code.reveal())),
        None => refusal(StatusCode::BAD_REQUEST, "Not a sign-in link", &Refused::LinkGone.to_string()),
    }
}

/// `POST /console/signin`: trades a link's code for a session, once.
pub(crate) async fn signin(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    headers: HeaderMap,
    form: Result<Form<Code>, FormRejection>,
) -> Response {
    let Some(code) = form.ok().and_then(|Form(f)| Secret::parse(&f.code)) else {
        warn!(target: "audit", %remote, decision = "refused", reason = "no well-formed code", "console sign-in");
        return refusal(StatusCode::BAD_REQUEST, "Not a sign-in link", &Refused::LinkGone.to_string());
    };
    let endpoint = ctx.config.etcd_client_url();
    let mut client = match ctx.client().await {
        Ok(c) => c,
        Err(e) => return unavailable(&e.to_string()),
    };
    match session::trade(&mut client, &endpoint, &code, &remote.ip().to_string(), now_secs()).await {
        Ok(Ok((secret, record))) => {
            info!(target: "audit", %remote, by = %record.by, decision = "accepted", "console sign-in");
            // The session this browser had before ends: one browser, one session.
            let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
            if let Some(before) = session::from_cookies(cookies) {
                let _ = session::end(&mut client, &endpoint, &before).await;
            }
            see_other("/console", Some(session::set_cookie(&secret)))
        }
        Ok(Err(refused)) => {
            warn!(target: "audit", %remote, decision = "refused", reason = %refused, "console sign-in");
            refusal(StatusCode::FORBIDDEN, "Cannot sign in", &refused.to_string())
        }
        Err(e) => {
            ctx.forget_client().await;
            unavailable(&e.to_string())
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Csrf {
    csrf: String,
}

/// Whether a change may go ahead as far as the browser tells where it
/// comes from (the session's CSRF token must match as well): a browser
/// that sends Fetch Metadata must say `same-origin`; one that only sends
/// `Origin` must name this page's origin (`null`, what a sandboxed frame
/// sends, names none). The page's own requests send both.
fn same_origin(uri: &axum::http::Uri, headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return site == "same-origin";
    }
    let Some(origin) = text("origin") else { return true };
    // Where the request was sent: HTTP/2 names it in the URI
    // (`:authority`), HTTP/1.1 in the `Host` header.
    let host = match uri.authority() {
        Some(a) => a.as_str(),
        None => text("host").unwrap_or_default(),
    };
    !host.is_empty() && origin.strip_prefix("https://").is_some_and(|o| o == host)
}

/// `POST /console/signout`: ends the session everywhere.
pub(crate) async fn signout(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    form: Result<Form<Csrf>, FormRejection>,
) -> Response {
    let (secret, record) = match signed_in(&ctx, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !same_origin(&uri, &headers) || !form.is_ok_and(|Form(f)| secret.csrf_matches(&f.csrf)) {
        warn!(target: "audit", %remote, by = %record.by, decision = "refused", reason = %Refused::Csrf, "console sign-out");
        return refusal(StatusCode::FORBIDDEN, "Refused", &Refused::Csrf.to_string());
    }
    let endpoint = ctx.config.etcd_client_url();
    let ended = match ctx.client().await {
        Ok(mut c) => session::end(&mut c, &endpoint, &secret).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = ended {
        ctx.forget_client().await;
        return unavailable(&e);
    }
    info!(target: "audit", %remote, by = %record.by, decision = "accepted", "console sign-out");
    see_other("/console", Some(session::clear_cookie()))
}

/// A change a signed-in browser asks for: the session, when its CSRF token
/// (header `x-csrf-token`) matches and the browser does not say it comes
/// from elsewhere; else the refusal, audited.
async fn change(
    ctx: &ApiContext,
    remote: std::net::SocketAddr,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    action: &'static str,
) -> Result<SessionRecord, Response> {
    let (secret, record) = signed_in(ctx, headers).await.map_err(|r| match r.status() {
        StatusCode::UNAUTHORIZED => {
            warn!(target: "audit", %remote, action, decision = "refused", reason = %Refused::NoSession, "console");
            api_error(StatusCode::UNAUTHORIZED, Refused::NoSession.to_string())
        }
        status => api_error(status, "this master cannot reach etcd right now: try another master".into()),
    })?;
    let token = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !same_origin(uri, headers) || !secret.csrf_matches(token) {
        warn!(target: "audit", %remote, by = %record.by, action, decision = "refused", reason = %Refused::Csrf, "console");
        return Err(api_error(StatusCode::FORBIDDEN, Refused::Csrf.to_string()));
    }
    Ok(record)
}

fn api_error(status: StatusCode, message: String) -> Response {
    let mut r = super::refuse(status, message).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(value: &impl Serialize) -> Response {
    guarded(StatusCode::OK, "application/json", Bytes::from(serde_json::to_vec(value).expect("serializes")))
}

async fn etcd_client(ctx: &ApiContext) -> Result<etcd_client::Client, Response> {
    ctx.client()
        .await
        .map_err(|e| api_error(StatusCode::SERVICE_UNAVAILABLE, format!("this master cannot reach etcd: {e}")))
}

type Body<T> = Result<axum::Json<T>, axum::extract::rejection::JsonRejection>;

/// What every change starts with: the session (its CSRF token and the
/// origin checked), the request's body, and a connection to etcd.
async fn begin<T>(
    ctx: &ApiContext,
    remote: std::net::SocketAddr,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    action: &'static str,
    body: Body<T>,
) -> Result<(SessionRecord, T, etcd_client::Client), Response> {
    let record = change(ctx, remote, uri, headers, action).await?;
    let body = body.map_err(|e| api_error(StatusCode::BAD_REQUEST, format!("not a request to {action}: {e}")))?;
    Ok((record, body.0, etcd_client(ctx).await?))
}

/// The validities the page offers, and what a request may ask.
const TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=7 * 24 * 3600;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AddNode {
    role: crate::join::token::Role,
    ttl_secs: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Script {
    id: String,
    role: crate::join::token::Role,
    expires_at: u64,
    script: String,
}

/// `POST /console/api/join-script`: the same script as
/// `hakube node-join-script`, on a fresh token.
pub(crate) async fn join_script(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body<AddNode>,
) -> Response {
    let (record, ask, mut client) = match begin(&ctx, remote, &uri, &headers, "add node", body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !TTL_RANGE.contains(&ask.ttl_secs) {
        return api_error(StatusCode::BAD_REQUEST, "the validity must be between 1 minute and 7 days".into());
    }
    let endpoint = ctx.config.etcd_client_url();
    let by = format!("{} (cluster page)", record.by);
    match crate::join::issue::issue(&ctx.paths, &ctx.config, &mut client, &endpoint, ask.role, ask.ttl_secs, &by).await
    {
        Ok(issued) => {
            info!(target: "audit", %remote, by = %record.by, action = "add node", role = %ask.role, token = %issued.record.id, decision = "accepted", "console");
            json(&Script {
                id: issued.record.id,
                role: ask.role,
                expires_at: issued.record.expires_at,
                script: issued.script,
            })
        }
        Err(e) => {
            ctx.forget_client().await;
            api_error(StatusCode::SERVICE_UNAVAILABLE, format!("cannot issue a join script: {e}"))
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Token {
    id: String,
    role: crate::join::token::Role,
    created_at: u64,
    expires_at: u64,
    uses: u64,
    created_by: String,
}

/// `GET /console/api/tokens`: the live join tokens (never their secrets
/// or hashes).
pub(crate) async fn tokens(State(ctx): State<Arc<ApiContext>>, headers: HeaderMap) -> Response {
    if let Err(r) = signed_in(&ctx, &headers).await {
        return r;
    }
    let endpoint = ctx.config.etcd_client_url();
    let mut client = match etcd_client(&ctx).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match crate::join::store::list(&mut client, &endpoint).await {
        Ok(mut all) => {
            all.sort_by_key(|r| r.created_at);
            let now = now_secs();
            let live: Vec<Token> = all
                .into_iter()
                .filter(|r| r.expires_at > now)
                .map(|r| Token {
                    id: r.id,
                    role: r.role,
                    created_at: r.created_at,
                    expires_at: r.expires_at,
                    uses: r.uses,
                    created_by: r.created_by,
                })
                .collect();
            json(&live)
        }
        Err(e) => {
            ctx.forget_client().await;
            api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Named {
    id: Option<String>,
    name: Option<String>,
}

/// `POST /console/api/tokens/revoke`: `{"id": …}`.
pub(crate) async fn revoke(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body<Named>,
) -> Response {
    let (record, named, mut client) = match begin(&ctx, remote, &uri, &headers, "revoke token", body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(id) = named.id.filter(|id| id.len() <= 64) else {
        return api_error(StatusCode::BAD_REQUEST, "say which token: {\"id\": \"…\"}".into());
    };
    let endpoint = ctx.config.etcd_client_url();
    match crate::join::store::revoke(&mut client, &endpoint, &id).await {
        Ok(true) => {
            info!(target: "audit", %remote, by = %record.by, action = "revoke token", token = %id, decision = "accepted", "console");
            json(&serde_json::json!({ "revoked": id }))
        }
        Ok(false) => api_error(StatusCode::NOT_FOUND, format!("no token {id:?}: it expired or was revoked already")),
        Err(e) => {
            ctx.forget_client().await;
            api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// `POST /console/api/nodes/remove`: `{"name": …}`, for a node that is
/// gone; refused, with the reason, when it is alive or when its removal
/// would cost etcd its quorum.
pub(crate) async fn remove_node(
    State(ctx): State<Arc<ApiContext>>,
    Extension(Remote(remote)): Extension<Remote>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body<Named>,
) -> Response {
    let (record, named, mut client) = match begin(&ctx, remote, &uri, &headers, "remove node", body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(name) = named.name.filter(|n| n.len() <= 253) else {
        return api_error(StatusCode::BAD_REQUEST, "say which node: {\"name\": \"…\"}".into());
    };
    let endpoint = ctx.config.etcd_client_url();
    let creds = match ctx.creds() {
        Ok(c) => c,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    use crate::cluster::removal::{remove, Guard};
    let this = ctx.config.node.name.as_str();
    match remove(&mut client, &endpoint, &creds, &name, this, Guard::Silent, now_secs()).await {
        Ok(done) => {
            info!(target: "audit", %remote, by = %record.by, action = "remove node", node = %name, decision = "accepted", "console");
            json(&serde_json::json!({ "removed": name, "done": done }))
        }
        Err(why) => {
            warn!(target: "audit", %remote, by = %record.by, action = "remove node", node = %name, decision = "refused", reason = %why, "console");
            api_error(StatusCode::CONFLICT, why)
        }
    }
}

/// What the page draws.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct View<'a> {
    now: u64,
    /// When what it shows was read (older than a few seconds: this master
    /// is slow to read the cluster, and shows what it read last).
    gathered_at: u64,
    served_by: &'a str,
    signed_in_by: &'a str,
    csrf: String,
    healthy: bool,
    problems: Vec<String>,
    warnings: Vec<String>,
    etcd: &'a crate::cluster::report::EtcdReport,
    cluster: Option<&'a crate::cluster::report::ClusterReport>,
    addons: &'a [crate::addons::AddonStatus],
    /// This master's node-local balancer, as its agent last saw it.
    balancer: &'a serde_json::Value,
    certificates: &'a Certificates,
    /// Nodes still joining, and where each is.
    joining: &'a std::collections::BTreeMap<String, String>,
}

/// How long after it was accepted a node that is not healthy yet counts
/// as still joining (a cold master imports images and starts etcd and the
/// control plane; minutes on a slow host).
const JOINING_FOR: u64 = 900;

/// Where a node is in its join, from what the cluster records: accepted
/// (registered, its agent not beating yet), its etcd member added and
/// started as a learner (masters), its components starting; None once
/// joined (or when it is simply unhealthy long after).
fn join_phase(
    node: &crate::cluster::registry::NodeRecord,
    members: &[crate::etcd::Member],
    now: u64,
) -> Option<String> {
    let recent = now.saturating_sub(node.joined_at) < JOINING_FOR;
    if node.hakube.is_none() && recent {
        return Some("accepted: installing".into());
    }
    let host = crate::config::Host::Ip(node.address).to_string();
    let member = members.iter().find(|m| {
        m.name == node.name || m.peer_urls.iter().any(|u| crate::etcd::host_of_url(u) == Some(host.as_str()))
    });
    match member {
        Some(m) if !m.started() => return Some("etcd member added, starting".into()),
        Some(m) if m.is_learner => return Some("etcd learner, catching up".into()),
        _ => {}
    }
    (node.healthy == Some(false) && recent).then(|| "starting its components".into())
}

/// This master's certificates, in short: what ends first.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Certificates {
    /// The leaf that ends first: its name and end (unix seconds). Leaves
    /// are renewed by the agent; one close to its end is failing to be.
    first_leaf: Option<(String, i64)>,
    /// The CA that ends first (nothing renews a CA).
    first_ca: Option<(String, i64)>,
    /// Unreadable ones.
    problems: Vec<String>,
}

fn certificates(paths: &crate::host::paths::Paths) -> Certificates {
    let mut c = Certificates::default();
    for row in crate::kube::inventory::inventory(paths) {
        match (row.not_after, row.problem) {
            (_, Some(p)) => c.problems.push(format!("{}: {p}", row.name)),
            (Some(t), None) => {
                let slot = if row.is_ca { &mut c.first_ca } else { &mut c.first_leaf };
                if slot.as_ref().is_none_or(|(_, first)| t < *first) {
                    *slot = Some((row.name, t));
                }
            }
            (None, None) => {}
        }
    }
    c
}

/// The parts of a view that are the same for every session, kept for
/// [`VIEW_REUSED`].
pub(crate) struct Cached {
    at: Instant,
    gathered_at: u64,
    etcd: crate::cluster::report::EtcdReport,
    cluster: Option<crate::cluster::report::ClusterReport>,
    addons: Vec<crate::addons::AddonStatus>,
    problems: Vec<String>,
    warnings: Vec<String>,
    balancer: serde_json::Value,
    certificates: Certificates,
    joining: std::collections::BTreeMap<String, String>,
}

async fn gather(ctx: &ApiContext) -> Cached {
    use crate::cluster::report::{probe_addons, probe_cluster, probe_etcd};
    let etcd = probe_etcd(&ctx.paths, &ctx.config).await;
    let mut problems = vec![];
    if !etcd.healthy {
        problems.push(format!("etcd is unhealthy: {}", etcd.error.as_deref().unwrap_or("")));
    }
    let cluster = if etcd.healthy {
        match probe_cluster(&ctx.paths, &ctx.config).await {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(format!("cannot read the cluster's records: {e}"));
                None
            }
        }
    } else {
        None
    };
    let (addons, mut warnings) = if ctx.config.has(crate::config::Component::KubeApiserver) {
        probe_addons(&ctx.paths, &ctx.config).await
    } else {
        (vec![], vec![])
    };
    warnings.extend(etcd.warnings.iter().cloned());
    if let Some(c) = &cluster {
        problems
            .extend(c.nodes.iter().filter(|n| n.healthy == Some(false)).map(|n| format!("{} is unhealthy", n.name)));
    }
    // Read as JSON, not as the agent's type: the agent serves this API.
    let balancer = std::fs::read(ctx.paths.state_file())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|state| state["load_balancer"].clone())
        .unwrap_or_default();
    let certificates = certificates(&ctx.paths);
    problems.extend(certificates.problems.iter().map(|p| format!("certificate unreadable: {p}")));
    let members: Vec<crate::etcd::Member> = etcd.members.iter().map(|m| m.member.clone()).collect();
    let now = now_secs();
    let joining = cluster
        .iter()
        .flat_map(|c| &c.nodes)
        .filter_map(|n| join_phase(n, &members, now).map(|p| (n.name.clone(), p)))
        .collect();
    Cached {
        at: Instant::now(),
        gathered_at: now,
        etcd,
        cluster,
        addons,
        problems,
        warnings,
        balancer,
        certificates,
        joining,
    }
}

/// The view to answer with: the cached one while fresh; else one refresh
/// at a time, bounded, while every other poll gets the last view at once
/// (its age says how old): a probe that hangs never queues the polls up
/// behind it.
async fn current_view(ctx: &ApiContext) -> Option<Arc<Cached>> {
    let cached = ctx.console_view.lock().expect("view lock").clone();
    if cached.as_ref().is_some_and(|c| c.at.elapsed() < VIEW_REUSED) {
        return cached;
    }
    let refreshing = match ctx.console_refresh.try_lock() {
        Ok(guard) => guard,
        // Another poll refreshes: the last view, or (the first) wait for it.
        Err(_) if cached.is_some() => return cached,
        Err(_) => {
            drop(ctx.console_refresh.lock().await);
            return ctx.console_view.lock().expect("view lock").clone();
        }
    };
    let fresh = tokio::time::timeout(VIEW_LIMIT, gather(ctx)).await;
    drop(refreshing);
    match fresh {
        Ok(view) => {
            let view = Arc::new(view);
            *ctx.console_view.lock().expect("view lock") = Some(view.clone());
            Some(view)
        }
        Err(_) => cached,
    }
}

/// `GET /console/api/state`: the view, as JSON.
pub(crate) async fn state(State(ctx): State<Arc<ApiContext>>, headers: HeaderMap) -> Response {
    let (secret, record) = match signed_in(&ctx, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(c) = current_view(&ctx).await else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this master could not read the cluster within {} s", VIEW_LIMIT.as_secs()),
        );
    };
    let view = View {
        now: now_secs(),
        gathered_at: c.gathered_at,
        served_by: ctx.config.node.name.as_str(),
        signed_in_by: &record.by,
        csrf: secret.csrf(),
        healthy: c.problems.is_empty(),
        problems: c.problems.clone(),
        warnings: c.warnings.clone(),
        etcd: &c.etcd,
        cluster: c.cluster.as_ref(),
        addons: &c.addons,
        balancer: &c.balancer,
        certificates: &c.certificates,
        joining: &c.joining,
    };
    let body = Bytes::from(serde_json::to_vec(&view).expect("the view serializes"));
    guarded(StatusCode::OK, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joining_node_shows_where_it_is() {
        use crate::cluster::registry::NodeRecord;
        use crate::etcd::Member;
        let node = |hakube: bool, healthy: Option<bool>, joined_at: u64| NodeRecord {
            name: "m4".into(),
            role: crate::cluster::Role::Master,
            address: "10.0.0.14".parse().unwrap(),
            joined_at,
            heartbeat_at: joined_at,
            settings_revision: 0,
            clock_offset_ms: None,
            versions: Default::default(),
            healthy,
            hakube: hakube.then(|| crate::cluster::upgrade::Build { version: "0.1.0".into(), sha256: "00".repeat(32) }),
            balancer: None,
        };
        let member = |name: &str, learner: bool| Member {
            id: 4,
            name: name.into(),
            peer_urls: vec!["https://10.0.0.14:2380".into()],
            client_urls: vec![],
            is_learner: learner,
        };
        let now = 10_000;
        let phase = |n: &NodeRecord, m: &[Member]| join_phase(n, m, now);
        assert_eq!(phase(&node(false, None, now - 5), &[]).as_deref(), Some("accepted: installing"));
        let beating = node(true, Some(false), now - 60);
        assert_eq!(phase(&beating, &[member("", false)]).as_deref(), Some("etcd member added, starting"), "by address");
        assert_eq!(phase(&beating, &[member("m4", true)]).as_deref(), Some("etcd learner, catching up"));
        assert_eq!(phase(&beating, &[member("m4", false)]).as_deref(), Some("starting its components"));
        assert_eq!(phase(&node(true, Some(true), now - 60), &[member("m4", false)]), None, "joined");
        assert_eq!(
            phase(&node(true, Some(false), now - 3600), &[member("m4", false)]),
            None,
            "long joined, now unhealthy"
        );
    }

    #[test]
    fn a_change_from_another_origin_is_refused() {
        let one = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("10.0.0.11:9443"));
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            same_origin(&axum::http::Uri::from_static("/console/signout"), &h)
        };
        assert!(one(Some("https://10.0.0.11:9443")));
        assert!(one(None), "a browser that does not say (the CSRF token still must match)");
        assert!(!one(Some("https://evil.example")));
        assert!(!one(Some("http://10.0.0.11:9443")), "not over TLS");
        assert!(!one(Some("null")), "an opaque origin");
        // HTTP/2: no Host header, the authority is in the URI.
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("https://10.0.0.11:9443"));
        let uri = axum::http::Uri::from_static("https://10.0.0.11:9443/console/signout");
        assert!(same_origin(&uri, &h));
        assert!(!same_origin(&axum::http::Uri::from_static("/console/signout"), &h), "nowhere to compare with");
        // Fetch Metadata, when the browser sends it, decides.
        let fetch = |site: &str, origin: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("10.0.0.11:9443"));
            h.insert("sec-fetch-site", HeaderValue::from_str(site).unwrap());
            h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            same_origin(&axum::http::Uri::from_static("/console/signout"), &h)
        };
        assert!(fetch("same-origin", "https://10.0.0.11:9443"));
        assert!(!fetch("cross-site", "https://10.0.0.11:9443"), "whatever the Origin says");
        assert!(!fetch("same-site", "https://10.0.0.11:9443"), "another port of the host is another origin");
    }
}
