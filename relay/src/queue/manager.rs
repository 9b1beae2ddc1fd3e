//! The delivery manager: learns of mail as it arrives (the spool tells it
//! each new queue id) or falls due (its timers), routes each message's due
//! recipients to their destinations, and starts attempts as the
//! [`scheduler`](super::scheduler) allows. Its cost per message does not
//! depend on how much is queued: the whole queue is looked at only at
//! start-up and when the config changes (DESIGN.md §6).
//!
//! One task owns the decisions; attempts and spool writes run in tasks of
//! their own and report back through the inbox, so a slow disk or a slow
//! destination never holds up the rest.
//!
//! Order of effects, for crash safety: an outcome is recorded in the spool
//! before anything is done about it, and a bounce is committed in the same
//! spool step that removes its message. A crash can repeat a delivery
//! whose remote 250 arrived but was not yet recorded (the unavoidable
//! window of SMTP), but never loses a message or sends a bounce twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::mpsc;

use super::decide;
use super::destination::{Dest, Lookup, Sites, site};
use super::health::{Change, Contact, HealthSettings};
use super::job::{Ended, Job, Nudge};
use super::pool::Pool;
use super::router::{Route, domain_of, route, smarthost_of};
use super::schedule::Schedule;
use super::scheduler::{Limits, Push, Scheduler, Throttle};
use super::shaping::{Selected, pace};
use super::worker::Worker;
use crate::config::Current;
use crate::config::runtime::Runtime;
use crate::delivery::tls_policy::OutboundTls;
use crate::delivery::{CachedDns, MxDns};
use crate::ops::metrics::Metrics;
use crate::policy::HickoryDns;
use crate::spool::{Glance, Parked, QueueId, Queued, RecipientState, Spool};
use mailrelay_crds::config::ShapeConfig;

/// Limits on concurrent deliveries.
#[derive(Clone, Copy, Debug)]
pub struct Concurrency {
    pub total: usize,
    pub per_destination: usize,
}

impl Default for Concurrency {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            total: l.total,
            per_destination: l.per_destination,
        }
    }
}

/// What the deciding task keeps.
pub(super) struct Core {
    pub sched: Scheduler<Dest, Job>,
    /// Jobs out per message (ready, running, or a spool write under way):
    /// a message is not looked at while it has any.
    busy: HashMap<QueueId, u32>,
    sites: Sites<QueueId>,
}

pub struct Manager {
    /// What deliveries and spool writes run on.
    pub(super) worker: Arc<Worker>,
    /// The shaping of hosted domains' mailbox servers.
    hosted: ShapeConfig,
    core: Mutex<Core>,
    inbox_rx: Mutex<Option<mpsc::UnboundedReceiver<Nudge>>>,
}

/// Longest sleep when nothing is due (new mail wakes us).
const IDLE: Duration = Duration::from_secs(1);
/// Messages looked at per step of a whole-queue scan, between which the
/// manager answers its inbox.
const SCAN_CHUNK: usize = 10_000;

impl Manager {
    pub fn new(
        spool: Spool,
        current: Current,
        dns: HickoryDns,
        metrics: Arc<Metrics>,
        mx_port: u16,
        concurrency: Concurrency,
        outbound_tls: OutboundTls,
    ) -> Arc<Self> {
        let limits = Limits {
            total: concurrency.total.max(1),
            per_destination: concurrency.per_destination.max(1),
            ..Limits::default()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let inbox = tx.clone();
        spool.on_arrival(Box::new(move |arrival| {
            let nudge = match arrival.queued {
                Some(q) => Nudge::Arrived(q),
                None => Nudge::Look(arrival.id),
            };
            let _ = inbox.send(nudge);
        }));
        let worker = Worker {
            spool,
            current,
            dns: CachedDns::new(dns),
            metrics,
            mx_port,
            pool: Pool::new(limits.total),
            outbound_tls,
            inbox: tx,
            in_flight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        };
        let hosted = ShapeConfig {
            max_connections: u32::try_from(limits.per_destination).unwrap_or(u32::MAX),
            max_messages_per_connection: u32::MAX,
            ..ShapeConfig::default()
        };
        Arc::new(Self {
            hosted,
            worker: Arc::new(worker),
            core: Mutex::new(Core {
                sched: Scheduler::new(limits, HealthSettings::default()),
                busy: HashMap::new(),
                sites: Sites::default(),
            }),
            inbox_rx: Mutex::new(Some(rx)),
        })
    }

    /// Start no new delivery; those under way finish and record their
    /// outcome (see `busy`), queued jobs are let go untouched.
    pub fn stop(&self) {
        self.worker.stopping.store(true, Ordering::SeqCst);
        self.worker.send(Nudge::All);
    }

    fn is_stopping(&self) -> bool {
        self.worker.is_stopping()
    }

    /// Messages a task holds: being delivered or having results recorded.
    pub fn busy(&self) -> usize {
        self.worker.in_flight.load(Ordering::SeqCst)
    }

    pub(super) fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run until `stop` or until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let Some(mut rx) = self.inbox_rx.lock().ok().and_then(|mut r| r.take()) else {
            tracing::error!("delivery manager started twice");
            return;
        };
        let mut config: Option<Arc<Runtime>> = None;
        let mut last_tick = Instant::now();
        let mut nudges = Vec::new();
        loop {
            if self.is_stopping() {
                tracing::info!(busy = self.busy(), "delivery stopped: no new attempts");
                return;
            }
            let rt = self.worker.current.get();
            if config.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &rt)) {
                // Start-up, or new routes and settings: look at everything.
                config = Some(Arc::clone(&rt));
                self.rescan(&rt).await;
            }
            for nudge in nudges.drain(..) {
                self.handle(nudge, &rt).await;
            }
            self.step(&rt).await;
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = Instant::now();
                self.worker.pool.expire(Timestamp::now().as_millisecond());
                self.publish();
            }
            let wait = self.wait();
            tokio::select! {
                n = rx.recv_many(&mut nudges, 4096) => {
                    if n == 0 {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long to sleep: until the next timer or probe, at most `IDLE`.
    fn wait(&self) -> Duration {
        let now = Timestamp::now();
        let (timer, paced) = {
            let core = self.core();
            (core.sched.next_wake(), core.sched.next_paced_ms())
        };
        let timer = match timer {
            // Due but not taken (a probe under way): look again soon, not
            // in a busy loop.
            Some(at) if at <= now.as_second() => Duration::from_millis(50),
            Some(at) => {
                // Timers count whole seconds: wake just after `at` begins.
                let in_ms = (at - now.as_second()) * 1000 - i64::from(now.subsec_millisecond());
                Duration::from_millis(u64::try_from(in_ms).unwrap_or(0) + 5)
            }
            None => IDLE,
        };
        // A destination's next rate slot, to the millisecond.
        let paced = paced.map_or(IDLE, |at| {
            Duration::from_millis(u64::try_from(at - now.as_millisecond()).unwrap_or(0).max(1))
        });
        timer.min(paced).min(IDLE)
    }

    /// Due timers, probes, refills, then start what the limits allow.
    async fn step(self: &Arc<Self>, rt: &Runtime) {
        let now_ms = Timestamp::now().as_millisecond();
        let now = now_ms.div_euclid(1000);
        let (due, probes, refill) = {
            let mut core = self.core();
            let due = core.sched.take_due(now);
            let probes = core.sched.take_probes(now);
            let refill = core.sched.refill();
            (due, probes, refill)
        };
        let spool = &self.worker.spool;
        // Timers whose message has another time now (or none) are spent.
        let due = due.into_iter().filter(|(at, id)| spool.take_wake(id, *at));
        for id in due.map(|(_, id)| id).chain(refill) {
            self.examine(id, rt, false).await;
        }
        for id in probes {
            self.unpark(&id);
            // A probe goes whatever the message's own retry time says.
            self.examine(id, rt, true).await;
        }
        self.start_what_can(now_ms);
    }

    fn start_what_can(self: &Arc<Self>, now_ms: i64) {
        loop {
            let Some(start) = self.core().sched.next_at(now_ms) else {
                return;
            };
            self.worker.hold();
            let worker = Arc::clone(&self.worker);
            // Boxed: a delivery's future (DNS, SMTP client, timeouts) is
            // tens of KiB; inline it would make the task's future that big,
            // and `tokio::spawn` copies it (callgrind: ≈39k instructions
            // per message).
            tokio::spawn(async move { Box::pin(worker.work(start)).await });
        }
    }

    async fn handle(self: &Arc<Self>, nudge: Nudge, rt: &Runtime) {
        match nudge {
            Nudge::Look(id) => self.examine(id, rt, false).await,
            Nudge::Arrived(q) => self.look(q.id, Some(q), rt, false).await,
            Nudge::All => {
                if !self.is_stopping() {
                    self.rescan(rt).await;
                }
            }
            Nudge::Site {
                domain,
                site,
                failed,
            } => {
                let waiting = self
                    .core()
                    .sites
                    .answered(&domain, site, failed, Instant::now());
                for id in waiting {
                    self.examine(id, rt, false).await;
                }
            }
            Nudge::Ended(ended) => self.ended(*ended, rt).await,
            Nudge::Released { id, recheck } => {
                let free = self.release(&id);
                if free && recheck {
                    self.examine(id, rt, false).await;
                }
            }
        }
    }

    /// One job of `id` is over; true when none is left.
    fn release(&self, id: &QueueId) -> bool {
        let mut core = self.core();
        match core.busy.get_mut(id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                core.busy.remove(id);
                true
            }
        }
    }

    /// An attempt ended: the destination's health, then the message.
    async fn ended(self: &Arc<Self>, e: Ended, rt: &Runtime) {
        let now = Timestamp::now().as_second();
        let finished = {
            let mut core = self.core();
            let held = matches!(e.throttle, Some(Throttle::Suspend { .. }));
            if let Some(t) = &e.throttle {
                let action = if held { "suspend" } else { "slow" };
                self.worker.metrics.destinations.throttle(action);
                tracing::warn!(destination = %e.dest, queue_id = %e.id, action, throttle = ?t,
                    "throttle rule matched a reply");
            }
            let f = core
                .sched
                .finished(&e.dest, e.contact, &e.reason, e.probe, now, e.throttle);
            let suspended = core.sched.is_suspended(&e.dest);
            (f, suspended, held)
        };
        let (finished, suspended, held) = finished;
        if e.contact == Contact::Failed || held {
            // Due again as soon as the destination is reached, not only at
            // its own retry time.
            self.park(&e.dest, e.id, suspended);
        }
        for id in &finished.now_suspended {
            self.park(&e.dest, *id, true);
        }
        if e.probe {
            let result = if suspended { "failed" } else { "released" };
            self.worker.metrics.destinations.probe(result);
        }
        match finished.change {
            Change::Suspended => {
                self.worker.metrics.destinations.suspensions.inc();
                tracing::warn!(destination = %e.dest, reason = %e.reason,
                    "destination suspended: no attempts but one probe per back-off step");
            }
            Change::Released => {
                tracing::info!(destination = %e.dest, parked = finished.reexamine.len(),
                    "destination released: a probe got through");
            }
            Change::None => {}
        }
        for (id, job) in finished.defer {
            self.park(&e.dest, id, true);
            self.worker.defer_suspended(job, &e.dest, &e.reason);
        }
        let force = e.contact == Contact::Reached;
        for id in finished.reexamine {
            self.unpark(&id);
            self.examine(id, rt, force).await;
        }
        if self.release(&e.id) {
            self.examine(e.id, rt, false).await;
        }
        self.worker.let_go();
    }

    /// Look at every queued message: at start-up and on a config change.
    async fn rescan(self: &Arc<Self>, rt: &Runtime) {
        let q = &rt.config.queue;
        let health = HealthSettings {
            suspend_after: q.suspend_after,
            first_probe_secs: i64::try_from(q.probe_secs).unwrap_or(i64::MAX),
            max_probe_secs: i64::try_from(q.max_probe_secs).unwrap_or(i64::MAX),
        };
        let (jobs, ids, parked) = {
            let mut core = self.core();
            core.sched.set_health(health);
            let (jobs, ids) = core.sched.take_unstarted();
            (jobs, ids, core.sched.take_parked())
        };
        for (id, _) in &jobs {
            self.release(id);
        }
        // Looked at again below, under the new routes.
        for id in &parked {
            self.unpark(id);
        }
        let mut all = self.worker.spool.ids();
        all.extend(ids);
        let started = Instant::now();
        for (n, chunk) in all.chunks(SCAN_CHUNK).enumerate() {
            for id in chunk {
                self.examine(*id, rt, false).await;
            }
            if n > 0 {
                tokio::task::yield_now().await;
            }
        }
        tracing::info!(
            messages = all.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "queue scanned"
        );
    }

    /// Look at `id` again at `at` (unix seconds), unless that is already
    /// its time. The time itself is kept in the spool's index (see
    /// `scheduler::Timers`).
    fn wait_for(&self, id: QueueId, at: i64) {
        if let Some(old) = self.worker.spool.set_wake(&id, Some(at))
            && old != Some(at)
        {
            self.core().sched.wait(id, at);
        }
    }

    /// Park `id` at `dest` (failing, or `suspended`), unless it is parked
    /// already: a message is parked at most once (see `scheduler`).
    fn park(&self, dest: &Dest, id: QueueId, suspended: bool) {
        let mark = if suspended {
            Parked::Suspended
        } else {
            Parked::Failing
        };
        if self.worker.spool.set_parked(&id, mark) == Some(Parked::No) {
            self.core().sched.park(dest.clone(), id);
        }
    }

    /// `id` left the parked list it was in.
    fn unpark(&self, id: &QueueId) {
        self.worker.spool.set_parked(id, Parked::No);
    }

    /// No time to look at `id` again: something else will.
    fn unwait(&self, id: &QueueId) {
        self.worker.spool.set_wake(id, None);
    }

    /// Decide about message `id`: finish, expire, warn, wait, or hand its
    /// due recipients to their destinations. `force`: every recipient
    /// still waiting is due (a probe, a release).
    async fn examine(self: &Arc<Self>, id: QueueId, rt: &Runtime, force: bool) {
        self.look(id, None, rt, force).await;
    }

    /// `examine`, with the message when the caller has it (new mail);
    /// otherwise it is read from the spool only once it has something due.
    async fn look(
        self: &Arc<Self>,
        id: QueueId,
        known: Option<Box<Queued>>,
        rt: &Runtime,
        force: bool,
    ) {
        if self.core().busy.contains_key(&id) {
            return;
        }
        let Some(glance) = self.worker.spool.glance(&id) else {
            // Gone: its timer entries lapse on their own.
            return;
        };
        let now = Timestamp::now();
        if glance.held {
            // Released through the admin API, which looks at it again.
            self.unwait(&id);
            return;
        }
        let schedule = match Schedule::new(&rt.config.queue) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "invalid queue settings; delivery paused");
                return;
            }
        };
        let received = Timestamp::from_second(glance.received_at).unwrap_or(now);
        if !force && let Some(at) = nothing_before(&glance, &schedule, received, now) {
            self.wait_for(id, at);
            return;
        }
        if !force
            && glance.parked == Parked::Suspended
            && glance.open == 1
            && let Some(at) = nothing_but_notices_before(&glance, &schedule, received, now)
        {
            // Its one recipient waits behind a suspended destination:
            // retrying it would only defer it again (a read and a write
            // per message, for a million of them). The release looks at
            // it; until then only its delay warning and expiry are due.
            self.wait_for(id, at);
            return;
        }
        let q = match known {
            Some(q) => *q,
            None => match self.worker.spool.queued_one(&id) {
                Ok(Some(q)) => q,
                Ok(None) => return,
                Err(e) => {
                    // Left queued; tried again later rather than in a loop.
                    tracing::error!(queue_id = %id, error = %e,
                        "cannot read a queued message; looking again in 5 minutes");
                    self.wait_for(id, now.as_second() + 300);
                    return;
                }
            },
        };
        let received = Timestamp::from_second(q.envelope.received_at).unwrap_or(now);
        if q.recipients.iter().all(RecipientState::is_final) {
            return self.bookkeep(id, move |m| async move { m.finish(&q, now).await });
        }
        if now >= schedule.expires_at(received) {
            return self.bookkeep(id, move |m| async move { m.expire(&q).await });
        }
        if schedule.delay_warning_due(received, now, q.warned) {
            let until = schedule.expires_at(received);
            return self.bookkeep(
                id,
                move |m| async move { m.warn_delay(&q, now, until).await },
            );
        }
        let (due, later) = decide::due(&q, if force { i64::MAX } else { now.as_second() });
        if let Some(l) = later.filter(|_| !force) {
            self.wait_for(id, l);
        }
        if due.is_empty() {
            return;
        }
        let Some(groups) = self.destinations_of(&q, &due, rt) else {
            return;
        };
        self.unwait(&id);
        self.offer(rt, Arc::new(q), groups, schedule, now.as_second());
    }
}

/// When a message with nothing to do before then next needs a look: its
/// first recipient's retry, its delay warning or its expiry, whichever
/// comes first; `None` when it needs one now (or every recipient is
/// final, and it is to be finished).
fn nothing_before(
    glance: &Glance,
    schedule: &Schedule,
    received: Timestamp,
    now: Timestamp,
) -> Option<i64> {
    let at = glance.due?.min(notices_at(glance, schedule, received));
    (at > now.as_second()).then_some(at)
}

/// When a message parked at a suspended destination needs a look: its
/// delay warning or its expiry; `None` when that is now.
fn nothing_but_notices_before(
    glance: &Glance,
    schedule: &Schedule,
    received: Timestamp,
    now: Timestamp,
) -> Option<i64> {
    let at = notices_at(glance, schedule, received);
    (at > now.as_second()).then_some(at)
}

/// The earlier of a message's delay warning (unless sent) and expiry.
fn notices_at(glance: &Glance, schedule: &Schedule, received: Timestamp) -> i64 {
    let expires = schedule.expires_at(received).as_second();
    let warning = schedule
        .delay_warning_at(received)
        .filter(|_| !glance.warned)
        .map_or(i64::MAX, |w| w.as_second());
    expires.min(warning)
}

impl Manager {
    /// The due recipients of `q` by destination and route; `None` while a
    /// site lookup is under way (the message is looked at again after).
    fn destinations_of(
        self: &Arc<Self>,
        q: &Queued,
        due: &[usize],
        rt: &Runtime,
    ) -> Option<BTreeMap<Dest, BTreeMap<Route, Vec<usize>>>> {
        let mut out: BTreeMap<Dest, BTreeMap<Route, Vec<usize>>> = BTreeMap::new();
        let mut waiting = false;
        let sender = domain_of(&q.envelope.sender);
        for &i in due {
            let r = route(rt, &sender, &domain_of(&q.envelope.recipients[i]));
            let dest = match &r {
                Route::Mx { domain } => {
                    let lookup = self.core().sites.get(domain, q.id, Instant::now());
                    match lookup {
                        Lookup::Known(s) => {
                            let hosts = s.split(',');
                            match rt.shaper.select(Some(domain), hosts) {
                                Selected::ByDomain(_) => Dest::Domain(Arc::from(domain.as_str())),
                                _ => Dest::Site(s),
                            }
                        }
                        Lookup::Wait { start } => {
                            if start {
                                self.look_up_site(domain.clone());
                            }
                            waiting = true;
                            continue;
                        }
                    }
                }
                other => Dest::Route(other.clone()),
            };
            out.entry(dest).or_default().entry(r).or_default().push(i);
        }
        (!waiting).then_some(out)
    }

    fn look_up_site(self: &Arc<Self>, domain: String) {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            let answer = manager.worker.dns.mx(&domain).await;
            let failed = answer.is_err();
            let site = site(&domain, answer);
            manager.worker.send(Nudge::Site {
                domain,
                site,
                failed,
            });
        });
    }

    /// Hand each destination its job.
    fn offer(
        self: &Arc<Self>,
        rt: &Runtime,
        q: Arc<Queued>,
        groups: BTreeMap<Dest, BTreeMap<Route, Vec<usize>>>,
        schedule: Schedule,
        now: i64,
    ) {
        for (dest, routes) in groups {
            let shape = self.shape_of(rt, &dest);
            let job = Job {
                q: Arc::clone(&q),
                groups: routes.into_iter().collect(),
                schedule: schedule.clone(),
                shape,
            };
            let mut core = self.core();
            *core.busy.entry(q.id).or_default() += 1;
            match core
                .sched
                .push_paced(dest.clone(), q.id, job, now, pace(&shape))
            {
                Push::Ready => {}
                Push::Overflow => {
                    // Loaded again when the destination's ready queue drains.
                    drop(core);
                    self.release(&q.id);
                }
                Push::Suspended { job, reason } => {
                    drop(core);
                    self.park(&dest, q.id, true);
                    self.worker.defer_suspended(job, &dest, &reason);
                }
            }
        }
    }

    /// The shaping of `dest` (`spec.delivery.shaping`): MX sites and
    /// domains by their entry, the smarthost by its host; a hosted
    /// domain's mailbox server gets the relay's own per-destination
    /// concurrency and no rate (it is ours, not a remote to be polite to).
    fn shape_of(&self, rt: &Runtime, dest: &Dest) -> ShapeConfig {
        let shaper = &rt.shaper;
        match dest {
            Dest::Site(hosts) => shaper.shape(shaper.select(None, hosts.split(','))),
            Dest::Domain(domain) => shaper.shape(shaper.select(Some(domain), std::iter::empty())),
            Dest::Route(Route::Smarthost { tenant }) => {
                let host = smarthost_of(rt, tenant.as_deref()).map(|s| s.host.as_str());
                shaper.shape(shaper.select(None, host.into_iter()))
            }
            Dest::Route(Route::Mx { domain }) => {
                shaper.shape(shaper.select(Some(domain), std::iter::empty()))
            }
            Dest::Route(_) => self.hosted,
        }
    }

    /// Run `work` on message `id` in a task of its own, the message held
    /// until it is done, then looked at again.
    fn bookkeep<F, Fut>(self: &Arc<Self>, id: QueueId, work: F)
    where
        F: FnOnce(Arc<Worker>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self.core().busy.entry(id).or_default() += 1;
        self.worker.hold();
        let worker = Arc::clone(&self.worker);
        tokio::spawn(async move {
            work(Arc::clone(&worker)).await;
            worker.let_go();
            worker.send(Nudge::Released { id, recheck: true });
        });
    }
}
