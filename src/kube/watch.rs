//! Watches: a collection listed once (in pages), then kept current by the
//! API server's change events from that list's resourceVersion, with
//! bookmarks so that a quiet collection's version still moves. A watch the
//! server ends is resumed from the last version seen; one whose version
//! has expired (410 Gone) is listed again. An agent that keeps a watch open
//! costs the API server one connection and the changes, where polling cost
//! a whole list every round: the load no longer grows with the cluster's
//! size times the number of nodes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::client::{KubeClient, KubeError};
use super::objects::ObjectMeta;

/// Events longer than this are refused (a Node is a few KiB).
pub const MAX_EVENT: usize = 4 << 20;

/// How long a watch may stay silent: the server sends a bookmark about
/// every minute and ends the watch at `timeoutSeconds`.
pub const IDLE: Duration = Duration::from_secs(90);

/// What the server ends a watch after; the watch is then resumed from its
/// version, with no list.
pub const TIMEOUT_SECONDS: u32 = 300;

/// One change to the collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<T> {
    Added(T),
    Modified(T),
    Deleted(T),
    /// Nothing changed, but the collection is at this version now.
    Bookmark(String),
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct StatusObject {
    code: u16,
    reason: String,
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct BookmarkObject {
    metadata: ObjectMeta,
}

/// One line of a watch's body. An `ERROR` event is the server's status
/// (410 Gone: the version is too old, list again).
pub fn parse_event<T: DeserializeOwned>(line: &[u8], what: &str, server: &str) -> Result<Event<T>, KubeError> {
    let decode = |message: String| KubeError::Decode { what: what.to_owned(), server: server.to_owned(), message };
    let raw: Raw = serde_json::from_slice(line).map_err(|e| decode(e.to_string()))?;
    let object = |o: serde_json::Value| serde_json::from_value::<T>(o).map_err(|e| decode(e.to_string()));
    match raw.kind.as_str() {
        "ADDED" => Ok(Event::Added(object(raw.object)?)),
        "MODIFIED" => Ok(Event::Modified(object(raw.object)?)),
        "DELETED" => Ok(Event::Deleted(object(raw.object)?)),
        "BOOKMARK" => {
            let b: BookmarkObject = serde_json::from_value(raw.object).map_err(|e| decode(e.to_string()))?;
            Ok(Event::Bookmark(b.metadata.resource_version))
        }
        "ERROR" => {
            let s: StatusObject = serde_json::from_value(raw.object).unwrap_or_default();
            Err(KubeError::Status {
                what: what.to_owned(),
                server: server.to_owned(),
                code: s.code,
                reason: s.reason,
                message: s.message,
            })
        }
        other => Err(decode(format!("a watch event of unknown type {other:?}"))),
    }
}

/// An open watch: its events, read as they come.
pub struct Watch {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    what: String,
    server: String,
    idle: Duration,
}

impl Watch {
    pub(crate) fn new(body: hyper::body::Incoming, what: &str, server: String) -> Watch {
        Watch { body, buf: Vec::new(), what: what.to_owned(), server, idle: IDLE }
    }

    /// The next event; `None` when the server ended the watch (resume it
    /// from the last version seen). A watch silent for longer than
    /// [`IDLE`] is an error: the connection is presumed dead.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<Event<T>>, KubeError> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return parse_event(&line, &self.what, &self.server).map(Some);
            }
            if self.buf.len() > MAX_EVENT {
                return Err(self.unreachable(format!("an event over {MAX_EVENT} bytes")));
            }
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => return Err(self.unreachable(format!("the watch was silent for {:?}", self.idle))),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(self.unreachable(format!("the watch broke: {e}"))),
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    fn unreachable(&self, message: String) -> KubeError {
        KubeError::Unreachable { what: self.what.clone(), server: self.server.clone(), message }
    }
}

/// A collection as a watch keeps it, by name, with the version it is at.
#[derive(Debug, Clone, Default)]
pub struct Cache<T> {
    pub items: BTreeMap<String, T>,
    pub version: String,
}

/// What a cached object is known by.
pub trait Named {
    fn meta(&self) -> &ObjectMeta;
}

impl<T: Named + PartialEq> Cache<T> {
    /// The collection as a list found it.
    pub fn listed(items: Vec<T>, version: String) -> Cache<T> {
        Cache { items: items.into_iter().map(|i| (i.meta().name.clone(), i)).collect(), version }
    }

    /// Applies one event; whether any object changed.
    pub fn apply(&mut self, event: Event<T>) -> bool {
        match event {
            Event::Bookmark(v) => {
                self.version = v;
                false
            }
            Event::Added(o) | Event::Modified(o) => {
                self.version = o.meta().resource_version.clone();
                let name = o.meta().name.clone();
                if self.items.get(&name) == Some(&o) {
                    return false;
                }
                self.items.insert(name, o);
                true
            }
            Event::Deleted(o) => {
                self.version = o.meta().resource_version.clone();
                self.items.remove(&o.meta().name).is_some()
            }
        }
    }
}

/// A collection kept current in the background (list, then watch; resume
/// or list again as needed) for readers that look at it now and then. It
/// is only [`Reflector::synced`] while its watch is open: a reader never
/// takes a cache that may have missed changes for current.
pub struct Reflector<T> {
    shared: Arc<Mutex<Shared<T>>>,
    changed: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared<T> {
    cache: Cache<T>,
    /// Why the cache is not current (None: it is).
    behind: Option<String>,
}

impl<T> Drop for Reflector<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: Named + PartialEq + Clone + DeserializeOwned + Send + 'static> Reflector<T> {
    /// Starts keeping `path` (a collection) current through `client`.
    pub fn spawn(client: KubeClient, what: &str, path: &str) -> Reflector<T> {
        let shared = Arc::new(Mutex::new(Shared {
            cache: Cache { items: BTreeMap::new(), version: String::new() },
            behind: Some("not listed yet".into()),
        }));
        let (tx, changed) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(reflect(client, what.to_owned(), path.to_owned(), shared.clone(), tx));
        Reflector { shared, changed, task }
    }

    /// Reads the cache if it is current, else says why it is not.
    pub fn synced<R>(&self, read: impl FnOnce(&Cache<T>) -> R) -> Result<R, String> {
        let shared = self.shared.lock().expect("reflector lock");
        match &shared.behind {
            None => Ok(read(&shared.cache)),
            Some(why) => Err(why.clone()),
        }
    }

    /// Resolves when the cache (or whether it is current) changed.
    pub async fn changed(&mut self) {
        if self.changed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The reflector's loop: runs until its [`Reflector`] is dropped.
async fn reflect<T: Named + PartialEq + DeserializeOwned>(
    client: KubeClient,
    what: String,
    path: String,
    shared: Arc<Mutex<Shared<T>>>,
    tx: tokio::sync::watch::Sender<u64>,
) {
    let notify = || tx.send_modify(|g| *g += 1);
    let behind = |why: String| {
        shared.lock().expect("reflector lock").behind = Some(why);
        notify();
    };
    let mut listed = false;
    loop {
        if !listed {
            match client.list_all::<T>(&what, &path).await {
                Ok((items, version)) => {
                    shared.lock().expect("reflector lock").cache = Cache::listed(items, version);
                    listed = true;
                }
                Err(e) => {
                    behind(e.to_string());
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            }
        }
        let version = shared.lock().expect("reflector lock").cache.version.clone();
        let mut watch = match client.watch(&what, &path, &version).await {
            Ok(w) => w,
            Err(e) => {
                listed = e.code() != Some(410);
                behind(e.to_string());
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        // Open from the version the cache is at: the events since replay.
        shared.lock().expect("reflector lock").behind = None;
        notify();
        loop {
            match watch.next::<T>().await {
                Ok(Some(event)) => {
                    if shared.lock().expect("reflector lock").cache.apply(event) {
                        notify();
                    }
                }
                // The server's timeout: resume from the version.
                Ok(None) => break,
                Err(e) => {
                    // 410: the version is too old; anything else: the
                    // connection broke. Either way the cache is behind
                    // until a watch is open again.
                    listed = e.code() != Some(410);
                    behind(e.to_string());
                    break;
                }
            }
        }
    }
}

/// The query of a watch from `version`, with bookmarks.
pub fn watch_query(version: &str) -> String {
    format!("watch=1&allowWatchBookmarks=true&timeoutSeconds={TIMEOUT_SECONDS}&resourceVersion={version}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::objects::Node;

    fn node(name: &str, version: &str, cidr: &str) -> serde_json::Value {
        serde_json::json!({"metadata": {"name": name, "resourceVersion": version}, "spec": {"podCIDR": cidr}})
    }

    fn event(kind: &str, object: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"type": kind, "object": object})).unwrap()
    }

    fn parse(line: &[u8]) -> Result<Event<Node>, KubeError> {
        parse_event(line, "the nodes", "10.0.0.11:6443")
    }

    #[test]
    fn events_keep_the_cache_as_the_server_has_it() {
        let first: Node = serde_json::from_value(node("m1", "10", "10.244.0.0/24")).unwrap();
        let mut cache = Cache::listed(vec![first], "10".into());
        let added = parse(&event("ADDED", node("w1", "11", "10.244.1.0/24"))).unwrap();
        assert!(cache.apply(added));
        assert_eq!((cache.items.len(), cache.version.as_str()), (2, "11"));
        // The same object again (a resync) is no change; a new one is.
        let same = parse(&event("MODIFIED", node("w1", "11", "10.244.1.0/24"))).unwrap();
        assert!(!cache.apply(same));
        let moved = parse(&event("MODIFIED", node("w1", "12", "10.244.9.0/24"))).unwrap();
        assert!(cache.apply(moved));
        assert_eq!(cache.items["w1"].spec.pod_cidr.as_deref(), Some("10.244.9.0/24"));
        let bookmark = parse(&event("BOOKMARK", serde_json::json!({"metadata": {"resourceVersion": "20"}}))).unwrap();
        assert!(!cache.apply(bookmark));
        assert_eq!(cache.version, "20", "a bookmark moves the version on");
        let gone = parse(&event("DELETED", node("w1", "21", "10.244.9.0/24"))).unwrap();
        assert!(cache.apply(gone));
        assert_eq!((cache.items.len(), cache.version.as_str()), (1, "21"));
    }

    /// A TLS server on loopback that answers one request with `head` and
    /// then `chunks` (HTTP/1.1 chunked), a pause between each, then ends.
    async fn streaming_server(head: &'static str, chunks: Vec<Vec<u8>>) -> (crate::config::HostPort, KubeClientParts) {
        server(move |_| (head, chunks.clone())).await
    }

    /// As [`streaming_server`], answering every request by its request line.
    async fn server(
        answer: impl Fn(&str) -> (&'static str, Vec<Vec<u8>>) + Send + Sync + 'static,
    ) -> (crate::config::HostPort, KubeClientParts) {
        use rustls::pki_types::pem::PemObject;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&key).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(crate::https::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut buf = [0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap();
                let request_line = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned();
                let (head, chunks) = answer(&request_line);
                tls.write_all(head.as_bytes()).await.unwrap();
                for c in chunks {
                    tls.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await.unwrap();
                    tls.write_all(&c).await.unwrap();
                    tls.write_all(b"\r\n").await.unwrap();
                    tls.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tls.write_all(b"0\r\n\r\n").await.unwrap();
                tls.flush().await.unwrap();
            }
        });
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["n".to_owned()]).unwrap().self_signed(&client_key).unwrap();
        let parts = KubeClientParts { ca: cert.pem(), cert: client.pem(), key: client_key.serialize_pem() };
        (format!("127.0.0.1:{port}").parse().unwrap(), parts)
    }

    struct KubeClientParts {
        ca: String,
        cert: String,
        key: String,
    }

    #[tokio::test]
    async fn a_watch_reads_events_as_they_come_across_chunks() {
        let one = event("ADDED", node("w1", "11", "10.244.1.0/24"));
        let two = event("DELETED", node("w1", "12", "10.244.1.0/24"));
        // The second event arrives in two pieces, the first with its newline.
        let (a, b) = two.split_at(10);
        let chunks = vec![[one.as_slice(), b"\n"].concat(), a.to_vec(), [b, b"\n\n"].concat()];
        let (at, p) = streaming_server("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", chunks).await;
        let c = crate::kube::client::KubeClient::new(vec![at], p.ca.as_bytes(), p.cert.as_bytes(), p.key.as_bytes())
            .unwrap();
        let mut w = c.watch("the nodes", "/api/v1/nodes", "10").await.unwrap();
        assert!(matches!(w.next::<Node>().await.unwrap(), Some(Event::Added(n)) if n.metadata.name == "w1"));
        assert!(
            matches!(w.next::<Node>().await.unwrap(), Some(Event::Deleted(n)) if n.metadata.resource_version == "12")
        );
        assert_eq!(w.next::<Node>().await.unwrap(), None, "the server ended the watch");
    }

    #[tokio::test]
    async fn a_list_is_read_page_by_page_and_gives_the_version_to_watch_from() {
        const OK: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let (at, p) = server(|line| {
            let page = |items: &[&str], version: &str, next: Option<&str>| {
                let items: Vec<_> = items.iter().map(|n| node(n, version, "10.244.0.0/24")).collect();
                let body =
                    serde_json::json!({"metadata": {"resourceVersion": version, "continue": next}, "items": items});
                (OK, vec![serde_json::to_vec(&body).unwrap()])
            };
            assert!(line.contains("limit=500"), "{line}");
            if line.contains("continue=a%2Bb%3D") {
                page(&["w2"], "31", None)
            } else {
                page(&["m1", "w1"], "30", Some("a+b="))
            }
        })
        .await;
        let c = crate::kube::client::KubeClient::new(vec![at], p.ca.as_bytes(), p.cert.as_bytes(), p.key.as_bytes())
            .unwrap();
        let (items, version) = c.list_all::<Node>("the nodes", "/api/v1/nodes").await.unwrap();
        let names: Vec<_> = items.iter().map(|n| n.metadata.name.as_str()).collect();
        assert_eq!((names, version.as_str()), (vec!["m1", "w1", "w2"], "31"));
    }

    #[tokio::test]
    async fn a_reflector_is_current_only_while_its_watch_is_open() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        const OK: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let watches = Arc::new(AtomicUsize::new(0));
        let seen = watches.clone();
        let (at, p) = server(move |line| {
            if !line.contains("watch=1") {
                let body = serde_json::json!({"metadata": {"resourceVersion": "30"}, "items": [node("m1", "30", "10.244.0.0/24")]});
                return (OK, vec![serde_json::to_vec(&body).unwrap()]);
            }
            assert!(line.contains("resourceVersion=30") || line.contains("resourceVersion=31"), "{line}");
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                // One change, then the server ends the watch.
                (OK, vec![[event("ADDED", node("w1", "31", "10.244.1.0/24")).as_slice(), b"\n"].concat()])
            } else {
                let body = br#"{"kind":"Status","code":503,"reason":"ServiceUnavailable","message":"shutting down"}"#;
                ("HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n", vec![body.to_vec()])
            }
        })
        .await;
        let c = crate::kube::client::KubeClient::new(vec![at], p.ca.as_bytes(), p.cert.as_bytes(), p.key.as_bytes())
            .unwrap();
        let mut r: Reflector<Node> = Reflector::spawn(c, "the nodes", "/api/v1/nodes");
        let mut most = 0;
        let why = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match r.synced(|c| c.items.len()) {
                    Ok(n) => most = most.max(n),
                    Err(why) if most > 0 => return why,
                    Err(_) => {}
                }
                r.changed().await;
            }
        })
        .await
        .expect("the reflector falls behind once the watch is refused");
        assert_eq!(most, 2, "listed, then the watched change applied");
        assert!(why.contains("503") && why.contains("shutting down"), "{why}");
        assert!(watches.load(Ordering::SeqCst) >= 2, "the ended watch was resumed");
    }

    #[tokio::test]
    async fn a_watch_refused_says_the_servers_reason() {
        let body = br#"{"kind":"Status","code":403,"reason":"Forbidden","message":"nodes is forbidden"}"#.to_vec();
        let (at, p) =
            streaming_server("HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n", vec![body]).await;
        let c = crate::kube::client::KubeClient::new(vec![at], p.ca.as_bytes(), p.cert.as_bytes(), p.key.as_bytes())
            .unwrap();
        let e = c.watch("the nodes", "/api/v1/nodes", "10").await.err().unwrap();
        assert_eq!(e.code(), Some(403), "{e}");
        assert!(e.to_string().contains("nodes is forbidden"), "{e}");
    }

    #[test]
    fn an_expired_version_is_the_servers_status() {
        let gone = event(
            "ERROR",
            serde_json::json!({"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version: 5 (90)"}),
        );
        let e = parse(&gone).unwrap_err();
        assert_eq!(e.code(), Some(410), "{e}");
        assert!(e.to_string().contains("too old resource version"), "{e}");
        let e = parse(b"{\"type\":\"SURPRISE\",\"object\":{}}").unwrap_err();
        assert!(e.to_string().contains("unknown type"), "{e}");
        assert!(parse(b"not json").is_err());
    }
}
