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
use tokio::time::sleep;
use tracing::{debug, info, warn};

use crate::config::{Cidr, ClusterConfig};
use crate::host::fs::{apply_files, FileSpec};
use crate::host::paths::Paths;
use crate::kube::client::KubeClient;
use crate::kube::objects::{self, List, Node};

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

/// Keeps the CNI config and the routes current until `stop` changes.
pub async fn run(paths: Paths, cfg: ClusterConfig, mut stop: watch::Receiver<bool>) {
    let mut client: Option<KubeClient> = None;
    let mut converged = false;
    let mut masq_warned = false;
    // Forwarding and bridged traffic through iptables: a reboot resets them.
    match tokio::task::spawn_blocking(crate::host::sysctl::ensure).await {
        Ok(Ok(changed)) if !changed.is_empty() => info!(?changed, "kernel network settings set"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "Services and the pod network may not work"),
        Err(e) => warn!(error = %e, "cannot check the kernel network settings"),
    }
    loop {
        let round = async {
            if client.is_none() {
                client = Some(KubeClient::from_kubeconfig(&paths.kubeconfig("kubelet")).map_err(|e| e.to_string())?);
            }
            let c = client.as_ref().expect("set above");
            let name = cfg.node.name.as_str();
            let node: Option<Node> =
                c.get_opt(&format!("node {name}"), &objects::node_path(name)).await.map_err(|e| e.to_string())?;
            let Some(node) = node else { return Err(format!("node {name} is not registered yet")) };
            let Some(pod_cidr) = node.spec.pod_cidr.clone() else {
                return Err(format!("node {name} has no podCIDR yet (controller-manager allocates it)"));
            };
            let nodes: List<Node> = c.get("the nodes", objects::nodes_path()).await.map_err(|e| e.to_string())?;
            let conf = cni_config(&paths, &pod_cidr);
            let routes = desired_routes(name, &nodes.items);
            let cluster_cidr = cfg.cluster.pod_cidr;
            tokio::task::spawn_blocking(move || {
                if apply_files(std::slice::from_ref(&conf)).map_err(|e| e.to_string())?[0].1
                    != crate::host::fs::FileChange::Unchanged
                {
                    info!(path = %conf.path.display(), "pod network config written");
                }
                apply_routes(&routes)?;
                Ok::<_, String>(ensure_masquerade(cluster_cidr).err())
            })
            .await
            .map_err(|e| e.to_string())?
        };
        let pause = match round.await {
            Ok(masq) => {
                if let (Some(e), false) = (masq, masq_warned) {
                    warn!(error = %e, "pod egress masquerade not set");
                    masq_warned = true;
                }
                converged = true;
                Duration::from_secs(5)
            }
            Err(e) => {
                if converged {
                    warn!(error = %e, "pod network not updated");
                } else {
                    debug!(error = %e, "pod network not ready yet");
                }
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = sleep(pause) => {}
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
