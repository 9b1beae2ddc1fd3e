//! What to send next (DESIGN.md §6), as pure bookkeeping: the time is
//! passed in and nothing here does I/O, so the rules are property-tested.
//!
//! - Messages that wait for a time sit in a timer index (due second ->
//!   ids): O(log n) to set or take, whatever the backlog. A message's
//!   current time is the caller's to keep (the spool index keeps it, in
//!   four bytes, see `index::Entry`): an entry whose time was moved or
//!   cleared is told apart, and dropped, when it comes due. So a waiting
//!   message costs its id once, not a set entry plus a map entry.
//! - Messages due now sit in a bounded ready queue per destination; past
//!   the bound only their ids are kept (`overflow`) and loaded again as the
//!   ready queue drains, so a million messages for one place cost their
//!   ids, not their envelopes.
//! - Destinations take turns (round robin over those with work and a free
//!   slot), within a per-destination and a total limit of attempts: a
//!   destination with a million messages cannot delay one to another.
//! - Each destination has its own pace (traffic shaping): at most
//!   `max_running` attempts at once and, with a rate, one start per
//!   interval (GCRA without a burst: starts evenly spaced, and a late
//!   start does not earn a catch-up burst). A destination waiting for its
//!   next slot is set aside with that time, not polled.
//! - A throttle rule (a remote reply asking us to back off) suspends a
//!   destination for a while (see `health::Health::hold`) or slows it to
//!   another rate for a while.
//! - A suspended destination (see `health`) gets no attempts but one probe
//!   per back-off step; its mail is deferred and parked by id, and all of
//!   it is due again the moment a probe gets through. A message is parked
//!   once, at one destination: the caller keeps the mark (the spool index
//!   does), so the parked ids are a list, not a set.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

use super::health::{Change, Contact, Gate, Health, HealthSettings};
use crate::spool::QueueId;
use mailrelay_crds::config::RateConfig;

/// One destination's shaping, as the scheduler applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pace {
    /// Attempts under way at once.
    pub max_running: usize,
    /// Starts per period; `None`: as fast as the slots allow.
    pub rate: Option<RateConfig>,
}

/// A throttle rule's reaction, decided by the attempt that saw the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Throttle {
    /// No attempts until `until` (unix seconds), then a probe.
    Suspend { until: i64, reply: String },
    /// `rate` instead of the destination's own until `until`.
    Slow { until: i64, rate: RateConfig },
}

/// Limits on attempts and on what is kept loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Attempts under way, over all destinations.
    pub total: usize,
    /// Attempts under way to one destination.
    pub per_destination: usize,
    /// Loaded jobs kept ready per destination; beyond, ids only.
    pub ready: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            total: 100,
            per_destination: 20,
            ready: 256,
        }
    }
}

/// Messages waiting for a time, by due unix second.
#[derive(Default)]
struct Timers {
    due: BTreeMap<i64, Vec<QueueId>>,
}

impl Timers {
    fn set(&mut self, id: QueueId, at: i64) {
        self.due.entry(at).or_default().push(id);
    }

    fn take_due(&mut self, now: i64) -> Vec<(i64, QueueId)> {
        let mut out = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if *entry.key() > now {
                break;
            }
            let (at, ids) = entry.remove_entry();
            out.extend(ids.into_iter().map(|id| (at, id)));
        }
        out
    }

    fn next(&self) -> Option<i64> {
        self.due.first_key_value().map(|(at, _)| *at)
    }
}

struct Dest<J> {
    ready: VecDeque<(QueueId, J)>,
    overflow: VecDeque<QueueId>,
    /// Deferred while suspended; due again at release.
    parked: Vec<QueueId>,
    running: usize,
    health: Health,
    /// In the round-robin ring, or set aside until its next rate slot.
    in_turn: bool,
    pace: Pace,
    /// GCRA: when the next start may go (unix ms).
    next_start_ms: i64,
    /// Set aside until `next_start_ms` (see `Scheduler::paced`).
    paced: bool,
    /// A Slow throttle rule in force: until when (unix seconds), and the rate.
    slowed: Option<(i64, RateConfig)>,
}

impl<J> Default for Dest<J> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            overflow: VecDeque::new(),
            parked: Vec::new(),
            running: 0,
            health: Health::default(),
            in_turn: false,
            pace: Pace {
                max_running: 1,
                rate: None,
            },
            next_start_ms: 0,
            paced: false,
            slowed: None,
        }
    }
}

impl<J> Dest<J> {
    fn is_idle(&self) -> bool {
        self.ready.is_empty()
            && self.overflow.is_empty()
            && self.parked.is_empty()
            && self.running == 0
            && self.health.is_clean()
            && self.slowed.is_none()
    }

    /// The rate in force at `now` (unix seconds).
    fn rate(&self, now: i64) -> Option<RateConfig> {
        match self.slowed {
            Some((until, rate)) if now < until => Some(rate),
            _ => self.pace.rate,
        }
    }
}

/// What became of a pushed job.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push<J> {
    /// Ready: it starts when its turn comes.
    Ready,
    /// The ready queue is full: only the id is kept, the job is dropped
    /// and its message is loaded again later (`refill`).
    Overflow,
    /// The destination is suspended: defer the job with this reason and
    /// `park` its message.
    Suspended { job: J, reason: String },
}

/// An attempt to start now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Start<K, J> {
    pub dest: K,
    pub id: QueueId,
    pub job: J,
    /// The one probe of a suspended destination.
    pub probe: bool,
}

/// What an attempt's end asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finished<J> {
    pub change: Change,
    /// The destination was just suspended: these ready jobs are to be
    /// deferred (and their messages parked) …
    pub defer: Vec<(QueueId, J)>,
    /// … and these messages, whose ids only were kept, looked at again.
    /// After an attempt got through: the parked messages, due now.
    pub reexamine: Vec<QueueId>,
    /// Just suspended: the messages parked there while it was failing.
    pub now_suspended: Vec<QueueId>,
}

/// One destination as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DestView<K> {
    pub dest: K,
    pub suspended: bool,
    pub pace: Pace,
    /// A throttle rule in force: what it does and until when.
    pub throttle: Option<String>,
    /// Messages ready, waiting as ids, parked, or being attempted.
    pub depth: usize,
    pub running: usize,
    pub last_error: Option<String>,
    pub next_probe: Option<i64>,
}

pub(crate) struct Scheduler<K, J> {
    timers: Timers,
    dests: HashMap<K, Dest<J>>,
    /// Destinations that may have a job to start, in turn order.
    turn: VecDeque<K>,
    /// Destinations waiting for their next rate slot (unix ms).
    paced: Vec<(i64, K)>,
    running: usize,
    limits: Limits,
    health: HealthSettings,
}

impl<K: Clone + Eq + Hash, J> Scheduler<K, J> {
    pub(crate) fn new(limits: Limits, health: HealthSettings) -> Self {
        Self {
            timers: Timers::default(),
            dests: HashMap::new(),
            turn: VecDeque::new(),
            paced: Vec::new(),
            running: 0,
            limits: Limits {
                total: limits.total.max(1),
                per_destination: limits.per_destination.max(1),
                ready: limits.ready.max(1),
            },
            health,
        }
    }

    pub(crate) fn set_health(&mut self, health: HealthSettings) {
        self.health = health;
    }

    /// Look at `id` again at `at` (unix seconds). Call it only when `at`
    /// is a new time for `id`: an earlier entry stays until it comes due.
    pub(crate) fn wait(&mut self, id: QueueId, at: i64) {
        self.timers.set(id, at);
    }

    /// The timer entries whose time has come, with that time: the caller
    /// drops those that are no longer their message's time.
    pub(crate) fn take_due(&mut self, now: i64) -> Vec<(i64, QueueId)> {
        self.timers.take_due(now)
    }

    /// When the first destination set aside for its rate has its next
    /// slot (unix ms).
    pub(crate) fn next_paced_ms(&self) -> Option<i64> {
        self.paced.iter().map(|(at, _)| *at).min()
    }

    /// When something is next due: a timer or a probe.
    pub(crate) fn next_wake(&self) -> Option<i64> {
        let probe = self
            .dests
            .values()
            .filter(|d| !d.parked.is_empty())
            .filter_map(|d| d.health.next_probe())
            .min();
        match (self.timers.next(), probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Attempts under way.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    /// Offer `job` with the default pace (the limits' per destination).
    #[cfg(test)]
    pub(crate) fn push(&mut self, dest: K, id: QueueId, job: J, now: i64) -> Push<J> {
        let pace = Pace {
            max_running: self.limits.per_destination,
            rate: None,
        };
        self.push_paced(dest, id, job, now, pace)
    }

    /// Offer `job` (for message `id`) to `dest`, whose shaping is `pace`
    /// (the latest push's pace is the one in force).
    pub(crate) fn push_paced(
        &mut self,
        dest: K,
        id: QueueId,
        job: J,
        now: i64,
        pace: Pace,
    ) -> Push<J> {
        let limit = self.limits.ready;
        let d = self.dests.entry(dest.clone()).or_default();
        d.pace = Pace {
            max_running: pace.max_running.max(1),
            rate: pace.rate,
        };
        match d.health.gate(now) {
            Gate::Closed => {
                return Push::Suspended {
                    job,
                    reason: reason(&d.health),
                };
            }
            // One candidate for the probe is enough.
            Gate::Probe if !d.ready.is_empty() => {
                return Push::Suspended {
                    job,
                    reason: reason(&d.health),
                };
            }
            Gate::Probe | Gate::Open => {}
        }
        if d.ready.len() >= limit {
            d.overflow.push_back(id);
            return Push::Overflow;
        }
        d.ready.push_back((id, job));
        if !d.in_turn {
            d.in_turn = true;
            self.turn.push_back(dest);
        }
        Push::Ready
    }

    /// Keep `id` (deferred because `dest` could not be reached) until
    /// `dest` is reached again. Call it only for a message not parked
    /// already (see the module comment).
    pub(crate) fn park(&mut self, dest: K, id: QueueId) {
        self.dests.entry(dest).or_default().parked.push(id);
    }

    /// Every parked id, for a new routing (config change): the caller
    /// looks at each again.
    pub(crate) fn take_parked(&mut self) -> Vec<QueueId> {
        let mut out = Vec::new();
        for d in self.dests.values_mut() {
            out.append(&mut d.parked);
        }
        self.dests.retain(|_, d| !d.is_idle());
        out
    }

    /// The next attempt to start at `now` (unix seconds).
    #[cfg(test)]
    pub(crate) fn next(&mut self, now: i64) -> Option<Start<K, J>> {
        self.next_at(now.saturating_mul(1000))
    }

    /// Destinations whose rate slot has come go back in turn.
    fn wake_paced(&mut self, now_ms: i64) {
        let dests = &mut self.dests;
        let turn = &mut self.turn;
        self.paced.retain(|(at, key)| {
            if *at > now_ms {
                return true;
            }
            if let Some(d) = dests.get_mut(key)
                && d.paced
            {
                d.paced = false;
                turn.push_back(key.clone());
            }
            false
        });
    }

    /// The next attempt to start at `now_ms` (unix ms), taking
    /// destinations in turn.
    pub(crate) fn next_at(&mut self, now_ms: i64) -> Option<Start<K, J>> {
        let now = now_ms.div_euclid(1000);
        self.wake_paced(now_ms);
        for _ in 0..self.turn.len() {
            if self.running >= self.limits.total {
                return None;
            }
            let key = self.turn.pop_front()?;
            let Some(d) = self.dests.get_mut(&key) else {
                continue;
            };
            let gate = d.health.gate(now);
            let blocked = match gate {
                Gate::Open => d.running >= d.pace.max_running,
                Gate::Probe => false,
                Gate::Closed => true,
            };
            if d.ready.is_empty() || blocked {
                // Back in the ring when a slot frees or work arrives.
                d.in_turn = false;
                continue;
            }
            let rate = d.rate(now);
            if rate.is_some() && d.next_start_ms > now_ms {
                // Still in turn, as far as pushes and ends are concerned:
                // it comes back at its slot.
                d.paced = true;
                self.paced.push((d.next_start_ms, key));
                continue;
            }
            let Some((id, job)) = d.ready.pop_front() else {
                d.in_turn = false;
                continue;
            };
            if let Some(rate) = rate {
                let interval = i64::try_from(rate.interval_ms()).unwrap_or(i64::MAX);
                d.next_start_ms = d.next_start_ms.max(now_ms).saturating_add(interval);
            }
            let probe = gate == Gate::Probe;
            if probe {
                d.health.probe_started();
            }
            d.running += 1;
            self.running += 1;
            if d.ready.is_empty() {
                d.in_turn = false;
            } else {
                self.turn.push_back(key.clone());
            }
            return Some(Start {
                dest: key,
                id,
                job,
                probe,
            });
        }
        None
    }

    /// An attempt to `dest` ended with `contact` (`reason`: its last
    /// error), and `throttle` if a reply matched a throttle rule.
    pub(crate) fn finished(
        &mut self,
        dest: &K,
        contact: Contact,
        reason: &str,
        probe: bool,
        now: i64,
        throttle: Option<Throttle>,
    ) -> Finished<J> {
        self.running = self.running.saturating_sub(1);
        let mut out = Finished {
            change: Change::None,
            defer: Vec::new(),
            reexamine: Vec::new(),
            now_suspended: Vec::new(),
        };
        let Some(d) = self.dests.get_mut(dest) else {
            return out;
        };
        d.running = d.running.saturating_sub(1);
        let was_suspended = d.health.is_suspended();
        out.change = d.health.record(contact, reason, probe, now, &self.health);
        if d.slowed.is_some_and(|(until, _)| now >= until) {
            d.slowed = None;
        }
        match throttle {
            Some(Throttle::Suspend { until, reply }) => {
                let already = was_suspended && out.change != Change::Released;
                d.health.hold(until, &reply);
                out.change = if already {
                    Change::None
                } else {
                    Change::Suspended
                };
            }
            Some(Throttle::Slow { until, rate }) => {
                d.slowed = Some((until, rate));
                // The slower rate counts from now.
                let interval = i64::try_from(rate.interval_ms()).unwrap_or(i64::MAX);
                d.next_start_ms = now.saturating_mul(1000).saturating_add(interval);
            }
            None => {}
        }
        if out.change == Change::Suspended {
            out.now_suspended = d.parked.clone();
            out.defer = d.ready.drain(..).collect();
            out.reexamine = d.overflow.drain(..).collect();
        } else if contact == Contact::Reached && !d.health.is_suspended() {
            // It takes mail: what waits only because it could not be
            // reached goes now (a release, or failures short of one).
            out.reexamine = std::mem::take(&mut d.parked);
        }
        if !d.ready.is_empty() && !d.in_turn {
            d.in_turn = true;
            self.turn.push_back(dest.clone());
        }
        if d.is_idle() {
            self.dests.remove(dest);
        }
        out
    }

    /// Ids to load again: overflow of destinations whose ready queue ran
    /// below half its bound.
    pub(crate) fn refill(&mut self) -> Vec<QueueId> {
        let half = self.limits.ready.div_ceil(2);
        let mut out = Vec::new();
        for d in self.dests.values_mut() {
            if d.ready.len() >= half || d.health.is_suspended() {
                continue;
            }
            let take = self.limits.ready - d.ready.len();
            let n = take.min(d.overflow.len());
            out.extend(d.overflow.drain(..n));
        }
        out
    }

    /// Suspended destinations whose probe is due but that have nothing
    /// ready: one parked message each, to be looked at now (and pushed,
    /// where it becomes the probe).
    pub(crate) fn take_probes(&mut self, now: i64) -> Vec<QueueId> {
        let mut out = Vec::new();
        for d in self.dests.values_mut() {
            if d.health.gate(now) != Gate::Probe || !d.ready.is_empty() {
                continue;
            }
            let Some(id) = d.parked.pop() else {
                continue;
            };
            out.push(id);
        }
        out
    }

    /// Everything not yet started, for a new routing (config change): the
    /// ready jobs and the ids kept instead of jobs. Health stays.
    pub(crate) fn take_unstarted(&mut self) -> (Vec<(QueueId, J)>, Vec<QueueId>) {
        let mut jobs = Vec::new();
        let mut ids = Vec::new();
        for d in self.dests.values_mut() {
            jobs.extend(d.ready.drain(..));
            ids.extend(d.overflow.drain(..));
            d.in_turn = false;
            d.paced = false;
        }
        self.turn.clear();
        self.paced.clear();
        self.dests.retain(|_, d| !d.is_idle());
        (jobs, ids)
    }

    pub(crate) fn is_suspended(&self, dest: &K) -> bool {
        self.dests
            .get(dest)
            .is_some_and(|d| d.health.is_suspended())
    }

    /// Suspended destinations.
    pub(crate) fn suspended(&self) -> usize {
        self.dests
            .values()
            .filter(|d| d.health.is_suspended())
            .count()
    }

    /// Messages parked at suspended destinations.
    pub(crate) fn parked(&self) -> usize {
        self.dests.values().map(|d| d.parked.len()).sum()
    }

    /// Destinations under a throttle rule at `now`: (suspended, slowed).
    pub(crate) fn throttled(&self, now: i64) -> (usize, usize) {
        self.dests.values().fold((0, 0), |(held, slow), d| {
            let is_held = d.health.is_suspended() && d.health.held.is_some();
            let is_slow = d.slowed.is_some_and(|(until, _)| now < until);
            (held + usize::from(is_held), slow + usize::from(is_slow))
        })
    }

    /// Destinations set aside until their next rate slot.
    pub(crate) fn paced(&self) -> usize {
        self.dests.values().filter(|d| d.paced).count()
    }

    /// Every destination with mail or a state worth showing, at `now`.
    pub(crate) fn views(&self, now: i64) -> Vec<DestView<K>> {
        self.dests
            .iter()
            .map(|(k, d)| DestView {
                dest: k.clone(),
                suspended: d.health.is_suspended(),
                pace: d.pace,
                throttle: throttle_view(d, now),
                depth: d.ready.len() + d.overflow.len() + d.parked.len() + d.running,
                running: d.running,
                last_error: d.health.last_error.clone(),
                next_probe: d.health.next_probe(),
            })
            .collect()
    }
}

/// What a throttle rule is doing to `d` at `now`, for the admin API.
fn throttle_view<J>(d: &Dest<J>, now: i64) -> Option<String> {
    let at = |t: i64| {
        jiff::Timestamp::from_second(t)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    if let Some(h) = &d.health.held
        && d.health.is_suspended()
    {
        return Some(format!("suspended until {}: {}", at(h.until), h.reply));
    }
    match d.slowed {
        Some((until, rate)) if now < until => Some(format!("slowed to {rate} until {}", at(until))),
        _ => None,
    }
}

fn reason(h: &Health) -> String {
    if let Some(held) = &h.held {
        return format!(
            "destination paused by a throttle rule after: {}",
            held.reply
        );
    }
    let last = h
        .last_error
        .as_deref()
        .unwrap_or("no connection could be made");
    format!("destination suspended after repeated connection failures; last: {last}")
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
