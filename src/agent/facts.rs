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
use crate::kube::components::{find_binary, HostFacts};
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
        let Some(binary) = find_binary(paths, c.node.bundle.as_deref(), comp.name()) else { continue };
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
    };
    (facts, problems)
}
