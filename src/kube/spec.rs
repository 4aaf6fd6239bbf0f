//! What the command lines are made of: one supervised process fully
//! described, the facts about the host they depend on, and the helpers
//! that spell flags and paths.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::version::{self, KubeVersion};
use crate::config::Component;
use crate::host::fs::FileSpec;

/// One supervised process, fully described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSpec {
    pub component: Component,
    pub args: Vec<String>,
    /// Files whose content the process reads at start: a change to any of
    /// them means the process must be restarted to pick it up.
    pub inputs: Vec<PathBuf>,
    /// Files rendered for this process alone (its config), written before
    /// it starts; they are among its inputs.
    pub files: Vec<FileSpec>,
    /// A cgroup that must exist before it starts (kubelet's cgroup root on
    /// a simulated host).
    pub cgroup: Option<String>,
}

impl ComponentSpec {
    /// The command line as text, one argument a line (for golden tests and logs).
    pub fn render(&self) -> String {
        let mut out = format!("{}\n", self.component.name());
        for a in &self.args {
            out.push_str("  ");
            out.push_str(a);
            out.push('\n');
        }
        out
    }
}

/// Facts about the host and its binaries that command lines and rendered
/// files depend on: observed once by the caller and passed in, so that
/// rendering stays pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The version of each Kubernetes component's binary.
    pub versions: BTreeMap<Component, KubeVersion>,
    /// systemd is PID 1: kubelet and runc use the systemd cgroup driver,
    /// as they must where systemd manages the cgroup tree.
    pub systemd_cgroups: bool,
    /// This host cannot lower a process's oom_score_adj (it lacks
    /// CAP_SYS_RESOURCE, as containers and some VMs do): containerd must
    /// not ask for the negative score kubelet gives the pause container.
    pub restrict_oom_score_adj: bool,
    /// The pod sandbox image (a bundle names its own, imported at start).
    pub pause_image: String,
    /// The host's cgroup hierarchy is v1 (or hybrid): kubelet 1.35+ must be
    /// told to run anyway, and preflight warns.
    pub cgroup_v1: bool,
    /// The resolvers pods with `dnsPolicy: Default` (CoreDNS) are given.
    pub resolv_conf: PathBuf,
}

impl HostFacts {
    pub fn version(&self, c: Component) -> KubeVersion {
        // Callers detect every Kubernetes component's version before they
        // render it; the newest known is the safe reading for tests.
        self.versions.get(&c).copied().unwrap_or(KubeVersion::new(1, version::NEWEST_MINOR.1, 0))
    }
}

pub fn flag(name: &str, value: impl std::fmt::Display) -> String {
    format!("--{name}={value}")
}

pub fn p(path: PathBuf) -> String {
    path.display().to_string()
}
