//! `hakube node-join-script` and `hakube token …`: run on a master, against
//! the cluster's etcd.

use std::time::Duration;

use anyhow::{bail, Context as _};
use etcd_client::Client;

use crate::config::{self, ClusterConfig, Component};
use crate::etcd;
use crate::host::clock::rfc3339;
use crate::host::paths::Paths;
use crate::join::store;
use crate::join::token::{Role, TokenRecord};

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
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let issued = rt.block_on(async {
        let (mut client, endpoint) = connect(paths, &c).await?;
        crate::join::issue::issue(paths, &c, &mut client, &endpoint, role, ttl_secs, c.node.name.as_str())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot issue a join script: {e} (its token is written to etcd, which needs a quorum of masters \
                     up: `hakube status` shows them)"
                )
            })
    })?;
    eprintln!(
        "[node-join-script] {role} token {} expires at {}; the script holds secrets: keep it private",
        issued.record.id,
        rfc3339(issued.record.expires_at)
    );
    Ok(issued.script)
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
