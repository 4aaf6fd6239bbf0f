//! What the agent observes of its host before it renders command lines:
//! each Kubernetes binary's version, the cgroup driver, whether negative OOM
//! scores can be set, the pause image. Versions are cached by the binary's
//! size and modification time, so a reload asks again only when a binary
//! changed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{ClusterConfig, Component};
use crate::host::paths::Paths;
use crate::host::process::find_binary;
use crate::kube::components::HostFacts;
use crate::kube::version::{self, KubeVersion, VersionError};

/// The pause image when no bundle names one (containerd pulls it).
pub const DEFAULT_PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.9";

/// The file of a bundle that names its pause image.
pub const BUNDLE_PAUSE_IMAGE: &str = "pause-image";

type Stamp = (u64, Option<SystemTime>);

#[derive(Default)]
pub struct VersionCache {
    seen: HashMap<PathBuf, (Stamp, Result<KubeVersion, VersionError>)>,
}

impl VersionCache {
    pub fn version(&mut self, binary: &Path) -> Result<KubeVersion, VersionError> {
        let stamp = std::fs::metadata(binary).map(|m| (m.len(), m.modified().ok())).unwrap_or((0, None));
        if let Some((s, v)) = self.seen.get(binary) {
            if *s == stamp {
                return v.clone();
            }
        }
        let v = version::detect(binary);
        self.seen.insert(binary.to_owned(), (stamp, v.clone()));
        v
    }
}

/// Whether this process may lower OOM scores (CAP_SYS_RESOURCE, bit 24 of
/// the effective capability set).
pub fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// The pause image a bundle names, else the default.
pub fn pause_image(bundle: Option<&Path>) -> String {
    bundle
        .and_then(|b| std::fs::read_to_string(b.join(BUNDLE_PAUSE_IMAGE)).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_PAUSE_IMAGE.to_owned())
}

/// The facts, and for each Kubernetes component whose binary is missing or
/// of an unsupported version, why it cannot run.
pub fn observe(paths: &Paths, c: &ClusterConfig, cache: &mut VersionCache) -> (HostFacts, BTreeMap<Component, String>) {
    let mut versions = BTreeMap::new();
    let mut problems = BTreeMap::new();
    for comp in c.node.components.iter().copied().filter(|c| c.is_kubernetes()) {
        let Some(binary) = find_binary(paths, c.node.bundle_for(comp), comp.name()) else { continue };
        match cache.version(&binary) {
            Ok(v) => {
                versions.insert(comp, v);
            }
            Err(e) => {
                problems.insert(comp, e.to_string());
            }
        }
    }
    let facts = HostFacts {
        versions,
        systemd_cgroups: crate::host::systemd::is_running(),
        restrict_oom_score_adj: !has_cap_sys_resource(),
        pause_image: pause_image(c.node.bundle.as_deref()),
        cgroup_v1: crate::host::cgroups::is_v1(),
        resolv_conf: resolv_conf(paths, |f| std::fs::read_to_string(f).ok()),
    };
    (facts, problems)
}

/// The resolv.conf kubelet gives pods with `dnsPolicy: Default` (pure but
/// for `read`): a simulated host's own `<root>/etc/resolv.conf` when it has
/// one; else the machine's, unless that names systemd-resolved's stub
/// (127.0.0.53, which in a pod is the pod itself: CoreDNS would forward to
/// itself), where resolved's list of real upstreams is used, as kubeadm does.
pub fn resolv_conf(paths: &Paths, read: impl Fn(&Path) -> Option<String>) -> PathBuf {
    let own = paths.root().join("etc/resolv.conf");
    if !paths.is_host_root() && read(&own).is_some() {
        return own;
    }
    let etc = PathBuf::from("/etc/resolv.conf");
    let resolved = PathBuf::from("/run/systemd/resolve/resolv.conf");
    let stub = read(&etc)
        .is_some_and(|t| t.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["nameserver", "127.0.0.53"]));
    if stub && read(&resolved).is_some() {
        return resolved;
    }
    etc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_never_get_the_resolved_stub() {
        fn files<'a>(list: &'a [(&'a str, &'a str)]) -> impl Fn(&Path) -> Option<String> + 'a {
            move |f: &Path| list.iter().find(|(p, _)| Path::new(p) == f).map(|(_, t)| t.to_string())
        }
        let host = Paths::new("/");
        let stub = [
            ("/etc/resolv.conf", "nameserver 127.0.0.53\n"),
            ("/run/systemd/resolve/resolv.conf", "nameserver 192.0.2.1\n"),
        ];
        assert_eq!(resolv_conf(&host, files(&stub)), PathBuf::from("/run/systemd/resolve/resolv.conf"));
        let plain = [("/etc/resolv.conf", "nameserver 192.0.2.1\n")];
        assert_eq!(resolv_conf(&host, files(&plain)), PathBuf::from("/etc/resolv.conf"));
        // A simulated host keeps to its own file when it has one.
        let sim = Paths::new("/srv/h1");
        let own =
            [("/srv/h1/etc/resolv.conf", "nameserver 10.0.0.1\n"), ("/etc/resolv.conf", "nameserver 192.0.2.1\n")];
        assert_eq!(resolv_conf(&sim, files(&own)), PathBuf::from("/srv/h1/etc/resolv.conf"));
        assert_eq!(resolv_conf(&sim, files(&plain)), PathBuf::from("/etc/resolv.conf"));
    }
}
