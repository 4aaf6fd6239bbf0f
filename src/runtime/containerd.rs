//! The node's own containerd: its root, state and socket under the host
//! root, its CRI plugin configured by hakube (the pause image, the pod
//! network's CNI directories, the cgroup driver). The config file is
//! serialized from the structs below, so no path or image name can break
//! its structure; rendering is pure.

use std::path::PathBuf;

use serde::Serialize;

use crate::host::fs::FileSpec;
use crate::host::paths::Paths;

/// The CRI endpoint kubelet dials.
pub fn endpoint(paths: &Paths) -> String {
    format!("unix://{}", paths.containerd_socket().display())
}

/// What of the host and the cluster the config depends on.
#[derive(Debug, Clone)]
pub struct Runtime<'a> {
    /// The pod sandbox image (a bundle names its own, imported at start).
    pub pause_image: &'a str,
    /// Without CAP_SYS_RESOURCE a negative oom_score_adj (kubelet asks
    /// -998 for the pause container) cannot be set and every sandbox
    /// fails: containerd must not pass it on.
    pub restrict_oom_score_adj: bool,
    /// runc puts containers in cgroups through systemd (systemd is PID 1);
    /// kubelet takes its cgroup driver from here (KEP-4033).
    pub systemd_cgroups: bool,
    /// Where the CNI plugins are.
    pub cni_bin_dir: PathBuf,
}

/// Snapshotters this host cannot use only add warnings at start.
const DISABLED_PLUGINS: [&str; 5] = [
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.erofs",
];

/// containerd 2's config, schema version 3 (the CRI plugin is split into
/// `cri.v1.runtime` and `cri.v1.images` there).
#[derive(Serialize)]
struct Config {
    version: u32,
    root: String,
    state: String,
    disabled_plugins: [&'static str; 5],
    grpc: Grpc,
    plugins: Plugins,
}

#[derive(Serialize)]
struct Grpc {
    address: String,
}

#[derive(Serialize)]
struct Plugins {
    #[serde(rename = "io.containerd.internal.v1.opt")]
    opt: Opt,
    #[serde(rename = "io.containerd.cri.v1.runtime")]
    cri_runtime: CriRuntime,
    #[serde(rename = "io.containerd.cri.v1.images")]
    cri_images: CriImages,
}

#[derive(Serialize)]
struct Opt {
    path: String,
}

#[derive(Serialize)]
struct CriRuntime {
    restrict_oom_score_adj: bool,
    containerd: Containerd,
    cni: Cni,
}

#[derive(Serialize)]
struct Containerd {
    default_runtime_name: &'static str,
    runtimes: Runtimes,
}

#[derive(Serialize)]
struct Runtimes {
    runc: Runc,
}

#[derive(Serialize)]
struct Runc {
    runtime_type: &'static str,
    options: RuncOptions,
}

#[derive(Serialize)]
struct RuncOptions {
    #[serde(rename = "SystemdCgroup")]
    systemd_cgroup: bool,
}

#[derive(Serialize)]
struct Cni {
    bin_dirs: [String; 1],
    conf_dir: String,
}

#[derive(Serialize)]
struct CriImages {
    pinned_images: PinnedImages,
}

#[derive(Serialize)]
struct PinnedImages {
    sandbox: String,
}

/// A path as the config names it (as every other config file hakube
/// renders names paths: lossily, should one not be UTF-8).
fn text(path: PathBuf) -> String {
    path.display().to_string()
}

/// The config file of the node's containerd.
pub fn config(paths: &Paths, runtime: &Runtime) -> FileSpec {
    let config = Config {
        version: 3,
        root: text(paths.containerd_root()),
        state: text(paths.containerd_state()),
        disabled_plugins: DISABLED_PLUGINS,
        grpc: Grpc { address: text(paths.containerd_socket()) },
        plugins: Plugins {
            opt: Opt { path: text(paths.data_dir().join("containerd-opt")) },
            cri_runtime: CriRuntime {
                restrict_oom_score_adj: runtime.restrict_oom_score_adj,
                containerd: Containerd {
                    default_runtime_name: "runc",
                    runtimes: Runtimes {
                        runc: Runc {
                            runtime_type: "io.containerd.runc.v2",
                            options: RuncOptions { systemd_cgroup: runtime.systemd_cgroups },
                        },
                    },
                },
                cni: Cni { bin_dirs: [text(runtime.cni_bin_dir.clone())], conf_dir: text(paths.cni_conf_dir()) },
            },
            cri_images: CriImages { pinned_images: PinnedImages { sandbox: runtime.pause_image.to_owned() } },
        },
    };
    let body = toml::to_string(&config).expect("the containerd config is plain tables of strings and booleans");
    let text = format!("# Rendered by hakube for this node's containerd; hakube rewrites it.\n{body}");
    FileSpec::new(paths.containerd_config(), text, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(pause_image: &str) -> Runtime<'_> {
        Runtime {
            pause_image,
            restrict_oom_score_adj: true,
            systemd_cgroups: false,
            cni_bin_dir: PathBuf::from("/opt/cni/bin"),
        }
    }

    #[test]
    fn the_config_reads_back_as_containerd_reads_it() {
        let paths = Paths::new("/srv/w1");
        let file = config(&paths, &runtime("hakube.local/pause:3.10"));
        let v: toml::Table = toml::from_str(std::str::from_utf8(&file.contents).unwrap()).expect("valid TOML");
        assert_eq!(v["version"].as_integer(), Some(3));
        assert_eq!(v["grpc"]["address"].as_str(), Some("/srv/w1/run/hakube/containerd/containerd.sock"));
        let cri = &v["plugins"]["io.containerd.cri.v1.runtime"];
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(), Some(false));
        assert_eq!(cri["cni"]["bin_dirs"][0].as_str(), Some("/opt/cni/bin"));
        assert_eq!(
            v["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some("hakube.local/pause:3.10")
        );
    }

    #[test]
    fn no_value_breaks_the_structure() {
        // A root with a quote and a newline, an image name with a bracket:
        // each stays one string value.
        let paths = Paths::new("/srv/a\"b\n[grpc]");
        let file = config(&paths, &runtime("x\"]\nversion = 9"));
        let v: toml::Table = toml::from_str(std::str::from_utf8(&file.contents).unwrap()).expect("valid TOML");
        assert_eq!(v["version"].as_integer(), Some(3));
        assert_eq!(v["root"].as_str(), Some("/srv/a\"b\n[grpc]/var/lib/hakube/containerd"));
        assert_eq!(
            v["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some("x\"]\nversion = 9")
        );
    }
}
