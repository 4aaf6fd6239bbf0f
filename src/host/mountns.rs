//! A simulated host's own view of `/var/lib`, `/var/log` and `/run`.
//!
//! kubelet, containerd's runc shim and the CNI plugins hard-code a few host
//! paths whatever their flags say: `/var/lib/kubelet/device-plugins`,
//! `/var/log/pods` and `/var/log/containers` (kubelet), `/var/lib/cni`
//! (host-local IPAM's leases, libcni's cache), `/run/containerd/runc` and
//! `/run/containerd/s` (the shim), `/run/netns` (pod network namespaces).
//! Several simulated hosts on one machine would share them: kubelets
//! garbage-collect each other's pod logs, IPAM hands the same address to
//! two nodes' pods. So under a root other than `/` the agent gives itself
//! (and so its components) a mount namespace of its own in which those
//! three directories are the root's: nothing is written outside the root,
//! and no mount is seen outside the namespace.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::paths::Paths;

pub use super::paths::MAPPED;

#[derive(Debug, thiserror::Error)]
pub enum MountNsError {
    #[error(
        "--root {root} is below {dir}, which the agent maps onto the root's own {dir}: choose a root elsewhere \
         (e.g. under /srv or /tmp)"
    )]
    RootInsideMapped { root: PathBuf, dir: &'static str },
    #[error("cannot give the agent a mount namespace of its own ({step}): {errno}")]
    Setup { step: String, errno: nix::Error },
    #[error(transparent)]
    Fs(#[from] super::fs::FsError),
}

/// Refuses roots that the mapping would hide (pure).
pub fn check_root(root: &Path) -> Result<(), MountNsError> {
    for dir in MAPPED {
        if root.starts_with(dir) {
            return Err(MountNsError::RootInsideMapped { root: root.to_owned(), dir });
        }
    }
    Ok(())
}

/// Enters a private mount namespace with [`MAPPED`] bound to the root's
/// directories. Call it while the process has one thread: a mount
/// namespace belongs to the thread that unshares it. Does nothing for `/`.
pub fn isolate(paths: &Paths) -> Result<(), MountNsError> {
    if paths.is_host_root() {
        return Ok(());
    }
    check_root(paths.root())?;
    let step = |what: String| move |errno| MountNsError::Setup { step: what, errno };
    unshare(CloneFlags::CLONE_NEWNS).map_err(step("unshare".into()))?;
    // Mounts made here must not propagate back to the machine.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(step("making / a slave mount".into()))?;
    for dir in MAPPED {
        let own = paths.host(dir);
        super::fs::create_dir_all(&own, 0o755)?;
        mount(Some(&own), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(step(format!("binding {} onto {dir}", own.display())))?;
    }
    mount_machine_cgroups()
}

/// `ip netns exec` mounts a fresh /sys for the network namespace, which
/// hides the cgroup tree kubelet and runc work in: mount the machine's
/// hierarchies again as PID 1 has them (the same controllers give the same
/// hierarchy, not a new one). Only in a private mount namespace; a no-op
/// where they are mounted.
fn mount_machine_cgroups() -> Result<(), MountNsError> {
    let step = |what: String| move |errno| MountNsError::Setup { step: what, errno };
    let own = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if has_mount_below(&own, CGROUP_DIR) {
        return Ok(());
    }
    let machine = std::fs::read_to_string("/proc/1/mountinfo").unwrap_or_default();
    for m in cgroup_mounts(&machine) {
        let _ = std::fs::create_dir_all(&m.point);
        mount(Some(m.fstype.as_str()), m.point.as_str(), Some(m.fstype.as_str()), m.flags, Some(m.data.as_str()))
            .map_err(step(format!("mounting {} {} ({})", m.fstype, m.point, m.data)))?;
    }
    Ok(())
}

/// For a one-shot command on a simulated host (`reset`): a private mount
/// namespace with the machine's cgroup hierarchies, so that it can reach
/// the host's cgroups. Does nothing for `/`.
pub fn enter_for_cgroups(paths: &Paths) -> Result<(), MountNsError> {
    if paths.is_host_root() {
        return Ok(());
    }
    let step = |what: String| move |errno| MountNsError::Setup { step: what, errno };
    unshare(CloneFlags::CLONE_NEWNS).map_err(step("unshare".into()))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(step("making / a slave mount".into()))?;
    mount_machine_cgroups()
}

/// Unmounts everything mounted at or below `dir` in this mount namespace,
/// deepest first (lazily, as a busy mount may still have users). Returns
/// what could not be unmounted.
pub fn unmount_below(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
        .into_iter()
        .filter_map(|p| {
            nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
                .err()
                .map(|e| format!("cannot unmount {}: {e}", p.display()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

const CGROUP_DIR: &str = "/sys/fs/cgroup";

/// One mount of the machine's cgroup tree.
#[derive(Debug, PartialEq, Eq)]
struct CgroupMount {
    point: String,
    fstype: String,
    data: String,
    flags: MsFlags,
}

/// The mounts at and below /sys/fs/cgroup in a mountinfo, parents first
/// (pure). Fields: `id parent major:minor root point options [optional…] -
/// fstype source super-options`.
fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<_> = left.split_whitespace().collect();
            let point = *fields.get(4)?;
            if !Path::new(point).starts_with(CGROUP_DIR) {
                return None;
            }
            let mut right = right.split_whitespace();
            let fstype = right.next()?.to_owned();
            let _source = right.next()?;
            let data: Vec<_> = right.next().unwrap_or("").split(',').filter(|o| *o != "rw" && *o != "ro").collect();
            let mut flags = MsFlags::empty();
            for o in fields.get(5)?.split(',') {
                flags |= match o {
                    "ro" => MsFlags::MS_RDONLY,
                    "nosuid" => MsFlags::MS_NOSUID,
                    "nodev" => MsFlags::MS_NODEV,
                    "noexec" => MsFlags::MS_NOEXEC,
                    "relatime" => MsFlags::MS_RELATIME,
                    _ => MsFlags::empty(),
                };
            }
            Some(CgroupMount { point: point.to_owned(), fstype, data: data.join(","), flags })
        })
        .collect()
}

/// Whether anything is mounted at or below `dir`, from /proc/self/mountinfo
/// (its fifth field is the mount point).
fn has_mount_below(mountinfo: &str, dir: &str) -> bool {
    mountinfo.lines().filter_map(|l| l.split_whitespace().nth(4)).any(|m| Path::new(m).starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_that_the_mapping_would_hide_are_refused() {
        assert!(check_root(Path::new("/srv/hosts/m1")).is_ok());
        assert!(check_root(Path::new("/tmp/.tmpX")).is_ok());
        let e = check_root(Path::new("/var/lib/hakube-hosts/m1")).unwrap_err().to_string();
        assert!(e.contains("below /var/lib"), "{e}");
        assert!(check_root(Path::new("/var/log/x")).is_err());
        assert!(check_root(Path::new("/run/x")).is_err());
        // A sibling with a common prefix is not below it.
        assert!(check_root(Path::new("/var/library")).is_ok());
    }

    #[test]
    fn the_machines_cgroup_mounts_are_read_as_pid_1_has_them() {
        let info = "23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n\
                    31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw,nosuid,relatime - cgroup cgroup rw,cpu\n\
                    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let m = cgroup_mounts(info);
        let summary: Vec<_> = m.iter().map(|m| (m.point.as_str(), m.fstype.as_str(), m.data.as_str())).collect();
        assert_eq!(
            summary,
            [
                ("/sys/fs/cgroup", "tmpfs", "mode=755"),
                ("/sys/fs/cgroup/cpu", "cgroup", "cpu"),
                ("/sys/fs/cgroup/systemd", "cgroup", "name=systemd"),
                ("/sys/fs/cgroup/unified", "cgroup2", ""),
            ]
        );
        assert_eq!(m[1].flags, MsFlags::MS_NOSUID | MsFlags::MS_RELATIME);
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape("/var/lib/kubelet/pods/a\\040b"), "/var/lib/kubelet/pods/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn finds_cgroup_mounts() {
        let with = "29 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
                    30 29 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let without = "100 90 0:50 / /sys rw - sysfs sysfs rw\n101 90 0:51 / /proc rw - proc proc rw\n";
        assert!(has_mount_below(with, CGROUP_DIR));
        assert!(!has_mount_below(without, CGROUP_DIR));
    }
}
