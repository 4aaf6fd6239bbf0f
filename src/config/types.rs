//! Validated newtypes shared by the config file and the command line.
//!
//! Each parses from the string a user types and serializes back to it, so a
//! value that made it into a [`super::ClusterConfig`] is valid by construction.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The port kubeadm assumes when a load-balancer address has none.
pub const DEFAULT_API_PORT: u16 = 6443;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(msg: impl Into<String>) -> InvalidValue {
    InvalidValue(msg.into())
}

/// A DNS name as Kubernetes accepts it for a node (RFC 1123 subdomain).
fn check_dns_name(s: &str, what: &str) -> Result<(), InvalidValue> {
    if s.is_empty() || s.len() > 253 {
        return Err(invalid(format!("{what} {s:?} must be 1 to 253 characters long")));
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(invalid(format!(
                "{what} {s:?} is not a valid DNS name: use lowercase letters, digits, '-' and '.', \
                 each part starting and ending with a letter or digit"
            )));
        }
    }
    Ok(())
}

/// The host part of an address: an IP or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Dns(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

/// `HOST:PORT` as kURL's `load-balancer-address` takes it; a missing port
/// means 6443, as in kubeadm's `controlPlaneEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

impl HostPort {
    pub fn new(host: Host, port: u16) -> Self {
        Self { host, port }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for HostPort {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let example = "give HOST:PORT, e.g. lb.example.com:6443 or 10.0.0.10:6443";
        if s.trim().is_empty() {
            return Err(invalid(format!("the address is empty: {example}")));
        }
        if s.contains("://") {
            return Err(invalid(format!("{s:?} has a scheme: {example}, without http:// or https://")));
        }
        if s.contains('/') {
            return Err(invalid(format!("{s:?} has a path: {example}")));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or_else(|| invalid(format!("{s:?} opens '[' without closing it: write IPv6 as [fd00::10]:6443")))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| invalid(format!("{ip:?} in {s:?} is not an IPv6 address")))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| invalid(format!("{s:?}: expected ':PORT' after ']'")))?),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else if s.matches(':').count() > 1 {
            return Err(invalid(format!(
                "{s:?} looks like an IPv6 address without brackets: write it as [ADDRESS]:PORT, e.g. [fd00::10]:6443"
            )));
        } else {
            let (host, port) = match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            let host = if let Ok(ip) = host.parse::<Ipv4Addr>() {
                Host::Ip(IpAddr::V4(ip))
            } else {
                if host.is_empty() {
                    return Err(invalid(format!("{s:?} has no host: {example}")));
                }
                check_dns_name(&host.to_ascii_lowercase(), "host")?;
                Host::Dns(host.to_ascii_lowercase())
            };
            (host, port)
        };
        let port = match port {
            None => DEFAULT_API_PORT,
            Some(p) => match p.parse::<u32>() {
                Ok(n @ 1..=65535) => n as u16,
                _ => return Err(invalid(format!("port {p:?} in {s:?} is out of range: use 1 to 65535"))),
            },
        };
        Ok(HostPort { host, port })
    }
}

/// A Kubernetes node name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<NodeName> for String {
    fn from(v: NodeName) -> String {
        v.0
    }
}

impl TryFrom<String> for NodeName {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        check_dns_name(&s, "node name")?;
        Ok(NodeName(s))
    }
}

impl FromStr for NodeName {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        NodeName::try_from(s.to_owned())
    }
}

/// An extra subject alternative name for the API server certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CertSan(String);

impl CertSan {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<CertSan> for String {
    fn from(v: CertSan) -> String {
        v.0
    }
}

impl TryFrom<String> for CertSan {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        if s.parse::<IpAddr>().is_ok() {
            return Ok(CertSan(s));
        }
        // A leading wildcard label is allowed in a DNS SAN.
        let name = s.strip_prefix("*.").unwrap_or(&s);
        check_dns_name(name, "certificate SAN").map_err(|e| invalid(format!("{e} (or give an IP address)")))?;
        Ok(CertSan(s))
    }
}

impl FromStr for CertSan {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        CertSan::try_from(s.to_owned())
    }
}

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// The address `n` places after the network address (`10.96.0.1` for
    /// `n = 1` in `10.96.0.0/12`): the first is the `kubernetes` service IP,
    /// the tenth the cluster DNS, as kubeadm allocates them.
    pub fn nth(&self, n: u32) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(n))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(u128::from(n)))),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let bad = || invalid(format!("{s:?} is not a network in CIDR notation, e.g. 10.96.0.0/12"));
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > bits || prefix == 0 {
            return Err(invalid(format!("prefix /{prefix} in {s:?} is out of range: use 1 to {bits}")));
        }
        let host_bits_set = match addr {
            IpAddr::V4(a) => u32::from(a) & (u32::MAX >> prefix) != 0,
            IpAddr::V6(a) => u128::from(a) & (u128::MAX >> prefix) != 0,
        };
        if host_bits_set {
            return Err(invalid(format!("{s:?} has host bits set: give the network address")));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// How long a node may be lost before it is purged: a duration (`90s`,
/// `20m`, `1h`, `2h30m`) or `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Toleration {
    After(std::time::Duration),
    Never,
}

/// A duration as hakube's flags and config write it: `90s`, `15m`, `1h30m`
/// (humantime's units, so `1h 30m` and `2days` too), in whole seconds.
pub fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{s:?} is not whole seconds"));
    }
    Ok(d)
}

/// Values serde reads and writes as their text, through `FromStr` (so a bad
/// value gets the type's own message, which `serde_path_to_error` prefixes
/// with the field) and `Display`.
macro_rules! serde_as_text {
    ($($t:ty),+) => {$(
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }

        impl TryFrom<String> for $t {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                s.parse()
            }
        }
    )+};
}

serde_as_text!(HostPort, Cidr, Toleration, Span, SnapshotInterval);

/// Whole seconds as users write them: `90s` → `1m30s`, `3600s` → `1h`.
fn fmt_seconds(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

impl fmt::Display for Toleration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&match self {
            Toleration::Never => "never".into(),
            Toleration::After(d) => fmt_seconds(*d),
        })
    }
}

/// `never`, or a positive duration (None: neither).
fn duration_or_never(s: &str) -> Option<Option<std::time::Duration>> {
    if s == "never" {
        return Some(None);
    }
    parse_seconds(s).ok().filter(|d| !d.is_zero()).map(Some)
}

impl FromStr for Toleration {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match duration_or_never(s) {
            Some(Some(d)) => Ok(Toleration::After(d)),
            Some(None) => Ok(Toleration::Never),
            None => Err(invalid(format!(
                "{s:?} is not a toleration: write a duration such as 20s, 15m, 1h or 1h30m, or `never` to never purge"
            ))),
        }
    }
}

/// A positive span of whole seconds, written as users write them (`365d`,
/// `120d`, `10m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Span(pub std::time::Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        if s >= 86_400 && s.is_multiple_of(86_400) {
            write!(f, "{}d", s / 86_400)
        } else {
            f.write_str(&fmt_seconds(self.0))
        }
    }
}

impl FromStr for Span {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match parse_seconds(s) {
            Ok(d) if !d.is_zero() => Ok(Span(d)),
            _ => Err(invalid(format!("{s:?} is not a duration: write e.g. 365d, 120d, 12h or 10m"))),
        }
    }
}

/// How often every master snapshots its own etcd member: a duration
/// (`12h`, `30m`) or `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SnapshotInterval {
    Every(std::time::Duration),
    Never,
}

impl fmt::Display for SnapshotInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&match self {
            SnapshotInterval::Never => "never".into(),
            SnapshotInterval::Every(d) => fmt_seconds(*d),
        })
    }
}

impl FromStr for SnapshotInterval {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match duration_or_never(s) {
            Some(Some(d)) => Ok(SnapshotInterval::Every(d)),
            Some(None) => Ok(SnapshotInterval::Never),
            None => Err(invalid(format!(
                "{s:?} is not a snapshot interval: write a duration such as 12h, 6h or 30m, or `never` to take no \
                 scheduled snapshots"
            ))),
        }
    }
}

/// How many scheduled etcd snapshots each master keeps: 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Retention(u32);

impl Retention {
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl From<Retention> for u32 {
    fn from(r: Retention) -> u32 {
        r.0
    }
}

impl TryFrom<u32> for Retention {
    type Error = InvalidValue;
    fn try_from(n: u32) -> Result<Self, InvalidValue> {
        if (1..=1000).contains(&n) {
            Ok(Retention(n))
        } else {
            Err(invalid(format!("{n} snapshots cannot be kept: keep 1 to 1000 (a master keeps its newest ones)")))
        }
    }
}

impl FromStr for Retention {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let n: u32 = s.parse().map_err(|_| invalid(format!("{s:?} is not a number of snapshots: write e.g. 5")))?;
        n.try_into()
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which key type new keys get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    #[serde(rename = "rsa-2048")]
    #[value(name = "rsa-2048")]
    Rsa2048,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
        })
    }
}

/// A process the agent supervises on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    Etcd,
    Containerd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    Kubelet,
    KubeProxy,
}

impl Component {
    /// In start order: etcd and the container runtime before the control
    /// plane, kubelet last.
    pub const ALL: [Component; 7] = [
        Component::Etcd,
        Component::Containerd,
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::Kubelet,
        Component::KubeProxy,
    ];

    /// The component's name, which is also its binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::Containerd => "containerd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::Kubelet => "kubelet",
            Component::KubeProxy => "kube-proxy",
        }
    }
}

impl Component {
    /// What a master runs unless told otherwise.
    pub const MASTER: [Component; 7] = Component::ALL;
    /// What a worker runs unless told otherwise.
    pub const WORKER: [Component; 3] = [Component::Containerd, Component::Kubelet, Component::KubeProxy];

    /// The Kubernetes components, whose binaries come in the bundle and
    /// whose command lines depend on their version.
    pub fn is_kubernetes(self) -> bool {
        matches!(
            self,
            Component::KubeApiserver
                | Component::KubeControllerManager
                | Component::KubeScheduler
                | Component::Kubelet
                | Component::KubeProxy
        )
    }

    /// A master's control plane, which an upgrade moves first, one master
    /// at a time: etcd and the components that talk to their own node's
    /// API server.
    pub fn is_control_plane(self) -> bool {
        matches!(
            self,
            Component::Etcd | Component::KubeApiserver | Component::KubeControllerManager | Component::KubeScheduler
        )
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Component {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        Component::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<_> = Component::ALL.iter().map(|c| c.name()).collect();
            invalid(format!("unknown component {s:?}: choose from {}", names.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_what_users_type() {
        let cases = [
            ("lb.example.test:6443", "lb.example.test:6443"),
            ("LB.Example.Test:443", "lb.example.test:443"),
            ("lb.example.test", "lb.example.test:6443"),
            ("10.0.0.10:8443", "10.0.0.10:8443"),
            ("10.0.0.10", "10.0.0.10:6443"),
            ("[fd00::10]:6443", "[fd00::10]:6443"),
            ("[fd00::10]", "[fd00::10]:6443"),
        ];
        for (input, want) in cases {
            let hp: HostPort = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(hp.to_string(), want, "{input}");
        }
    }

    #[test]
    fn host_port_rejects_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("https://lb:6443", "scheme"),
            ("lb:0", "out of range"),
            ("lb:65536", "out of range"),
            ("lb:http", "out of range"),
            ("fd00::10", "without brackets"),
            ("fd00::10:6443", "without brackets"),
            ("[fd00::10:6443", "without closing"),
            ("lb_1:6443", "not a valid DNS name"),
            (":6443", "no host"),
            ("lb:6443/x", "path"),
        ];
        for (input, want) in cases {
            let err = input.parse::<HostPort>().unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }

    #[test]
    fn tolerations_read_as_users_write_them() {
        let cases = [
            ("20s", 20),
            ("15m", 900),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2h0m5s", 7205),
            ("1h 30m", 5400),
            ("1d", 86400),
        ];
        for (input, secs) in cases {
            assert_eq!(input.parse::<Toleration>().unwrap(), Toleration::After(std::time::Duration::from_secs(secs)));
        }
        assert_eq!("never".parse::<Toleration>().unwrap(), Toleration::Never);
        assert_eq!("1h30m".parse::<Toleration>().unwrap().to_string(), "1h30m");
        // The last: 3600 times it is past u64 (a hand-rolled parser overflowed).
        for bad in ["", "0s", "h", "10", "-5m", "forever", "500ms", "1s500ms", "5124095576030432h"] {
            let e = bad.parse::<Toleration>().unwrap_err().to_string();
            assert!(e.contains("write a duration such as 20s"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cidr_nth_gives_service_ips() {
        let c: Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(c.nth(1).to_string(), "10.96.0.1");
        assert_eq!(c.nth(10).to_string(), "10.96.0.10");
        assert!("10.96.0.1/12".parse::<Cidr>().unwrap_err().to_string().contains("host bits"));
        assert!("10.96.0.0/33".parse::<Cidr>().is_err());
        let v6: Cidr = "fd00:10:96::/112".parse().unwrap();
        assert_eq!(v6.nth(1).to_string(), "fd00:10:96::1");
    }

    #[test]
    fn node_names_follow_rfc_1123() {
        assert!("m1".parse::<NodeName>().is_ok());
        assert!("node-1.example".parse::<NodeName>().is_ok());
        for bad in ["", "M1", "-m1", "m1-", "m_1", "a..b"] {
            assert!(bad.parse::<NodeName>().is_err(), "{bad:?}");
        }
        assert!(CertSan::try_from("*.example.com".to_owned()).is_ok());
        assert!(CertSan::try_from("10.1.2.3".to_owned()).is_ok());
        assert!(CertSan::try_from("bad name".to_owned()).is_err());
    }
}
