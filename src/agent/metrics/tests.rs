use super::*;
use crate::cluster::purge::{Assessment, NodeView, View};
use crate::cluster::registry::NodeRecord;
use crate::cluster::report::ClusterReport;
use crate::metrics::counter_series;

fn state() -> State {
    serde_json::from_value(serde_json::json!({
        "agent_pid": 42, "started_at": 1_700_000_000u64, "reloads": 3,
        "components": {
            "etcd": {"phase": "running", "healthy": true, "probe": "etcd", "pid": 7, "restarts": 2, "since": 1},
            "kubelet": {"phase": "backoff", "healthy": false, "probe": "process", "pid": null, "restarts": 9, "since": 1},
        },
        "load_balancer": {"listen": "127.0.0.1:6444", "listening": true, "backends": [
            {"name": "m1", "address": "10.0.0.11:6443", "health": "up", "since": 1, "active": 4, "connections": 120, "dial_failures": 0},
            {"name": "m2", "address": "10.0.0.12:6443", "health": "down", "since": 1, "active": 0, "connections": 7, "dial_failures": 5},
        ]},
    }))
    .unwrap()
}

fn cfg() -> ClusterConfig {
    crate::config::tests::test_config("node: {components: [etcd, containerd, kubelet]}")
}

/// The sample lines of `text` (no comments), for exact assertions.
fn samples(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[test]
fn the_node_part_follows_what_the_agent_saw() {
    let mut out = Out::default();
    node_series(&mut out, &cfg(), Some(&state()));
    let text = out.encode();
    let s = samples(&text);
    for line in [
        r#"hakube_component_running{component="etcd"} 1.0"#,
        r#"hakube_component_running{component="kubelet"} 0.0"#,
        // Configured, never seen by the agent: neither running nor healthy.
        r#"hakube_component_running{component="containerd"} 0.0"#,
        r#"hakube_component_healthy{component="etcd"} 1.0"#,
        r#"hakube_component_healthy{component="kubelet"} 0.0"#,
        r#"hakube_component_restarts_total{component="kubelet"} 9"#,
        r#"hakube_component_restarts_total{component="containerd"} 0"#,
        r#"hakube_lb_backend_up{backend="m1",address="10.0.0.11:6443"} 1.0"#,
        r#"hakube_lb_backend_up{backend="m2",address="10.0.0.12:6443"} 0.0"#,
        r#"hakube_lb_backend_active_connections{backend="m1",address="10.0.0.11:6443"} 4.0"#,
        r#"hakube_lb_backend_connections_total{backend="m1",address="10.0.0.11:6443"} 120"#,
        r#"hakube_lb_backend_dial_failures_total{backend="m2",address="10.0.0.12:6443"} 5"#,
        "hakube_lb_listening 1.0",
        "hakube_config_reload_failed 0.0",
        "hakube_node_purged 0.0",
        "hakube_agent_start_time_seconds 1700000000.0",
    ] {
        assert!(s.contains(&line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("# TYPE hakube_component_restarts_total counter"), "{text}");
}

#[test]
fn a_master_says_whether_it_holds_the_virtual_ip_and_how_often_it_took_it() {
    let mut state = state();
    let part = crate::vip::Part { holding_since: Some(1_700_000_100), problem: None, takeovers: 2 };
    state.vip.insert("10.0.0.100".into(), part);
    let mut out = Out::default();
    node_series(&mut out, &cfg(), Some(&state));
    let text = out.encode();
    let s = samples(&text);
    for line in [
        r#"hakube_vip_held{address="10.0.0.100"} 1.0"#,
        r#"hakube_vip_takeovers_total{address="10.0.0.100"} 2"#,
        r#"hakube_vip_unusable{address="10.0.0.100"} 0.0"#,
    ] {
        assert!(s.contains(&line), "missing {line:?} in\n{text}");
    }
    // A cluster without a virtual IP: no such series.
    let mut out = Out::default();
    node_series(&mut out, &cfg(), Some(&self::state()));
    assert!(!out.encode().contains("hakube_vip"));
}

#[test]
fn an_agent_without_state_says_only_what_it_knows() {
    let mut out = Out::default();
    node_series(&mut out, &cfg(), None);
    let text = out.encode();
    assert!(!text.contains("hakube_component_"), "no state, no component series: {text}");
}

#[test]
fn certificates_give_their_end_and_unreadable_ones_are_counted() {
    let row = |name: &str, is_ca, not_after| Row {
        name: name.into(),
        path: "/x".into(),
        subject: String::new(),
        is_ca,
        not_after,
        problem: not_after.is_none().then(|| "bad PEM".to_owned()),
    };
    let mut out = Out::default();
    certificate_series(
        &mut out,
        &[
            row("ca", true, Some(2_000_000_000)),
            row("apiserver", false, Some(1_800_000_000)),
            row("broken", false, None),
        ],
    );
    let text = out.encode();
    let s = samples(&text);
    assert!(
        s.contains(&r#"hakube_certificate_expiry_timestamp_seconds{certificate="ca",kind="ca"} 2000000000.0"#),
        "{text}"
    );
    assert!(
        s.contains(&r#"hakube_certificate_expiry_timestamp_seconds{certificate="apiserver",kind="leaf"} 1800000000.0"#),
        "{text}"
    );
    assert!(s.contains(&"hakube_certificates_unreadable 1.0"), "{text}");
    assert!(!text.contains(r#"expiry_timestamp_seconds{certificate="broken""#), "{text}");
}

fn record(name: &str, heartbeat_at: u64, revision: i64) -> NodeRecord {
    serde_json::from_value(serde_json::json!({
        "name": name, "role": "worker", "address": "10.0.0.21", "joined_at": 1,
        "heartbeat_at": heartbeat_at, "settings_revision": revision, "clock_offset_ms": -1500, "healthy": true,
    }))
    .unwrap()
}

#[test]
fn the_leaders_part_ages_every_heartbeat_and_names_what_is_held_back() {
    let now = 10_000;
    let c = ClusterReport {
        leader: Some("m1".into()),
        settings: None,
        settings_revision: 4,
        settings_written_by: "m1".into(),
        nodes: vec![record("w1", 9_990, 4), record("w2", 6_000, 3)],
        not_converged: vec!["w2".into()],
        purge: Some(View {
            at: now,
            leader: "m1".into(),
            nodes: vec![
                NodeView { name: "w1".into(), last_seen: now, assessment: Assessment::Alive, held_back: None },
                NodeView {
                    name: "w2".into(),
                    last_seen: 6_000,
                    assessment: Assessment::Due { lost_for: 4_000 },
                    held_back: Some("etcd has no quorum".into()),
                },
            ],
            current: None,
            note: None,
            round_ms: None,
        }),
        purged: vec![],
        load_balancer_change: None,
        upgrade: None,
        vip_holders: vec![],
    };
    let mut out = Out::default();
    cluster_series(&mut out, &c, now);
    let text = out.encode();
    let s = samples(&text);
    for line in [
        r#"hakube_node_heartbeat_age_seconds{node="w1",role="worker"} 10.0"#,
        r#"hakube_node_heartbeat_age_seconds{node="w2",role="worker"} 4000.0"#,
        r#"hakube_node_settings_converged{node="w1"} 1.0"#,
        r#"hakube_node_settings_converged{node="w2"} 0.0"#,
        r#"hakube_node_lost{node="w1"} 0.0"#,
        r#"hakube_node_lost{node="w2"} 1.0"#,
        r#"hakube_node_purge_held_back{node="w2"} 1.0"#,
        r#"hakube_node_purge_held_back{node="w1"} 0.0"#,
        r#"hakube_node_clock_offset_seconds{node="w1"} -1.5"#,
        "hakube_settings_revision 4.0",
        "hakube_purge_in_progress 0.0",
    ] {
        assert!(s.contains(&line), "missing {line:?} in\n{text}");
    }
}

/// What Prometheus' own linter says of a whole scrape's worth of series.
#[test]
fn promtool_finds_nothing_to_say() {
    let mut out = Out::default();
    node_series(&mut out, &cfg(), Some(&state()));
    certificate_series(&mut out, &[]);
    process_series(&mut out);
    etcd_series(&mut out, None, Some(&etcd::EtcdMetrics { db_size_bytes: Some(1.0), ..Default::default() }));
    addon_series(&mut out, &[]);
    counter_series(&mut out);
    let text = out.encode();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package: scripts/deps.sh prometheus)");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let done = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    assert!(done.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{text}");
}
