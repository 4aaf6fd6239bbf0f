//! What each certificate must say, derived from the config alone (pure).
//!
//! Names, subjects and usages follow kubeadm's, so every Kubernetes component
//! and tool finds what it expects under `pki/`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{ClusterConfig, Host};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

impl San {
    pub fn parse(s: &str) -> San {
        match s.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_owned()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Ca,
    Server,
    Client,
    ServerClient,
}

/// One certificate: its file name under `pki/` (without extension), its
/// issuer's name (None for a CA) and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub name: String,
    pub issuer: Option<String>,
    pub common_name: String,
    pub organization: Option<String>,
    pub usage: Usage,
    pub sans: BTreeSet<San>,
    /// How long a leaf lives, and how long before its end it is renewed
    /// (a CA lives [`super::CA_VALIDITY`] and is never renewed).
    pub lifetime: Lifetime,
}

/// A leaf's validity and renewal margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub valid: time::Duration,
    pub renew_before: time::Duration,
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime { valid: super::LEAF_VALIDITY, renew_before: super::RENEW_BEFORE }
    }
}

impl Lifetime {
    /// What the cluster config asks for.
    pub fn of(c: &ClusterConfig) -> Lifetime {
        let d = |s: crate::config::Span| time::Duration::seconds(s.0.as_secs() as i64);
        Lifetime { valid: d(c.cluster.certificate_validity), renew_before: d(c.cluster.certificate_renew_before) }
    }

    /// Whether a leaf ending at `not_after` is due for renewal at `now`.
    pub fn due(&self, not_after: time::OffsetDateTime, now: time::OffsetDateTime) -> bool {
        not_after - now < self.renew_before
    }
}

impl CertSpec {
    fn ca(name: &str, cn: &str) -> Self {
        Self::new(name, None, cn, None, Usage::Ca, [])
    }

    fn new(
        name: &str,
        issuer: Option<&str>,
        cn: &str,
        org: Option<&str>,
        usage: Usage,
        sans: impl IntoIterator<Item = San>,
    ) -> Self {
        CertSpec {
            name: name.to_owned(),
            issuer: issuer.map(str::to_owned),
            common_name: cn.to_owned(),
            organization: org.map(str::to_owned),
            usage,
            sans: sans.into_iter().collect(),
            lifetime: Lifetime::default(),
        }
    }

    /// The same spec, issued for `lifetime`.
    pub fn with_lifetime(mut self, lifetime: Lifetime) -> Self {
        self.lifetime = lifetime;
        self
    }
}

/// The API server's SANs: every name a client may use to reach it.
pub fn apiserver_sans(c: &ClusterConfig) -> BTreeSet<San> {
    let domain = &c.cluster.dns_domain;
    let mut sans: BTreeSet<San> = [
        c.node.name.as_str().to_owned(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{domain}"),
    ]
    .into_iter()
    .map(San::Dns)
    .collect();
    sans.insert(San::Ip(c.cluster.service_cidr.nth(1)));
    sans.insert(San::Ip(c.node.advertise_address));
    sans.insert(San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    for lb in c.cluster.load_balancer_names() {
        sans.insert(match &lb.host {
            Host::Ip(ip) => San::Ip(*ip),
            Host::Dns(d) => San::Dns(d.clone()),
        });
    }
    sans.extend(c.cluster.cert_sans.iter().map(|s| San::parse(s.as_str())));
    sans
}

/// etcd serves and peers on the node's own names only.
fn etcd_sans(c: &ClusterConfig) -> BTreeSet<San> {
    [
        San::Dns(c.node.name.as_str().to_owned()),
        San::Dns("localhost".into()),
        San::Ip(c.node.advertise_address),
        San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
    .into_iter()
    .collect()
}

/// Every CA and leaf of a master, CAs first.
pub fn cluster_cert_specs(c: &ClusterConfig) -> Vec<CertSpec> {
    use Usage::*;
    let node = c.node.name.as_str();
    let life = Lifetime::of(c);
    let specs = vec![
        CertSpec::ca("ca", "kubernetes"),
        CertSpec::ca("front-proxy-ca", "front-proxy-ca"),
        CertSpec::ca("etcd/ca", "etcd-ca"),
        CertSpec::new("apiserver", Some("ca"), "kube-apiserver", None, Server, apiserver_sans(c)),
        CertSpec::new(
            "apiserver-kubelet-client",
            Some("ca"),
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            Client,
            [],
        ),
        CertSpec::new("front-proxy-client", Some("front-proxy-ca"), "front-proxy-client", None, Client, []),
        CertSpec::new("etcd/server", Some("etcd/ca"), node, None, ServerClient, etcd_sans(c)),
        CertSpec::new("etcd/peer", Some("etcd/ca"), node, None, ServerClient, etcd_sans(c)),
        CertSpec::new("etcd/healthcheck-client", Some("etcd/ca"), "kube-etcd-healthcheck-client", None, Client, []),
        CertSpec::new("apiserver-etcd-client", Some("etcd/ca"), "kube-apiserver-etcd-client", None, Client, []),
    ];
    specs.into_iter().map(|s| s.with_lifetime(life)).collect()
}

/// A kubelet's client certificate, as the Node authorizer expects it.
pub fn kubelet_client_spec(node: &str) -> CertSpec {
    CertSpec::new("kubelet", Some("ca"), &format!("system:node:{node}"), Some("system:nodes"), Usage::Client, [])
}

/// kube-proxy's client certificate: the user the default RBAC binds to
/// `system:node-proxier` (the same on every node, as with kubeadm).
pub fn kube_proxy_client_spec() -> CertSpec {
    CertSpec::new("kube-proxy", Some("ca"), KUBE_PROXY_USER, None, Usage::Client, [])
}

/// The user name kube-proxy's certificate carries.
pub const KUBE_PROXY_USER: &str = "system:kube-proxy";

/// The client certificate embedded in a kubeconfig, by kubeconfig name.
pub fn kubeconfig_cert_spec(c: &ClusterConfig, kubeconfig: &str) -> CertSpec {
    let life = Lifetime::of(c);
    match kubeconfig {
        "kubelet" => return kubelet_client_spec(c.node.name.as_str()).with_lifetime(life),
        "kube-proxy" => return kube_proxy_client_spec().with_lifetime(life),
        _ => {}
    }
    let (cn, org) = match kubeconfig {
        "admin" => ("kubernetes-admin", Some("system:masters")),
        "controller-manager" => ("system:kube-controller-manager", None),
        "hakube-controller" => (super::CONTROLLER_USER, None),
        "scheduler" => ("system:kube-scheduler", None),
        other => unreachable!("no kubeconfig named {other}"),
    };
    CertSpec::new(kubeconfig, Some("ca"), cn, org, Usage::Client, []).with_lifetime(life)
}
