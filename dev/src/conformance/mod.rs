//! Kubernetes' own conformance suite against the sandbox (or any cluster):
//! the kit (`kit`), the run, and its summary (`report`).
//!
//! A run imports the kit's images into every sandbox host's containerd, then
//! runs ginkgo inside m1's network namespace (the sandbox's addresses exist
//! only there) in two passes, as upstream's conformance image does: the
//! tests that may run side by side on `--procs` processes, then the
//! `[Serial]` ones alone. It leaves the cluster as it found it: what the
//! tests created and did not delete (namespaces, and the cluster-wide kinds
//! tests create) is reported, and makes the run fail.

mod archive;
pub mod kit;
mod report;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::proc::{self, bounded, bounded_group, in_ns, msg, warning};
use crate::sandbox::{ns_of, Sandbox};

/// The smoke subset CI runs: one test name per line (see the file).
const SMOKE: &str = include_str!("smoke.txt");
/// What the tests create that outlives a namespace.
const CLUSTER_KINDS: &str = "namespaces,customresourcedefinitions,apiservices,validatingwebhookconfigurations,\
    mutatingwebhookconfigurations,validatingadmissionpolicies,persistentvolumes,storageclasses,priorityclasses,\
    clusterroles,clusterrolebindings,ingressclasses,runtimeclasses";
const RUN_LIMIT: Duration = Duration::from_secs(6 * 3600);
const IMPORT_LIMIT: Duration = Duration::from_secs(900);
/// How long the tests' namespaces may take to go once the run is over.
const CLEANUP_WAIT: Duration = Duration::from_secs(600);

#[derive(clap::Subcommand)]
pub enum Action {
    /// Build (or find) the kit: e2e.test, ginkgo and the tests' images.
    Kit {
        /// Build it again even when cached.
        #[arg(long)]
        rebuild: bool,
    },
    /// Run the suite.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Only tests whose name matches (a regular expression; may repeat).
    #[arg(long)]
    focus: Vec<String>,
    /// Not the tests whose name matches (may repeat).
    #[arg(long)]
    skip: Vec<String>,
    /// Ginkgo's label filter: which tests count at all.
    #[arg(long, default_value = "Conformance")]
    label_filter: String,
    /// The fixed smoke subset (about 20 tests) instead of the whole suite.
    #[arg(long, conflicts_with = "focus")]
    smoke: bool,
    /// Parallel test processes for the tests that allow it.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    procs: u16,
    /// Where the reports go (JUnit, ginkgo's JSON, the summary, e2e's logs).
    #[arg(long, default_value = "conformance-report")]
    report_dir: PathBuf,
    /// A cluster other than the sandbox: its admin kubeconfig. Its nodes
    /// must have the kit's images imported (the run says which file).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Only list the tests that would run.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(action: Action) -> Result<()> {
    let bundle = proc::script_output("bash \"$script_dir/kube-bundle.sh\"")
        .context("could not build or find the Kubernetes bundle")?;
    match action {
        Action::Kit { rebuild } => {
            let kit = kit::ensure(&bundle, rebuild)?;
            println!("{}", kit.dir.display());
            Ok(())
        }
        Action::Run(args) => run_suite(&bundle, args),
    }
}

/// The smoke subset as one focus expression: each name matched whole.
/// Ginkgo matches a focus against the suite's description, a space and the
/// test's name, so a name starts after a space (or at the start).
fn smoke_focus() -> String {
    let names: Vec<String> = smoke_names().into_iter().map(regex_escape).collect();
    format!("(^| )({})$", names.join("|"))
}

fn smoke_names() -> Vec<&'static str> {
    SMOKE.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Where and how the suite reaches the cluster.
struct Target {
    kubeconfig: PathBuf,
    /// The network namespace to run in (the sandbox's m1), if any.
    netns: Option<String>,
    sandbox: Option<Sandbox>,
}

impl Target {
    fn command(&self, program: &Path) -> Command {
        match &self.netns {
            Some(ns) => in_ns(ns, program),
            None => Command::new(program),
        }
    }

    fn kubectl(&self, bundle: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command(&bundle.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--request-timeout=30s").args(args);
        cmd
    }

    /// `kind/name` of every object of the kinds tests create cluster-wide.
    fn cluster_objects(&self, bundle: &Path) -> Result<BTreeSet<String>> {
        let out = proc::output(
            bounded(Duration::from_secs(120), self.kubectl(bundle, &["get", CLUSTER_KINDS, "-o", "name"])),
            "kubectl get (the cluster's objects)",
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    }
}

fn run_suite(bundle: &Path, args: RunArgs) -> Result<()> {
    let kit = kit::ensure(bundle, false)?;
    let target = match &args.kubeconfig {
        Some(k) => Target { kubeconfig: std::path::absolute(k)?, netns: None, sandbox: None },
        None => {
            let sandbox = Sandbox::from_env();
            let kubeconfig = sandbox.root("m1").join("var/lib/hakube/kubeconfigs/admin.conf");
            if !kubeconfig.is_file() {
                bail!(
                    "the sandbox is not up ({} is missing): run scripts/sandbox.sh up first, or pass --kubeconfig",
                    kubeconfig.display()
                );
            }
            Target { kubeconfig, netns: Some(ns_of("m1")), sandbox: Some(sandbox) }
        }
    };
    let report_dir = std::path::absolute(&args.report_dir)?;
    std::fs::create_dir_all(&report_dir).with_context(|| format!("cannot create {}", report_dir.display()))?;

    match &target.sandbox {
        Some(sandbox) if !args.dry_run => import_images(sandbox, bundle, &kit)?,
        Some(_) => {}
        None => msg!(
            "the nodes of this cluster need the images of {} imported into containerd's k8s.io namespace, and {} tagged {}",
            kit.images().display(),
            std::fs::read_to_string(bundle.join("pause-image")).unwrap_or_default().trim(),
            kit.pause_reference()?
        ),
    }

    let focus = if args.smoke { vec![smoke_focus()] } else { args.focus.clone() };
    let before = if args.dry_run { BTreeSet::new() } else { target.cluster_objects(bundle)? };
    let t0 = Instant::now();
    let mut specs = Vec::new();
    let passes = [
        ("parallel", format!("({}) && !Serial", args.label_filter), args.procs),
        ("serial", format!("({}) && Serial", args.label_filter), 1),
    ];
    for (name, labels, procs) in passes {
        // Ginkgo lists tests (--dry-run) in one process only.
        let procs = if args.dry_run { 1 } else { procs };
        let json = report_dir.join(format!("report-{name}.json"));
        let _ = std::fs::remove_file(&json);
        let mut cmd = target.command(&kit.ginkgo());
        cmd.arg(format!("--procs={procs}")).arg(format!("--label-filter={labels}"));
        for f in &focus {
            cmd.arg(format!("--focus={f}"));
        }
        for s in &args.skip {
            cmd.arg(format!("--skip={s}"));
        }
        cmd.args(["--no-color", "--timeout=6h", "--silence-skips", "--poll-progress-after=10m"]);
        if args.dry_run {
            cmd.args(["--dry-run", "-v"]);
        }
        cmd.arg(format!("--output-dir={}", report_dir.display()));
        cmd.arg(format!("--json-report=report-{name}.json")).arg(format!("--junit-report=junit-{name}.xml"));
        cmd.arg(kit.e2e()).arg("--");
        cmd.arg(format!("--kubeconfig={}", target.kubeconfig.display()));
        cmd.arg(format!("--kubectl-path={}", bundle.join("kubectl").display()));
        cmd.args(["--provider=skeleton", "--disable-log-dump"]);
        cmd.arg(format!("--report-dir={}", report_dir.join(name).display()));
        msg!(
            "{name} pass ({procs} process{}): {labels}{}",
            if procs == 1 { "" } else { "es" },
            focus_note(&focus, &args.skip)
        );
        let log = report_dir.join(format!("ginkgo-{name}.log"));
        // The output goes to the log; a line of progress every minute.
        let mut child = proc::to_log(bounded_group(RUN_LIMIT, cmd), &log)?.stdin(Stdio::null()).spawn()?;
        let started = Instant::now();
        let mut next = started + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            std::thread::sleep(Duration::from_secs(1));
            if !args.dry_run && Instant::now() >= next {
                next += Duration::from_secs(60);
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                msg!("{name} pass: {} after {} min", progress(&text), started.elapsed().as_secs() / 60);
            }
        };
        let text = std::fs::read_to_string(&json).unwrap_or_default();
        if text.is_empty() {
            bail!("the {name} pass ({status}) wrote no report; its output: {}", log.display());
        }
        specs.extend(report::specs(&text)?);
        msg!("{name} pass done ({status}) in {} s", started.elapsed().as_secs());
    }
    if args.dry_run {
        let names: Vec<&str> = specs.iter().filter(|s| !s.unselected()).map(|s| s.name.as_str()).collect();
        println!("{}", names.join("\n"));
        msg!("{} tests would run", names.len());
        return Ok(());
    }
    let wall = t0.elapsed();
    let leftovers = leftovers(&target, bundle, &before)?;
    let summary = report::summary(&specs, wall);
    std::fs::write(report_dir.join("summary.txt"), &summary)?;
    print!("{summary}");
    msg!("reports: {}/ (junit-*.xml, report-*.json, ginkgo-*.log, summary.txt)", report_dir.display());
    let c = report::counts(&specs);
    if !leftovers.is_empty() {
        bail!("the run left {} objects in the cluster: {}", leftovers.len(), leftovers.join(" "));
    }
    if c.failed > 0 {
        bail!("{} of {} tests failed", c.failed, c.passed + c.failed);
    }
    if c.passed == 0 {
        bail!("no test ran: check --focus/--skip/--label-filter");
    }
    if args.smoke && c.passed + c.skipped != smoke_names().len() {
        bail!("the smoke subset names {} tests, the suite ran {}: is a name in dev/src/conformance/smoke.txt not the suite's?", smoke_names().len(), c.passed + c.skipped);
    }
    Ok(())
}

/// How far a pass is, from ginkgo's output: "Will run N of M specs", then a
/// bullet per finished test, "• [FAILED]" (or PANICKED, TIMEDOUT) for those
/// that failed.
fn progress(log: &str) -> String {
    let total =
        log.lines().find_map(|l| l.strip_prefix("Will run ").and_then(|r| r.split_whitespace().next())).unwrap_or("?");
    let done = log.matches('•').count();
    let failed = ["• [FAILED]", "• [PANICKED]", "• [TIMEDOUT]", "• [INTERRUPTED]"]
        .iter()
        .map(|m| log.matches(m).count())
        .sum::<usize>();
    format!("{done} of {total} tests done, {failed} failed")
}

fn focus_note(focus: &[String], skip: &[String]) -> String {
    let mut s = String::new();
    if !focus.is_empty() && focus.iter().map(String::len).sum::<usize>() < 200 {
        s.push_str(&format!(", focus {}", focus.join(" | ")));
    } else if !focus.is_empty() {
        s.push_str(", the smoke subset");
    }
    if !skip.is_empty() {
        s.push_str(&format!(", skip {}", skip.join(" | ")));
    }
    s
}

/// What the run created and did not delete, once its namespaces had time to go.
fn leftovers(target: &Target, bundle: &Path, before: &BTreeSet<String>) -> Result<Vec<String>> {
    let deadline = Instant::now() + CLEANUP_WAIT;
    loop {
        let now = target.cluster_objects(bundle)?;
        let new: Vec<String> = now.difference(before).cloned().collect();
        if new.is_empty() {
            return Ok(new);
        }
        if Instant::now() > deadline {
            return Ok(new);
        }
        msg!("waiting for {} objects the tests deleted to go (e.g. {})", new.len(), new[0]);
        std::thread::sleep(Duration::from_secs(10));
    }
}

/// The kit's images into every sandbox host's containerd, side by side,
/// and the bundle's pause image tagged as the suite's.
fn import_images(sandbox: &Sandbox, bundle: &Path, kit: &kit::Kit) -> Result<()> {
    let hosts: Vec<String> = sandbox.hosts().into_iter().map(|h| h.name).filter(|h| sandbox.has_root(h)).collect();
    let pause_from = std::fs::read_to_string(bundle.join("pause-image"))?.trim().to_owned();
    let pause_to = kit.pause_reference()?;
    let mut wanted = kit.references()?;
    wanted.push(pause_to.clone());
    let t0 = Instant::now();
    msg!("importing {} into {} hosts' containerd ({})", kit.images().display(), hosts.len(), hosts.join(" "));
    let results: Vec<(String, Result<()>)> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| {
                let (pause_from, pause_to, wanted) = (&pause_from, &pause_to, &wanted);
                s.spawn(move || {
                    let socket = hakube::host::paths::Paths::new(sandbox.root(h)).containerd_socket();
                    let ctr = |args: &[&str]| {
                        let mut cmd = Command::new(bundle.join("ctr"));
                        cmd.arg("--address").arg(&socket).args(["--namespace", "k8s.io"]).args(args);
                        bounded(IMPORT_LIMIT, cmd)
                    };
                    let r = proc::output(
                        ctr(&["images", "import", &kit.images().to_string_lossy()]),
                        &format!("ctr images import on {h}"),
                    )
                    .and_then(|_| {
                        proc::output(
                            ctr(&["images", "tag", "--force", pause_from, pause_to]),
                            &format!("ctr images tag on {h}"),
                        )
                    })
                    .and_then(|_| proc::output(ctr(&["images", "ls", "-q"]), &format!("ctr images ls on {h}")))
                    .and_then(|listed| {
                        let listed: BTreeSet<&str> = listed.lines().collect();
                        let absent: Vec<&String> = wanted.iter().filter(|r| !listed.contains(r.as_str())).collect();
                        if absent.is_empty() {
                            Ok(())
                        } else {
                            bail!("after the import, {h}'s containerd lacks {absent:?}")
                        }
                    });
                    (h.clone(), r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("an import thread")).collect()
    });
    let mut failed = Vec::new();
    for (h, r) in results {
        if let Err(e) = r {
            warning!("{h}: {e:#}");
            failed.push(h);
        }
    }
    if !failed.is_empty() {
        bail!("the images could not be imported on {}", failed.join(" "));
    }
    msg!("images imported in {} s", t0.elapsed().as_secs());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smoke_focus_matches_each_name_whole_and_nothing_else() {
        let focus = smoke_focus();
        let names = smoke_names();
        assert!((15..=30).contains(&names.len()), "about 20 smoke tests, not {}", names.len());
        assert!(focus.starts_with("(^| )(") && focus.ends_with(")$"));
        // Every regex metacharacter in a name is escaped: the names carry [brackets].
        assert!(!focus.contains(" [Conformance]"), "{focus}");
        assert!(focus.contains(r"\[Conformance\]"));
    }

    #[test]
    fn progress_counts_finished_and_failed_tests() {
        let log = "Running Suite: x\nWill run 433 of 3206 specs\nRunning in parallel across 4 processes\n\
            ••\n------------------------------\n• [FAILED] [301.2 seconds]\n[sig-x] y\n  [FAILED] timed out\n•";
        assert_eq!(progress(log), "4 of 433 tests done, 1 failed");
        assert_eq!(progress(""), "0 of ? tests done, 0 failed");
    }

    #[test]
    fn escaping_leaves_plain_text_alone() {
        assert_eq!(regex_escape("a b-c"), "a b-c");
        assert_eq!(regex_escape("[sig-x] y (z) 1.5*"), r"\[sig-x\] y \(z\) 1\.5\*");
    }
}
