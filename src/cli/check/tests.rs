use super::*;
use crate::cluster::purge::{Assessment, NodeView, View};
use crate::cluster::report::MemberReport;
use crate::etcd::Member;

const NOW: i64 = 2_000_000_000;

fn member(name: &str, healthy: Option<bool>) -> MemberReport {
    MemberReport {
        member: Member {
            id: name.len() as u64,
            name: name.into(),
            peer_urls: vec![],
            client_urls: vec![],
            is_learner: healthy.is_none(),
        },
        started: true,
        healthy,
        error: healthy.is_some_and(|h| !h).then(|| "connection refused".to_owned()),
    }
}

fn etcd(voters: usize) -> EtcdReport {
    let quorum = voters / 2 + 1;
    EtcdReport {
        endpoint: "https://10.0.0.11:2379".into(),
        healthy: true,
        error: None,
        members: (1..=voters).map(|i| member(&format!("m{i}"), Some(true))).collect(),
        voters,
        quorum,
        failures_tolerated: voters - quorum,
        warnings: vec![],
    }
}

fn record(name: &str, heartbeat_at: u64, clock_offset_ms: i64) -> crate::cluster::registry::NodeRecord {
    serde_json::from_value(serde_json::json!({
        "name": name, "role": "master", "address": "10.0.0.11", "joined_at": 1, "heartbeat_at": heartbeat_at,
        "settings_revision": 1, "clock_offset_ms": clock_offset_ms, "healthy": true,
    }))
    .unwrap()
}

fn alive(name: &str) -> NodeView {
    NodeView { name: name.into(), last_seen: NOW as u64, assessment: Assessment::Alive, held_back: None }
}

/// A healthy three-master `ha` cluster, as m1 reads it.
fn healthy() -> Reading {
    let config = crate::config::tests::test_config("cluster: {ha: true}");
    let state: State = serde_json::from_value(serde_json::json!({
        "agent_pid": 1, "started_at": 1, "reloads": 0,
        "components": config.node.components.iter().map(|c| (c.name().to_owned(), serde_json::json!({
            "phase": "running", "healthy": true, "probe": "process", "pid": 2, "restarts": 0, "since": 1
        }))).collect::<serde_json::Map<_, _>>(),
    }))
    .unwrap();
    let nodes = ["m1", "m2", "m3"];
    let addon = |name: &'static str| crate::addons::AddonStatus {
        name,
        namespace: "kube-system",
        ready: 2,
        desired: 2,
        message: "ready".into(),
    };
    Reading {
        now: NOW,
        config,
        agent_running: true,
        state: Some(state),
        swap_kib: Some(0),
        sysctls: vec![
            ("net/ipv4/ip_forward", Some("1".into())),
            ("net/bridge/bridge-nf-call-iptables", Some("1".into())),
        ],
        disk: Some((60 << 30, 100 << 30)),
        certs: vec![Row {
            name: "apiserver".into(),
            path: "/x".into(),
            subject: "kube-apiserver".into(),
            is_ca: false,
            not_after: Some(NOW + 300 * 86_400),
            problem: None,
        }],
        etcd: Some(etcd(3)),
        etcd_local: Some(crate::metrics::etcd::EtcdMetrics {
            db_size_bytes: Some(20e6),
            quota_bytes: Some(2e9),
            leader_changes: Some(1.0),
            has_leader: Some(true),
            fsync_buckets: vec![(0.001, 90.0), (0.002, 100.0), (f64::INFINITY, 100.0)],
        }),
        cluster: Some(ClusterReport {
            leader: Some("m1".into()),
            settings: None,
            settings_revision: 1,
            settings_written_by: "m1".into(),
            nodes: nodes.iter().map(|n| record(n, NOW as u64 - 3, 20)).collect(),
            not_converged: vec![],
            purge: Some(View {
                at: NOW as u64,
                leader: "m1".into(),
                nodes: nodes.iter().map(|n| alive(n)).collect(),
                current: None,
                note: None,
                round_ms: None,
            }),
            purged: vec![],
            load_balancer_change: None,
            upgrade: None,
            vip_holders: vec![],
        }),
        kube: Some(Ok(KubeReading {
            schedulable: 3,
            addons: vec![addon("coredns")],
            addon_nodes: [("coredns".to_owned(), vec!["m1".to_owned(), "m2".to_owned()])].into(),
            blocking_pdbs: vec![],
            kube_system_labels: [(WEBHOOK_EXCLUSION.0.to_owned(), WEBHOOK_EXCLUSION.1.to_owned())].into(),
        })),
    }
}

fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
}

#[test]
fn a_healthy_cluster_passes_every_check() {
    let checks = judge(&healthy());
    let bad: Vec<_> = checks.iter().filter(|c| c.outcome != Outcome::Ok).collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(worst(&checks).exit_code(), 0);
    for group in ["host", "etcd", "control plane", "nodes", "add-ons", "certificates"] {
        assert!(checks.iter().any(|c| c.group == group), "no {group} check");
    }
    assert_eq!(find(&checks, "quorum").message, "3 voting member(s), quorum 2, 1 failure(s) tolerated");
}

#[test]
fn a_stopped_master_is_an_error_naming_its_member() {
    let mut r = healthy();
    let e = r.etcd.as_mut().unwrap();
    e.members[2] = member("m3", Some(false));
    let checks = judge(&r);
    let c = find(&checks, "member m3");
    assert_eq!((c.outcome, c.message.as_str()), (Outcome::Error, "connection refused"));
    assert_eq!(worst(&checks), Outcome::Error);
    assert_eq!(worst(&checks).exit_code(), 2);
}

#[test]
fn no_quorum_is_an_error_with_what_to_do() {
    let mut r = healthy();
    let e = r.etcd.as_mut().unwrap();
    e.healthy = false;
    e.error = Some("deadline exceeded".into());
    let c = find(&judge(&r), "quorum").clone();
    assert_eq!(c.outcome, Outcome::Error);
    assert!(c.message.contains("deadline exceeded") && c.hint.unwrap().contains("bring the stopped masters back"));
}

#[test]
fn an_even_or_too_small_etcd_is_a_warning() {
    let mut r = healthy();
    r.etcd = Some(etcd(4));
    assert_eq!(find(&judge(&r), "member count").outcome, Outcome::Warning);
    r.etcd = Some(etcd(2));
    let checks = judge(&r);
    assert_eq!(find(&checks, "member count").outcome, Outcome::Warning, "two masters survive no failure");
    assert_eq!(find(&checks, "quorum").outcome, Outcome::Warning, "ha wants three");
    r.config.cluster.ha = false;
    r.etcd = Some(etcd(1));
    assert!(judge(&r).iter().filter(|c| c.group == "etcd").all(|c| c.outcome == Outcome::Ok), "one master, no ha");
}

#[test]
fn etcd_near_its_quota_or_on_a_slow_disk_is_named() {
    let mut r = healthy();
    let m = r.etcd_local.as_mut().unwrap();
    m.db_size_bytes = Some(1.7e9);
    m.fsync_buckets = vec![(0.008, 50.0), (0.016, 90.0), (0.032, 100.0), (f64::INFINITY, 100.0)];
    let checks = judge(&r);
    assert_eq!(find(&checks, "database size").outcome, Outcome::Warning);
    let d = find(&checks, "disk latency");
    assert_eq!(
        (d.outcome, d.message.as_str()),
        (Outcome::Warning, "99% of WAL fsyncs take up to 32 ms (etcd wants under 10 ms)")
    );
    r.etcd_local.as_mut().unwrap().db_size_bytes = Some(1.95e9);
    assert_eq!(find(&judge(&r), "database size").outcome, Outcome::Error);
}

#[test]
fn a_node_whose_heartbeat_broke_while_its_kubelet_lives_is_told_apart_from_a_lost_one() {
    let mut r = healthy();
    let c = r.cluster.as_mut().unwrap();
    c.nodes[1].heartbeat_at = NOW as u64 - 300;
    c.nodes[2].heartbeat_at = NOW as u64 - 900;
    c.purge.as_mut().unwrap().nodes[2].assessment = Assessment::Lost { lost_for: 900, purge_in: Some(2700) };
    let checks = judge(&r);
    let broken = find(&checks, "node m2");
    assert_eq!(broken.outcome, Outcome::Warning);
    assert!(broken.message.contains("kubelet is alive but its agent's heartbeat is 300 s old"), "{broken:?}");
    let lost = find(&checks, "node m3");
    assert!(lost.message.starts_with("lost"), "{lost:?}");
}

#[test]
fn clock_skew_is_a_warning_then_an_error() {
    let mut r = healthy();
    let c = r.cluster.as_mut().unwrap();
    c.nodes[1].clock_offset_ms = Some(-2_500);
    c.nodes[2].clock_offset_ms = Some(45_000);
    let checks = judge(&r);
    assert_eq!(find(&checks, "clock m2").outcome, Outcome::Warning);
    assert_eq!(find(&checks, "clock m2").message, "m2's clock is 2.5 s off a master's");
    assert_eq!(find(&checks, "clock m3").outcome, Outcome::Error);
    assert!(!checks.iter().any(|c| c.name == "clock m1"), "20 ms is no skew worth a line");
}

#[test]
fn add_on_risks_are_warnings() {
    let mut r = healthy();
    let Some(Ok(k)) = r.kube.as_mut() else { unreachable!() };
    k.schedulable = 2;
    k.addon_nodes.insert("coredns".into(), vec!["m1".into(), "m1".into()]);
    k.blocking_pdbs = vec!["kube-system/coredns".into()];
    k.kube_system_labels.clear();
    let checks = judge(&r);
    for name in
        ["schedulable nodes", "coredns spread", "PodDisruptionBudget kube-system/coredns", "kube-system webhooks"]
    {
        assert_eq!(find(&checks, name).outcome, Outcome::Warning, "{name}");
    }
    assert_eq!(worst(&checks).exit_code(), 1);
    r.kube = Some(Err("connection refused".into()));
    assert_eq!(find(&judge(&r), "API server").outcome, Outcome::Error);
}

#[test]
fn certificates_warn_within_30_days_and_fail_when_expired() {
    let mut r = healthy();
    let cert = |name: &str, is_ca, days: i64| {
        let mut c = r.certs[0].clone();
        c.name = name.into();
        c.is_ca = is_ca;
        c.not_after = Some(NOW + days * 86_400);
        c
    };
    let (soon, ca, gone) = (cert("etcd/peer", false, 20), cert("ca", true, 10), cert("admin.conf", false, -1));
    r.certs.extend([soon, ca, gone]);
    let checks = judge(&r);
    assert_eq!(find(&checks, "etcd/peer").message, "expires in 20 day(s)");
    assert_eq!(find(&checks, "etcd/peer").outcome, Outcome::Warning);
    assert!(find(&checks, "ca").hint.as_deref().unwrap().contains("never renewed by itself"));
    assert_eq!(find(&checks, "admin.conf").outcome, Outcome::Error);
    assert_eq!(find(&checks, "validity").message, "1 certificate(s) valid for 30 days or more");
}

#[test]
fn the_host_checks_name_swap_sysctls_disk_and_the_agent() {
    let mut r = healthy();
    r.swap_kib = Some(2048 * 1024);
    r.sysctls[1].1 = None;
    r.disk = Some((3 << 30, 100 << 30));
    r.agent_running = false;
    let checks = judge(&r);
    assert_eq!(find(&checks, "swap").message, "2048 MiB of swap is configured");
    assert_eq!(find(&checks, "net.bridge.bridge-nf-call-iptables").outcome, Outcome::Error);
    assert_eq!(find(&checks, "disk").outcome, Outcome::Error);
    assert_eq!(find(&checks, "agent").outcome, Outcome::Error);
}

#[test]
fn the_text_groups_checks_and_hints_only_what_is_not_fine() {
    let mut r = healthy();
    r.swap_kib = Some(1024);
    let text = render(&judge(&r));
    assert!(
        text.starts_with("host\n----\n✓ agent: the hakube agent runs\n‼ swap: 1 MiB of swap is configured\n    hint: "),
        "{text}"
    );
    assert!(text.contains("\netcd\n----\n✓ quorum: "), "{text}");
    assert!(!text.contains("✓ agent: the hakube agent runs\n    hint"), "{text}");
    assert!(text.trim_end().ends_with("error(s), 1 warning(s)"), "{text}");
}
