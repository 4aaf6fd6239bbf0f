//! Rendered files as values, and the one way they reach the disk.
//!
//! Everything hakube writes is first rendered into a [`FileSpec`] (path,
//! contents, mode) by pure code; [`apply_files`] then writes only what
//! changed, each file atomically (temp file in the same directory, fsync,
//! rename), so a crash never leaves a half-written certificate or config.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error(
        "{mount} is still mounted inside {path}, which was emptied around it: unmount it \
         (`umount {mount}`), then remove {path}"
    )]
    MountInside { path: PathBuf, mount: PathBuf },
}

/// A file to be written: the whole of its desired state.
#[derive(Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for FileSpec {
    // Contents may be key material: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpec")
            .field("path", &self.path)
            .field("bytes", &self.contents.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

impl FileSpec {
    pub fn new(path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        Self { path: path.into(), contents: contents.into(), mode }
    }

    /// Whether the file on disk already has exactly this content and mode.
    pub fn is_current(&self) -> bool {
        match fs::read(&self.path) {
            Ok(existing) => {
                existing == self.contents
                    && fs::metadata(&self.path).map(|m| m.permissions().mode() & 0o7777 == self.mode).unwrap_or(false)
            }
            Err(_) => false,
        }
    }
}

/// Creates `dir` and its missing parents, giving the ones it creates `mode`.
pub fn create_dir_all(dir: &Path, mode: u32) -> Result<(), FsError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent, 0o755)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(source) => return Err(FsError::CreateDir { path: dir.to_owned(), source }),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|source| FsError::CreateDir { path: dir.to_owned(), source })
}

/// Writes `contents` to `path` atomically with `mode`.
/// The directory a file is in: `.` for a bare name (`join.sh`, whose
/// `parent()` is the empty path).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    let err = |source| FsError::Write { path: path.to_owned(), source };
    let dir = parent_dir(path);
    create_dir_all(dir, 0o755)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed the mode given to open(2).
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// What [`apply_files`] did to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    Created,
    Updated,
    Unchanged,
}

/// Writes every spec whose file is not already current; returns what changed.
pub fn apply_files(specs: &[FileSpec]) -> Result<Vec<(PathBuf, FileChange)>, FsError> {
    let mut changes = Vec::with_capacity(specs.len());
    for spec in specs {
        let change = if spec.is_current() {
            FileChange::Unchanged
        } else if spec.path.exists() {
            FileChange::Updated
        } else {
            FileChange::Created
        };
        if change != FileChange::Unchanged {
            write_atomic(&spec.path, &spec.contents, spec.mode)?;
        }
        changes.push((spec.path.clone(), change));
    }
    Ok(changes)
}

/// Removes a file or a directory tree without following symlinks and
/// without crossing into another filesystem: a directory on another device
/// (a mount point) is neither entered nor removed, and is named in the
/// error. An absent path is not an error.
pub fn remove_tree(path: &Path) -> Result<(), FsError> {
    use std::os::unix::fs::MetadataExt;
    let err = |p: &Path, source| FsError::Remove { path: p.to_owned(), source };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(path, e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(|e| err(path, e));
    }
    let device = meta.dev();
    let mut crossed = vec![];
    // Depth first, removing each directory once it is empty.
    fn walk(dir: &Path, device: u64, crossed: &mut Vec<PathBuf>) -> Result<(), FsError> {
        let err = |p: &Path, source| FsError::Remove { path: p.to_owned(), source };
        for entry in fs::read_dir(dir).map_err(|e| err(dir, e))? {
            let entry = entry.map_err(|e| err(dir, e))?;
            let p = entry.path();
            let m = fs::symlink_metadata(&p).map_err(|e| err(&p, e))?;
            if m.is_dir() {
                if m.dev() != device {
                    crossed.push(p);
                    continue;
                }
                walk(&p, device, crossed)?;
                if !crossed.iter().any(|c| c.starts_with(&p)) {
                    fs::remove_dir(&p).map_err(|e| err(&p, e))?;
                }
            } else {
                fs::remove_file(&p).map_err(|e| err(&p, e))?;
            }
        }
        Ok(())
    }
    walk(path, device, &mut crossed)?;
    if let Some(first) = crossed.first() {
        return Err(FsError::MountInside { path: path.to_owned(), mount: first.clone() });
    }
    fs::remove_dir(path).map_err(|e| err(path, e))
}

/// Reads a file that may be absent.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FsError::Read { path: path.to_owned(), source }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bare_file_name_is_written_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("join.sh")), Path::new("."));
        assert_eq!(parent_dir(Path::new("out/join.sh")), Path::new("out"));
        assert_eq!(parent_dir(Path::new("/join.sh")), Path::new("/"));
    }

    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key.pem");
        write_atomic(&path, b"secret", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"secret");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key.pem")]);
    }

    #[test]
    fn removing_a_tree_never_follows_a_link_out_of_it() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "keep").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("var/lib/kubelet");
        write_atomic(&tree.join("pods/p/volumes/x/data"), b"pod data", 0o644).unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.join("pods/p/volumes/link")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(std::fs::read_to_string(outside.path().join("precious")).unwrap(), "keep");
        remove_tree(&tree).unwrap(); // already gone: fine
    }

    #[test]
    fn apply_rewrites_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileSpec::new(dir.path().join("a"), "1", 0o644);
        let b = FileSpec::new(dir.path().join("b"), "2", 0o600);
        let first = apply_files(&[a.clone(), b.clone()]).unwrap();
        assert!(first.iter().all(|(_, c)| *c == FileChange::Created));
        let mtime = fs::metadata(&a.path).unwrap().modified().unwrap();
        let b2 = FileSpec::new(dir.path().join("b"), "3", 0o600);
        let second = apply_files(&[a.clone(), b2]).unwrap();
        assert_eq!(second[0].1, FileChange::Unchanged);
        assert_eq!(second[1].1, FileChange::Updated);
        assert_eq!(fs::metadata(&a.path).unwrap().modified().unwrap(), mtime);
        // A mode change alone is a change.
        let a_mode = FileSpec::new(dir.path().join("a"), "1", 0o600);
        assert_eq!(apply_files(&[a_mode]).unwrap()[0].1, FileChange::Updated);
    }
}
