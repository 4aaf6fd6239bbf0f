//! Image archives of the bundle (`*.tar`: the pause image, and any image
//! the operator adds) imported into the node's containerd, in the `k8s.io`
//! namespace kubelet uses, once per archive content: a record named by the
//! archive's digest says it was imported. Where no registry can be reached
//! this is how pods get their images (with `imagePullPolicy: Never`).

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

/// Imports every archive not imported yet; returns how many were imported.
/// Blocking (it runs `ctr`).
pub fn import_bundle(paths: &Paths, bundle: Option<&Path>) -> Result<usize, String> {
    let Some(bundle) = bundle else { return Ok(0) };
    let mut imported = 0;
    for archive in archives(bundle) {
        let record = paths.imported_images_dir().join(sha256_file(&archive)?);
        if record.exists() {
            continue;
        }
        let ctr = find_binary(paths, Some(bundle), "ctr")
            .ok_or("no ctr binary (it comes with containerd) to import the bundle's images with")?;
        let out = Command::new(&ctr)
            .arg("--address")
            .arg(paths.containerd_socket())
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&archive)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", ctr.display()))?;
        if !out.status.success() {
            return Err(format!(
                "importing {} failed: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        write_atomic(&record, archive.display().to_string().as_bytes(), 0o644).map_err(|e| e.to_string())?;
        tracing::info!(archive = %archive.display(), "image archive imported into containerd");
        imported += 1;
    }
    Ok(imported)
}
