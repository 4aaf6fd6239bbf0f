//! etcd snapshots of a real etcd member: scheduled and pruned by the agent,
//! taken and checked by hand, kept by a reset, and restored by etcd's own
//! `etcdutl` into a member that serves the keys again.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

fn listing(h: &Host) -> Vec<serde_json::Value> {
    let out = h.hakube(&["etcd", "snapshot", "list", "--json"]);
    assert_ok(&out, "etcd snapshot list");
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn scheduled(list: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    list.iter().filter(|l| l["record"]["kind"] == "scheduled").collect()
}

fn etcdutl(args: &[&str]) -> std::process::Output {
    Command::new(bundle().join("etcdutl")).args(args).output().expect("etcdutl")
}

/// An etcd the test started, killed when the test ends however it ends.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn snapshots_are_scheduled_pruned_kept_by_reset_and_restore_with_etcdutl() {
    let h = Host::isolated();
    h.install(&["etcd-snapshot-interval=2s", "etcd-snapshot-retention=2"]);
    let put = |k: &str, v: &str| assert_ok(&h.etcdctl(Some("apiserver-etcd-client"), &["put", k, v]), "put");
    for i in 0..20 {
        put(&format!("/app/key{i}"), &format!("value {i}"));
    }

    // By hand: a whole snapshot with etcd's revision, as etcdutl reads it.
    let out = h.hakube(&["etcd", "snapshot", "save"]);
    assert_ok(&out, "etcd snapshot save");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let manual = PathBuf::from(text.strip_prefix("saved ").and_then(|t| t.split(' ').next()).expect(&text));
    assert!(manual.starts_with(h.root().join("var/backups/hakube/etcd")), "{text}");
    assert!(manual.to_string_lossy().ends_with("-manual.db"), "{text}");
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
    assert_eq!(mode(&manual) & 0o777, 0o600, "a snapshot holds every secret");
    assert_ok(&h.hakube(&["etcd", "snapshot", "verify", manual.to_str().unwrap()]), "verify");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.json", manual.display())).unwrap()).unwrap();
    let status = etcdutl(&["snapshot", "status", manual.to_str().unwrap(), "-w", "json"]);
    assert_ok(&status, "etcdutl snapshot status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(record["revision"], status["revision"], "{record} vs etcdutl's {status}");
    assert_eq!(record["size"], std::fs::metadata(&manual).unwrap().len(), "{record}");

    // A copy with one byte flipped is refused, naming why.
    let tampered = tempfile::tempdir().unwrap();
    let name = manual.file_name().unwrap();
    let copy = tampered.path().join(name);
    let mut bytes = std::fs::read(&manual).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&copy, &bytes).unwrap();
    std::fs::copy(format!("{}.json", manual.display()), format!("{}.json", copy.display())).unwrap();
    let out = h.hakube(&["etcd", "snapshot", "verify", copy.to_str().unwrap()]);
    assert!(!out.status.success(), "a flipped byte must be refused");
    assert!(stderr(&out).contains("changed or damaged"), "{}", stderr(&out));

    // On schedule: one per 2 s slot, the newest two kept, the manual one too.
    let mut first = 0;
    wait_for("a scheduled snapshot", Duration::from_secs(30), || {
        let list = listing(&h);
        first = scheduled(&list).first().map(|s| s["record"]["takenAt"].as_u64().unwrap()).unwrap_or_default();
        first > 0
    });
    wait_for("two more scheduled snapshots", Duration::from_secs(30), || {
        scheduled(&listing(&h)).iter().any(|s| s["record"]["takenAt"].as_u64().unwrap() >= first + 4)
    });
    // Stopped, the directory holds what the agent settled on.
    let out = h.hakube(&["reset"]);
    assert_ok(&out, "reset");
    assert!(stderr(&out).contains("kept as backups"), "{}", stderr(&out));
    let list = listing(&h);
    let sched = scheduled(&list);
    assert_eq!(sched.len(), 2, "retention 2: {list:?}");
    assert_ne!(sched[0]["record"]["takenAt"], sched[1]["record"]["takenAt"]);
    assert!(list.iter().any(|l| l["path"] == manual.to_str().unwrap()), "the manual one stays: {list:?}");
    assert!(list.iter().all(|l| l["problem"].is_null()), "{list:?}");
    for l in &list {
        assert_ok(&h.hakube(&["etcd", "snapshot", "verify", l["path"].as_str().unwrap()]), "verify");
    }

    // etcd's own tool restores the manual snapshot into a member that
    // serves the keys written before it.
    let data = tempfile::tempdir().unwrap();
    let restored = data.path().join("member");
    let peer = "http://127.0.0.1:22380";
    let cluster = format!("r={peer}");
    let out = etcdutl(&[
        "snapshot",
        "restore",
        manual.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
        "--name",
        "r",
        "--initial-cluster",
        &cluster,
        "--initial-advertise-peer-urls",
        peer,
    ]);
    assert_ok(&out, "etcdutl snapshot restore");
    let log = std::fs::File::create(data.path().join("etcd.log")).unwrap();
    let _etcd = Started(
        Command::new("ip")
            .args(["netns", "exec", &h.ns, "etcd", "--name", "r", "--data-dir"])
            .arg(&restored)
            .args(["--listen-client-urls", "http://127.0.0.1:22379", "--advertise-client-urls"])
            .args(["http://127.0.0.1:22379", "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &cluster])
            .env("PATH", path_env())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd"),
    );
    let get = || {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, "etcdctl", "--endpoints", "http://127.0.0.1:22379"]);
        cmd.args(["--dial-timeout=1s", "--command-timeout=2s", "get", "/app/key7", "--print-value-only"]);
        cmd.env("PATH", path_env()).output().expect("etcdctl")
    };
    wait_for("the restored member to serve", Duration::from_secs(30), || get().status.success());
    assert_eq!(String::from_utf8_lossy(&get().stdout).trim(), "value 7");
}

/// `hakube etcd restore FILE --pki DIR`, with the options of an etcd-only
/// first master, whether or not it succeeds.
fn restore(h: &Host, file: &Path, pki: &Path) -> std::process::Output {
    restore_with(h, file, pki, bundle())
}

/// As [`restore`], with the bundle (a directory or a bundle file) given.
fn restore_with(h: &Host, file: &Path, pki: &Path, bundle: &Path) -> std::process::Output {
    let bundle = bundle.display().to_string();
    let (file, pki) = (file.display().to_string(), pki.display().to_string());
    h.hakube(&[
        "etcd",
        "restore",
        &file,
        "--pki",
        &pki,
        "--advertise-address",
        &h.addr,
        "--node-name",
        "m9",
        "--components",
        "etcd",
        "--no-systemd",
        "--bundle",
        &bundle,
    ])
}

#[test]
fn a_restore_refuses_what_it_cannot_trust_and_makes_a_first_master_of_the_rest() {
    let old = Host::isolated();
    old.install(&["etcd-snapshot-interval=never"]);
    for i in 0..5 {
        assert_ok(&old.etcdctl(Some("apiserver-etcd-client"), &["put", &format!("/app/k{i}"), "before"]), "put");
    }
    let backup = tempfile::tempdir().unwrap();
    let (file, pki) = snapshot_backup(&old, backup.path());

    // The installed host is refused: a restore makes a bare server.
    let out = restore(&old, &file, &pki);
    assert!(!out.status.success() && stderr(&out).contains("already holds a cluster"), "{}", stderr(&out));

    let new = Host::isolated();
    let refused = |out: std::process::Output, why: &str| {
        assert!(!out.status.success(), "must be refused ({why})");
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
        assert!(untouched(&new), "a refused restore writes nothing: {why}");
    };
    // A flipped byte.
    let flipped = tempfile::tempdir().unwrap();
    let bad = flipped.path().join(file.file_name().unwrap());
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x40;
    std::fs::write(&bad, bytes).unwrap();
    std::fs::copy(format!("{}.json", file.display()), format!("{}.json", bad.display())).unwrap();
    refused(restore(&new, &bad, &pki), "changed or damaged");
    // Key material that is incomplete, or another cluster's.
    let partial_dir = tempfile::tempdir().unwrap();
    let partial = partial_dir.path().join("pki");
    assert_ok(&sh("cp", &["-a", pki.to_str().unwrap(), partial.to_str().unwrap()]), "copy the PKI");
    std::fs::remove_file(partial.join("encryption-config.yaml")).unwrap();
    refused(restore(&new, &file, &partial), "lacks encryption-config.yaml");
    let other = tempfile::tempdir().unwrap();
    let gen = Command::new(hakube())
        .args(["--root", other.path().to_str().unwrap(), "certs", "generate", "--advertise-address", "127.0.0.1"])
        .args(["--node-name", "x", "--components", "etcd"])
        .output()
        .unwrap();
    assert_ok(&gen, "certs generate");
    let foreign = other.path().join("var/lib/hakube/pki");
    refused(restore(&new, &file, &foreign), "is not the CA of the snapshot's cluster");

    // The old cluster is gone; the new server restores it.
    old.kill_all();
    // On a server with nothing but a bundle file, the backup and the PKI.
    let packed = backup.path().join("hakube.tar");
    let from = bundle().display().to_string();
    assert_ok(&sh(hakube(), &["bundle", "create", "--from", &from, "--out", packed.to_str().unwrap()]), "bundle");
    let out = restore_with(&new, &file, &pki, &packed);
    assert_ok(&out, "restore");
    assert!(stderr(&out).contains("is unpacked already"), "install found the restore's unpacked bundle");
    assert!(stderr(&out).contains("revision"), "{}", stderr(&out));
    let get = new.etcdctl(Some("apiserver-etcd-client"), &["get", "/app/k3", "--print-value-only"]);
    assert_ok(&get, "get");
    assert_eq!(stdout(&get).trim(), "before");
    // The revision is bumped past anything a watcher of the old cluster saw.
    let status = new.etcdctl(Some("apiserver-etcd-client"), &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status[0]["Status"]["header"]["revision"].as_i64().unwrap() > 1_000_000_000, "{status}");
    // One member, this host; the old master's record replaced by this one's.
    let members = new.etcdctl(Some("apiserver-etcd-client"), &["member", "list"]);
    assert_eq!(stdout(&members).lines().count(), 1, "{}", stdout(&members));
    assert!(stdout(&members).contains("m9"), "{}", stdout(&members));
    wait_for("the restored master in the registry", Duration::from_secs(20), || {
        let keys = new.etcdctl(Some("apiserver-etcd-client"), &["get", "/hakube/nodes/", "--prefix", "--keys-only"]);
        let keys: Vec<String> = stdout(&keys).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
        keys == ["/hakube/nodes/m9"]
    });
    assert_eq!(
        std::fs::read(new.pki("ca.key")).unwrap(),
        std::fs::read(pki.join("ca.key")).unwrap(),
        "the cluster's CA, not a new one"
    );
    assert!(!new.root().join("var/lib/hakube/.restore").exists(), "no staging left");
    // And it is a cluster like any other: a second restore is refused.
    let out = restore(&new, &file, &pki);
    assert!(!out.status.success() && stderr(&out).contains("already holds a cluster"), "{}", stderr(&out));
}
