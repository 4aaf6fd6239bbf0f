//! The first master, end to end, with real etcd in a network namespace of its
//! own and openssl as the independent judge of the PKI.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::*;

const LEAVES: [(&str, &str); 7] = [
    ("apiserver", "ca"),
    ("apiserver-kubelet-client", "ca"),
    ("front-proxy-client", "front-proxy-ca"),
    ("etcd/server", "etcd/ca"),
    ("etcd/peer", "etcd/ca"),
    ("etcd/healthcheck-client", "etcd/ca"),
    ("apiserver-etcd-client", "etcd/ca"),
];

fn pki_files(h: &Host) -> Vec<(String, Vec<u8>)> {
    digests(&h.pki("")).into_iter().filter(|(n, _)| !n.starts_with("backup/")).collect()
}

#[test]
fn install_serves_etcd_over_mtls_and_a_rerun_changes_nothing() {
    let h = Host::isolated();
    h.install(&["ha", "load-balancer-address=lb.example.test:6443"]);

    // etcd answers with the healthcheck client pair, and only with a client cert.
    assert_ok(&h.etcdctl(Some("etcd/healthcheck-client"), &["endpoint", "health"]), "etcdctl endpoint health");
    assert_ok(&h.etcdctl(Some("apiserver-etcd-client"), &["put", "k", "v"]), "etcdctl put");
    assert!(!h.etcdctl(None, &["get", "k"]).status.success(), "etcd must demand a client certificate");
    assert_ok(&h.hakube(&["status"]), "status");
    let json: serde_json::Value = serde_json::from_slice(&h.hakube(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["healthy"], true, "{json}");
    assert_eq!(json["etcd"]["healthy"], true, "{json}");
    let components = json["components"].as_array().unwrap();
    assert_eq!(components.len(), 1, "{json}");
    assert_eq!(components[0][0], "etcd");
    assert_eq!(
        (components[0][1]["phase"].as_str(), components[0][1]["healthy"].as_bool()),
        (Some("running"), Some(true))
    );
    let members = json["etcd"]["members"].as_array().unwrap();
    assert!(members.iter().all(|m| m["healthy"] == true && m["is_learner"] == false), "{json}");

    // openssl accepts every leaf against its own CA, and no other.
    for (leaf, ca) in LEAVES {
        let (leaf_path, ca_path) = (h.pki(&format!("{leaf}.crt")), h.pki(&format!("{ca}.crt")));
        let out = openssl(&["verify", "-CAfile", ca_path.to_str().unwrap(), leaf_path.to_str().unwrap()]);
        assert_ok(&out, &format!("openssl verify {leaf}"));
        let wrong = if ca == "ca" { "etcd/ca" } else { "ca" };
        let out = openssl(&[
            "verify",
            "-CAfile",
            h.pki(&format!("{wrong}.crt")).to_str().unwrap(),
            leaf_path.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{leaf} must not verify against {wrong}");
    }
    let text = stdout(&openssl(&["x509", "-noout", "-text", "-in", h.pki("apiserver.crt").to_str().unwrap()]));
    for san in [
        "DNS:lb.example.test",
        "DNS:kubernetes.default.svc.cluster.local",
        "IP Address:10.96.0.1",
        "IP Address:127.0.0.1",
        "DNS:m1",
    ] {
        assert!(text.contains(san), "apiserver.crt lacks {san}:\n{text}");
    }
    assert!(text.contains("TLS Web Server Authentication") && text.contains("prime256v1"), "{text}");
    let peer = stdout(&openssl(&["x509", "-noout", "-text", "-in", h.pki("etcd/peer.crt").to_str().unwrap()]));
    assert!(peer.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{peer}");
    let ca = stdout(&openssl(&["x509", "-noout", "-text", "-in", h.pki("ca.crt").to_str().unwrap()]));
    assert!(ca.contains("CA:TRUE") && ca.contains("Certificate Sign"), "{ca}");

    // Modes: keys 0600, etcd data 0700.
    for (name, _) in pki_files(&h) {
        let mode = std::fs::metadata(h.pki(&name)).unwrap().permissions().mode() & 0o777;
        if name.ends_with(".key") {
            assert_eq!(mode, 0o600, "{name}");
        }
    }
    let data = h.root().join("var/lib/hakube/etcd");
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);

    // A second identical install succeeds and leaves every key and cert byte-identical.
    let before = pki_files(&h);
    let config_before = std::fs::read(h.root().join("etc/hakube/cluster.yaml")).unwrap();
    h.install(&["ha", "load-balancer-address=lb.example.test:6443"]);
    assert_eq!(pki_files(&h), before, "a re-run must not touch the PKI");
    assert_eq!(std::fs::read(h.root().join("etc/hakube/cluster.yaml")).unwrap(), config_before);
    assert_ok(&h.etcdctl(Some("apiserver-etcd-client"), &["get", "k"]), "data survives the re-run");

    // `ha` is sticky: a re-run without it keeps it.
    h.install(&[]);
    let config = std::fs::read_to_string(h.root().join("etc/hakube/cluster.yaml")).unwrap();
    assert!(config.contains("ha: true"), "{config}");
}

#[test]
fn changing_the_load_balancer_names_both_then_drops_the_old_and_reissues_only_the_apiserver_cert() {
    let h = Host::isolated();
    h.install(&["load-balancer-address=lb1.example.test:6443"]);
    let before = pki_files(&h);
    let config_before = std::fs::read(h.root().join("etc/hakube/cluster.yaml")).unwrap();
    let install = |extra: &[&str]| {
        let mut args = vec![
            "install",
            "--advertise-address",
            &h.addr,
            "--node-name",
            "m1",
            "--components",
            "etcd",
            "--no-systemd",
        ];
        args.extend_from_slice(extra);
        h.hakube(&args)
    };

    // A new address that resolves nowhere is refused before anything changes.
    let out = install(&["load-balancer-address=lb2.example.test:8443"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("[load-balancer-resolves] lb2.example.test does not resolve"), "{err}");
    assert!(err.contains("nothing was written") && err.contains("--ignore-preflight-errors=load-balancer-resolves"));
    assert_eq!(pki_files(&h), before);
    assert_eq!(std::fs::read(h.root().join("etc/hakube/cluster.yaml")).unwrap(), config_before);

    // Waived by name, the change runs its three phases to the end.
    let out =
        install(&["load-balancer-address=lb2.example.test:8443", "--ignore-preflight-errors=load-balancer-resolves"]);
    assert_ok(&out, "install with a new load-balancer address");
    let err = stderr(&out);
    for line in [
        "ignored preflight error [load-balancer-resolves]",
        "apiserver: reissued (SANs changed: +DNS:lb2.example.test)",
        "phase add-name done on every master that is up",
        "phase switch done on every master that is up",
        "phase drop-name done on every master that is up",
        "every master serves lb2.example.test:8443; the old name is dropped",
        "endpoint:   https://lb2.example.test:8443",
    ] {
        assert!(err.contains(line), "no {line:?} in:\n{err}");
    }
    let after = pki_files(&h);
    let changed: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).map(|(a, _)| a.0.as_str()).collect();
    assert_eq!(changed, ["apiserver.crt"], "only the apiserver certificate changes (its key is kept)");
    let text = stdout(&openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        h.pki("apiserver.crt").to_str().unwrap(),
    ]));
    assert!(text.contains("lb2.example.test") && !text.contains("lb1.example.test"), "{text}");
    let backups = digests(&h.pki("backup"));
    assert_eq!(backups.len(), 2, "both earlier certificates are kept: {backups:?}");
    assert!(backups.iter().any(|(_, d)| *d == before.iter().find(|(n, _)| n == "apiserver.crt").unwrap().1));
    let admin = std::fs::read_to_string(h.root().join("var/lib/hakube/kubeconfigs/admin.conf")).unwrap();
    assert!(admin.contains("server: https://lb2.example.test:8443"), "{admin}");
    let json: serde_json::Value = serde_json::from_slice(&h.hakube(&["status", "--json"]).stdout).unwrap();
    let settings = &json["cluster"]["settings"];
    assert_eq!(settings["loadBalancerAddress"], "lb2.example.test:8443", "{json}");
    assert!(settings["loadBalancerChange"].is_null(), "{json}");

    // The same address again: nothing to do, and it says so.
    let out = install(&["load-balancer-address=lb2.example.test:8443"]);
    assert_ok(&out, "the same address again");
    assert!(stderr(&out).contains("the load-balancer address is lb2.example.test:8443 already: nothing to change"));
    assert_eq!(pki_files(&h), after);
}

#[test]
fn rsa_pki_is_what_kubeadm_issues() {
    let h = Host::isolated();
    let out = h.hakube(&[
        "certs",
        "generate",
        "--key-algorithm",
        "rsa-2048",
        "--advertise-address",
        "127.0.0.1",
        "--node-name",
        "m1",
        "--components",
        "etcd",
    ]);
    assert_ok(&out, "certs generate");
    for (leaf, ca) in LEAVES {
        let out = openssl(&[
            "verify",
            "-CAfile",
            h.pki(&format!("{ca}.crt")).to_str().unwrap(),
            h.pki(&format!("{leaf}.crt")).to_str().unwrap(),
        ]);
        assert_ok(&out, leaf);
    }
    let key = stdout(&openssl(&["pkey", "-noout", "-text", "-in", h.pki("apiserver.key").to_str().unwrap()]));
    assert!(key.contains("Private-Key: (2048 bit"), "{key}");
    // The service-account pair matches.
    let from_key = openssl(&["pkey", "-pubout", "-in", h.pki("sa.key").to_str().unwrap()]);
    assert_eq!(stdout(&from_key), std::fs::read_to_string(h.pki("sa.pub")).unwrap());
}

#[test]
fn the_agent_restarts_a_killed_component() {
    let h = Host::isolated();
    h.install(&[]);
    let state = || std::fs::read_to_string(h.root().join("var/lib/hakube/state.json")).unwrap_or_default();
    let pid_of_etcd = || {
        let s: serde_json::Value = serde_json::from_str(&state()).unwrap_or_default();
        s["components"]["etcd"]["pid"].as_u64()
    };
    let first = pid_of_etcd().expect("etcd pid");
    sh("kill", &["-9", &first.to_string()]);
    wait_for("etcd to be restarted and healthy", Duration::from_secs(30), || {
        let s: serde_json::Value = serde_json::from_str(&state()).unwrap_or_default();
        pid_of_etcd().is_some_and(|p| p != first)
            && s["components"]["etcd"]["healthy"] == true
            && s["components"]["etcd"]["phase"] == "running"
    });
    assert!(state().contains("\"restarts\": 1"), "{}", state());
    assert_ok(&h.hakube(&["status"]), "status after restart");
}

#[test]
fn reset_leaves_nothing_behind() {
    let h = Host::isolated();
    // No scheduled snapshot (reset keeps those: tests/snapshot.rs).
    h.install(&["etcd-snapshot-interval=never"]);
    assert!(!h.pids().is_empty());
    assert_ok(&h.hakube(&["reset"]), "reset");
    let left: Vec<_> = std::fs::read_dir(h.root()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    wait_for("every process of the host to stop", Duration::from_secs(10), || h.pids().is_empty());
    // A fresh install works after a reset.
    h.install(&[]);
    assert_ok(&h.hakube(&["status"]), "status after reinstall");
    // status of a host that has nothing says so.
    let empty = Host::isolated();
    let out = empty.hakube(&["status"]);
    assert!(!out.status.success() && stderr(&out).contains("not installed"), "{}", stderr(&out));
}

#[test]
fn status_fails_when_etcd_is_down() {
    let h = Host::isolated();
    h.install(&[]);
    h.kill_all();
    let out = h.hakube(&["status"]);
    assert!(!out.status.success(), "status must fail");
    let text = stdout(&out);
    assert!(text.contains("agent: NOT RUNNING") && text.contains("UNHEALTHY"), "{text}");
}

#[test]
fn lost_etcd_data_is_not_refounded_as_a_new_cluster() {
    let h = Host::isolated();
    h.install(&[]);
    restart_with_lost_etcd_data(&h);
}

#[test]
fn a_reload_signal_the_moment_the_agent_is_found_does_not_kill_it() {
    let h = Host::isolated();
    h.install(&[]);
    let pid_file = h.root().join("var/lib/hakube/agent.pid");
    for round in 0..5 {
        h.kill_all();
        let root = h.root().display().to_string();
        let mut agent = std::process::Command::new("ip")
            .args(["netns", "exec", &h.ns, hakube(), "--root", &root, "agent"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // As an install would: as soon as the pid file is locked, signal the
        // pid in it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let pid = loop {
            assert!(std::time::Instant::now() < deadline, "the agent never took its pid file");
            let held = !sh("flock", &["--nonblock", "--shared", pid_file.to_str().unwrap(), "true"]).status.success();
            let pid = std::fs::read_to_string(&pid_file).unwrap_or_default().trim().parse::<u32>().ok();
            if let (true, Some(p)) = (held, pid) {
                break p;
            }
        };
        sh("kill", &["-HUP", &pid.to_string()]);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            agent.try_wait().unwrap().is_none(),
            "round {round}: SIGHUP killed the agent that just took its pid file"
        );
        sh("kill", &["-TERM", &pid.to_string()]);
        agent.wait().unwrap();
    }
}

#[test]
fn a_refused_reload_is_reported_not_taken_for_done() {
    let h = Host::isolated();
    h.install(&[]);
    let config = h.root().join("etc/hakube/cluster.yaml");
    std::fs::write(&config, "apiVersion: hakube.io/v1alpha1\nkind: ClusterConfig\nnode: {components: [etcd, nope]}\n")
        .unwrap();
    let pid = h.state()["agent_pid"].as_u64().unwrap().to_string();
    sh("kill", &["-HUP", &pid]);
    wait_for("the agent to record the refusal", Duration::from_secs(10), || h.state()["reload_error"].is_string());
    let refusal = h.state()["reload_error"].as_str().unwrap().to_owned();
    assert!(refusal.contains("cluster.yaml: node.components[1]: unknown variant `nope`"), "{refusal}");
    // status names the broken file too.
    let out = h.hakube(&["status"]);
    assert!(!out.status.success() && stderr(&out).contains("cluster.yaml"), "{}", stderr(&out));
    // It keeps running what it had.
    assert_ok(&h.etcdctl(Some("etcd/healthcheck-client"), &["endpoint", "health"]), "etcd still serves");
}

#[test]
fn reset_unmounts_what_is_mounted_below_and_never_deletes_through_a_mount() {
    let h = Host::isolated();
    h.install(&[]);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep me").unwrap();
    let mount_point = h.root().join("var/lib/kubelet/pods/p1/volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(&mount_point).unwrap();
    // A pod volume bind-mounted from outside the root, in the namespace
    // reset runs in (as kubelet's mounts are on a real host).
    let script = format!(
        "mount --bind {} {} && exec {} --root {} reset --force",
        outside.path().display(),
        mount_point.display(),
        hakube(),
        h.root().display()
    );
    let out = h.exec("unshare", &["--mount", "--propagation", "private", "sh", "-c", &script]);
    assert_ok(&out, "reset with a mount below the kubelet directory");
    assert_eq!(std::fs::read_to_string(outside.path().join("precious")).unwrap(), "keep me");
    let left: Vec<_> = std::fs::read_dir(h.root()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn certs_renew_reissues_the_named_leaves_with_their_keys_and_the_node_stays_healthy() {
    let h = Host::isolated();
    h.install(&["etcd-snapshot-interval=never"]);
    let read = |n: &str| std::fs::read(h.pki(n)).unwrap();
    let (server, key, peer) = (read("etcd/server.crt"), read("etcd/server.key"), read("etcd/peer.crt"));
    let out = h.hakube(&["certs", "renew", "etcd/server", "apiserver-etcd-client"]);
    assert_ok(&out, "certs renew");
    assert!(stderr(&out).contains("etcd/server: reissued (renewal asked for)"), "{}", stderr(&out));
    assert_ne!(read("etcd/server.crt"), server, "etcd/server is reissued");
    assert_eq!(read("etcd/server.key"), key, "with its key");
    assert_eq!(read("etcd/peer.crt"), peer, "and nothing else");
    let out = openssl(&[
        "verify",
        "-CAfile",
        h.pki("etcd/ca.crt").to_str().unwrap(),
        h.pki("etcd/server.crt").to_str().unwrap(),
    ]);
    assert_ok(&out, "the renewed certificate verifies against its CA");
    assert_ok(&h.etcdctl(Some("etcd/healthcheck-client"), &["endpoint", "health"]), "etcd after the renewal");
    assert_ok(&h.hakube(&["status"]), "status after the renewal");
    let out = h.hakube(&["certs", "check-expiration"]);
    assert_ok(&out, "check-expiration");
    assert!(stdout(&out).lines().any(|l| l.starts_with("etcd/server ") && l.ends_with(" ok")), "{}", stdout(&out));
    // A CA, or a name that is no certificate, is refused before anything is written.
    let before = digests(&h.pki(""));
    for (bad, why) in [("etcd/ca", "is a CA"), ("etcd/sever", "no certificate named etcd/sever")] {
        let out = h.hakube(&["certs", "renew", bad]);
        assert!(!out.status.success() && stderr(&out).contains(why), "{bad}: {}", stderr(&out));
    }
    assert_eq!(digests(&h.pki("")), before, "nothing written");
}

/// `notAfter` of a certificate file, as openssl prints it.
fn not_after(path: &std::path::Path) -> String {
    stdout(&openssl(&["x509", "-noout", "-enddate", "-in", path.to_str().unwrap()])).trim().to_owned()
}

#[test]
fn a_running_master_renews_its_certificates_before_they_expire_without_restarting_etcd() {
    let h = Host::isolated();
    let dir = tempfile::tempdir().unwrap();
    let file = short_lived_certificates(dir.path());
    h.install(&["--config", file.to_str().unwrap()]);
    let etcd_pid = h.state()["components"]["etcd"]["pid"].as_u64().expect("etcd runs");
    let key = std::fs::read(h.pki("etcd/server.key")).unwrap();
    let mut ends = vec![not_after(&h.pki("etcd/server.crt"))];
    let mut failed = 0;
    // Two renewals of every leaf, a request to etcd every second meanwhile:
    // each leaf is due 1 minute into its 2, the agent looks every 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while ends.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "two renewals within 4 minutes: saw {ends:?}");
        if !h.etcdctl(Some("etcd/healthcheck-client"), &["endpoint", "health"]).status.success() {
            failed += 1;
        }
        let end = not_after(&h.pki("etcd/server.crt"));
        if ends.last() != Some(&end) {
            ends.push(end);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(failed, 0, "etcd refused a request during a renewal");
    assert_eq!(std::fs::read(h.pki("etcd/server.key")).unwrap(), key, "renewed with the same key");
    assert_eq!(h.state()["components"]["etcd"]["pid"].as_u64(), Some(etcd_pid), "etcd was not restarted");
    // etcd serves the renewed certificate: it re-reads it per handshake.
    let served = h.exec(
        "sh",
        &["-c", "openssl s_client -connect 127.0.0.1:2379 </dev/null 2>/dev/null | openssl x509 -noout -enddate"],
    );
    assert_eq!(stdout(&served).trim(), not_after(&h.pki("etcd/server.crt")), "the certificate etcd serves");
    // Every leaf and kubeconfig is within its life, none due but by a margin.
    let out = h.hakube(&["certs", "check-expiration", "--json"]);
    assert_ok(&out, "check-expiration");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for r in rows.as_array().unwrap().iter().filter(|r| r["is_ca"] == false) {
        assert!(r["not_after"].as_i64().unwrap() > now, "{r}");
    }
    assert!(h.state()["reloads"].as_u64() >= Some(2), "{}", h.state());
}

/// `install` of an etcd-only master with `--bundle PATH` and extra
/// options, whether or not it succeeds.
fn install_from(h: &Host, bundle: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let b = bundle.display().to_string();
    let args = ["install", "--advertise-address", &h.addr, "--node-name", "m1", "--components", "etcd"];
    h.hakube(&[&args[..], &["--no-systemd", "--bundle", &b], extra].concat())
}

/// An Ed25519 key pair made by openssl: (private, public).
fn ed25519(dir: &std::path::Path, name: &str) -> (String, String) {
    let (key, public) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    assert_ok(&openssl(&["genpkey", "-algorithm", "ed25519", "-out", key.to_str().unwrap()]), "genpkey");
    assert_ok(&openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]), "pubout");
    (key.display().to_string(), public.display().to_string())
}

#[test]
fn a_master_installs_from_one_signed_bundle_file_and_refusals_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hakube.tar");
    let from = bundle().display().to_string();
    let (key, public) = ed25519(dir.path(), "vendor");
    let (_, other) = ed25519(dir.path(), "other");
    let out = sh(hakube(), &["bundle", "create", "--from", &from, "--out", file.to_str().unwrap(), "--sign", &key]);
    assert_ok(&out, "bundle create");
    let h = Host::isolated();
    let refused = |out: std::process::Output, why: &str| {
        assert!(!out.status.success(), "must be refused ({why})");
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
        assert!(untouched(&h), "nothing left behind ({why})");
    };

    // Another vendor's key; a directory where a key is configured.
    refused(install_from(&h, &file, &["--bundle-key", &other]), "signed with another key");
    refused(install_from(&h, bundle(), &["--bundle-key", &public]), "is a directory: give the signed bundle file");
    // Cut short: refused while unpacking, and what was unpacked is gone.
    let short = dir.path().join("short.tar");
    let len = std::fs::metadata(&file).unwrap().len();
    let mut f = std::fs::File::open(&file).unwrap();
    let mut part = std::fs::File::create(&short).unwrap();
    std::io::copy(&mut std::io::Read::take(&mut f, len / 2), &mut part).unwrap();
    refused(install_from(&h, &short, &["--bundle-key", &public]), "cut short");
    std::fs::remove_file(&short).unwrap();

    // Whole: unpacked under the data directory, and the node runs from it.
    let out = install_from(&h, &file, &[&format!("bundle-key={public}")]);
    assert_ok(&out, "install from the bundle file");
    assert!(stderr(&out).contains("signed with the bundle key"), "{}", stderr(&out));
    let config = std::fs::read_to_string(h.root().join("etc/hakube/cluster.yaml")).unwrap();
    let unpacked = h.root().join("var/lib/hakube/bundles");
    let line = config.lines().find(|l| l.trim_start().starts_with("bundle:")).expect("node.bundle is recorded");
    let recorded = std::path::PathBuf::from(line.split_once(':').unwrap().1.trim());
    assert_eq!(recorded.parent(), Some(unpacked.as_path()), "{config}");
    let pid = h.state()["components"]["etcd"]["pid"].as_u64().expect("etcd runs");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, recorded.join("etcd"), "etcd runs from the unpacked bundle");
    let check = format!("cd {} && sha256sum -c --quiet SHA256SUMS", recorded.display());
    assert_ok(&sh("sh", &["-c", &check]), "sha256sum -c in the unpacked bundle");
    // A re-run with the same file unpacks nothing again.
    let out = install_from(&h, &file, &[]);
    assert_ok(&out, "re-run");
    assert!(stderr(&out).contains("is unpacked already"), "{}", stderr(&out));
}
