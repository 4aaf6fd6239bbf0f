//! Seeing into a real cluster: every agent's `/metrics` scraped by a real
//! Prometheus (Debian's package) that loads the shipped alert rules.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// A process the test started, killed when the test ends however it ends.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(from: &Host, url: &str) -> Option<String> {
    let out = from.exec("curl", &["-fsS", "--max-time", "15", url]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Metric names a scrape declares (`# TYPE name kind`).
fn declared(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

/// Every `hakube_…` name the shipped rules read.
fn names_in_rules() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(repo().join("monitoring/hakube.rules.yaml")).unwrap();
    let mut names = BTreeSet::new();
    for line in rules.lines().filter(|l| l.trim_start().starts_with("expr:")) {
        let mut rest = line;
        while let Some(i) = rest.find("hakube_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

/// The value of the sample `series` (exactly as written) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `target` from `from` until `done` says yes (2 minutes at most);
/// the last scrape when it never does.
fn scrape_until(from: &Host, target: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let out = from.exec("curl", &["-sS", "--max-time", "15", &format!("http://{target}/metrics")]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; the last scrape:\n{text}{}\n{}\n{}",
            stderr(&out),
            stdout(&from.hakube(&["config", "print"])),
            std::fs::read_to_string(from.root().join("var/lib/hakube/logs/agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn firing(m: &Host, alert: &str) -> Vec<serde_json::Value> {
    let Some(body) = curl(m, "http://127.0.0.1:9090/api/v1/alerts") else { return vec![] };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == alert && a["state"] == "firing")
        .cloned()
        .collect()
}

fn prometheus(m: &Host, dir: &Path, targets: &[String]) -> Started {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 10s, evaluation_interval: 2s, scrape_timeout: 10s}}\n\
             rule_files: [{rules}]\n\
             scrape_configs:\n  - job_name: hakube\n    static_configs: [{{targets: [{targets}]}}]\n",
            rules = repo().join("monitoring/hakube.rules.yaml").display(),
            targets = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &m.ns, "prometheus"])
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian's package: scripts/deps.sh prometheus)");
    Started(child)
}

/// Certificates issued for 10 days: the critical alert (under 14 days)
/// fires at once, and nothing renews them during the test (5 days before
/// their end).
#[test]
fn a_real_prometheus_scrapes_every_agent_and_fires_the_certificate_alert() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("short.yaml");
    std::fs::write(
        &config,
        "apiVersion: hakube.io/v1alpha1\nkind: ClusterConfig\n\
         cluster: {certificateValidity: 10d, certificateRenewBefore: 5d, etcdSnapshotInterval: never}\n",
    )
    .unwrap();
    let net = Network::new();
    let m1 = net.host("m1");
    let w1 = net.host("w1");
    let (m1_metrics, w1_metrics) = (format!("{}:9469", m1.addr), format!("{}:9469", w1.addr));
    m1.install_master(&["--config", config.to_str().unwrap(), &format!("metrics-address={m1_metrics}")]);
    let (_d, script) = join_script(&m1, false, &[]);
    let mut args = join_args(&w1, WORKER);
    args.extend(["--metrics-address".to_owned(), w1_metrics.clone()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = w1.bash(&script, &refs, &[bin()]);
    assert!(out.status.success(), "join: {}\n{}", stderr(&out), logs(&w1));

    // Each agent, scraped by hand: the node's own series, and the
    // cluster's from the leader (m1, the only master).
    let m1_text = scrape_until(&m1, &m1_metrics, "m1 to lead and see w1's heartbeat and the add-ons", |t| {
        sample(t, "hakube_cluster_leader") == Some(1.0)
            && sample(t, r#"hakube_node_heartbeat_age_seconds{node="w1",role="worker"}"#).is_some()
            && sample(t, r#"hakube_addon_ready{addon="coredns",namespace="kube-system"}"#).is_some()
    });
    let backend = format!(r#"hakube_lb_backend_up{{backend="m1",address="{}:6443"}}"#, m1.addr);
    let w1_text =
        scrape_until(&m1, &w1_metrics, "w1's balancer to have its backend up", |t| sample(t, &backend) == Some(1.0));
    for component in ["etcd", "kube-apiserver", "kubelet"] {
        assert_eq!(
            sample(&m1_text, &format!(r#"hakube_component_healthy{{component="{component}"}}"#)),
            Some(1.0),
            "{component} on m1:\n{m1_text}"
        );
    }
    assert_eq!(sample(&m1_text, "hakube_etcd_healthy"), Some(1.0), "{m1_text}");
    assert_eq!(sample(&m1_text, "hakube_etcd_voters"), Some(1.0), "{m1_text}");
    assert_eq!(sample(&m1_text, r#"hakube_etcd_member_healthy{member="m1"}"#), Some(1.0), "{m1_text}");
    let db = sample(&m1_text, "hakube_etcd_db_size_bytes").expect("etcd's database size");
    assert!(db > 0.0 && db < sample(&m1_text, "hakube_etcd_db_quota_bytes").unwrap(), "{m1_text}");
    let joined = sample(&m1_text, r#"hakube_joins_total{role="worker",outcome="accepted"}"#);
    assert_eq!(joined, Some(1.0), "w1's join, counted by the master that answered it:\n{m1_text}");
    let apiserver =
        sample(&m1_text, r#"hakube_certificate_expiry_timestamp_seconds{certificate="apiserver",kind="leaf"}"#)
            .expect("the API server's certificate");
    let left = apiserver - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((9.0 * 86_400.0..=10.0 * 86_400.0).contains(&left), "10 days of validity, {left} s left");
    assert!(!w1_text.contains("hakube_node_heartbeat_age_seconds"), "only the leader speaks for the cluster");
    assert!(!w1_text.contains("hakube_etcd_"), "a worker has no etcd:\n{w1_text}");
    let rss = sample(&w1_text, "process_resident_memory_bytes").unwrap();
    assert!(rss > 1e6, "the agent's own memory is reported: {rss}");
    let m1_rss = sample(&m1_text, "process_resident_memory_bytes").unwrap();
    eprintln!("agent resident memory: worker {:.1} MiB, master {:.1} MiB", rss / 1048576.0, m1_rss / 1048576.0);

    // Every series the rules read is one an agent serves.
    let served: BTreeSet<String> = declared(&m1_text).union(&declared(&w1_text)).cloned().collect();
    let missing: Vec<String> = names_in_rules().difference(&served).cloned().collect();
    assert!(missing.is_empty(), "the rules read series no agent serves: {missing:?}\nserved: {served:?}");

    // A real Prometheus, with the shipped rules.
    let _prom = prometheus(&m1, dir.path(), &[m1_metrics.clone(), w1_metrics.clone()]);
    // Scraped at Prometheus' default timeout (10 s), as a user's would be:
    // how long a scrape takes is printed, not asserted.
    let mut alerts = vec![];
    let m1_apiserver = (m1_metrics.clone(), "apiserver".to_owned());
    let limit = Duration::from_secs(90);
    let start = std::time::Instant::now();
    while !alerts.iter().any(|a: &serde_json::Value| {
        a["labels"]["instance"] == m1_apiserver.0.as_str() && a["labels"]["certificate"] == m1_apiserver.1.as_str()
    }) {
        assert!(
            start.elapsed() < limit,
            "HakubeCertificateExpiring for m1's apiserver certificate never fired: {alerts:?}\ntargets: {}",
            curl(&m1, "http://127.0.0.1:9090/api/v1/targets").unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(1));
        alerts = firing(&m1, "HakubeCertificateExpiring");
    }
    assert!(alerts.iter().all(|a| a["labels"]["kind"] == "leaf"), "the CAs have years left: {alerts:?}");
    // Each target's first scrape lands within an interval of its own.
    let mut targets: Vec<(String, String)> = vec![];
    wait_for("Prometheus to have scraped both agents", Duration::from_secs(30), || {
        let up = curl(&m1, "http://127.0.0.1:9090/api/v1/query?query=up").unwrap_or_default();
        let up: serde_json::Value = serde_json::from_str(&up).unwrap_or_default();
        targets = up["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| (r["metric"]["instance"].as_str().unwrap().to_owned(), r["value"][1].as_str().unwrap().to_owned()))
            .collect();
        targets.len() == 2
    });
    let targets_health = curl(&m1, "http://127.0.0.1:9090/api/v1/targets").unwrap_or_default();
    assert!(targets.iter().all(|(_, v)| v == "1"), "every agent scraped: {targets:?}\n{targets_health}");
    let took = curl(&m1, "http://127.0.0.1:9090/api/v1/query?query=scrape_duration_seconds").unwrap_or_default();
    let took: serde_json::Value = serde_json::from_str(&took).unwrap_or_default();
    for r in took["data"]["result"].as_array().into_iter().flatten() {
        eprintln!("scrape of {} took {} s", r["metric"]["instance"], r["value"][1]);
    }
    for quiet in ["HakubeEtcdNoQuorum", "HakubeNoBalancerBackend", "HakubeConfigRefused", "HakubeEtcdMemberDown"] {
        assert!(firing(&m1, quiet).is_empty(), "{quiet} fires on a healthy cluster");
    }
}

/// The rules' own tests, by Prometheus' own tool: each alert fires on the
/// series it is written for, and a healthy cluster fires none.
#[test]
fn the_alert_rules_pass_promtool() {
    let dir = repo().join("monitoring");
    let check = Command::new("promtool").args(["check", "rules", "hakube.rules.yaml"]).current_dir(&dir).output();
    let check = check.expect("promtool (Debian's prometheus package: scripts/deps.sh prometheus)");
    assert!(check.status.success(), "{}{}", stdout(&check), stderr(&check));
    let test =
        Command::new("promtool").args(["test", "rules", "hakube.rules.test.yaml"]).current_dir(&dir).output().unwrap();
    assert!(test.status.success(), "{}{}", stdout(&test), stderr(&test));
}

fn check(h: &Host) -> (i32, Vec<serde_json::Value>) {
    let out = h.hakube(&["check", "--output", "json"]);
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --output json: {e}\n{}{}", stdout(&out), stderr(&out)));
    (out.status.code().unwrap(), checks)
}

fn outcome_of(checks: &[serde_json::Value], name: &str) -> String {
    let c = checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name}: {checks:#?}"));
    c["outcome"].as_str().unwrap().to_owned()
}

/// `hakube check` on m1 turns × for m3's member while m3 is stopped, and
/// back to ✓ once it runs again.
#[test]
fn check_fails_while_a_master_is_stopped_and_passes_when_it_returns() {
    let c = Cluster::new(3, 0);
    let (m1, m3) = (c.m1(), c.host("m3"));
    let mut failing = vec![];
    let passed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("every check of m1 to pass but warnings", Duration::from_secs(120), || {
            let (code, checks) = check(m1);
            failing = checks.into_iter().filter(|c| c["outcome"] == "error").collect();
            code <= 1
        })
    }));
    assert!(passed.is_ok(), "m1's checks still failing after 120 s: {failing:#?}");
    let (_, checks) = check(m1);
    assert_eq!(outcome_of(&checks, "member m3"), "ok");
    assert_eq!(outcome_of(&checks, "quorum"), "ok");
    assert_eq!(outcome_of(&checks, "kube-system webhooks"), "ok", "hakube labels kube-system itself");

    m3.kill_all();
    let mut seen = vec![];
    wait_for("m1's check to fail m3's member", Duration::from_secs(60), || {
        let (code, checks) = check(m1);
        seen = checks;
        code == 2 && outcome_of(&seen, "member m3") == "error"
    });
    assert_eq!(outcome_of(&seen, "quorum"), "ok", "two of three keep the quorum: {seen:#?}");
    let text = stdout(&m1.hakube(&["check"]));
    assert!(text.contains("× member m3: ") && text.contains("    hint: `hakube status` on that master"), "{text}");

    assert_ok(&m3.hakube(&["install", "--no-systemd"]), "install re-run on m3");
    wait_for("m1's check to pass m3's member again", Duration::from_secs(120), || {
        let (code, checks) = check(m1);
        code <= 1 && outcome_of(&checks, "member m3") == "ok"
    });
}

/// The value of `export NAME='…'` (or unquoted) in a join script.
fn exported(script: &str, name: &str) -> String {
    let line = script.lines().find_map(|l| l.strip_prefix(&format!("export {name}="))).unwrap();
    line.trim_matches('\'').to_owned()
}

/// The support bundle holds what support asks for and none of the secrets
/// the node has seen: a master join script's token and certificate key
/// (written into the agent's log here, as an operator's pasted command
/// would be) and a Secret's value.
#[test]
fn the_support_bundle_holds_the_evidence_and_no_secret() {
    let net = Network::new();
    let m1 = net.host("m1");
    m1.install_master(&[]);
    let script = stdout(&m1.hakube(&["node-join-script", "--master"]));
    let (token, key) = (exported(&script, "HAKUBE_JOIN_TOKEN"), exported(&script, "HAKUBE_CERTIFICATE_KEY"));
    assert!(token.len() == 23 && key.len() == 64, "{token} {key}");
    let secret_value = "hunter2-correct-horse-battery";
    let out =
        m1.kubectl(&["create", "secret", "generic", "app-db", &format!("--from-literal=password={secret_value}")]);
    assert_ok(&out, "kubectl create secret");
    let agent_log = m1.root().join("var/lib/hakube/logs/agent.log");
    let mut log = std::fs::OpenOptions::new().append(true).open(&agent_log).unwrap();
    use std::io::Write as _;
    writeln!(log, "operator ran: HAKUBE_JOIN_TOKEN={token} hakube join --certificate-key {key}").unwrap();
    drop(log);

    // `hakube logs`: the names there are, a tail, a clear refusal.
    let listed = stdout(&m1.hakube(&["logs"]));
    assert!(listed.lines().any(|l| l.starts_with("etcd ")) && listed.contains("agent"), "{listed}");
    let tail = m1.hakube(&["logs", "agent", "--tail", "1"]);
    assert_eq!(stdout(&tail).lines().count(), 1, "{}", stdout(&tail));
    let bad = m1.hakube(&["logs", "kubelets"]);
    assert!(!bad.status.success() && stderr(&bad).contains("no log named \"kubelets\""), "{}", stderr(&bad));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("support.tar.gz");
    let out = m1.hakube(&["support-bundle", "--output", file.to_str().unwrap()]);
    assert_ok(&out, "support-bundle");
    assert!(stdout(&out).contains("secrets redacted"), "{}", stdout(&out));
    let unpacked = dir.path().join("x");
    std::fs::create_dir(&unpacked).unwrap();
    let tar = Command::new("tar").arg("-xzf").arg(&file).arg("-C").arg(&unpacked).output().unwrap();
    assert!(tar.status.success(), "{}", String::from_utf8_lossy(&tar.stderr));
    let top = unpacked.join("support");
    for part in [
        "README.txt",
        "status.json",
        "status.txt",
        "check.txt",
        "check.json",
        "metrics.txt",
        "config/cluster.yaml",
        "config/effective.yaml",
        "certificates.json",
        "logs/agent.log",
        "logs/etcd.log",
        "logs/kube-apiserver.log",
        "etcd/members.json",
        "etcd/endpoint-status.json",
        "kubernetes/nodes.json",
        "kubernetes/events.json",
        "kubernetes/kube-system-deployments.json",
    ] {
        let len = std::fs::metadata(top.join(part)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{part} missing or empty in the bundle");
    }
    let encoded = base64_of(secret_value);
    let grep = Command::new("grep")
        .args(["-rlF", "-e", &token, "-e", &key, "-e", secret_value, "-e", &encoded, "-e", &token[7..]])
        .arg(&top)
        .output()
        .unwrap();
    assert!(grep.stdout.is_empty(), "secrets in the bundle: {}", String::from_utf8_lossy(&grep.stdout));
    let agent = std::fs::read_to_string(top.join("logs/agent.log")).unwrap();
    assert!(agent.contains("HAKUBE_JOIN_TOKEN=[redacted] hakube join --certificate-key [redacted]"), "{agent}");
    let members = std::fs::read_to_string(top.join("etcd/members.json")).unwrap();
    assert!(members.contains("\"m1\""), "{members}");
}

fn base64_of(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
