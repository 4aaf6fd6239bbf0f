//! `hakube status`: the node's components as the agent last saw them, and
//! etcd as this command sees it right now.

use std::time::Duration;

use serde::Serialize;

use crate::agent::state::{ComponentState, Phase, State};
use crate::config::{self, ClusterConfig, Component};
use crate::etcd::{self, Member};
use crate::host::paths::Paths;
use crate::host::process::PidFile;

#[derive(Debug, Serialize)]
pub struct Report {
    pub node: String,
    pub root: String,
    pub agent_pid: Option<u32>,
    pub components: Vec<(String, ComponentState)>,
    pub etcd: Option<EtcdReport>,
    pub healthy: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EtcdReport {
    pub endpoint: String,
    pub healthy: bool,
    pub error: Option<String>,
    pub members: Vec<Member>,
}

/// `status` exits with this when there is nothing installed to report on
/// (1 means installed but unhealthy).
pub const EXIT_NOT_INSTALLED: i32 = 3;

#[derive(Debug, thiserror::Error)]
#[error("hakube is not installed under {root}: no {file}")]
pub struct NotInstalled {
    pub root: String,
    pub file: String,
}

pub async fn gather(paths: &Paths) -> anyhow::Result<Report> {
    let c: ClusterConfig = config::load_installed(&paths.config_file())?.ok_or_else(|| NotInstalled {
        root: paths.root().display().to_string(),
        file: paths.config_file().display().to_string(),
    })?;
    let agent_pid = PidFile::holder(&paths.agent_pid_file());
    let state = State::read(&paths.state_file()).unwrap_or_default();
    let mut problems = vec![];
    if agent_pid.is_none() {
        problems.push(
            "the agent is not running: start it with `hakube install` (re-run) or `systemctl start hakube`".into(),
        );
    }
    let mut components = vec![];
    for comp in &c.node.components {
        match state.components.get(comp.name()) {
            Some(s) if agent_pid.is_some() => {
                if !(s.phase == Phase::Running && s.healthy) {
                    let why = s.message.as_deref().or(s.last_exit.as_deref()).unwrap_or("no details");
                    problems.push(format!("{comp} is {:?}: {why}", s.phase).to_lowercase());
                }
                components.push((comp.name().to_owned(), s.clone()));
            }
            _ => problems.push(format!("{comp} is not running")),
        }
    }
    let etcd = if c.has(Component::Etcd) { Some(probe_etcd(paths, &c).await) } else { None };
    if let Some(e) = &etcd {
        if !e.healthy {
            problems.push(format!("etcd at {} is unhealthy: {}", e.endpoint, e.error.as_deref().unwrap_or("")));
        }
    }
    Ok(Report {
        node: c.node.name.to_string(),
        root: paths.root().display().to_string(),
        agent_pid,
        components,
        etcd,
        healthy: problems.is_empty(),
        problems,
    })
}

async fn probe_etcd(paths: &Paths, c: &ClusterConfig) -> EtcdReport {
    let endpoint = c.etcd_client_url();
    let result = async {
        let creds = etcd::Credentials::load(paths, "etcd/healthcheck-client")?;
        let mut client = etcd::connect(std::slice::from_ref(&endpoint), &creds, Duration::from_secs(3)).await?;
        etcd::check_health(&mut client, &endpoint).await?;
        etcd::members(&mut client, &endpoint).await
    }
    .await;
    match result {
        Ok(members) => EtcdReport { endpoint, healthy: true, error: None, members },
        Err(e) => EtcdReport { endpoint, healthy: false, error: Some(e.to_string()), members: vec![] },
    }
}

pub fn render(r: &Report) -> String {
    let mut out = format!(
        "node {} (root {})\nagent: {}\n",
        r.node,
        r.root,
        r.agent_pid.map(|p| format!("running, pid {p}")).unwrap_or_else(|| "NOT RUNNING".into())
    );
    out.push_str("components:\n");
    for (name, s) in &r.components {
        out.push_str(&format!(
            "  {name:<24} {:<9} {:<10} pid {:<8} restarts {}\n",
            format!("{:?}", s.phase).to_lowercase(),
            if s.healthy { "healthy" } else { "unhealthy" },
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.restarts
        ));
    }
    if let Some(e) = &r.etcd {
        out.push_str(&format!("etcd {}: {}\n", e.endpoint, if e.healthy { "healthy" } else { "UNHEALTHY" }));
        for m in &e.members {
            out.push_str(&format!(
                "  member {:<20} {:<8} {:<8} {}\n",
                if m.name.is_empty() { "(unstarted)" } else { &m.name },
                if m.is_learner { "learner" } else { "voting" },
                if m.started() { "started" } else { "unstarted" },
                m.peer_urls.join(",")
            ));
        }
    }
    if r.healthy {
        out.push_str("status: healthy\n");
    } else {
        out.push_str("status: UNHEALTHY\n");
        for p in &r.problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out
}
