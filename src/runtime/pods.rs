//! What runs of a node's pods outside kubelet and containerd: containers
//! outlive both (their shims re-parent to init, by design, so that a
//! restart of the agent leaves them alone). Stopping a node for good (a
//! reset, or the agent of a node the cluster purged) ends them here.

use std::path::Path;

use crate::host::paths::Paths;
use crate::host::{cgroups, process};

/// Ends every process in this node's pod cgroup, then the shims of this
/// node's containerd (they ignore SIGTERM). Returns the cgroups that could
/// not be removed.
pub fn stop_all(paths: &Paths) -> Vec<String> {
    let left = kubelet_cgroup_root(paths).map(|c| cgroups::remove(&c)).unwrap_or_default();
    let socket = paths.containerd_socket().display().to_string();
    for pid in process::matching(|argv| is_shim_of(argv, &socket)) {
        process::kill_now(pid);
    }
    left
}

/// The cgroup kubelet puts this node's pods in, from its config: a
/// simulated host's own root, else kubelet's default for its driver.
fn kubelet_cgroup_root(paths: &Paths) -> Option<String> {
    let text = std::fs::read_to_string(paths.kubelet_config()).ok()?;
    let v: serde_norway::Value = serde_norway::from_str(&text).ok()?;
    if let Some(root) = v.get("cgroupRoot").and_then(|r| r.as_str()) {
        return Some(root.to_owned());
    }
    Some(match v.get("cgroupDriver").and_then(|d| d.as_str()) {
        Some("systemd") => "/kubepods.slice".to_owned(),
        _ => "/kubepods".to_owned(),
    })
}

/// A containerd shim serving the containerd at `socket`.
fn is_shim_of(argv: &[String], socket: &str) -> bool {
    let is_shim = argv
        .first()
        .is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f.to_string_lossy().starts_with("containerd-shim")));
    is_shim && argv.windows(2).any(|w| w[0] == "-address" && w[1] == socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shims_are_told_apart_by_their_containerd() {
        let argv = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let sock = "/srv/w1/run/hakube/containerd/containerd.sock";
        let ours = argv("/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id abc -address /srv/w1/run/hakube/containerd/containerd.sock");
        let theirs =
            argv("/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id abc -address /run/containerd/containerd.sock");
        assert!(is_shim_of(&ours, sock));
        assert!(!is_shim_of(&theirs, sock));
        assert!(!is_shim_of(&argv("/usr/bin/containerd --config x"), sock));
    }
}
