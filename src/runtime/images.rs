//! Image archives of the bundle (`*.tar`: the pause image, and any image
//! the operator adds) imported into the node's containerd, in the `k8s.io`
//! namespace kubelet uses, once per archive content: a record named by the
//! archive's digest says it was imported. Where no registry can be reached
//! this is how pods get their images (with `imagePullPolicy: Never`), so
//! each imported image is pinned (the CRI's `io.cri-containerd.pinned`
//! label): kubelet's image garbage collection never removes what it
//! could not pull back.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::fs::write_atomic;
use crate::host::paths::Paths;
use crate::host::process::find_binary;

/// The archives of a bundle, sorted.
pub fn archives(bundle: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(bundle)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar") && p.is_file())
        .collect();
    v.sort();
    v
}

/// The SHA-256 of a file's content, in hex.
pub fn sha256_file(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("{}: {e}", file.display()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(crate::pki::hex(ctx.finish().as_ref()))
}

/// The label containerd's CRI reports as `pinned` to kubelet, whose image
/// garbage collection then leaves the image alone.
const PINNED: &str = "io.cri-containerd.pinned=pinned";

/// The image names an archive holds, as containerd names them: a docker
/// archive's `RepoTags` (manifest.json), or an OCI layout's
/// `io.containerd.image.name` annotations (index.json).
pub fn archive_names(archive: &Path) -> Result<Vec<String>, String> {
    use std::io::Read;
    let err = |e: std::io::Error| format!("{}: {e}", archive.display());
    let f = std::fs::File::open(archive).map_err(err)?;
    let mut tar = tar::Archive::new(f);
    let mut names = Vec::new();
    for entry in tar.entries_with_seek().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?.to_string_lossy().trim_start_matches("./").to_owned();
        if !matches!(path.as_str(), "manifest.json" | "index.json") || entry.size() > 1 << 20 {
            continue;
        }
        let mut body = String::new();
        entry.read_to_string(&mut body).map_err(err)?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{}: {path} is unreadable ({e})", archive.display()))?;
        if path == "manifest.json" {
            let tags = v.as_array().into_iter().flatten().filter_map(|m| m["RepoTags"].as_array()).flatten();
            names.extend(tags.filter_map(|t| t.as_str()).map(normalize));
        } else {
            let refs = v["manifests"].as_array().into_iter().flatten();
            names.extend(refs.filter_map(|m| m["annotations"]["io.containerd.image.name"].as_str()).map(str::to_owned));
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// A reference as containerd stores a docker archive's tag: a first part
/// that is no host (no `.` or `:`, not `localhost`) means Docker Hub.
fn normalize(tag: &str) -> String {
    match tag.split_once('/') {
        Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => tag.to_owned(),
        Some(_) => format!("docker.io/{tag}"),
        None => format!("docker.io/library/{tag}"),
    }
}

/// The members' SHA-256 as the manifest of a bundle unpacked from a file
/// lists them (checked when it was unpacked); none for a directory made
/// by hand.
fn manifest_digests(bundle: &Path) -> std::collections::BTreeMap<String, String> {
    let Ok(bytes) = std::fs::read(bundle.join(crate::bundle::MANIFEST)) else { return Default::default() };
    let Ok(m) = serde_json::from_slice::<crate::bundle::Manifest>(&bytes) else { return Default::default() };
    m.members.into_iter().map(|m| (m.name, m.sha256)).collect()
}

/// An archive's digest: from the manifest when it lists it (no second
/// read of the image bytes at each start), else read.
fn digest(
    bundle: &Path,
    listed: &std::collections::BTreeMap<String, String>,
    archive: &Path,
) -> Result<String, String> {
    let name = archive.strip_prefix(bundle).ok().and_then(Path::to_str);
    match name.and_then(|n| listed.get(n)) {
        Some(sha) => Ok(sha.clone()),
        None => sha256_file(archive),
    }
}

/// Imports every archive not imported yet; returns how many were imported.
/// Blocking (it runs `ctr`).
pub fn import_bundle(paths: &Paths, bundle: Option<&Path>) -> Result<usize, String> {
    let Some(bundle) = bundle else { return Ok(0) };
    let listed = manifest_digests(bundle);
    let mut imported = 0;
    for archive in archives(bundle) {
        let record = paths.imported_images_dir().join(digest(bundle, &listed, &archive)?);
        if record.exists() {
            continue;
        }
        let ctr = find_binary(paths, Some(bundle), "ctr")
            .ok_or("no ctr binary (it comes with containerd) to import the bundle's images with")?;
        let images = |args: &[&std::ffi::OsStr], what: &str| -> Result<(), String> {
            let out = Command::new(&ctr)
                .arg("--address")
                .arg(paths.containerd_socket())
                .args(["--namespace", "k8s.io", "images"])
                .args(args)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", ctr.display()))?;
            if !out.status.success() {
                return Err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            Ok(())
        };
        images(&["import".as_ref(), archive.as_os_str()], &format!("importing {}", archive.display()))?;
        let names = archive_names(&archive)?;
        for name in &names {
            let what = format!("pinning {name} (from {})", archive.display());
            images(&["label".as_ref(), name.as_ref(), PINNED.as_ref()], &what)?;
        }
        let record_text =
            format!("{}\n{}", archive.display(), names.iter().map(|n| format!("{n}\n")).collect::<String>());
        write_atomic(&record, record_text.as_bytes(), 0o644).map_err(|e| e.to_string())?;
        tracing::info!(archive = %archive.display(), images = ?names, "image archive imported into containerd, pinned");
        imported += 1;
    }
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path, members: &[(&str, &str)]) -> PathBuf {
        let out = dir.join("image.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&out).unwrap());
        for (name, body) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, body.as_bytes()).unwrap();
        }
        tar.finish().unwrap();
        out
    }

    #[test]
    fn an_archive_names_its_images_as_containerd_stores_them() {
        let dir = tempfile::tempdir().unwrap();
        let docker = archive(
            dir.path(),
            &[
                ("layer.tar", "not json"),
                (
                    "manifest.json",
                    r#"[{"Config":"c.json","RepoTags":["hakube.local/coredns:v1.14.7","busybox:1","me/app:2","localhost/x:1"],"Layers":["layer.tar"]}]"#,
                ),
            ],
        );
        assert_eq!(
            archive_names(&docker).unwrap(),
            ["docker.io/library/busybox:1", "docker.io/me/app:2", "hakube.local/coredns:v1.14.7", "localhost/x:1"]
        );
        let oci = archive(
            dir.path(),
            &[(
                "index.json",
                r#"{"schemaVersion":2,"manifests":[{"annotations":{"io.containerd.image.name":"registry.example:5000/a:1"}}]}"#,
            )],
        );
        assert_eq!(archive_names(&oci).unwrap(), ["registry.example:5000/a:1"]);
        let broken = archive(dir.path(), &[("manifest.json", "[{")]);
        let e = archive_names(&broken).unwrap_err();
        assert!(e.contains("manifest.json is unreadable"), "{e}");
    }
}
