//! Every host path hakube touches, defined once and hung off one root.
//!
//! The root is `/` on a real server; the sandbox and the tests give each
//! simulated host a directory of its own, so a host can be made and reset
//! without touching anything else on the machine.

use std::path::{Path, PathBuf};

/// The host paths of one node, all below `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root` joined with an absolute host path such as `/etc/hakube`.
    pub fn host(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    pub fn config_dir(&self) -> PathBuf {
        self.host("/etc/hakube")
    }

    /// The versioned cluster config, meant for version control.
    pub fn config_file(&self) -> PathBuf {
        self.config_dir().join("cluster.yaml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.host("/var/lib/hakube")
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir().join("pki")
    }

    /// A PKI file by its kubeadm name, e.g. `etcd/ca.crt`.
    pub fn pki(&self, name: &str) -> PathBuf {
        self.pki_dir().join(name)
    }

    pub fn pki_backup_dir(&self) -> PathBuf {
        self.pki_dir().join("backup")
    }

    pub fn etcd_data_dir(&self) -> PathBuf {
        self.data_dir().join("etcd")
    }

    /// Written once this node's etcd member has been seen healthy: from then
    /// on an empty data directory means lost data, not a first start.
    pub fn etcd_bootstrapped_marker(&self) -> PathBuf {
        self.data_dir().join("etcd-bootstrapped")
    }

    pub fn kubeconfig_dir(&self) -> PathBuf {
        self.data_dir().join("kubeconfigs")
    }

    pub fn kubeconfig(&self, name: &str) -> PathBuf {
        self.kubeconfig_dir().join(format!("{name}.conf"))
    }

    pub fn kubelet_dir(&self) -> PathBuf {
        self.data_dir().join("kubelet")
    }

    pub fn kubelet_root_dir(&self) -> PathBuf {
        self.host("/var/lib/kubelet")
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.data_dir().join("bin")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir().join("logs")
    }

    pub fn component_log(&self, component: &str) -> PathBuf {
        self.log_dir().join(format!("{component}.log"))
    }

    /// Written by the agent; read by `status` and by `install` while it waits.
    pub fn state_file(&self) -> PathBuf {
        self.data_dir().join("state.json")
    }

    /// Holds the agent's pid; the agent keeps an exclusive lock on it while it
    /// lives, so liveness is a lock probe rather than a racy pid check.
    pub fn agent_pid_file(&self) -> PathBuf {
        self.data_dir().join("agent.pid")
    }

    pub fn systemd_unit(&self) -> PathBuf {
        self.host("/etc/systemd/system/hakube.service")
    }

    /// Where the systemd unit expects the binary.
    pub fn installed_binary(&self) -> PathBuf {
        self.host("/usr/local/bin/hakube")
    }

    /// Present when install copied the binary to [`Self::installed_binary`],
    /// so reset removes only a binary hakube put there itself.
    pub fn installed_binary_marker(&self) -> PathBuf {
        self.data_dir().join("installed-binary")
    }

    /// Everything `install` may create, for `reset` (deepest first is not
    /// required: each is removed recursively).
    pub fn created_by_install(&self) -> Vec<PathBuf> {
        vec![self.config_dir(), self.data_dir(), self.kubelet_root_dir(), self.systemd_unit()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_stays_below_the_root() {
        let p = Paths::new("/tmp/host1");
        for path in p.created_by_install() {
            assert!(path.starts_with("/tmp/host1"), "{path:?}");
        }
        assert_eq!(p.pki("etcd/ca.crt"), PathBuf::from("/tmp/host1/var/lib/hakube/pki/etcd/ca.crt"));
        assert_eq!(Paths::new("/").config_file(), PathBuf::from("/etc/hakube/cluster.yaml"));
    }
}
