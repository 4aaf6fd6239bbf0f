//! The supervisor's restart, backoff and reload logic against a recording
//! fake process, in paused time: seconds of backoff cost nothing.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::{sleep, Instant};

use super::*;

/// How one fake process lives.
#[derive(Clone, Copy)]
enum Life {
    ExitAfter(Duration),
    UntilStopped,
}

#[derive(Default)]
struct Record {
    /// When each start happened, with its arguments.
    starts: Vec<(Instant, Vec<String>)>,
    stops: Vec<Instant>,
    exits: Vec<Instant>,
}

#[derive(Clone)]
struct Fake {
    script: Rc<RefCell<VecDeque<Life>>>,
    record: Rc<RefCell<Record>>,
}

struct FakeChild {
    life: Life,
    record: Rc<RefCell<Record>>,
}

impl Runner for Fake {
    type Child = FakeChild;
    fn start(&self, _binary: &std::path::Path, args: &[String], _comp: Component) -> std::io::Result<FakeChild> {
        self.record.borrow_mut().starts.push((Instant::now(), args.to_vec()));
        let life = self.script.borrow_mut().pop_front().unwrap_or(Life::UntilStopped);
        Ok(FakeChild { life, record: self.record.clone() })
    }
}

impl Running for FakeChild {
    fn pid(&self) -> Option<u32> {
        Some(4242)
    }

    async fn exited(&mut self) -> String {
        match self.life {
            Life::ExitAfter(d) => {
                sleep(d).await;
                self.record.borrow_mut().exits.push(Instant::now());
                "exit status: 1".into()
            }
            Life::UntilStopped => std::future::pending().await,
        }
    }

    async fn stop(&mut self) {
        self.record.borrow_mut().stops.push(Instant::now());
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    paths: Paths,
    state: Shared,
    dirty: Rc<Notify>,
    fake: Fake,
}

const COMP: Component = Component::KubeScheduler;

impl Harness {
    fn new(script: &[Life]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        // A binary to find: the fake never runs it.
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let exe = bundle.join(COMP.name());
        std::fs::write(&exe, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        Harness {
            paths: Paths::new(dir.path().join("root")),
            bundle,
            _dir: dir,
            state: Rc::new(RefCell::new(State::default())),
            dirty: Rc::new(Notify::new()),
            fake: Fake { script: Rc::new(RefCell::new(script.iter().copied().collect())), record: Default::default() },
        }
    }

    fn launch(&self, args: &[&str], after: &[Component]) -> Launch {
        Launch {
            bundle: Some(self.bundle.clone()),
            version: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            files: vec![],
            fingerprint: String::new(),
            after: after.to_vec(),
            refused: None,
            cgroup: None,
        }
    }

    fn run(&self, launch: Launch) -> watch::Sender<Option<Launch>> {
        self.run_left(launch, None)
    }

    /// As [`Harness::run`], with a process a predecessor left running.
    fn run_left(&self, launch: Launch, left: Option<Left<FakeChild>>) -> watch::Sender<Option<Launch>> {
        let (tx, rx) = watch::channel(Some(launch));
        let (paths, state, dirty) = (self.paths.clone(), self.state.clone(), self.dirty.clone());
        let task = supervise(COMP, rx, paths, state, dirty, self.fake.clone(), left);
        tokio::task::spawn_local(task);
        tx
    }

    fn left(&self, life: Life) -> FakeChild {
        FakeChild { life, record: self.fake.record.clone() }
    }

    /// Seconds between one start and the next.
    fn gaps(&self) -> Vec<u64> {
        let r = self.fake.record.borrow();
        r.starts.windows(2).map(|w| (w[1].0 - w[0].0).as_secs()).collect()
    }

    fn component(&self) -> ComponentState {
        self.state.borrow().components.get(COMP.name()).cloned().expect("registered")
    }
}

async fn local(f: impl std::future::Future<Output = ()>) {
    tokio::task::LocalSet::new().run_until(f).await
}

const S: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn a_crashing_component_restarts_with_a_doubling_backoff_up_to_its_cap() {
    local(async {
        let h = Harness::new(&[Life::ExitAfter(Duration::ZERO); 8]);
        let _tx = h.run(h.launch(&["--v=2"], &[]));
        sleep(300 * S).await;
        assert_eq!(h.gaps(), [1, 2, 4, 8, 16, 30, 30, 30], "backoff between the nine starts");
        let c = h.component();
        assert_eq!(c.restarts, 8);
        assert_eq!(c.last_exit.as_deref(), Some("exit status: 1"));
        assert_eq!((c.phase, c.pid, c.healthy), (Phase::Starting, Some(4242), false), "running, not yet probed");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_component_that_ran_for_a_while_is_restarted_after_the_shortest_backoff() {
    local(async {
        let quick = Life::ExitAfter(Duration::ZERO);
        let h = Harness::new(&[quick, quick, quick, Life::ExitAfter(61 * S)]);
        let _tx = h.run(h.launch(&[], &[]));
        sleep(300 * S).await;
        let gaps = h.gaps();
        assert_eq!(gaps[..3], [1, 2, 4]);
        // The fourth ran 61 s (longer than STABLE_AFTER) and came back 1 s
        // after it exited, not after 8.
        assert_eq!(gaps[3], 61 + 1, "{gaps:?}");
        assert_eq!(gaps.len(), 4, "then it stays up");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_new_launch_restarts_it_at_once_and_none_stops_it() {
    local(async {
        let h = Harness::new(&[]);
        let tx = h.run(h.launch(&["--old"], &[]));
        sleep(5 * S).await;
        let t = Instant::now();
        tx.send_replace(Some(h.launch(&["--new"], &[])));
        sleep(S).await;
        {
            let r = h.fake.record.borrow();
            assert_eq!(r.stops, [t], "the old process stopped at once");
            assert_eq!(r.starts.len(), 2);
            assert_eq!(r.starts[1], (t, vec!["--new".to_owned()]), "and the new one started without a backoff");
        }
        tx.send_replace(None);
        sleep(S).await;
        assert_eq!(h.fake.record.borrow().stops.len(), 2);
        let c = h.component();
        assert_eq!((c.phase, c.pid, c.restarts), (Phase::Stopped, None, 0), "a stop is not a restart");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn it_starts_only_once_what_it_needs_is_healthy() {
    local(async {
        let h = Harness::new(&[]);
        let _tx = h.run(h.launch(&[], &[Component::Etcd]));
        sleep(60 * S).await;
        assert!(h.fake.record.borrow().starts.is_empty(), "started before etcd was healthy");
        assert_eq!(h.component().message.as_deref(), Some("waiting for etcd to be healthy"));
        update(&h.state, &h.dirty, Component::Etcd, |s| {
            s.phase = Phase::Running;
            s.healthy = true;
        });
        let t = Instant::now();
        sleep(S).await;
        let r = h.fake.record.borrow();
        assert_eq!(r.starts.len(), 1);
        assert!(r.starts[0].0 - t <= Duration::from_millis(200), "started within one look");
    })
    .await
}

/// A launch told apart by its one argument, from `bundle`.
fn launch_from(bundle: Option<&str>, arg: &str) -> Launch {
    Launch {
        bundle: bundle.map(Into::into),
        version: None,
        args: vec![arg.to_owned()],
        files: vec![],
        fingerprint: arg.to_owned(),
        after: vec![],
        refused: None,
        cgroup: None,
    }
}

#[test]
fn a_reload_touches_only_what_changed() {
    let launch = |arg: &str| launch_from(None, arg);
    use Component::*;
    let running: BTreeMap<Component, Option<Launch>> = [
        (Etcd, Some(launch("a"))),
        (KubeApiserver, Some(launch("a"))),
        (Kubelet, Some(launch("a"))),
        (KubeScheduler, None),
    ]
    .into();
    let wanted: BTreeMap<Component, Launch> = [
        (Etcd, launch("a")),          // as it runs: left alone
        (KubeApiserver, launch("b")), // changed: relaunched
        // Kubelet no longer wanted: stopped
        (KubeScheduler, launch("a")), // stopped, wanted again
        (KubeProxy, launch("a")),     // new: a task of its own
    ]
    .into();
    let plan = reload_plan(&running, wanted);
    let expected: BTreeMap<Component, Change> = [
        (KubeApiserver, Change::Relaunch(Some(launch("b")))),
        (Kubelet, Change::Relaunch(None)),
        (KubeScheduler, Change::Relaunch(Some(launch("a")))),
        (KubeProxy, Change::Start(launch("a"))),
    ]
    .into();
    assert_eq!(plan, expected);
    // Nothing wanted: every running one stops, the stopped one stays so.
    let none: BTreeMap<Component, Change> =
        [Etcd, KubeApiserver, Kubelet].into_iter().map(|c| (c, Change::Relaunch(None))).collect();
    assert_eq!(reload_plan(&running, BTreeMap::new()), none);
}

#[test]
fn an_upgrade_that_does_not_change_etcd_restarts_no_member() {
    let launch = |bundle: &str, arg: &str| launch_from(Some(bundle), arg);
    let running: BTreeMap<Component, Option<Launch>> = [(Component::Etcd, Some(launch("/old", "a")))].into();
    let plan = |wanted: Launch, same: bool| {
        let mut wanted: BTreeMap<Component, Launch> = [(Component::Etcd, wanted)].into();
        keep_identical_etcd(&running, &mut wanted, |_, _, name| {
            assert_eq!(name, "etcd");
            same
        });
        reload_plan(&running, wanted)
    };
    assert_eq!(plan(launch("/new", "a"), true), BTreeMap::new(), "the same binary: left as it runs");
    let moved = [(Component::Etcd, Change::Relaunch(Some(launch("/new", "a"))))].into();
    assert_eq!(plan(launch("/new", "a"), false), moved, "another etcd: restarted from the new bundle");
    let changed = [(Component::Etcd, Change::Relaunch(Some(launch("/new", "b"))))].into();
    assert_eq!(plan(launch("/new", "b"), true), changed, "the same binary, another command line: restarted");
}

#[test]
fn the_same_etcd_is_told_by_the_manifests_or_else_by_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = ["a", "b", "c"].map(|n| dir.path().join(n));
    for (d, bytes) in [(&a, "etcd 3.6.17"), (&b, "etcd 3.6.17"), (&c, "etcd 3.7.0")] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("etcd"), bytes).unwrap();
    }
    // Directories given by hand: their files are compared.
    assert!(same_member(&a, &b, "etcd"));
    assert!(!same_member(&a, &c, "etcd"));
    assert!(!same_member(&a, &b, "kubelet"), "a binary in neither is never the same");
}

#[tokio::test(start_paused = true)]
async fn a_process_left_running_as_launched_is_adopted_without_a_start_or_a_wait() {
    local(async {
        let h = Harness::new(&[]);
        // etcd is not healthy (yet): an adopted API server runs on anyway.
        let tx = h.run_left(h.launch(&["--same"], &[Component::Etcd]), Some(Left::Adopt(h.left(Life::UntilStopped))));
        sleep(5 * S).await;
        assert!(h.fake.record.borrow().starts.is_empty(), "not started again");
        assert!(h.fake.record.borrow().stops.is_empty(), "nor stopped");
        let c = h.component();
        assert_eq!(
            (c.phase, c.pid, c.healthy),
            (Phase::Starting, Some(4242), false),
            "supervised, healthy once probed"
        );
        // It is supervised like any other: a new launch replaces it.
        tx.send_replace(Some(h.launch(&["--new"], &[])));
        sleep(S).await;
        let r = h.fake.record.borrow();
        assert_eq!((r.stops.len(), r.starts.len()), (1, 1));
        assert_eq!(r.starts[0].1, ["--new"]);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn an_adopted_process_that_exits_is_restarted_as_any_other() {
    local(async {
        let h = Harness::new(&[]);
        let _tx = h.run_left(h.launch(&["--a"], &[]), Some(Left::Adopt(h.left(Life::ExitAfter(10 * S)))));
        sleep(12 * S).await;
        let r = h.fake.record.borrow();
        assert_eq!(r.exits.len(), 1);
        assert_eq!(r.starts.len(), 1, "started after its backoff");
        assert_eq!(r.starts[0].0 - r.exits[0], BACKOFF_START);
        drop(r);
        assert_eq!(h.component().restarts, 1);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_process_left_running_otherwise_is_stopped_before_its_replacement_starts() {
    local(async {
        let h = Harness::new(&[]);
        let t = Instant::now();
        let _tx = h.run_left(h.launch(&["--new"], &[]), Some(Left::Replace(h.left(Life::UntilStopped))));
        sleep(S).await;
        let r = h.fake.record.borrow();
        assert_eq!(r.stops, [t], "the old process stopped first");
        assert_eq!(r.starts.len(), 1);
        assert!(r.starts[0].0 >= r.stops[0]);
        assert_eq!(r.starts[0].1, ["--new"]);
    })
    .await
}
