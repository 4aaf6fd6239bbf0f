//! Every certificate of a node: the PKI's, the kubeconfigs', kubelet's,
//! with when each ends (`hakube certs check-expiration`, the agent's
//! metrics, `hakube check`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::host::paths::Paths;
use crate::pki;

/// One certificate found on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// `apiserver`, `etcd/peer`, `admin.conf`, `kubelet client`, …
    pub name: String,
    pub path: PathBuf,
    pub subject: String,
    pub is_ca: bool,
    /// Unix seconds; None when the file could not be read.
    pub not_after: Option<i64>,
    pub problem: Option<String>,
}

/// Every certificate of the node, in a stable order: the PKI's (CAs
/// first), the kubeconfigs', kubelet's.
pub fn inventory(paths: &Paths) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut pki_files = Vec::new();
    walk(&paths.pki_dir(), &mut pki_files);
    pki_files.sort();
    for path in pki_files {
        let Ok(rel) = path.strip_prefix(paths.pki_dir()) else { continue };
        let rel = rel.to_string_lossy();
        if rel.starts_with("backup/") || !rel.ends_with(".crt") {
            continue;
        }
        rows.push(row(rel.trim_end_matches(".crt").to_owned(), &path, std::fs::read(&path).map_err(|e| e.to_string())));
    }
    rows.sort_by_key(|r| !r.is_ca);
    let mut kubeconfigs: Vec<PathBuf> =
        read_dir(&paths.kubeconfig_dir()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "conf")).collect();
    kubeconfigs.sort();
    for path in kubeconfigs {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let pem = crate::kube::kubeconfig::read(&path).map(|c| c.cert_pem.into_bytes());
        rows.push(row(format!("{name}.conf"), &path, pem));
    }
    // kubelet-client-current.pem is a link to the newest of the dated
    // files kubelet keeps: the one in use.
    for (name, file) in [("kubelet client", "kubelet-client-current.pem"), ("kubelet serving", "kubelet.crt")] {
        let path = paths.kubelet_cert_dir().join(file);
        if path.exists() {
            rows.push(row(name.to_owned(), &path, std::fs::read(&path).map_err(|e| e.to_string())));
        }
    }
    rows
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for p in read_dir(dir) {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn row(name: String, path: &Path, pem: Result<Vec<u8>, String>) -> Row {
    let observed = pem.and_then(|b| pki::observe(&b, None));
    match observed {
        Ok(o) => Row {
            name,
            path: path.to_owned(),
            subject: o.common_name,
            is_ca: o.is_ca,
            not_after: Some(o.not_after.unix_timestamp()),
            problem: None,
        },
        Err(e) => {
            Row { name, path: path.to_owned(), subject: String::new(), is_ca: false, not_after: None, problem: Some(e) }
        }
    }
}
