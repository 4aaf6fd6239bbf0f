//! The soak's schedule: a pure function of the seed, the length and the
//! purge toleration, so that the same seed replays the same faults at the
//! same offsets. The generator is SplitMix64, written out here rather than
//! taken from a crate, so that no dependency's update can change what a
//! seed means.

use std::fmt;
use std::time::Duration;

/// SplitMix64 (Steele, Lea and Flood, 2014).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[(self.next() % from.len() as u64) as usize]
    }
}

/// What a fault does to its host; each is undone after its hold (the kills
/// are instant: the agent restarts what it runs, and the soak starts a
/// killed agent again as systemd would).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every process of the host killed at once; the agent started again
    /// (the host boots) after the hold.
    PowerLoss,
    /// The host's link down for the hold.
    LinkCut,
    /// One component's process killed (SIGKILL).
    KillComponent(&'static str),
    /// The agent killed (SIGKILL); started again after the hold.
    KillAgent,
    /// The elected agent, whichever it is at that moment, killed; started
    /// again after the hold.
    KillLeader,
    /// The host's clock stepped by this many seconds, for the hold.
    ClockStep(i64),
    /// The filesystem of the master's etcd data directory filled, for the hold.
    FullDisk,
    /// This percentage of the host's incoming and outgoing packets dropped,
    /// for the hold.
    PacketLoss(u8),
}

/// The workload's own operations on the cluster, run beside the faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The master reset (`hakube reset`) and joined again with a new script.
    Rejoin(String),
    /// The cluster's load-balancer address changed, by a re-run on a master,
    /// to the API server of the named master.
    AddressChange { from_master: String, to: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    Fault(Fault),
    Op(Op),
}

/// One entry of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// From the start of the workload.
    pub at: Duration,
    pub what: What,
    /// The host, where the step has one (a leader kill finds its own).
    pub host: Option<String>,
    pub hold: Duration,
}

impl Step {
    pub fn end(&self) -> Duration {
        self.at + self.hold
    }

    fn is_master_fault(&self, masters: &[String]) -> bool {
        matches!(self.what, What::Fault(Fault::KillLeader))
            || (matches!(self.what, What::Fault(_)) && self.host.as_ref().is_some_and(|h| masters.contains(h)))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.host.as_deref().unwrap_or("leader");
        let at = self.at.as_secs();
        let hold = self.hold.as_secs();
        match &self.what {
            What::Fault(Fault::KillComponent(c)) => write!(f, "{at:>5}s  kill {c} on {host}"),
            What::Fault(Fault::PowerLoss) => write!(f, "{at:>5}s  power loss on {host} for {hold}s"),
            What::Fault(Fault::LinkCut) => write!(f, "{at:>5}s  link cut on {host} for {hold}s"),
            What::Fault(Fault::KillAgent) => write!(f, "{at:>5}s  kill the agent on {host}, down {hold}s"),
            What::Fault(Fault::KillLeader) => write!(f, "{at:>5}s  kill the elected agent, down {hold}s"),
            What::Fault(Fault::ClockStep(s)) => write!(f, "{at:>5}s  clock of {host} stepped {s:+}s for {hold}s"),
            What::Fault(Fault::FullDisk) => write!(f, "{at:>5}s  etcd's disk full on {host} for {hold}s"),
            What::Fault(Fault::PacketLoss(p)) => write!(f, "{at:>5}s  {p}% packet loss on {host} for {hold}s"),
            What::Op(Op::Rejoin(m)) => write!(f, "{at:>5}s  reset {m} and join it again"),
            What::Op(Op::AddressChange { from_master, to }) => {
                write!(f, "{at:>5}s  load-balancer address changed to {to}'s API server, from {from_master}")
            }
        }
    }
}

/// What the schedule is made for.
pub struct Shape {
    pub minutes: u64,
    pub masters: Vec<String>,
    pub workers: Vec<String>,
    /// The master whose etcd directory is a small filesystem of its own
    /// (the only one a full disk can hit).
    pub small_disk: String,
    /// The node that holds the appending application's volume: never out
    /// for longer than the toleration (a purge would take the volume with
    /// it, as the local-path provisioner says).
    pub volume_node: String,
    pub toleration: Duration,
}

/// How long after the last fault starts the run goes on: everything heals
/// in this tail.
const QUIET_TAIL: Duration = Duration::from_secs(45);
/// Nothing happens in the first seconds: the workload gets going.
const WARM_UP: Duration = Duration::from_secs(15);
/// How long the planner reserves for an operation, during which no fault
/// touches a master: an address change takes under a minute, a rejoin two
/// or three.
const ADDRESS_WINDOW: Duration = Duration::from_secs(90);
const REJOIN_WINDOW: Duration = Duration::from_secs(180);
/// A master is left alone this long around an operation's window.
const OP_MARGIN: Duration = Duration::from_secs(30);

const MASTER_COMPONENTS: [&str; 7] =
    ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "containerd", "kube-proxy"];
const WORKER_COMPONENTS: [&str; 3] = ["kubelet", "containerd", "kube-proxy"];

fn pick_host(rng: &mut Rng, free: &[&String]) -> Option<String> {
    (!free.is_empty()).then(|| (*rng.pick(free)).clone())
}

/// The schedule for `seed`: faults one or two at a time (never two on one
/// host), each bounded; a master rejoin and an address change in windows
/// where no fault touches a master.
pub fn plan(seed: u64, shape: &Shape) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let total = Duration::from_secs(shape.minutes * 60);
    let last_start = total.saturating_sub(QUIET_TAIL);
    let tol = shape.toleration.as_secs();
    let s = Duration::from_secs;

    // The operations first: at fixed fractions of the run, alternating.
    let mut steps: Vec<Step> = vec![];
    let ops = (shape.minutes / 20).max(1) * 2;
    let rejoinable: Vec<&String> = shape.masters.iter().skip(1).collect();
    for i in 0..ops {
        let at = s(total.as_secs() * (2 * i + 1) / (2 * ops + 1));
        let (what, hold) = if i % 2 == 0 {
            let (from, to) = (rng.pick(&shape.masters).clone(), rng.pick(&shape.masters).clone());
            (Op::AddressChange { from_master: from, to }, ADDRESS_WINDOW)
        } else {
            (Op::Rejoin((*rng.pick(&rejoinable)).clone()), REJOIN_WINDOW)
        };
        if at + hold + QUIET_TAIL > total || at < WARM_UP || rejoinable.is_empty() {
            continue;
        }
        let host = match &what {
            Op::Rejoin(m) => Some(m.clone()),
            Op::AddressChange { from_master, .. } => Some(from_master.clone()),
        };
        steps.push(Step { at, what: What::Op(what), host, hold });
    }

    let hosts: Vec<&String> = shape.masters.iter().chain(&shape.workers).collect();
    let mut faults: Vec<Step> = vec![];
    let mut t = WARM_UP;
    // After a fault, a pause of 5 to 20 s; after a slot that could take
    // none (two faults on, or none fits), 2 s.
    let mut pause = s(0);
    loop {
        t += pause;
        pause = s(2);
        if t >= last_start {
            break;
        }
        let active: Vec<&Step> = faults.iter().filter(|f| f.at <= t && t < f.end()).collect();
        if active.len() >= 2 {
            continue;
        }
        let busy = |h: &String| active.iter().any(|f| f.host.as_ref() == Some(h) || f.host.is_none());
        let master_active = active.iter().any(|f| f.is_master_fault(&shape.masters));
        let free: Vec<&String> = hosts.iter().copied().filter(|h| !busy(h)).collect();
        // The kind first, then a host it can hit.
        let (fault, host, hold) = match rng.range(0, 99) {
            0..=13 => {
                let Some(host) = pick_host(&mut rng, &free) else { continue };
                let long = rng.chance(25) && host != shape.volume_node;
                let hold = if long { rng.range(tol + 20, tol + 50) } else { rng.range(10, 40) };
                (Fault::PowerLoss, Some(host), hold)
            }
            14..=27 => {
                let Some(host) = pick_host(&mut rng, &free) else { continue };
                let long = rng.chance(25) && host != shape.volume_node;
                let hold = if long { rng.range(tol + 20, tol + 50) } else { rng.range(5, 30) };
                (Fault::LinkCut, Some(host), hold)
            }
            28..=41 => {
                let Some(host) = pick_host(&mut rng, &free) else { continue };
                let c = match shape.masters.contains(&host) {
                    true => *rng.pick(&MASTER_COMPONENTS),
                    false => *rng.pick(&WORKER_COMPONENTS),
                };
                (Fault::KillComponent(c), Some(host), 0)
            }
            42..=53 => {
                let Some(host) = pick_host(&mut rng, &free) else { continue };
                (Fault::KillAgent, Some(host), rng.range(2, 20))
            }
            // The leader is a master: never beside another master's fault.
            54..=65 if !master_active => (Fault::KillLeader, None, rng.range(2, 20)),
            54..=65 => continue,
            66..=77 => {
                let Some(host) = pick_host(&mut rng, &free) else { continue };
                let step = rng.range(30, 300) as i64;
                (Fault::ClockStep(if rng.chance(50) { step } else { -step }), Some(host), rng.range(20, 60))
            }
            78..=87 if free.contains(&&shape.small_disk) => {
                (Fault::FullDisk, Some(shape.small_disk.clone()), rng.range(10, 40))
            }
            78..=87 => continue,
            _ => {
                let Some(host) = pick_host(&mut rng, &free) else { continue };
                (Fault::PacketLoss(rng.range(10, 40) as u8), Some(host), rng.range(20, 60))
            }
        };
        let step = Step { at: t, what: What::Fault(fault), host, hold: s(hold) };
        // No fault touches a master while an operation may run.
        let overlaps = |o: &Step| o.at < step.end() + OP_MARGIN && t < o.end() + OP_MARGIN;
        if step.is_master_fault(&shape.masters) && steps.iter().any(overlaps) {
            continue;
        }
        faults.push(step);
        pause = s(rng.range(5, 20));
    }
    steps.extend(faults);
    steps.sort_by_key(|st| st.at);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(minutes: u64) -> Shape {
        Shape {
            minutes,
            masters: ["m1", "m2", "m3"].map(String::from).to_vec(),
            workers: ["w1", "w2"].map(String::from).to_vec(),
            small_disk: "m2".into(),
            volume_node: "w1".into(),
            toleration: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        assert_eq!(plan(7, &shape(60)), plan(7, &shape(60)));
        assert_ne!(plan(7, &shape(60)), plan(8, &shape(60)));
    }

    #[test]
    fn splitmix_matches_its_reference_values() {
        // The first outputs for seed 1234567 of the reference C code.
        let mut r = Rng::new(1234567);
        assert_eq!(r.next(), 6457827717110365317);
        assert_eq!(r.next(), 3203168211198807973);
    }

    #[test]
    fn every_schedule_keeps_the_rules() {
        for seed in 0..300 {
            let sh = shape(if seed % 3 == 0 { 60 } else { 5 });
            let steps = plan(seed, &sh);
            let faults: Vec<&Step> = steps.iter().filter(|s| matches!(s.what, What::Fault(_))).collect();
            let ops: Vec<&Step> = steps.iter().filter(|s| matches!(s.what, What::Op(_))).collect();
            assert!(faults.len() * 2 >= sh.minutes as usize * 3, "seed {seed}: {} faults", faults.len());
            assert!(ops.iter().any(|o| matches!(o.what, What::Op(Op::AddressChange { .. }))), "seed {seed}");
            if sh.minutes >= 10 {
                assert!(ops.iter().any(|o| matches!(o.what, What::Op(Op::Rejoin(_)))), "seed {seed}");
            }
            let total = Duration::from_secs(sh.minutes * 60);
            for (i, f) in faults.iter().enumerate() {
                assert!(f.at >= WARM_UP && f.at + QUIET_TAIL <= total, "seed {seed}: {f}");
                let at_once: Vec<&&Step> = faults[..i].iter().filter(|g| g.at <= f.at && f.at < g.end()).collect();
                assert!(at_once.len() < 2, "seed {seed}: a third fault at once: {f}");
                for g in &at_once {
                    assert!(f.host.is_none() || g.host.is_none() || f.host != g.host, "seed {seed}: {f} on {g}");
                    assert!(g.host.is_some() || !f.is_master_fault(&sh.masters), "seed {seed}: {f} during {g}");
                }
                let long = f.hold > sh.toleration;
                assert!(!(long && f.host.as_deref() == Some("w1")), "seed {seed}: the volume's node out: {f}");
                if matches!(f.what, What::Fault(Fault::FullDisk)) {
                    assert_eq!(f.host.as_deref(), Some("m2"), "seed {seed}");
                }
                for o in &ops {
                    let during = o.at < f.end() + OP_MARGIN && f.at < o.end() + OP_MARGIN;
                    assert!(!(during && f.is_master_fault(&sh.masters)), "seed {seed}: {f} during {o}");
                }
            }
        }
    }

    #[test]
    fn a_long_run_has_every_kind_of_fault() {
        let steps = plan(42, &shape(60));
        let kinds: std::collections::BTreeSet<String> = steps
            .iter()
            .filter_map(|s| match &s.what {
                What::Fault(f) => Some(format!("{f:?}").split('(').next().unwrap().to_owned()),
                What::Op(_) => None,
            })
            .collect();
        let all = ["ClockStep", "FullDisk", "KillAgent", "KillComponent", "KillLeader", "LinkCut", "PacketLoss"];
        for k in all.iter().chain(&["PowerLoss"]) {
            assert!(kinds.contains(*k), "{k} missing from {kinds:?}");
        }
        assert!(steps.iter().any(|s| s.hold > Duration::from_secs(60)), "an outage longer than the toleration");
    }
}
