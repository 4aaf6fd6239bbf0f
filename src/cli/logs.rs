//! `hakube logs`: the logs the agent keeps under `logs/` (each component's,
//! and its own as `agent`), size-capped by [`crate::host::logrotate`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::host::paths::Paths;

/// The logs there are: `(name, size in bytes)`, by name.
pub fn available(paths: &Paths) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = std::fs::read_dir(paths.log_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().strip_suffix(".log")?.to_owned();
            Some((name, e.metadata().ok()?.len()))
        })
        .collect();
    found.sort();
    found
}

/// The log of `name`, refused with the names there are when it has none.
pub fn path_of(paths: &Paths, name: &str) -> anyhow::Result<PathBuf> {
    let known = available(paths);
    if known.iter().any(|(n, _)| n == name) {
        return Ok(paths.component_log(name));
    }
    let names: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
    if names.is_empty() {
        bail!("no logs under {}: nothing has run on this node yet", paths.log_dir().display());
    }
    bail!("no log named {name:?} under {}: there are {}", paths.log_dir().display(), names.join(", "))
}

/// The last `n` lines of `path` (all of it for 0), with the rotated copy
/// before it (`path.1`) when the current file holds fewer.
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    let mut out = last_lines(path, n)?;
    if n > 0 && count_lines(&out) < n {
        let mut older = PathBuf::from(path.as_os_str().to_owned());
        older.as_mut_os_string().push(".1");
        if let Ok(mut before) = last_lines(&older, n - count_lines(&out)) {
            before.append(&mut out);
            out = before;
        }
    }
    Ok(out)
}

fn count_lines(b: &[u8]) -> usize {
    let n = b.iter().filter(|&&c| c == b'\n').count();
    n + usize::from(b.last().is_some_and(|&c| c != b'\n'))
}

/// The last `n` lines of one file, read backwards a block at a time (a log
/// may be tens of MiB; a tail reads only what it shows).
fn last_lines(path: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if n == 0 {
        let mut all = Vec::new();
        f.read_to_end(&mut all)?;
        return Ok(all);
    }
    const BLOCK: u64 = 64 << 10;
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let from = start.saturating_sub(BLOCK);
        let mut block = vec![0; (start - from) as usize];
        f.seek(SeekFrom::Start(from))?;
        f.read_exact(&mut block)?;
        block.append(&mut buf);
        buf = block;
        start = from;
        // A line ending the file does not start another.
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let newlines = body.iter().filter(|&&c| c == b'\n').count();
        if newlines >= n || start == 0 {
            let mut cut = 0;
            let mut seen = 0;
            for (i, &c) in body.iter().enumerate().rev() {
                if c == b'\n' {
                    seen += 1;
                    if seen == n {
                        cut = i + 1;
                        break;
                    }
                }
            }
            return Ok(buf.split_off(cut));
        }
    }
}

/// Prints what is appended to `path` as it comes, until interrupted; a log
/// truncated by rotation is followed from its new start.
pub fn follow(path: &Path, mut from: u64, out: &mut impl Write) -> anyhow::Result<()> {
    loop {
        let len = std::fs::metadata(path).with_context(|| path.display().to_string())?.len();
        if len < from {
            from = 0;
        }
        if len > from {
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(from))?;
            let copied = std::io::copy(&mut f.take(len - from), out)?;
            from += copied;
            out.flush()?;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> String {
        (1..=n).map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn the_tail_is_the_last_lines_however_long_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, lines(100_000)).unwrap();
        assert_eq!(String::from_utf8(tail(&p, 3).unwrap()).unwrap(), "line 99998\nline 99999\nline 100000\n");
        assert_eq!(tail(&p, 0).unwrap().len() as u64, std::fs::metadata(&p).unwrap().len());
        std::fs::write(&p, "a\nb").unwrap();
        assert_eq!(tail(&p, 1).unwrap(), b"b");
        assert_eq!(tail(&p, 5).unwrap(), b"a\nb");
        std::fs::write(&p, "").unwrap();
        assert_eq!(tail(&p, 5).unwrap(), b"");
    }

    #[test]
    fn a_short_log_is_completed_from_its_rotated_copy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kubelet.log");
        std::fs::write(dir.path().join("kubelet.log.1"), lines(10)).unwrap();
        std::fs::write(&p, "new 1\nnew 2\n").unwrap();
        assert_eq!(String::from_utf8(tail(&p, 4).unwrap()).unwrap(), "line 9\nline 10\nnew 1\nnew 2\n");
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_names_there_are() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().to_owned());
        let e = path_of(&paths, "kubelet").unwrap_err().to_string();
        assert!(e.contains("nothing has run on this node yet"), "{e}");
        std::fs::create_dir_all(paths.log_dir()).unwrap();
        std::fs::write(paths.component_log("etcd"), "x").unwrap();
        std::fs::write(paths.component_log("agent"), "y").unwrap();
        std::fs::write(paths.log_dir().join("etcd.log.1"), "old").unwrap();
        assert_eq!(available(&paths), vec![("agent".to_owned(), 1), ("etcd".to_owned(), 1)]);
        let e = path_of(&paths, "kubelet").unwrap_err().to_string();
        assert!(e.ends_with("there are agent, etcd"), "{e}");
        assert_eq!(path_of(&paths, "etcd").unwrap(), paths.component_log("etcd"));
    }
}
