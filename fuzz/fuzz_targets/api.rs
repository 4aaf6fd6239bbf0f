//! The masters' API as a client reaches it: any method, path, headers and
//! body, from a source with or without a client certificate. Every request
//! gets an answer; none may panic. The master here has no etcd and no PKI
//! (its answers past the parsing are refusals), so each input is cheap.
#![no_main]

use std::sync::{Arc, OnceLock};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use libfuzzer_sys::fuzz_target;

struct Master {
    _root: tempfile::TempDir,
    paths: hakube::host::paths::Paths,
    config: hakube::config::ClusterConfig,
}

fn master() -> &'static Master {
    static M: OnceLock<Master> = OnceLock::new();
    M.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let paths = hakube::host::paths::Paths::new(root.path().to_owned());
        let flags = serde_norway::from_str(
            "node: {name: m1, advertiseAddress: 127.0.0.1, components: [etcd], etcdClientPort: 1}",
        )
        .unwrap();
        let config = hakube::config::resolve(hakube::config::Sources {
            installed: None,
            file: None,
            flags,
            detect_name: &|| Ok("m1".into()),
            detect_address: &|| Ok("127.0.0.1".parse().unwrap()),
        })
        .unwrap();
        Master { _root: root, paths, config }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let method = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"][usize::from(selector % 6)];
    let peer = (selector & 0x80 != 0).then(|| "w1".to_owned());
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let path = lines.next().unwrap_or_default();
    let Ok(uri) = hyper::Uri::try_from(path) else { return };
    let mut req = hyper::Request::builder().method(method).uri(uri);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(&line[..colon]),
            hyper::header::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        req = req.header(name, value);
    }
    let Ok(req) = req.body(Full::new(Bytes::copy_from_slice(body))) else { return };
    let m = master();
    // A fresh context per input: the rate limiter's buckets start full.
    let ctx = hakube::api::ApiContext::new(m.paths.clone(), m.config.clone());
    let remote = std::net::SocketAddr::from(([10, 0, 0, 21], 40000));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let resp = hakube::api::answer(Arc::clone(&ctx), remote, peer, req).await;
        let status = resp.status();
        assert!(status.as_u16() >= 200 && status.as_u16() < 600);
        let _ = resp.into_body().collect().await;
    });
});
