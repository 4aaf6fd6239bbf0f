//! Benchmarks (not tests): each prints a table of figures beside a baseline
//! run in the same invocation, and the goal. They exit 0 whether or not a
//! goal is met, non-zero only when a step could not be run (it is named).

pub mod bundle;
pub mod cluster;
pub mod install;
pub mod join;
pub mod lb;
pub mod purge;
pub mod scale;
pub mod snapshot;
pub mod upgrade;
pub mod vip;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::proc::{self, msg};

/// Seconds since the epoch, with a fraction.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// The median of `values`, or None when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The smallest and the largest of `values`.
pub fn min_max(values: &[f64]) -> Option<(f64, f64)> {
    let min = values.iter().copied().min_by(f64::total_cmp)?;
    let max = values.iter().copied().max_by(f64::total_cmp)?;
    Some((min, max))
}

/// `a / b`, or None when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// Seconds with three decimals, "-" for a missing figure.
pub fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// "MEDIAN (MIN-MAX)" of `values`.
pub fn spread(values: &[f64]) -> String {
    match min_max(values) {
        Some((lo, hi)) => format!("{} ({lo:.3}-{hi:.3})", secs(median(values))),
        None => "-".into(),
    }
}

/// One row of a side-by-side table: what, hakube's figures, the
/// baseline's, and the goal for their ratio.
pub type Paired<'a> = (&'a str, &'a [f64], &'a [f64], &'a str);

/// Prints a side-by-side table (hakube against its baseline, each as
/// "median (min-max)" seconds, the ratio of medians, the goal), its first
/// column as wide as its longest label.
pub fn paired_table(rows: &[Paired<'_>]) {
    let head = "seconds: median (min-max)";
    let w = rows.iter().map(|r| r.0.len()).chain([head.len()]).max().unwrap_or(0);
    println!("{head:<w$} {:>24} {:>24} {:>7}   goal", "hakube", "baseline", "ratio");
    for (what, a, b, goal) in rows {
        let r = ratio(median(a), median(b)).map_or("-".into(), |r| format!("{r:.2}"));
        println!("{what:<w$} {:>24} {:>24} {r:>7}   {goal}", spread(a), spread(b));
    }
}

/// A benchmark's working directory under TMPDIR: removed when the run
/// succeeded, kept (and named) for a look when it did not.
pub struct WorkDir {
    dir: tempfile::TempDir,
}

impl WorkDir {
    pub fn new(name: &str) -> Result<WorkDir> {
        let dir = tempfile::Builder::new().prefix(&format!("hakube-{name}.")).tempdir()?;
        Ok(WorkDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Removes the directory after a run that succeeded; keeps it, saying
    /// where it is, after one that did not.
    pub fn finish<T>(self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.keep("the run's files");
        }
        result
    }

    /// Keeps the directory, saying what is there.
    pub fn keep(self, what: &str) {
        let path = self.dir.keep();
        msg!("{what} kept in {}", path.display());
    }
}

/// A sandbox of the benchmark's own, driven through this tool's `sandbox`
/// command, its output in a log; taken down when dropped.
pub struct BenchSandbox {
    pub sandbox: crate::sandbox::Sandbox,
    pub log: PathBuf,
    pub bin: PathBuf,
    pub bundle: PathBuf,
}

impl BenchSandbox {
    /// Refuses to run beside a developer's sandbox: the namespaces are the same.
    pub fn new_in(dir: &Path, bin: PathBuf, bundle: PathBuf) -> Result<BenchSandbox> {
        if proc::netns::exists("hk-sw") || proc::netns::exists("hk-m1") {
            bail!("a sandbox is up (namespace hk-sw or hk-m1 exists): take it down with scripts/sandbox.sh down first");
        }
        let sandbox = crate::sandbox::Sandbox { dir: dir.join("sandbox") };
        Ok(BenchSandbox { sandbox, log: dir.join("sandbox.log"), bin, bundle })
    }

    /// `sandbox up` (which also joins any host that was reset), with the
    /// cluster settings `words` for m1's install.
    pub fn up(&self, masters: u8, workers: u8, words: &str) -> Result<()> {
        let mut cmd = self.tool(&["up", "--masters", &masters.to_string(), "--workers", &workers.to_string()]);
        cmd.arg("--bin").arg(&self.bin).arg("--bundle").arg(&self.bundle).env("HAKUBE_SANDBOX_INSTALL", words);
        self.logged(cmd, "sandbox up")
    }

    fn tool(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("the tool's own path"));
        cmd.arg("sandbox").args(args).env("HAKUBE_SANDBOX_DIR", &self.sandbox.dir).stdin(Stdio::null());
        cmd
    }

    /// Runs `cmd` with its output appended to the log; on failure, shows the log's end.
    pub fn logged(&self, mut cmd: Command, what: &str) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let status = cmd.stdout(log.try_clone()?).stderr(log).status().with_context(|| format!("cannot run {what}"))?;
        if !status.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{what} failed ({status}); the end of {}:\n{}", self.log.display(), tail.join("\n"));
        }
        Ok(())
    }
}

impl Drop for BenchSandbox {
    fn drop(&mut self) {
        msg!("taking the benchmark's sandbox down");
        if self.logged(self.tool(&["down"]), "sandbox down").is_err() {
            msg!("sandbox down failed; see {}", self.log.display());
        }
    }
}

/// The release binary (HAKUBE_BIN, else built) and the Kubernetes bundle.
pub fn binary_and_bundle() -> Result<(PathBuf, PathBuf)> {
    let bin = proc::script_output("hakube_binary \"$repo\"").context("no hakube binary to run")?;
    let bundle = proc::script_output("bash \"$script_dir/kube-bundle.sh\"").context("no Kubernetes bundle")?;
    Ok((bin, bundle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn ratio_needs_both_figures_and_a_divisor() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }

    #[test]
    fn spread_shows_median_and_range() {
        assert_eq!(spread(&[2.0, 1.0, 4.0]), "2.000 (1.000-4.000)");
        assert_eq!(spread(&[]), "-");
    }
}
