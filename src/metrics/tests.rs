use super::*;

#[test]
fn the_counters_count_what_was_done() {
    count_join("master", "accepted");
    count_join("worker", "refused");
    count_join("worker", "refused");
    count_join("../../etc", "refused");
    count_purge("started");
    let mut out = Series::default();
    counter_series(&mut out);
    let text = out.encode();
    let s: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    // Other tests in this process may count too: at least these.
    let value = |line: &str| -> f64 {
        s.iter().find_map(|l| l.strip_prefix(line)).map(|v| v.trim().parse().unwrap()).unwrap_or(0.0)
    };
    assert!(value(r#"hakube_joins_total{role="worker",outcome="refused"}"#) >= 2.0, "{text}");
    assert!(value(r#"hakube_joins_total{role="unknown",outcome="refused"}"#) >= 1.0, "{text}");
    assert!(value(r#"hakube_purges_total{outcome="started"}"#) >= 1.0, "{text}");
    assert!(!text.contains("etc"), "a role is one of two words, never what a client sent: {text}");
}

#[test]
fn the_prometheus_rule_carries_the_rule_files_groups() {
    let text = prometheus_rule("monitoring").unwrap();
    let object: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let file: serde_norway::Value = serde_norway::from_str(RULES).unwrap();
    assert_eq!(object["kind"], "PrometheusRule");
    assert_eq!(object["metadata"]["namespace"], "monitoring");
    assert_eq!(object["spec"]["groups"], file["groups"]);
    assert!(file["groups"][0]["rules"].as_sequence().unwrap().len() >= 15);
    let e = prometheus_rule("Not A Namespace").unwrap_err().to_string();
    assert!(e.starts_with("--namespace: "), "{e}");
}
