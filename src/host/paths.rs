//! Every host path hakube touches, defined once and hung off one root.
//!
//! The root is `/` on a real server; the sandbox and the tests give each
//! simulated host a directory of its own, so a host can be made and reset
//! without touching anything else on the machine.

use std::path::{Path, PathBuf};

/// The machine directories a simulated host's agent maps onto the root's
/// own (see [`crate::host::mountns`]).
pub const MAPPED: [&str; 3] = ["/var/lib", "/var/log", "/run"];

/// The host paths of one node, all below `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    root: PathBuf,
}

/// `--root` given as something other than a directory of its own.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootError {
    #[error("--root {0}: a root with `..` in it is refused; give the directory itself")]
    DotDot(PathBuf),
    #[error("--root {given} resolves to / (this machine's own root): pass `--root /` if that is meant")]
    IsMachineRoot { given: PathBuf },
    #[error("--root {given}: {message}")]
    Unreadable { given: PathBuf, message: String },
}

/// The root as hakube uses it: absolute, with symlinks resolved once, so
/// that what `reset` removes under a simulated root is never the machine's
/// own `/var/lib` because of a `..` or a symlink to `/`. `/` is only ever
/// `/` when given as `/`.
pub fn resolve_root(given: &Path) -> Result<PathBuf, RootError> {
    if given == Path::new("/") {
        return Ok(given.to_owned());
    }
    if given.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(RootError::DotDot(given.to_owned()));
    }
    let unreadable = |e: std::io::Error| RootError::Unreadable { given: given.to_owned(), message: e.to_string() };
    let abs = std::path::absolute(given).map_err(unreadable)?;
    // The longest part that exists, resolved; the rest is created later.
    let mut existing = abs.as_path();
    let mut rest = vec![];
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().map_err(unreadable)?;
    resolved.extend(rest.iter().rev());
    if resolved == Path::new("/") {
        return Err(RootError::IsMachineRoot { given: given.to_owned() });
    }
    Ok(resolved)
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this is the machine's own root rather than a simulated host.
    pub fn is_host_root(&self) -> bool {
        self.root == Path::new("/")
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

    /// Where bundle files are unpacked, each in a directory named by its id.
    pub fn bundles_dir(&self) -> PathBuf {
        self.data_dir().join("bundles")
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

    /// Where a master keeps its etcd snapshots: outside hakube's data
    /// directory, so that `reset` (which removes that) leaves them.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.host("/var/backups/hakube/etcd")
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

    /// kubelet's KubeletConfiguration file.
    pub fn kubelet_config(&self) -> PathBuf {
        self.kubelet_dir().join("config.yaml")
    }

    pub fn kubelet_root_dir(&self) -> PathBuf {
        self.host("/var/lib/kubelet")
    }

    /// kubelet's default `--cert-dir` is `/var/lib/kubelet/pki` whatever its
    /// `--root-dir`: name it so it stays under the root.
    pub fn kubelet_cert_dir(&self) -> PathBuf {
        self.kubelet_root_dir().join("pki")
    }

    /// FlexVolume plugins; kubelet creates the directory at start.
    pub fn kubelet_volume_plugin_dir(&self) -> PathBuf {
        self.host("/usr/libexec/kubernetes/kubelet-plugins/volume/exec")
    }

    /// Where pods' logs go. kubelet hard-codes `/var/log/pods` (and
    /// `/var/log/containers`); under a root other than `/` the agent maps
    /// them here (see [`crate::host::mountns`]).
    pub fn pod_log_dir(&self) -> PathBuf {
        self.host("/var/log/pods")
    }

    pub fn containerd_config(&self) -> PathBuf {
        self.config_dir().join("containerd.toml")
    }

    /// containerd's persistent root (images, snapshots).
    pub fn containerd_root(&self) -> PathBuf {
        self.data_dir().join("containerd")
    }

    /// containerd's state directory (sockets, runtime state), cleared at boot.
    pub fn containerd_state(&self) -> PathBuf {
        self.host("/run/hakube/containerd")
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_state().join("containerd.sock")
    }

    /// The pod network's CNI config, which containerd reads.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.config_dir().join("cni")
    }

    /// Written when the cluster purged this node: its agent then runs
    /// nothing until the node is reset and joined again.
    pub fn purged_marker(&self) -> PathBuf {
        self.data_dir().join("purged")
    }

    /// The masters this node knows (name and address), kept current by its
    /// agent: where it finds the cluster when etcd or the API is out of
    /// reach, and the node-local load balancer's backends.
    pub fn masters_file(&self) -> PathBuf {
        self.data_dir().join("masters.json")
    }

    /// Records of image archives imported into containerd, by digest.
    pub fn imported_images_dir(&self) -> PathBuf {
        self.data_dir().join("images-imported")
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
        let mut paths = vec![self.config_dir(), self.systemd_unit()];
        if self.is_host_root() {
            paths.extend([
                self.data_dir(),
                self.kubelet_root_dir(),
                self.pod_log_dir(),
                self.host("/var/log/containers"),
                self.host("/run/hakube"),
                // host-local IPAM's leases of the pod network (other CNI
                // users, podman, share /var/lib/cni).
                self.host("/var/lib/cni/networks/hakube"),
            ]);
        } else {
            // A simulated host's directories that its agent maps onto the
            // machine's (host::mountns): only this node wrote there.
            paths.extend(MAPPED.map(|d| self.host(d)));
            paths.push(self.host("/usr/libexec/kubernetes"));
        }
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_resolves_once_and_never_to_the_machines_own_by_accident() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        assert_eq!(resolve_root(Path::new("/")), Ok(PathBuf::from("/")));
        assert_eq!(resolve_root(&real), Ok(real.clone()));
        // Not there yet: resolved as far as it exists.
        assert_eq!(resolve_root(&real.join("h1/x")), Ok(real.join("h1/x")));
        // A symlink to a host root is followed.
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        assert_eq!(resolve_root(&real.join("link")), Ok(real.clone()));
        // The two ways to reach the machine's root by accident.
        std::os::unix::fs::symlink("/", real.join("to-root")).unwrap();
        let e = resolve_root(&real.join("to-root")).unwrap_err();
        assert!(matches!(e, RootError::IsMachineRoot { .. }), "{e}");
        assert!(e.to_string().contains("pass `--root /`"), "{e}");
        let e = resolve_root(Path::new("/tmp/..")).unwrap_err();
        assert_eq!(e, RootError::DotDot("/tmp/..".into()));
    }

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
