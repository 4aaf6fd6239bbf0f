//! The agent's plain-HTTP listener for `/metrics`.

use std::rc::Rc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::host::paths::Paths;

/// Connections served at once; beyond, a new one is closed at once.
const MAX_CONNECTIONS: usize = 16;

/// Serves `/metrics` on the node's metrics address until `stop` changes;
/// an address that cannot be bound is retried, and said.
pub async fn run(paths: Paths, cfg: ClusterConfig, mut stop: watch::Receiver<bool>) {
    let addr = cfg.node.metrics_address;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                warn!(%addr, error = %e, "cannot serve metrics; retrying in 10s");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        }
    };
    info!(%addr, "serving /metrics");
    // One scrape renders at a time: two scrapers (or a flood) never open
    // etcd connections side by side.
    let rendering = Rc::new(tokio::sync::Semaphore::new(1));
    let open = Rc::new(std::cell::Cell::new(0usize));
    let (paths, cfg) = (Rc::new(paths), Rc::new(cfg));
    loop {
        let tcp = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if open.get() >= MAX_CONNECTIONS {
            continue;
        }
        open.set(open.get() + 1);
        let (paths, cfg, rendering, open) = (paths.clone(), cfg.clone(), rendering.clone(), open.clone());
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                let (paths, cfg, rendering) = (paths.clone(), cfg.clone(), rendering.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(req, &paths, &cfg, &rendering).await) }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
            open.set(open.get() - 1);
        });
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    paths: &Paths,
    cfg: &ClusterConfig,
    rendering: &tokio::sync::Semaphore,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let _turn = rendering.acquire().await.expect("never closed");
            let text = super::render(paths, cfg).await;
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (_, "/metrics") | (_, "/healthz") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET is served here\n".into())
        }
        (_, path) => reply(StatusCode::NOT_FOUND, "text/plain", format!("{path}: not here; metrics are at /metrics\n")),
    }
}
