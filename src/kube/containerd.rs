//! The node's own containerd (as k0s and k3s run theirs): its root, state
//! and socket under the host root, its CRI plugin configured by hakube (the
//! pause image, the pod network's CNI directories, the cgroup driver).
//! Rendering is pure; [`super::components::HostFacts`] brings what was
//! observed of the host.

use super::spec::{flag, p, ComponentSpec, HostFacts};
use crate::config::{ClusterConfig, Component};
use crate::host::fs::FileSpec;
use crate::host::paths::Paths;

/// The CRI endpoint kubelet dials.
pub fn endpoint(paths: &Paths) -> String {
    format!("unix://{}", paths.containerd_socket().display())
}

/// A TOML basic string. JSON's string escapes are TOML's (`\"`, `\\`,
/// control characters as `\uXXXX`), so a path with a quote or a newline
/// stays one value.
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// containerd 2's config (schema version 3; the CRI plugin is split into
/// `cri.v1.runtime` and `cri.v1.images` there).
pub fn config(paths: &Paths, c: &ClusterConfig, facts: &HostFacts) -> FileSpec {
    let q = |path: std::path::PathBuf| quote(&path.display().to_string());
    let text = format!(
        r#"# Rendered by hakube for this node's containerd; hakube rewrites it.
version = 3
root = {root}
state = {state}
# Snapshotters this host cannot use only add warnings at start.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.erofs"]

[grpc]
  address = {socket}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.cri.v1.runtime"]
  # Without CAP_SYS_RESOURCE a negative oom_score_adj (kubelet asks -998
  # for the pause container) cannot be set and every sandbox fails.
  restrict_oom_score_adj = {restrict}

  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        # kubelet takes the cgroup driver from here (KEP-4033).
        SystemdCgroup = {systemd}

  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{cni_bin}]
    conf_dir = {cni_conf}

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = {pause}
"#,
        root = q(paths.containerd_root()),
        state = q(paths.containerd_state()),
        socket = q(paths.containerd_socket()),
        opt = q(paths.data_dir().join("containerd-opt")),
        pause = quote(&facts.pause_image),
        restrict = facts.restrict_oom_score_adj,
        systemd = facts.systemd_cgroups,
        cni_bin = q(c.node.cni_bin_dir.clone()),
        cni_conf = q(paths.cni_conf_dir()),
    );
    FileSpec::new(paths.containerd_config(), text, 0o644)
}

pub fn spec(paths: &Paths, c: &ClusterConfig, facts: &HostFacts) -> ComponentSpec {
    let file = config(paths, c, facts);
    ComponentSpec {
        component: Component::Containerd,
        args: vec![flag("config", p(paths.containerd_config()))],
        inputs: vec![paths.containerd_config()],
        files: vec![file],
        cgroup: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_toml_strings() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(quote("a\nb"), r#""a\nb""#);
    }
}
