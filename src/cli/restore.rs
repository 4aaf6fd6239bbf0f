//! `hakube etcd restore FILE --pki DIR`: makes this bare server the first
//! master of the cluster a snapshot holds, with the same CA, the same
//! Secrets key and the same objects, on a new single-member etcd.
//!
//! Phases: check everything that can be checked before writing (the host
//! is bare, the snapshot whole, the key material complete and matching),
//! restore etcd's data into a staging directory and tidy the records on a
//! scratch member there, then move data and key material into place and
//! install as a first master does. A failure before the move leaves the
//! host as it was; the staging directory goes with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_norway::Value;

use crate::cli::install;
use crate::cluster::restore::Restored;
use crate::config::{ClusterSpec, Component};
use crate::etcd::restore::{restore_data, Scratch};
use crate::etcd::snapshot;
use crate::host::fs::apply_files;
use crate::host::paths::Paths;
use crate::host::process::find_binary;
use crate::join::material::{self, MATERIAL_FILES};
use crate::progress::Progress;

pub struct Request {
    pub paths: Paths,
    pub file: PathBuf,
    pub pki: PathBuf,
    /// This node's options, as a partial config tree.
    pub flags: Value,
    pub config_file: Option<PathBuf>,
    pub ignore_preflight_errors: Vec<String>,
    pub timeout: Duration,
}

/// A directory removed when dropped, unless kept.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Refuses a host that holds a cluster, or held one and kept its data.
fn refuse_installed(paths: &Paths) -> anyhow::Result<()> {
    let held = if paths.config_file().exists() {
        Some(paths.config_file())
    } else if std::fs::read_dir(paths.etcd_data_dir()).is_ok_and(|mut d| d.next().is_some()) {
        Some(paths.etcd_data_dir())
    } else {
        None
    };
    if let Some(p) = held {
        bail!(
            "this host already holds a cluster ({} exists): a restore makes a bare server the first master of \
             the snapshot's cluster; run it on another server, or `hakube reset` this one first if nothing on it \
             is needed",
            p.display()
        );
    }
    Ok(())
}

/// The key material files from `dir`, checked: every one present, each CA
/// pair matching, the encryption configuration usable, and the CA the one
/// the snapshot's record names. Returns the files and the key names.
fn read_material(dir: &Path, ca_hash: Option<&str>) -> anyhow::Result<(BTreeMap<String, String>, Vec<String>)> {
    let mut files = BTreeMap::new();
    let mut missing = Vec::new();
    for (name, _) in MATERIAL_FILES {
        match std::fs::read(dir.join(name)) {
            Ok(b) => {
                files.insert(name.to_owned(), String::from_utf8(b).with_context(|| format!("{name}: not text"))?);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(name),
            Err(e) => return Err(e).with_context(|| format!("{}", dir.join(name).display())),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} lacks {}: give --pki a copy of a master's whole PKI directory (/var/lib/hakube/pki)",
            dir.display(),
            missing.join(", ")
        );
    }
    // The CA pairs, checked as an install loads them.
    for ca in ["ca", "front-proxy-ca", "etcd/ca"] {
        let (crt, key) = (format!("{ca}.crt"), format!("{ca}.key"));
        crate::pki::Ca::from_pair(files[&crt].as_bytes(), files[&key].as_bytes(), &dir.join(&crt), &dir.join(&key))?;
    }
    crate::pki::Key::from_pem(&files["sa.key"])
        .map_err(|e| anyhow::anyhow!("{}: not a private key ({e})", dir.join("sa.key").display()))?;
    let names = crate::pki::encryption_key_names(files[crate::pki::ENCRYPTION_CONFIG].as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(crate::pki::ENCRYPTION_CONFIG).display()))?;
    if let Some(want) = ca_hash {
        let have = crate::pki::ca_hash(files["ca.crt"].as_bytes()).map_err(anyhow::Error::msg)?;
        if have != want {
            bail!(
                "{}/ca.crt is not the CA of the snapshot's cluster (its hash is {have}, the snapshot's record says \
                 {want}): give --pki the PKI directory of a master of that cluster",
                dir.display()
            );
        }
    }
    Ok((files, names))
}

/// The cluster-wide fields where `c` differs from the snapshot's.
fn differing(snapshot: &ClusterSpec, c: &ClusterSpec) -> anyhow::Result<Vec<String>> {
    let (a, b) = (serde_json::to_value(snapshot)?, serde_json::to_value(c)?);
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return Ok(vec![]) };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    Ok(keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).map(|k| format!("cluster.{k}")).collect())
}

pub fn run(req: Request) -> anyhow::Result<()> {
    let progress = Progress::new("restore");
    let paths = &req.paths;
    let (restored, name, address) = {
        let _lock = crate::host::lock::lock_root_waiting(paths.root(), Duration::from_secs(5))?;
        refuse_installed(paths)?;
        let record = progress.phase("checking the snapshot", || snapshot::verify(&req.file))?;
        progress.note(format!(
            "  revision {} of cluster {}, taken on {} at {}",
            record.revision, record.cluster, record.node, record.taken_at_text
        ));
        let (files, key_names) =
            progress.phase("checking the key material", || read_material(&req.pki, record.ca_hash.as_deref()))?;
        // This node's own options first (the cluster-wide ones are the
        // snapshot's, read below): its name and address make the member.
        let node = install::resolve_config(paths, req.flags.clone(), req.config_file.as_ref(), None)?;
        if !node.has(Component::Etcd) {
            bail!("a restored first master runs etcd: add etcd to --components");
        }
        let mut node = node;
        if let Some(file) = node.node.bundle.clone().filter(|b| b.is_file()) {
            // A bundle file is unpacked first (as install does, and once:
            // install finds it unpacked): etcdutl and etcd come from it.
            let key = node.node.bundle_key.clone();
            let dir = progress.phase(&format!("unpacking {}", file.display()), || {
                crate::agent::unpack::unpack(paths, &file, key.as_deref(), &progress)
            })?;
            node.node.bundle = Some(dir);
        }
        let bundle = node.node.bundle.as_deref();
        let tool = |name| {
            find_binary(paths, bundle, name).with_context(|| {
                format!("no {name} in the bundle, {} or PATH: give --bundle", paths.bin_dir().display())
            })
        };
        let (etcdutl, etcd) = (tool("etcdutl")?, tool("etcd")?);
        progress.phase("preflight checks", || crate::preflight::enforce(paths, &node, &req.ignore_preflight_errors))?;

        let staging_dir = paths.data_dir().join(".restore");
        if staging_dir.exists() {
            // An earlier restore that died: nothing in it was moved into place.
            std::fs::remove_dir_all(&staging_dir).with_context(|| format!("{}", staging_dir.display()))?;
        }
        crate::host::fs::create_dir_all(&staging_dir, 0o700)?;
        let mut staging = Staging(Some(staging_dir.clone()));
        let data = staging_dir.join("etcd");
        let name = node.node.name.as_str();
        progress.phase("restoring etcd's data from the snapshot", || {
            restore_data(&etcdutl, &req.file, &data, name, &node.etcd_peer_url(), &record.cluster)
        })?;
        let restored: Restored = progress.phase("reading and tidying the cluster's records", || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut scratch = Scratch::start(&etcd, &data, name, &staging_dir.join("etcd.log"))?;
                let mut client = scratch.client(Duration::from_secs(60)).await?;
                let endpoint = scratch.endpoint.clone();
                let ca = files["ca.crt"].as_bytes();
                crate::cluster::restore::check_material(&mut client, &endpoint, ca, &key_names).await?;
                anyhow::Ok(crate::cluster::restore::tidy(&mut client, &endpoint, name).await?)
            })
        })?;
        let spec = &restored.settings.spec;
        let c = install::resolve_config(paths, req.flags.clone(), req.config_file.as_ref(), Some(spec))?;
        let changed = differing(spec, &c.cluster)?;
        if !changed.is_empty() {
            bail!(
                "the cluster-wide settings are the snapshot's, and the options given change {}: restore without \
                 them, then change them with `hakube install` on the restored master",
                changed.join(", ")
            );
        }
        progress.phase("moving the data and the key material into place", || -> anyhow::Result<()> {
            crate::host::fs::create_dir_all(&paths.pki("etcd"), 0o700)?;
            apply_files(&material::files(paths, &files)?)?;
            let target = paths.etcd_data_dir();
            if target.exists() {
                // Empty (checked above): etcd's own directory takes its place.
                std::fs::remove_dir(&target).with_context(|| format!("{}", target.display()))?;
            }
            std::fs::rename(&data, &target).with_context(|| format!("{}", target.display()))?;
            std::fs::File::open(paths.data_dir()).and_then(|d| d.sync_all())?;
            Ok(())
        })?;
        drop(staging.0.take().map(std::fs::remove_dir_all));
        (restored, name.to_owned(), node.node.advertise_address)
    };

    install::run(install::Request {
        paths: paths.clone(),
        flags: req.flags,
        config_file: req.config_file,
        ignore_preflight_errors: req.ignore_preflight_errors,
        timeout: req.timeout,
        restored: Some(restored.settings.spec.clone()),
    })
    .context(
        "the snapshot's data and the key material are in place, but the master did not come up: fix what is \
         named above and run `hakube install` with the same options to finish",
    )?;
    let lost: Vec<&String> = restored.lost_masters.iter().map(|r| &r.name).filter(|m| **m != name).collect();
    let kube = crate::config::load_installed(&paths.config_file())?.is_some_and(|c| c.has(Component::KubeApiserver));
    if kube && !lost.is_empty() {
        progress.phase("removing the Nodes of the snapshot's other masters", || remove_nodes(paths, &lost))?;
    }
    let mut next = String::from("after the restore:\n");
    if !lost.is_empty() {
        next.push_str(&format!(
            "  the snapshot's other masters ({}) are not members of the restored etcd: on each, `hakube reset`, \
             then join it with a new `hakube node-join-script --master`\n",
            lost.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if !restored.workers.is_empty() {
        let workers = restored.workers.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", ");
        match restored.lost_masters.iter().find(|m| m.address == address) {
            Some(m) => next.push_str(&format!(
                "  the workers ({workers}) reconnect by themselves: this server has {}'s address ({address}), which \
                 their balancers know\n",
                m.name
            )),
            None => next.push_str(&format!(
                "  the workers ({workers}) know only the old masters' addresses ({}), and this server has none of \
                 them: on each, `hakube reset` and join it again with `hakube node-join-script`\n",
                restored.lost_masters.iter().map(|m| m.address.to_string()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
    eprint!("{next}");
    Ok(())
}

fn remove_nodes(paths: &Paths, names: &[&String]) -> anyhow::Result<()> {
    let client = crate::kube::client::KubeClient::from_kubeconfig(&paths.kubeconfig("admin"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for name in names {
        rt.block_on(client.delete("Node", &format!("/api/v1/nodes/{name}"), &serde_json::json!({})))?;
    }
    Ok(())
}
