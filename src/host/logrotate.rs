//! Size-capped rotation of the logs under `logs/`: each component's stdout
//! and stderr, and the agent's own, so that a chatty or crash-looping
//! component cannot fill the disk of a server nobody watches.
//!
//! The components hold their log open with `O_APPEND` for as long as they
//! run, so a renamed file would keep growing under its new name. A log over
//! its cap is therefore copied to `NAME.1` (older copies shift to `.2`, ...,
//! the oldest is dropped) and then truncated in place, as logrotate's
//! `copytruncate` does: the writer's next line lands at the start of the
//! emptied file. A line written between the copy and the truncation is lost;
//! the copy of a file at the cap takes milliseconds.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// How big a log may grow and how many rotated copies are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_bytes: u64,
    pub keep: u32,
}

/// 32 MiB and three copies: at most 128 MiB per log, about 1 GiB for every
/// log of a master (the journal's own default cap is 4 GiB).
pub const DEFAULT: Policy = Policy { max_bytes: 32 << 20, keep: 3 };

/// Rotates every `*.log` in `dir` that is over the cap; returns those rotated.
pub fn rotate_dir(dir: &Path, policy: Policy) -> io::Result<Vec<PathBuf>> {
    let mut rotated = vec![];
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(rotated),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "log") && rotate(&path, policy)? {
            rotated.push(path);
        }
    }
    rotated.sort();
    Ok(rotated)
}

/// `path.N`.
fn copy_name(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates one log if it is over the cap.
pub fn rotate(path: &Path, policy: Policy) -> io::Result<bool> {
    let len = match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= policy.max_bytes || policy.keep == 0 {
        return Ok(false);
    }
    for n in (1..policy.keep).rev() {
        match fs::rename(copy_name(path, n), copy_name(path, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let first = copy_name(path, 1);
    // Written under a temporary name, so that `.1` is never half a file.
    let partial = copy_name(path, 0);
    fs::copy(path, &partial)?;
    fs::rename(&partial, &first)?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_over_its_cap_is_copied_and_emptied_while_its_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("etcd.log");
        // The component's descriptor, as the supervisor opens it.
        let mut writer = OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let policy = Policy { max_bytes: 100, keep: 2 };
        writer.write_all(&[b'a'; 100]).unwrap();
        assert_eq!(rotate_dir(dir.path(), policy).unwrap(), Vec::<PathBuf>::new(), "at the cap, not over it");

        writer.write_all(b"b\n").unwrap();
        assert_eq!(rotate_dir(dir.path(), policy).unwrap(), vec![log.clone()]);
        assert_eq!(fs::read(copy_name(&log, 1)).unwrap().len(), 102);
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        // The writer carries on at the start of the emptied file: no hole.
        writer.write_all(b"after\n").unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"after\n");

        // Two more rotations: the oldest copy is dropped, `keep` stay.
        for round in [b'c', b'd'] {
            writer.write_all(&[round; 200]).unwrap();
            rotate_dir(dir.path(), policy).unwrap();
        }
        assert!(fs::read(copy_name(&log, 1)).unwrap().ends_with(&[b'd'; 200]));
        assert!(fs::read(copy_name(&log, 2)).unwrap().ends_with(&[b'c'; 200]));
        assert!(!copy_name(&log, 3).exists() && !copy_name(&log, 0).exists());
    }

    #[test]
    fn only_logs_are_rotated() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("state.json"), [b'x'; 500]).unwrap();
        fs::write(dir.path().join("kubelet.log.1"), [b'x'; 500]).unwrap();
        let policy = Policy { max_bytes: 100, keep: 3 };
        assert!(rotate_dir(dir.path(), policy).unwrap().is_empty());
        assert!(rotate_dir(&dir.path().join("absent"), policy).unwrap().is_empty());
    }
}
