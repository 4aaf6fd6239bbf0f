//! What an etcd snapshot costs with hakube against etcd's own tools on the
//! same member, in the same run.
//!
//! One etcd-only master of hakube's in a namespace of its own, filled with
//! `--size-mib` of keys (100 KiB values). Each trial, in alternating order:
//!   (a) `hakube etcd snapshot save` (streams, hashes, syncs, writes the
//!       record) against `etcdctl snapshot save` with the same client pair;
//!   (b) `hakube etcd snapshot verify` (reads the file once: its SHA-256 and
//!       etcd's trailing one, checked against the record) against
//!       `sha256sum` of the same file.
//! Both are warm: the file was just written. Goals: save at most 1.25× and
//! verify at most 2× their baselines (verify computes two digests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::WorkDir;
use crate::proc::{self, msg};
use crate::support::{self, hakube, path_env, Host};

#[derive(clap::Args)]
pub struct Args {
    /// Trials per measure.
    #[arg(long, env = "BENCH_TRIALS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    trials: u32,
    /// How much data to put into etcd first.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    size_mib: u32,
}

fn timed(mut cmd: Command, what: &str) -> Result<f64> {
    let start = Instant::now();
    proc::output(&mut cmd, what)?;
    Ok(start.elapsed().as_secs_f64())
}

fn fill(h: &Host, mib: u32) -> Result<()> {
    let value = vec![b'x'; 100 << 10];
    let n = (u64::from(mib) << 20) / value.len() as u64;
    h.within(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let mut c = h.etcd_client(Some(Duration::from_secs(30))).await;
            for i in 0..n {
                c.put(format!("/bench/{i:06}"), value.clone(), None).await?;
            }
            anyhow::Ok(())
        })
    })
}

pub fn run(args: Args) -> Result<()> {
    // The hosts' helpers find the binary and the bundle through these.
    let (bin, bundle) = super::binary_and_bundle()?;
    std::env::set_var("HAKUBE_BIN", bin);
    std::env::set_var("HAKUBE_TEST_BUNDLE", bundle);
    let work = WorkDir::new("bench-snapshot")?;
    let result = bench(&args, work.path());
    work.finish(result)
}

fn bench(args: &Args, dir: &Path) -> Result<()> {
    msg!("an etcd-only master (hakube {}, bundle {})", hakube(), support::bundle().display());
    let h = Host::isolated();
    h.install(&["etcd-snapshot-interval=never"]);
    msg!("putting {} MiB into etcd", args.size_mib);
    fill(&h, args.size_mib).context("filling etcd")?;
    let pki = |n: &str| h.pki(n).display().to_string();
    let (mut save_h, mut save_e, mut verify_h, mut verify_s) = (vec![], vec![], vec![], vec![]);
    let mut size = 0;
    for t in 1..=args.trials {
        proc::check_stop()?;
        let trial = dir.join(format!("trial-{t}"));
        std::fs::create_dir_all(&trial)?;
        let ours = || -> Result<(f64, PathBuf)> {
            let root = h.root().display().to_string();
            let mut cmd = proc::in_ns(&h.ns, hakube());
            cmd.args(["--root", &root, "etcd", "snapshot", "save", "--dir"]).arg(&trial);
            let secs = timed(cmd, "hakube etcd snapshot save")?;
            let db = std::fs::read_dir(&trial)?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "db"))
                .context("hakube wrote no .db file")?;
            Ok((secs, db))
        };
        let theirs = || -> Result<f64> {
            let mut cmd = proc::in_ns(&h.ns, "etcdctl");
            cmd.env("PATH", path_env()).args(["--endpoints", &format!("https://{}:2379", h.addr)]);
            cmd.args(["--cacert", &pki("etcd/ca.crt"), "--cert", &pki("apiserver-etcd-client.crt")]);
            cmd.args(["--key", &pki("apiserver-etcd-client.key"), "snapshot", "save"]);
            cmd.arg(trial.join("etcdctl.snap"));
            timed(cmd, "etcdctl snapshot save")
        };
        let (ours, theirs) = if t % 2 == 1 {
            let o = ours()?;
            (o, theirs()?)
        } else {
            let e = theirs()?;
            (ours()?, e)
        };
        let (secs_h, db) = ours;
        size = std::fs::metadata(&db)?.len();
        let mut verify = Command::new(hakube());
        verify.args(["etcd", "snapshot", "verify"]).arg(&db);
        let mut sum = Command::new("sha256sum");
        sum.arg(&db);
        let (v, s) = if t % 2 == 1 {
            let v = timed(verify, "hakube etcd snapshot verify")?;
            (v, timed(sum, "sha256sum")?)
        } else {
            let s = timed(sum, "sha256sum")?;
            (timed(verify, "hakube etcd snapshot verify")?, s)
        };
        msg!(
            "trial {t}/{}: save {secs_h:.3} s (etcdctl {theirs:.3} s), verify {v:.3} s (sha256sum {s:.3} s)",
            args.trials
        );
        save_h.push(secs_h);
        save_e.push(theirs);
        verify_h.push(v);
        verify_s.push(s);
        std::fs::remove_dir_all(&trial)?;
    }
    if save_h.is_empty() {
        bail!("no trial ran");
    }
    println!("\nbench-snapshot, {} trial(s), a {:.1} MiB snapshot", args.trials, size as f64 / (1 << 20) as f64);
    super::paired_table(&[
        ("save (baseline: etcdctl)", &save_h, &save_e, "<= 1.25"),
        ("verify (baseline: sha256sum)", &verify_h, &verify_s, "<= 2.00"),
    ]);
    Ok(())
}
