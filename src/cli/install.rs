//! `hakube install`: the first master of a cluster, or a re-run that
//! converges an installed one onto new options.
//!
//! Phases: resolve the config (nothing written yet), lock the root, preflight,
//! plan every file (PKI, kubeconfigs, kubelet config, unit), write what
//! changed, start or reload the agent, wait until the node is healthy.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_yaml::Value;
use time::OffsetDateTime;

use crate::agent::control;
use crate::agent::state::State;
use crate::cluster::settings;
use crate::config::{self, ClusterConfig, ClusterSpec, Component, Sources};
use crate::host::clock::now_secs;
use crate::host::fs::{apply_files, FileChange};
use crate::host::paths::Paths;
use crate::host::{lock, net, systemd};
use crate::pki::{self, Decision};
use crate::preflight;
use crate::progress::Progress;

/// Everything `install` needs from the command line.
pub struct Request {
    pub paths: Paths,
    /// Options given on the command line, as a partial config tree.
    pub flags: Value,
    pub config_file: Option<PathBuf>,
    pub ignore_preflight_errors: Vec<String>,
    pub timeout: Duration,
}

fn settings_client(paths: &Paths, c: &ClusterConfig) -> anyhow::Result<(tokio::runtime::Runtime, etcd_client::Client)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let creds = crate::etcd::Credentials::load(paths, "apiserver-etcd-client")?;
    let endpoint = c.etcd_client_url();
    let client = rt
        .block_on(crate::etcd::connect(std::slice::from_ref(&endpoint), &creds, Duration::from_secs(5)))
        .with_context(|| {
            format!("cannot reach this master's etcd at {endpoint} (is the agent running? `hakube status`)")
        })?;
    Ok((rt, client))
}

fn read_settings(paths: &Paths, c: &ClusterConfig) -> anyhow::Result<Option<settings::Settings>> {
    let (rt, mut client) = settings_client(paths, c)?;
    Ok(rt.block_on(settings::read(&mut client, &c.etcd_client_url()))?)
}

/// Compare-and-swap on the revision read: a concurrent change by another
/// master's install is a conflict, told, not overwritten.
fn write_settings(paths: &Paths, c: &ClusterConfig, expected: i64) -> anyhow::Result<i64> {
    let (rt, mut client) = settings_client(paths, c)?;
    let by = c.node.name.as_str();
    Ok(rt.block_on(settings::write(&mut client, &c.etcd_client_url(), &c.cluster, expected, by, now_secs()))?)
}

/// Merges the sources into the config to install (writes nothing). On a
/// re-run, `cluster` is the cluster-wide settings as etcd has them: the
/// options given apply over those, not over this host's copy.
pub fn resolve_config(
    paths: &Paths,
    flags: Value,
    config_file: Option<&PathBuf>,
    cluster: Option<&ClusterSpec>,
) -> anyhow::Result<ClusterConfig> {
    let file = match config_file {
        Some(path) => {
            let v = config::read_file(path)?.with_context(|| format!("--config {}: no such file", path.display()))?;
            Some((v, path.display().to_string()))
        }
        None => None,
    };
    let mut installed = config::read_file(&paths.config_file())?;
    if let (Some(Value::Mapping(tree)), Some(spec)) = (installed.as_mut(), cluster) {
        tree.insert("cluster".into(), serde_yaml::to_value(spec)?);
    }
    Ok(config::resolve(Sources {
        installed,
        file,
        flags,
        detect_name: &net::detect_name,
        detect_address: &net::detect_address,
    })?)
}

pub fn run(req: Request) -> anyhow::Result<()> {
    let progress = Progress::new("install");
    let paths = &req.paths;
    let _lock = lock::lock_root(paths.root())?;
    // A re-run: the cluster-wide settings are the record in etcd. Without
    // etcd (this master's agent is down), the options may only restate
    // this host's copy: a change needs the record.
    let installed = config::load_installed(&paths.config_file())?;
    let mut unreachable = None;
    let record = match &installed {
        Some(i) if i.has(Component::Etcd) => {
            match progress.phase("reading the cluster-wide settings", || read_settings(paths, i)) {
                Ok(r) => r,
                Err(e) => {
                    unreachable = Some(e);
                    None
                }
            }
        }
        _ => None,
    };
    let c = resolve_config(paths, req.flags, req.config_file.as_ref(), record.as_ref().map(|r| &r.spec))?;
    if let (Some(e), Some(i)) = (unreachable, &installed) {
        if c.cluster != i.cluster {
            return Err(e.context("the cluster-wide settings live in etcd, which must answer to change them"));
        }
        progress.note(format!("  going on with this host's copy of the cluster-wide settings ({e:#})"));
    }
    if !c.has(Component::Etcd) {
        bail!("install sets up a master, which runs etcd: add etcd to --components (workers join with `hakube node-join-script`)");
    }
    let use_systemd =
        systemd::decide(paths.is_host_root(), c.node.systemd, systemd::is_running()).map_err(anyhow::Error::msg)?;
    if c.node.systemd && !use_systemd {
        progress.note(
            "systemd is not running on this host: the agent starts detached and will not come back after a reboot \
             (pass --no-systemd to make that explicit)",
        );
    }

    progress.phase("preflight checks", || {
        for f in preflight::enforce(paths, &c, &req.ignore_preflight_errors)? {
            progress.note(format!("ignored preflight error [{}]: {}", f.name, f.message));
        }
        anyhow::Ok(())
    })?;

    if let Some(r) = &record {
        if r.spec != c.cluster {
            // For the tests of concurrent re-runs: hold the window between
            // reading the record and writing it open.
            if std::env::var("HAKUBE_FAULT").as_deref() == Ok("slow-settings-write") {
                std::thread::sleep(Duration::from_secs(3));
            }
            let rev = progress.phase("changing the cluster-wide settings", || write_settings(paths, &c, r.revision))?;
            progress.note(format!("  revision {rev}: every node converges on it (`hakube status` shows which have)"));
        }
    }
    let plan = progress.phase("planning certificates and files", || crate::files::plan(paths, &c, use_systemd))?;
    for (name, d) in plan.decisions.iter().filter(|(_, d)| *d != Decision::Keep) {
        progress.note(format!("  {name}: {d}"));
    }
    let changes = progress.phase("writing files", || -> anyhow::Result<_> {
        crate::host::fs::create_dir_all(&paths.data_dir(), 0o755)?;
        crate::host::fs::create_dir_all(&paths.pki_dir(), 0o700)?;
        if c.has(Component::Etcd) {
            crate::host::fs::create_dir_all(&paths.etcd_data_dir(), 0o700)?;
        }
        apply_files(&plan.backups)?;
        Ok(apply_files(&plan.files)?)
    })?;
    let changed = changes.iter().filter(|(_, ch)| *ch != FileChange::Unchanged).count();
    progress.note(format!("{changed} of {} files written, the rest already current", changes.len()));

    let expect = progress.phase("starting the agent", || control::start(paths, use_systemd))?;
    let state = progress.phase("waiting for the node to become healthy", || {
        control::wait_healthy(paths, expect, req.timeout, &progress)
    })?;
    summary(&progress, paths, &c, &state, use_systemd);
    Ok(())
}

pub fn summary(progress: &Progress, paths: &Paths, c: &ClusterConfig, state: &State, use_systemd: bool) {
    let runs: Vec<_> = state
        .components
        .iter()
        .map(|(n, s)| format!("{n} (pid {}, {})", s.pid.unwrap_or(0), if s.healthy { "healthy" } else { "unhealthy" }))
        .collect();
    let runs = if runs.is_empty() { "no components (agent only)".to_owned() } else { runs.join(", ") };
    let how = if use_systemd { "systemd unit hakube.service" } else { "detached agent (no systemd)" };
    let root_flag = if paths.root() == std::path::Path::new("/") {
        String::new()
    } else {
        format!(" --root {}", paths.root().display())
    };
    let mut text = format!(
        "\nhakube: node {} is installed and healthy ({:.1}s)\n  runs:       {runs} under the {how} (agent pid {})\n  endpoint:   https://{}\n",
        c.node.name,
        progress.elapsed(),
        state.agent_pid,
        c.control_plane_endpoint(),
    );
    if paths.kubeconfig("admin").exists() {
        text.push_str(&format!("  kubeconfig: {}\n", paths.kubeconfig("admin").display()));
    }
    text.push_str(&format!(
        "  config:     {} (keep it in version control)\n  logs:       {}\nnext:\n  hakube{root_flag} status\n",
        paths.config_file().display(),
        paths.log_dir().display()
    ));
    if c.has(Component::Etcd) {
        text.push_str(&format!(
            "  hakube{root_flag} node-join-script --master --output join-master.sh   # then run it on each new master\n  \
             hakube{root_flag} node-join-script --output join-worker.sh            # then run it on each worker\n  \
             (the scripts hold secrets: they are written 0600)\n"
        ));
    }
    if c.cluster.ha && c.cluster.load_balancer_address.is_none() {
        text.push_str(
            "  (ha without load-balancer-address: clients reach the API through a single master until you add one)\n",
        );
    }
    eprint!("{text}");
}

/// `hakube certs generate`: the PKI alone, for the given options.
pub fn generate_certs(paths: &Paths, flags: Value, config_file: Option<&PathBuf>) -> anyhow::Result<()> {
    let progress = Progress::new("certs");
    let _lock = lock::lock_root(paths.root())?;
    let c = resolve_config(paths, flags, config_file, None)?;
    let plan = progress.phase("planning certificates", || pki::plan(paths, &c, OffsetDateTime::now_utc()))?;
    progress.phase("writing certificates", || -> anyhow::Result<()> {
        crate::host::fs::create_dir_all(&paths.pki_dir(), 0o700)?;
        apply_files(&plan.backups)?;
        apply_files(&plan.files)?;
        Ok(())
    })?;
    for (name, d) in &plan.decisions {
        progress.note(format!("  {name}: {d}"));
    }
    Ok(())
}

/// `hakube certs check-expiration`: every certificate and when it expires.
pub fn check_expiration(paths: &Paths) -> anyhow::Result<String> {
    let c = config::load_installed(&paths.config_file())?
        .with_context(|| format!("hakube is not installed under {}", paths.root().display()))?;
    let now = OffsetDateTime::now_utc();
    let mut out = format!("{:<32} {:<12} {:>9}  {}\n", "CERTIFICATE", "EXPIRES", "DAYS LEFT", "STATUS");
    for spec in pki::cluster_cert_specs(&c) {
        let path = paths.pki(&format!("{}.crt", spec.name));
        let line = match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| pki::observe(&b, None)) {
            Ok(o) => {
                let days = (o.not_after - now).whole_days();
                let status = if days < 0 {
                    "EXPIRED"
                } else if o.not_after - now < pki::RENEW_BEFORE {
                    "renew soon: re-run install"
                } else {
                    "ok"
                };
                format!("{:<32} {:<12} {:>9}  {status}\n", spec.name, o.not_after.date().to_string(), days)
            }
            Err(e) => format!("{:<32} {:<12} {:>9}  MISSING or unreadable: {e}\n", spec.name, "-", "-"),
        };
        out.push_str(&line);
    }
    Ok(out)
}
