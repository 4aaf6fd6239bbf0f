//! Joining masters and workers for real: several hosts in network
//! namespaces on one bridge, real etcd, the real join scripts.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

/// A first master on a fresh network.
fn first_master(net: &Network) -> Host {
    let m1 = net.host("m1");
    m1.install(&["ha"]);
    m1
}

/// Voting, started members as `etcdctl member list` sees them from `h`.
fn voters(h: &Host) -> Vec<String> {
    let out = h.etcdctl(Some("etcd/healthcheck-client"), &["member", "list", "-w", "simple"]);
    assert_ok(&out, "member list");
    stdout(&out)
        .lines()
        .filter(|l| l.contains(", started, ") && l.trim_end().ends_with("false"))
        .map(|l| l.split(", ").nth(2).unwrap_or("").to_owned())
        .collect()
}

/// Whether the member with `host`'s peer URL is a learner, from the
/// learner column of `etcdctl member list`.
fn is_learner(m: &Host, host: &Host) -> Option<bool> {
    let peer = format!("https://{}:2380", host.addr);
    members_text(m).lines().find(|l| l.contains(&peer)).map(|l| l.trim_end().ends_with("true"))
}

/// The client URL's address of etcd's leader, from `etcdctl endpoint
/// status --cluster` as `h` sees it, once there is one (bounded).
fn etcd_leader(h: &Host) -> String {
    let mut text = String::new();
    for _ in 0..60 {
        let out = h.etcdctl(Some("etcd/healthcheck-client"), &["endpoint", "status", "--cluster", "-w", "json"]);
        text = stdout(&out);
        // JSON, not the columns: etcd 3.6 added one before IS LEADER.
        let all: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        let leader = all.iter().find(|e| {
            let s = &e["Status"];
            s["leader"].as_u64().is_some_and(|l| l != 0 && Some(l) == s["header"]["member_id"].as_u64())
        });
        if let Some(endpoint) = leader.and_then(|e| e["Endpoint"].as_str()) {
            return endpoint.trim_start_matches("https://").rsplit_once(':').unwrap().0.to_owned();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("no etcd leader within 30 s: {text}");
}

/// The keys under `prefix` in etcd, one per line, as `h` reads them.
fn keys(h: &Host, client: &str, prefix: &str) -> String {
    stdout(&h.etcdctl(Some(client), &["get", "--prefix", "--keys-only", prefix]))
}

fn members_text(h: &Host) -> String {
    stdout(&h.etcdctl(Some("etcd/healthcheck-client"), &["member", "list"]))
}

/// The membership as `h`'s member holds it, without asking the quorum
/// (etcdctl 3.6 reads it linearizably unless told otherwise).
fn local_members_text(h: &Host) -> String {
    stdout(&h.etcdctl(Some("etcd/healthcheck-client"), &["member", "list", "--consistency=s"]))
}

#[test]
fn five_masters_joining_at_once_all_become_voters_every_time() {
    for round in 0..3 {
        let net = Network::new();
        let m1 = first_master(&net);
        let (_d, join) = join_script(&m1, true, &[]);
        let joiners: Vec<Host> = (2..=6).map(|i| net.host(&format!("m{i}"))).collect();
        let outs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = joiners.iter().map(|h| s.spawn(|| run_join(h, &join, "etcd", &[bin()]))).collect();
            handles.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for (h, out) in joiners.iter().zip(&outs) {
            if !out.status.success() {
                let logs = ["etcd", "agent"].map(|n| {
                    let p = h.root().join(format!("var/lib/hakube/logs/{n}.log"));
                    format!("--- {n}.log\n{}", std::fs::read_to_string(p).unwrap_or_default())
                });
                let m1_etcd =
                    std::fs::read_to_string(m1.root().join("var/lib/hakube/logs/etcd.log")).unwrap_or_default();
                let m1_tail: Vec<_> = m1_etcd.lines().rev().take(40).collect();
                panic!(
                    "round {round}: join of {} failed:\n{}\n{}\n--- m1 etcd.log (last 40, newest first)\n{}",
                    h.name,
                    stderr(out),
                    logs.join("\n"),
                    m1_tail.join("\n")
                );
            }
        }
        let mut names = voters(&m1);
        names.sort();
        assert_eq!(names, ["m1", "m2", "m3", "m4", "m5", "m6"], "round {round}:\n{}", members_text(&m1));
        for h in joiners.iter().chain([&m1]) {
            assert_ok(&h.hakube(&["status"]), &format!("status of {}", h.name));
        }
        let status = stdout(&m1.hakube(&["status"]));
        assert!(status.contains("quorum 4 of 6") && status.contains("an even count"), "{status}");
    }
}

#[test]
fn a_script_fetches_and_verifies_the_binary_and_a_worker_joins() {
    let net = Network::new();
    let m1 = first_master(&net);
    let (_d, join) = join_script(&m1, false, &[]);
    let w1 = net.host("w1");
    // No HAKUBE_BIN and no hakube on PATH: the script downloads the master's binary.
    let out = run_join(&w1, &join, "none", &[("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")]);
    assert_ok(&out, "worker join");
    // The binary is for holders of a join token only.
    let url = format!("https://{}:9443/v1/binary", m1.addr);
    for auth in [None, Some("Bearer abcdef.0123456789abcdef"), Some("Basic eDp5")] {
        let mut args = vec!["-sk", "-o", "/dev/null", "-w", "%{http_code}"];
        let header = auth.map(|a| format!("Authorization: {a}"));
        if let Some(h) = &header {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&url);
        let code = stdout(&w1.exec("curl", &args));
        assert_eq!(code.trim(), "401", "GET /v1/binary with {auth:?}");
    }
    let kubeconfig = std::fs::read_to_string(w1.root().join("var/lib/hakube/kubeconfigs/kubelet.conf")).unwrap();
    // kubelet goes through the node's own balancer, which knows the master.
    assert!(kubeconfig.contains("server: https://127.0.0.1:6444"), "{kubeconfig}");
    let config = std::fs::read_to_string(w1.root().join("etc/hakube/cluster.yaml")).unwrap();
    assert!(config.contains(&format!("{}:6443", m1.addr)), "the balancer's first backend:\n{config}");
    // The kubelet certificate verifies against the cluster CA and names the node.
    let cert = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("client-certificate-data: ")).unwrap();
    let pem = String::from_utf8(base64_decode(cert)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("kubelet.crt");
    std::fs::write(&pem_path, &pem).unwrap();
    assert_ok(
        &openssl(&["verify", "-CAfile", m1.pki("ca.crt").to_str().unwrap(), pem_path.to_str().unwrap()]),
        "verify kubelet cert",
    );
    let subject = stdout(&openssl(&["x509", "-noout", "-subject", "-in", pem_path.to_str().unwrap()]));
    assert!(subject.contains("O = system:nodes") && subject.contains("CN = system:node:w1"), "{subject}");
    // The worker holds no CA key and no etcd material.
    assert!(!w1.pki("ca.key").exists() && !w1.pki("etcd").exists());
    // It is registered with the cluster.
    let reg = stdout(&m1.etcdctl(Some("apiserver-etcd-client"), &["get", "/hakube/nodes/w1", "--print-value-only"]));
    assert!(reg.contains("\"role\":\"worker\"") && reg.contains(&w1.addr), "{reg}");
    assert_ok(&w1.hakube(&["status"]), "worker status");
    // Its heartbeat carries its clock's offset from the masters': one
    // machine's clock here, so within the measurement's error of zero.
    let mut offset = None;
    wait_for("w1's clock offset in its record", Duration::from_secs(30), || {
        let reg =
            stdout(&m1.etcdctl(Some("apiserver-etcd-client"), &["get", "/hakube/nodes/w1", "--print-value-only"]));
        offset = serde_json::from_str::<serde_json::Value>(&reg).ok().and_then(|v| v["clock_offset_ms"].as_i64());
        offset.is_some()
    });
    assert!(offset.unwrap().abs() < 1000, "offset {offset:?} ms on one clock");
}

fn base64_decode(s: &str) -> Vec<u8> {
    let out = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    out.stdin.as_ref().unwrap().write_all(s.as_bytes()).unwrap();
    out.wait_with_output().unwrap().stdout
}

fn token_line(m: &Host, id: &str) -> String {
    let out = m.hakube(&["token", "list"]);
    assert_ok(&out, "token list");
    stdout(&out).lines().find(|l| l.starts_with(id)).unwrap_or("").to_owned()
}

/// A copy of a join script with one variable changed.
fn edited(path: &std::path::Path, var: &str, value: &str) -> PathBuf {
    let old = script_var(path, var);
    let text = std::fs::read_to_string(path).unwrap();
    let new = text.replace(&format!("export {var}='{old}'"), &format!("export {var}='{value}'"));
    assert_ne!(text, new);
    let out = path.with_file_name(format!("{var}.sh"));
    std::fs::write(&out, new).unwrap();
    out
}

fn script_var(path: &std::path::Path, var: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("export {var}="))).unwrap_or_else(|| panic!("no {var}"));
    line.split_once('=').unwrap().1.trim_matches('\'').to_owned()
}

#[test]
fn tokens_are_counted_expire_and_can_be_revoked() {
    let net = Network::new();
    let m1 = first_master(&net);
    let (_d, join) = join_script(&m1, false, &[]);
    let id = script_var(&join, "HAKUBE_JOIN_TOKEN")[..6].to_owned();
    assert!(token_line(&m1, &id).contains(" 0 "), "{}", token_line(&m1, &id));
    let w1 = net.host("w1");
    assert_ok(&run_join(&w1, &join, "none", &[bin()]), "first use");
    assert!(token_line(&m1, &id).contains(" 1 "), "{}", token_line(&m1, &id));

    // Revoked: refused, nothing written.
    assert_ok(&m1.hakube(&["token", "revoke", &id]), "revoke");
    let w2 = net.host("w2");
    let out = run_join(&w2, &join, "none", &[bin()]);
    assert!(!out.status.success() && stderr(&out).contains(&format!("unknown join token {id}")), "{}", stderr(&out));
    assert!(untouched(&w2), "nothing written");
    assert!(!m1.hakube(&["token", "revoke", &id]).status.success(), "a second revoke says there is none");

    // Expired.
    let (_d2, short) = join_script(&m1, false, &["--ttl", "2s"]);
    std::thread::sleep(Duration::from_secs(4));
    let out = run_join(&w2, &short, "none", &[bin()]);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains(&format!("join token {} expired at", &script_var(&short, "HAKUBE_JOIN_TOKEN")[..6])),
        "{err}"
    );
    assert!(token_line(&m1, &script_var(&short, "HAKUBE_JOIN_TOKEN")[..6]).contains("(expired)"));
    assert!(untouched(&w2), "nothing written");
}

#[test]
fn secrets_are_not_readable_in_etcd() {
    let net = Network::new();
    let m1 = first_master(&net);
    let (_d, join) = join_script(&m1, true, &[]);
    let token = script_var(&join, "HAKUBE_JOIN_TOKEN");
    let out = m1.etcdctl(Some("apiserver-etcd-client"), &["get", "/hakube", "--prefix"]);
    assert_ok(&out, "etcdctl get /hakube");
    let all = stdout(&out);
    assert!(all.contains("/hakube/material/"), "{all}");
    assert!(!all.contains(&token[7..]), "the token secret must not be stored");
    assert!(!all.contains("PRIVATE KEY"), "no key in the clear");
    let sealed = stdout(&m1.etcdctl(
        Some("apiserver-etcd-client"),
        &["get", &format!("/hakube/material/{}", &token[..6]), "--print-value-only"],
    ));
    let raw = base64_decode(sealed.trim());
    assert!(raw.len() > 1000, "sealed material present");
    assert!(!String::from_utf8_lossy(&raw).contains("PRIVATE KEY"), "sealed, not encoded");
    // No piece of the CA key's body, in PEM or raw, is readable there.
    let ca_key = std::fs::read_to_string(m1.pki("ca.key")).unwrap();
    let body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64_decode(&body);
    assert!(der.len() > 64, "the key body decodes");
    for chunk in body.as_bytes().chunks(16).filter(|c| c.len() == 16) {
        let chunk = std::str::from_utf8(chunk).unwrap();
        assert!(!all.contains(chunk) && !sealed.contains(chunk), "a piece of ca.key is in etcd: {chunk}");
    }
    for chunk in der.chunks(16).filter(|c| c.len() == 16) {
        assert!(!raw.windows(16).any(|w| w == chunk), "raw bytes of ca.key are in the sealed material");
    }
    // Nor in the environment of anything the join leaves running (the
    // script exports them for `hakube join`; the agent and etcd inherit
    // nothing of them).
    let key = script_var(&join, "HAKUBE_CERTIFICATE_KEY");
    let m2 = net.host("m2");
    assert_ok(&run_join(&m2, &join, "etcd", &[bin()]), "m2 joins");
    let pids = m2.pids();
    assert!(pids.len() >= 2, "the agent and etcd run: {pids:?}");
    for pid in pids {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let env = String::from_utf8_lossy(&env);
        for secret in [&token, &key] {
            assert!(!env.contains(secret.as_str()), "pid {pid} has a join secret in its environment");
        }
    }
}

#[test]
fn the_ca_is_pinned_before_the_token_is_sent() {
    let net = Network::new();
    let m1 = first_master(&net);
    let (dir, join) = join_script(&m1, false, &[]);
    let id = script_var(&join, "HAKUBE_JOIN_TOKEN")[..6].to_owned();
    let wrong = dir.path().join("wrong.sh");
    let text = std::fs::read_to_string(&join).unwrap();
    let hash = script_var(&join, "HAKUBE_CA_HASH");
    std::fs::write(&wrong, text.replace(&hash, &format!("sha256:{}", "ab".repeat(32)))).unwrap();
    let w1 = net.host("w1");
    let out = run_join(&w1, &wrong, "none", &[bin()]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("does not match the pinned sha256:abab"), "{err}");
    assert!(err.contains("the token was not sent"), "{err}");
    assert!(token_line(&m1, &id).contains(" 0 "), "the token was never presented: {}", token_line(&m1, &id));
    assert!(untouched(&w1), "nothing written");
}

#[test]
fn bad_joins_are_refused_and_leave_the_cluster_untouched() {
    let net = Network::new();
    let m1 = first_master(&net);
    let (_dm, master) = join_script(&m1, true, &[]);
    let (_dw, worker) = join_script(&m1, false, &[]);
    let before = members_text(&m1);
    let h = net.host("m2");
    let empty = untouched;

    // A wrong certificate key: refused before anything is written.
    let wrong_key = edited(&master, "HAKUBE_CERTIFICATE_KEY", &"0".repeat(64));
    let out = run_join(&h, &wrong_key, "etcd", &[bin()]);
    assert!(stderr(&out).contains("does not open the cluster's key material"), "{}", stderr(&out));
    assert!(empty(&h));
    // A worker token used for a master join.
    let key = script_var(&master, "HAKUBE_CERTIFICATE_KEY");
    let args = join_args(&h, "etcd");
    let mut all: Vec<&str> = vec!["join", "--master"];
    all.extend(args.iter().skip(2).map(String::as_str));
    let env = [
        ("HAKUBE_JOIN_ENDPOINTS", script_var(&worker, "HAKUBE_JOIN_ENDPOINTS")),
        ("HAKUBE_JOIN_TOKEN", script_var(&worker, "HAKUBE_JOIN_TOKEN")),
        ("HAKUBE_CA_HASH", script_var(&worker, "HAKUBE_CA_HASH")),
        ("HAKUBE_CERTIFICATE_KEY", key),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = h.hakube_env(&all, &env);
    assert!(stderr(&out).contains("is for a worker, not a master"), "{}", stderr(&out));
    assert!(empty(&h));
    // A malformed token never leaves the host.
    let out = run_join(&h, &edited(&worker, "HAKUBE_JOIN_TOKEN", "not-a-token"), "none", &[bin()]);
    assert!(stderr(&out).contains("a join token has the form"), "{}", stderr(&out));
    // A name another host holds.
    let out = h.bash(
        &worker,
        &[
            "--root",
            h.root().to_str().unwrap(),
            "--advertise-address",
            &h.addr,
            "--node-name",
            "m1",
            "--components",
            "none",
            "--no-systemd",
        ],
        &[bin()],
    );
    assert!(stderr(&out).contains("node name m1 is taken by"), "{}", stderr(&out));
    assert!(empty(&h));
    // A join aimed at a worker (nothing serves the join API there).
    let w = net.host("w1");
    assert_ok(&run_join(&w, &worker, "none", &[bin()]), "worker join");
    // Another host claiming that live worker's name and address (a worker
    // token alone must not hand out a live node's identity).
    let impostor = [
        "--root",
        h.root().to_str().unwrap(),
        "--advertise-address",
        &w.addr,
        "--node-name",
        "w1",
        "--components",
        "none",
        "--no-systemd",
        "--ignore-preflight-errors",
        "advertise-address",
    ];
    let out = h.bash(&worker, &impostor, &[bin()]);
    assert!(stderr(&out).contains("node w1 is alive"), "{}", stderr(&out));
    assert!(empty(&h));
    let out = run_join(&h, &edited(&worker, "HAKUBE_JOIN_ENDPOINTS", &format!("{}:9443", w.addr)), "none", &[bin()]);
    assert!(
        stderr(&out).contains("cannot reach the join API") && stderr(&out).contains("a master's address"),
        "{}",
        stderr(&out)
    );
    assert!(empty(&h));
    assert_eq!(members_text(&m1), before, "membership untouched");
}

fn curl_join(from: &Host, master: &Host, body_file: &std::path::Path) -> (String, String) {
    let url = format!("https://{}:9443/v1/join", master.addr);
    // Expect: 100-continue lets the server refuse an oversized body before it is sent.
    let body = format!("@{}", body_file.display());
    let out = from.exec(
        "curl",
        &["-sk", "-H", "Expect: 100-continue", "-o", "-", "-w", "\n%{http_code}", "--data-binary", &body, &url],
    );
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_owned(), body.to_owned())
}

#[test]
fn the_join_api_answers_garbage_with_clear_4xx() {
    let net = Network::new();
    let m1 = first_master(&net);
    let c = net.host("c1");
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("garbage", b"\x00\xffnot json".to_vec(), "400", "not a join request"),
        ("truncated", br#"{"token":"abcdef.0123456789abcdef","role":"work"#.to_vec(), "400", "not a join request"),
        (
            "unknown field",
            br#"{"token":"abcdef.0123456789abcdef","role":"worker","node_name":"x","advertise_address":"10.0.0.1","evil":1}"#.to_vec(),
            "400",
            "unknown field",
        ),
        (
            "bad token",
            br#"{"token":"a","role":"worker","node_name":"x","advertise_address":"10.0.0.1"}"#.to_vec(),
            "400",
            "a join token has the form",
        ),
        (
            "unknown token",
            br#"{"token":"abcdef.0123456789abcdef","role":"worker","node_name":"x","advertise_address":"10.0.0.1"}"#
                .to_vec(),
            "401",
            "unknown join token abcdef",
        ),
        (
            "bad name",
            br#"{"token":"abcdef.0123456789abcdef","role":"worker","node_name":"X_1","advertise_address":"10.0.0.1"}"#
                .to_vec(),
            "400",
            "not a valid DNS name",
        ),
        ("oversized", vec![b' '; 100 * 1024], "413", ""),
    ];
    for (what, body, code, msg) in cases {
        let f = dir.path().join("body");
        std::fs::write(&f, &body).unwrap();
        let (got, text) = curl_join(&c, &m1, &f);
        assert_eq!(got, code, "{what}: {text}");
        assert!(text.contains(msg), "{what}: {text}");
    }
    let log = std::fs::read_to_string(m1.root().join("var/lib/hakube/logs/agent.log")).unwrap();
    assert!(log.contains("decision=\"refused\"") || log.contains("decision=refused"), "audit lines: {log}");
    // A burst past the rate limit is told to slow down.
    let f = dir.path().join("body");
    std::fs::write(&f, b"{}").unwrap();
    let codes: Vec<String> = (0..40).map(|_| curl_join(&c, &m1, &f).0).collect();
    assert!(codes.iter().any(|c| c == "429"), "{codes:?}");
}

#[test]
fn a_master_join_is_refused_while_etcd_has_lost_quorum() {
    let net = Network::new();
    let m1 = first_master(&net);
    let (_d, join) = join_script(&m1, true, &[]);
    // Printed while it can be: a token needs a quorum to be written.
    let (_dw, worker_join) = join_script(&m1, false, &[]);
    let m2 = net.host("m2");
    let m3 = net.host("m3");
    assert_ok(&run_join(&m2, &join, "etcd", &[bin()]), "m2");
    assert_ok(&run_join(&m3, &join, "etcd", &[bin()]), "m3");
    let before = local_members_text(&m1);
    m2.kill_all();
    m3.kill_all();
    let m4 = net.host("m4");
    // The cluster says "not now": the join asks again until its time is up.
    let mut args = join_args(&m4, "etcd");
    args.extend(["--timeout".to_owned(), "12s".to_owned()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = m4.bash(&join, &refs, &[bin()]);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("the cluster cannot take the join now; asking again every 5s")
            && err.contains("etcd has lost quorum: 0 of 3 voting members are healthy and 2 are needed"),
        "{err}"
    );
    assert!(untouched(&m4), "nothing written");
    // The member list (served by each member locally, even without quorum) is unchanged.
    assert_eq!(local_members_text(&m1), before);
    // No script either: its token cannot be written, and the error says why.
    let script = m1.hakube(&["node-join-script"]);
    assert!(
        !script.status.success() && stderr(&script).contains("which needs a quorum of masters"),
        "{}",
        stderr(&script)
    );
    // Quorum comes back while a join waits (the masters boot again): the
    // join goes through, without being run again.
    let w1 = net.host("w1");
    let out = std::thread::scope(|s| {
        let waiting = s.spawn(|| run_join(&w1, &worker_join, "none", &[bin()]));
        std::thread::sleep(Duration::from_secs(8));
        support::vip::boot(&m2);
        support::vip::boot(&m3);
        waiting.join().unwrap()
    });
    assert_ok(&out, "w1, once the masters are back");
    assert!(stderr(&out).contains("the cluster cannot take the join now"), "{}", stderr(&out));
}

#[test]
fn a_join_killed_after_member_add_or_etcd_start_finishes_on_rerun() {
    let net = Network::new();
    let m1 = net.host("m1");
    m1.install(&["ha", "taint-control-plane"]);
    let (_d, join) = join_script(&m1, true, &[]);
    let hosts = [(net.host("m2"), "after-member-add"), (net.host("m3"), "after-etcd-start")];
    for (h, fault) in &hosts {
        let out = run_join(h, &join, "etcd", &[bin(), ("HAKUBE_FAULT", fault)]);
        assert_eq!(out.status.code(), Some(137), "{fault}: {}", stderr(&out));
        assert_eq!(is_learner(&m1, h), Some(true), "{fault}: its learner is left:\n{}", members_text(&m1));
        let out = run_join(h, &join, "etcd", &[bin()]);
        assert_ok(&out, &format!("re-run after {fault}"));
        assert!(stderr(&out).contains("resuming"), "{}", stderr(&out));
        assert_ok(&h.hakube(&["status"]), &format!("{} status", h.name));
    }
    let mut names = voters(&m1);
    names.sort();
    assert_eq!(names, ["m1", "m2", "m3"], "{}", members_text(&m1));
    // The cluster's ha and taint-control-plane apply to the masters that joined.
    for (h, _) in &hosts {
        let config = std::fs::read_to_string(h.root().join("etc/hakube/cluster.yaml")).unwrap();
        assert!(config.contains("ha: true") && config.contains("taintControlPlane: true"), "{config}");
    }
}

#[test]
fn agents_remove_a_learner_whose_join_died() {
    let net = Network::new();
    let m1 = net.host("m1");
    // A short stalled-learner limit for this cluster's agents.
    let out = m1.hakube_env(
        &[
            "install",
            "ha",
            "--advertise-address",
            &m1.addr,
            "--node-name",
            "m1",
            "--components",
            "etcd",
            "--no-systemd",
        ],
        &[("HAKUBE_STALLED_LEARNER_SECS", "5")],
    );
    assert_ok(&out, "install");
    let (_d, join) = join_script(&m1, true, &[]);
    let m2 = net.host("m2");
    let out = run_join(&m2, &join, "etcd", &[bin(), ("HAKUBE_FAULT", "after-member-add")]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(members_text(&m1).contains(&format!("https://{}:2380", m2.addr)));
    wait_for("the stalled learner to be removed", Duration::from_secs(90), || {
        !members_text(&m1).contains(&format!("https://{}:2380", m2.addr))
    });
    let log = std::fs::read_to_string(m1.root().join("var/lib/hakube/logs/agent.log")).unwrap();
    assert!(log.contains("removed a learner stalled for"), "{log}");
    // The join still completes when re-run.
    assert_ok(&run_join(&m2, &join, "etcd", &[bin()]), "re-run");
    assert_eq!(voters(&m1).len(), 2);
}

#[test]
fn a_reset_master_leaves_etcd_unless_that_costs_quorum() {
    let net = Network::new();
    let m1 = first_master(&net);
    let (_d, join) = join_script(&m1, true, &[]);
    let (m2, m3, m4) = (net.host("m2"), net.host("m3"), net.host("m4"));
    for h in [&m2, &m3, &m4] {
        assert_ok(&run_join(h, &join, "etcd", &[bin()]), &h.name);
    }
    // The etcd leader leaves cleanly: the others elect another leader, it
    // is out of the node registry too (written once they have), and three
    // voters remain.
    let all = [&m1, &m2, &m3, &m4];
    let leader = etcd_leader(&m1);
    let (gone, rest): (Vec<&Host>, Vec<&Host>) = all.into_iter().partition(|h| h.addr == leader);
    let gone = gone[0];
    let out = gone.hakube(&["reset"]);
    assert_ok(&out, &format!("reset of the leader {}", gone.name));
    let err = stderr(&out);
    assert!(err.contains("removed etcd member"), "{err}");
    assert!(err.contains(&format!("removed {} from the cluster's node registry", gone.name)), "{err}");
    // The next leader is the one to die below, so that the reset after it
    // meets an election under way.
    let next = etcd_leader(rest[0]);
    let c = *rest.iter().find(|h| h.addr == next).unwrap();
    let others: Vec<&Host> = rest.iter().copied().filter(|h| h.addr != next).collect();
    let (a, b) = (others[0], others[1]);
    // It let go of the membership lock through the members left (its own
    // etcd no longer serves it), not by its lease running out.
    let locks = keys(a, "etcd/healthcheck-client", "/hakube/locks/");
    assert!(!locks.contains("etcd-membership"), "the lock is still held: {locks}");
    let registry = keys(a, "etcd/healthcheck-client", "/hakube/nodes/");
    assert!(!registry.contains(&format!("/hakube/nodes/{}\n", gone.name)), "{registry}");
    assert!(registry.contains(&format!("/hakube/nodes/{}\n", a.name)), "{registry}");
    let mut names = voters(a);
    names.sort();
    let mut expected: Vec<String> = rest.iter().map(|h| h.name.clone()).collect();
    expected.sort();
    assert_eq!(names, expected);
    // With c, the leader, dead, b leaving would leave a alone of two
    // voters: refused, once a and b have elected a leader.
    c.kill_all();
    let out = b.hakube(&["reset"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("1 of the 2 remaining voting members would be healthy and 2 are needed"),
        "{err}"
    );
    assert!(err.contains("hakube reset --force"), "{err}");
    assert!(b.root().join("etc/hakube/cluster.yaml").exists(), "nothing was changed");
    assert_ok(&b.hakube(&["status"]), "b still runs");
    // --force goes ahead.
    assert_ok(&b.hakube(&["reset", "--force"]), "reset --force");
    assert!(untouched(b));
}

#[test]
fn a_master_wiped_without_leaving_etcd_rejoins_under_its_address() {
    let net = Network::new();
    let m1 = first_master(&net);
    let (_d, join) = join_script(&m1, true, &[]);
    let (m2, m3) = (net.host("m2"), net.host("m3"));
    assert_ok(&run_join(&m2, &join, "etcd", &[bin()]), "m2");
    assert_ok(&run_join(&m3, &join, "etcd", &[bin()]), "m3");
    // m3 dies: with its agent gone, a reset leaves etcd through another master.
    m3.kill_all();
    let out = m3.hakube(&["reset"]);
    assert_ok(&out, "reset of a dead master");
    let err = stderr(&out);
    assert!(
        [&m1, &m2].iter().any(|h| err.contains(&format!("through https://{}:2379", h.addr))),
        "left through another master: {err}"
    );
    let mut names = voters(&m1);
    names.sort();
    assert_eq!(names, ["m1", "m2"], "{}", members_text(&m1));
    assert_ok(&run_join(&m3, &join, "etcd", &[bin()]), "m3 again");
    // m3 dies and loses its etcd data alone: its start is refused with the
    // reason, not a crash loop on "member has already been bootstrapped".
    let err = restart_with_lost_etcd_data(&m3);
    assert!(err.contains("`hakube reset` this node and join it again"), "{err}");
    // m3 dies again and its disk is wiped: it never left etcd.
    m3.kill_all();
    std::fs::remove_dir_all(m3.root()).unwrap();
    std::fs::create_dir(m3.root()).unwrap();
    assert!(members_text(&m1).contains(&format!("https://{}:2380", m3.addr)), "the stale voter is still there");
    // Joining again from the same address replaces the stale member.
    let (_d2, join2) = join_script(&m1, true, &[]);
    let out = run_join(&m3, &join2, "etcd", &[bin()]);
    assert_ok(&out, "re-join");
    assert!(stderr(&out).contains("removed stale member"), "{}", stderr(&out));
    let mut names = voters(&m1);
    names.sort();
    assert_eq!(names, ["m1", "m2", "m3"], "{}", members_text(&m1));
    assert_ok(&m3.hakube(&["status"]), "m3 status");
}

#[test]
fn joins_with_one_name_at_once_give_it_to_one_host_only() {
    let net = Network::new();
    let m1 = first_master(&net);
    let (_d, join) = join_script(&m1, false, &[]);
    // Six hosts, one name, all at once: the name is one host's.
    let hosts: Vec<Host> = (0..6).map(|_| net.host("w1")).collect();
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts.iter().map(|h| s.spawn(|| run_join(h, &join, "none", &[bin()]))).collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let ok: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(ok.len(), 1, "{} hosts got the name w1", ok.len());
    for (h, o) in hosts.iter().zip(&outs).filter(|(_, o)| !o.status.success()) {
        assert!(stderr(o).contains("node name w1 is taken by the worker at"), "{}: {}", h.addr, stderr(o));
        assert!(!h.root().join("var/lib/hakube/kubeconfigs/kubelet.conf").exists(), "no certificate for {}", h.addr);
    }
}

#[test]
fn a_dead_master_blocks_master_joins_until_node_remove_takes_it_out() {
    let net = Network::new();
    let m1 = first_master(&net);
    let (_d, join) = join_script(&m1, true, &[]);
    let (m2, m3) = (net.host("m2"), net.host("m3"));
    assert_ok(&run_join(&m2, &join, "etcd", &[bin()]), "m2");
    assert_ok(&run_join(&m3, &join, "etcd", &[bin()]), "m3");
    m3.kill_all();
    let m4 = net.host("m4");
    let mut args = join_args(&m4, "etcd");
    args.extend(["--timeout".to_owned(), "15s".to_owned()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = m4.bash(&join, &refs, &[bin()]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("etcd member m3"), "{err}");
    assert!(err.contains("remove it with `hakube node remove m3`"), "{err}");
    // Removing m3 is refused from itself, and done from a healthy master.
    assert_ok(&m1.hakube(&["node", "remove", "m3"]), "node remove m3");
    let listed = members_text(&m1);
    assert!(!listed.contains(&format!("https://{}:2380", m3.addr)), "{listed}");
    let reg = stdout(&m1.etcdctl(Some("apiserver-etcd-client"), &["get", "/hakube/nodes/m3", "--print-value-only"]));
    assert!(reg.trim().is_empty(), "the registry still has m3: {reg}");
    let out = m1.hakube(&["node", "remove", "m1"]);
    assert!(!out.status.success() && stderr(&out).contains("run `hakube reset` on it instead"), "{}", stderr(&out));
    // Now the join goes through (the refused run left a learner? no: it
    // stopped at the gate, before any change).
    assert_ok(&run_join(&m4, &join, "etcd", &[bin()]), "m4 after the removal");
    let mut names = voters(&m1);
    names.sort();
    assert_eq!(names, ["m1", "m2", "m4"], "{}", members_text(&m1));
}

/// Whether the other end has closed `s` (or reset it) by now. It does not
/// wait: those left open time out their TLS handshake after 10 s.
fn closed_by_peer(s: &std::net::TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut &*s, &mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn a_flood_of_connections_is_capped_and_a_rate_limit_reads_no_body() {
    let net = Network::new();
    let m1 = first_master(&net);
    let clients: Vec<Host> = (1..=5).map(|i| net.host(&format!("c{i}"))).collect();
    let c = &clients[0];
    // Idle connections past a source's share of 16 are closed at once, and
    // so are those past the cap of 64 over all sources; those under both
    // wait for their TLS handshake. c1 asks for 20, c2..c4 for 16 each
    // (64 held in all), then c5 for 16.
    let held: Vec<Vec<std::net::TcpStream>> = clients
        .iter()
        .zip([20, 16, 16, 16, 16])
        .map(|(h, n)| {
            let addr = format!("{}:9443", m1.addr);
            h.within(|| (0..n).map(|_| std::net::TcpStream::connect(&addr).expect("connect")).collect())
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let closed: Vec<usize> = held.iter().map(|socks| socks.iter().filter(|s| closed_by_peer(s)).count()).collect();
    assert_eq!(closed, [4, 0, 0, 0, 16], "closed at once, per client: past a share of 16, then past the cap of 64");
    drop(held);
    // Once over its rate, a source is refused before it uploads its body
    // (curl waits for 100-continue and sends nothing).
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b' '; 32 * 1024]).unwrap();
    let url = format!("https://{}:9443/v1/join", m1.addr);
    let data = format!("@{}", body.display());
    let mut last = (String::new(), String::new());
    for _ in 0..40 {
        let out = c.exec(
            "curl",
            &[
                "-sk",
                "-H",
                "Expect: 100-continue",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_upload}",
                "--data-binary",
                &data,
                &url,
            ],
        );
        let text = stdout(&out);
        let (code, up) = text.split_once(' ').unwrap_or(("", ""));
        last = (code.to_owned(), up.to_owned());
        if code == "429" {
            break;
        }
    }
    assert_eq!(last, ("429".to_owned(), "0".to_owned()), "refused before the body was sent");
}

#[test]
fn a_join_script_written_to_a_file_is_for_its_owner_only() {
    let net = Network::new();
    let m1 = first_master(&net);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("join-master.sh");
    let out = m1.hakube(&["node-join-script", "--master", "--output", file.to_str().unwrap()]);
    assert_ok(&out, "node-join-script --output");
    assert!(stdout(&out).is_empty(), "the secrets go to the file, not stdout");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&file).unwrap().contains("HAKUBE_CERTIFICATE_KEY="));
}

#[test]
fn node_endpoints_take_the_nodes_name_from_its_certificate_only() {
    let net = Network::new();
    let m1 = first_master(&net);
    // Install returns once the first master has founded the cluster's
    // records: what a node joining right away is told comes from them.
    let founded = keys(&m1, "apiserver-etcd-client", "/hakube/");
    assert!(founded.contains("/hakube/cluster/settings\n") && founded.contains("/hakube/nodes/m1\n"), "{founded}");
    let (_d, join) = join_script(&m1, false, &[]);
    let w1 = net.host("w1");
    assert_ok(&run_join(&w1, &join, "none", &[bin()]), "w1 joins");
    // Only this test speaks for w1 from here: its agent's own heartbeats
    // (with the revision it runs) would overwrite the ones checked below.
    w1.kill_all();
    // w1's certificate and key, from its kubelet kubeconfig.
    let kc = std::fs::read_to_string(w1.root().join("var/lib/hakube/kubeconfigs/kubelet.conf")).unwrap();
    let field = |name: &str| kc.lines().find_map(|l| l.trim().strip_prefix(&format!("{name}: "))).unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("w1.crt"), dir.path().join("w1.key"));
    std::fs::write(&cert, base64_decode(&field("client-certificate-data"))).unwrap();
    std::fs::write(&key, base64_decode(&field("client-key-data"))).unwrap();
    let url = |p: &str| format!("https://{}:9443{p}", m1.addr);
    let curl = |extra: &[&str], path: &str, body: Option<&str>| {
        let mut args: Vec<String> = vec!["-sk".into(), "-o".into(), "-".into(), "-w".into(), "\n%{http_code}".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(b) = body {
            args.extend(["-H".into(), "content-type: application/json".into(), "--data".into(), b.into()]);
        }
        args.push(url(path));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = w1.exec("curl", &refs);
        let text = stdout(&out);
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (code.to_owned(), body.to_owned())
    };
    let with_cert = ["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];
    // No certificate: refused.
    let (code, body) = curl(&[], "/v1/node/heartbeat", Some(r#"{"settings_revision":1}"#));
    assert_eq!(code, "401", "{body}");
    assert!(body.contains("present the node's client certificate"), "{body}");
    // The node's own certificate: its heartbeat counts for it.
    let (code, body) = curl(&with_cert, "/v1/node/heartbeat", Some(r#"{"settings_revision":1}"#));
    assert_eq!(code, "204", "{body}");
    let reg = stdout(&m1.etcdctl(Some("apiserver-etcd-client"), &["get", "/hakube/nodes/w1", "--print-value-only"]));
    assert!(reg.contains("\"settings_revision\":1"), "{reg}");
    // A request cannot name another node: the name is the certificate's.
    let (code, body) = curl(&with_cert, "/v1/node/heartbeat", Some(r#"{"settings_revision":1,"name":"m1"}"#));
    assert_eq!(code, "400", "{body}");
    let log = std::fs::read_to_string(m1.root().join("var/lib/hakube/logs/agent.log")).unwrap();
    assert!(log.contains("present the node's client certificate"), "the refusal is audited");
    // The cluster view, for a node with a certificate.
    let (code, body) = curl(&with_cert, "/v1/node/cluster", None);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"masters\":[{\"name\":\"m1\""), "{body}");
    // Renewal: only for a node's own certificate, only for a request.
    let (code, body) = curl(&[], "/v1/node/certificates", Some(r#"{"kubelet_csr":"x"}"#));
    assert_eq!(code, "401", "{body}");
    let (code, body) = curl(&with_cert, "/v1/node/certificates", Some(r#"{"kubelet_csr":"not a request"}"#));
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("kubelet_csr: not PEM"), "{body}");
    let (code, body) = curl(&with_cert, "/v1/node/certificates", Some(r#"{"csr":"x"}"#));
    assert!(code == "400" && body.contains("not a certificate request"), "{code} {body}");
}

/// A node's heartbeat age on `m`, as `status` reports it.
fn heartbeat_age(m: &Host, node: &str) -> Option<u64> {
    let out = m.hakube(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let at = s["cluster"]["nodes"].as_array()?.iter().find(|n| n["name"] == node)?["heartbeat_at"].as_u64()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(now.saturating_sub(at))
}

#[test]
fn a_worker_renews_its_agents_certificate_through_the_masters_with_the_same_key() {
    let net = Network::new();
    let m1 = net.host("m1");
    let dir = tempfile::tempdir().unwrap();
    let file = short_lived_certificates(dir.path());
    m1.install(&["--config", file.to_str().unwrap()]);
    let (_d, join) = join_script(&m1, false, &[]);
    let w1 = net.host("w1");
    assert_ok(&run_join(&w1, &join, "none", &[bin()]), "w1 joins");
    let kubelet_conf = w1.root().join("var/lib/hakube/kubeconfigs/kubelet.conf");
    let field = |name: &str| {
        let kc = std::fs::read_to_string(&kubelet_conf).unwrap();
        kc.lines().find_map(|l| l.trim().strip_prefix(&format!("{name}: "))).unwrap().to_owned()
    };
    let key = field("client-key-data");
    let end = || {
        let out = w1.hakube(&["certs", "check-expiration", "--json"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array().unwrap().iter().find(|r| r["name"] == "kubelet.conf").unwrap()["not_after"].as_i64().unwrap()
    };
    // Two renewals, the worker's heartbeats reaching the master throughout.
    let mut ends = vec![end()];
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while ends.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "two renewals within 4 minutes: saw {ends:?}");
        let age = heartbeat_age(&m1, "w1");
        assert!(age.is_some_and(|a| a < 20), "w1's heartbeat is {age:?} s old");
        let e = end();
        if ends.last() != Some(&e) {
            ends.push(e);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(field("client-key-data"), key, "renewed over the same key");
    assert!(base64_decode(&field("client-certificate-data")).starts_with(b"-----BEGIN CERTIFICATE-----"));
    let log = std::fs::read_to_string(m1.root().join("var/lib/hakube/logs/agent.log")).unwrap();
    assert!(log.contains("decision=\"renewed\"") || log.contains("decision=renewed"), "the master's audit line");
}

/// A pod pinned to `node`, of the bundle's test image, that resolves a
/// Service name through the cluster's DNS and then sleeps.
fn dns_pod(node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: probe-{node}}}\nspec:\n  nodeName: {node}\n  \
         restartPolicy: Never\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: probe\n    \
         image: {}\n    imagePullPolicy: Never\n    \
         command: [sh, -c, 'until nslookup kubernetes.default.svc.cluster.local; do sleep 1; done; sleep 3600']\n",
        test_image()
    )
}

#[test]
fn three_masters_and_two_workers_come_from_one_bundle_file_on_hosts_with_no_route_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hakube.tar");
    let from = bundle().display().to_string();
    assert_ok(&sh(hakube(), &["bundle", "create", "--from", &from, "--out", file.to_str().unwrap()]), "bundle create");
    // Every host reaches its bridge and nothing else: no default route, so
    // anything that looked beyond the cluster (a registry, a DNS server, a
    // download) would fail at once.
    let net = Network::new();
    let m1 = net.host_with_no_route_out("m1");
    let f = file.display().to_string();
    let words = ["install", "--node-name", "m1", "--components", MASTER, "--bundle", &f, "--no-systemd", "ha"];
    let out = m1.hakube(&words);
    let err = stderr(&out);
    assert!(!out.status.success(), "an install that cannot choose its address must fail");
    assert!(
        err.contains("no default route") && err.contains("advertise-address=IP") && err.contains(&m1.addr),
        "the error names the fix and the host's address: {err}"
    );
    assert!(untouched(&m1), "nothing written before the address is known");
    let out = m1.hakube(&[&words[..], &["--advertise-address", &m1.addr]].concat());
    assert!(out.status.success(), "m1 from the bundle file: {}\n{}", stderr(&out), logs(&m1));
    std::fs::remove_file(&file).unwrap();

    // Masters and a worker join with nothing but the script: each gets the
    // bundle from the cluster, and a master keeps it to give in turn.
    let (_d, master_script) = join_script(&m1, true, &[]);
    let (m2, m3) = (net.host_with_no_route_out("m2"), net.host_with_no_route_out("m3"));
    // m3's agent breaks every bundle stream off after 64 MiB, as a master
    // that dies mid-way.
    for (m, env) in [(&m2, &[][..]), (&m3, &[("HAKUBE_FAULT", "bundle-break-off")][..])] {
        let out = join_without_bundle_env(m, &master_script, MASTER, env);
        assert!(out.status.success(), "{} joins: {}\n{}", m.name, stderr(&out), logs(m));
        assert!(stderr(&out).contains("fetching the cluster's bundle from a master: done"), "{}", stderr(&out));
        assert_eq!(recorded_bundle(m).parent(), Some(m.root().join("var/lib/hakube/bundles").as_path()));
        let id = recorded_bundle(m).file_name().unwrap().to_owned();
        assert_eq!(id, recorded_bundle(&m1).file_name().unwrap(), "the same bundle");
    }
    // w1's script, made on m3, asks m3 first: its stream breaks off, and
    // w1 takes the bundle from the next master instead.
    let (_d3, m3_script) = join_script(&m3, false, &[]);
    let w1 = net.host_with_no_route_out("w1");
    let out = join_without_bundle(&w1, &m3_script, WORKER);
    assert!(out.status.success(), "w1 joins: {}\n{}", stderr(&out), logs(&w1));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:9443: the download broke off", m3.addr)), "{err}");
    assert!(err.contains("asking the next master"), "{err}");
    let (_dw, worker_script) = join_script(&m1, false, &[]);

    // The cluster runs an application from the bundle alone: its CNI
    // plugins (not the machine's), its images, its CoreDNS.
    let containerd_config = std::fs::read_to_string(w1.root().join("etc/hakube/containerd.toml")).unwrap();
    let cni = recorded_bundle(&w1).join("cni");
    assert!(containerd_config.contains(&cni.display().to_string()), "w1's pod network uses the bundle's CNI plugins");
    let four = ["m1", "m2", "m3", "w1"].map(String::from).to_vec();
    wait_for("four Nodes Ready", Duration::from_secs(300), || ready_nodes(&m1) == four);
    let pod = dir.path().join("pod.yaml");
    std::fs::write(&pod, dns_pod("w1")).unwrap();
    assert_ok(&m1.kubectl(&["apply", "-f", pod.to_str().unwrap()]), "apply the probe pod");
    wait_for("the probe pod on w1 to resolve a Service name", Duration::from_secs(240), || {
        let out = m1.kubectl(&["logs", "probe-w1"]);
        stdout(&out).contains("Address") && stdout(&out).contains("10.96.0.1")
    });

    // m1 loses power; a worker whose script names m1 first gets the bundle
    // from another master, and its Node comes up Ready.
    m1.kill_all();
    net.set_link(&m1, false);
    let w2 = net.host_with_no_route_out("w2");
    let out = join_without_bundle(&w2, &worker_script, WORKER);
    assert!(out.status.success(), "w2 joins: {}\n{}", stderr(&out), logs(&w2));
    let err = stderr(&out);
    assert!(err.contains("from 10.") && !err.contains(&format!("from {}:", m1.addr)), "{err}");
    let pid = w2.state()["components"]["kubelet"]["pid"].as_u64().expect("kubelet runs");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, recorded_bundle(&w2).join("kubelet"), "kubelet runs from the fetched bundle");
    wait_for("w2 Ready, seen through m2", Duration::from_secs(240), || ready_nodes(&m2).contains(&"w2".to_owned()));
}
