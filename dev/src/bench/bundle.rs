//! What taking a bundle file in costs with hakube against the plain tools
//! doing the same work, in the same run.
//!
//! One bundle file made with `hakube bundle create` from the Kubernetes
//! bundle (not timed). Each trial, in alternating order, on a fresh
//! containerd of the bundle's own (its root empty, started untimed, the
//! CRI off) for each side:
//!   (a) hakube: `hakube bundle unpack FILE` (one pass: the manifest judged,
//!       every member hashed as it is written, renamed into place), then
//!       the importer the agent runs when containerd starts
//!       (`runtime::images::import_bundle`: `ctr images import` of each
//!       archive, the images pinned, a record written);
//!   (b) baseline: `tar -xf FILE`, `sha256sum -c SHA256SUMS` in the
//!       directory it made, and `ctr images import` of each archive.
//! Both read a file the page cache holds (it was just written). Goal: at
//! most 1.0× the baseline, overall; the unpacking and the import are also
//! shown apart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::WorkDir;
use crate::proc::{self, msg};

#[derive(clap::Args)]
pub struct Args {
    /// Trials per side.
    #[arg(long, env = "BENCH_TRIALS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    trials: u32,
}

/// The bundle's containerd on a root of its own, the CRI and NRI off: what
/// an import needs (content, images, the overlay snapshotter) and nothing
/// that reaches outside `dir`. Killed when dropped.
struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    fn start(bundle: &Path, dir: &Path, socket: &Path) -> Result<Containerd> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::create_dir_all(socket.parent().expect("a socket in a directory"))?;
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 3\nroot = \"{root}\"\nstate = \"{state}\"\nimports = []\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \
                 \"io.containerd.cri.v1.runtime\", \"io.containerd.podsandbox.controller.v1.podsandbox\", \
                 \"io.containerd.nri.v1.nri\", \"io.containerd.snapshotter.v1.btrfs\", \
                 \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
                 \"io.containerd.snapshotter.v1.blockfile\", \"io.containerd.snapshotter.v1.erofs\"]\n\
                 [grpc]\n  address = \"{socket}\"\n[ttrpc]\n  address = \"{socket}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
            ),
        )?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new(bundle.join("containerd"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the bundle's containerd")?;
        let c = Containerd { child, socket: socket.to_owned() };
        let start = Instant::now();
        loop {
            let mut version = ctr(bundle, &c.socket);
            version.arg("version").stdout(Stdio::null()).stderr(Stdio::null());
            if c.socket.exists() && version.status().is_ok_and(|s| s.success()) {
                return Ok(c);
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("containerd did not answer on {} within 30 s (log: {})", c.socket.display(), dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctr(bundle: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(bundle.join("ctr"));
    cmd.arg("--address").arg(socket).stdin(Stdio::null());
    cmd
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

/// hakube's side: unpack (a process, as an operator runs it), then the
/// agent's importer against this root's containerd. Returns both times.
fn ours(hakube: &Path, bundle: &Path, file: &Path, dir: &Path) -> Result<(f64, f64)> {
    let root = dir.join("root-h");
    std::fs::create_dir_all(&root)?;
    let paths = hakube::host::paths::Paths::new(&root);
    let _containerd = Containerd::start(bundle, &dir.join("containerd-h"), &paths.containerd_socket())?;
    let mut unpacked = PathBuf::new();
    let unpack = timed(|| {
        let mut cmd = Command::new(hakube);
        cmd.arg("--root").arg(&root).args(["bundle", "unpack"]).arg(file);
        unpacked = PathBuf::from(proc::output(&mut cmd, "hakube bundle unpack")?.trim());
        Ok(())
    })?;
    let import = timed(|| {
        let n = hakube::runtime::images::import_bundle(&paths, Some(&unpacked)).map_err(anyhow::Error::msg)?;
        if n == 0 {
            bail!("hakube imported no archive from {}", unpacked.display());
        }
        Ok(())
    })?;
    Ok((unpack, import))
}

/// The baseline: tar, sha256sum -c, ctr images import of each archive.
fn theirs(bundle: &Path, file: &Path, dir: &Path) -> Result<(f64, f64)> {
    let out = dir.join("x");
    std::fs::create_dir_all(&out)?;
    let socket = dir.join("containerd-b/run/containerd.sock");
    let _containerd = Containerd::start(bundle, &dir.join("containerd-b"), &socket)?;
    let unpack = timed(|| {
        proc::output(Command::new("tar").arg("-xf").arg(file).arg("-C").arg(&out), "tar -x")?;
        proc::output(
            Command::new("sha256sum").args(["-c", "--quiet", "SHA256SUMS"]).current_dir(&out),
            "sha256sum -c",
        )?;
        Ok(())
    })?;
    let import = timed(|| {
        for archive in hakube::runtime::images::archives(&out) {
            let mut cmd = ctr(bundle, &socket);
            cmd.args(["--namespace", "k8s.io", "images", "import"]).arg(&archive);
            proc::output(&mut cmd, "ctr images import")?;
        }
        Ok(())
    })?;
    Ok((unpack, import))
}

pub fn run(args: Args) -> Result<()> {
    let (bin, bundle) = super::binary_and_bundle()?;
    // A short path: containerd's sockets must fit in 108 bytes.
    std::env::set_var("TMPDIR", std::env::var("BENCH_TMPDIR").unwrap_or_else(|_| "/tmp".into()));
    let work = WorkDir::new("bench-bundle")?;
    let result = bench(&args, &bin, &bundle, work.path());
    work.finish(result)
}

fn bench(args: &Args, hakube: &Path, bundle: &Path, dir: &Path) -> Result<()> {
    let file = dir.join("bundle.tar");
    msg!("hakube bundle create --from {} (not timed)", bundle.display());
    let mut create = Command::new(hakube);
    create.args(["bundle", "create", "--from"]).arg(bundle).arg("--out").arg(&file);
    proc::output(&mut create, "hakube bundle create")?;
    let size = std::fs::metadata(&file)?.len();
    let (mut unpack_h, mut import_h, mut unpack_b, mut import_b, mut all_h, mut all_b) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for t in 1..=args.trials {
        proc::check_stop()?;
        let trial = dir.join(format!("t{t}"));
        std::fs::create_dir_all(&trial)?;
        let (h, b) = if t % 2 == 1 {
            let h = ours(hakube, bundle, &file, &trial)?;
            (h, theirs(bundle, &file, &trial)?)
        } else {
            let b = theirs(bundle, &file, &trial)?;
            (ours(hakube, bundle, &file, &trial)?, b)
        };
        msg!(
            "trial {t}/{}: hakube unpack {:.3} s + import {:.3} s; tar + sha256sum -c {:.3} s + ctr import {:.3} s",
            args.trials,
            h.0,
            h.1,
            b.0,
            b.1
        );
        unpack_h.push(h.0);
        import_h.push(h.1);
        all_h.push(h.0 + h.1);
        unpack_b.push(b.0);
        import_b.push(b.1);
        all_b.push(b.0 + b.1);
        // Mounts of the import's unpacked layers, if any, go with the dir.
        std::fs::remove_dir_all(&trial).with_context(|| format!("removing {}", trial.display()))?;
    }
    println!("\nbench-bundle, {} trial(s), a {:.1} MiB bundle file", args.trials, size as f64 / (1 << 20) as f64);
    super::paired_table(&[
        ("unpack (baseline: tar -x + sha256sum -c)", &unpack_h, &unpack_b, ""),
        ("import (baseline: ctr images import)", &import_h, &import_b, ""),
        ("verify + unpack + import", &all_h, &all_b, "<= 1.00"),
    ]);
    Ok(())
}
