//! `hakube node-join-script` and `hakube token …`: run on a master, against
//! the cluster's etcd.

use std::time::Duration;

use anyhow::{bail, Context as _};
use etcd_client::Client;

use crate::config::{self, ClusterConfig, Component};
use crate::etcd;
use crate::host::clock::now_secs;
use crate::host::clock::rfc3339;
use crate::host::paths::Paths;
use crate::join::material::{self, CertificateKey};
use crate::join::script::{self, ScriptSpec};
use crate::join::store;
use crate::join::token::{JoinToken, Role, TokenRecord};

pub(crate) fn master_config(paths: &Paths) -> anyhow::Result<ClusterConfig> {
    let c = config::load_installed(&paths.config_file())?
        .with_context(|| format!("hakube is not installed under {}", paths.root().display()))?;
    if !c.has(Component::Etcd) {
        bail!("this host is a worker: run this on a master");
    }
    Ok(c)
}

pub(crate) async fn connect(paths: &Paths, c: &ClusterConfig) -> anyhow::Result<(Client, String)> {
    etcd::Local::connect(paths, c, Duration::from_secs(5)).await.with_context(|| {
        format!("cannot reach this master's etcd at {}: is the node healthy (`hakube status`)?", c.etcd_client_url())
    })
}

/// Creates a token (and for a master, sealed material) and renders the script.
pub fn node_join_script(paths: &Paths, role: Role, ttl: Option<Duration>) -> anyhow::Result<String> {
    let c = master_config(paths)?;
    let ttl_secs = ttl.map(|d| d.as_secs()).unwrap_or_else(|| role.default_ttl_secs());
    if ttl_secs == 0 {
        bail!("--ttl must be at least 1s");
    }
    let ca_pem = std::fs::read(paths.pki("ca.crt")).with_context(|| format!("{}", paths.pki("ca.crt").display()))?;
    let ca_hash = crate::pki::ca_hash(&ca_pem).map_err(anyhow::Error::msg)?;
    let exe = std::env::current_exe()?;
    let binary = std::fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
    let binary_sha256 = crate::pki::hex(ring::digest::digest(&ring::digest::SHA256, &binary).as_ref());
    let key = (role == Role::Master).then(CertificateKey::generate);
    let sealed = match &key {
        Some(k) => Some(material::seal(k, &material::collect(paths)?)),
        None => None,
    };
    let token = JoinToken::generate();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (record, endpoints) = rt.block_on(async {
        let (mut client, endpoint) = connect(paths, &c).await?;
        let record = store::new_record(&token, role, ttl_secs, c.node.name.as_str(), now_secs());
        store::create(&mut client, &endpoint, &record, sealed).await?;
        let members = etcd::members(&mut client, &endpoint).await?;
        let port = c.node.join_api_port;
        let own = format!("{}:{port}", config::Host::Ip(c.node.advertise_address));
        let mut endpoints = vec![own.clone()];
        for m in members.iter().filter(|m| !m.is_learner) {
            if let Some(h) = m.client_urls.first().and_then(|u| crate::etcd::host_of_url(u)) {
                let ep = format!("{h}:{port}");
                if !endpoints.contains(&ep) {
                    endpoints.push(ep);
                }
            }
        }
        anyhow::Ok((record, endpoints))
    })?;
    eprintln!(
        "[node-join-script] {role} token {} expires at {}; the script holds secrets: keep it private",
        record.id,
        rfc3339(record.expires_at)
    );
    Ok(script::render(&ScriptSpec {
        role,
        cluster: &c.cluster.name,
        created_by: c.node.name.as_str(),
        created_at: &rfc3339(record.created_at),
        expires_at: &rfc3339(record.expires_at),
        endpoints: &endpoints,
        token: &token.reveal(),
        ca_hash: &ca_hash,
        certificate_key: key.as_ref().map(CertificateKey::reveal).as_deref(),
        binary_sha256: &binary_sha256,
    }))
}

pub fn list(paths: &Paths) -> anyhow::Result<Vec<TokenRecord>> {
    let c = master_config(paths)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (mut client, endpoint) = connect(paths, &c).await?;
        let mut v = store::list(&mut client, &endpoint).await?;
        v.sort_by_key(|r| r.created_at);
        anyhow::Ok(v)
    })
}

pub fn render_list(records: &[TokenRecord], now: u64) -> String {
    let mut out = format!("{:<8} {:<7} {:<31} {:>5}  {}\n", "ID", "ROLE", "EXPIRES", "USES", "CREATED BY");
    for r in records {
        let expires =
            if now >= r.expires_at { format!("{} (expired)", rfc3339(r.expires_at)) } else { rfc3339(r.expires_at) };
        out.push_str(&format!("{:<8} {:<7} {:<31} {:>5}  {}\n", r.id, r.role, expires, r.uses, r.created_by));
    }
    out
}

pub fn revoke(paths: &Paths, id: &str) -> anyhow::Result<()> {
    let c = master_config(paths)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let found = rt.block_on(async {
        let (mut client, endpoint) = connect(paths, &c).await?;
        anyhow::Ok(store::revoke(&mut client, &endpoint, id).await?)
    })?;
    if !found {
        bail!("no token {id:?}: `hakube token list` shows the live ones (expired tokens are gone already)");
    }
    eprintln!("[token] revoked {id}");
    Ok(())
}
