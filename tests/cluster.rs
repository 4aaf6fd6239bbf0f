//! The cluster as a whole, with the real control plane: cluster-wide
//! settings changed from any master and converged on every node, one leader
//! among the masters' agents, control-plane roles on every master, and the
//! controller's least privilege.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Taint keys of a Node.
fn taints(m: &Host, node: &str) -> Vec<String> {
    let v = m.kubectl_json(&["get", "node", node]);
    let mut keys: Vec<String> = v["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["key"].as_str().map(str::to_owned))
        .filter(|k| k.starts_with("node-role.kubernetes.io/"))
        .collect();
    keys.sort();
    keys
}

fn role_labels(m: &Host, node: &str) -> Vec<String> {
    let v = m.kubectl_json(&["get", "node", node]);
    let mut keys: Vec<String> = v["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .filter(|k| k.starts_with("node-role.kubernetes.io/"))
        .collect();
    keys.sort();
    keys
}

const BOTH: [&str; 2] = ["node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"];

fn status_json(h: &Host) -> serde_json::Value {
    serde_json::from_slice(&h.hakube(&["status", "--json"]).stdout).unwrap_or_default()
}

/// Waits until every node runs the current settings revision (status of `m`).
fn wait_converged(m: &Host, limit: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        last = status_json(m);
        let c = &last["cluster"];
        if c["not_converged"].as_array().is_some_and(|n| n.is_empty())
            && c["nodes"].as_array().is_some_and(|n| !n.is_empty())
        {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the nodes did not converge within {limit:?}: {}", last["cluster"]);
}

fn leader(m: &Host) -> Option<String> {
    status_json(m)["cluster"]["leader"].as_str().map(str::to_owned)
}

fn lease_holder(m: &Host) -> Option<String> {
    let out = m.kubectl(&["get", "lease", "-n", "kube-system", "hakube-controller", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

#[test]
fn settings_taints_and_leadership_across_three_masters_and_a_worker() {
    let c = Cluster::new(3, 1);
    let (m1, m2, m3, w1) = (c.host("m1"), c.host("m2"), c.host("m3"), c.host("w1"));
    let all = ["m1", "m2", "m3", "w1"];
    wait_for("all four Nodes", Duration::from_secs(240), || {
        let out = m1.kubectl(&["get", "nodes", "-o", "name"]);
        all.iter().all(|n| stdout(&out).contains(&format!("node/{n}")))
    });

    // Every node's heartbeat says which Kubernetes it runs and that all of
    // it is healthy (what an upgrade plans from).
    let want = std::fs::read_to_string(bundle().join("VERSION")).unwrap().trim().to_owned();
    wait_for("every node to report its versions, healthy", Duration::from_secs(60), || {
        let nodes = status_json(m1)["cluster"]["nodes"].as_array().cloned().unwrap_or_default();
        nodes.len() == 4
            && nodes.iter().all(|n| n["healthy"] == true && n["versions"]["kubelet"] == want.as_str())
            && nodes.iter().filter(|n| n["versions"]["kube-apiserver"] == want.as_str()).count() == 3
    });
    assert!(stdout(&m1.hakube(&["status"])).contains(&format!("{want:<8} heartbeat")), "status shows the version");

    // Every master carries its role labels; nobody is tainted yet.
    wait_for("the masters' role labels", Duration::from_secs(60), || {
        ["m1", "m2", "m3"].iter().all(|n| role_labels(m1, n) == BOTH)
    });
    assert!(role_labels(m1, "w1").is_empty());
    assert!(all.iter().all(|n| taints(m1, n).is_empty()));

    // One leader, mirrored into the Lease.
    let first = leader(m1).expect("a leader is elected");
    wait_for("the Lease to name the leader", Duration::from_secs(30), || lease_holder(m1).as_deref() == Some(&first));

    // taint-control-plane from a re-run on m2: every master, never the worker.
    let t = Instant::now();
    m2.install_master(&["ha", "taint-control-plane"]);
    wait_for("the control-plane taints on every master", Duration::from_secs(30), || {
        ["m1", "m2", "m3"].iter().all(|n| taints(m1, n) == BOTH)
    });
    eprintln!("taints on every master {:.1}s after the re-run started", t.elapsed().as_secs_f64());
    assert!(taints(m1, "w1").is_empty(), "the worker is never tainted");
    let status = wait_converged(m1, Duration::from_secs(30));
    assert_eq!(status["cluster"]["settings"]["taintControlPlane"], true, "{status}");
    for h in c.hosts() {
        let copy = std::fs::read_to_string(h.root().join("etc/hakube/cluster.yaml")).unwrap();
        assert!(copy.contains("taintControlPlane: true"), "{}'s copy: {copy}", h.name);
    }

    // Another setting, from m3: converges on every node, workers included.
    m3.install_master(&["ha", "lost-node-toleration=20m"]);
    let status = wait_converged(m1, Duration::from_secs(30));
    assert_eq!(status["cluster"]["settings"]["lostNodeToleration"], "20m", "{status}");
    assert_eq!(status["cluster"]["settings"]["taintControlPlane"], true, "earlier settings stay: {status}");
    let copy = std::fs::read_to_string(w1.root().join("etc/hakube/cluster.yaml")).unwrap();
    assert!(copy.contains("lostNodeToleration: 20m"), "{copy}");
    let printed = stdout(&m2.hakube(&["config", "print"]));
    let line = printed.lines().find(|l| l.trim_start().starts_with("lostNodeToleration:")).unwrap();
    assert!(line.contains("20m") && line.contains("# etcd, revision"), "{printed}");

    // Two re-runs racing with different values: one wins, the other is
    // told, and every node ends on the winner.
    let env = [("HAKUBE_FAULT", "slow-settings-write")];
    let run = |h: &Host, value: &str| {
        let word = format!("lost-node-toleration={value}");
        let addr = h.addr.clone();
        let bundle = bundle().display().to_string();
        let args = [
            "install",
            "ha",
            &word,
            "--advertise-address",
            &addr,
            "--node-name",
            &h.name,
            "--components",
            MASTER,
            "--bundle",
            &bundle,
            "--no-systemd",
        ];
        h.hakube_env(&args, &env)
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(m2, "30m"));
        let b = s.spawn(|| run(m3, "40m"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let won: Vec<_> = [(&a, "30m"), (&b, "40m")].into_iter().filter(|(o, _)| o.status.success()).collect();
    assert_eq!(won.len(), 1, "exactly one re-run wins:\n{}\n{}", stderr(&a), stderr(&b));
    let lost = if a.status.success() { &b } else { &a };
    assert!(stderr(lost).contains("changed while this install ran"), "{}", stderr(lost));
    let status = wait_converged(m1, Duration::from_secs(30));
    assert_eq!(status["cluster"]["settings"]["lostNodeToleration"], won[0].1, "{status}");

    // Untainting removes both taints from every master.
    m1.install_master(&["ha", "taint-control-plane=false"]);
    wait_for("no control-plane taint left", Duration::from_secs(30), || {
        ["m1", "m2", "m3"].iter().all(|n| taints(m1, n).is_empty())
    });

    // A newer hakube's record (a field this one does not know), as during
    // an upgrade of hakube itself: every agent, workers included, keeps
    // converging on what it knows, and a re-run that would write the record
    // back refuses instead of dropping the field.
    let key = "/hakube/cluster/settings";
    let read = || {
        let out = m1.etcdctl(Some("apiserver-etcd-client"), &["get", key, "--print-value-only"]);
        assert_ok(&out, "read the settings record");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("the record is JSON")
    };
    let original = read();
    let mut newer = original.clone();
    newer["spec"]["nextRelease"] = serde_json::json!({"target": "v9.99.0"});
    newer["written_by"] = "m9".into();
    assert_ok(&m1.etcdctl(Some("apiserver-etcd-client"), &["put", key, &newer.to_string()]), "put a newer record");
    wait_converged(m1, Duration::from_secs(30));
    let out = m2.install_master_unchecked(&["ha", "taint-control-plane"], &[]);
    assert!(!out.status.success(), "a re-run over a newer record must refuse");
    let err = stderr(&out);
    assert!(err.contains("written by a newer hakube (m9; fields this one does not know: nextRelease)"), "{err}");
    assert_eq!(read()["spec"]["nextRelease"]["target"], "v9.99.0", "the newer field is kept");
    assert_ok(&m1.etcdctl(Some("apiserver-etcd-client"), &["put", key, &original.to_string()]), "put it back");
    wait_converged(m1, Duration::from_secs(30));

    // The controller's identity does what it must and nothing more.
    let kc = |h: &Host| h.root().join("var/lib/hakube/kubeconfigs/hakube-controller.conf").display().to_string();
    let denied = m1.exec("kubectl", &["--kubeconfig", &kc(m1), "get", "secrets", "-A"]);
    assert!(!denied.status.success() && stderr(&denied).contains("forbidden"), "{}", stderr(&denied));
    let allowed = m1.exec("kubectl", &["--kubeconfig", &kc(m1), "get", "nodes"]);
    assert_ok(&allowed, "the controller may read nodes");

    // The leader dies: another takes over within the TTL and a few seconds,
    // and the Lease follows.
    let old = leader(m1).unwrap();
    let survivor = c.masters.iter().find(|h| h.name != old).unwrap();
    c.host(&old).kill_all();
    let t = Instant::now();
    wait_for("a new leader", Duration::from_secs(25), || leader(survivor).is_some_and(|l| l != old));
    let new = leader(survivor).unwrap();
    eprintln!("{new} took over {:.1}s after {old} was killed", t.elapsed().as_secs_f64());
    wait_for("the Lease to name the new leader", Duration::from_secs(30), || {
        lease_holder(survivor).as_deref() == Some(&new)
    });
}
