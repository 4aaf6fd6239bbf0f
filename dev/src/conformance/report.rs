//! Ginkgo's JSON report (`--json-report`), read into a one-screen summary:
//! counts, duration, and each failure's name with its first error line.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

/// One spec (a test) as the report gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: String,
    /// passed, failed, skipped, pending, panicked, timedout, interrupted, aborted
    pub state: String,
    pub run_time: Duration,
    /// The failure's message, for a spec that did not pass or skip.
    pub failure: Option<String>,
}

impl Spec {
    pub fn passed(&self) -> bool {
        self.state == "passed"
    }
    /// Skipped by the test itself (it says why: something it needs is not here).
    pub fn skipped(&self) -> bool {
        (self.state == "skipped" && self.failure.is_some()) || self.state == "pending"
    }
    /// Not selected by the focus, skip or label filter (ginkgo reports these
    /// as skipped too, without a message).
    pub fn unselected(&self) -> bool {
        self.state == "skipped" && self.failure.is_none()
    }
    /// The first line of the failure that says something.
    pub fn first_error_line(&self) -> &str {
        self.failure.as_deref().and_then(|m| m.lines().map(str::trim).find(|l| !l.is_empty())).unwrap_or("(no message)")
    }
}

/// The specs of a report: its tests, not the suite's set-up and tear-down
/// nodes (those count as failures only when they fail).
pub fn specs(report: &str) -> Result<Vec<Spec>> {
    let suites: Value = serde_json::from_str(report).context("the ginkgo JSON report is not JSON")?;
    let suites = suites.as_array().context("the ginkgo JSON report is not a list of suites")?;
    let mut specs = Vec::new();
    for suite in suites {
        for s in suite["SpecReports"].as_array().into_iter().flatten() {
            let kind = s["LeafNodeType"].as_str().unwrap_or("");
            let state = s["State"].as_str().unwrap_or("unknown").to_owned();
            if kind != "It" && state == "passed" {
                continue;
            }
            let mut parts: Vec<&str> =
                s["ContainerHierarchyTexts"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let leaf = s["LeafNodeText"].as_str().unwrap_or("");
            parts.push(if leaf.is_empty() { kind } else { leaf });
            let failure = s["Failure"]["Message"].as_str().filter(|m| !m.is_empty()).map(str::to_owned);
            let run_time = Duration::from_nanos(s["RunTime"].as_u64().unwrap_or(0));
            if kind != "It" && state == "skipped" {
                continue;
            }
            specs.push(Spec { name: parts.join(" "), state, run_time, failure });
        }
    }
    Ok(specs)
}

/// Counts of a run.
#[derive(Debug, Default, PartialEq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub unselected: usize,
}

pub fn counts(specs: &[Spec]) -> Counts {
    let mut c = Counts::default();
    for s in specs {
        if s.passed() {
            c.passed += 1;
        } else if s.unselected() {
            c.unselected += 1;
        } else if s.skipped() {
            c.skipped += 1;
        } else {
            c.failed += 1;
        }
    }
    c
}

/// The summary: one line of counts, then each failure and its first line.
pub fn summary(specs: &[Spec], wall: Duration) -> String {
    let c = counts(specs);
    let wall = wall.as_secs();
    let mut out = format!(
        "{} passed, {} failed, {} skipped by the tests themselves, in {}m{:02}s ({} not selected)\n",
        c.passed,
        c.failed,
        c.skipped,
        wall / 60,
        wall % 60,
        c.unselected
    );
    for s in specs.iter().filter(|s| !s.passed() && !s.skipped() && !s.unselected()) {
        out.push_str(&format!("  FAILED [{}] {}\n      {}\n", s.state, s.name, s.first_error_line()));
    }
    for s in specs.iter().filter(|s| s.skipped()) {
        out.push_str(&format!("  skipped {}\n      {}\n", s.name, s.first_error_line()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"[{"SuitePath":"/x","SpecReports":[
        {"ContainerHierarchyTexts":null,"LeafNodeType":"SynchronizedBeforeSuite","LeafNodeText":"","State":"passed","RunTime":5},
        {"ContainerHierarchyTexts":["[sig-network] DNS"],"LeafNodeType":"It","LeafNodeText":"should provide DNS for the cluster [Conformance]","State":"passed","RunTime":12000000000},
        {"ContainerHierarchyTexts":["[sig-network] Services"],"LeafNodeType":"It","LeafNodeText":"should serve a basic endpoint [Conformance]","State":"failed","RunTime":1,
         "Failure":{"Message":"\n  Timed out after 300s.\n  more detail","Location":{"FileName":"x.go","LineNumber":3}}},
        {"ContainerHierarchyTexts":["[sig-apps] Job"],"LeafNodeType":"It","LeafNodeText":"should run a job","State":"skipped","RunTime":0},
        {"ContainerHierarchyTexts":["[sig-storage] NFS"],"LeafNodeType":"It","LeafNodeText":"should mount","State":"skipped","RunTime":0,
         "Failure":{"Message":"Only supported for providers [gce] (not skeleton)"}},
        {"ContainerHierarchyTexts":null,"LeafNodeType":"SynchronizedAfterSuite","LeafNodeText":"","State":"failed","RunTime":1,
         "Failure":{"Message":"namespaces left"}}
    ]}]"#;

    #[test]
    fn tests_count_and_a_failed_suite_node_counts_as_a_failure() {
        let specs = specs(REPORT).unwrap();
        assert_eq!(specs.len(), 5, "{specs:?}");
        assert_eq!(counts(&specs), Counts { passed: 1, failed: 2, skipped: 1, unselected: 1 });
        assert_eq!(specs[0].name, "[sig-network] DNS should provide DNS for the cluster [Conformance]");
        assert_eq!(specs[0].run_time, Duration::from_secs(12));
        assert_eq!(specs[1].first_error_line(), "Timed out after 300s.");
        assert_eq!(specs[4].name, "SynchronizedAfterSuite");
    }

    #[test]
    fn the_summary_names_each_failure_with_its_first_line() {
        let s = summary(&specs(REPORT).unwrap(), Duration::from_secs(125));
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "1 passed, 2 failed, 1 skipped by the tests themselves, in 2m05s (1 not selected)");
        assert_eq!(lines[1], "  FAILED [failed] [sig-network] Services should serve a basic endpoint [Conformance]");
        assert_eq!(lines[2], "      Timed out after 300s.");
        assert_eq!(lines[4], "      namespaces left");
        assert_eq!(lines[5], "  skipped [sig-storage] NFS should mount");
        assert_eq!(lines[6], "      Only supported for providers [gce] (not skeleton)");
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn a_report_that_is_not_a_list_is_an_error() {
        assert!(specs("{}").is_err());
        assert!(specs("not json").is_err());
        assert!(specs("[]").unwrap().is_empty());
    }
}
