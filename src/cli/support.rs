//! `hakube support-bundle`: one `.tar.gz` with what a support engineer asks
//! for (status, check, metrics, every log's recent lines, etcd's members and
//! endpoint status, the cluster's Nodes, Events and add-on objects, the
//! effective config), every part bounded, with secrets redacted before
//! anything is written: join tokens, certificate keys, private keys, bearer
//! tokens, Secret data and container environment values. Written to a
//! temporary name and renamed, so a failed run leaves no half archive.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::config::{ClusterConfig, Component};
use crate::host::paths::Paths;

/// Lines of each log kept (its most recent).
const LOG_LINES: usize = 20_000;

/// One file of the archive.
pub struct Entry {
    pub name: String,
    pub body: Vec<u8>,
}

fn entry(name: impl Into<String>, body: impl Into<Vec<u8>>) -> Entry {
    Entry { name: name.into(), body: body.into() }
}

fn json_entry(name: &str, mut v: Value) -> Entry {
    redact_json(&mut v);
    entry(name, redact(&serde_json::to_string_pretty(&v).unwrap_or_default()))
}

/// The archive's name when none is given: in the current directory.
pub fn default_file(node: &str, now: u64) -> PathBuf {
    let stamp = time::OffsetDateTime::from_unix_timestamp(now as i64)
        .ok()
        .and_then(|t| t.format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z")).ok())
        .unwrap_or_else(|| now.to_string());
    PathBuf::from(format!("hakube-support-{node}-{stamp}.tar.gz"))
}

/// Gathers every part, each bounded; a part that cannot be had is named in
/// `errors.txt` instead. `say` reports progress.
pub async fn collect(paths: &Paths, say: &dyn Fn(&str)) -> anyhow::Result<Vec<Entry>> {
    let cfg: ClusterConfig =
        crate::config::load_installed(&paths.config_file())?.ok_or_else(|| super::status::NotInstalled {
            root: paths.root().display().to_string(),
            file: paths.config_file().display().to_string(),
        })?;
    let mut out = vec![];
    let mut errors: Vec<String> = vec![];
    let bound = |s| Duration::from_secs(s);

    say("status");
    match tokio::time::timeout(bound(30), super::status::gather(paths)).await {
        Ok(Ok(r)) => {
            out.push(json_entry("status.json", serde_json::to_value(&r)?));
            out.push(entry("status.txt", redact(&super::status::render(&r))));
        }
        Ok(Err(e)) => errors.push(format!("status: {e:#}")),
        Err(_) => errors.push("status: no answer within 30s".into()),
    }
    say("check");
    match tokio::time::timeout(bound(60), super::check::read(paths)).await {
        Ok(Ok(reading)) => {
            let checks = super::check::judge(&reading);
            out.push(json_entry("check.json", serde_json::to_value(&checks)?));
            out.push(entry("check.txt", redact(&super::check::render(&checks))));
        }
        Ok(Err(e)) => errors.push(format!("check: {e:#}")),
        Err(_) => errors.push("check: no answer within 60s".into()),
    }
    say("metrics");
    match tokio::time::timeout(bound(20), crate::agent::metrics::render(paths, &cfg)).await {
        Ok(text) => out.push(entry("metrics.txt", redact(&text))),
        Err(_) => errors.push("metrics: no answer within 20s".into()),
    }
    say("config and certificates");
    match std::fs::read_to_string(paths.config_file()) {
        Ok(t) => out.push(entry("config/cluster.yaml", redact(&t))),
        Err(e) => errors.push(format!("{}: {e}", paths.config_file().display())),
    }
    match serde_norway::to_string(&cfg) {
        Ok(t) => out.push(entry("config/effective.yaml", redact(&t))),
        Err(e) => errors.push(format!("the effective config: {e}")),
    }
    out.push(json_entry("certificates.json", serde_json::to_value(crate::kube::inventory::inventory(paths))?));
    say("logs");
    for (name, size) in super::logs::available(paths) {
        let path = paths.component_log(&name);
        match super::logs::tail(&path, LOG_LINES) {
            Ok(b) => {
                let text = redact(&String::from_utf8_lossy(&b));
                out.push(entry(format!("logs/{name}.log"), text));
            }
            Err(e) => errors.push(format!("{}: {e} ({size} bytes)", path.display())),
        }
    }
    if cfg.has(Component::Etcd) {
        say("etcd");
        match tokio::time::timeout(bound(15), etcd_parts(paths, &cfg)).await {
            Ok(Ok((members, status))) => {
                out.push(json_entry("etcd/members.json", members));
                out.push(json_entry("etcd/endpoint-status.json", status));
            }
            Ok(Err(e)) => errors.push(format!("etcd: {e}")),
            Err(_) => errors.push("etcd: no answer within 15s".into()),
        }
    }
    if cfg.has(Component::KubeApiserver) {
        say("Kubernetes objects");
        match crate::cluster::report::own_api_server(paths, &cfg, Duration::from_secs(10)) {
            Ok(client) => {
                for (name, path) in KUBE_OBJECTS {
                    match tokio::time::timeout(bound(15), client.get::<Value>(name, path)).await {
                        Ok(Ok(v)) => out.push(json_entry(&format!("kubernetes/{name}.json"), v)),
                        Ok(Err(e)) => errors.push(format!("kubernetes {name}: {e}")),
                        Err(_) => errors.push(format!("kubernetes {name}: no answer within 15s")),
                    }
                }
            }
            Err(e) => errors.push(format!("kubernetes: {e}")),
        }
    }
    let mut listing: Vec<String> = out.iter().map(|e| format!("  {} ({} bytes)", e.name, e.body.len())).collect();
    listing.sort();
    out.push(entry("README.txt", readme(&cfg, &listing, &errors)));
    if !errors.is_empty() {
        out.push(entry("errors.txt", redact(&(errors.join("\n") + "\n"))));
    }
    Ok(out)
}

/// What the archive holds of the cluster (pod specs only of the add-ons'
/// namespaces: an application's pods may carry its configuration).
const KUBE_OBJECTS: [(&str, &str); 9] = [
    ("nodes", "/api/v1/nodes"),
    ("events", "/api/v1/events?limit=2000"),
    ("namespaces", "/api/v1/namespaces"),
    ("kube-system-pods", "/api/v1/namespaces/kube-system/pods"),
    ("kube-system-deployments", "/apis/apps/v1/namespaces/kube-system/deployments"),
    ("local-path-storage-pods", "/api/v1/namespaces/local-path-storage/pods"),
    ("local-path-storage-deployments", "/apis/apps/v1/namespaces/local-path-storage/deployments"),
    ("poddisruptionbudgets", "/apis/policy/v1/poddisruptionbudgets"),
    ("storageclasses", "/apis/storage.k8s.io/v1/storageclasses"),
];

async fn etcd_parts(paths: &Paths, cfg: &ClusterConfig) -> Result<(Value, Value), String> {
    let (mut client, endpoint) =
        crate::etcd::Local::connect(paths, cfg, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let members = crate::etcd::members(&mut client, &endpoint).await.map_err(|e| e.to_string())?;
    let s = client.status().await.map_err(|e| format!("{endpoint}: {e}"))?;
    let status = json!({
        "endpoint": endpoint,
        "version": s.version(),
        "db_size": s.db_size(),
        "db_size_in_use": s.raft_used_db_size(),
        "leader": format!("{:x}", s.leader()),
        "member": s.header().map(|h| format!("{:x}", h.member_id())),
        "raft_index": s.raft_index(),
        "raft_term": s.raft_term(),
        "errors": s.errors(),
    });
    Ok((serde_json::to_value(members).map_err(|e| e.to_string())?, status))
}

fn readme(cfg: &ClusterConfig, listing: &[String], errors: &[String]) -> String {
    let mut t = format!(
        "hakube support bundle of node {node} ({build})\n\n\
         What it holds:\n\
         - status.txt/.json: `hakube status` (components, etcd, the cluster as this node sees it)\n\
         - check.txt/.json: `hakube check`\n\
         - metrics.txt: what the agent serves on /metrics\n\
         - config/: the installed config file and the effective config\n\
         - certificates.json: every certificate's subject and end (no key)\n\
         - logs/: the last {LOG_LINES} lines of each component's log and the agent's\n\
         - etcd/ (masters): the member list and this member's endpoint status\n\
         - kubernetes/ (masters): Nodes, Events, Namespaces, PodDisruptionBudgets, StorageClasses, and the\n  \
           pods and Deployments of kube-system and local-path-storage\n\n\
         Redacted before anything was written: join tokens, certificate keys, private keys (PEM),\n\
         bearer tokens, Secret data and container environment values; no Secret, kubeconfig,\n\
         key or join script is collected.\n\nFiles:\n",
        node = cfg.node.name,
        build = crate::cluster::upgrade::running()
            .map(|b| format!("hakube {}", b.version))
            .unwrap_or_else(|| format!("hakube {}", env!("CARGO_PKG_VERSION"))),
    );
    for l in listing {
        t.push_str(l);
        t.push('\n');
    }
    if !errors.is_empty() {
        t.push_str(&format!("\n{} part(s) could not be collected: see errors.txt\n", errors.len()));
    }
    t
}

/// Writes `entries` as `file` (gzip'd tar under one directory), through a
/// temporary name: on failure nothing is left.
pub fn write(file: &Path, entries: &[Entry]) -> anyhow::Result<()> {
    let top = file
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".tar.gz").trim_end_matches(".tgz").to_owned())
        .unwrap_or_else(|| "hakube-support".into());
    let partial = PathBuf::from(format!("{}.partial", file.display()));
    let result = (|| -> anyhow::Result<()> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let now = crate::host::clock::now_secs();
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(e.body.len() as u64);
            h.set_mode(0o600);
            h.set_mtime(now);
            h.set_cksum();
            tar.append_data(&mut h, format!("{top}/{}", e.name), e.body.as_slice())?;
        }
        let gz = tar.into_inner()?;
        let mut f = gz.finish()?;
        f.flush()?;
        f.sync_all()?;
        Ok(())
    })();
    match result {
        Ok(()) => std::fs::rename(&partial, file).with_context(|| format!("cannot write {}", file.display())),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

trait Mode600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode600 for std::fs::OpenOptions {
    /// The bundle shows the cluster's layout: readable by its owner only.
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

const REDACTED: &str = "[redacted]";

/// Text with every secret-shaped thing replaced: PEM private keys, join
/// tokens (`abcdef.0123456789abcdef`), 64-hex-digit values named a key (a
/// certificate key; container ids and digests stay) and bearer tokens.
pub fn redact(text: &str) -> String {
    let text = redact_pem_keys(text);
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let word = |c: u8| c.is_ascii_alphanumeric();
    while i < b.len() {
        let boundary = i == 0 || !word(b[i - 1]);
        if boundary {
            // A join token.
            let tok = |j: usize, n: usize| {
                (j..j + n).all(|k| k < b.len() && (b[k].is_ascii_lowercase() || b[k].is_ascii_digit()))
            };
            if tok(i, 6) && b.get(i + 6) == Some(&b'.') && tok(i + 7, 16) && b.get(i + 23).is_none_or(|&c| !word(c)) {
                out.push_str(REDACTED);
                i += 23;
                continue;
            }
            // A 64-hex key: a certificate key is shaped like a container id
            // or a digest, which stay; it is told by what names it just
            // before (`HAKUBE_CERTIFICATE_KEY=`, `--certificate-key `).
            let hex = (i..i + 64).all(|k| k < b.len() && b[k].is_ascii_hexdigit());
            if hex && b.get(i + 64).is_none_or(|&c| !word(c)) {
                let before = b[i.saturating_sub(24)..i].to_ascii_lowercase();
                if before.windows(3).any(|w| w == b"key") {
                    out.push_str(REDACTED);
                    i += 64;
                    continue;
                }
            }
            // A bearer token.
            if text[i..].starts_with("Bearer ") {
                out.push_str("Bearer ");
                out.push_str(REDACTED);
                i += "Bearer ".len();
                while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'"' {
                    i += 1;
                }
                continue;
            }
        }
        let c = text[i..].chars().next().expect("in bounds");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn redact_pem_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let header_end = rest[start..]
            .find("-----\n")
            .map(|e| start + e)
            .or_else(|| rest[start + 11..].find("-----").map(|e| start + 11 + e));
        let Some(h) = header_end else { break };
        let label = &rest[start + 11..h];
        if !label.contains("PRIVATE KEY") {
            out.push_str(&rest[..h + 5]);
            rest = &rest[h + 5..];
            continue;
        }
        let end_marker = format!("-----END {label}-----");
        out.push_str(&rest[..start]);
        out.push_str(&format!("[redacted {}]", label.to_lowercase()));
        rest = match rest[start..].find(&end_marker) {
            Some(e) => &rest[start + e + end_marker.len()..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// In Kubernetes objects: Secret data, container environment values and
/// the managed-fields noise removed.
pub fn redact_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("kind").and_then(Value::as_str) == Some("Secret") {
                for key in ["data", "stringData"] {
                    if let Some(Value::Object(d)) = map.get_mut(key) {
                        for val in d.values_mut() {
                            *val = Value::String(REDACTED.into());
                        }
                    }
                }
            }
            if let Some(Value::Object(meta)) = map.get_mut("metadata") {
                meta.remove("managedFields");
                if let Some(Value::Object(ann)) = meta.get_mut("annotations") {
                    ann.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
            }
            if let Some(Value::Array(env)) = map.get_mut("env") {
                for e in env.iter_mut() {
                    if let Some(val) = e.get_mut("value") {
                        *val = Value::String(REDACTED.into());
                    }
                }
            }
            for val in map.values_mut() {
                redact_json(val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keys_and_bearers_are_redacted_digests_are_not() {
        let key = "0f".repeat(32);
        let digest = "ab".repeat(32);
        let text = format!(
            "export HAKUBE_JOIN_TOKEN='abcdef.0123456789abcdef'\nexport HAKUBE_CERTIFICATE_KEY={key}\n\
             --ca-hash sha256:{digest} build sha256=\"{digest}\"\nAuthorization: Bearer eyJhbGciOi.x-y_z\n\
             a.b 123456.7890 abcdefg.0123456789abcdef not-a-token\n"
        );
        let r = redact(&text);
        assert!(!r.contains("0123456789abcdef'") && !r.contains(&key) && !r.contains("eyJhbGciOi"), "{r}");
        assert!(r.contains("HAKUBE_JOIN_TOKEN='[redacted]'") && r.contains("HAKUBE_CERTIFICATE_KEY=[redacted]"), "{r}");
        assert_eq!(r.matches(&digest).count(), 2, "digests stay: {r}");
        let id = "9f".repeat(32);
        assert!(redact(&format!("StartContainer for \"{id}\"")).contains(&id), "container ids stay");
        assert!(!redact(&format!("join --certificate-key {key} --token")).contains(&key));
        assert!(r.contains("Authorization: Bearer [redacted]\n"), "{r}");
        assert!(r.contains("abcdefg.0123456789abcdef"), "seven characters are no token id: {r}");
        assert!(r.contains("a.b 123456.7890"), "{r}");
        let multibyte = format!("clé ✓ key: {key} ✓ {}", "é".repeat(20));
        assert_eq!(redact(&multibyte), format!("clé ✓ key: [redacted] ✓ {}", "é".repeat(20)));
    }

    #[test]
    fn pem_private_keys_go_certificates_stay() {
        let text = "x\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
                    -----BEGIN EC PRIVATE KEY-----\nSECRETBYTES\n-----END EC PRIVATE KEY-----\ny\n";
        let r = redact(text);
        assert!(r.contains("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"), "{r}");
        assert!(!r.contains("SECRETBYTES") && r.contains("[redacted ec private key]\ny"), "{r}");
        assert!(!redact("-----BEGIN PRIVATE KEY-----\nSECRET").contains("SECRET"), "an unterminated key goes whole");
    }

    #[test]
    fn secret_data_and_env_values_are_redacted_in_objects() {
        let mut v = json!({"items": [
            {"kind": "Secret", "metadata": {"name": "s", "managedFields": [1]}, "data": {"password": "aHVudGVyMg=="}},
            {"kind": "Pod", "spec": {"containers": [{"env": [{"name": "A", "value": "hunter2"}, {"name": "B", "valueFrom": {}}]}]}},
        ]});
        redact_json(&mut v);
        let t = v.to_string();
        assert!(!t.contains("aHVudGVyMg") && !t.contains("hunter2") && !t.contains("managedFields"), "{t}");
        assert!(t.contains(r#""valueFrom":{}"#), "{t}");
    }

    #[test]
    fn the_archive_is_whole_or_absent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.tar.gz");
        write(&file, &[entry("README.txt", "hello"), entry("logs/etcd.log", "x\n")]).unwrap();
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap());
        let names: Vec<String> = tar::Archive::new(gz)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["b/README.txt", "b/logs/etcd.log"]);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let bad = dir.path().join("missing/dir/c.tar.gz");
        assert!(write(&bad, &[entry("a", "b")]).is_err());
        assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1, "no partial file left");
    }
}
