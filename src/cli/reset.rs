//! `hakube reset`: stop the agent and its components and remove everything
//! install created under the root; nothing outside it.

use std::path::Path;
use std::time::Duration;

use crate::agent::state::State;
use crate::host::paths::Paths;
use crate::host::process::{self, PidFile};
use crate::host::{lock, systemd};
use crate::progress::Progress;

pub fn run(paths: &Paths, force: bool) -> anyhow::Result<()> {
    let progress = Progress::new("reset");
    let _lock = lock::lock_root_waiting(paths.root(), std::time::Duration::from_secs(5))?;
    // While this process has one thread (see host::mountns).
    crate::host::mountns::enter_for_cgroups(paths)?;
    if let Err(e) = progress.phase("leaving the etcd cluster", || leave_etcd(paths)) {
        if !force {
            anyhow::bail!("{e:#}\nnothing was changed; to reset anyway: hakube reset --force");
        }
        progress.note(format!("going on anyway (--force): {e:#}"));
    }

    if paths.is_host_root() && paths.systemd_unit().exists() && systemd::is_running() {
        progress.phase("stopping hakube.service", || {
            systemd::systemctl(&["disable", "--now", systemd::UNIT_NAME]).map_err(anyhow::Error::msg)
        })?;
    }
    progress.phase("stopping the agent and its components", || -> anyhow::Result<()> {
        let state = State::read(&paths.state_file());
        if let Some(pid) = PidFile::holder(&paths.agent_pid_file()) {
            // The agent stops its children (10 s grace each, in parallel).
            if process::terminate(pid, Duration::from_secs(20)) {
                progress.note(format!("the agent (pid {pid}) did not stop in time and was killed"));
            }
        }
        // Children of an agent that died uncleanly: stop any still alive,
        // checking the pid still runs the component (pids are reused).
        for (name, s) in state.iter().flat_map(|s| s.components.iter()) {
            if let Some(pid) = s.pid {
                if runs_binary(pid, name) {
                    process::terminate(pid, Duration::from_secs(10));
                }
            }
        }
        for left in crate::runtime::pods::stop_all(paths) {
            progress.note(format!("could not remove cgroup {left}"));
        }
        Ok(())
    })?;
    progress.phase("removing kube-proxy's rules", || remove_proxy_rules(paths))?;
    progress.phase("removing files", || -> anyhow::Result<()> {
        let mut created = paths.created_by_install();
        if paths.installed_binary_marker().exists() {
            created.push(paths.installed_binary());
        }
        for path in created {
            remove(&path)?;
            // On a real server the parents (/etc, /usr/local/bin, …) are the
            // system's; under a sandbox root they were made by install.
            if paths.root() != Path::new("/") {
                prune_empty_parents(&path, paths.root());
            }
        }
        Ok(())
    })?;
    if paths.is_host_root() && systemd::is_running() {
        let _ = systemd::systemctl(&["daemon-reload"]);
    }
    // The snapshots are the cluster's backups: a reset (perhaps of the last
    // master, perhaps by mistake) never takes them.
    let kept = crate::etcd::snapshot::list(&paths.snapshot_dir()).map(|l| l.len()).unwrap_or_default();
    if kept > 0 {
        progress.note(format!(
            "node reset: nothing of hakube is left under {} but its {kept} etcd snapshot(s) in {}, kept as \
             backups: delete them when no longer needed",
            paths.root().display(),
            paths.snapshot_dir().display()
        ));
    } else {
        progress.note(format!("node reset: nothing of hakube is left under {}", paths.root().display()));
    }
    Ok(())
}

/// kube-proxy's Service rules outlive it: its own `--cleanup` removes
/// them (iptables, and the nftables and ipvs modes' leftovers too), bounded.
fn remove_proxy_rules(paths: &Paths) -> anyhow::Result<()> {
    use crate::config::{self, Component};
    let Some(c) = config::load_installed(&paths.config_file())? else { return Ok(()) };
    if !c.has(Component::KubeProxy) {
        return Ok(());
    }
    let Some(binary) = crate::host::process::find_binary(paths, c.node.bundle.as_deref(), "kube-proxy") else {
        anyhow::bail!("no kube-proxy binary to remove its rules with: run `kube-proxy --cleanup` by hand");
    };
    let mut child = std::process::Command::new(&binary)
        .arg("--cleanup")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {} --cleanup: {e}", binary.display()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{} --cleanup did not finish within 60s", binary.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{} --cleanup failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        );
    }
    Ok(())
}

/// A master removes its own etcd member first, so the cluster does not keep
/// counting a voter that is gone (and refuses if that would cost quorum).
/// Through its own etcd while the agent runs it; else through the other
/// masters it knows, so that a dead or purged master can still be reset
/// cleanly.
fn leave_etcd(paths: &Paths) -> anyhow::Result<()> {
    use crate::config::{self, Component, Host, HostPort};
    use crate::etcd::{self, membership, Credentials};
    let Some(c) = config::load_installed(&paths.config_file())? else { return Ok(()) };
    if !c.has(Component::Etcd) {
        return Ok(());
    }
    if paths.purged_marker().exists() {
        eprintln!("[reset]   this master was purged: its etcd member was removed then");
        return Ok(());
    }
    let Ok(creds) = Credentials::load(paths, crate::etcd::CLIENT_CERT) else { return Ok(()) };
    let agent_runs = PidFile::holder(&paths.agent_pid_file()).is_some();
    // The other masters it last knew, then those it joined through.
    let others: Vec<String> = {
        let own = c.etcd_client_url();
        let mut v: Vec<String> = crate::agent::masters::read(paths, &c)
            .into_iter()
            .map(|m| format!("https://{}", HostPort::new(Host::Ip(m.address), c.node.etcd_client_port)))
            .chain(c.node.etcd.join_endpoints.iter().cloned())
            .filter(|u| *u != own)
            .collect();
        let mut seen = std::collections::HashSet::new();
        v.retain(|u| seen.insert(u.clone()));
        v
    };
    let endpoints = if agent_runs { vec![c.etcd_client_url()] } else { others.clone() };
    if endpoints.is_empty() {
        eprintln!("[reset]   the only master this node knows is itself: no etcd cluster to leave");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut reached = None;
        for endpoint in &endpoints {
            if let Ok(client) =
                etcd::connect_with(std::slice::from_ref(endpoint), &creds, Duration::from_secs(3), None).await
            {
                reached = Some((endpoint, client));
                break;
            }
        }
        let Some((endpoint, mut client)) = reached else {
            anyhow::bail!(
                "{}, so this master cannot take its etcd member out of the cluster: start the agent \
                 (re-run `hakube install`, or `systemctl start hakube`)",
                if agent_runs {
                    format!("its etcd at {} does not answer", endpoints.join(", "))
                } else {
                    format!("the agent is not running and no other master's etcd answers ({})", endpoints.join(", "))
                }
            );
        };
        match tokio::time::timeout(
            Duration::from_secs(90),
            membership::leave(&mut client, endpoint, &creds, &c.etcd_peer_url()),
        )
        .await
        {
            Ok(Ok(Some(id))) => {
                let via = if agent_runs { String::new() } else { format!(" through {endpoint}") };
                eprintln!("[reset]   removed etcd member {id:x} ({}){via}", c.etcd_peer_url());
                // Out of the registry too, so that every node's balancer
                // drops it: through another master, since this one's etcd
                // stops serving once its member is removed.
                let key = format!("{}{}", crate::cluster::registry::NODE_PREFIX, c.node.name);
                let deleted = unregister(&others, &creds, &key).await;
                match deleted {
                    Ok(via) => {
                        eprintln!("[reset]   removed {} from the cluster's node registry (through {via})", c.node.name)
                    }
                    Err(e) => eprintln!(
                        "[reset]   warning: {} stays in the node registry ({e}): the elected agent purges it \
                         once it has been lost for lost-node-toleration",
                        c.node.name
                    ),
                }
                Ok(())
            }
            Ok(Ok(None)) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("cannot leave the etcd cluster: {e}")),
            Err(_) => Err(anyhow::anyhow!("cannot leave the etcd cluster: no answer within 90s")),
        }
    })
}

/// How long reset keeps trying to take its record out of the registry: the
/// member it just removed may have been etcd's leader, and the rest answer
/// writes only once they have elected another (a second or so, longer on a
/// loaded host).
const UNREGISTER_WITHIN: Duration = Duration::from_secs(30);

/// Deletes `key` through the first of `others` whose etcd takes the write,
/// trying them all again, once a second, while a new leader may be being
/// elected. Returns the endpoint that took it, or the last error of each.
async fn unregister(others: &[String], creds: &crate::etcd::Credentials, key: &str) -> Result<String, String> {
    if others.is_empty() {
        return Err("no other master is known".to_owned());
    }
    let mut said = false;
    crate::retry::Retry::within(UNREGISTER_WITHIN, Duration::from_secs(1))
        .run_noting(
            || async move {
                let mut errors = Vec::new();
                for other in others {
                    let attempt = async {
                        let mut client =
                            crate::etcd::connect_with(std::slice::from_ref(other), creds, Duration::from_secs(3), None)
                                .await
                                .map_err(|e| e.to_string())?;
                        client.delete(key, None).await.map(drop).map_err(|e| e.to_string())
                    };
                    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                        Ok(Ok(())) => return Ok(other.clone()),
                        Ok(Err(e)) => errors.push(format!("{other}: {e}")),
                        Err(_) => errors.push(format!("{other}: no answer within 5s")),
                    }
                }
                Err(crate::retry::Failure::Again(errors.join("; ")))
            },
            |_, _| {
                if !said {
                    eprintln!(
                        "[reset]   no other master's etcd took the registry change yet (it may be electing a \
                         leader); trying again for up to {}s",
                        UNREGISTER_WITHIN.as_secs()
                    );
                    said = true;
                }
            },
        )
        .await
}

fn runs_binary(pid: u32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
            Path::new(std::str::from_utf8(argv0).unwrap_or("")).file_name().is_some_and(|f| f == name)
        })
        .unwrap_or(false)
}

/// Removes `path`: first unmounts whatever is mounted below it (kubelet's
/// pod volumes, as kubeadm's reset does), then deletes without ever
/// crossing into another filesystem: a mount that could not be taken down
/// is left, with its content, and named.
fn remove(path: &Path) -> anyhow::Result<()> {
    for e in crate::host::mountns::unmount_below(path) {
        eprintln!("[reset] {e}");
    }
    crate::host::fs::remove_tree(path).map_err(anyhow::Error::from)
}

/// Removes directories left empty between `path` and `root` (exclusive).
fn prune_empty_parents(path: &Path, root: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}
