//! Every bad input is refused with a message naming what is wrong and what to
//! do, and leaves nothing on disk.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

fn refused(h: &Host, args: &[&str], want: &str) {
    let mut all = vec!["install", "--no-systemd", "--components", "etcd"];
    all.extend_from_slice(args);
    let out = h.hakube(&all);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} must fail, got:\n{err}");
    assert!(err.contains(want), "{args:?}: expected {want:?} in:\n{err}");
    let left: Vec<_> = std::fs::read_dir(h.root()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "{args:?} left files behind: {left:?}");
}

#[test]
fn bad_flags_and_words_write_nothing() {
    let h = Host::isolated();
    let a = ["--advertise-address", "127.0.0.1", "--node-name", "m1"];
    let with = |extra: &[&'static str]| -> Vec<&str> { a.iter().copied().chain(extra.iter().copied()).collect() };
    refused(&h, &with(&["load-balancer-address=https://lb:6443"]), "has a scheme");
    refused(&h, &with(&["load-balancer-address="]), "the address is empty");
    refused(&h, &with(&["load-balancer-address=lb:70000"]), "out of range");
    refused(&h, &with(&["load-balancer-address=fd00::10:6443"]), "IPv6 address without brackets");
    refused(&h, &with(&["taint-controlplane"]), "did you mean `taint-control-plane`");
    refused(&h, &["--advertise-address", "127.0.0.1", "--node-name", "M_1"], "is not a valid DNS name");
    refused(&h, &with(&["--service-cidr", "10.96.0.1/12"]), "has host bits set");
    refused(
        &h,
        &["--advertise-address", "192.0.2.10", "--node-name", "m1"],
        "192.0.2.10 is not an address of this host",
    );
    refused(&h, &with(&["--timeout", "5 fortnights"]), "is not a duration");
    refused(&h, &with(&["etcd-snapshot-interval=0"]), "is not a snapshot interval");
    refused(&h, &with(&["etcd-snapshot-retention=0"]), "keep 1 to 1000");
    refused(&h, &with(&["etcd-snapshot-retention=five"]), "is not a number of snapshots");
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), "not a bundle").unwrap();
    let bundle_word = format!("bundle={}", garbage.path().display());
    refused(
        &h,
        &["--advertise-address", "127.0.0.1", "--node-name", "m1", &bundle_word],
        "is not a usable hakube bundle",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ports.yaml");
    std::fs::write(&file, "apiVersion: hakube.io/v1alpha1\nkind: ClusterConfig\nnode: {etcdPeerPort: 65535}\n")
        .unwrap();
    let f = file.to_str().unwrap();
    refused(
        &h,
        &["--advertise-address", "127.0.0.1", "--node-name", "m1", "--config", f],
        "node.etcdPeerPort is 65535",
    );
    let file = dir.path().join("lifetimes.yaml");
    std::fs::write(
        &file,
        "apiVersion: hakube.io/v1alpha1\nkind: ClusterConfig\ncluster: {certificateValidity: 10m, certificateRenewBefore: 6m}\n",
    )
    .unwrap();
    refused(
        &h,
        &["--advertise-address", "127.0.0.1", "--node-name", "m1", "--config", file.to_str().unwrap()],
        "more than half of cluster.certificateValidity (10m)",
    );
}

#[test]
fn a_config_file_of_another_version_is_refused() {
    let h = Host::isolated();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, "apiVersion: hakube.io/v9\nkind: ClusterConfig\ncluster: {}\n").unwrap();
    refused(
        &h,
        &["--advertise-address", "127.0.0.1", "--config", file.to_str().unwrap()],
        "apiVersion \"hakube.io/v9\" is not supported",
    );
    std::fs::write(&file, "apiVersion: hakube.io/v1alpha1\nkind: ClusterConfig\ncluster: {ha: yes-please}\n").unwrap();
    refused(&h, &["--advertise-address", "127.0.0.1", "--config", file.to_str().unwrap()], "cluster.ha");
}

fn listen_in(h: &Host, port: u16) -> Child {
    let code = format!(
        "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\nprint('up',flush=True)\ntime.sleep(60)"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &h.ns, "python3", "-c", &code])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "up");
    child
}

#[test]
fn a_port_in_use_is_named_and_can_be_ignored() {
    let h = Host::isolated();
    let mut squatter = listen_in(&h, 9443);
    refused(&h, &["--advertise-address", "127.0.0.1"], "[port-9443] 127.0.0.1:9443 is in use");
    // Ignored by name, the install goes on: the join API waits for its port
    // while etcd comes up healthy.
    let out = h.hakube(&[
        "install",
        "--no-systemd",
        "--components",
        "etcd",
        "--advertise-address",
        "127.0.0.1",
        "--ignore-preflight-errors",
        "port-9443",
    ]);
    assert_ok(&out, "install ignoring port-9443");
    assert!(stderr(&out).contains("ignored preflight error [port-9443]"), "{}", stderr(&out));
    squatter.kill().ok();
    squatter.wait().ok();
}

#[test]
fn a_missing_component_binary_is_named() {
    let h = Host::isolated();
    let out = h.hakube(&[
        "install",
        "--no-systemd",
        "--advertise-address",
        "127.0.0.1",
        "--components",
        "etcd,kube-scheduler",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("[binary-kube-scheduler] no kube-scheduler binary"), "{err}");
    assert!(untouched(&h));
    // An API server cannot advertise the loopback address: refused before any check.
    let out = h.hakube(&["install", "--no-systemd", "--advertise-address", "127.0.0.1"]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("a loopback address, and kube-apiserver refuses"), "{err}");
    assert!(untouched(&h));
}

#[test]
fn an_unwritable_or_missing_root_is_refused() {
    let h = Host::isolated();
    // A root whose var/ is a file cannot hold the data directory.
    std::fs::write(h.root().join("var"), "not a directory").unwrap();
    let out = h.hakube(&["install", "--no-systemd", "--components", "etcd", "--advertise-address", "127.0.0.1"]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("[data-dir]") && err.contains("is not a directory"), "{err}");
    let missing = h.root().join("nope");
    let out = h.exec(hakube(), &["--root", missing.to_str().unwrap(), "install", "--advertise-address", "127.0.0.1"]);
    assert!(stderr(&out).contains("does not exist or is not a directory"), "{}", stderr(&out));
    assert!(!missing.exists());
}

#[test]
fn a_concurrent_install_on_the_same_root_is_refused() {
    let h = Host::isolated();
    // Hold the root lock as a running install would.
    let mut holder = Command::new("flock")
        .args(["--no-fork", "-x", h.root().to_str().unwrap(), "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until the holder has it, a probe of our own takes it (and lets go).
    wait_for("flock to hold the root", Duration::from_secs(10), || {
        !sh("flock", &["--nonblock", "--no-fork", "-x", h.root().to_str().unwrap(), "true"]).status.success()
    });
    refused(&h, &["--advertise-address", "127.0.0.1"], "another hakube command is already changing");
    holder.kill().ok();
    holder.wait().ok();
}

#[test]
fn a_root_that_is_the_machines_own_in_disguise_is_refused() {
    // `reset` under such a root would remove the machine's /var/lib: every
    // command refuses it before reading anything (`status` here, harmless
    // were the check ever lost).
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("h1");
    std::os::unix::fs::symlink("/", &link).unwrap();
    let out = sh(hakube(), &["--root", link.to_str().unwrap(), "status"]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("resolves to / (this machine's own root)"), "{err}");
    let dotdot = format!("{}/..", dir.path().display());
    let out = sh(hakube(), &["--root", &dotdot, "status"]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("a root with `..` in it is refused"), "{err}");
}

#[test]
fn bundle_commands_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none.tar");
    let run = |args: &[&str]| {
        let out = sh(hakube(), args);
        assert!(!out.status.success(), "{args:?} must fail");
        stderr(&out)
    };
    let e = run(&["bundle", "verify", none.to_str().unwrap()]);
    assert!(e.contains("none.tar") && e.contains("No such file"), "{e}");
    let e = run(&["bundle", "create", "--from", dir.path().to_str().unwrap(), "--out", none.to_str().unwrap()]);
    assert!(e.contains("SHA256SUMS"), "{e}");
    assert!(!none.exists(), "nothing written");
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
    let e = run(&["bundle", "verify", none.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    assert!(e.contains("not an Ed25519 public key"), "{e}");
}
