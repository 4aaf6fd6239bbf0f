//! One file that carries a whole cluster (`hakube bundle create|verify|list`,
//! `install bundle=FILE`): hakube itself, the Kubernetes components, etcd,
//! containerd and runc, kubectl, and every image archive the cluster runs.
//!
//! The file is an uncompressed tar whose first member is the manifest
//! ([`MANIFEST`]: the format version, hakube's and Kubernetes' versions, the
//! architecture, and for every other member its name, size, SHA-256, kind
//! and mode), then optionally an Ed25519 signature of the manifest's bytes
//! ([`SIGNATURE`]), then the members in the manifest's order, the last a
//! `SHA256SUMS` for `sha256sum -c` after extraction. A reader learns
//! everything it will be asked to trust before it reads any of it: the
//! architecture, the versions and the space needed are judged from the
//! first few kilobytes, and each member is hashed as it streams past and
//! checked against the manifest, whose signature (when a key is given)
//! covers every hash. Uncompressed because the members (static binaries,
//! image layers) are read once and written once: compression would cost a
//! CPU pass on both ends for a file copied by hand; compress it for transfer
//! if the link is slow.
//!
//! Members are plain names (no directories but `cni/`): extracted, they are a bundle
//! directory exactly like the one `scripts/kube-bundle.sh` builds, which is
//! what every other part of hakube reads (`node.bundle`).

pub mod sign;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pki::hex;

pub use sign::{PublicKey, SigningKey};

/// The manifest's member name, and the signature's.
pub const MANIFEST: &str = "hakube-bundle.json";
pub const SIGNATURE: &str = "hakube-bundle.json.sig";
pub const SUMS: &str = "SHA256SUMS";
/// The format this hakube writes and reads.
pub const FORMAT: u32 = 1;
/// A manifest larger than this is not one (a few hundred members at most).
const MANIFEST_LIMIT: u64 = 1 << 20;
/// Built into a kube bundle directory only to make images of (the images
/// are in the bundle): never run from it.
const BUILD_ONLY: [&str; 2] = ["coredns", "local-path-provisioner"];

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{file} is not a usable hakube bundle: {reason}")]
    Bad { file: PathBuf, reason: String },
    #[error("{file} is a bundle for {theirs}, and this host is {ours}: use the {ours} bundle")]
    Arch { file: PathBuf, theirs: String, ours: String },
    #[error("{file}: {reason}")]
    Signature { file: PathBuf, reason: String },
    #[error("cannot make a bundle from {dir}: {reason}")]
    Source { dir: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_owned(), source }
}

/// What a member is, for a person and for the disk-space estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A program (hakube, a component, a tool).
    Binary,
    /// An image archive, imported into containerd.
    Image,
    /// The name an image archive is imported under (`pause-image`).
    ImageName,
    /// The build's own record and checksums.
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    pub name: String,
    pub size: u64,
    /// Hex.
    pub sha256: String,
    pub kind: Kind,
    /// Unix permission bits.
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub hakube_version: String,
    pub kubernetes_version: String,
    /// Go's name: `amd64`, `arm64`.
    pub arch: String,
    pub members: Vec<Member>,
}

impl Manifest {
    /// The manifest of a bundle unpacked in `dir`, if it has one.
    pub fn of_dir(dir: &Path) -> Option<Manifest> {
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).ok()?).ok()
    }

    /// The SHA-256 (hex) of its member `name`.
    pub fn sha256_of(&self, name: &str) -> Option<&str> {
        self.members.iter().find(|m| m.name == name).map(|m| m.sha256.as_str())
    }

    /// The bytes of every member.
    pub fn total_size(&self) -> u64 {
        self.members.iter().map(|m| m.size).sum()
    }

    /// The bytes of its image archives.
    pub fn image_size(&self) -> u64 {
        self.members.iter().filter(|m| m.kind == Kind::Image).map(|m| m.size).sum()
    }

    /// A name for the bundle from its manifest's bytes: where it is
    /// extracted to (`sha256` of the manifest, 16 hex digits).
    pub fn id(bytes: &[u8]) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())[..16].to_owned()
    }

    /// Checks what can be checked without the members: the format, and
    /// names that are plain, unique and not the manifest's own.
    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("its format is {}, and this hakube reads format {FORMAT}", self.format));
        }
        let mut seen = BTreeSet::new();
        for m in &self.members {
            check_name(&m.name)?;
            if m.name == MANIFEST || m.name == SIGNATURE {
                return Err(format!("the manifest lists a member named {}", m.name));
            }
            if !seen.insert(m.name.as_str()) {
                return Err(format!("the manifest lists {} twice", m.name));
            }
            if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("the manifest's SHA-256 of {} is not 64 hex digits", m.name));
            }
        }
        Ok(())
    }
}

/// The directories a member may be in (one level): the CNI plugins, which
/// containerd finds by their own names.
pub const DIRS: [&str; 1] = ["cni"];

/// A member's name is one plain file name, or one in a directory of
/// [`DIRS`]: no other directory, no `..`, nothing hidden, nothing a shell or
/// a path would read twice.
pub fn check_name(name: &str) -> Result<(), String> {
    let plain = |n: &str| {
        !n.is_empty()
            && n.len() <= 100
            && !n.starts_with('.')
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let ok = match name.split_once('/') {
        None => plain(name),
        Some((dir, file)) => DIRS.contains(&dir) && plain(file),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "member name {name:?} is not a plain file name (letters, digits, '.', '_', '-'; no directories but {})",
            DIRS.map(|d| format!("{d}/")).join(", ")
        ))
    }
}

/// Go's name for this host's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

fn kind_of(name: &str) -> Kind {
    if name.ends_with(".tar") {
        Kind::Image
    } else if name.ends_with("-image") {
        Kind::ImageName
    } else if matches!(name, "MANIFEST" | "VERSION" | SUMS) {
        Kind::Info
    } else {
        Kind::Binary
    }
}

/// SHA-256 of a file, hex.
fn file_sha256(path: &Path) -> Result<(String, u64), BundleError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(ctx.finish().as_ref()), size))
}

/// The `SHA256SUMS` text of `members` (sha256sum's format).
fn sums_text(members: &[Member]) -> String {
    members.iter().map(|m| format!("{}  {}\n", m.sha256, m.name)).collect()
}

/// What `create` packs: a kube bundle directory's files (as its SHA256SUMS
/// lists them, checked), and the hakube binary given.
pub struct Source<'a> {
    pub dir: &'a Path,
    pub hakube: &'a Path,
    pub hakube_version: &'a str,
}

/// The members and their files, checked against the directory's own
/// SHA256SUMS: the manifest to write, in order.
pub fn plan(src: &Source<'_>) -> Result<(Manifest, Vec<PathBuf>), BundleError> {
    let bad = |reason: String| BundleError::Source { dir: src.dir.to_owned(), reason };
    let sums_path = src.dir.join(SUMS);
    let sums = std::fs::read_to_string(&sums_path).map_err(io(&sums_path))?;
    let version_path = src.dir.join("VERSION");
    let kubernetes_version = std::fs::read_to_string(&version_path).map_err(io(&version_path))?.trim().to_owned();
    let mut listed = BTreeMap::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line.split_once("  ").ok_or_else(|| bad(format!("{SUMS}: unreadable line {line:?}")))?;
        listed.insert(name.trim_start_matches('*').to_owned(), sum.to_owned());
    }
    let mut members = Vec::new();
    let mut files = Vec::new();
    let mut add = |name: &str, path: PathBuf, want: Option<&String>| -> Result<(), BundleError> {
        check_name(name).map_err(bad)?;
        let (sha256, size) = file_sha256(&path)?;
        if let Some(want) = want {
            if *want != sha256 {
                return Err(bad(format!("{name} does not match its line in {SUMS}: the directory changed")));
            }
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).map_err(io(&path))?.permissions());
        members.push(Member { name: name.to_owned(), size, sha256, kind: kind_of(name), mode: mode & 0o777 });
        files.push(path);
        Ok(())
    };
    add("hakube", src.hakube.to_owned(), None)?;
    for (name, sum) in listed.iter().filter(|(n, _)| !BUILD_ONLY.contains(&n.as_str())) {
        add(name, src.dir.join(name), Some(sum))?;
    }
    for name in ["MANIFEST", "VERSION"] {
        if !listed.contains_key(name) {
            add(name, src.dir.join(name), None)?;
        }
    }
    let sums = sums_text(&members);
    members.push(Member {
        name: SUMS.into(),
        size: sums.len() as u64,
        sha256: hex(ring::digest::digest(&ring::digest::SHA256, sums.as_bytes()).as_ref()),
        kind: Kind::Info,
        mode: 0o644,
    });
    let manifest = Manifest {
        format: FORMAT,
        hakube_version: src.hakube_version.to_owned(),
        kubernetes_version,
        arch: host_arch().to_owned(),
        members,
    };
    Ok((manifest, files))
}

fn header(name: &str, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).expect("plain names fit");
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    ctx: ring::digest::Context,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes the bundle file `out` (under a temporary name, renamed when
/// whole): the manifest, its signature when a key is given, the members.
/// Each file is hashed again as it is packed: a file that changed since
/// [`plan`] read it fails the write.
pub fn create(manifest: &Manifest, files: &[PathBuf], key: Option<&SigningKey>, out: &Path) -> Result<(), BundleError> {
    let body = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    let partial = out.with_file_name(format!(
        ".{}.partial",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let result = (|| {
        let f = File::create(&partial).map_err(io(&partial))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
        let w = |e| BundleError::Io { path: partial.clone(), source: e };
        tar.append(&header(MANIFEST, body.len() as u64, 0o644), body.as_slice()).map_err(w)?;
        if let Some(k) = key {
            let sig = k.sign(&body);
            tar.append(&header(SIGNATURE, sig.len() as u64, 0o644), sig.as_slice()).map_err(w)?;
        }
        let sums = sums_text(&manifest.members[..manifest.members.len() - 1]);
        for (m, path) in manifest.members.iter().zip(files.iter().map(Some).chain(std::iter::repeat(None))) {
            let h = header(&m.name, m.size, m.mode);
            let sha = match path {
                Some(p) => {
                    let f = File::open(p).map_err(io(p))?;
                    let mut r =
                        Hashing { inner: f.take(m.size), ctx: ring::digest::Context::new(&ring::digest::SHA256) };
                    tar.append(&h, &mut r).map_err(w)?;
                    hex(r.ctx.finish().as_ref())
                }
                None => {
                    tar.append(&h, sums.as_bytes()).map_err(w)?;
                    m.sha256.clone()
                }
            };
            if sha != m.sha256 {
                return Err(BundleError::Bad {
                    file: path.cloned().unwrap_or_default(),
                    reason: "it changed while the bundle was written".into(),
                });
            }
        }
        let mut inner = tar.into_inner().map_err(w)?;
        inner.flush().map_err(w)?;
        inner.get_ref().sync_all().map_err(w)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, out).map_err(io(out))?;
    Ok(())
}

/// Writes an unpacked bundle (a directory [`extract`] made: the manifest,
/// the signature if any, the members) back out as the bundle it came
/// from: how a master hands its bundle to a joining host. Each member is
/// hashed again on the way out: a file changed on this disk is not served.
pub fn write_unpacked(dir: &Path, w: impl Write) -> Result<(), BundleError> {
    let manifest_path = dir.join(MANIFEST);
    let body = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let manifest: Manifest = serde_json::from_slice(&body)
        .map_err(|e| BundleError::Bad { file: manifest_path.clone(), reason: format!("unreadable ({e})") })?;
    let mut tar = tar::Builder::new(w);
    let w_err = |e| BundleError::Io { path: dir.to_owned(), source: e };
    tar.append(&header(MANIFEST, body.len() as u64, 0o644), body.as_slice()).map_err(w_err)?;
    match std::fs::read(dir.join(SIGNATURE)) {
        Ok(sig) => tar.append(&header(SIGNATURE, sig.len() as u64, 0o644), sig.as_slice()).map_err(w_err)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BundleError::Io { path: dir.join(SIGNATURE), source: e }),
    }
    for m in &manifest.members {
        let path = dir.join(&m.name);
        let f = File::open(&path).map_err(io(&path))?;
        let mut r = Hashing { inner: f.take(m.size), ctx: ring::digest::Context::new(&ring::digest::SHA256) };
        tar.append(&header(&m.name, m.size, m.mode), &mut r).map_err(w_err)?;
        if hex(r.ctx.finish().as_ref()) != m.sha256 {
            return Err(BundleError::Bad { file: path, reason: "it changed since it was unpacked".into() });
        }
    }
    tar.into_inner().map_err(w_err)?.flush().map_err(w_err)?;
    Ok(())
}

/// Where an opened bundle's members go as they stream past.
pub trait Sink {
    /// A writer for `member`; nothing written is trusted until [`Sink::done`].
    fn open(&mut self, member: &Member) -> Result<Box<dyn Write + '_>, BundleError>;
    /// The member was whole and matched the manifest.
    fn done(&mut self, member: &Member) -> Result<(), BundleError>;
}

/// Discards the members (`verify`).
pub struct Discard;

impl Sink for Discard {
    fn open(&mut self, _: &Member) -> Result<Box<dyn Write + '_>, BundleError> {
        Ok(Box::new(std::io::sink()))
    }
    fn done(&mut self, _: &Member) -> Result<(), BundleError> {
        Ok(())
    }
}

/// A bundle's head: its manifest, judged, and whether its signature was
/// checked.
#[derive(Debug, Clone)]
pub struct Head {
    pub manifest: Manifest,
    /// The manifest as the file holds it (what is signed; its hash names
    /// the unpacked directory).
    pub bytes: Vec<u8>,
    pub signature: Option<Vec<u8>>,
    pub signed: bool,
}

impl Head {
    pub fn id(&self) -> String {
        Manifest::id(&self.bytes)
    }
}

/// Reads a bundle in one pass from `r` (a file, or a stream from a
/// master): the manifest and the signature after it, checked (the format,
/// the names, the architecture, and the signature when `key` is given: a
/// bundle without one is then refused); then `sink_for` sees the head and
/// says where the members go, or that they are not wanted (None), or
/// refuses; then every member streams into the sink in the manifest's
/// order, hashed as it goes. A member missing, out of order, of another
/// size or hash, not listed, or not a regular file fails the read. `name`
/// names the source in messages; `progress` gets the member bytes done.
pub fn read<R: Read, S: Sink, E: From<BundleError>>(
    name: &Path,
    r: R,
    key: Option<&PublicKey>,
    sink_for: impl FnOnce(&Head) -> Result<Option<S>, E>,
    mut progress: impl FnMut(u64),
) -> Result<(Head, Option<S>), E> {
    let bad = |reason: String| BundleError::Bad { file: name.to_owned(), reason };
    let mut archive = tar::Archive::new(r);
    let mut entries = archive.entries().map_err(|e| bad(format!("not a tar file ({e})")))?;
    let mut first = match entries.next() {
        Some(Ok(e)) => e,
        Some(Err(e)) => return Err(bad(format!("not a tar file ({e})")).into()),
        None => return Err(bad("it is empty".into()).into()),
    };
    if first.path_bytes().as_ref() != MANIFEST.as_bytes() {
        let got = String::from_utf8_lossy(&first.path_bytes()).into_owned();
        return Err(bad(format!("its first member is {got:?}, not the manifest {MANIFEST}")).into());
    }
    if first.size() > MANIFEST_LIMIT {
        return Err(bad(format!("its manifest is {} bytes: not a manifest", first.size())).into());
    }
    let mut bytes = Vec::new();
    first.read_to_end(&mut bytes).map_err(|e| bad(format!("its manifest is cut short ({e})")))?;
    if bytes.len() as u64 != first.size() {
        return Err(bad("its manifest is cut short: the file is truncated".into()).into());
    }
    drop(first);
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("its manifest is unreadable ({e})")))?;
    manifest.check().map_err(bad)?;
    if manifest.arch != host_arch() {
        return Err(BundleError::Arch { file: name.to_owned(), theirs: manifest.arch, ours: host_arch().into() }.into());
    }
    // The signature comes next when there is one; otherwise this is the
    // first member, read below.
    let mut pending = match entries.next() {
        None => None,
        Some(e) => Some(e.map_err(|e| bad(format!("cut short or damaged ({e})")))?),
    };
    let mut signature = None;
    if let Some(e) = pending.as_mut().filter(|e| e.path_bytes().as_ref() == SIGNATURE.as_bytes()) {
        let mut sig = Vec::new();
        e.take(1024).read_to_end(&mut sig).map_err(|e| bad(format!("its signature is cut short ({e})")))?;
        signature = Some(sig);
        pending = None;
    }
    let signed = match (key, &signature) {
        (None, _) => false,
        (Some(_), None) => {
            return Err(BundleError::Signature {
                file: name.to_owned(),
                reason: "it is not signed, and a bundle key is configured: only signed bundles are accepted".into(),
            }
            .into())
        }
        (Some(k), Some(s)) => {
            k.verify(&bytes, s).map_err(|reason| BundleError::Signature { file: name.to_owned(), reason })?;
            true
        }
    };
    let head = Head { manifest, bytes, signature, signed };
    let Some(mut sink) = sink_for(&head)? else { return Ok((head, None)) };

    let mut expected = head.manifest.members.iter();
    let mut want = expected.next();
    let mut done = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut next = pending.map(Ok).or_else(|| entries.next());
    while let Some(entry) = next {
        let mut entry = entry.map_err(|e| bad(format!("cut short or damaged ({e})")))?;
        let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(m) = want else {
            return Err(bad(format!("it holds {member:?}, which its manifest does not list")).into());
        };
        if member != m.name {
            let listed = head.manifest.members.iter().any(|x| x.name == member);
            return Err(bad(if listed {
                format!("{member:?} comes where the manifest lists {:?}: members out of order or missing", m.name)
            } else {
                format!("it holds {member:?}, which its manifest does not list")
            })
            .into());
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad(format!("{member} is not a regular file")).into());
        }
        if entry.size() != m.size {
            return Err(bad(format!("{member} is {} bytes where the manifest says {}", entry.size(), m.size)).into());
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let start = done;
        {
            let mut out = sink.open(m)?;
            loop {
                let n = entry.read(&mut buf).map_err(|e| bad(format!("{member} is cut short ({e})")))?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| bad(format!("writing {member}: {e}")))?;
                done += n as u64;
                progress(done);
            }
            out.flush().map_err(|e| bad(format!("writing {member}: {e}")))?;
        }
        if done - start != m.size {
            return Err(bad(format!("{member} is cut short after {} of its {} bytes", done - start, m.size)).into());
        }
        let sha = hex(ctx.finish().as_ref());
        if sha != m.sha256 {
            return Err(bad(format!(
                "{member} was changed or damaged: its SHA-256 is {sha}, the manifest says {}",
                m.sha256
            ))
            .into());
        }
        sink.done(m)?;
        want = expected.next();
        drop(entry);
        next = entries.next();
    }
    if let Some(m) = want {
        return Err(bad(format!("it ends before {}: cut short", m.name)).into());
    }
    Ok((head, Some(sink)))
}

/// Opens a bundle file for [`read`].
pub fn open_file(file: &Path) -> Result<BufReader<File>, BundleError> {
    Ok(BufReader::with_capacity(1 << 20, File::open(file).map_err(io(file))?))
}

/// Reads only a bundle file's head (`list`).
pub fn head(file: &Path, key: Option<&PublicKey>) -> Result<Head, BundleError> {
    let (head, _) = read::<_, Discard, BundleError>(file, open_file(file)?, key, |_| Ok(None), |_| {})?;
    Ok(head)
}

/// Writes members as files into a staging directory.
pub struct ToDir {
    dir: PathBuf,
}

impl Sink for ToDir {
    fn open(&mut self, member: &Member) -> Result<Box<dyn Write + '_>, BundleError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(&member.name);
        if let Some(parent) = path.parent().filter(|p| *p != self.dir) {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(member.mode & 0o755)
            .open(&path)
            .map_err(io(&path))?;
        Ok(Box::new(std::io::BufWriter::with_capacity(1 << 20, f)))
    }

    fn done(&mut self, member: &Member) -> Result<(), BundleError> {
        let path = self.dir.join(&member.name);
        File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))
    }
}

/// Unpacks a bundle into `<dir>/<id>/`: streamed into `<dir>/.<id>.partial/`,
/// each member hashed as it is written, with the manifest (and signature)
/// kept beside the members, renamed into place once every member matched;
/// on any failure the partial directory is removed. A bundle unpacked
/// already (its directory exists: only a whole one is renamed there) is
/// not read further. `judge` sees the head first and may refuse.
pub fn extract<R: Read, E: From<BundleError>>(
    name: &Path,
    r: R,
    key: Option<&PublicKey>,
    dir: &Path,
    judge: impl FnOnce(&Head) -> Result<(), E>,
    progress: impl FnMut(u64),
) -> Result<(PathBuf, Head), E> {
    let mut partial = None;
    let result = read(
        name,
        r,
        key,
        |head| {
            judge(head)?;
            let target = dir.join(head.id());
            if target.is_dir() {
                return Ok(None);
            }
            let p = dir.join(format!(".{}.partial", head.id()));
            if p.exists() {
                // An unpacking that died: nothing in it was trusted.
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            }
            std::fs::create_dir_all(&p).map_err(io(&p))?;
            std::fs::write(p.join(MANIFEST), &head.bytes).map_err(io(&p))?;
            if let Some(sig) = &head.signature {
                std::fs::write(p.join(SIGNATURE), sig).map_err(io(&p))?;
            }
            partial = Some(p.clone());
            Ok(Some(ToDir { dir: p }))
        },
        progress,
    );
    let done = result.and_then(|(head, sink)| {
        let target = dir.join(head.id());
        if sink.is_some() {
            let p = partial.take().expect("a sink is a partial directory");
            std::fs::rename(&p, &target).map_err(io(&target))?;
            File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        }
        Ok((target, head))
    });
    if let Some(p) = partial {
        let _ = std::fs::remove_dir_all(p);
    }
    done
}

#[cfg(test)]
mod tests;
