//! `hakube node remove NAME`: takes a host that is gone for good out of the
//! cluster from a healthy master: its etcd member (a master's; under the
//! membership lock, and only if the voters left keep their quorum) and its
//! registry record. A dead master otherwise blocks every master join, since
//! a membership change needs every voter healthy.

use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::cluster::registry;
use crate::config::{self, Component, Host};
use crate::etcd::membership::{self, Lock};
use crate::etcd::{self, Credentials};
use crate::host::paths::Paths;

pub fn remove(paths: &Paths, name: &str) -> anyhow::Result<()> {
    let c = config::load_installed(&paths.config_file())?
        .with_context(|| format!("hakube is not installed under {}", paths.root().display()))?;
    if !c.has(Component::Etcd) {
        bail!("this host is a worker: run `hakube node remove` on a master");
    }
    if c.node.name.as_str() == name {
        bail!("{name} is this node: run `hakube reset` on it instead");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (mut client, endpoint) = etcd::Local::connect(paths, &c, Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot reach this master's etcd at {}", c.etcd_client_url()))?;
        let creds = Credentials::load(paths, etcd::CLIENT_CERT)?;
        let record = registry::get(&mut client, &endpoint, name).await?;
        let lock = Lock::acquire(&mut client, &endpoint, Duration::from_secs(60)).await?;
        let result = async {
            let members = etcd::members(&mut client, &endpoint).await?;
            // By name, or (an unstarted member has none) by the registered address.
            let peer_host = record.as_ref().map(|r| Host::Ip(r.address).to_string());
            let member = members.iter().find(|m| {
                m.name == name
                    || peer_host
                        .as_deref()
                        .is_some_and(|h| m.peer_urls.iter().any(|u| crate::etcd::host_of_url(u) == Some(h)))
            });
            if record.is_none() && member.is_none() {
                bail!("no node {name} in the cluster: `hakube status` on a master lists the etcd members");
            }
            if let Some(m) = member {
                if !m.is_learner {
                    let health = membership::voter_health(&members, &creds).await;
                    membership::quorum_after_removal(&health, m.id).map_err(|why| {
                        anyhow::anyhow!("removing {name} would cost etcd its quorum ({why}): nothing was changed")
                    })?;
                }
                membership::remove_member(&mut client, &endpoint, m.id, &lock).await?;
                eprintln!("[node] removed etcd member {:x} ({})", m.id, m.peer_urls.join(","));
            }
            registry::delete(&mut client, &endpoint, name).await?;
            eprintln!("[node] {name} is out of the cluster; to bring it back, `hakube reset` it and join it again");
            anyhow::Ok(())
        }
        .await;
        lock.release(&mut client).await;
        result
    })
}
