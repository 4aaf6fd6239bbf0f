//! The pod network, without images: each node's pods live on a bridge with
//! addresses from the node's `podCIDR` (controller-manager allocates it),
//! and each node routes every other node's `podCIDR` via that node's
//! address (host-gw: the nodes share one L2 network). Pods reach the world
//! through a masquerade of traffic leaving the cluster's pod network.
//!
//! The agent reads its Node and the others with the kubelet's identity,
//! renders the CNI config once the podCIDR is known (kubelet turns Ready
//! then), and keeps the routes current. Routes it owns carry their own
//! protocol number, so stale ones are found and removed without touching
//! any other route.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{Cidr, ClusterConfig};
use crate::host::fs::{apply_files, FileSpec};
use crate::host::paths::Paths;
use crate::kube::client::KubeClient;
use crate::kube::objects::{self, Node};
use crate::kube::watch::{Cache, Reflector};

/// The CNI network's name (host-local keeps its leases under it).
pub const NETWORK: &str = "hakube";
/// The bridge on every node.
pub const BRIDGE: &str = "hakube0";
/// The routing protocol number that marks the routes this agent owns
/// (`ip route show proto 77`); any number the kernel does not assign works.
pub const ROUTE_PROTO: &str = "77";
const MASQ_COMMENT: &str = "hakube: pod traffic leaving the cluster";

/// The node's CNI config (pure): bridge + host-local over its podCIDR,
/// portmap for hostPort.
pub fn cni_config(paths: &Paths, pod_cidr: &str) -> FileSpec {
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                // Masquerading is the agent's, for the cluster as a whole:
                // pods see each other's own addresses across nodes.
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    let text = serde_json::to_string_pretty(&conf).expect("JSON") + "\n";
    FileSpec::new(paths.cni_conf_dir().join("10-hakube.conflist"), text, 0o644)
}

/// Routes to the other nodes' pods: podCIDR → node address (pure).
pub fn desired_routes(own: &str, nodes: &[Node]) -> BTreeMap<String, IpAddr> {
    nodes
        .iter()
        .filter(|n| n.metadata.name != own)
        .filter_map(|n| Some((n.spec.pod_cidr.clone()?, n.internal_ip()?)))
        .collect()
}

/// What to change: routes to set (new or moved), routes to delete (pure).
pub fn plan_routes(
    desired: &BTreeMap<String, IpAddr>,
    current: &BTreeMap<String, IpAddr>,
) -> (Vec<(String, IpAddr)>, Vec<String>) {
    let set = desired.iter().filter(|(c, via)| current.get(*c) != Some(via)).map(|(c, v)| (c.clone(), *v)).collect();
    let delete = current.keys().filter(|c| !desired.contains_key(*c)).cloned().collect();
    (set, delete)
}

/// The routes this agent owns, from `ip route show proto 77`.
pub fn parse_routes(text: &str) -> BTreeMap<String, IpAddr> {
    text.lines()
        .filter_map(|l| {
            let words: Vec<_> = l.split_whitespace().collect();
            let via = words.iter().position(|w| *w == "via").and_then(|i| words.get(i + 1))?.parse().ok()?;
            Some((words.first()?.to_string(), via))
        })
        .collect()
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Brings the routing table to `desired`; blocking.
fn apply_routes(desired: &BTreeMap<String, IpAddr>) -> Result<(), String> {
    let current = parse_routes(&ip(&["route", "show", "proto", ROUTE_PROTO])?);
    let (set, delete) = plan_routes(desired, &current);
    for (cidr, via) in set {
        ip(&["route", "replace", &cidr, "via", &via.to_string(), "proto", ROUTE_PROTO]).map_err(|e| {
            format!("{e} (host-gw routing needs every node on one network: is {via} reachable directly?)")
        })?;
        info!(%cidr, %via, "route to another node's pods");
    }
    for cidr in delete {
        ip(&["route", "del", &cidr, "proto", ROUTE_PROTO])?;
        info!(%cidr, "route to a node that is gone removed");
    }
    Ok(())
}

/// Masquerades pod traffic leaving the cluster's pod network; blocking.
fn ensure_masquerade(pod_cidr: Cidr) -> Result<(), String> {
    let cidr = pod_cidr.to_string();
    let rule =
        ["POSTROUTING", "-s", &cidr, "!", "-d", &cidr, "-m", "comment", "--comment", MASQ_COMMENT, "-j", "MASQUERADE"];
    let run = |op: &str| Command::new("iptables").args(["-w", "5", "-t", "nat", op]).args(rule).output();
    match run("-C") {
        Ok(o) if o.status.success() => Ok(()),
        Ok(_) => match run("-A") {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!("iptables: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => Err(format!("cannot run iptables: {e}")),
        },
        Err(e) => Err(format!("cannot run iptables ({e}): pods cannot reach beyond the cluster")),
    }
}

/// How often the routes and the masquerade are checked against the node's
/// own tables when nothing changed in the cluster (a reboot, or someone,
/// may have changed them): local commands only, no API request.
const RECHECK: Duration = Duration::from_secs(30);

/// What the node's network should be, from the Nodes (pure): its own
/// podCIDR and the routes to the others'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub pod_cidr: String,
    pub routes: BTreeMap<String, IpAddr>,
}

pub fn wanted(own: &str, nodes: &Cache<Node>) -> Result<Wanted, String> {
    let Some(node) = nodes.items.get(own) else { return Err(format!("node {own} is not registered yet")) };
    let Some(pod_cidr) = node.spec.pod_cidr.clone() else {
        return Err(format!("node {own} has no podCIDR yet (controller-manager allocates it)"));
    };
    let all: Vec<Node> = nodes.items.values().cloned().collect();
    Ok(Wanted { pod_cidr, routes: desired_routes(own, &all) })
}

/// Writes the CNI config and brings the routes to `want`; blocking.
/// Returns the masquerade's error, if any (pods still reach each other
/// without it).
fn converge(paths: &Paths, cfg: &ClusterConfig, want: &Wanted) -> Result<Option<String>, String> {
    let conf = cni_config(paths, &want.pod_cidr);
    if apply_files(std::slice::from_ref(&conf)).map_err(|e| e.to_string())?[0].1
        != crate::host::fs::FileChange::Unchanged
    {
        info!(path = %conf.path.display(), "pod network config written");
    }
    apply_routes(&want.routes)?;
    Ok(ensure_masquerade(cfg.cluster.pod_cidr).err())
}

/// A reflector behind for this long is started anew, with a client read
/// from the kubeconfig again (its certificate may have been renewed).
const RESTART_BEHIND: Duration = Duration::from_secs(30);

/// Keeps the CNI config and the routes current until `stop` changes: the
/// Nodes are listed once and then watched ([`Reflector`]), so that a node's
/// agent costs the API server one open watch, not a list of every Node
/// each round. While the watch is down nothing is changed.
pub async fn run(paths: Paths, cfg: ClusterConfig, mut stop: watch::Receiver<bool>) {
    let mut nodes: Option<Reflector<Node>> = None;
    let mut behind_since: Option<tokio::time::Instant> = None;
    let mut converged = false;
    let mut masq_warned = false;
    // Forwarding and bridged traffic through iptables: a reboot resets them.
    match tokio::task::spawn_blocking(crate::host::sysctl::ensure).await {
        Ok(Ok(changed)) if !changed.is_empty() => info!(?changed, "kernel network settings set"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "Services and the pod network may not work"),
        Err(e) => warn!(error = %e, "cannot check the kernel network settings"),
    }
    let mut next_check = tokio::time::Instant::now();
    let mut applied: Option<Wanted> = None;
    loop {
        if nodes.is_none() {
            match KubeClient::from_kubeconfig(&paths.kubeconfig("kubelet")) {
                Ok(c) => nodes = Some(Reflector::spawn(c, "the nodes", objects::nodes_path())),
                Err(e) => debug!(error = %e, "pod network not ready yet"),
            }
        }
        let own = cfg.node.name.as_str();
        let snapshot = nodes.as_ref().map(|r| r.synced(|cache| wanted(own, cache)));
        match snapshot {
            // Nothing moved (a Node's status changed): nothing to do until
            // the next check of the local tables.
            Some(Ok(Ok(want))) if applied.as_ref() == Some(&want) && tokio::time::Instant::now() < next_check => {}
            Some(Ok(want)) => {
                behind_since = None;
                let (p, c) = (paths.clone(), cfg.clone());
                let result = async {
                    let want = want?;
                    let w = want.clone();
                    let masq = tokio::task::spawn_blocking(move || converge(&p, &c, &w))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r)?;
                    applied = Some(want);
                    Ok::<_, String>(masq)
                }
                .await;
                match result {
                    Ok(masq) => {
                        if let (Some(e), false) = (masq, masq_warned) {
                            warn!(error = %e, "pod egress masquerade not set");
                            masq_warned = true;
                        }
                        converged = true;
                        next_check = tokio::time::Instant::now() + RECHECK;
                    }
                    Err(e) => {
                        if converged {
                            warn!(error = %e, "pod network not updated");
                        } else {
                            debug!(error = %e, "pod network not ready yet");
                        }
                        next_check = tokio::time::Instant::now() + Duration::from_secs(2);
                    }
                }
            }
            Some(Err(why)) => {
                let since = *behind_since.get_or_insert_with(tokio::time::Instant::now);
                debug!(reason = %why, "the nodes are not watched right now: routes left as they are");
                if since.elapsed() >= RESTART_BEHIND {
                    nodes = None;
                    behind_since = None;
                }
                next_check = tokio::time::Instant::now() + Duration::from_secs(2);
            }
            None => next_check = tokio::time::Instant::now() + Duration::from_secs(2),
        }
        let changed = async {
            match nodes.as_mut() {
                Some(r) => r.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = changed => {}
            _ = tokio::time::sleep_until(next_check) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: &str) -> Node {
        let json = serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_cni_config_matches_golden() {
        let f = cni_config(&Paths::new("/"), "10.244.1.0/24");
        assert_eq!(f.path, std::path::PathBuf::from("/etc/hakube/cni/10-hakube.conflist"));
        crate::golden::check("cni-conflist.json", &String::from_utf8(f.contents).unwrap());
    }

    #[test]
    fn routes_follow_the_nodes() {
        let nodes = [
            node("m1", Some("10.244.0.0/24"), "10.77.0.11"),
            node("m2", Some("10.244.1.0/24"), "10.77.0.12"),
            node("w1", None, "10.77.0.21"),
        ];
        let desired = desired_routes("m1", &nodes);
        assert_eq!(desired.len(), 1, "not to itself, not without a podCIDR: {desired:?}");
        let current = parse_routes(
            "10.244.1.0/24 via 10.77.0.99 dev eth0 proto 77\n10.244.7.0/24 via 10.77.0.27 dev eth0 proto 77\n",
        );
        let (set, delete) = plan_routes(&desired, &current);
        assert_eq!(set, vec![("10.244.1.0/24".to_owned(), "10.77.0.12".parse().unwrap())], "a moved node is re-routed");
        assert_eq!(delete, vec!["10.244.7.0/24".to_owned()], "a node that is gone loses its route");
        let (set, delete) = plan_routes(&desired, &desired);
        assert!(set.is_empty() && delete.is_empty(), "nothing to do when current");
    }
}
