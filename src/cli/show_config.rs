//! `hakube config print`: the node's effective config, and where each value
//! comes from: the cluster-wide settings in etcd (a master reads them; this
//! host's `cluster.yaml` keeps a copy), the node-scoped file, or defaults.

use std::time::Duration;

use anyhow::Context as _;
use serde_norway::Value;

use crate::config::{self, ClusterConfig, Component};
use crate::host::paths::Paths;

/// Reads the record from this master's etcd, bounded.
fn record(paths: &Paths, c: &ClusterConfig) -> Result<Option<crate::cluster::settings::Settings>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (mut client, endpoint) =
            crate::etcd::Local::connect(paths, c, Duration::from_secs(3)).await.map_err(|e| e.to_string())?;
        crate::cluster::settings::read(&mut client, &endpoint).await.map_err(|e| e.to_string())
    })
}

/// Renders `tree` as YAML with `source(section, key)` as a comment on each
/// top-level key of a section (pure).
pub fn annotate(tree: &Value, source: impl Fn(&str, &str) -> String) -> String {
    let text = serde_norway::to_string(tree).expect("config serializes");
    let mut section = String::new();
    let width = text.lines().map(str::len).filter(|l| *l < 60).max().unwrap_or(40);
    text.lines()
        .map(|line| {
            if !line.starts_with(' ') {
                section = line.split(':').next().unwrap_or("").to_owned();
                return line.to_owned();
            }
            let key_line = line.starts_with("  ") && !line.starts_with("   ") && !line.trim_start().starts_with('-');
            match (key_line, line.trim_start().split_once(':')) {
                (true, Some((key, _))) => format!("{line:<width$}  # {}", source(&section, key)),
                _ => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

pub fn print(paths: &Paths) -> anyhow::Result<String> {
    let file = paths.config_file();
    let mut c = config::load_installed(&file)?
        .with_context(|| format!("hakube is not installed under {}: no {}", paths.root().display(), file.display()))?;
    let defaults = config::defaults();
    let mut header = format!("# effective config of node {} ({})\n", c.node.name, file.display());
    let cluster_source = if c.has(Component::Etcd) {
        match record(paths, &c) {
            Ok(Some(r)) => {
                let lag = if r.spec == c.cluster { "current" } else { "BEHIND: the agent has not converged yet" };
                header.push_str(&format!(
                    "# cluster: the cluster-wide settings in etcd, revision {} (written by {}); this host's copy is {lag}\n",
                    r.revision, r.written_by
                ));
                c.cluster = r.spec;
                format!("etcd, revision {}", r.revision)
            }
            Ok(None) => "this host's copy (etcd holds no settings record yet)".to_owned(),
            Err(e) => {
                header.push_str(&format!("# cluster: etcd did not answer ({e}); showing this host's copy\n"));
                "this host's copy (etcd unreachable)".to_owned()
            }
        }
    } else {
        "this host's copy (a worker learns the settings from the masters)".to_owned()
    };
    let tree = serde_norway::to_value(&c)?;
    let body = annotate(&tree, |section, key| match section {
        "cluster" => cluster_source.clone(),
        "node" if defaults.get("node").and_then(|n| n.get(key)) == tree.get("node").and_then(|n| n.get(key)) => {
            "default".to_owned()
        }
        "node" => file.display().to_string(),
        _ => String::new(),
    });
    Ok(header + &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_section_says_where_it_comes_from() {
        let c = crate::config::tests::test_config("cluster: {ha: true}");
        let tree = serde_norway::to_value(&c).unwrap();
        let text = annotate(&tree, |s, k| format!("{s}.{k}"));
        let ha = text.lines().find(|l| l.trim_start().starts_with("ha:")).unwrap();
        assert!(ha.ends_with("# cluster.ha"), "{ha}");
        let name = text.lines().find(|l| l.trim_start().starts_with("advertiseAddress:")).unwrap();
        assert!(name.ends_with("# node.advertiseAddress"), "{name}");
        // Nested lines carry no comment of their own.
        assert!(text.lines().filter(|l| l.trim_start().starts_with("- ")).all(|l| !l.contains('#')), "{text}");
    }
}
