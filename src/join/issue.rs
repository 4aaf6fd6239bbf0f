//! Issuing a join script: a token in etcd (and for a master, the cluster's
//! key material sealed under a fresh key), and the script that carries
//! them with the pins a joining host checks. What `hakube
//! node-join-script` prints and the cluster page's "Add node" shows.

use etcd_client::Client;

use super::material::{self, CertificateKey};
use super::script::{self, ScriptSpec};
use super::store;
use super::token::{JoinToken, Role, TokenRecord};
use crate::config::{self, ClusterConfig};
use crate::etcd;
use crate::host::clock::{now_secs, rfc3339};
use crate::host::paths::Paths;

/// A script, and the token record it carries.
pub struct Issued {
    pub script: String,
    pub record: TokenRecord,
}

/// Issues a script for a `role` host, valid for `ttl_secs`, recorded as
/// created by `created_by`. Nothing is stored when a file it needs cannot
/// be read.
pub async fn issue(
    paths: &Paths,
    c: &ClusterConfig,
    client: &mut Client,
    endpoint: &str,
    role: Role,
    ttl_secs: u64,
    created_by: &str,
) -> Result<Issued, String> {
    if ttl_secs == 0 {
        return Err("a token must live at least 1s".into());
    }
    let ca_file = paths.pki("ca.crt");
    let ca_pem = std::fs::read(&ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    let ca_hash = crate::pki::ca_hash(&ca_pem)?;
    // The joining host checks the binary it fetches against this.
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let binary = std::fs::read(&exe).map_err(|e| format!("cannot read {}: {e}", exe.display()))?;
    let binary_sha256 = crate::pki::hex(ring::digest::digest(&ring::digest::SHA256, &binary).as_ref());
    let key = (role == Role::Master).then(CertificateKey::generate);
    let sealed = match &key {
        Some(k) => Some(material::seal(k, &material::collect(paths).map_err(|e| e.to_string())?)),
        None => None,
    };
    let token = JoinToken::generate();
    let record = store::new_record(&token, role, ttl_secs, created_by, now_secs());
    store::create(client, endpoint, &record, sealed).await.map_err(|e| e.to_string())?;
    let members = etcd::members(client, endpoint).await.map_err(|e| e.to_string())?;
    let port = c.node.join_api_port;
    let own = format!("{}:{port}", config::Host::Ip(c.node.advertise_address));
    let mut endpoints = vec![own];
    for m in members.iter().filter(|m| !m.is_learner) {
        if let Some(h) = m.client_urls.first().and_then(|u| crate::etcd::host_of_url(u)) {
            let ep = format!("{h}:{port}");
            if !endpoints.contains(&ep) {
                endpoints.push(ep);
            }
        }
    }
    let script = script::render(&ScriptSpec {
        role,
        cluster: &c.cluster.name,
        created_by,
        created_at: &rfc3339(record.created_at),
        expires_at: &rfc3339(record.expires_at),
        endpoints: &endpoints,
        token: &token.reveal(),
        ca_hash: &ca_hash,
        certificate_key: key.as_ref().map(CertificateKey::reveal).as_deref(),
        binary_sha256: &binary_sha256,
    });
    Ok(Issued { script, record })
}
