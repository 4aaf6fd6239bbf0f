//! The bundle format against small bundles made here: what a whole one
//! reads back as, and each way a file can be wrong.

use std::path::{Path, PathBuf};

use super::*;

const KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGCc5APARG6BVMuTh2qhq9QBw7evebmkLg3wKCUPoTpi
-----END PRIVATE KEY-----
";

fn put(dir: &Path, name: &str, body: &[u8], mode: u32) {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// A kube bundle directory as kube-bundle.sh lays it out, small, and a
/// hakube binary beside it.
fn source(dir: &Path) -> (PathBuf, PathBuf) {
    let kube = dir.join("kube");
    std::fs::create_dir(&kube).unwrap();
    put(&kube, "kube-apiserver", &vec![7u8; 300_000], 0o755);
    put(&kube, "kubelet", b"\x7fELF kubelet", 0o755);
    put(&kube, "coredns", b"\x7fELF coredns", 0o755);
    put(&kube, "pause.tar", &vec![1u8; 10_240], 0o644);
    std::fs::create_dir(kube.join("cni")).unwrap();
    put(&kube, "cni/bridge", b"\x7fELF bridge", 0o755);
    put(&kube, "pause-image", b"hakube.local/pause:3.10.2\n", 0o644);
    put(&kube, "MANIFEST", b"kubernetes v1.37.2\n", 0o644);
    put(&kube, "VERSION", b"v1.37.2\n", 0o644);
    write_sums(&kube);
    let hakube = dir.join("hakube");
    put(hakube.parent().unwrap(), "hakube", b"\x7fELF hakube", 0o755);
    (kube, hakube)
}

/// The directory's SHA256SUMS, as kube-bundle.sh writes it.
fn write_sums(kube: &Path) {
    let mut sums = String::new();
    for n in ["MANIFEST", "VERSION", "cni/bridge", "coredns", "kube-apiserver", "kubelet", "pause-image", "pause.tar"] {
        let (sha, _) = file_sha256(&kube.join(n)).unwrap();
        sums.push_str(&format!("{sha}  {n}\n"));
    }
    put(kube, SUMS, sums.as_bytes(), 0o644);
}

fn made(dir: &Path, key: Option<&SigningKey>) -> PathBuf {
    let (kube, hakube) = source(dir);
    let (manifest, files) =
        plan(&Source { dir: &kube, hakube: &hakube, hakube_version: "0.1.0" }).expect("a plan of a whole directory");
    let out = dir.join("bundle.tar");
    create(&manifest, &files, key, &out).unwrap();
    out
}

fn read_all(file: &Path, key: Option<&PublicKey>) -> Result<Manifest, BundleError> {
    let (head, _) = read::<_, _, BundleError>(file, open_file(file)?, key, |_| Ok(Some(Discard)), |_| {})?;
    Ok(head.manifest)
}

fn unpack(file: &Path, into: &Path, progress: impl FnMut(u64)) -> Result<(PathBuf, Head), BundleError> {
    extract::<_, BundleError>(file, open_file(file)?, None, into, |_| Ok(()), progress)
}

fn err(r: Result<Manifest, BundleError>) -> String {
    r.expect_err("must be refused").to_string()
}

/// A tar with `manifest` first and then `members` as given.
fn forged(dir: &Path, manifest: &Manifest, members: &[(&str, &[u8])]) -> PathBuf {
    let out = dir.join("forged.tar");
    let mut tar = tar::Builder::new(File::create(&out).unwrap());
    let body = serde_json::to_vec(manifest).unwrap();
    tar.append(&header(MANIFEST, body.len() as u64, 0o644), body.as_slice()).unwrap();
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, *bytes).unwrap();
    }
    tar.finish().unwrap();
    out
}

fn member(name: &str, body: &[u8]) -> Member {
    Member {
        name: name.into(),
        size: body.len() as u64,
        sha256: hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref()),
        kind: kind_of(name),
        mode: 0o644,
    }
}

fn manifest(members: Vec<Member>) -> Manifest {
    Manifest {
        format: FORMAT,
        hakube_version: "0.1.0".into(),
        kubernetes_version: "v1.37.2".into(),
        arch: host_arch().into(),
        members,
    }
}

#[test]
fn a_whole_bundle_reads_back_and_extracts_to_a_bundle_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = made(dir.path(), None);
    let m = read_all(&file, None).unwrap();
    let names: Vec<&str> = m.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "hakube",
            "MANIFEST",
            "VERSION",
            "cni/bridge",
            "kube-apiserver",
            "kubelet",
            "pause-image",
            "pause.tar",
            "SHA256SUMS"
        ],
        "hakube first, the build-only coredns left out, the sums last"
    );
    assert_eq!(m.kubernetes_version, "v1.37.2");
    assert_eq!(m.image_size(), 10_240);
    let kinds: Vec<Kind> = m.members.iter().map(|m| m.kind).collect();
    assert_eq!(kinds[3], Kind::Binary);
    assert_eq!(kinds[4], Kind::Binary);
    assert_eq!(kinds[6], Kind::ImageName);
    assert_eq!(kinds[7], Kind::Image);

    // One pass over a stream that cannot seek, as from a master over HTTPS.
    let bytes = std::fs::read(&file).unwrap();
    let (streamed, _) = read::<_, _, BundleError>(Path::new("stream"), &bytes[..], None, |_| Ok(Some(Discard)), |_| {})
        .expect("read from a stream");
    assert_eq!(streamed.manifest, m);

    let into = dir.path().join("bundles");
    std::fs::create_dir(&into).unwrap();
    let mut seen = 0;
    let (out, head) = unpack(&file, &into, |n| seen = n).unwrap();
    let id = head.id();
    assert_eq!(out, into.join(&id));
    assert_eq!(std::fs::read(out.join(MANIFEST)).unwrap(), head.bytes, "the manifest is kept beside the members");
    assert_eq!(seen, m.total_size(), "progress reached every byte");
    assert_eq!(std::fs::read(out.join("kube-apiserver")).unwrap(), vec![7u8; 300_000]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(out.join("kubelet")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755);
    // The CNI plugins in their directory, where containerd looks for them.
    assert_eq!(std::fs::read(out.join("cni/bridge")).unwrap(), b"\x7fELF bridge");
    // sha256sum -c of the extracted directory.
    let check = std::process::Command::new("sha256sum").args(["-c", "--quiet", SUMS]).current_dir(&out).output();
    assert!(check.unwrap().status.success(), "sha256sum -c SHA256SUMS");
    let entries: Vec<_> = std::fs::read_dir(&into).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(entries, [std::ffi::OsString::from(&id)], "no partial directory left");
    // Served back out as it came: it reads as the same bundle.
    let mut served = Vec::new();
    write_unpacked(&out, &mut served).unwrap();
    let (again_head, _) =
        read::<_, _, BundleError>(Path::new("served"), &served[..], None, |_| Ok(Some(Discard)), |_| {}).unwrap();
    assert_eq!(again_head.bytes, head.bytes, "the same manifest, byte for byte");
    std::fs::write(out.join("kubelet"), b"\x7fELF changed").unwrap();
    let e = write_unpacked(&out, std::io::sink()).unwrap_err().to_string();
    assert!(e.contains("kubelet") && e.contains("changed since it was unpacked"), "{e}");
    std::fs::write(out.join("kubelet"), b"\x7fELF kubelet").unwrap();
    // Content addressed: a second extraction reads nothing.
    let (again, _) = unpack(&file, &into, |_| panic!("read again")).unwrap();
    assert_eq!(again, out);
}

#[test]
fn damaged_or_cut_short_files_are_refused_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let file = made(dir.path(), None);
    let bytes = std::fs::read(&file).unwrap();
    // A flipped byte in the middle of kube-apiserver's 300 000.
    let at = bytes.windows(16).position(|w| w == [7u8; 16]).unwrap() + 150_000;
    let mut flipped = bytes.clone();
    flipped[at] ^= 1;
    let bad = dir.path().join("flipped.tar");
    std::fs::write(&bad, &flipped).unwrap();
    let e = err(read_all(&bad, None));
    assert!(e.contains("kube-apiserver was changed or damaged"), "{e}");
    // Extracting it leaves nothing behind.
    let into = dir.path().join("bundles");
    std::fs::create_dir(&into).unwrap();
    assert!(unpack(&bad, &into, |_| {}).is_err());
    assert_eq!(std::fs::read_dir(&into).unwrap().count(), 0, "no partial directory left");
    // Cut short, at several places.
    for cut in [100, 2_000, at, bytes.len() - 2_000] {
        let short = dir.path().join("short.tar");
        std::fs::write(&short, &bytes[..cut]).unwrap();
        let e = err(read_all(&short, None));
        assert!(e.contains("cut short") || e.contains("not a tar file") || e.contains("ends before"), "{cut}: {e}");
    }
    // Not a bundle at all.
    let text = dir.path().join("text.tar");
    std::fs::write(&text, "hello").unwrap();
    assert!(err(read_all(&text, None)).contains("not a usable hakube bundle"));
}

#[test]
fn members_missing_unlisted_out_of_order_or_escaping_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (&b"aaaa"[..], &b"bbbb"[..]);
    let two = manifest(vec![member("a", a), member("b", b)]);
    let e = err(read_all(&forged(dir.path(), &two, &[("a", a)]), None));
    assert!(e.contains("ends before b: cut short"), "{e}");
    let e = err(read_all(&forged(dir.path(), &two, &[("a", a), ("b", b), ("c", b)]), None));
    assert!(e.contains("\"c\", which its manifest does not list"), "{e}");
    let e = err(read_all(&forged(dir.path(), &two, &[("b", b), ("a", a)]), None));
    assert!(e.contains("out of order or missing"), "{e}");
    let e = err(read_all(&forged(dir.path(), &manifest(vec![member("a", a)]), &[("a", b"aaaaa")]), None));
    assert!(e.contains("a is 5 bytes where the manifest says 4"), "{e}");
    for name in ["../etc/passwd", "bin/x", ".hidden", "", "a b", "cni/../x", "cni/", "cni/.x", "cni/a/b", "/cni"] {
        let m = manifest(vec![member(name, a)]);
        let e = err(read_all(&forged(dir.path(), &m, &[]), None));
        assert!(e.contains("is not a plain file name"), "{name}: {e}");
    }
    let e = err(read_all(&forged(dir.path(), &manifest(vec![member("a", a), member("a", a)]), &[]), None));
    assert!(e.contains("lists a twice"), "{e}");
    let mut other = manifest(vec![]);
    other.arch = if host_arch() == "arm64" { "amd64".into() } else { "arm64".into() };
    let e = err(read_all(&forged(dir.path(), &other, &[]), None));
    assert!(e.contains(&format!("is a bundle for {}, and this host is {}", other.arch, host_arch())), "{e}");
    let mut future = manifest(vec![]);
    future.format = 2;
    assert!(err(read_all(&forged(dir.path(), &future, &[]), None)).contains("this hakube reads format 1"));
}

#[test]
fn a_signature_is_required_once_a_key_is_given_and_must_be_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_pem(KEY).unwrap();
    let public = key.public();
    let signed = made(dir.path(), Some(&key));
    read_all(&signed, Some(&public)).unwrap();
    read_all(&signed, None).expect("read without a key, the signature is passed over");
    assert!(head(&signed, Some(&public)).unwrap().signed);
    assert!(!head(&signed, None).unwrap().signed);

    let unsigned_dir = tempfile::tempdir().unwrap();
    let unsigned = made(unsigned_dir.path(), None);
    assert!(err(read_all(&unsigned, Some(&public))).contains("it is not signed, and a bundle key is configured"));

    let other = SigningKey::generate();
    assert!(err(read_all(&signed, Some(&other.public()))).contains("signed with another key"));

    // A manifest changed after signing (its Kubernetes version, same length).
    let mut bytes = std::fs::read(&signed).unwrap();
    let at = bytes.windows(7).position(|w| w == b"v1.37.2").unwrap();
    bytes[at + 3] = b'8';
    let changed = dir.path().join("changed.tar");
    std::fs::write(&changed, &bytes).unwrap();
    // The tar header's checksum does not cover the data: only the signature tells.
    assert!(err(read_all(&changed, Some(&public))).contains("does not match the bundle key"));
}

#[test]
fn a_source_directory_that_changed_since_its_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, hakube) = source(dir.path());
    std::fs::write(kube.join("kubelet"), b"\x7fELF another kubelet").unwrap();
    let e = plan(&Source { dir: &kube, hakube: &hakube, hakube_version: "0.1.0" }).unwrap_err().to_string();
    assert!(e.contains("kubelet does not match its line in SHA256SUMS"), "{e}");
}

/// The fuzz target's seeds (fuzz/seeds/bundle): a small whole bundle,
/// signed and not. `cargo test --lib write_the_fuzz_seeds -- --ignored`
/// writes them again after a change of the format.
#[test]
#[ignore = "writes fuzz/seeds/bundle"]
fn write_the_fuzz_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let (kube, hakube) = source(dir.path());
    // Small members: a seed is a few KiB, as the fuzzer likes them.
    put(&kube, "kube-apiserver", b"\x7fELF kube-apiserver", 0o755);
    put(&kube, "pause.tar", b"pause", 0o644);
    write_sums(&kube);
    let (manifest, files) = plan(&Source { dir: &kube, hakube: &hakube, hakube_version: "0.1.0" }).unwrap();
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/bundle");
    std::fs::create_dir_all(&seeds).unwrap();
    let key = SigningKey::from_pem(KEY).unwrap();
    create(&manifest, &files, None, &seeds.join("small.tar")).unwrap();
    create(&manifest, &files, Some(&key), &seeds.join("small-signed.tar")).unwrap();
}
