//! hakube on real VMs, with systemd as PID 1 (`scripts/vm.sh` makes them).
//!
//! What it shows, on three masters:
//!   1. install with systemd, and masters joining with the printed script on
//!      systemd hosts, all at once: hakube.service enabled and active on every
//!      VM, the agent is the unit's main process and etcd runs in its cgroup,
//!      `hakube status` healthy, three started voting etcd members;
//!   2. `systemctl stop hakube` stops etcd too, cleanly (no SIGKILL), and
//!      `systemctl start hakube` brings the same member back;
//!   3. `systemctl reboot` of a master: it comes back as the same etcd member,
//!      healthy, with no hand work;
//!   4. power loss (its qemu killed): the other two keep a writable cluster;
//!      booted again, it rejoins as the same member and catches up;
//!   5. restarting hakube.service leaves the node's running containers alone
//!      (their containerd shims are not killed with the agent);
//!   6. a re-run of install with another build of hakube hands over: the new
//!      build is installed in /usr/local/bin and takes over in the unit's
//!      main process (the same pid), and etcd and containerd run on (the
//!      same pids);
//!   7. `hakube reset` disables and removes the unit and leaves no process.
//!
//! Every wait is bounded; nothing is retried. etcd's answers are read as
//! JSON, never by splitting its text. The last line counts the results
//! ("N passed, N failed"); the exit status is 0 only when all passed.
//! `scripts/test-vm.sh` picks the VMs' directory and namespace and takes
//! them down at the end, even when this is stopped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::proc::{self, bounded_group, msg};

const UP_LIMIT: Duration = Duration::from_secs(1800); // image (cold: debootstrap), boots, install, joins
const HEALTHY_LIMIT: Duration = Duration::from_secs(300); // `hakube status` turning healthy
const STOP_LIMIT: Duration = Duration::from_secs(90); // systemctl stop (TimeoutStopSec is 60)
const REBOOT_LIMIT: Duration = Duration::from_secs(300); // back on ssh after a reboot
const RESET_LIMIT: Duration = Duration::from_secs(240);
const SHORT: Duration = Duration::from_secs(20);

const ETCDCTL: &str = "ETCDCTL_API=3 etcdctl --cacert /var/lib/hakube/pki/etcd/ca.crt \
    --cert /var/lib/hakube/pki/apiserver-etcd-client.crt --key /var/lib/hakube/pki/apiserver-etcd-client.key \
    --dial-timeout=5s --command-timeout=10s";

/// The VMs, through `scripts/vm.sh`.
struct Vms {
    script: PathBuf,
    dir: PathBuf,
}

impl Vms {
    fn vm_sh(&self, limit: Duration, args: &[&str]) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(&self.script).args(args);
        bounded_group(limit, cmd)
    }

    /// `vm.sh ARGS…` with its output shown.
    fn vm(&self, limit: Duration, args: &[&str]) -> Result<()> {
        proc::run(self.vm_sh(limit, args), &format!("scripts/vm.sh {}", args.join(" ")))
    }

    /// `script` run by root's shell in VM `host`: its standard output.
    fn on(&self, host: &str, limit: Duration, script: &str) -> Result<String> {
        let out = self.vm_sh(limit, &["ssh", host, script]).stderr(Stdio::piped()).output()?;
        if !out.status.success() {
            bail!("`{script}` on {host}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// What `script` printed, whatever its exit status (`systemctl
    /// is-active` says "inactive" and exits 3); empty when ssh failed.
    fn read(&self, host: &str, script: &str) -> String {
        let out = self.vm_sh(SHORT, &["ssh", host, script]).stderr(Stdio::null()).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
    }

    fn ip_of(&self, name: &str) -> String {
        let hosts = std::fs::read_to_string(self.dir.join("hosts")).unwrap_or_default();
        let line = hosts.lines().find(|l| l.split_whitespace().next() == Some(name));
        line.and_then(|l| l.split_whitespace().nth(1)).unwrap_or_default().to_owned()
    }

    /// etcdctl on `host` against the members of `endpoints`, as JSON.
    fn etcdctl(&self, host: &str, endpoints: &[&str], args: &str) -> Result<Value> {
        let eps: Vec<String> = endpoints.iter().map(|n| format!("https://{}:2379", self.ip_of(n))).collect();
        let text =
            self.on(host, Duration::from_secs(30), &format!("{ETCDCTL} --endpoints {} {args}", eps.join(",")))?;
        serde_json::from_str(&text).with_context(|| format!("etcdctl {args} printed no JSON"))
    }

    fn members(&self, host: &str, endpoints: &[&str]) -> Vec<Member> {
        let list = self.etcdctl(host, endpoints, "member list -w json").unwrap_or_default();
        members_of(&list)
    }

    fn member_id(&self, host: &str, endpoints: &[&str], name: &str) -> Option<u64> {
        self.members(host, endpoints).into_iter().find(|m| m.name == name).map(|m| m.id)
    }

    /// Voting members that have started, by name, sorted.
    fn started_voters(&self, host: &str, endpoints: &[&str]) -> Vec<String> {
        let mut names: Vec<String> =
            self.members(host, endpoints).into_iter().filter(|m| m.started && !m.learner).map(|m| m.name).collect();
        names.sort();
        names
    }

    /// Whether one of `endpoints` says it is etcd's leader.
    fn has_leader(&self, host: &str, endpoints: &[&str]) -> bool {
        let status = self.etcdctl(host, endpoints, "endpoint status -w json").unwrap_or_default();
        status.as_array().into_iter().flatten().any(|s| {
            let (leader, me) = (&s["Status"]["leader"], &s["Status"]["header"]["member_id"]);
            leader.as_u64().is_some_and(|l| l != 0 && Some(l) == me.as_u64())
        })
    }

    fn healthy(&self, host: &str) -> bool {
        self.on(host, Duration::from_secs(60), "hakube status").is_ok()
    }

    /// Seconds until `hakube status` on `host` is healthy, bounded.
    fn time_to_healthy(&self, host: &str) -> Option<u64> {
        let t0 = Instant::now();
        wait_for(HEALTHY_LIMIT, &format!("{host} to be healthy"), || self.healthy(host)).then(|| t0.elapsed().as_secs())
    }

    /// Whether no process runs `name` (pgrep -x matches the 15-byte comm,
    /// too short for kube-controller-manager).
    fn no_process(&self, host: &str, name: &str) -> bool {
        self.on(host, SHORT, &format!("pgrep -f '(^|/){name}( |$)'")).is_err()
    }

    fn agent_gone(&self, host: &str) -> bool {
        self.on(host, SHORT, "pgrep -f '^/usr/local/bin/hakube agent'").is_err()
    }

    fn unit(&self, host: &str, query: &str) -> String {
        self.read(host, &format!("systemctl {query} hakube.service"))
    }
}

#[derive(Debug, PartialEq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub started: bool,
    pub learner: bool,
}

/// The members of `etcdctl member list -w json`: one that has not started
/// has no name and no client URLs yet.
pub fn members_of(list: &Value) -> Vec<Member> {
    let members = list["members"].as_array().map(Vec::as_slice).unwrap_or_default();
    members
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap_or_default().to_owned();
            let serving = m["clientURLs"].as_array().is_some_and(|u| !u.is_empty());
            Member {
                id: m["ID"].as_u64().unwrap_or_default(),
                started: !name.is_empty() && serving,
                name,
                learner: m["isLearner"].as_bool().unwrap_or(false),
            }
        })
        .collect()
}

/// `f` until it is true, every 3 s, at most `limit`.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            msg!("  gave up waiting for {what} after {} s", limit.as_secs());
            return false;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// One test's findings: what was wrong, or nothing.
#[derive(Default)]
struct Check(Vec<String>);

impl Check {
    fn expect(&mut self, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            self.0.push(why());
        }
    }

    fn equal<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        self.expect(got == want, || format!("{what}: {got:?}, not {want:?}"));
    }
}

const ALL: &[&str] = &["m1", "m2", "m3"];

fn install_and_concurrent_joins(vms: &Vms) -> Result<Check> {
    // A leftover of an interrupted run would be reused half-made: start clean.
    let _ = vms.vm_sh(Duration::from_secs(120), &["down"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    vms.vm(UP_LIMIT, &["up", "--masters", "3", "--workers", "0"])?;
    let mut c = Check::default();
    for &h in ALL {
        c.equal(&format!("{h}: hakube.service enabled"), vms.unit(h, "is-enabled").as_str(), "enabled");
        c.equal(&format!("{h}: hakube.service active"), vms.unit(h, "is-active").as_str(), "active");
        let modes =
            vms.read(h, "stat -c %a /etc/systemd/system/hakube.service /usr/local/bin/hakube /var/lib/hakube/etcd");
        c.equal(
            &format!("{h}: modes of the unit, binary, etcd data"),
            modes.split_whitespace().collect(),
            vec!["644", "755", "700"],
        );
        let loose = vms.read(h, "find /var/lib/hakube/pki -name '*.key' ! -perm 600");
        c.equal(&format!("{h}: keys not 0600"), loose.as_str(), "");
        // The agent is the unit's main process, and etcd is in the unit's
        // cgroup (so the unit's stop and KillMode reach it).
        let main_pid = vms.unit(h, "show -p MainPID --value");
        let agent_pid = vms.read(h, "cat /var/lib/hakube/agent.pid");
        c.expect(!main_pid.is_empty() && main_pid == agent_pid, || {
            format!("{h}: the unit's main process is {main_pid:?}, the agent is {agent_pid:?}")
        });
        let cgroup = vms.read(h, "cat /proc/$(pgrep -x etcd)/cgroup");
        c.expect(cgroup.lines().any(|l| l.starts_with("0::/system.slice/hakube.service")), || {
            format!("{h}: etcd is not in hakube.service's cgroup: {cgroup:?}")
        });
        c.expect(vms.healthy(h), || format!("{h}: hakube status is not healthy"));
    }
    c.equal("started voting etcd members", vms.started_voters("m1", ALL), vec!["m1".into(), "m2".into(), "m3".into()]);
    Ok(c)
}

fn stop_start(vms: &Vms) -> Result<Check> {
    let mut c = Check::default();
    let before = vms.member_id("m2", &["m2", "m3"], "m1");
    let t0 = Instant::now();
    c.expect(vms.on("m1", STOP_LIMIT, "systemctl stop hakube.service").is_ok(), || "systemctl stop failed".into());
    let secs = t0.elapsed().as_secs();
    c.equal("after stop the unit", vms.unit("m1", "is-active").as_str(), "inactive");
    // A clean stop: the agent stopped its children itself, nothing was left
    // for systemd's SIGKILL.
    c.equal(
        "the unit's Result (SIGKILL or failure on stop)",
        vms.unit("m1", "show -p Result --value").as_str(),
        "success",
    );
    c.expect(vms.no_process("m1", "etcd"), || "etcd still runs after systemctl stop".into());
    c.expect(vms.agent_gone("m1"), || "the agent still runs after systemctl stop".into());
    msg!("  stopped in {secs} s");
    c.expect(vms.on("m1", Duration::from_secs(30), "systemctl start hakube.service").is_ok(), || {
        "systemctl start failed".into()
    });
    let secs = vms.time_to_healthy("m1");
    c.expect(secs.is_some(), || format!("not healthy within {} s of systemctl start", HEALTHY_LIMIT.as_secs()));
    msg!("  healthy {secs:?} s after systemctl start");
    let after = vms.member_id("m1", &["m1"], "m1");
    c.expect(before.is_some() && before == after, || format!("m1's etcd member was {before:?}, is {after:?}"));
    c.equal("started voters", vms.started_voters("m1", ALL), vec!["m1".into(), "m2".into(), "m3".into()]);
    Ok(c)
}

fn reboot(vms: &Vms) -> Result<Check> {
    let mut c = Check::default();
    let before = vms.member_id("m1", &["m1"], "m2");
    let boot = vms.read("m2", "cat /proc/sys/kernel/random/boot_id");
    let t0 = Instant::now();
    // The connection may drop before ssh hears back: its status says nothing.
    let _ = vms.on("m2", SHORT, "systemctl reboot");
    let back = wait_for(REBOOT_LIMIT, "m2 to boot again", || {
        let id = vms.read("m2", "cat /proc/sys/kernel/random/boot_id");
        !id.is_empty() && id != boot
    });
    if !back {
        bail!("m2 did not come back within {} s (console: {}/m2.console)", REBOOT_LIMIT.as_secs(), vms.dir.display());
    }
    msg!("  m2 back on ssh {} s after systemctl reboot", t0.elapsed().as_secs());
    c.expect(vms.time_to_healthy("m2").is_some(), || {
        format!("m2 not healthy within {} s of booting", HEALTHY_LIMIT.as_secs())
    });
    msg!("  m2 healthy {} s after systemctl reboot", t0.elapsed().as_secs());
    c.equal("hakube.service after the reboot", vms.unit("m2", "is-active").as_str(), "active");
    let after = vms.member_id("m1", &["m1"], "m2");
    c.expect(before.is_some() && before == after, || format!("m2's etcd member was {before:?}, is {after:?}"));
    c.equal("started voters", vms.started_voters("m1", ALL), vec!["m1".into(), "m2".into(), "m3".into()]);
    // The shutdown was clean: the previous boot's journal has the agent stop.
    let journal = vms.read("m2", "journalctl -b -1 -u hakube.service -o cat");
    c.expect(journal.contains("agent stopped"), || "the agent did not log a clean stop during the reboot".into());
    Ok(c)
}

fn power_loss(vms: &Vms) -> Result<Check> {
    let mut c = Check::default();
    let before = vms.member_id("m1", &["m1"], "m3");
    vms.vm(Duration::from_secs(30), &["kill", "m3"]).context("could not kill m3's qemu")?;
    let value = format!("written-while-m3-was-off-{}", std::process::id());
    // If m3 led, m1 and m2 elect a leader among themselves first.
    let two = &["m1", "m2"];
    c.expect(wait_for(Duration::from_secs(60), "a leader among m1 and m2", || vms.has_leader("m1", two)), || {
        "no leader among m1 and m2 within 60 s".into()
    });
    let put = vms.on(
        "m1",
        Duration::from_secs(30),
        &format!(
            "{ETCDCTL} --endpoints https://{}:2379,https://{}:2379 put /hakube-vm-test/power-loss {value}",
            vms.ip_of("m1"),
            vms.ip_of("m2")
        ),
    );
    c.expect(put.is_ok(), || format!("etcd put through m1,m2 failed with m3 off: {put:?}"));
    let read = |host: &str, extra: &str| -> Option<String> {
        let v = vms.etcdctl(host, &[host], &format!("get {extra} -w json /hakube-vm-test/power-loss")).ok()?;
        value_of(&v)
    };
    c.equal("m2 reads after the write through m1", read("m2", ""), Some(value.clone()));
    let t0 = Instant::now();
    vms.vm(REBOOT_LIMIT + Duration::from_secs(30), &["boot", "m3"]).context("m3 did not boot again")?;
    c.expect(vms.time_to_healthy("m3").is_some(), || {
        format!("m3 not healthy within {} s of booting", HEALTHY_LIMIT.as_secs())
    });
    msg!("  m3 healthy {} s after its qemu started again", t0.elapsed().as_secs());
    let after = vms.member_id("m1", &["m1"], "m3");
    c.expect(before.is_some() && before == after, || format!("m3's etcd member was {before:?}, is {after:?}"));
    c.equal("m3's own etcd, serializable", read("m3", "--consistency=s"), Some(value));
    c.equal("started voters", vms.started_voters("m1", ALL), vec!["m1".into(), "m2".into(), "m3".into()]);
    Ok(c)
}

/// The value of the first key of `etcdctl get -w json` (base64 in the JSON).
fn value_of(get: &Value) -> Option<String> {
    use base64::Engine;
    let b64 = get["kvs"][0]["value"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

fn restart_keeps_containers(vms: &Vms) -> Result<Check> {
    const CTR: &str = "ctr -a /run/hakube/containerd/containerd.sock -n k8s.io";
    const ID: &str = "hakube-vm-test";
    let mut c = Check::default();
    // m1 runs containerd from now on (a re-run of install converges on it).
    vms.on("m1", HEALTHY_LIMIT, "hakube install components=etcd,containerd")
        .context("hakube install components=etcd,containerd on m1 failed")?;
    // (The agent imports the bundle's images only where kubelet runs.)
    let import = vms.on("m1", Duration::from_secs(120), &format!("{CTR} images import /opt/hakube/bundle/pause.tar"));
    c.expect(import.is_ok(), || format!("ctr images import failed: {import:?}"));
    let run =
        vms.on("m1", Duration::from_secs(120), &format!("{CTR} run -d $(cat /opt/hakube/bundle/pause-image) {ID}"));
    c.expect(run.is_ok(), || format!("ctr run failed: {run:?}"));
    let task = || {
        let tasks = vms.read("m1", &format!("{CTR} task ls"));
        tasks
            .lines()
            .find(|l| l.split_whitespace().next() == Some(ID))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
    };
    let before = task();
    c.expect(before.as_deref().is_some_and(|t| t.ends_with(" RUNNING")), || {
        format!("the container is {before:?} before the restart")
    });
    c.expect(vms.on("m1", STOP_LIMIT, "systemctl restart hakube.service").is_ok(), || {
        "systemctl restart failed".into()
    });
    c.expect(vms.time_to_healthy("m1").is_some(), || {
        format!("m1 not healthy within {} s of the restart", HEALTHY_LIMIT.as_secs())
    });
    c.equal("the container (pid, state) after the restart", task(), before);
    let _ = vms.on(
        "m1",
        Duration::from_secs(60),
        &format!("{CTR} task kill -s SIGKILL {ID}; sleep 1; {CTR} task delete -f {ID}; {CTR} container delete {ID}"),
    );
    Ok(c)
}

fn hand_over_to_another_build(vms: &Vms) -> Result<Check> {
    let mut c = Check::default();
    let pid_of = |name: &str| vms.read("m1", &format!("pgrep -f '(^|/){name}( |$)' | head -1"));
    let main_pid = || vms.unit("m1", "show -p MainPID --value");
    let (agent, etcd, containerd) = (main_pid(), pid_of("etcd"), pid_of("containerd"));
    c.expect(!etcd.is_empty() && !containerd.is_empty(), || format!("etcd {etcd:?}, containerd {containerd:?} before"));
    // Another build: the same program with bytes appended (another digest).
    let next = vms.on(
        "m1",
        SHORT,
        "cp /usr/local/bin/hakube /root/hakube-next && printf '\\n# another build\\n' >> /root/hakube-next && \
         sha256sum /root/hakube-next | cut -d' ' -f1",
    )?;
    vms.on("m1", HEALTHY_LIMIT, "/root/hakube-next install components=etcd,containerd")
        .context("the re-run of install with another build failed")?;
    c.equal("the unit's main pid after the hand-over", main_pid(), agent.clone());
    c.equal("etcd's pid after the hand-over", pid_of("etcd"), etcd);
    c.equal("containerd's pid after the hand-over", pid_of("containerd"), containerd);
    c.equal("hakube.service", vms.unit("m1", "is-active").as_str(), "active");
    let installed = vms.read("m1", "sha256sum /usr/local/bin/hakube | cut -d' ' -f1");
    c.equal("the installed binary", installed.as_str(), next.as_str());
    let runs = vms.read("m1", &format!("sha256sum /proc/{agent}/exe | cut -d' ' -f1"));
    c.equal("the binary the agent runs", runs.as_str(), next.as_str());
    let journal =
        vms.read("m1", "journalctl -u hakube.service -o cat | grep -c 'adopted, as the predecessor left it running'");
    c.equal("components adopted", journal.as_str(), "2");
    c.expect(vms.healthy("m1"), || "m1 is not healthy after the hand-over".into());
    Ok(c)
}

fn reset(vms: &Vms) -> Result<Check> {
    let mut c = Check::default();
    c.expect(vms.on("m3", RESET_LIMIT, "hakube reset").is_ok(), || "hakube reset failed".into());
    let enabled = vms.read("m3", "systemctl is-enabled hakube.service 2>&1 || true");
    c.expect(enabled != "enabled" && enabled != "disabled", || {
        format!("systemctl is-enabled says {enabled:?}: the unit is still known")
    });
    let left = vms.read("m3", "ls -d /etc/systemd/system/hakube.service /etc/systemd/system/*.wants/hakube.service /usr/local/bin/hakube /etc/hakube /var/lib/hakube 2>/dev/null || true");
    c.equal("left behind", left.as_str(), "");
    c.equal("hakube.service after reset", vms.unit("m3", "is-active").as_str(), "inactive");
    c.expect(vms.agent_gone("m3"), || "the agent still runs".into());
    for p in ["etcd", "containerd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"] {
        c.expect(vms.no_process("m3", p), || format!("{p} still runs"));
    }
    c.equal("started voters after m3's reset", vms.started_voters("m1", &["m1", "m2"]), vec!["m1".into(), "m2".into()]);
    c.expect(vms.healthy("m1"), || "m1 is not healthy after m3's reset".into());
    Ok(c)
}

type Test = fn(&Vms) -> Result<Check>;

const TESTS: &[(&str, Test)] = &[
    ("install with systemd; masters join with the script at once", install_and_concurrent_joins),
    ("systemctl stop hakube stops etcd too; start brings it back", stop_start),
    ("a rebooted master comes back as the same etcd member, healthy, by itself", reboot),
    ("power loss: two masters stay writable; the third rejoins as the same member", power_loss),
    ("restarting hakube.service leaves the node's running containers alone", restart_keeps_containers),
    ("a re-run of install with another build hands over; etcd and containerd run on", hand_over_to_another_build),
    ("hakube reset disables and removes the unit and leaves no process", reset),
];

/// Runs the tests in order (the first makes the VMs the others use); true
/// when every one passed.
pub fn run() -> Result<bool> {
    let dir = std::env::var_os("HAKUBE_VM_DIR")
        .map(PathBuf::from)
        .context("HAKUBE_VM_DIR is not set (scripts/test-vm.sh sets it)")?;
    let vms = Vms { script: proc::repo().join("scripts/vm.sh"), dir };
    let started = Instant::now();
    let mut results = vec![];
    for (i, (name, test)) in TESTS.iter().enumerate() {
        msg!("== {name}");
        let outcome = match test(&vms) {
            Ok(c) if c.0.is_empty() => Ok(()),
            Ok(c) => Err(c.0.join("; ")),
            Err(e) => Err(format!("{e:#}")),
        };
        match &outcome {
            Ok(()) => msg!("PASS: {name}"),
            Err(why) => msg!("FAIL: {name}: {why}"),
        }
        let first_failed = i == 0 && outcome.is_err();
        results.push((name, outcome));
        if first_failed {
            break; // no VMs to test
        }
    }
    println!("\n{}: results ({} s in all)", proc::prog(), started.elapsed().as_secs());
    for (name, outcome) in &results {
        match outcome {
            Ok(()) => println!("  PASS  {name}"),
            Err(why) => println!("  FAIL  {name}: {why}"),
        }
    }
    let failed = results.iter().filter(|(_, o)| o.is_err()).count();
    println!("{} passed, {failed} failed", results.len() - failed);
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_started_only_with_a_name_and_client_urls() {
        let list = serde_json::json!({"members": [
            {"ID": 17062624283524444711u64, "name": "m1", "clientURLs": ["https://10.78.0.11:2379"]},
            {"ID": 2, "name": "m2", "clientURLs": ["https://10.78.0.12:2379"], "isLearner": true},
            {"ID": 3, "name": "", "peerURLs": ["https://10.78.0.13:2380"]}
        ]});
        let m = members_of(&list);
        assert_eq!(m[0], Member { id: 17062624283524444711, name: "m1".into(), started: true, learner: false });
        assert!(m[1].started && m[1].learner);
        assert!(!m[2].started);
    }

    #[test]
    fn the_value_of_a_get_is_decoded() {
        let get = serde_json::json!({"kvs": [{"key": "L2E=", "value": "d3JpdHRlbg=="}]});
        assert_eq!(value_of(&get).as_deref(), Some("written"));
        assert_eq!(value_of(&serde_json::json!({"count": 0})), None);
    }
}
