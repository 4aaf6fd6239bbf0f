//! Image archives in the format of `docker save`, which `ctr images import`
//! reads: several images in one file, sharing their layers, so that the
//! Debian base under most of the conformance images is stored (and imported)
//! once.
//!
//! A layer is a tar of a directory; the archive is a tar of
//! `<layer digest>/layer.tar` files, one `<config digest>.json` per image and
//! `manifest.json`. Every tar is reproducible: sorted entries, one mtime,
//! owner 0:0 (GNU tar does the writing).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::proc;

/// A layer: a tar of a directory, and its digest (the hex SHA-256 of the tar,
/// which is also its diff ID: layers are not compressed).
#[derive(Clone, Debug)]
pub struct Layer {
    pub tar: PathBuf,
    pub digest: String,
}

/// An image: its reference (`registry/repo:tag`), its layers bottom first,
/// and its config's `config` object (Entrypoint, Cmd, Env, User, ...).
#[derive(Clone, Debug)]
pub struct Image {
    pub reference: String,
    pub layers: Vec<Layer>,
    pub config: Value,
}

/// `tar` arguments that make the same tar of the same tree every time.
fn reproducible(mtime: i64) -> Vec<String> {
    ["--format=gnu", "--numeric-owner", "--owner=0", "--group=0", "--sort=name"]
        .into_iter()
        .map(str::to_owned)
        .chain([format!("--mtime=@{mtime}")])
        .collect()
}

/// Tars the contents of `dir` (not `dir` itself) into `out`.
pub fn tar_dir(dir: &Path, out: &Path, mtime: i64) -> Result<()> {
    let mut cmd = Command::new("tar");
    cmd.arg("--create").arg("--file").arg(out).arg("--directory").arg(dir).args(reproducible(mtime));
    // No --xattrs: it adds PAX headers with each file's atime and ctime.
    cmd.arg(".");
    proc::output(cmd, &format!("tar of {}", dir.display()))?;
    Ok(())
}

/// The layer made of the contents of `dir`, written to `out`.
pub fn layer(dir: &Path, out: &Path, mtime: i64) -> Result<Layer> {
    tar_dir(dir, out, mtime)?;
    let digest = hakube::runtime::images::sha256_file(out).map_err(anyhow::Error::msg)?;
    Ok(Layer { tar: out.to_path_buf(), digest })
}

/// An image's config document (what its digest names).
pub fn config_document(image: &Image, arch: &str, created: &str) -> Value {
    let diff_ids: Vec<String> = image.layers.iter().map(|l| format!("sha256:{}", l.digest)).collect();
    let history: Vec<Value> = image
        .layers
        .iter()
        .map(|_| json!({"created": created, "created_by": "hakube scripts/conformance.sh"}))
        .collect();
    json!({
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": image.config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    })
}

/// The archive's `manifest.json` and the config files it names (file name,
/// content), for `images`.
pub fn manifest(images: &[Image], arch: &str, created: &str) -> (Value, Vec<(String, Vec<u8>)>) {
    let mut configs = Vec::new();
    let mut entries = Vec::new();
    for image in images {
        let doc = serde_json::to_vec(&config_document(image, arch, created)).expect("a JSON value serialises");
        let name = format!("{}.json", hakube::pki::hex(ring_digest(&doc).as_ref()));
        let layers: Vec<String> = image.layers.iter().map(|l| format!("{}/layer.tar", l.digest)).collect();
        entries.push(json!({"Config": name, "RepoTags": [image.reference], "Layers": layers}));
        if !configs.iter().any(|(n, _)| n == &name) {
            configs.push((name, doc));
        }
    }
    (Value::Array(entries), configs)
}

fn ring_digest(bytes: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, bytes)
}

/// Writes the archive of `images` to `out`, through `scratch` (a directory on
/// the same file system as the layers: they are hard-linked, not copied).
pub fn write(out: &Path, scratch: &Path, images: &[Image], arch: &str, created: &str, mtime: i64) -> Result<()> {
    if images.is_empty() {
        bail!("no images to write to {}", out.display());
    }
    let dir = scratch.join("archive");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    for layer in images.iter().flat_map(|i| &i.layers) {
        let to = dir.join(&layer.digest);
        if to.exists() {
            continue;
        }
        std::fs::create_dir(&to)?;
        std::fs::hard_link(&layer.tar, to.join("layer.tar"))
            .or_else(|_| std::fs::copy(&layer.tar, to.join("layer.tar")).map(|_| ()))
            .with_context(|| format!("cannot place {} in {}", layer.tar.display(), to.display()))?;
    }
    let (manifest, configs) = manifest(images, arch, created);
    for (name, doc) in configs {
        std::fs::write(dir.join(name), doc)?;
    }
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    tar_dir(&dir, out, mtime)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(digest: &str) -> Layer {
        Layer { tar: PathBuf::from(format!("/x/{digest}.tar")), digest: digest.into() }
    }

    #[test]
    fn images_that_share_a_layer_name_it_once_each_and_keep_their_order() {
        let base = layer("aa");
        let images = [
            Image {
                reference: "registry.k8s.io/e2e-test-images/agnhost:2.66.1".into(),
                layers: vec![base.clone(), layer("bb")],
                config: json!({"Entrypoint": ["/agnhost"], "Cmd": ["pause"]}),
            },
            Image {
                reference: "registry.k8s.io/e2e-test-images/nonroot:1.5".into(),
                layers: vec![base],
                config: json!({"User": "1234"}),
            },
        ];
        let (manifest, configs) = manifest(&images, "amd64", "2026-10-27T12:01:04Z");
        assert_eq!(configs.len(), 2);
        assert_eq!(manifest[0]["Layers"], json!(["aa/layer.tar", "bb/layer.tar"]));
        assert_eq!(manifest[1]["Layers"], json!(["aa/layer.tar"]));
        assert_eq!(manifest[1]["RepoTags"], json!(["registry.k8s.io/e2e-test-images/nonroot:1.5"]));
        // The config file is named by its own digest, and lists the layers as diff IDs.
        let (name, doc) = &configs[0];
        assert_eq!(*name, format!("{}.json", hakube::pki::hex(ring_digest(doc).as_ref())));
        assert_eq!(manifest[0]["Config"], json!(name));
        let doc: Value = serde_json::from_slice(doc).unwrap();
        assert_eq!(doc["rootfs"]["diff_ids"], json!(["sha256:aa", "sha256:bb"]));
        assert_eq!(doc["config"]["Cmd"], json!(["pause"]));
        assert_eq!(doc["history"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_same_tree_gives_the_same_layer() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/x"), "x").unwrap();
        let a = super::layer(&tree, &dir.path().join("a.tar"), 1_700_000_000).unwrap();
        std::fs::write(tree.join("bin/x"), "x").unwrap(); // a new mtime, the same content
        let b = super::layer(&tree, &dir.path().join("b.tar"), 1_700_000_000).unwrap();
        assert_eq!(a.digest, b.digest);
        std::fs::write(tree.join("bin/x"), "y").unwrap();
        let c = super::layer(&tree, &dir.path().join("c.tar"), 1_700_000_000).unwrap();
        assert_ne!(a.digest, c.digest);
    }
}
