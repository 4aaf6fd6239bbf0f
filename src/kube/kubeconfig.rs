//! Kubeconfigs for admin, controller-manager, scheduler and kubelet, with
//! their client certificates embedded as kubeadm writes them.
//!
//! A kubeconfig is re-rendered on every install from the server URL, the CA
//! and its client certificate; the certificate is reused while it still
//! matches, so an unchanged cluster renders byte-identical files.

use base64::Engine as _;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::config::{ClusterConfig, Host, HostPort};
use crate::host::fs::{read_optional, FileSpec};
use crate::host::paths::Paths;
use crate::pki::{self, Ca, Decision, Key, PkiError};

/// The kubeconfigs of a master, and which endpoint each talks to.
pub const KUBECONFIGS: [&str; 6] =
    ["admin", "controller-manager", "scheduler", "kubelet", "kube-proxy", "hakube-controller"];

/// controller-manager, scheduler and hakube's own controller talk to their
/// own node's API server, as with kubeadm; kubelet goes through the
/// node-local load balancer, and so does kube-proxy, so none ever changes with the load-balancer
/// address; admin goes through the control-plane endpoint.
pub fn server_for(c: &ClusterConfig, kubeconfig: &str) -> String {
    let endpoint = match kubeconfig {
        "controller-manager" | "scheduler" | "hakube-controller" => {
            HostPort::new(Host::Ip(c.node.advertise_address), c.node.api_server_port)
        }
        "kubelet" | "kube-proxy" => c.local_lb_endpoint(),
        _ => c.control_plane_endpoint(),
    };
    format!("https://{endpoint}")
}

/// Renders a kubeconfig (pure).
pub fn render(cluster: &str, server: &str, ca_pem: &str, user: &str, cert_pem: &str, key_pem: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: {server}
  name: {cluster}
contexts:
- context:
    cluster: {cluster}
    user: {user}
  name: {user}@{cluster}
current-context: {user}@{cluster}
preferences: {{}}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    users: Vec<NamedUser>,
}

#[derive(Deserialize)]
struct NamedCluster {
    cluster: Cluster,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    ca: String,
}

#[derive(Deserialize)]
struct NamedUser {
    user: User,
}

#[derive(Deserialize)]
struct User {
    #[serde(rename = "client-certificate-data")]
    cert: String,
    #[serde(rename = "client-key-data")]
    key: String,
}

fn decode(s: &str) -> Option<String> {
    base64::engine::general_purpose::STANDARD.decode(s).ok().and_then(|b| String::from_utf8(b).ok())
}

/// The client certificate and key embedded in an existing kubeconfig.
fn embedded_credentials(text: &[u8]) -> Option<(String, String)> {
    let kc: Kubeconfig = serde_norway::from_slice(text).ok()?;
    let user = kc.users.into_iter().next()?.user;
    Some((decode(&user.cert)?, decode(&user.key)?))
}

/// What a client needs of a kubeconfig hakube wrote: where the API server
/// is, the CA to trust, the identity to present.
pub struct Credentials {
    pub server: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.server)
    }
}

/// Reads a kubeconfig of the shape [`render`] writes.
pub fn read(path: &std::path::Path) -> Result<Credentials, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |what: &str| format!("{}: {what}", path.display());
    let kc: Kubeconfig = serde_norway::from_slice(&text).map_err(|e| bad(&format!("not a kubeconfig: {e}")))?;
    let cluster = kc.clusters.into_iter().next().ok_or_else(|| bad("no cluster"))?.cluster;
    let user = kc.users.into_iter().next().ok_or_else(|| bad("no user"))?.user;
    Ok(Credentials {
        server: cluster.server,
        ca_pem: decode(&cluster.ca).ok_or_else(|| bad("certificate-authority-data is not base64 PEM"))?,
        cert_pem: decode(&user.cert).ok_or_else(|| bad("client-certificate-data is not base64 PEM"))?,
        key_pem: decode(&user.key).ok_or_else(|| bad("client-key-data is not base64 PEM"))?,
    })
}

/// When the client certificate of the kubeconfig at `path` ends (None: no
/// readable kubeconfig or certificate).
pub fn client_cert_end(path: &std::path::Path) -> Option<OffsetDateTime> {
    let creds = read(path).ok()?;
    pki::observe(creds.cert_pem.as_bytes(), None).ok().map(|o| o.not_after)
}

/// Files to write, and what was decided for each.
pub type Planned = (Vec<FileSpec>, Vec<(String, Decision)>);

/// Plans every kubeconfig of a master against the cluster CA.
pub fn plan(paths: &Paths, c: &ClusterConfig, ca: &Ca, now: OffsetDateTime) -> Result<Planned, PkiError> {
    plan_renewing(paths, c, ca, now, &pki::Renew::Nothing)
}

/// [`plan`], reissuing the client certificates `renew` names
/// (`admin.conf`, …) too.
pub fn plan_renewing(
    paths: &Paths,
    c: &ClusterConfig,
    ca: &Ca,
    now: OffsetDateTime,
    renew: &pki::Renew,
) -> Result<Planned, PkiError> {
    let alg = c.cluster.key_algorithm;
    let mut files = Vec::new();
    let mut decisions = Vec::new();
    for name in KUBECONFIGS {
        let path = paths.kubeconfig(name);
        let spec = pki::kubeconfig_cert_spec(c, name);
        let existing = read_optional(&path)?.and_then(|b| embedded_credentials(&b));
        let (observed, key) = match &existing {
            Some((cert, key)) => (pki::observe(cert.as_bytes(), Some(&ca.spki())).ok(), Key::from_pem(key).ok()),
            None => (None, None),
        };
        let decision =
            renew.apply(&format!("{name}.conf"), pki::decide_leaf(&spec, observed.as_ref(), key.as_ref(), alg, now));
        let (cert_pem, key_pem) = match (&decision, existing, key) {
            (Decision::Keep, Some((cert, key_pem)), _) => (cert, key_pem),
            (Decision::Reissue { new_key: false, .. }, _, Some(key)) => (ca.issue(&spec, &key, now)?, key.pem),
            _ => {
                let key = Key::generate(alg).map_err(|reason| PkiError::Issue { name: name.into(), reason })?;
                (ca.issue(&spec, &key, now)?, key.pem)
            }
        };
        let text = render(&c.cluster.name, &server_for(c, name), &ca.cert_pem, &spec.common_name, &cert_pem, &key_pem);
        files.push(FileSpec::new(path, text, 0o600));
        decisions.push((format!("kubeconfigs/{name}.conf"), decision));
    }
    Ok((files, decisions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_matches_golden() {
        let text = render("hakube", "https://lb.example.test:6443", "CA\n", "kubernetes-admin", "CERT\n", "KEY\n");
        crate::golden::check("kubeconfig-admin.yaml", &text);
        let (cert, key) = embedded_credentials(text.as_bytes()).unwrap();
        assert_eq!((cert.as_str(), key.as_str()), ("CERT\n", "KEY\n"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.conf");
        std::fs::write(&path, &text).unwrap();
        let creds = read(&path).unwrap();
        assert_eq!(creds.server, "https://lb.example.test:6443");
        assert_eq!((creds.ca_pem.as_str(), creds.key_pem.as_str()), ("CA\n", "KEY\n"));
        assert!(!format!("{creds:?}").contains("KEY"));
    }
}
