//! Processes: the detached agent, its pid file, and stopping processes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::fs::create_dir_all;
use super::paths::Paths;

/// Starts `exe args` in a session of its own, detached from the caller's
/// terminal, with stdout and stderr appended to `log`.
pub fn spawn_detached(exe: &Path, args: &[String], log: &Path) -> std::io::Result<u32> {
    if let Some(dir) = log.parent() {
        create_dir_all(dir, 0o755).map_err(std::io::Error::other)?;
    }
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid and close_range are async-signal-safe and touch no
    // memory of the parent. Descriptors a calling shell left open without
    // close-on-exec (a lock file, a pipe a `$(…)` waits on) must not live on
    // in the agent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(child.id())
}

/// Whether `pid` runs. A child of ours that exited is reaped here, so a
/// zombie (a detached agent that died while its installer waits) does not
/// pass for alive.
pub fn alive(pid: u32) -> bool {
    reap(pid);
    !matches!(kill(Pid::from_raw(pid as i32), None), Err(Errno::ESRCH))
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs. Returns whether the
/// process had to be killed.
pub fn terminate(pid: u32, grace: Duration) -> bool {
    let p = Pid::from_raw(pid as i32);
    if kill(p, Signal::SIGTERM).is_err() {
        return false;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap(pid);
        if !alive(pid) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(p, Signal::SIGKILL);
    reap(pid);
    true
}

/// Pids of the processes whose command line satisfies `f`.
pub fn matching(f: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let argv: Vec<String> =
            raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if f(&argv) {
            out.push(pid);
        }
    }
    out
}

/// SIGKILL, and reap if it is our child.
pub fn kill_now(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    reap(pid);
}

/// Reaps `pid` if it is our exited child, so `alive` stops seeing a zombie.
fn reap(pid: u32) {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
}

/// The agent's pid file, locked for as long as the agent lives.
pub struct PidFile {
    _lock: Flock<File>,
}

impl PidFile {
    /// Takes the lock and writes our pid; fails if another agent holds it.
    pub fn acquire(path: &Path) -> std::io::Result<PidFile> {
        if let Some(dir) = path.parent() {
            create_dir_all(dir, 0o755).map_err(std::io::Error::other)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        // `holder` probes with a shared lock for a moment: a lock that stays
        // taken for a second is another agent's.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(std::io::Error::other(format!("another agent holds {}", path.display())))
                }
                Err((_, e)) => return Err(e.into()),
            }
        };
        lock.set_len(0)?;
        lock.rewind()?;
        writeln!(lock, "{}", std::process::id())?;
        lock.sync_all()?;
        Ok(PidFile { _lock: lock })
    }

    /// Keeps the lock held across an `exec` of this process: the
    /// descriptor (returned) is no longer closed on exec, and this value
    /// no longer unlocks on drop. The program exec'd takes it back with
    /// [`PidFile::inherit`]; no other agent can start in between.
    pub fn keep_across_exec(self) -> std::io::Result<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let fd = self._lock.as_raw_fd();
        close_on_exec(&*self._lock, false)?;
        std::mem::forget(self);
        Ok(fd)
    }

    /// Takes back the lock a predecessor kept across its exec
    /// ([`PidFile::keep_across_exec`]): `fd` must be the open pid file at
    /// `path`, still locked (the lock belongs to the open file, which the
    /// exec kept). Closed on exec again, so that no component inherits it.
    pub fn inherit(path: &Path, fd: std::os::fd::RawFd) -> std::io::Result<PidFile> {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::metadata(format!("/proc/self/fd/{fd}"))?;
        let file = std::fs::metadata(path)?;
        if (ours.dev(), ours.ino()) != (file.dev(), file.ino()) {
            return Err(std::io::Error::other(format!("descriptor {fd} handed over is not {}", path.display())));
        }
        // SAFETY: the descriptor was checked to be open, and nothing else
        // in this process owns it: it came through exec.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        close_on_exec(&owned, true)?;
        // Our own open file holds the lock already: taking it again
        // succeeds at once, and only then.
        let lock = Flock::lock(File::from(owned), FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| std::io::Error::other(format!("{} is not locked by us: {e}", path.display())))?;
        Ok(PidFile { _lock: lock })
    }

    /// The pid of the agent holding `path`, if one does.
    pub fn holder(path: &Path) -> Option<u32> {
        let file = File::open(path).ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            // We got the lock: nobody holds it.
            Ok(_) => None,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut s = String::new();
                file.read_to_string(&mut s).ok()?;
                s.trim().parse().ok()
            }
            Err(_) => None,
        }
    }
}

/// Runs `binary --version`, bounded by `limit` (killed after it): its
/// output, or why there is none.
pub fn version_output(binary: &Path, limit: Duration) -> Result<std::process::Output, String> {
    let mut child = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no answer within {}s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().map_err(|e| e.to_string())
}

/// Whether `fd` is closed when this process execs (the default for every
/// descriptor Rust opens), or left open for the program exec'd.
pub fn close_on_exec(fd: impl std::os::fd::AsFd, close: bool) -> std::io::Result<()> {
    let flags = if close { nix::fcntl::FdFlag::FD_CLOEXEC } else { nix::fcntl::FdFlag::empty() };
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Whether process `pid` catches `sig` (its `SigCgt` in
/// `/proc/PID/status`): a program that does not would die of it.
pub fn catches(pid: u32, sig: nix::sys::signal::Signal) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (sig as i32 - 1)) != 0)
}

/// Finds a binary (a component's, or a tool such as `ctr`): `<root>/var/lib/hakube/bin`, then the bundle
/// directory, then `PATH`.
pub fn find_binary(paths: &Paths, bundle: Option<&Path>, name: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    std::iter::once(paths.bin_dir())
        .chain(bundle.map(Path::to_path_buf))
        .chain(path_dirs)
        .map(|d| d.join(name))
        .find(|f| is_executable(f))
}

fn is_executable(f: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(f).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// This process's resident memory (`/proc/self/statm`, in pages).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * page as u64)
}

/// This process's user and system CPU time (`/proc/self/stat`, in ticks).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // the last `)`; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace().skip(11);
    let (utime, stime): (u64, u64) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some((utime + stime) as f64 / hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_reports_its_holder_only_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.pid");
        assert_eq!(PidFile::holder(&path), None);
        let held = PidFile::acquire(&path).unwrap();
        assert_eq!(PidFile::holder(&path), Some(std::process::id()));
        assert!(PidFile::acquire(&path).is_err());
        drop(held);
        assert_eq!(PidFile::holder(&path), None);
    }

    #[test]
    fn a_pid_file_kept_across_exec_stays_held_and_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.pid");
        let fd = PidFile::acquire(&path).unwrap().keep_across_exec().unwrap();
        let flags =
            nix::fcntl::fcntl(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, nix::fcntl::FcntlArg::F_GETFD);
        assert_eq!(flags.unwrap() & libc::FD_CLOEXEC, 0, "open across exec");
        assert_eq!(PidFile::holder(&path), Some(std::process::id()), "still held");
        assert!(PidFile::acquire(&path).is_err(), "no other agent can take it meanwhile");
        let other = dir.path().join("other.pid");
        std::fs::write(&other, "").unwrap();
        assert!(PidFile::inherit(&other, fd).is_err(), "a descriptor of another file is refused");
        let held = PidFile::inherit(&path, fd).unwrap();
        assert_eq!(PidFile::holder(&path), Some(std::process::id()));
        drop(held);
        assert_eq!(PidFile::holder(&path), None, "released as any other");
    }

    #[test]
    fn a_process_catches_only_the_signals_it_handles() {
        use nix::sys::signal::Signal;
        // A shell that traps USR2 and nothing else (but what sh catches itself).
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "trap 'exit 0' USR2; echo ready; while :; do sleep 0.1; done"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
        assert!(catches(child.id(), Signal::SIGUSR2));
        assert!(!catches(child.id(), Signal::SIGUSR1));
        assert!(!catches(std::process::id(), Signal::SIGUSR2), "this test process does not");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn detached_processes_run_in_their_own_session_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/x.log");
        let pid = spawn_detached(Path::new("/bin/sh"), &["-c".into(), "echo hi; exec sleep 30".into()], &log).unwrap();
        assert!(alive(pid));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&log).unwrap_or_default().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let sid = nix::unistd::getsid(Some(Pid::from_raw(pid as i32))).unwrap();
        assert_eq!(sid.as_raw() as u32, pid, "leads its own session");
        assert!(!terminate(pid, Duration::from_secs(5)), "stops on SIGTERM");
        assert!(!alive(pid));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hi\n");
    }
}
