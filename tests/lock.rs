//! The etcd membership lock and the leader election against real etcd: a
//! lock whose lease is gone is lost before the next membership change, a
//! dropped lock is released, no call waits without bound, a leader whose
//! control plane stays unhealthy makes way for a healthy master, and no
//! term is claimed once its lease is lost or its etcd stops answering.

mod support;

use std::time::{Duration, Instant};

use hakube::etcd::membership::{self, Lock, MembershipError};
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn endpoint(h: &Host) -> String {
    format!("https://{}:2379", h.addr)
}

#[test]
fn a_lock_whose_lease_is_gone_fences_off_the_next_membership_change() {
    let h = Host::isolated();
    h.install(&[]);
    h.within(|| {
        runtime().block_on(async {
            let ep = endpoint(&h);
            let mut client = h.etcd_client(None).await;
            let lock = Lock::acquire_with_ttl(&mut client, &ep, Duration::from_secs(5), 3).await.unwrap();
            lock.ensure_held(&mut client, &ep).await.expect("held right after taking it");
            // The lease ends as it would for a holder cut off for longer
            // than its TTL: etcd answers the next keep-alive with TTL 0.
            let leases = client.leases().await.unwrap();
            for l in leases.leases() {
                client.lease_revoke(l.id()).await.unwrap();
            }
            let e = lock.ensure_held(&mut client, &ep).await.unwrap_err();
            assert!(matches!(e, MembershipError::LockLost { .. }), "{e}");
            // And no member is added under a lost lock.
            let before = hakube::etcd::members(&mut client, &ep).await.unwrap();
            let e = membership::add_learner(&mut client, &ep, "https://10.9.9.9:2380", before.clone(), &lock)
                .await
                .unwrap_err();
            assert!(matches!(e, MembershipError::LockLost { .. }), "{e}");
            assert_eq!(hakube::etcd::members(&mut client, &ep).await.unwrap(), before, "membership untouched");
        })
    });
}

#[test]
fn the_keeper_sees_an_expired_lease_by_itself() {
    let h = Host::isolated();
    h.install(&[]);
    h.within(|| {
        runtime().block_on(async {
            let ep = endpoint(&h);
            let mut client = h.etcd_client(None).await;
            let lock = Lock::acquire_with_ttl(&mut client, &ep, Duration::from_secs(5), 2).await.unwrap();
            // Make the lock key vanish without touching the lease: only the
            // keeper's TTL-0 answer or the key check can tell.
            let leases = client.leases().await.unwrap();
            let id = leases.leases()[0].id();
            client.lease_revoke(id).await.unwrap();
            // The keeper notices on its next keep-alive (every TTL/6).
            tokio::time::sleep(Duration::from_secs(2)).await;
            let e = lock.ensure_held(&mut client, &ep).await.unwrap_err();
            assert!(matches!(e, MembershipError::LockLost { .. }), "{e}");
        })
    });
}

#[test]
fn a_dropped_lock_is_released_at_once() {
    let h = Host::isolated();
    h.install(&[]);
    h.within(|| {
        runtime().block_on(async {
            let ep = endpoint(&h);
            let mut a = h.etcd_client(None).await;
            let mut b = h.etcd_client(None).await;
            {
                // A holder whose future is dropped (a cancelled join).
                let _held = Lock::acquire(&mut a, &ep, Duration::from_secs(5)).await.unwrap();
            }
            let t = Instant::now();
            let lock = Lock::acquire(&mut b, &ep, Duration::from_secs(10)).await.expect("the lock is free again");
            assert!(t.elapsed() < Duration::from_secs(5), "took {:?}: the lease was kept alive", t.elapsed());
            lock.release(&mut b).await;
        })
    });
}

#[test]
fn releasing_the_lock_is_bounded_when_etcd_stops_answering() {
    let h = Host::isolated();
    h.install(&[]);
    let etcd_pid = h.state()["components"]["etcd"]["pid"].as_u64().expect("etcd runs").to_string();
    h.within(|| {
        runtime().block_on(async {
            let ep = endpoint(&h);
            // No request timeout on the client, as for waiting on the lock.
            let mut client = h.etcd_client(None).await;
            let lock = Lock::acquire(&mut client, &ep, Duration::from_secs(5)).await.unwrap();
            sh("kill", &["-STOP", &etcd_pid]);
            let t = Instant::now();
            lock.release(&mut client).await;
            let took = t.elapsed();
            sh("kill", &["-CONT", &etcd_pid]);
            assert!(took < Duration::from_secs(15), "release waited {took:?} on a frozen etcd");
        })
    });
}

#[test]
fn a_promotion_waits_out_a_member_list_that_lags_before_giving_up() {
    let h = Host::isolated();
    h.install(&[]);
    h.within(|| {
        runtime().block_on(async {
            let ep = endpoint(&h);
            let mut client = h.etcd_client(Some(Duration::from_secs(5))).await;
            let lock = Lock::acquire(&mut client, &ep, Duration::from_secs(5)).await.unwrap();
            let t = Instant::now();
            let e = membership::promote_when_ready(&mut client, &ep, 0xdead, Duration::from_secs(60), &lock)
                .await
                .unwrap_err();
            let took = t.elapsed();
            assert!(e.to_string().contains("disappeared while joining"), "{e}");
            assert!(took >= Duration::from_secs(9), "absence taken as final after {took:?}");
            lock.release(&mut client).await;
        })
    });
}

#[test]
fn waiting_for_the_lock_outlasts_the_clients_request_timeout() {
    // The leader's and `node remove`'s clients time requests out after a
    // few seconds; a wait for a lock another master holds longer (a join)
    // must last the wait's own limit, not die at the first timeout.
    let h = Host::isolated();
    h.install(&[]);
    h.within(|| {
        runtime().block_on(async {
            let ep = endpoint(&h);
            let mut holder = h.etcd_client(None).await;
            let mut waiter = h.etcd_client(Some(Duration::from_secs(1))).await;
            let held = Lock::acquire(&mut holder, &ep, Duration::from_secs(5)).await.unwrap();
            let release = async {
                tokio::time::sleep(Duration::from_secs(4)).await;
                held.release(&mut holder).await;
            };
            let t = Instant::now();
            let (lock, ()) = tokio::join!(Lock::acquire(&mut waiter, &ep, Duration::from_secs(20)), release);
            let lock = lock.unwrap_or_else(|e| panic!("gave up after {:?}: {e}", t.elapsed()));
            assert!(t.elapsed() >= Duration::from_secs(3), "taken at {:?} while held", t.elapsed());
            lock.ensure_held(&mut waiter, &ep).await.expect("held");
            lock.release(&mut waiter).await;
            // A lock never released is still waited for only up to the limit.
            let mut other = h.etcd_client(None).await;
            let _held = Lock::acquire(&mut other, &ep, Duration::from_secs(5)).await.unwrap();
            let t = Instant::now();
            let Err(e) = Lock::acquire(&mut waiter, &ep, Duration::from_secs(3)).await else {
                panic!("taken while another holds it")
            };
            assert!(matches!(e, MembershipError::Timeout { .. }), "{e}");
            assert!(t.elapsed() < Duration::from_secs(8), "waited {:?}", t.elapsed());
        })
    });
}

/// A host for elections driven by the test: its own agent, which leads,
/// frozen (killed, it would take etcd, its child, with it), so that only
/// the test's elections campaign once its lease is gone; with the host's
/// paths and installed config.
fn host_for_elections() -> (Host, hakube::host::paths::Paths, hakube::config::ClusterConfig) {
    let h = Host::isolated();
    h.install(&[]);
    let agent = h.state()["agent_pid"].as_u64().expect("agent pid");
    assert!(sh("kill", &["-STOP", &agent.to_string()]).status.success());
    let paths = hakube::host::paths::Paths::new(h.root());
    let cfg = hakube::config::load_installed(&paths.config_file()).unwrap().expect("installed config");
    (h, paths, cfg)
}

/// One healthy agent's election, named "a", spawned on the local set: what
/// it publishes.
fn lone_election(
    paths: &hakube::host::paths::Paths,
    cfg: &hakube::config::ClusterConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::sync::watch::Receiver<hakube::cluster::election::View> {
    use hakube::cluster::election::{self, View, Yield};
    let mut cfg = cfg.clone();
    cfg.node.name = "a".parse().unwrap();
    let (tx, view) = tokio::sync::watch::channel(View::default());
    tokio::task::spawn_local(election::run(paths.clone(), cfg, || true, Yield::default(), tx, stop));
    view
}

/// Waits until `view` claims a term, 20 s at most (`what` names the wait).
async fn until_elected(view: &tokio::sync::watch::Receiver<hakube::cluster::election::View>, what: &str) {
    let t = Instant::now();
    while view.borrow().term.is_none() {
        assert!(t.elapsed() < Duration::from_secs(20), "{what}: a is not elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two agents' elections on one etcd (the host's own agent stopped), each
/// told by a flag whether its control plane is healthy.
#[test]
fn a_leader_whose_control_plane_stays_unhealthy_makes_way_and_none_flaps() {
    use hakube::cluster::election::{self, View, Yield};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::sync::watch;

    let (h, paths, cfg) = host_for_elections();
    let rule = Yield { resign_after: Duration::from_secs(3), vacancy_wait: Duration::from_secs(4) };

    h.within(|| {
        runtime().block_on(tokio::task::LocalSet::new().run_until(async {
            let (stop_tx, stop_rx) = watch::channel(false);
            let agent = |name: &str, healthy: Arc<AtomicBool>| {
                let mut cfg = cfg.clone();
                cfg.node.name = name.parse().unwrap();
                let (tx, rx) = watch::channel(View::default());
                let fit = move || healthy.load(Ordering::SeqCst);
                tokio::task::spawn_local(election::run(paths.clone(), cfg, fit, rule, tx, stop_rx.clone()));
                rx
            };
            let leads = |rx: &watch::Receiver<View>| rx.borrow().term.is_some();
            async fn until(what: &str, limit: Duration, f: impl Fn() -> bool) {
                let t = Instant::now();
                while !f() {
                    assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }

            let a_ok = Arc::new(AtomicBool::new(true));
            let b_ok = Arc::new(AtomicBool::new(true));
            let a = agent("a", a_ok.clone());
            // The killed agent's lease expires within its TTL.
            until("a is elected", Duration::from_secs(20), || leads(&a)).await;
            let b = agent("b", b_ok.clone());
            until("b sees a lead", Duration::from_secs(5), || b.borrow().leader.as_deref() == Some("a")).await;

            // A restart-length blip hands nothing over.
            a_ok.store(false, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            a_ok.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert!(leads(&a) && !leads(&b), "a blip shorter than resign_after kept a leading");

            // Unhealthy for good: a resigns and the healthy b takes over,
            // well before a's lease would have run out by itself.
            a_ok.store(false, Ordering::SeqCst);
            let t = Instant::now();
            until("b leads", Duration::from_secs(8), || leads(&b) && !leads(&a)).await;
            assert!(t.elapsed() >= Duration::from_secs(3), "a resigned before resign_after");

            // Both unhealthy: b resigns, and after the vacancy wait one of
            // them leads again (nobody healthier exists) and keeps it.
            b_ok.store(false, Ordering::SeqCst);
            until("b resigns", Duration::from_secs(8), || !leads(&b)).await;
            until("someone leads again", Duration::from_secs(10), || leads(&a) || leads(&b)).await;
            let holder = if leads(&a) { "a" } else { "b" };
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = if leads(&a) {
                    Some("a")
                } else if leads(&b) {
                    Some("b")
                } else {
                    None
                };
                assert_eq!(now, Some(holder), "a term won while every master is unhealthy is kept");
            }
            stop_tx.send_replace(true);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }))
    });
}

/// A term whose lease is lost stops being claimed at once, whenever the
/// loss lands (mid-round or between rounds): a claim that outlived its
/// lease would overlap the next leader's. Six terms are ended by
/// revoking their lease, which the keeper or the next round finds first.
#[test]
fn a_term_whose_lease_is_lost_is_no_longer_claimed() {
    use hakube::cluster::election::LEADER_KEY;
    use tokio::sync::watch;

    let (h, paths, cfg) = host_for_elections();
    h.within(|| {
        runtime().block_on(tokio::task::LocalSet::new().run_until(async {
            let (stop_tx, stop_rx) = watch::channel(false);
            let view = lone_election(&paths, &cfg, stop_rx);
            let mut client = h.etcd_client(None).await;
            for round in 1..=6 {
                until_elected(&view, &format!("round {round}")).await;
                let revoked = view.borrow().term.clone().expect("elected");
                let got = client.get(LEADER_KEY, None).await.unwrap();
                let lease = got.kvs().first().expect("the leader key").lease();
                client.lease_revoke(lease).await.unwrap();
                // From when the keeper knows the lease lost, the view claims
                // the term no longer than a scheduling delay.
                let t = Instant::now();
                let mut lost_at = None;
                loop {
                    // A new term (a campaigns again at once) is another claim.
                    let claimed = view.borrow().term.clone().filter(|t| *t == revoked);
                    let Some(term) = claimed else { break };
                    if !term.lease_held() {
                        let since = *lost_at.get_or_insert_with(Instant::now);
                        assert!(
                            since.elapsed() < Duration::from_millis(100),
                            "round {round}: the term was still claimed {:?} after its keeper lost the lease",
                            since.elapsed()
                        );
                    }
                    assert!(t.elapsed() < Duration::from_secs(10), "round {round}: the revoked term is still claimed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                eprintln!(
                    "round {round}: claim ended {:?} after the revoke, {} the keeper",
                    t.elapsed(),
                    if lost_at.is_some() { "found by" } else { "before" }
                );
            }
            stop_tx.send_replace(true);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }))
    });
}

/// A term whose etcd stops answering (a frozen member, as under a stalled
/// disk) stops being claimed before etcd could expire its lease, even
/// though every later call to etcd hangs: the end is published the moment
/// the round finds the term over, not when its next call gives up.
#[test]
fn a_term_is_not_claimed_while_its_etcd_hangs() {
    use hakube::cluster::election::LEADER_TTL_SECS;
    use tokio::sync::watch;

    let (h, paths, cfg) = host_for_elections();
    let etcd_pid = h.state()["components"]["etcd"]["pid"].as_u64().expect("etcd runs").to_string();
    h.within(|| {
        runtime().block_on(tokio::task::LocalSet::new().run_until(async {
            let (stop_tx, stop_rx) = watch::channel(false);
            let view = lone_election(&paths, &cfg, stop_rx);
            until_elected(&view, "at first").await;
            // Two keep-alives answered, so that the last one before the
            // freeze is at most a sixth of the TTL old.
            tokio::time::sleep(Duration::from_secs(4)).await;
            let term = view.borrow().term.clone().expect("still elected");
            // Thawed however the test ends, or the host's teardown waits on it.
            struct Thaw<'a>(&'a str);
            impl Drop for Thaw<'_> {
                fn drop(&mut self) {
                    sh("kill", &["-CONT", self.0]);
                }
            }
            assert!(sh("kill", &["-STOP", &etcd_pid]).status.success());
            let thaw = Thaw(&etcd_pid);
            let frozen = Instant::now();
            // etcd renewed the lease on receiving the last keep-alive, at
            // most a sixth of the TTL before the freeze: it may expire it
            // (once running again) this long after the freeze, no sooner.
            let ttl = Duration::from_secs(LEADER_TTL_SECS as u64);
            let expiry = ttl - ttl / 6;
            let mut lost_at = None;
            let ended = loop {
                let claimed = view.borrow().term.clone().filter(|t| *t == term);
                if claimed.is_none() {
                    break frozen.elapsed();
                }
                if !term.lease_held() {
                    let since = *lost_at.get_or_insert_with(Instant::now);
                    assert!(
                        since.elapsed() < Duration::from_millis(100),
                        "the term was still claimed {:?} after the agent let it go",
                        since.elapsed()
                    );
                }
                if frozen.elapsed() > expiry {
                    panic!("the term was still claimed {:?} after etcd froze", frozen.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            drop(thaw);
            eprintln!("claim ended {ended:?} after etcd froze (it may expire the lease {expiry:?} after)");
            // Once etcd answers again, a is elected again.
            until_elected(&view, "after etcd came back").await;
            stop_tx.send_replace(true);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }))
    });
}
