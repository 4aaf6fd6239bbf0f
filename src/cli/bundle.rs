//! `hakube bundle create|verify|list`: the airgap bundle file.

use std::path::Path;

use anyhow::Context as _;

use crate::bundle::{self, Kind, Manifest, PublicKey, SigningKey};
use crate::progress::Progress;

pub(crate) use crate::agent::unpack::size;
use crate::agent::unpack::tenths;

pub fn create(from: &Path, out: &Path, sign: Option<&Path>) -> anyhow::Result<()> {
    let progress = Progress::new("bundle");
    let key = sign.map(SigningKey::load).transpose().map_err(anyhow::Error::msg)?;
    if out.exists() {
        anyhow::bail!("{} exists: give another --out, or remove it", out.display());
    }
    let hakube = std::env::current_exe().context("the path of this hakube binary")?;
    let src = bundle::Source { dir: from, hakube: &hakube, hakube_version: env!("CARGO_PKG_VERSION") };
    let (manifest, files) = progress.phase(&format!("reading {}", from.display()), || bundle::plan(&src))?;
    progress.note(format!(
        "  {} members, {} (images {}), Kubernetes {}, {}",
        manifest.members.len(),
        size(manifest.total_size()),
        size(manifest.image_size()),
        manifest.kubernetes_version,
        manifest.arch
    ));
    progress.phase(&format!("writing {}", out.display()), || bundle::create(&manifest, &files, key.as_ref(), out))?;
    let signed = if key.is_some() { ", signed" } else { "" };
    println!(
        "{}: hakube {} with Kubernetes {}{signed}",
        out.display(),
        manifest.hakube_version,
        manifest.kubernetes_version
    );
    Ok(())
}

pub fn verify(file: &Path, key: Option<&Path>) -> anyhow::Result<()> {
    let progress = Progress::new("bundle");
    let key: Option<PublicKey> = key.map(PublicKey::load).transpose().map_err(anyhow::Error::msg)?;
    let total = std::cell::Cell::new(0);
    let (head, _) = progress.phase(&format!("reading every member of {}", file.display()), || {
        bundle::read::<_, _, bundle::BundleError>(
            file,
            bundle::open_file(file)?,
            key.as_ref(),
            |head| {
                total.set(head.manifest.total_size());
                Ok(Some(bundle::Discard))
            },
            tenths(&total, &progress, "read"),
        )
    })?;
    let m = &head.manifest;
    let how = if head.signed {
        "signature and every member match"
    } else {
        "every member matches (no key given: signature not checked)"
    };
    println!(
        "{}: whole: hakube {}, Kubernetes {}, {}, {} members, {}; {how}",
        file.display(),
        m.hakube_version,
        m.kubernetes_version,
        m.arch,
        m.members.len(),
        size(m.total_size())
    );
    Ok(())
}

pub fn list(file: &Path, json: bool) -> anyhow::Result<()> {
    let head = bundle::head(file, None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&head.manifest)?);
    } else {
        print!("{}", render(&head.manifest));
    }
    Ok(())
}

fn render(m: &Manifest) -> String {
    let mut out = format!(
        "hakube {}, Kubernetes {}, {} (format {})\n{:<28} {:<10} {:>10}  SHA256\n",
        m.hakube_version, m.kubernetes_version, m.arch, m.format, "MEMBER", "KIND", "SIZE"
    );
    for x in &m.members {
        let kind = match x.kind {
            Kind::Binary => "binary",
            Kind::Image => "image",
            Kind::ImageName => "image-name",
            Kind::Info => "info",
        };
        out.push_str(&format!("{:<28} {kind:<10} {:>10}  {}\n", x.name, size(x.size), &x.sha256[..16]));
    }
    out.push_str(&format!(
        "{} members, {} (`hakube bundle verify FILE` reads them through)\n",
        m.members.len(),
        size(m.total_size())
    ));
    out
}
