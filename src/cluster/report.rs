//! What a master sees of etcd and the cluster right now, read for
//! `hakube status`, `hakube check` and the agent's metrics alike: one
//! reading, three views of it.

use std::time::Duration;

use serde::Serialize;

use crate::config::ClusterConfig;
use crate::etcd::{self, membership, Member};
use crate::host::paths::Paths;

#[derive(Debug, Serialize)]
pub struct ClusterReport {
    /// The elected leader of the masters' agents.
    pub leader: Option<String>,
    pub settings: Option<crate::config::ClusterSpec>,
    pub settings_revision: i64,
    pub settings_written_by: String,
    /// Every registered node, with its last heartbeat and the settings
    /// revision it runs.
    pub nodes: Vec<crate::cluster::registry::NodeRecord>,
    /// Nodes not yet on the current settings revision.
    pub not_converged: Vec<String>,
    /// What the leader last saw of the nodes (lost, purge due, held back).
    pub purge: Option<crate::cluster::purge::View>,
    /// The last purges, newest first.
    pub purged: Vec<crate::cluster::purge::Purge>,
    /// A change of the load-balancer address under way, as the leader last
    /// saw each master's part in it.
    pub load_balancer_change: Option<crate::cluster::lbchange::Progress>,
    /// The upgrade under way, or the last one.
    pub upgrade: Option<crate::cluster::upgrade::record::Upgrade>,
    /// Who holds the virtual IP (when the cluster has one) and since when.
    /// Who holds each virtual IP the masters float (two while the
    /// cluster's moves).
    pub vip_holders: Vec<(std::net::Ipv4Addr, Option<crate::vip::Holder>)>,
}

#[derive(Debug, Serialize)]
pub struct EtcdReport {
    pub endpoint: String,
    pub healthy: bool,
    pub error: Option<String>,
    pub members: Vec<MemberReport>,
    pub voters: usize,
    pub quorum: usize,
    /// How many voting members may fail with the cluster still writable.
    pub failures_tolerated: usize,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct MemberReport {
    #[serde(flatten)]
    pub member: Member,
    pub started: bool,
    /// Learners are not probed (they serve no linearizable reads).
    pub healthy: Option<bool>,
    pub error: Option<String>,
}

/// The add-ons' workloads, and whether `ha` has the nodes it wants for
/// The admin client, talking to this master's own API server only (what
/// it reads is what this master serves), each call bounded by `timeout`.
pub fn own_api_server(
    paths: &Paths,
    c: &ClusterConfig,
    timeout: Duration,
) -> Result<crate::kube::client::KubeClient, String> {
    let client =
        crate::kube::client::KubeClient::from_kubeconfig(&paths.kubeconfig("admin")).map_err(|e| e.to_string())?;
    let at = crate::config::HostPort::new(crate::config::Host::Ip(c.node.advertise_address), c.node.api_server_port);
    Ok(client.with_servers(vec![at]).with_timeout(timeout))
}

/// CoreDNS, through this master's own API server (bounded).
pub async fn probe_addons(paths: &Paths, c: &ClusterConfig) -> (Vec<crate::addons::AddonStatus>, Vec<String>) {
    use crate::kube::objects::{self, List, Node};
    let client = match own_api_server(paths, c, Duration::from_secs(3)) {
        Ok(k) => k,
        Err(e) => return (vec![], vec![format!("cannot read the add-ons: {e}")]),
    };
    let gathered = async {
        let addons = crate::addons::status(&client).await;
        let mut warnings: Vec<String> =
            addons.iter().filter(|a| !a.is_ready()).map(|a| format!("add-on {}: {}", a.name, a.message)).collect();
        if c.cluster.ha {
            if let Ok(nodes) = client.get::<List<Node>>("the nodes", objects::nodes_path()).await {
                let n = crate::addons::count_schedulable(&nodes.items);
                if n < 3 {
                    warnings.push(format!(
                        "ha: CoreDNS runs {} replica(s) on {n} schedulable node(s); ha wants 3 on distinct nodes",
                        crate::addons::coredns_replicas(true, n)
                    ));
                }
            }
        }
        (addons, warnings)
    };
    match tokio::time::timeout(Duration::from_secs(10), gathered).await {
        Ok(r) => r,
        Err(_) => (vec![], vec!["the API server did not say within 10s how the add-ons are".into()]),
    }
}

pub async fn probe_cluster(paths: &Paths, c: &ClusterConfig) -> Result<ClusterReport, String> {
    let (mut client, endpoint) =
        etcd::Local::connect(paths, c, Duration::from_secs(3)).await.map_err(|e| e.to_string())?;
    let leader = crate::cluster::election::leader(&mut client, &endpoint).await.map_err(|e| e.to_string())?;
    let settings = crate::cluster::settings::read(&mut client, &endpoint).await.map_err(|e| e.to_string())?;
    let mut nodes = crate::cluster::registry::list(&mut client, &endpoint).await.map_err(|e| e.to_string())?;
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let revision = settings.as_ref().map(|s| s.revision).unwrap_or(0);
    let not_converged = nodes.iter().filter(|n| n.settings_revision != revision).map(|n| n.name.clone()).collect();
    let mut purge = crate::cluster::purge::read_view(&mut client, &endpoint).await.map_err(|e| e.to_string())?;
    if let Some(v) = purge.as_mut() {
        v.current = crate::cluster::purge::in_progress(&mut client, &endpoint).await.map_err(|e| e.to_string())?;
    }
    let mut purged = crate::cluster::purge::history(&mut client, &endpoint).await.map_err(|e| e.to_string())?;
    purged.reverse();
    purged.truncate(5);
    let load_balancer_change = match settings.as_ref().and_then(|s| s.spec.load_balancer_change.as_ref()) {
        Some(_) => crate::cluster::lbchange::read_progress(&mut client, &endpoint).await.map_err(|e| e.to_string())?,
        None => None,
    };
    let upgrade = crate::cluster::upgrade::record::read(&mut client, &endpoint).await.map_err(|e| e.to_string())?;
    let mut vip_holders = vec![];
    for vip in settings.as_ref().map(|s| crate::vip::floated(&s.spec)).unwrap_or_default() {
        vip_holders.push((vip, crate::vip::holder(&mut client, vip).await));
    }
    Ok(ClusterReport {
        vip_holders,
        upgrade,
        load_balancer_change,
        purge,
        purged,
        leader,
        settings_revision: revision,
        settings_written_by: settings.as_ref().map(|s| s.written_by.clone()).unwrap_or_default(),
        settings: settings.map(|s| s.spec),
        nodes,
        not_converged,
    })
}

pub async fn probe_etcd(paths: &Paths, c: &ClusterConfig) -> EtcdReport {
    let endpoint = c.etcd_client_url();
    let result = async {
        let creds = etcd::Credentials::load(paths, "etcd/healthcheck-client")?;
        let mut client = etcd::connect(std::slice::from_ref(&endpoint), &creds, Duration::from_secs(3)).await?;
        etcd::check_health(&mut client, &endpoint).await?;
        let members = etcd::members(&mut client, &endpoint).await?;
        let health = membership::voter_health(&members, &creds).await;
        Ok::<_, etcd::EtcdError>((members, health))
    }
    .await;
    let (members, health, healthy, error) = match result {
        Ok((m, h)) => (m, h, true, None),
        Err(e) => (vec![], vec![], false, Some(e.to_string())),
    };
    let members: Vec<MemberReport> = members
        .into_iter()
        .map(|m| {
            let probe = health.iter().find(|(h, _)| h.id == m.id).map(|(_, r)| r.clone());
            MemberReport {
                started: m.started(),
                healthy: probe.as_ref().map(membership::Probe::is_healthy),
                error: probe.and_then(|p| p.problem()),
                member: m,
            }
        })
        .collect();
    let voters = members.iter().filter(|m| !m.member.is_learner).count();
    let quorum = membership::quorum(voters);
    let mut warnings = vec![];
    if healthy && c.cluster.ha && voters < 3 {
        warnings.push(format!(
            "{voters} voting member(s): the cluster survives no failure; join masters until there are at least 3"
        ));
    } else if healthy && voters >= 2 && voters % 2 == 0 {
        warnings.push(format!(
            "{voters} voting members: an even count survives no more failures than {} would; join or remove one master",
            voters - 1
        ));
    }
    EtcdReport {
        endpoint,
        healthy,
        error,
        members,
        voters,
        quorum,
        failures_tolerated: voters.saturating_sub(quorum),
        warnings,
    }
}
