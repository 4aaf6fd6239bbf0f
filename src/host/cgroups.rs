//! The cgroup a simulated host's kubelet puts its pods under: it must exist
//! in every hierarchy before kubelet starts (kubelet checks), and `reset`
//! removes it with whatever still runs in it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup hierarchies mounted in this mount namespace (a simulated
/// host's commands see the machine's through [`super::mountns`]).
fn hierarchies() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            matches!(right.split_whitespace().next()?, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// `/hakube-x` below a hierarchy's mount point.
fn under(mount: &Path, cgroup: &str) -> PathBuf {
    mount.join(cgroup.trim_start_matches('/'))
}

/// Creates `cgroup` (e.g. `/hakube-0123456789`) in every hierarchy. A new
/// v1 cpuset starts with no CPUs and no memory nodes: it gets its parent's.
pub fn ensure(cgroup: &str) -> Result<(), String> {
    for mount in hierarchies() {
        let dir = under(&mount, cgroup);
        if dir.is_dir() {
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let parent = dir.parent().map(|p| p.join(file));
            if let Some(value) = parent.and_then(|p| std::fs::read_to_string(p).ok()) {
                std::fs::write(dir.join(file), value.trim())
                    .map_err(|e| format!("cannot set {}: {e}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

/// Whether `/sys/fs/cgroup` is anything but the unified (v2) hierarchy:
/// v1 and hybrid hosts both count as v1 for kubelet.
pub fn is_v1() -> bool {
    match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(fs) => fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC,
        Err(_) => false,
    }
}

/// The processes in the cgroups `dirs` (cgroupfs directories), sorted,
/// each once.
pub fn pids_in(dirs: &[std::path::PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Kills every process in `cgroup` and below, in every hierarchy, then
/// removes the cgroups, deepest first. Bounded; returns what it could not
/// remove.
pub fn remove(cgroup: &str) -> Vec<String> {
    let mut left = vec![];
    for mount in hierarchies() {
        let top = under(&mount, cgroup);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = vec![];
        let mut stack = vec![top.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            dirs.push(d);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = pids_in(&dirs);
            if pids.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Deepest first: a cgroup with children cannot be removed.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            if let Err(e) = std::fs::remove_dir(&d) {
                left.push(format!("{}: {e}", d.display()));
            }
        }
    }
    left
}
