use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;
use crate::queue::health::{Contact, HealthSettings};
use crate::spool::QueueId;

fn id(n: u64) -> QueueId {
    QueueId::from_parts(1_700_000_000_000 + n, (n % 1000) as u32, n)
}

const HEALTH: HealthSettings = HealthSettings {
    suspend_after: 3,
    first_probe_secs: 10,
    max_probe_secs: 40,
};

/// A destination's liveness over time: dead in [from, until).
#[derive(Clone, Debug)]
struct Outage {
    from: i64,
    until: i64,
}

/// The manager's side, simulated: messages, a retry wait, attempts that
/// take one tick, destinations that are down for a while.
struct Sim {
    s: Scheduler<u8, u64>,
    dest_of: HashMap<QueueId, u8>,
    num: HashMap<QueueId, u64>,
    outages: Vec<Outage>,
    delivered: BTreeSet<u64>,
    /// (dest, id, probe) started in this tick, finished next tick.
    running: Vec<(u8, QueueId, bool)>,
    /// Every start: (tick, dest, message, probe, suspended at start).
    starts: Vec<(i64, u8, u64, bool, bool)>,
    /// A message's pushes that have not yet become a start.
    pushed: HashMap<QueueId, u32>,
    /// Each waiting message's one current time (the spool index's part).
    wake: HashMap<QueueId, i64>,
    /// Messages parked somewhere (the spool index's mark).
    parked: BTreeSet<QueueId>,
    /// Attempts of this tick not yet ended.
    ending: Vec<QueueId>,
}

const RETRY: i64 = 25;

impl Sim {
    fn new(limits: Limits, outages: Vec<Outage>) -> Self {
        Self {
            s: Scheduler::new(limits, HEALTH),
            dest_of: HashMap::new(),
            num: HashMap::new(),
            outages,
            delivered: BTreeSet::new(),
            running: Vec::new(),
            starts: Vec::new(),
            pushed: HashMap::new(),
            wake: HashMap::new(),
            parked: BTreeSet::new(),
            ending: Vec::new(),
        }
    }

    /// What the manager does: park a message once.
    fn park(&mut self, dest: u8, q: QueueId) {
        if self.parked.insert(q) {
            self.s.park(dest, q);
        }
    }

    /// What the manager does: a new time goes to the scheduler, the same
    /// time again does not.
    fn wait(&mut self, q: QueueId, at: i64) {
        if self.wake.insert(q, at) != Some(at) {
            self.s.wait(q, at);
        }
    }

    fn clear(&mut self, q: &QueueId) {
        self.wake.remove(q);
    }

    fn alive(&self, dest: u8, t: i64) -> bool {
        let o = &self.outages[dest as usize];
        !(o.from <= t && t < o.until)
    }

    fn add(&mut self, n: u64, dest: u8, due: i64) {
        let q = id(n);
        self.dest_of.insert(q, dest);
        self.num.insert(q, n);
        self.wait(q, due);
    }

    /// What the manager does with a message it looks at.
    fn examine(&mut self, q: QueueId, t: i64) {
        let n = self.num[&q];
        if self.delivered.contains(&n) {
            return;
        }
        // The manager does not look at a message while it has a job out
        // (its `busy` count): not ready twice, not pushed while running.
        let out = self.pushed.get(&q).copied().unwrap_or(0) > 0
            || self.running.iter().any(|(_, r, _)| *r == q)
            || self.ending.contains(&q);
        if out {
            return;
        }
        let dest = self.dest_of[&q];
        match self.s.push(dest, q, n, t) {
            Push::Ready => *self.pushed.entry(q).or_default() += 1,
            Push::Overflow => {}
            Push::Suspended { .. } => self.defer(dest, q, t),
        }
    }

    fn defer(&mut self, dest: u8, q: QueueId, t: i64) {
        self.park(dest, q);
        self.wait(q, t + RETRY);
    }

    fn tick(&mut self, t: i64) {
        // Attempts started last tick end now.
        let ending = std::mem::take(&mut self.running);
        self.ending = ending.iter().map(|(_, q, _)| *q).collect();
        for (dest, q, probe) in ending {
            self.ending.retain(|e| *e != q);
            let alive = self.alive(dest, t);
            let contact = if alive {
                Contact::Reached
            } else {
                Contact::Failed
            };
            let f = self.s.finished(&dest, contact, "refused", probe, t, None);
            if alive {
                self.delivered.insert(self.num[&q]);
            } else {
                self.wait(q, t + RETRY);
                self.park(dest, q);
            }
            for (q, _) in f.defer {
                *self.pushed.get_mut(&q).unwrap() -= 1;
                self.defer(dest, q, t);
            }
            for q in f.reexamine {
                self.parked.remove(&q);
                self.clear(&q);
                self.examine(q, t);
            }
        }
        for (at, q) in self.s.take_due(t) {
            // Only the message's current time counts.
            if self.wake.get(&q) == Some(&at) {
                self.wake.remove(&q);
                self.examine(q, t);
            }
        }
        for q in self.s.refill() {
            self.examine(q, t);
        }
        for q in self.s.take_probes(t) {
            self.parked.remove(&q);
            self.clear(&q);
            self.examine(q, t);
        }
        while let Some(st) = self.s.next(t) {
            let suspended = !self.alive(st.dest, t) && st.probe;
            let left = self.pushed.get_mut(&st.id).unwrap();
            assert!(*left > 0, "a start without a push for {}", st.job);
            *left -= 1;
            assert!(
                !self.running.iter().any(|(_, q, _)| *q == st.id),
                "message {} started twice at once",
                st.job
            );
            self.starts.push((t, st.dest, st.job, st.probe, suspended));
            self.running.push((st.dest, st.id, st.probe));
        }
    }
}

fn outage() -> impl Strategy<Value = Outage> {
    prop_oneof![
        Just(Outage { from: 0, until: 0 }),
        (0i64..50, 1i64..200).prop_map(|(from, len)| Outage {
            from,
            until: from + len
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every message is attempted once per time it falls due (never twice
    /// at once, never without being due), and all are delivered once the
    /// outages are over; limits hold throughout.
    #[test]
    fn every_due_message_is_attempted_and_delivered(
        msgs in prop::collection::vec((0u8..4, 0i64..40), 1..120),
        outages in prop::collection::vec(outage(), 4),
        total in 1usize..6,
        per in 1usize..4,
        ready in 1usize..8,
    ) {
        let limits = Limits { total, per_destination: per, ready };
        let mut sim = Sim::new(limits, outages);
        for (n, (dest, due)) in msgs.iter().enumerate() {
            sim.add(n as u64, *dest, *due);
        }
        for t in 0..2_000 {
            sim.tick(t);
            prop_assert!(sim.running.len() <= total);
            let mut per_dest: BTreeMap<u8, usize> = BTreeMap::new();
            for (d, _, _) in &sim.running {
                *per_dest.entry(*d).or_default() += 1;
            }
            prop_assert!(per_dest.values().all(|&c| c <= per));
            if sim.delivered.len() == msgs.len() {
                break;
            }
        }
        prop_assert_eq!(sim.delivered.len(), msgs.len(), "starts: {:?}", sim.starts);
        prop_assert_eq!(sim.s.running(), 0);
    }

    /// While a destination is down and suspended, it gets probes only: at
    /// most one at a time, no closer together than the first back-off
    /// step, and never more attempts in total than the threshold, the
    /// attempts already under way and one per step.
    #[test]
    fn a_suspended_destination_gets_only_probes(
        count in 20u64..300,
        per in 1usize..6,
    ) {
        let limits = Limits { total: 50, per_destination: per, ready: 16 };
        let mut sim = Sim::new(limits, vec![Outage { from: 0, until: 1_000 }]);
        for n in 0..count {
            sim.add(n, 0, (n as i64) % 30);
        }
        for t in 0..1_000 {
            sim.tick(t);
        }
        let probes: Vec<i64> = sim.starts.iter().filter(|s| s.3).map(|s| s.0).collect();
        let others = sim.starts.iter().filter(|s| !s.3).count();
        prop_assert!(others <= (HEALTH.suspend_after as usize) + per,
            "{} attempts that were not probes", others);
        for w in probes.windows(2) {
            prop_assert!(w[1] - w[0] >= HEALTH.first_probe_secs, "probes at {:?}", probes);
        }
        // Doubling from 10 s capped at 40 s over ~1,000 s: at most ~26.
        prop_assert!(probes.len() <= 1_000 / 40 + 4, "{} probes", probes.len());
        prop_assert!(sim.delivered.is_empty());
    }

    /// With fewer attempt slots than busy destinations, each destination
    /// with mail ready gets a start within one round of the others.
    #[test]
    fn no_destination_starves(
        loads in prop::collection::vec(1u64..400, 2..6),
        total in 1usize..3,
    ) {
        let dests = loads.len();
        let limits = Limits { total, per_destination: 4, ready: 32 };
        let outages = vec![Outage { from: 0, until: 0 }; dests];
        let mut sim = Sim::new(limits, outages);
        let mut n = 0;
        for (d, &load) in loads.iter().enumerate() {
            for _ in 0..load {
                sim.add(n, d as u8, 0);
                n += 1;
            }
        }
        for t in 0..5_000 {
            sim.tick(t);
            if sim.delivered.len() as u64 == n {
                break;
            }
        }
        prop_assert_eq!(sim.delivered.len() as u64, n);
        // While a destination still has mail, the gap between two of its
        // starts is at most one start of every other destination.
        for d in 0..dests as u8 {
            let last = sim.starts.iter().rposition(|s| s.1 == d).unwrap();
            let mut since = 0usize;
            for s in &sim.starts[..=last] {
                if s.1 == d {
                    since = 0;
                } else {
                    since += 1;
                    prop_assert!(since < dests + total, "destination {} waited {} starts", d, since);
                }
            }
        }
    }
}

#[test]
fn a_release_makes_every_parked_message_due_at_once() {
    let mut s: Scheduler<&str, u64> = Scheduler::new(Limits::default(), HEALTH);
    for n in 0..3 {
        assert_eq!(s.push("mx", id(n), n, 0), Push::Ready);
    }
    for _ in 0..3 {
        s.next(0).unwrap();
    }
    for _ in 0..2 {
        s.finished(&"mx", Contact::Failed, "refused", false, 0, None);
    }
    assert_eq!(s.push("mx", id(3), 3, 0), Push::Ready);
    let f = s.finished(&"mx", Contact::Failed, "421 busy", false, 1, None);
    assert_eq!(f.change, Change::Suspended);
    assert_eq!(f.defer, vec![(id(3), 3)]);
    match s.push("mx", id(4), 4, 2) {
        Push::Suspended { job: 4, reason } => assert!(reason.contains("421 busy"), "{reason}"),
        other => panic!("{other:?}"),
    }
    for n in [3, 4] {
        s.park("mx", id(n));
    }
    assert_eq!(s.parked(), 2);
    assert_eq!(s.suspended(), 1);
    assert_eq!(s.next_wake(), Some(11));
    assert!(s.take_probes(10).is_empty());
    let probe = s.take_probes(11);
    assert_eq!(probe.len(), 1);
    let n = if probe[0] == id(3) { 3 } else { 4 };
    assert_eq!(s.push("mx", probe[0], n, 11), Push::Ready);
    let st = s.next(11).unwrap();
    assert!(st.probe);
    let f = s.finished(&"mx", Contact::Reached, "", true, 12, None);
    assert_eq!(f.change, Change::Released);
    assert_eq!(f.reexamine.len(), 1, "the other parked message");
    assert_eq!(s.suspended(), 0);
}

#[test]
fn a_full_ready_queue_keeps_ids_and_refills_as_it_drains() {
    let limits = Limits {
        total: 10,
        per_destination: 10,
        ready: 2,
    };
    let mut s: Scheduler<&str, u64> = Scheduler::new(limits, HEALTH);
    assert_eq!(s.push("a", id(0), 0, 0), Push::Ready);
    assert_eq!(s.push("a", id(1), 1, 0), Push::Ready);
    assert_eq!(s.push("a", id(2), 2, 0), Push::Overflow);
    assert_eq!(s.push("a", id(3), 3, 0), Push::Overflow);
    assert!(s.refill().is_empty(), "still full");
    s.next(0).unwrap();
    s.next(0).unwrap();
    assert_eq!(s.refill(), vec![id(2), id(3)]);
    assert_eq!(s.views(0)[0].depth, 2, "two running");
}

#[test]
fn a_config_change_takes_back_what_has_not_started() {
    let mut s: Scheduler<&str, u64> = Scheduler::new(
        Limits {
            total: 1,
            per_destination: 1,
            ready: 1,
        },
        HEALTH,
    );
    s.push("a", id(0), 0, 0);
    s.push("a", id(1), 1, 0);
    s.push("b", id(2), 2, 0);
    let started = s.next(0).unwrap();
    let (jobs, ids) = s.take_unstarted();
    assert_eq!(jobs.len(), 1);
    assert_eq!(ids, vec![id(1)]);
    assert!(s.next(0).is_none());
    s.finished(&started.dest, Contact::Reached, "", false, 0, None);
    assert!(s.views(0).is_empty());
}

fn pace(max_running: usize, per_sec: Option<u32>) -> Pace {
    Pace {
        max_running,
        rate: per_sec.map(|count| RateConfig { count, per_secs: 1 }),
    }
}

#[test]
fn a_destination_runs_at_most_its_own_connections_and_others_keep_theirs() {
    let mut s: Scheduler<&str, u64> = Scheduler::new(Limits::default(), HEALTH);
    for n in 0..10 {
        s.push_paced("slow", id(n), n, 0, pace(2, None));
        s.push_paced("fast", id(100 + n), n, 0, pace(5, None));
    }
    let mut started = BTreeMap::<&str, usize>::new();
    while let Some(st) = s.next_at(0) {
        *started.entry(st.dest).or_default() += 1;
    }
    assert_eq!(started, BTreeMap::from([("fast", 5), ("slow", 2)]));
    s.finished(&"slow", Contact::Reached, "", false, 0, None);
    let st = s.next_at(0).expect("a freed slot");
    assert_eq!(st.dest, "slow");
    assert!(s.next_at(0).is_none());
}

#[test]
fn a_rate_spaces_starts_evenly_and_a_late_start_earns_no_burst() {
    let mut s: Scheduler<&str, u64> = Scheduler::new(Limits::default(), HEALTH);
    for n in 0..5 {
        s.push_paced("mx", id(n), n, 0, pace(10, Some(20)));
    }
    // 20/s: one start per 50 ms.
    assert!(s.next_at(1_000).is_some());
    assert!(s.next_at(1_000).is_none());
    assert_eq!(s.paced(), 1);
    assert_eq!(s.next_paced_ms(), Some(1_050));
    assert!(s.next_at(1_049).is_none());
    assert!(s.next_at(1_050).is_some());
    // Asked much later: one start, then the spacing again from now.
    assert!(s.next_at(5_000).is_some());
    assert!(s.next_at(5_000).is_none());
    assert!(s.next_at(5_049).is_none());
    assert!(s.next_at(5_050).is_some());
    assert_eq!(s.next_paced_ms(), None, "one job left, not yet set aside");
    assert!(s.next_at(5_100).is_some());
    assert!(s.next_at(10_000).is_none(), "all five started");
}

#[test]
fn a_paced_destination_does_not_hold_up_the_others() {
    let mut s: Scheduler<&str, u64> = Scheduler::new(Limits::default(), HEALTH);
    s.push_paced("slow", id(0), 0, 0, pace(10, Some(1)));
    s.push_paced("slow", id(1), 1, 0, pace(10, Some(1)));
    s.next_at(0).unwrap();
    for n in 2..6 {
        s.push_paced("free", id(n), n, 0, pace(10, None));
    }
    let dests: Vec<&str> = std::iter::from_fn(|| s.next_at(10).map(|st| st.dest)).collect();
    assert_eq!(dests, ["free"; 4]);
    assert_eq!(s.next_at(1_000).map(|st| st.dest), Some("slow"));
}

#[test]
fn a_suspend_rule_stops_starts_until_its_time_then_one_probe_goes() {
    let mut s: Scheduler<&str, u64> = Scheduler::new(Limits::default(), HEALTH);
    for n in 0..3 {
        s.push_paced("mx", id(n), n, 0, pace(1, None));
    }
    s.next_at(0).unwrap();
    let throttle = Throttle::Suspend {
        until: 60,
        reply: "421 4.7.0 Try again later".into(),
    };
    let f = s.finished(&"mx", Contact::Reached, "", false, 0, Some(throttle));
    assert_eq!(f.change, Change::Suspended);
    assert_eq!(f.defer.len(), 2, "what was ready is deferred");
    assert!(f.reexamine.is_empty());
    let views = s.views(10);
    assert!(views[0].suspended);
    let shown = views[0].throttle.clone().unwrap_or_default();
    assert!(
        shown.starts_with("suspended until 1970-01-01T00:01:00Z: 421 4.7.0"),
        "{shown}"
    );
    assert_eq!(s.throttled(10), (1, 0));
    match s.push_paced("mx", id(3), 3, 59, pace(1, None)) {
        Push::Suspended { reason, .. } => assert!(reason.contains("Try again later"), "{reason}"),
        other => panic!("{other:?}"),
    }
    s.park("mx", id(3));
    assert_eq!(s.next_wake(), Some(60));
    assert!(s.take_probes(59).is_empty());
    let probe = s.take_probes(60);
    assert_eq!(probe, [id(3)]);
    assert_eq!(s.push_paced("mx", id(3), 3, 60, pace(1, None)), Push::Ready);
    let st = s.next_at(60_000).unwrap();
    assert!(st.probe);
    let f = s.finished(&"mx", Contact::Reached, "", true, 61, None);
    assert_eq!(f.change, Change::Released);
    assert_eq!(s.throttled(61), (0, 0));
}

#[test]
fn a_slow_rule_changes_the_rate_for_its_duration() {
    let mut s: Scheduler<&str, u64> = Scheduler::new(Limits::default(), HEALTH);
    for n in 0..4 {
        s.push_paced("mx", id(n), n, 0, pace(10, None));
    }
    s.next_at(0).unwrap();
    let slow = Throttle::Slow {
        until: 100,
        rate: RateConfig {
            count: 1,
            per_secs: 60,
        },
    };
    let f = s.finished(&"mx", Contact::Reached, "", false, 0, Some(slow));
    assert_eq!(f.change, Change::None);
    assert_eq!(s.throttled(0), (0, 1));
    assert!(s.next_at(59_999).is_none(), "one a minute from now");
    assert!(s.next_at(60_000).is_some());
    assert!(
        s.next_at(100_000).is_some(),
        "its own rate again after 100 s"
    );
    assert!(s.next_at(100_000).is_some());
    assert_eq!(s.views(100)[0].throttle, None);
}
