//! The purge's one seam ([`World`]): what it reads of the nodes and every
//! change it makes. [`Live`] is etcd and the API servers; the unit tests'
//! fake records each call, so the purge's order and guards are tested in
//! milliseconds with paused time.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde_json::json;
use tracing::{info, warn};

use super::decide::{guard, member_of, KubeSignal, Observed, Reading};
use super::{call, human, Purge, Tombstone, CURRENT, HISTORY_PREFIX, OUT_OF_SERVICE, TOMBSTONE_PREFIX};
use crate::cluster::election::Term;
use crate::cluster::registry;
use crate::cluster::ClusterError;
use crate::etcd::membership::{self, Lock, Probe};
use crate::etcd::{self, Credentials, Member};
use crate::kube::client::{KubeClient, Patch};
use crate::kube::objects::{self, List, Node, Pod};
use crate::kube::watch::Reflector;

/// What the purge reads and changes. Every call is one step that can fail
/// on its own; the purge decides between them.
#[allow(async_fn_in_trait)]
pub trait World {
    /// Every registered node, with both its signals.
    async fn readings(&mut self) -> Result<Vec<Reading>, ClusterError>;
    /// One node again: its registry heartbeat (None: not registered) and
    /// its Kubernetes signal.
    async fn reread(&mut self, name: &str) -> Result<(Option<u64>, KubeSignal), ClusterError>;
    /// etcd's members and how each voter answers.
    async fn members(&mut self) -> Result<(Vec<Member>, Vec<(Member, Probe)>), ClusterError>;
    /// Whether this leader's term still holds.
    async fn holds_term(&mut self) -> bool;
    /// The purge under way and its record's revision.
    async fn current(&mut self) -> Result<Option<(Purge, i64)>, ClusterError>;
    /// Writes the purge if its record is still at `rev` (0: none yet); the
    /// new revision, or None when another leader wrote it meanwhile.
    async fn advance(&mut self, p: &Purge, rev: i64) -> Result<Option<i64>, ClusterError>;
    /// Removes the record of a purge called off, if still at `rev`.
    async fn call_off(&mut self, rev: i64) -> Result<(), ClusterError>;
    /// The history record, the Event and the audit line of a finished purge.
    async fn finish(&mut self, p: &Purge) -> Result<(), ClusterError>;
    /// Adds (or removes) the out-of-service taint.
    async fn taint(&mut self, name: &str, on: bool) -> Result<(), ClusterError>;
    async fn delete_pods(&mut self, name: &str) -> Result<(), ClusterError>;
    /// Removes a lost master's etcd member under the membership lock, with
    /// the guard checked again right before.
    async fn remove_member(&mut self, node: &Observed, leader: &str) -> Result<(), ClusterError>;
    async fn unregister(&mut self, name: &str) -> Result<(), ClusterError>;
    /// Whether the node is registered (again: a re-join after its record went).
    async fn registered(&mut self, name: &str) -> Result<bool, ClusterError>;
    async fn delete_node(&mut self, name: &str) -> Result<(), ClusterError>;
    /// Writes the tombstone only while the node is not registered (a node
    /// that joined again meanwhile is not shut out); whether it did.
    async fn tombstone(&mut self, name: &str, t: &Tombstone) -> Result<bool, ClusterError>;
    /// Deletes the Nodes that purged nodes' kubelets registered again.
    async fn sweep_tombstoned_nodes(&mut self);
}

/// etcd through the leader's client; Kubernetes through `kube` (None: the
/// cluster runs no Kubernetes, and heartbeats are the only signal).
pub struct Live<'a> {
    pub etcd: &'a mut Client,
    pub endpoint: &'a str,
    pub creds: &'a Credentials,
    pub kube: Option<&'a KubeClient>,
    /// The watched signals (None: read each node's with requests).
    pub signals: Option<&'a Signals>,
    pub term: &'a Term,
}

/// Waits for the membership lock this long (the client's own request
/// timeout is seconds: [`Lock::acquire`] waits beyond it).
const LOCK_WAIT: Duration = Duration::from_secs(30);

impl World for Live<'_> {
    async fn readings(&mut self) -> Result<Vec<Reading>, ClusterError> {
        let records = registry::list(self.etcd, self.endpoint).await?;
        let signals = match (self.kube, self.signals) {
            (Some(_), Some(watched)) => watched.of(&records.iter().map(|r| r.name.as_str()).collect::<Vec<_>>()),
            _ => futures_util::future::join_all(records.iter().map(|r| signal(self.kube, &r.name))).await,
        };
        Ok(records
            .into_iter()
            .zip(signals)
            .map(|(r, kube)| Reading {
                name: r.name,
                role: r.role,
                address: r.address,
                heartbeat_at: r.heartbeat_at,
                kube,
            })
            .collect())
    }

    async fn reread(&mut self, name: &str) -> Result<(Option<u64>, KubeSignal), ClusterError> {
        let r = registry::get(self.etcd, self.endpoint, name).await?;
        Ok((r.map(|r| r.heartbeat_at), signal(self.kube, name).await))
    }

    async fn members(&mut self) -> Result<(Vec<Member>, Vec<(Member, Probe)>), ClusterError> {
        let members = etcd::members(self.etcd, self.endpoint).await?;
        let health = membership::voter_health(&members, self.creds).await;
        Ok((members, health))
    }

    async fn holds_term(&mut self) -> bool {
        self.term.holds(self.etcd).await
    }

    async fn current(&mut self) -> Result<Option<(Purge, i64)>, ClusterError> {
        Ok(super::current(self.etcd, self.endpoint).await?)
    }

    async fn advance(&mut self, p: &Purge, rev: i64) -> Result<Option<i64>, ClusterError> {
        let body = serde_json::to_vec(p).expect("purge serializes");
        let guard = if rev == 0 {
            Compare::create_revision(CURRENT, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(CURRENT, CompareOp::Equal, rev)
        };
        let resp = self
            .etcd
            .txn(Txn::new().when([guard]).and_then([TxnOp::put(CURRENT, body, None)]))
            .await
            .map_err(|e| call(self.endpoint, e))?;
        Ok(resp.succeeded().then(|| resp.header().map(|h| h.revision()).unwrap_or(rev + 1)))
    }

    async fn call_off(&mut self, rev: i64) -> Result<(), ClusterError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(CURRENT, CompareOp::Equal, rev)])
            .and_then([TxnOp::delete(CURRENT, None)]);
        self.etcd.txn(txn).await.map_err(|e| call(self.endpoint, e))?;
        Ok(())
    }

    async fn finish(&mut self, p: &Purge) -> Result<(), ClusterError> {
        let key = format!("{HISTORY_PREFIX}{:020}-{}", p.started_at, p.node.name);
        let body = serde_json::to_vec(p).expect("purge serializes");
        let txn = Txn::new().and_then([TxnOp::put(key, body, None), TxnOp::delete(CURRENT, None)]);
        self.etcd.txn(txn).await.map_err(|e| call(self.endpoint, e))?;
        info!(target: "audit", node = %p.node.name, role = %p.node.role, lost_for = %human(p.lost_for), by = %p.started_by, "purged a lost node");
        if let Some(kube) = self.kube {
            if let Err(e) = event(kube, p).await {
                warn!(error = %e, "cannot record the purge's Event");
            }
        }
        Ok(())
    }

    async fn taint(&mut self, name: &str, on: bool) -> Result<(), ClusterError> {
        let Some(kube) = self.kube else { return Ok(()) };
        let what = format!("node {name}");
        let Some(node) = kube.get_opt::<Node>(&what, &objects::node_path(name)).await? else {
            return Ok(());
        };
        let t = objects::Taint::parse(OUT_OF_SERVICE).expect("well-formed");
        let has = node.spec.taints.iter().any(|x| x.matches(&t));
        if has == on {
            return Ok(());
        }
        let mut taints: Vec<_> = node.spec.taints.iter().filter(|x| !x.matches(&t)).cloned().collect();
        if on {
            taints.push(t);
        }
        // A merge patch replaces the list, under the version read: a taint
        // added meanwhile by someone else is not lost (409, next round).
        let patch =
            json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": taints}});
        kube.patch::<serde_json::Value>(&what, &objects::node_path(name), Patch::Merge, &patch).await?;
        Ok(())
    }

    async fn delete_pods(&mut self, name: &str) -> Result<(), ClusterError> {
        let Some(kube) = self.kube else { return Ok(()) };
        let path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{name}");
        let pods: List<Pod> = kube.get(&format!("the pods of {name}"), &path).await?;
        for pod in pods.items {
            let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            let what = format!("pod {ns}/{}", pod.metadata.name);
            let path = format!("/api/v1/namespaces/{ns}/pods/{}", pod.metadata.name);
            kube.delete(&what, &path, &json!({"gracePeriodSeconds": 0})).await?;
            info!(node = %name, pod = %what, "force-deleted a lost node's pod");
        }
        Ok(())
    }

    async fn remove_member(&mut self, node: &Observed, leader: &str) -> Result<(), ClusterError> {
        let lock = Lock::acquire(self.etcd, self.endpoint, LOCK_WAIT).await?;
        let result = async {
            let members = etcd::members(self.etcd, self.endpoint).await?;
            let Some(m) = member_of(node, &members).cloned() else { return Ok(()) };
            // The guard again, right before the change.
            let health = membership::voter_health(&members, self.creds).await;
            guard(node, leader, &members, &health).map_err(ClusterError::Held)?;
            membership::remove_member(self.etcd, self.endpoint, m.id, &lock).await?;
            warn!(node = %node.name, member = %format!("{:x}", m.id), "removed a lost master's etcd member");
            Ok::<_, ClusterError>(())
        }
        .await;
        lock.release(self.etcd).await;
        result
    }

    async fn unregister(&mut self, name: &str) -> Result<(), ClusterError> {
        Ok(registry::delete(self.etcd, self.endpoint, name).await?)
    }

    async fn registered(&mut self, name: &str) -> Result<bool, ClusterError> {
        Ok(registry::get(self.etcd, self.endpoint, name).await?.is_some())
    }

    async fn delete_node(&mut self, name: &str) -> Result<(), ClusterError> {
        let Some(kube) = self.kube else { return Ok(()) };
        Ok(kube.delete(&format!("node {name}"), &objects::node_path(name), &json!({})).await?)
    }

    async fn tombstone(&mut self, name: &str, t: &Tombstone) -> Result<bool, ClusterError> {
        let body = serde_json::to_vec(t).expect("tombstone serializes");
        let txn = Txn::new()
            .when([Compare::create_revision(registry::key(name), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(format!("{TOMBSTONE_PREFIX}{name}"), body, None)]);
        let resp = self.etcd.txn(txn).await.map_err(|e| call(self.endpoint, e))?;
        Ok(resp.succeeded())
    }

    async fn sweep_tombstoned_nodes(&mut self) {
        let Some(kube) = self.kube else { return };
        let Ok(resp) = self.etcd.get(TOMBSTONE_PREFIX, Some(GetOptions::new().with_prefix().with_keys_only())).await
        else {
            return;
        };
        let names: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| String::from_utf8_lossy(kv.key()).strip_prefix(TOMBSTONE_PREFIX).map(str::to_owned))
            .collect();
        for name in names {
            let what = format!("node {name}");
            // From the watched Nodes when they are current: a GET per
            // tombstone per round would grow with every node ever purged.
            let present = match self.signals.and_then(|s| s.has_node(&name)) {
                Some(known) => known,
                None => matches!(kube.get_opt::<Node>(&what, &objects::node_path(&name)).await, Ok(Some(_))),
            };
            if present {
                match kube.delete(&what, &objects::node_path(&name), &json!({})).await {
                    Ok(()) => warn!(node = %name, "deleted the Node a purged node registered again"),
                    Err(e) => warn!(node = %name, error = %e, "cannot delete the Node of a purged node"),
                }
            }
        }
    }
}

/// A node's Kubernetes sign of life, read now: the freshest of its Lease's
/// renewal and its Ready heartbeat. Any error is [`KubeSignal::Unknown`],
/// never a missing signal: a node that cannot be seen is not a node seen
/// dead. (The purge reads it so right before each step it cannot undo.)
pub async fn signal(kube: Option<&KubeClient>, name: &str) -> KubeSignal {
    let Some(kube) = kube else { return KubeSignal::Absent };
    let (lease, node) = futures_util::future::join(
        kube.get_opt::<objects::Lease>(&format!("lease of {name}"), &objects::node_lease_path(name)),
        kube.get_opt::<Node>(&format!("node {name}"), &objects::node_path(name)),
    )
    .await;
    match (lease, node) {
        (Ok(lease), Ok(node)) => signal_of(name, lease.as_ref(), node.as_ref()),
        (Err(e), _) | (_, Err(e)) => KubeSignal::Unknown(e.to_string()),
    }
}

/// The signal in a node's Lease and Node (pure).
pub fn signal_of(name: &str, lease: Option<&objects::Lease>, node: Option<&Node>) -> KubeSignal {
    let time = |what: &str, t: Option<&str>| -> Result<Option<u64>, String> {
        match t {
            None => Ok(None),
            Some(t) => {
                objects::unix_secs(t).map(Some).ok_or_else(|| format!("{what} of {name}: cannot read the time {t:?}"))
            }
        }
    };
    let lease = match time("lease", lease.and_then(|l| l.spec.renew_time.as_deref())) {
        Ok(t) => t,
        Err(e) => return KubeSignal::Unknown(e),
    };
    let ready = node.and_then(|n| n.condition("Ready")).and_then(|c| c.last_heartbeat_time.as_deref());
    let ready = match time("node", ready) {
        Ok(t) => t,
        Err(e) => return KubeSignal::Unknown(e),
    };
    match lease.max(ready) {
        Some(t) => KubeSignal::Seen(t),
        None => KubeSignal::Absent,
    }
}

/// Every node's Kubernetes signal as two watches keep it (the Leases in
/// `kube-node-lease`, and the Nodes): the leader's rounds read them without
/// a request per node. While either watch is down every signal is
/// [`KubeSignal::Unknown`], so nothing is judged on a cache that may have
/// missed a renewal.
pub struct Signals {
    leases: Reflector<objects::Lease>,
    nodes: Reflector<Node>,
}

impl Signals {
    pub fn spawn(kube: &KubeClient) -> Signals {
        Signals {
            leases: Reflector::spawn(kube.clone(), "the nodes' leases", objects::node_leases_path()),
            nodes: Reflector::spawn(kube.clone(), "the nodes", objects::nodes_path()),
        }
    }

    /// Whether a Node of that name exists, if the watch on the Nodes is
    /// current.
    pub fn has_node(&self, name: &str) -> Option<bool> {
        self.nodes.synced(|nodes| nodes.items.contains_key(name)).ok()
    }

    /// The signals of `names`, from the caches.
    pub fn of(&self, names: &[&str]) -> Vec<KubeSignal> {
        let read = self.leases.synced(|leases| {
            self.nodes.synced(|nodes| {
                names.iter().map(|n| signal_of(n, leases.items.get(*n), nodes.items.get(*n))).collect::<Vec<_>>()
            })
        });
        match read {
            Ok(Ok(signals)) => signals,
            Ok(Err(why)) | Err(why) => {
                let why = format!("the watch on the nodes' signals is down: {why}");
                names.iter().map(|_| KubeSignal::Unknown(why.clone())).collect()
            }
        }
    }
}

async fn event(kube: &KubeClient, p: &Purge) -> Result<(), crate::kube::client::KubeError> {
    crate::kube::event::NodeEvent {
        node: &p.node.name,
        reason: "NodePurged",
        message: format!(
            "hakube purged {} {} after it was unreachable for {} (its hakube heartbeat and its Kubernetes signal both stale)",
            p.node.role,
            p.node.name,
            human(p.lost_for)
        ),
        warning: true,
        reporter: &p.started_by,
        unique: p.started_at,
    }
    .record(kube)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(renew: Option<&str>) -> objects::Lease {
        serde_json::from_value(json!({"metadata": {"name": "w1"}, "spec": {"renewTime": renew}})).unwrap()
    }

    fn node(heartbeat: &str) -> Node {
        let ready = json!({"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat});
        serde_json::from_value(json!({"metadata": {"name": "w1"}, "status": {"conditions": [ready]}})).unwrap()
    }

    #[test]
    fn a_nodes_signal_is_the_freshest_of_its_lease_and_its_ready_heartbeat() {
        let (l, n) = (lease(Some("2026-11-18T11:06:45.000000Z")), node("2026-11-18T11:06:40Z"));
        assert_eq!(signal_of("w1", Some(&l), Some(&n)), KubeSignal::Seen(1_795_000_005));
        assert_eq!(signal_of("w1", None, Some(&n)), KubeSignal::Seen(1_795_000_000));
        assert_eq!(signal_of("w1", Some(&lease(None)), None), KubeSignal::Absent);
        assert_eq!(signal_of("w1", None, None), KubeSignal::Absent);
        // A time that cannot be read is unknown, never absent (never stale).
        let bad = signal_of("w1", Some(&lease(Some("yesterday"))), Some(&n));
        assert!(matches!(&bad, KubeSignal::Unknown(why) if why.contains("lease of w1")), "{bad:?}");
    }

    #[tokio::test]
    async fn signals_whose_watch_is_down_are_unknown() {
        // An API server that refuses connections: the watches never open.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap().self_signed(&key).unwrap();
        let (c, k) = (cert.pem(), key.serialize_pem());
        let at = format!("127.0.0.1:{port}").parse().unwrap();
        let kube = KubeClient::new(vec![at], c.as_bytes(), c.as_bytes(), k.as_bytes()).unwrap();
        let signals = Signals::spawn(&kube);
        let got = signals.of(&["w1", "w2"]);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|s| matches!(s, KubeSignal::Unknown(why) if why.contains("watch"))), "{got:?}");
    }
}
