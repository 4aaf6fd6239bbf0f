//! Exclusive locks that leave nothing on disk.
//!
//! `install`, `join` and `reset` lock the host root directory itself with
//! flock(2): a second run on the same root is refused at once, the lock goes
//! away with the process however it ends, and no lock file is ever left over.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("root {path} does not exist or is not a directory: create it, or pass another --root")]
    NoRoot { path: PathBuf },
    #[error(
        "another hakube command is already changing {path} (install, join or reset): \
         wait for it to finish, then run this again"
    )]
    Held { path: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Held while a command changes the host; released on drop or exit.
#[derive(Debug)]
pub struct RootLock {
    _lock: Flock<File>,
}

pub fn lock_root(root: &Path) -> Result<RootLock, LockError> {
    if !root.is_dir() {
        return Err(LockError::NoRoot { path: root.to_owned() });
    }
    let dir = File::open(root).map_err(|source| LockError::Io { path: root.to_owned(), source })?;
    match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(RootLock { _lock: lock }),
        Err((_, Errno::EWOULDBLOCK)) => Err(LockError::Held { path: root.to_owned() }),
        Err((_, e)) => Err(LockError::Io { path: root.to_owned(), source: e.into() }),
    }
}

/// As [`lock_root`], waiting up to `limit` while another holds it. The
/// agent takes the root for the moment it rewrites this host's files for
/// new cluster-wide settings (`agent::converge::converge`); a command run
/// right then, as a re-run right after an address change is, waits that
/// moment out instead of being refused. A command that holds it longer (a
/// second install) is still refused, after `limit`.
pub fn lock_root_waiting(root: &Path, limit: std::time::Duration) -> Result<RootLock, LockError> {
    crate::retry::Retry::within(limit, std::time::Duration::from_millis(100)).run_blocking(|| {
        lock_root(root).map_err(|e| crate::retry::Failure::when(matches!(e, LockError::Held { .. }), e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_root_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_root(dir.path()).unwrap();
        assert!(matches!(lock_root(dir.path()), Err(LockError::Held { .. })));
        drop(first);
        lock_root(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(matches!(lock_root(&dir.path().join("missing")), Err(LockError::NoRoot { .. })));
    }

    #[test]
    fn a_waiting_lock_takes_the_root_once_a_brief_holder_lets_go_and_refuses_a_long_one() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_root(dir.path()).unwrap();
        let short = std::time::Duration::from_millis(300);
        assert!(matches!(lock_root_waiting(dir.path(), short), Err(LockError::Held { .. })));
        let path = dir.path().to_owned();
        let waiter = std::thread::spawn(move || lock_root_waiting(&path, std::time::Duration::from_secs(10)).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(held);
        assert!(waiter.join().unwrap(), "taken once the holder let go");
    }
}
