//! `hakube node remove NAME`: takes a host that is gone for good out of the
//! cluster from a healthy master ([`crate::cluster::removal`]).

use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::cluster::removal::{self, Guard};
use crate::config::{self, Component};
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
        let now = crate::host::clock::now_secs();
        let done = removal::remove(&mut client, &endpoint, &creds, name, c.node.name.as_str(), Guard::Trusted, now)
            .await
            .map_err(anyhow::Error::msg)?;
        for line in done {
            eprintln!("[node] {line}");
        }
        anyhow::Ok(())
    })
}
