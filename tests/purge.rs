//! Lost nodes purged by the elected leader, with the real control plane and
//! a short toleration: a worker's StatefulSet pod comes back elsewhere, a
//! master's etcd member goes without costing quorum, a short partition
//! purges nothing, a purged node that comes back refuses to run, a new
//! leader finishes a purge its predecessor started.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn status_json(h: &Host) -> serde_json::Value {
    serde_json::from_slice(&h.hakube(&["status", "--json"]).stdout).unwrap_or_default()
}

fn node_names(m: &Host) -> Vec<String> {
    let v = m.kubectl_json(&["get", "nodes"]);
    let mut n: Vec<String> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    n.sort();
    n
}

fn registered(m: &Host) -> Vec<String> {
    let mut n: Vec<String> = status_json(m)["cluster"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect();
    n.sort();
    n
}

fn heartbeat_age(m: &Host, node: &str) -> Option<u64> {
    let s = status_json(m);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    s["cluster"]["nodes"].as_array()?.iter().find(|n| n["name"] == node)?["heartbeat_at"]
        .as_u64()
        .map(|t| now.saturating_sub(t))
}

/// A host dies: its processes, its pods.
fn stop(h: &Host) {
    h.kill_all();
    h.kill_pods();
}

fn statefulset(image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 30
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference:
              matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [w1]}}]
      containers:
      - name: c
        image: {image}
        imagePullPolicy: Never
        command: [sleep, '3600']
"
    )
}

fn db_pod(m: &Host) -> Option<(String, String)> {
    let v = m.kubectl_json(&["get", "pod", "-l", "app=db"]);
    let p = v["items"]
        .as_array()?
        .iter()
        .find(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())?;
    Some((p["metadata"]["name"].as_str()?.to_owned(), p["spec"]["nodeName"].as_str()?.to_owned()))
}

#[test]
fn lost_workers_and_masters_are_purged_safely_and_a_short_partition_is_not() {
    let c = Cluster::with_install(3, 2, &["ha", "lost-node-toleration=20s"]);
    let (m1, w1, w2) = (c.host("m1"), c.host("w1"), c.host("w2"));
    wait_for("five Nodes Ready", Duration::from_secs(240), || ready_nodes(m1).len() == 5);

    // A StatefulSet pod on w1.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.yaml");
    std::fs::write(&file, statefulset(&test_image())).unwrap();
    assert_ok(&m1.kubectl(&["apply", "-f", file.to_str().unwrap()]), "apply the StatefulSet");
    wait_for("db-0 Running on w1", Duration::from_secs(120), || db_pod(m1).is_some_and(|p| p.1 == "w1"));

    // A partition shorter than the toleration: nothing is purged, w2 recovers.
    c.net.set_link(w2, false);
    std::thread::sleep(Duration::from_secs(12));
    c.net.set_link(w2, true);
    wait_for("w2's heartbeat again", Duration::from_secs(30), || heartbeat_age(m1, "w2").is_some_and(|a| a < 8));
    assert!(registered(m1).contains(&"w2".to_owned()));

    // w1 is cut off, its pods still running: within the toleration plus
    // 15 s its Node, its pods and its registration are gone, and db-0 runs
    // elsewhere.
    assert!(!w1.pod_pids().is_empty(), "db-0's processes run on w1");
    c.net.set_link(w1, false);
    let t = Instant::now();
    wait_for("w1 purged", Duration::from_secs(20 + 15 + 20), || {
        !registered(m1).contains(&"w1".to_owned()) && !node_names(m1).contains(&"w1".to_owned())
    });
    eprintln!("w1 purged {:.1}s after it was cut off", t.elapsed().as_secs_f64());
    wait_for("db-0 running on another node", Duration::from_secs(120), || db_pod(m1).is_some_and(|p| p.1 != "w1"));
    // Back on the network, w1 learns it was purged: its components stop,
    // and so do its pods' containers, which outlive them (db-0 must not
    // run twice).
    c.net.set_link(w1, true);
    wait_for("w1 knows it was purged", Duration::from_secs(60), || !w1.state()["purged"].is_null());
    wait_for("w1's components stopped", Duration::from_secs(60), || {
        w1.state()["components"].as_object().is_some_and(|c| c.values().all(|c| c["pid"].is_null()))
    });
    wait_for("w1's pods stopped", Duration::from_secs(60), || w1.pod_pids().is_empty());
    wait_for("no Node w1 again", Duration::from_secs(30), || !node_names(m1).contains(&"w1".to_owned()));
    stop(w1);
    assert_eq!(node_names(m1), ["m1", "m2", "m3", "w2"], "the rest of the cluster is untouched");
    let s = status_json(m1);
    let history = s["cluster"]["purged"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{s}");
    assert_eq!(history[0]["node"]["name"], "w1");
    let events = stdout(&m1.kubectl(&["get", "events", "--field-selector", "reason=NodePurged"]));
    assert!(events.contains("hakube purged worker w1"), "{events}");

    // w1 comes back: it learns it was purged, runs nothing, and says so.
    let (_d, join) = join_script(m1, false, &[]);
    let out = run_join(w1, &join, WORKER, &[bin()]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("node w1 was purged from the cluster"), "{err}");
    assert!(err.contains("run `hakube reset` on it and join it again"), "{err}");
    let st = w1.hakube(&["status"]);
    assert!(!st.status.success() && stdout(&st).contains("was purged from the cluster"), "{}", stdout(&st));
    assert!(!node_names(m1).contains(&"w1".to_owned()), "its kubelet never registered it again");

    // m1 stops (a master, and the first w2 would heartbeat through): w2's
    // heartbeats go on through another master, m1's etcd member goes, and
    // the two left are healthy voters.
    let lost = m1;
    let watcher = c.host("m2");
    stop(lost);
    std::thread::sleep(Duration::from_secs(12));
    assert!(heartbeat_age(watcher, "w2").is_some_and(|a| a < 10), "w2's heartbeats stopped with m1");
    wait_for("m1 purged", Duration::from_secs(60), || !registered(watcher).contains(&"m1".to_owned()));
    let e = &status_json(watcher)["etcd"];
    let members = e["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{e}");
    assert!(members.iter().all(|m| m["healthy"] == true && m["is_learner"] == false), "{e}");
    let leader = status_json(watcher)["cluster"]["leader"].as_str().unwrap().to_owned();
    let (survivor, watcher) = if leader == "m2" { (c.host("m2"), c.host("m3")) } else { (c.host("m3"), c.host("m2")) };

    // Losing a second master of three would cost quorum: never purged, and
    // status says why; once it is back, it is still a member.
    stop(watcher);
    std::thread::sleep(Duration::from_secs(35));
    let st = survivor.hakube(&["status"]);
    let text = stdout(&st);
    assert!(!st.status.success() && text.contains("nothing is purged"), "{text}");
    watcher.install_master(&["ha"]);
    wait_for("quorum back", Duration::from_secs(60), || status_json(survivor)["etcd"]["healthy"] == true);
    assert!(registered(survivor).contains(&watcher.name), "the second lost master was purged");
    let members = status_json(survivor)["etcd"]["members"].as_array().unwrap().len();
    assert_eq!(members, 2);
}

#[test]
fn a_new_leader_finishes_a_purge_its_predecessor_started() {
    // Every purge step is slow, so the leader can be killed in the middle.
    let c = Cluster::with_install_env(3, 1, &["ha", "lost-node-toleration=20s"], &[("HAKUBE_FAULT", "slow-purge")]);
    let (m1, w1) = (c.host("m1"), c.host("w1"));
    wait_for("four Nodes Ready", Duration::from_secs(240), || ready_nodes(m1).len() == 4);
    stop(w1);
    let mut leader = String::new();
    wait_for("the purge of w1 under way", Duration::from_secs(90), || {
        let v = status_json(m1);
        let step = v["cluster"]["purge"]["current"]["step"].as_str().unwrap_or("");
        leader = v["cluster"]["leader"].as_str().unwrap_or("").to_owned();
        v["cluster"]["purge"]["current"]["node"]["name"] == "w1" && step != "taint" && !step.is_empty()
    });
    stop(c.host(&leader));
    let other = c.masters.iter().find(|h| h.name != leader).unwrap();
    wait_for("w1's purge finished by the next leader", Duration::from_secs(120), || {
        let v = status_json(other);
        v["cluster"]["purged"].as_array().into_iter().flatten().any(|p| p["node"]["name"] == "w1")
    });
    assert!(!registered(other).contains(&"w1".to_owned()));
    assert!(!node_names(other).contains(&"w1".to_owned()));
    let v = status_json(other);
    let p = v["cluster"]["purged"].as_array().unwrap().iter().find(|p| p["node"]["name"] == "w1").unwrap().clone();
    assert_eq!(p["started_by"], leader.as_str(), "started by the leader that was killed: {p}");
    assert_ne!(p["finished_by"], leader.as_str(), "finished by another: {p}");
}

#[test]
fn a_worker_cut_off_from_the_join_api_is_never_purged_while_its_kubelet_lives() {
    // The common firewall mistake: 6443 open, 9443 closed. w1's hakube
    // heartbeat stops, its kubelet stays Ready; meanwhile the leader's own
    // API server is killed again and again (every kill a chance for an
    // unreadable signal to pass for a stale one).
    let c = Cluster::with_install(3, 1, &["ha", "lost-node-toleration=20s"]);
    let (m1, w1) = (c.host("m1"), c.host("w1"));
    wait_for("four Nodes Ready", Duration::from_secs(240), || ready_nodes(m1).len() == 4);
    assert_ok(&w1.exec("iptables", &["-I", "OUTPUT", "-p", "tcp", "--dport", "9443", "-j", "REJECT"]), "block 9443");
    // The killer: the leader's API server, whenever it runs, for 90 s.
    let done = std::sync::atomic::AtomicBool::new(false);
    let t = Instant::now();
    let (kills, leaders) = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let (mut kills, mut leaders) = (0, std::collections::BTreeSet::new());
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let leader = status_json(m1)["cluster"]["leader"].as_str().unwrap_or("m1").to_owned();
                if let Some(pid) = c.host(&leader).state()["components"]["kube-apiserver"]["pid"].as_u64() {
                    if sh("kill", &["-9", &pid.to_string()]).status.success() {
                        kills += 1;
                        leaders.insert(leader);
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (kills, leaders)
        });
        // Stops the killer however this thread leaves (a failed assertion too).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let stop = Stop(&done);
        while t.elapsed() < Duration::from_secs(90) {
            std::thread::sleep(Duration::from_secs(2));
            let node = m1.kubectl_json(&["get", "node", "w1"]);
            let tainted = node["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["key"] == "node.kubernetes.io/out-of-service");
            let at = t.elapsed().as_secs_f64();
            assert!(!tainted, "w1 was tainted out-of-service {at:.0}s in");
            assert!(registered(m1).contains(&"w1".to_owned()), "w1 was unregistered {at:.0}s in");
        }
        drop(stop);
        killer.join().unwrap()
    });
    eprintln!("the leader's API server was killed {kills} times in 90 s, on {leaders:?}");
    // Each kill lengthens the supervisor's backoff before the next start
    // (1, 2, 4, 8, 16, 30 s), and a leader whose API server stays down
    // hands over after 30 s: about seven kills fit in 90 s on one master.
    assert!(kills >= 5, "the leader's API server was killed only {kills} times");
    assert!(heartbeat_age(m1, "w1").is_some_and(|a| a > 60), "w1's heartbeat really stopped");
    wait_for("w1 Ready", Duration::from_secs(60), || ready_nodes(m1).contains(&"w1".to_owned()));
    let s = status_json(m1);
    assert!(s["cluster"]["purged"].as_array().is_none_or(|p| p.is_empty()), "{s}");
    assert!(node_names(m1).contains(&"w1".to_owned()));
}
