//! The virtual IP on a real cluster: three masters and a worker on one
//! bridge, `vip=` at install and no load balancer. A client on the worker
//! connects to VIP:6443 every 100 ms; every master's addresses are sampled
//! every 100 ms. Each fault moves the address within its bound, and no
//! sample ever finds it on two masters.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use support::vip::{agent, boot, Connector, Watch};
use support::*;

#[test]
fn one_master_holds_the_virtual_ip_and_it_moves_within_bounds_never_to_two() {
    // The address .100 of the cluster's subnet.
    let vip_of = |h: &Host| {
        let o: Vec<u8> = h.addr.split('.').map(|o| o.parse().unwrap()).collect();
        Ipv4Addr::new(o[0], o[1], o[2], 100)
    };
    let c = Cluster::with_install_for(3, 1, |m1| vec!["ha".into(), format!("vip={}", vip_of(m1))], &[]);
    let (m1, w1) = (c.host("m1"), c.host("w1"));
    let vip = vip_of(m1);
    let masters: Vec<&Host> = c.masters.iter().collect();
    let watch = Watch::start(&masters, vip);
    wait_for("a master to hold the virtual IP", Duration::from_secs(120), || watch.holder().is_some());
    let client = Connector::start(w1, vip);
    wait_for("kubectl through the virtual IP", Duration::from_secs(60), || {
        m1.kubectl(&["get", "nodes"]).status.success()
    });
    let status = stdout(&m1.hakube(&["status"]));
    let first = watch.holder().unwrap();
    assert!(status.contains(&format!("virtual IP {vip}: held by {first} since")), "{status}");

    // The holder keeps etcd's leadership off its own member, even when it
    // is handed the leadership (a crash there would cost an election on
    // top of the lease).
    let holder = c.host(&first);
    if let Some(leader) = etcd_leader(&masters).filter(|l| *l != first) {
        let to = format!("{:x}", etcd_status(holder)["Status"]["header"]["member_id"].as_u64().unwrap());
        let moved = c.host(&leader).etcdctl(Some("apiserver-etcd-client"), &["move-leader", &to]);
        assert_ok(&moved, "etcdctl move-leader to the holder");
    }
    let t = Instant::now();
    wait_for("the holder to hand etcd's leadership on", Duration::from_secs(10), || {
        etcd_leader(&masters).is_some_and(|l| l != first)
    });
    eprintln!("the holder handed etcd's leadership on in {:.2}s", t.elapsed().as_secs_f64());
    let log = std::fs::read_to_string(holder.root().join("var/lib/hakube/logs/agent.log")).unwrap();
    assert!(log.contains("moved etcd's leadership off this master's member"), "the holder's agent says so");

    // Each fault on whoever holds the address, the bound it must move within.
    let mut figures: Vec<(&str, Duration, Duration)> = vec![];
    let mut fault = |what: &'static str, bound: Duration, hit: &dyn Fn(&Host), heal: &dyn Fn(&Host)| {
        let holder = watch.holder().expect("a holder before the fault");
        let h = c.host(&holder);
        let t = Instant::now();
        hit(h);
        let moved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| watch.moved(&holder, t, bound)));
        let (next, took) = moved.unwrap_or_else(|e| {
            for m in &c.masters {
                let log = std::fs::read_to_string(m.root().join("var/lib/hakube/logs/agent.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().filter(|l| l.contains("virtual IP") || l.contains("vip")).collect();
                eprintln!("--- {} agent.log, virtual IP lines:\n{}", m.name, lines.join("\n"));
                let state = m.state();
                let health: Vec<String> = state["components"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(c, s)| format!("{c} {} {}", s["phase"], s["healthy"]))
                    .collect();
                eprintln!("--- {} components: {}; vip part {}", m.name, health.join(", "), state["vip"]);
            }
            std::panic::resume_unwind(e)
        });
        // The client reaches the new holder (its neighbour cache told by
        // the announcements), then the gap it saw is known.
        wait_for("the client to connect to the new holder", Duration::from_secs(10), || {
            client.succeeded_since(t + took)
        });
        let gap = client.longest_gap(t);
        eprintln!(
            "{what}: {holder} -> {next} in {:.2}s; the client's longest gap {:.2}s",
            took.as_secs_f64(),
            gap.as_secs_f64()
        );
        figures.push((what, took, gap));
        assert!(took <= bound, "{what}: the address moved after {took:?}, more than {bound:?}");
        let n = c.host(&next);
        wait_for("kubectl through the virtual IP after the move", Duration::from_secs(30), || {
            n.kubectl(&["get", "nodes"]).status.success()
        });
        // The takeover is an Event on the new holder's Node, and status
        // names the holder it followed.
        wait_for("the takeover's Event", Duration::from_secs(30), || {
            let events = stdout(&n.kubectl(&["get", "events", "--field-selector", "reason=VirtualIPTaken"]));
            events.contains(&format!("{next} holds the virtual IP {vip}, after {holder}"))
        });
        let status = stdout(&n.hakube(&["status"]));
        assert!(status.contains(&format!("held by {next} since")), "{status}");
        assert!(status.contains(&format!("(took it over from {holder})")), "{status}");
        heal(h);
        // Healthy as a running agent says: its own state, written by a live agent.
        wait_for("the old holder healthy again", Duration::from_secs(240), || {
            let s = h.state();
            let live = s["agent_pid"].as_u64().is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            live && ["etcd", "kube-apiserver"].iter().all(|c| s["components"][c]["healthy"] == true)
        });
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(watch.holder().as_deref(), Some(next.as_str()), "{what}: the address stays where it went");
    };
    let nothing = |_: &Host| {};
    // A graceful stop: the agent hands the address over, then stops its
    // components; the host is started again once it has stopped.
    let stop = |h: &Host| {
        sh("kill", &["-TERM", &agent(h).to_string()]);
    };
    let boot_once_stopped = |h: &Host| {
        let pid = agent(h);
        wait_for("the agent to stop", Duration::from_secs(120), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        boot(h);
    };
    fault("the holder's agent stops", Duration::from_secs(1), &stop, &boot_once_stopped);
    fault(
        "the holder's kube-apiserver is killed",
        Duration::from_secs(5),
        &|h| {
            let s = h.state();
            sh("kill", &["-KILL", &s["components"]["kube-apiserver"]["pid"].to_string()]);
        },
        &nothing,
    );
    fault(
        "the holder loses power",
        Duration::from_secs(8),
        &|h| {
            h.kill_all();
            h.kill_pods();
        },
        &boot,
    );
    fault("the holder is cut off", Duration::from_secs(10), &|h| c.net.set_link(h, false), &|h| {
        c.net.set_link(h, true)
    });
    assert_eq!(watch.doubles(), Vec::<Vec<String>>::new(), "the address on two masters at once");
    for (what, moved, gap) in &figures {
        eprintln!("{what:<40} moved in {:>5.2}s, longest connect gap {:>5.2}s", moved.as_secs_f64(), gap.as_secs_f64());
    }

    // A re-run keeps the address.
    let m2 = c.host("m2");
    assert_ok(&m2.install_master_unchecked(&["ha"], &[]), "a re-run without vip=");
    assert!(stdout(&m2.hakube(&["status"])).contains(&format!("virtual IP {vip}: held by")));

    // A re-run moves it: the masters float the new address as the change
    // starts, the switch waits until one holds it, the old one goes at the end.
    let other = Ipv4Addr::new(vip.octets()[0], vip.octets()[1], vip.octets()[2], 101);
    let moved = Watch::start(&masters, other);
    let out = m2.install_master_unchecked(&["ha", &format!("vip={other}")], &[]);
    assert_ok(&out, "a re-run that moves the virtual IP");
    let status = stdout(&m2.hakube(&["status"]));
    assert!(status.contains(&format!("load-balancer-address {other}:6443")), "{status}");
    assert!(status.contains(&format!("virtual IP {other}: held by")), "{status}");
    assert!(!status.contains(&format!("virtual IP {vip}")), "{status}");
    wait_for("the old address released by every master", Duration::from_secs(30), || watch.nowhere());
    let new_client = Connector::start(w1, other);
    let t = Instant::now();
    wait_for("a client to connect to the new address", Duration::from_secs(10), || new_client.succeeded_since(t));
    wait_for("kubectl through the new address", Duration::from_secs(30), || {
        m1.kubectl(&["get", "nodes"]).status.success()
    });

    // Removed: only with the cluster's next external address.
    let out = m2.install_master_unchecked(&["ha", "vip=none"], &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("removing the virtual IP {other} needs the cluster's next external address")),
        "{err}"
    );
    let next = format!("{}:6443", m1.addr);
    let out = m2.install_master_unchecked(&["ha", "vip=none", &format!("load-balancer-address={next}")], &[]);
    assert_ok(&out, "a re-run that removes the virtual IP");
    let status = stdout(&m2.hakube(&["status"]));
    assert!(status.contains(&format!("load-balancer-address {next}")) && !status.contains("virtual IP"), "{status}");
    wait_for("the removed address released by every master", Duration::from_secs(30), || moved.nowhere());
    assert_eq!(moved.doubles(), Vec::<Vec<String>>::new(), "the new address on two masters at once");
    assert_eq!(watch.doubles(), Vec::<Vec<String>>::new(), "the old address on two masters at once");
    drop(new_client);
    drop(moved);
    drop(watch);
    drop(client);
}

#[test]
fn a_new_cluster_refuses_a_virtual_ip_someone_answers_for_or_outside_the_subnet() {
    let net = Network::new();
    let (m1, other) = (net.host("m1"), net.host("other"));
    let o: Vec<&str> = m1.addr.split('.').collect();
    let vip = format!("{}.{}.{}.100", o[0], o[1], o[2]);
    assert_ok(
        &other.exec("ip", &["address", "add", &format!("{vip}/24"), "dev", "eth0"]),
        "the address on another host",
    );
    let link = stdout(&other.exec("ip", &["-brief", "link", "show", "eth0"]));
    let mac = link.split_whitespace().nth(2).expect("the other host's MAC").to_owned();

    let out = m1.install_master_unchecked(&["ha", &format!("vip={vip}")], &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("[vip-in-use] {mac} answers ARP for the virtual IP {vip} on eth0")), "{err}");
    assert!(untouched(&m1), "nothing written after a failed preflight");

    let out = m1.install_master_unchecked(&["ha", "vip=10.250.0.100"], &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("[vip-subnet] the virtual IP 10.250.0.100 is not in the subnet of eth0"), "{err}");
    assert!(untouched(&m1), "nothing written after a failed preflight");
}

/// What a master's own etcd member says of itself (`endpoint status`).
fn etcd_status(m: &Host) -> serde_json::Value {
    let out = m.etcdctl(Some("apiserver-etcd-client"), &["endpoint", "status", "-w", "json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().map(|v| v[0].clone()).unwrap_or_default()
}

/// The master whose etcd member leads, as the members say.
fn etcd_leader(masters: &[&Host]) -> Option<String> {
    masters.iter().find_map(|m| {
        let s = etcd_status(m);
        let (me, leader) = (s["Status"]["header"]["member_id"].as_u64()?, s["Status"]["leader"].as_u64()?);
        (me == leader).then(|| m.name.clone())
    })
}
