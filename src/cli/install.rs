//! `hakube install`: the first master of a cluster, or a re-run that
//! converges an installed one onto new options.
//!
//! Phases: resolve the config (nothing written yet), lock the root, preflight,
//! plan every file (PKI, kubeconfigs, kubelet config, unit), write what
//! changed, start or reload the agent, wait until the node is healthy.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_norway::Value;
use time::OffsetDateTime;

use crate::agent::control;
use crate::agent::state::State;
use crate::cluster::lbchange::{self, Ask};
use crate::cluster::settings;
use crate::config::{self, ClusterConfig, ClusterSpec, Component, HostPort, InitialClusterState, LbPhase, Sources};
use crate::host::clock::now_secs;
use crate::host::fs::{apply_files, FileChange};
use crate::host::paths::Paths;
use crate::host::{lock, net, systemd};
use crate::pki::{self, Decision};
use crate::preflight;
use crate::progress::Progress;

/// How long a re-run follows an upgrade at least: every node restarts its
/// part in turn, each waited on until healthy.
const UPGRADE_WAIT: Duration = Duration::from_secs(1800);

/// Everything `install` needs from the command line.
pub struct Request {
    pub paths: Paths,
    /// Options given on the command line, as a partial config tree.
    pub flags: Value,
    pub config_file: Option<PathBuf>,
    pub ignore_preflight_errors: Vec<String>,
    pub timeout: Duration,
    /// The cluster-wide settings of a restored snapshot, for a first master
    /// made by `hakube etcd restore` (its etcd data is in place already).
    pub restored: Option<ClusterSpec>,
}

pub(crate) fn settings_client(
    paths: &Paths,
    c: &ClusterConfig,
) -> anyhow::Result<(tokio::runtime::Runtime, etcd_client::Client)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (client, _) =
        rt.block_on(crate::etcd::Local::connect(paths, c, Duration::from_secs(5))).with_context(|| {
            format!(
                "cannot reach this master's etcd at {} (is the agent running? `hakube status`)",
                c.etcd_client_url()
            )
        })?;
    Ok((rt, client))
}

fn read_settings(paths: &Paths, c: &ClusterConfig) -> anyhow::Result<Option<settings::Settings>> {
    let (rt, mut client) = settings_client(paths, c)?;
    Ok(rt.block_on(settings::read(&mut client, &c.etcd_client_url()))?)
}

/// Compare-and-swap on the revision read: a concurrent change by another
/// master's install is a conflict, told, not overwritten.
fn write_settings(paths: &Paths, c: &ClusterConfig, base: &settings::Settings) -> anyhow::Result<i64> {
    let (rt, mut client) = settings_client(paths, c)?;
    let by = c.node.name.as_str();
    let base = Some(base).filter(|b| b.revision != 0);
    Ok(rt.block_on(settings::write(&mut client, &c.etcd_client_url(), &c.cluster, base, by, now_secs()))?)
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
    if let Some(spec) = cluster {
        if let Value::Mapping(tree) = installed.get_or_insert_with(|| Value::Mapping(Default::default())) {
            tree.insert("cluster".into(), serde_norway::to_value(spec)?);
        }
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
    let lock = lock::lock_root_waiting(paths.root(), std::time::Duration::from_secs(5))?;
    // A re-run: the cluster-wide settings are the record in etcd. Without
    // etcd (this master's agent is down), the options may only restate
    // this host's copy: a change needs the record.
    let installed = config::load_installed(&paths.config_file())?;
    let mut unreachable = None;
    let record = match &installed {
        Some(i) if i.has(Component::Etcd) => {
            match progress.phase("reading the cluster-wide settings", || read_settings(paths, i)) {
                // Not founded yet (the agent founds it from this host's
                // copy): this install founds it instead, from the same copy.
                Ok(r) => r.or_else(|| {
                    Some(settings::Settings {
                        spec: i.cluster.clone(),
                        revision: 0,
                        written_by: String::new(),
                        written_at: 0,
                        unknown: vec![],
                    })
                }),
                Err(e) => {
                    unreachable = Some(e);
                    None
                }
            }
        }
        _ => None,
    };
    let lb_given = config::names_load_balancer(&req.flags);
    let cluster = record.as_ref().map(|r| &r.spec).or(req.restored.as_ref());
    let mut c = resolve_config(paths, req.flags, req.config_file.as_ref(), cluster)?;
    // A change of the load-balancer address under way is the record's (or,
    // without etcd, this host's copy's): options never set it.
    c.cluster.load_balancer_change = match (&record, &installed) {
        (Some(r), _) => r.spec.load_balancer_change.clone(),
        (None, Some(i)) => i.cluster.load_balancer_change.clone(),
        (None, None) => None,
    };
    let mut lb_ask = match &record {
        Some(r) => lbchange::ask(
            r.spec.load_balancer_address.as_ref(),
            r.spec.load_balancer_change.as_ref(),
            c.cluster.load_balancer_address.as_ref(),
            lb_given,
            c.node.name.as_str(),
            now_secs(),
        )
        .map_err(anyhow::Error::msg)?,
        None => Ask::Nothing,
    };
    match (&mut lb_ask, &record) {
        (Ask::Start(ch), Some(r)) => {
            // The address in force (and the virtual IP in force) stay until
            // every master's certificate names the new one; the elected
            // agent takes it from here. The masters hold both virtual IPs
            // while the change is under way.
            if r.spec.vip != c.cluster.vip {
                ch.from_vip = r.spec.vip;
                ch.to_vip = c.cluster.vip;
            }
            c.cluster.load_balancer_address = ch.from.clone();
            c.cluster.vip = r.spec.vip;
            c.cluster.load_balancer_change = Some(ch.clone());
        }
        (Ask::Join(ch), Some(r)) => {
            // The record says where the change stands.
            c.cluster.load_balancer_address = r.spec.load_balancer_address.clone();
            c.cluster.vip = r.spec.vip;
            progress.note(format!(
                "the change of the load-balancer address to {} is under way (phase {}): waiting for it",
                ch.to, ch.phase
            ))
        }
        (Ask::AlreadyThere, _) => progress.note(format!(
            "the load-balancer address is {} already: nothing to change",
            c.cluster.load_balancer_address.as_ref().map(ToString::to_string).unwrap_or_default()
        )),
        _ => {}
    }
    if let (Some(e), Some(i)) = (unreachable, &installed) {
        if c.cluster != i.cluster {
            return Err(e.context("the cluster-wide settings live in etcd, which must answer to change them"));
        }
        progress.note(format!("  going on with this host's copy of the cluster-wide settings ({e:#})"));
    }
    if !c.has(Component::Etcd) {
        bail!("install sets up a master, which runs etcd: add etcd to --components (workers join with `hakube node-join-script`)");
    }
    // A bundle file: unpacked (once) under the data directory, and the
    // directory is the node's bundle from here on.
    // A key checks bundle files (a directory unpacked from one was checked
    // then); a directory given by hand carries no signature.
    let unpacked = paths.bundles_dir();
    match (&c.node.bundle, &c.node.bundle_key) {
        (Some(file), key) if file.is_file() => {
            let file = file.clone();
            let dir = progress.phase(&format!("unpacking {}", file.display()), || {
                crate::agent::unpack::unpack(paths, &file, key.as_deref(), &progress)
            })?;
            c.node.bundle = Some(dir);
        }
        (Some(dir), Some(key)) if !dir.starts_with(&unpacked) => bail!(
            "bundle-key {} checks bundle files, and {} is a directory: give the signed bundle file",
            key.display(),
            dir.display()
        ),
        _ => {}
    }
    // Another bundle on a master of a running cluster: the whole cluster
    // moves to it, driven by the elected agent, so this node does not move
    // by itself here.
    let upgrade = match (&installed, &record) {
        (Some(i), Some(_)) => match crate::cli::upgrade::target(i, c.node.bundle.as_deref())? {
            Some(t) => {
                let what = format!("checking the upgrade to Kubernetes {} (bundle {})", t.version, t.id);
                let checked = progress.phase(&what, || crate::cli::upgrade::check(paths, i, &t))?;
                c.node.bundle = i.node.bundle.clone();
                c.node.control_plane_bundle = i.node.control_plane_bundle.clone();
                Some((t, checked))
            }
            None => None,
        },
        _ => None,
    };
    let use_systemd =
        systemd::decide(paths.is_host_root(), c.node.systemd, systemd::is_running()).map_err(anyhow::Error::msg)?;
    if c.node.systemd && !use_systemd {
        progress.note(
            "systemd is not running on this host: the agent starts detached and will not come back after a reboot \
             (pass --no-systemd to make that explicit)",
        );
    }

    if crate::host::process::PidFile::holder(&paths.agent_pid_file()).is_none() {
        // An agent that died outright may have left components running,
        // holding their ports: the next agent stops them, and so do we,
        // before the ports are checked.
        control::stop_leftovers(paths, &[]);
    }
    progress.phase("preflight checks", || {
        let mut ignored = preflight::enforce(paths, &c, &req.ignore_preflight_errors)?;
        // A virtual IP about to be used: a new cluster's, or the one a
        // change moves to. Nobody may answer for it yet.
        let new_vip = match &lb_ask {
            Ask::Start(ch) => ch.to_vip,
            _ if installed.is_none() && record.is_none() => c.cluster.vip,
            _ => None,
        };
        if let Some(vip) = new_vip {
            let free = preflight::vip_free(vip, c.node.advertise_address);
            let (fatal, waived) = preflight::triage(free, &req.ignore_preflight_errors);
            if !fatal.is_empty() {
                return Err(preflight::PreflightFailed(fatal).into());
            }
            ignored.extend(waived);
        }
        // A new balancer must already reach this cluster; a new virtual IP
        // cannot until the masters hold it (the change waits for that).
        if let (Ask::Start(ch), None) = (&lb_ask, new_vip) {
            let ca =
                std::fs::read(paths.pki("ca.crt")).with_context(|| format!("{}", paths.pki("ca.crt").display()))?;
            let (fatal, waived) =
                preflight::triage(preflight::load_balancer(&ch.to, &ca), &req.ignore_preflight_errors);
            if !fatal.is_empty() {
                return Err(preflight::PreflightFailed(fatal).into());
            }
            ignored.extend(waived);
        }
        for w in preflight::warnings(&c) {
            progress.note(format!("warning: {w}"));
        }
        for f in ignored {
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
            let rev = progress.phase("changing the cluster-wide settings", || write_settings(paths, &c, r))?;
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
    if record.is_none() && c.has(Component::Etcd) && c.node.etcd.initial_cluster_state == InitialClusterState::New {
        // The first master's agent founds the cluster's records once etcd
        // answers; a join right after install must find them.
        progress.phase("waiting for the cluster's records", || wait_founded(paths, &c, req.timeout))?;
    }
    let mut lock = Some(lock);
    if let Ask::Start(ch) | Ask::Join(ch) = &lb_ask {
        // This host's agent converges on the later phases itself: the root
        // is not ours to hold while it does.
        lock.take();
        progress.phase(&format!("changing the load-balancer address to {}", ch.to), || {
            wait_lb_change(paths, &c, &ch.to, req.timeout, &progress)
        })?;
        c = config::load_installed(&paths.config_file())?.unwrap_or(c);
    }
    if let Some((t, checked)) = upgrade {
        use crate::cli::upgrade::Checked;
        match checked {
            Checked::Start => progress.phase("recording the upgrade (after a snapshot of etcd)", || {
                crate::cli::upgrade::start(paths, &c, &t, &progress)
            })?,
            Checked::Running(up) => progress.note(format!(
                "the upgrade to {} is under way already (started by {}): following it",
                up.version, up.started_by
            )),
        }
        // Every agent, this one too, moves its own node.
        lock.take();
        let limit = req.timeout.max(UPGRADE_WAIT);
        progress.phase(&format!("upgrading the cluster to Kubernetes {}", t.version), || {
            crate::cli::upgrade::wait(paths, &c, &t, limit, &progress)
        })?;
        c = config::load_installed(&paths.config_file())?.unwrap_or(c);
    }
    drop(lock);
    summary(&progress, paths, &c, &state, use_systemd);
    Ok(())
}

/// Waits until the first master's agent has recorded the cluster-wide
/// settings and this master in the node registry: a node that joins or a
/// worker that asks for the cluster right after install is told both.
fn wait_founded(paths: &Paths, c: &ClusterConfig, limit: Duration) -> anyhow::Result<()> {
    let (rt, mut client) = settings_client(paths, c)?;
    let endpoint = c.etcd_client_url();
    let name = c.node.name.as_str();
    let founded = crate::retry::Retry::within(limit, Duration::from_millis(200)).run_blocking(|| {
        let missing = rt.block_on(async {
            let mut missing = Vec::new();
            if settings::read(&mut client, &endpoint).await.map_err(|e| e.to_string())?.is_none() {
                missing.push("the cluster-wide settings".to_owned());
            }
            if crate::cluster::registry::get(&mut client, &endpoint, name).await.map_err(|e| e.to_string())?.is_none() {
                missing.push(format!("{name} in the node registry"));
            }
            Ok::<_, String>(missing)
        });
        match missing {
            Ok(m) if m.is_empty() => Ok(()),
            Ok(m) => Err(crate::retry::Failure::Again(format!("not recorded yet: {}", m.join(", ")))),
            Err(e) => Err(crate::retry::Failure::Again(format!("etcd did not answer: {e}"))),
        }
    });
    founded.map_err(|why| {
        anyhow::anyhow!(
            "the agent did not record the cluster within {}s ({why}); see {}",
            limit.as_secs(),
            paths.component_log("agent").display()
        )
    })
}

/// Follows a change of the load-balancer address, which the elected agent
/// drives, until it is complete: prints each master's part as it changes;
/// on timeout, names the masters that hold it up.
fn wait_lb_change(
    paths: &Paths,
    c: &ClusterConfig,
    to: &HostPort,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<()> {
    let (rt, mut client) = settings_client(paths, c)?;
    let endpoint = c.etcd_client_url();
    let deadline = std::time::Instant::now() + timeout;
    let mut told: std::collections::BTreeMap<String, String> = Default::default();
    let mut last: Option<lbchange::Progress> = None;
    // Phases go one way: a poll that finds a later one (or none) has seen
    // the earlier ones confirmed, even those it did not catch under way.
    let mut unreported = Some(LbPhase::AddName);
    let mut phases_done = |now: Option<LbPhase>| {
        while let Some(p) = unreported.filter(|p| now.is_none_or(|n| *p < n)) {
            progress.note(format!("  phase {p} done on every master that is up: {}", p.what()));
            unreported = p.next();
        }
    };
    let mut said_unanswered = false;
    loop {
        let read = rt.block_on(async {
            let record = settings::read(&mut client, &endpoint).await?;
            let at = lbchange::read_progress(&mut client, &endpoint).await?;
            anyhow::Ok((record, at))
        });
        // The elected agent drives the change, not this process: etcd not
        // answering for a while (no quorum while masters restart) is no
        // reason to stop following it.
        let (record, at) = match read {
            Ok(r) => {
                said_unanswered = false;
                r
            }
            Err(e) if std::time::Instant::now() < deadline => {
                if !said_unanswered {
                    progress.note(format!("  etcd does not answer ({e:#}); the change waits for it: asking again"));
                    said_unanswered = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => bail!(
                "cannot follow the load-balancer address change to {to}: etcd did not answer ({e:#}). The change is \
                 recorded and the elected agent goes on with it once etcd has a quorum: re-run the same install to \
                 follow it, or `hakube status`"
            ),
        };
        let Some(record) = record else { bail!("the cluster-wide settings record is gone from etcd") };
        match &record.spec.load_balancer_change {
            None if record.spec.load_balancer_address.as_ref() == Some(to) => {
                phases_done(None);
                progress.note(format!("  every master serves {to}; the old name is dropped"));
                return Ok(());
            }
            None => bail!(
                "the load-balancer address is {} and no change is under way: another install changed it meanwhile",
                record.spec.load_balancer_address.as_ref().map(ToString::to_string).unwrap_or_else(|| "none".into())
            ),
            Some(ch) if &ch.to != to => bail!("another change of the load-balancer address, to {}, took over", ch.to),
            Some(ch) => phases_done(Some(ch.phase)),
        }
        if let Some(p) = &at {
            for m in &p.masters {
                let line = format!("{}: {}", p.change.phase, m.state);
                if told.get(&m.name) != Some(&line) {
                    progress.note(format!("  {:<12} {line}", m.name));
                    told.insert(m.name.clone(), line);
                }
            }
            if let Some(w) = &p.waiting {
                let line = format!("{}: waiting: {w}", p.change.phase);
                if told.get("") != Some(&line) {
                    progress.note(format!("  {line}"));
                    told.insert(String::new(), line);
                }
            }
            last = at;
        }
        if std::time::Instant::now() >= deadline {
            let holding: Vec<String> = last
                .iter()
                .flat_map(|p| &p.masters)
                .filter(|m| !matches!(m.state, lbchange::Confirm::Done(_)))
                .map(|m| format!("{} ({})", m.name, m.state))
                .collect();
            bail!(
                "the load-balancer address change to {to} is not complete after {}s; held up by: {}. The elected \
                 agent keeps driving it: `hakube status` shows where it stands",
                timeout.as_secs(),
                if holding.is_empty() { "no master reported yet".to_owned() } else { holding.join(", ") }
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
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
        text.push_str(&format!(
            "  (ha without load-balancer-address: every node reaches the API servers through its node-local \
             balancer at {}; for clients outside the cluster, add one with load-balancer-address=HOST:PORT)\n",
            c.local_lb_endpoint()
        ));
    }
    eprint!("{text}");
}

/// `hakube certs generate`: the PKI alone, for the given options.
pub fn generate_certs(paths: &Paths, flags: Value, config_file: Option<&PathBuf>) -> anyhow::Result<()> {
    let progress = Progress::new("certs");
    let _lock = lock::lock_root_waiting(paths.root(), std::time::Duration::from_secs(5))?;
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
