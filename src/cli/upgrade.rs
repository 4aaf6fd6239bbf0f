//! `install bundle=NEW` on a master of a running cluster: an upgrade of the
//! whole cluster, not of this node alone. Checked before anything is
//! written (the skew rules against what every node reports, every node
//! healthy, no other upgrade under way), recorded after a snapshot of
//! etcd, then followed until the elected agent reports every node moved
//! ([`crate::cluster::upgrade`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::cluster::upgrade::record::{self, StartError, Upgrade};
use crate::cluster::upgrade::{drive, preflight};
use crate::config::ClusterConfig;
use crate::host::clock::now_secs;
use crate::host::paths::Paths;
use crate::kube::version::KubeVersion;
use crate::progress::Progress;

/// The bundle a re-run moves the cluster to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dir: PathBuf,
    pub id: String,
    pub version: KubeVersion,
    /// The hakube build it carries.
    pub hakube: Option<crate::cluster::upgrade::Build>,
}

/// Whether `wanted` (the bundle this re-run names, unpacked) is another
/// bundle than the one this master runs: then it is an upgrade. None when
/// this master runs binaries from PATH (no bundle), or the bundle named is
/// the one it runs or a directory given by hand (no manifest to give the
/// others).
pub fn target(installed: &ClusterConfig, wanted: Option<&Path>) -> anyhow::Result<Option<Target>> {
    let (Some(now), Some(dir)) = (installed.node.bundle.as_deref(), wanted) else { return Ok(None) };
    if now == dir || !dir.join(crate::bundle::MANIFEST).is_file() {
        return Ok(None);
    }
    let file = dir.join(crate::bundle::MANIFEST);
    let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
    let m: crate::bundle::Manifest =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not a bundle manifest", file.display()))?;
    let version = crate::kube::version::parse(&m.kubernetes_version).with_context(|| {
        format!("{}: its Kubernetes version {:?} is unreadable", file.display(), m.kubernetes_version)
    })?;
    let id = crate::bundle::Manifest::id(&bytes);
    let hakube = m
        .sha256_of("hakube")
        .map(|sha256| crate::cluster::upgrade::Build { version: m.hakube_version.clone(), sha256: sha256.to_owned() });
    Ok(Some(Target { dir: dir.to_owned(), id, version, hakube }))
}

/// What the check found.
pub enum Checked {
    /// Nothing stands in the way: record it.
    Start,
    /// This very upgrade is under way already: follow it.
    Running(Box<Upgrade>),
}

/// Checks `t` against the cluster before anything is written: another
/// upgrade under way is refused, naming it; then Kubernetes' skew rules
/// and every node's health, every refusal listed.
pub fn check(paths: &Paths, c: &ClusterConfig, t: &Target) -> anyhow::Result<Checked> {
    let (rt, mut etcd) = crate::cli::install::settings_client(paths, c)?;
    let endpoint = c.etcd_client_url();
    let (running, nodes) = rt.block_on(async {
        let running = record::read(&mut etcd, &endpoint).await?;
        let nodes = crate::cluster::registry::list(&mut etcd, &endpoint).await?;
        anyhow::Ok((running, nodes))
    })?;
    if let Some(up) = running.filter(Upgrade::running) {
        if up.bundle == t.id {
            return Ok(Checked::Running(Box::new(up)));
        }
        return Err(StartError::Running(Box::new(up)).into());
    }
    if let Err(refusals) = preflight(t.version, &drive::versions(&nodes, now_secs())) {
        let lines: Vec<String> = refusals.iter().map(|r| format!("  - {r}")).collect();
        bail!("the cluster cannot move to {} (bundle {}):\n{}", t.version, t.id, lines.join("\n"));
    }
    Ok(Checked::Start)
}

/// Takes a snapshot of etcd, then records the upgrade (refused if another
/// one was recorded since the check).
pub fn start(paths: &Paths, c: &ClusterConfig, t: &Target, progress: &Progress) -> anyhow::Result<()> {
    let (rt, mut etcd) = crate::cli::install::settings_client(paths, c)?;
    let endpoint = c.etcd_client_url();
    let now = now_secs();
    let (db, _) = rt
        .block_on(crate::etcd::snapshot::save(
            paths,
            c,
            &paths.snapshot_dir(),
            crate::etcd::snapshot::Kind::Manual,
            now,
        ))
        .context("the snapshot of etcd taken before an upgrade failed: nothing was changed")?;
    progress.note(format!("  etcd snapshot before the upgrade: {}", db.display()));
    let mut up = Upgrade::new(t.id.clone(), t.version, c.node.name.to_string(), now);
    up.snapshot = Some(db.display().to_string());
    up.hakube = t.hakube.clone();
    rt.block_on(async {
        let previous = record::read(&mut etcd, &endpoint).await?;
        record::start(&mut etcd, &endpoint, previous.as_ref(), &up).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Follows the upgrade to `t` until it is finished, printing each step as
/// the elected agent records it; on timeout, says where it stands (the
/// agent keeps driving it).
pub fn wait(
    paths: &Paths,
    c: &ClusterConfig,
    t: &Target,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let endpoint = c.etcd_client_url();
    let deadline = std::time::Instant::now() + timeout;
    let mut told = String::new();
    let mut etcd: Option<etcd_client::Client> = None;
    loop {
        // This master's etcd may restart under the read (its control plane
        // moves too): connect again, until the deadline.
        let read = rt.block_on(async {
            if etcd.is_none() {
                etcd = Some(crate::etcd::Local::connect(paths, c, Duration::from_secs(5)).await?.0);
            }
            record::read(etcd.as_mut().expect("connected above"), &endpoint).await
        });
        let last_error = match read {
            Err(e) => {
                etcd = None;
                Some(e.to_string())
            }
            Ok(up) => {
                let Some(up) = up.filter(|u| u.bundle == t.id) else {
                    bail!("the upgrade to {} is no longer recorded: another upgrade replaced it", t.version);
                };
                if up.step != told {
                    progress.note(format!("  {}", up.step));
                    told = up.step.clone();
                }
                if !up.running() {
                    return Ok(());
                }
                None
            }
        };
        if std::time::Instant::now() >= deadline {
            let now = last_error.map(|e| format!("this master's etcd does not answer ({e})")).unwrap_or(told);
            bail!(
                "the upgrade to {} is not finished after {}s: {now}. The elected agent keeps driving it: `hakube \
                 status` shows where it stands",
                t.version,
                timeout.as_secs(),
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
