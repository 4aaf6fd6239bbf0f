//! Upgrades of the whole cluster from one re-run on one master: real
//! clusters in network namespaces, moved from the previous Kubernetes
//! minor's bundle to the current one's.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

fn bundle_file(from: &Path, out: &Path) -> PathBuf {
    bundle_file_by(hakube(), from, out)
}

/// A bundle file that carries `hakube_bin` (the binary that makes it).
fn bundle_file_by(hakube_bin: &str, from: &Path, out: &Path) -> PathBuf {
    let (f, o) = (from.display().to_string(), out.display().to_string());
    assert_ok(&sh(hakube_bin, &["bundle", "create", "--from", &f, "--out", &o]), "bundle create");
    out.to_owned()
}

/// Another build of the hakube under test: the same program, with bytes
/// appended (another digest, as a rebuild would have).
fn another_build(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("hakube-next");
    let mut bytes = std::fs::read(hakube()).unwrap();
    bytes.extend_from_slice(b"\n# another build of hakube\n");
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The SHA-256 (hex) of a file.
fn sha256(path: &Path) -> String {
    let out = sh("sha256sum", &[path.to_str().unwrap()]);
    stdout(&out).split_whitespace().next().unwrap_or_default().to_owned()
}

/// What the registry says each node runs, from `hakube status --json`
/// (a node whose last beat said it was not healthy: none).
fn versions(m: &Host) -> BTreeMap<String, BTreeMap<String, String>> {
    let out = m.hakube(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["cluster"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["healthy"] == true)
        .map(|n| {
            let name = n["name"].as_str().unwrap_or_default().to_owned();
            let vs = n["versions"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            (name, vs)
        })
        .collect()
}

/// Whether every one of `nodes` reports `v` for every component it runs,
/// and healthy.
fn all_run(m: &Host, nodes: &[&str], v: &str) -> bool {
    let seen = versions(m);
    nodes.iter().all(|n| seen.get(*n).is_some_and(|vs| !vs.is_empty() && vs.values().all(|x| x == v)))
}

/// Every container of the pods on `node`: (pod/container, container id, restarts).
fn containers(m: &Host, node: &str) -> Vec<(String, String, u64)> {
    let field = format!("spec.nodeName={node}");
    let v = m.kubectl_json(&["get", "pods", "-A", "--field-selector", &field]);
    let mut out: Vec<(String, String, u64)> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            let pod = p["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            p["status"]["containerStatuses"].as_array().cloned().unwrap_or_default().into_iter().map(move |c| {
                (
                    format!("{pod}/{}", c["name"].as_str().unwrap_or_default()),
                    c["containerID"].as_str().unwrap_or_default().to_owned(),
                    c["restartCount"].as_u64().unwrap_or_default(),
                )
            })
        })
        .collect();
    out.sort();
    out
}

const STATEFUL: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      nodeSelector: {kubernetes.io/hostname: w1}
      terminationGracePeriodSeconds: 1
      containers:
      - name: db
        image: IMAGE
        imagePullPolicy: Never
        command: [sh, -c, 'while true; do date +%s >> /data/log; sleep 1; done']
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 64Mi}}
";

#[test]
fn three_masters_and_two_workers_move_to_the_next_minor_and_hakube_from_one_re_run_on_m2_with_nothing_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let old = bundle_file(previous_bundle(), &dir.path().join("old.tar"));
    // The new bundle carries another build of hakube: every agent moves to
    // it too, at its node's step, leaving its components running.
    let next = another_build(dir.path());
    let new = bundle_file_by(next.to_str().unwrap(), bundle(), &dir.path().join("new.tar"));
    let next_sha = sha256(&next);
    let (from_v, to_v) = (version_of(previous_bundle()), version_of(bundle()));

    // 3 + 2 on the previous minor, every node's bundle fetched from m1's.
    let net = Network::new();
    let m1 = net.host("m1");
    let o = old.display().to_string();
    let words = ["install", "--advertise-address", &m1.addr, "--node-name", "m1", "--components", MASTER];
    let out = m1.hakube(&[&words[..], &["--bundle", &o, "--no-systemd", "ha"]].concat());
    assert!(out.status.success(), "m1 on {from_v}: {}\n{}", stderr(&out), logs(&m1));
    let (_dm, master_script) = join_script(&m1, true, &[]);
    let (_dw, worker_script) = join_script(&m1, false, &[]);
    let hosts: Vec<Host> = ["m2", "m3", "w1", "w2"].iter().map(|n| net.host(n)).collect();
    for h in &hosts {
        let (script, comps) = if h.name.starts_with('m') { (&master_script, MASTER) } else { (&worker_script, WORKER) };
        let out = join_without_bundle(h, script, comps);
        assert!(out.status.success(), "{} joins: {}\n{}", h.name, stderr(&out), logs(h));
    }
    let [m2, m3, w1, w2] = <[Host; 4]>::try_from(hosts).ok().unwrap();
    let names = ["m1", "m2", "m3", "w1", "w2"];
    let all: Vec<String> = names.map(String::from).to_vec();
    wait_for("five Nodes Ready", Duration::from_secs(300), || ready_nodes(&m1) == all);
    wait_for(&format!("every node to report {from_v}"), Duration::from_secs(60), || all_run(&m1, &names, &from_v));

    // A StatefulSet on w1 writing to its volume every second, and a client
    // of every node's balancer.
    let sts = dir.path().join("sts.yaml");
    std::fs::write(&sts, STATEFUL.replace("IMAGE", &test_image())).unwrap();
    assert_ok(&m1.kubectl(&["apply", "-f", sts.to_str().unwrap()]), "apply the StatefulSet");
    wait_for("the StatefulSet's pod running", Duration::from_secs(180), || {
        stdout(&m1.kubectl(&["exec", "db-0", "--", "cat", "/data/log"])).lines().count() >= 2
    });
    let first_line = stdout(&m1.kubectl(&["exec", "db-0", "--", "head", "-1", "/data/log"]));
    assert_ok(&m1.kubectl(&["create", "serviceaccount", "prober"]), "serviceaccount");
    let bind = ["create", "clusterrolebinding", "prober", "--clusterrole=view", "--serviceaccount=default:prober"];
    assert_ok(&m1.kubectl(&bind), "clusterrolebinding");
    let token = m1.kubectl(&["create", "token", "prober", "--duration=2h"]);
    assert_ok(&token, "token");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, stdout(&token).trim()).unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::copy(m1.pki("ca.crt"), &ca).unwrap();
    let cluster = [&m1, &m2, &m3, &w1, &w2];
    let probers: Vec<Prober> = cluster.iter().map(|h| Prober::start(h, dir.path(), &ca, &token_file)).collect();
    let before: Vec<_> = [&w1, &w2].iter().map(|w| containers(&m1, &w.name)).collect();
    assert!(before[0].iter().any(|(n, _, _)| n == "db-0/db"), "{before:?}");

    // The upgrade, from one re-run on m2 (not the first master).
    let w2_before = recorded_bundle(&w2);
    let etcd_pids = |ms: [&Host; 3]| ms.map(|m| m.state()["components"]["etcd"]["pid"].as_u64().expect("etcd runs"));
    let etcd_before = etcd_pids([&m1, &m2, &m3]);
    let agent_pid = |h: &Host| h.state()["agent_pid"].as_u64().expect("an agent runs");
    let agents_before: Vec<u64> = cluster.iter().map(|h| agent_pid(h)).collect();
    for h in cluster {
        assert_ne!(h.state()["hakube"]["sha256"], next_sha.as_str(), "{} runs the old build", h.name);
    }
    let n = new.display().to_string();
    let started = Instant::now();
    let out = m2.hakube(&["install", "--bundle", &n]);
    let took = started.elapsed();
    let err = stderr(&out);
    assert!(out.status.success(), "the upgrade from m2: {err}\n{}", logs(&m2));
    eprintln!("{err}");
    eprintln!("the upgrade of 3 + 2 took {:.1} s", took.as_secs_f64());
    assert!(err.contains("etcd snapshot before the upgrade"), "{err}");
    assert!(err.contains(&format!("every node runs {to_v}")), "{err}");
    // The order the leader told them in: every control plane before any
    // kubelet.
    let told: Vec<usize> = ["m1's control plane moves", "m2's control plane moves", "m3's control plane moves"]
        .iter()
        .chain(&["kubelet and kube-proxy move"])
        .map(|s| err.find(s).unwrap_or_else(|| panic!("{s:?} not said: {err}")))
        .collect();
    assert!(told.windows(2).all(|w| w[0] < w[1]), "control planes first, one at a time: {err}");
    // No node was down: none was ever taken for one (a node restarting for
    // its move is waited for, not skipped).
    assert!(!err.contains("will move when back"), "{err}");

    assert!(all_run(&m1, &names, &to_v), "every node reports {to_v}: {:?}", versions(&m1));
    wait_for("five Nodes Ready on the new minor", Duration::from_secs(120), || ready_nodes(&m1) == all);
    let nodes = m1.kubectl_json(&["get", "nodes"]);
    for n in nodes["items"].as_array().unwrap() {
        assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], to_v.as_str(), "{}", n["metadata"]["name"]);
    }
    let pid = w2.state()["components"]["kubelet"]["pid"].as_u64().expect("kubelet runs on w2");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, recorded_bundle(&w2).join("kubelet"), "w2's kubelet runs from the new bundle");
    assert_ne!(recorded_bundle(&w2), w2_before, "w2's bundle moved");
    // Both bundles ship the same etcd: no member was restarted for it,
    // nor for its agent's move to the new hakube (it adopted the member).
    let handovers: String = cluster
        .iter()
        .map(|h| {
            let log = std::fs::read_to_string(h.root().join("var/lib/hakube/logs/agent.log")).unwrap_or_default();
            let said = |l: &&str| ["hand", "adopt", "predecessor", "restarting it"].iter().any(|w| l.contains(w));
            let lines: Vec<&str> = log.lines().filter(said).collect();
            format!("--- {}\n{}\n", h.name, lines.join("\n"))
        })
        .collect();
    eprintln!("the agents' hand-overs:\n{handovers}");
    assert_eq!(etcd_pids([&m1, &m2, &m3]), etcd_before, "etcd restarted for a binary that did not change");
    // Every agent is the new build, in the same process (it exec'd).
    for (h, before) in cluster.iter().zip(&agents_before) {
        let s = h.state();
        assert_eq!(s["hakube"]["sha256"], next_sha.as_str(), "{}'s agent runs the new hakube: {s}", h.name);
        assert_eq!(agent_pid(h), *before, "{}'s agent handed over in its own process", h.name);
        let exe = std::fs::read_link(format!("/proc/{before}/exe")).unwrap();
        assert_eq!(exe, recorded_bundle(h).join("hakube"), "{} runs the bundle's hakube", h.name);
        let log = std::fs::read_to_string(h.root().join("var/lib/hakube/logs/agent.log")).unwrap_or_default();
        assert!(log.contains("adopted, as the predecessor left it running"), "{} adopted its components", h.name);
    }

    // Nothing dropped: every request through every balancer answered; the
    // pods on the workers are the same containers; the volume kept its
    // data and was written to throughout.
    let mut total = 0;
    let mut failed = vec![];
    for p in &probers {
        let (count, f) = p.results();
        total += count;
        failed.extend(f);
    }
    eprintln!("{total} requests through the five balancers during the upgrade, {} failed: {failed:?}", failed.len());
    let after: Vec<_> = [&w1, &w2].iter().map(|w| containers(&m1, &w.name)).collect();
    assert_eq!(after, before, "the workers' containers are the same ones, never restarted");
    assert_eq!(stdout(&m1.kubectl(&["exec", "db-0", "--", "head", "-1", "/data/log"])), first_line);
    let log = stdout(&m1.kubectl(&["exec", "db-0", "--", "cat", "/data/log"]));
    let stamps: Vec<u64> = log.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let gap = stamps.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    assert!(gap <= 3, "the StatefulSet wrote throughout (longest gap {gap} s)");
    assert!(failed.is_empty(), "{} of {total} requests failed: {failed:?}", failed.len());

    // Status says it is done; a downgrade is refused, naming why, with
    // nothing changed.
    let status = stdout(&m3.hakube(&["status"]));
    assert!(status.contains(&format!("last upgrade: to {to_v}")), "{status}");
    let out = m3.hakube(&["install", "--bundle", &o]);
    let err = stderr(&out);
    assert!(!out.status.success(), "a downgrade must be refused");
    assert!(err.contains("does not support going back a minor"), "{err}");
    assert!(all_run(&m1, &names, &to_v), "nothing moved: {:?}", versions(&m1));
}

/// The Kubernetes version a bundle directory's kubelet reports.
fn version_of(bundle: &Path) -> String {
    let out = sh(bundle.join("kubelet").to_str().unwrap(), &["--version"]);
    stdout(&out).split_whitespace().last().unwrap_or_default().to_owned()
}

/// The upgrade record as `hakube status --json` shows it.
fn record(m: &Host) -> serde_json::Value {
    let out = m.hakube(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["cluster"]["upgrade"].clone()
}

fn leader(m: &Host) -> Option<String> {
    let out = m.hakube(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["cluster"]["leader"].as_str().map(str::to_owned)
}

/// `install --bundle FILE` on a host, running as a child process that is
/// killed if the test fails before it ends (a thread would hold a failing
/// test for the whole of the re-run's wait).
struct Upgrading {
    child: Option<std::process::Child>,
}

impl Upgrading {
    fn start(h: &Host, file: &str) -> Upgrading {
        let root = h.root().display().to_string();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &h.ns, hakube(), "--root", &root, "install", "--bundle", file])
            .env("PATH", path_env())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("hakube install");
        Upgrading { child: Some(child) }
    }

    fn is_finished(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    fn finish(mut self) -> std::process::Output {
        self.child.take().expect("running").wait_with_output().expect("hakube install's output")
    }
}

impl Drop for Upgrading {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn an_upgrade_outlives_its_leader_and_moves_a_worker_that_was_down_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let old = bundle_file(previous_bundle(), &dir.path().join("old.tar"));
    let new = bundle_file(bundle(), &dir.path().join("new.tar"));
    let to_v = version_of(bundle());
    let net = Network::new();
    let m1 = net.host("m1");
    let o = old.display().to_string();
    let words = ["install", "--advertise-address", &m1.addr, "--node-name", "m1", "--components", MASTER];
    assert_ok(&m1.hakube(&[&words[..], &["--bundle", &o, "--no-systemd", "ha"]].concat()), "m1");
    let (_dm, master_script) = join_script(&m1, true, &[]);
    let (_dw, worker_script) = join_script(&m1, false, &[]);
    let hosts: Vec<Host> = ["m2", "m3", "w1"].iter().map(|n| net.host(n)).collect();
    for h in &hosts {
        let (script, comps) = if h.name.starts_with('m') { (&master_script, MASTER) } else { (&worker_script, WORKER) };
        let out = join_without_bundle(h, script, comps);
        assert!(out.status.success(), "{} joins: {}\n{}", h.name, stderr(&out), logs(h));
    }
    let [m2, m3, w1] = <[Host; 3]>::try_from(hosts).ok().unwrap();
    let masters = [&m1, &m2, &m3];
    let names = ["m1", "m2", "m3", "w1"];
    let all: Vec<String> = names.map(String::from).to_vec();
    wait_for("four Nodes Ready", Duration::from_secs(300), || ready_nodes(&m1) == all);
    wait_for("every node to report its versions", Duration::from_secs(60), || {
        all_run(&m1, &names, &version_of(previous_bundle()))
    });

    // The upgrade from m3, followed on its own thread.
    let n = new.display().to_string();
    {
        let mut upgrade = Some(Upgrading::start(&m3, &n));
        // Once the first control plane moved: w1 goes off the network, and
        // the leader's agent is killed.
        wait_for("the first control plane told to move", Duration::from_secs(120), || {
            if upgrade.as_mut().is_some_and(|u| u.is_finished()) {
                let out = upgrade.take().unwrap().finish();
                panic!("the upgrade ended early: {}\n{}", stderr(&out), logs(&m3));
            }
            record(&m3)["controlPlane"].as_array().is_some_and(|a| !a.is_empty())
        });
        net.set_link(&w1, false);
        let old_leader = leader(&m3).expect("a leader");
        let l = masters.iter().find(|m| m.name == old_leader).unwrap();
        let agent = l.state()["agent_pid"].as_u64().expect("the leader's agent").to_string();
        assert_ok(&sh("kill", &["-9", &agent]), "kill the leader's agent");
        let survivor = masters.iter().find(|m| m.name != old_leader).unwrap();
        wait_for("another leader", Duration::from_secs(60), || leader(survivor).is_some_and(|x| x != old_leader));
        // Its master is down, so the upgrade waits for it (every master
        // must be healthy), and says so.
        wait_for("the upgrade to wait for the old leader", Duration::from_secs(60), || {
            record(survivor)["step"].as_str().is_some_and(|s| s.contains(&old_leader))
        });
        // Its agent comes back (a re-run of install, right away: the dead
        // agent's components may still be stopping, holding their ports);
        // the new leader goes on.
        let out = l.hakube(&["install"]);
        assert!(out.status.success(), "{} back: {}\n{}", l.name, stderr(&out), logs(l));
        wait_for("the upgrade to reach every node that is up", Duration::from_secs(600), || {
            record(survivor)["step"].as_str().is_some_and(|s| s.contains("w1 will move when back"))
        });
        assert!(record(survivor)["finishedAt"].is_null(), "not finished while w1 is down");
        net.set_link(&w1, true);
        let out = upgrade.take().unwrap().finish();
        let err = stderr(&out);
        assert!(out.status.success(), "the upgrade: {err}\n{}", logs(&m3));
        assert!(err.contains(&format!("every node runs {to_v}")), "{err}");
    }
    assert!(all_run(&m1, &names, &to_v), "every node reports {to_v}: {:?}", versions(&m1));
    wait_for("four Nodes Ready on the new minor", Duration::from_secs(120), || ready_nodes(&m1) == all);
    let status = stdout(&m2.hakube(&["status"]));
    assert!(status.contains(&format!("last upgrade: to {to_v}")), "{status}");
}

#[test]
fn an_agent_told_to_hand_over_runs_the_new_build_in_its_own_process_and_leaves_etcd_running() {
    let dir = tempfile::tempdir().unwrap();
    let net = Network::new();
    let m1 = net.host("m1");
    m1.install(&[]);
    let s = m1.state();
    let (agent, etcd) = (s["agent_pid"].as_u64().unwrap(), s["components"]["etcd"]["pid"].as_u64().unwrap());
    let started = s["started_at"].as_u64().unwrap();
    assert_ok(&m1.etcdctl(Some("apiserver-etcd-client"), &["put", "/kept", "across the hand-over"]), "put");
    let usr2 = || assert_ok(&sh("kill", &["-USR2", &agent.to_string()]), "kill -USR2");
    let installed = m1.root().join("usr/local/bin/hakube");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    let agent_log = || std::fs::read_to_string(m1.root().join("var/lib/hakube/logs/agent.log")).unwrap_or_default();

    // A binary that does not run is no successor: the agent says so and
    // runs on as it was.
    std::fs::write(&installed, b"#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&installed, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    usr2();
    wait_for("the agent to refuse the broken build", Duration::from_secs(30), || {
        agent_log().contains("not handing over: the new hakube does not run here")
    });
    let s = m1.state();
    assert_eq!((s["agent_pid"].as_u64(), s["started_at"].as_u64()), (Some(agent), Some(started)), "the same agent");

    // Another build: it takes over in the agent's process; etcd runs on.
    std::fs::remove_file(&installed).unwrap();
    std::fs::copy(another_build(dir.path()), &installed).unwrap();
    let next_sha = sha256(&installed);
    usr2();
    wait_for("the new build to take over, healthy", Duration::from_secs(60), || {
        let s = m1.state();
        s["hakube"]["sha256"] == next_sha.as_str() && s["components"]["etcd"]["healthy"] == true
    });
    let s = m1.state();
    assert_eq!(s["agent_pid"].as_u64(), Some(agent), "in the same process");
    assert_eq!(std::fs::read_link(format!("/proc/{agent}/exe")).unwrap(), installed);
    assert_eq!(s["components"]["etcd"]["pid"].as_u64(), Some(etcd), "etcd was adopted, not restarted");
    assert_eq!(
        stdout(&m1.etcdctl(Some("apiserver-etcd-client"), &["get", "/kept", "--print-value-only"])).trim(),
        "across the hand-over"
    );
    // The pid file's lock never let go: no second agent can start.
    let out = m1.hakube(&["agent"]);
    assert!(!out.status.success(), "a second agent must not start");
    assert!(stderr(&out).contains("another agent holds"), "{}", stderr(&out));
    // Asked again with the same build: nothing to do.
    usr2();
    wait_for("the agent to see nothing to do", Duration::from_secs(30), || {
        agent_log().contains("asked to hand over to the build this agent runs: nothing to do")
    });
    assert_eq!(m1.state()["components"]["etcd"]["pid"].as_u64(), Some(etcd));
}
