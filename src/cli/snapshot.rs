//! `hakube etcd snapshot save|list|verify`.

use std::path::Path;

use anyhow::Context;

use super::bundle::size;
use super::SnapshotCommand;
use crate::config;
use crate::etcd::snapshot::{self, Kind, Listed};
use crate::host::paths::Paths;

pub fn run(paths: &Paths, cmd: SnapshotCommand) -> anyhow::Result<i32> {
    match cmd {
        SnapshotCommand::Save { dir } => {
            let c = config::load_installed(&paths.config_file())?
                .with_context(|| format!("hakube is not installed under {}", paths.root().display()))?;
            anyhow::ensure!(
                c.has(config::Component::Etcd),
                "this node runs no etcd member: take the snapshot on a master"
            );
            let dir = dir.unwrap_or_else(|| paths.snapshot_dir());
            let started = std::time::Instant::now();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let now = crate::host::clock::now_secs();
            let (path, r) = rt.block_on(snapshot::save(paths, &c, &dir, Kind::Manual, now))?;
            println!(
                "saved {} ({}, revision {}, sha256 {}) in {:.1}s",
                path.display(),
                size(r.size),
                r.revision,
                r.sha256,
                started.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        SnapshotCommand::List { dir, json } => {
            let dir = dir.unwrap_or_else(|| paths.snapshot_dir());
            let listed = snapshot::list(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                print!("{}", render(&dir, &listed));
            }
            Ok(0)
        }
        SnapshotCommand::Verify { file } => {
            let r = snapshot::verify(&file)?;
            println!(
                "{}: whole ({}, sha256 {}), revision {} of cluster {}, taken on {} at {}",
                file.display(),
                size(r.size),
                r.sha256,
                r.revision,
                r.cluster,
                r.node,
                r.taken_at_text
            );
            Ok(0)
        }
    }
}

fn render(dir: &Path, listed: &[Listed]) -> String {
    if listed.is_empty() {
        return format!("no snapshots in {}\n", dir.display());
    }
    let mut out = format!("{:<44} {:<21} {:<9} {:>10} {:>9}  STATUS\n", "FILE", "TAKEN", "KIND", "SIZE", "REVISION");
    for l in listed {
        let name = l.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (taken, kind, bytes, rev) = match &l.record {
            Some(r) => (
                r.taken_at_text.clone(),
                match r.kind {
                    Kind::Scheduled => "scheduled",
                    Kind::Manual => "manual",
                },
                size(r.size),
                r.revision.to_string(),
            ),
            None => ("-".into(), "-", "-".into(), "-".into()),
        };
        let status = l.problem.as_deref().unwrap_or("ok");
        out.push_str(&format!("{name:<44} {taken:<21} {kind:<9} {bytes:>10} {rev:>9}  {status}\n"));
    }
    out.push_str(&format!("in {} (`hakube etcd snapshot verify FILE` reads one through)\n", dir.display()));
    out
}
