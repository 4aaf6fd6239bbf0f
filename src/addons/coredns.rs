//! CoreDNS as kubeadm deploys it (`cmd/kubeadm/app/phases/addons/dns`):
//! the Corefile, its RBAC, the `coredns` Deployment and the `kube-dns`
//! Service at the cluster DNS address; plus what `ha` adds (Linkerd's
//! rules): one replica per node up to three, required hostname
//! anti-affinity, a zone preference, a PodDisruptionBudget.

use serde::Serialize;
use serde_json::{json, Value};

use super::{object, AddonSpec, Kind, Object};
use crate::kube::components::CONTROL_PLANE_TAINTS;
use crate::kube::objects::Taint;

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "coredns";
pub const SERVICE: &str = "kube-dns";
/// The pods' label, kubeadm's (kube-proxy, NetworkPolicies and
/// `kubectl -l k8s-app=kube-dns` rely on it).
const APP_LABEL: (&str, &str) = ("k8s-app", "kube-dns");
const CLUSTER_ROLE: &str = "system:coredns";
/// Where the Corefile is mounted and read.
const CONF_DIR: &str = "/etc/coredns";

/// The replicas hakube keeps. Not `ha`: kubeadm's two, or one where only
/// one node can run them. `ha`: one per schedulable node up to three, so
/// that the required anti-affinity never leaves a replica Pending
/// (k0s#6450) and two nodes already run two.
pub fn replicas(ha: bool, schedulable: usize) -> u32 {
    let n = u32::try_from(schedulable).unwrap_or(u32::MAX);
    if ha {
        n.clamp(1, 3)
    } else if n <= 1 {
        1
    } else {
        2
    }
}

/// A toleration as the pod spec spells it; every one here is `Exists`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Toleration {
    key: String,
    operator: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    effect: Option<String>,
}

impl Toleration {
    fn exists(key: &str, effect: Option<&str>) -> Self {
        Toleration { key: key.to_owned(), operator: "Exists", effect: effect.map(str::to_owned) }
    }

    /// The scheduler's rule for `Exists`: same key, and the same effect
    /// unless the toleration names none.
    pub(crate) fn tolerates(&self, t: &Taint) -> bool {
        self.key == t.key && self.effect.as_ref().is_none_or(|e| *e == t.effect)
    }
}

/// The control-plane taints hakube puts on masters (current and legacy
/// key), tolerated so that DNS runs before any worker exists.
pub(crate) fn control_plane_tolerations() -> Vec<Toleration> {
    CONTROL_PLANE_TAINTS
        .iter()
        .map(|t| Taint::parse(t).expect("well-formed taints"))
        .map(|t| Toleration::exists(&t.key, Some(&t.effect)))
        .collect()
}

/// What the CoreDNS pods tolerate: kubeadm's list.
pub(crate) fn tolerations() -> Vec<Toleration> {
    let mut all = vec![Toleration::exists("CriticalAddonsOnly", None)];
    all.extend(control_plane_tolerations());
    all
}

/// One line of a Corefile and the block under it.
struct Directive {
    name: &'static str,
    args: Vec<String>,
    block: Vec<Directive>,
}

fn d(name: &'static str, args: &[&str]) -> Directive {
    Directive { name, args: args.iter().map(|a| (*a).to_owned()).collect(), block: Vec::new() }
}

impl Directive {
    fn with(mut self, block: Vec<Directive>) -> Self {
        self.block = block;
        self
    }

    /// Indented as kubeadm renders it: four spaces inside the server
    /// block, three more inside a plugin's block.
    fn render(&self, out: &mut String, indent: usize, step: usize) {
        out.push_str(&" ".repeat(indent));
        out.push_str(&token(self.name));
        for a in &self.args {
            out.push(' ');
            out.push_str(&token(a));
        }
        if self.block.is_empty() {
            out.push('\n');
            return;
        }
        out.push_str(" {\n");
        for child in &self.block {
            child.render(out, indent + step, 3);
        }
        out.push_str(&" ".repeat(indent));
        out.push_str("}\n");
    }
}

/// A Corefile token: bare when it is plainly one word, quoted otherwise,
/// so that no value can open a block or start a line of its own.
fn token(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// kubeadm's Corefile for `domain`: cluster names answered from the API,
/// everything else forwarded to the node's resolvers (`dnsPolicy: Default`
/// gives the pod the node's /etc/resolv.conf).
pub fn corefile(domain: &str) -> String {
    let server = d(".:53", &[]).with(vec![
        d("errors", &[]),
        d("health", &[]).with(vec![d("lameduck", &["5s"])]),
        d("ready", &[]),
        d("kubernetes", &[domain, "in-addr.arpa", "ip6.arpa"]).with(vec![
            d("pods", &["insecure"]),
            d("fallthrough", &["in-addr.arpa", "ip6.arpa"]),
            d("ttl", &["30"]),
        ]),
        d("prometheus", &[":9153"]),
        d("forward", &[".", "/etc/resolv.conf"]).with(vec![d("max_concurrent", &["1000"])]),
        // Never cache the cluster's own answers (kubernetes#128359).
        d("cache", &["30"]).with(vec![d("disable", &["success", domain]), d("disable", &["denial", domain])]),
        d("loop", &[]),
        d("reload", &[]),
        d("loadbalance", &[]),
    ]);
    let mut out = String::new();
    server.render(&mut out, 0, 4);
    out
}

fn selector() -> Value {
    json!({"matchLabels": {APP_LABEL.0: APP_LABEL.1}})
}

fn anti_affinity_term(topology_key: &str) -> Value {
    json!({
        "labelSelector": {"matchExpressions": [{"key": APP_LABEL.0, "operator": "In", "values": [APP_LABEL.1]}]},
        "topologyKey": topology_key
    })
}

/// `ha`: never two replicas on one node (required), spread over zones
/// where there are any (preferred). Otherwise kubeadm's preference for
/// distinct nodes, which the scheduler may ignore (kubeadm#1657).
fn affinity(ha: bool) -> Value {
    if ha {
        json!({"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [anti_affinity_term("kubernetes.io/hostname")],
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": anti_affinity_term("topology.kubernetes.io/zone")}
            ]
        }})
    } else {
        json!({"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": anti_affinity_term("kubernetes.io/hostname")}
            ]
        }})
    }
}

pub(super) fn objects(spec: &AddonSpec) -> Vec<Object> {
    let ns = Some(NAMESPACE);
    let app = [APP_LABEL];
    let service_account = object(&Kind::SERVICE_ACCOUNT, ns, NAME, &[], json!({}));
    let cluster_role = object(
        &Kind::CLUSTER_ROLE,
        None,
        CLUSTER_ROLE,
        &[],
        json!({"rules": [
            {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
        ]}),
    );
    let binding = object(
        &Kind::CLUSTER_ROLE_BINDING,
        None,
        CLUSTER_ROLE,
        &[],
        json!({
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
        }),
    );
    let config = object(&Kind::CONFIG_MAP, ns, NAME, &[], json!({"data": {"Corefile": corefile(&spec.dns_domain)}}));
    let deployment = object(
        &Kind::DEPLOYMENT,
        ns,
        NAME,
        &app,
        json!({"spec": {
            "replicas": replicas(spec.ha, spec.schedulable),
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "selector": selector(),
            "template": {
                "metadata": {"labels": {APP_LABEL.0: APP_LABEL.1}},
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "serviceAccountName": NAME,
                    "affinity": affinity(spec.ha),
                    "tolerations": tolerations(),
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    // The node's resolvers, for `forward . /etc/resolv.conf`.
                    "dnsPolicy": "Default",
                    "containers": [{
                        "name": NAME,
                        "image": spec.images.coredns,
                        // The image is imported on every node, never pulled.
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["-conf", format!("{CONF_DIR}/Corefile")],
                        "resources": {"limits": {"memory": "170Mi"}, "requests": {"cpu": "100m", "memory": "70Mi"}},
                        "volumeMounts": [{"name": "config-volume", "mountPath": CONF_DIR, "readOnly": true}],
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}
                        ],
                        // Root with only NET_BIND_SERVICE: a locally built
                        // image may lack upstream's file capability on
                        // /coredns, which lets it bind :53 as non-root.
                        "securityContext": {
                            "runAsUser": 0,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                            "readOnlyRootFilesystem": true
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
                            "initialDelaySeconds": 60,
                            "timeoutSeconds": 5,
                            "successThreshold": 1,
                            "failureThreshold": 5
                        },
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181, "scheme": "HTTP"}}
                    }],
                    "volumes": [{
                        "name": "config-volume",
                        "configMap": {"name": NAME, "items": [{"key": "Corefile", "path": "Corefile"}]}
                    }]
                }
            }
        }}),
    );
    let service = object(
        &Kind::SERVICE,
        ns,
        SERVICE,
        &[APP_LABEL, ("kubernetes.io/cluster-service", "true"), ("kubernetes.io/name", "CoreDNS")],
        json!({
            "metadata": {"annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
            "spec": {
                "clusterIP": spec.dns_ip.to_string(),
                "selector": {APP_LABEL.0: APP_LABEL.1},
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}
                ]
            }
        }),
    );
    // In both modes, not only `ha` (where it is required): one replica at a
    // time may go, so a drain never takes both of kubeadm's replicas at once
    // when they share a node (kubeadm#1657), and never blocks on a lone
    // replica either (one unavailable is always allowed).
    let pdb = object(&Kind::PDB, ns, NAME, &app, json!({"spec": {"maxUnavailable": 1, "selector": selector()}}));
    // kube-system itself, only for the label that keeps admission webhooks
    // that honour it (Linkerd's injector) off the control plane's pods: a
    // webhook down never blocks them. Not marked managed by hakube: the
    // namespace is the cluster's.
    let (key, value) = super::WEBHOOK_EXCLUSION;
    let namespace = (
        "/api/v1/namespaces/kube-system".to_owned(),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {key: value}}}),
    );
    vec![namespace, service_account, cluster_role, binding, config, deployment, service, pdb]
}

/// What `ha` cannot give with this many schedulable nodes.
pub(super) fn warnings(spec: &AddonSpec) -> Vec<String> {
    if !spec.ha || spec.schedulable >= 3 {
        return Vec::new();
    }
    let n = replicas(spec.ha, spec.schedulable);
    let replica_s = if n == 1 { "replica" } else { "replicas" };
    let nodes = match spec.schedulable {
        0 => "no schedulable node yet".to_owned(),
        1 => "1 schedulable node".to_owned(),
        s => format!("{s} schedulable nodes"),
    };
    vec![format!(
        "CoreDNS runs {n} {replica_s} on {nodes}; HA wants 3 on distinct nodes: add nodes or make them \
         schedulable (Ready, not cordoned; masters count, their control-plane taint is tolerated)"
    )]
}
