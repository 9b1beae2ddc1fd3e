//! The delivery manager: watches the spool, sends what is due, records each
//! recipient's outcome durably, and finishes messages — removed when all
//! were delivered, bounced (one DSN to the sender) when some failed.
//!
//! Order of effects, for crash safety: an outcome is recorded in the spool
//! before anything is done about it, and a bounce is committed in the same
//! spool step that removes its message. A crash can repeat a delivery
//! whose remote 250 arrived but was not yet recorded (the unavoidable
//! window of SMTP), but never loses a message or sends a bounce twice.
//!
//! Cost per wake-up: the manager does not copy the queue. It lists the
//! queued ids, looks closer only at ids it has not seen, messages whose
//! timer is due and messages a worker handed back, and keeps everything
//! else in a timer index (`BTreeSet` of due time and id). Every
//! [`RESCAN`] it looks at every message again, which picks up what was
//! changed behind its back (hold, release, flush through the admin API)
//! and refreshes the queue gauges. The sending itself is in [`work`](super::work).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::Semaphore;

use super::decide;
use super::dsn::{self, DsnInput};
use super::pool::Pool;
use super::router::{Route, domain_of, route};
use super::schedule::Schedule;
use super::work::{Book, Job};
use crate::config::Current;
use crate::config::runtime::Runtime;
use crate::delivery::CachedDns;
use crate::delivery::tls_policy::OutboundTls;
use crate::ops::metrics::Metrics;
use crate::policy::HickoryDns;
use crate::spool::{Envelope, Notice, QueueId, Queued, RecipientState, Spool};

/// Limits on concurrent deliveries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Concurrency {
    pub total: usize,
    pub per_destination: usize,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            total: 100,
            per_destination: 20,
        }
    }
}

pub(crate) struct Manager {
    pub(super) spool: Spool,
    pub(super) current: Current,
    /// Routing lookups, kept for a few seconds (see `delivery::mx_cache`).
    pub(super) dns: CachedDns<HickoryDns>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) mx_port: u16,
    /// One permit per running worker, over all routes.
    pub(super) total: Arc<Semaphore>,
    pub(super) per_destination: usize,
    pub(super) pool: Pool,
    /// Outbound TLS policy state: the MTA-STS cache, trusted roots.
    pub(super) outbound_tls: OutboundTls,
    pub(super) book: Mutex<Book>,
    /// A worker let a message go: it may need another look.
    pub(super) done: tokio::sync::Notify,
    /// Set by `stop`: start no more deliveries (a draining relay hands
    /// what is left to a peer).
    pub(super) stopping: AtomicBool,
}

/// Longest sleep between passes when nothing is due (new mail wakes us).
const IDLE: Duration = Duration::from_secs(60);
/// How often every queued message is looked at again.
const RESCAN: Duration = Duration::from_secs(5);
/// After a wake-up, wait this long for more commits before scanning: under
/// load every group commit wakes us, and one scan per few milliseconds
/// hands workers plenty while costing little.
const GATHER: Duration = Duration::from_millis(2);

/// What the loop keeps between wake-ups (only the loop touches it).
#[derive(Default)]
struct Timers {
    /// Messages waiting for a time (a deferred recipient's next attempt,
    /// or never for a held message), by due unix second.
    due: BTreeSet<(i64, QueueId)>,
    /// The due time of each message in `due`.
    of: HashMap<QueueId, i64>,
}

impl Timers {
    fn set(&mut self, id: QueueId, at: i64) {
        if let Some(old) = self.of.insert(id, at) {
            self.due.remove(&(old, id));
        }
        self.due.insert((at, id));
    }

    fn clear(&mut self, id: &QueueId) {
        if let Some(old) = self.of.remove(id) {
            self.due.remove(&(old, *id));
        }
    }

    /// Take the messages due at `now`.
    fn take_due(&mut self, now: i64) -> Vec<QueueId> {
        let mut out = Vec::new();
        while let Some(&(at, id)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            self.of.remove(&id);
            out.push(id);
        }
        out
    }

    fn next(&self) -> Option<i64> {
        self.due
            .first()
            .map(|(at, _)| *at)
            .filter(|at| *at < i64::MAX)
    }
}

impl Manager {
    pub(crate) fn new(
        spool: Spool,
        current: Current,
        dns: HickoryDns,
        metrics: Arc<Metrics>,
        mx_port: u16,
        concurrency: Concurrency,
        outbound_tls: OutboundTls,
    ) -> Arc<Self> {
        Arc::new(Self {
            spool,
            current,
            dns: CachedDns::new(dns),
            metrics,
            mx_port,
            total: Arc::new(Semaphore::new(concurrency.total.max(1))),
            per_destination: concurrency.per_destination.max(1),
            pool: Pool::new(concurrency.per_destination.max(1), concurrency.total.max(1)),
            outbound_tls,
            book: Mutex::new(Book::default()),
            done: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
        })
    }

    /// Start no new delivery; those under way finish and record their
    /// outcome (see `busy`), queued jobs are let go untouched.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.done.notify_one();
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Messages a worker holds: being delivered or having results recorded.
    pub(crate) fn busy(&self) -> usize {
        self.book().busy.len()
    }

    /// Run until `stop` or until the task is dropped.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut timers = Timers::default();
        let mut last_rescan: Option<Instant> = None;
        let mut last_expire = Instant::now();
        loop {
            if self.is_stopping() {
                tracing::info!(busy = self.busy(), "delivery stopped: no new attempts");
                return;
            }
            // Armed before the pass, so a commit during it is not missed.
            let changed = self.spool.changed();
            if last_expire.elapsed() >= Duration::from_secs(1) {
                self.pool.expire();
                last_expire = Instant::now();
            }
            let full = last_rescan.is_none_or(|t| t.elapsed() >= RESCAN);
            if full {
                last_rescan = Some(Instant::now());
            }
            self.pass(&mut timers, full).await;
            let now = Timestamp::now().as_second();
            let mut wait = timers
                .next()
                .map(|at| Duration::from_secs(u64::try_from(at - now).unwrap_or(0)))
                .unwrap_or(IDLE)
                .min(IDLE);
            if !timers.of.is_empty() {
                // Held or waiting messages: look again at the next rescan.
                wait = wait.min(RESCAN);
            }
            tokio::select! {
                _ = changed => {}
                _ = self.done.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            }
            tokio::time::sleep(GATHER).await;
        }
    }

    /// One look at what changed: new messages, due timers, messages the
    /// workers handed back; with `full`, every message.
    async fn pass(self: &Arc<Self>, timers: &mut Timers, full: bool) {
        let rt = self.current.get();
        let schedule = match Schedule::new(&rt.config.queue) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "invalid queue settings; delivery paused");
                return;
            }
        };
        let now = Timestamp::now();
        let ids = self.spool.ids();
        let mut look: Vec<QueueId> = {
            let mut book = self.book();
            let mut look = std::mem::take(&mut book.recheck);
            look.extend(
                ids.iter()
                    .filter(|id| !book.busy.contains(id) && (full || !timers.of.contains_key(id)))
                    .copied(),
            );
            look
        };
        look.extend(timers.take_due(now.as_second()));
        if full {
            // Forget timers of messages that are gone (deleted, bounced).
            let queued: std::collections::HashSet<&QueueId> = ids.iter().collect();
            timers.of.retain(|id, _| queued.contains(id));
            timers.due.retain(|(_, id)| queued.contains(id));
        }
        look.sort_unstable();
        look.dedup();
        let mut gauges = full.then(Gauges::default);
        for id in look {
            if self.book().busy.contains(&id) {
                continue;
            }
            let Some(q) = self.spool.queued_one(&id) else {
                timers.clear(&id);
                continue;
            };
            if let Some(g) = gauges.as_mut() {
                g.add(&q, now);
            }
            self.examine(q, &rt, &schedule, now, timers).await;
        }
        if let Some(g) = gauges {
            // Busy messages were skipped above; count them as pending.
            let busy = self.book().busy.len() as i64;
            g.publish(&self.metrics, busy);
        }
    }

    /// Decide about one message that no worker holds.
    async fn examine(
        self: &Arc<Self>,
        q: Queued,
        rt: &Runtime,
        schedule: &Schedule,
        now: Timestamp,
        timers: &mut Timers,
    ) {
        timers.clear(&q.id);
        if q.held {
            // Looked at again at the next rescan.
            timers.set(q.id, i64::MAX);
            return;
        }
        let received = Timestamp::from_second(q.envelope.received_at).unwrap_or(now);
        if q.recipients.iter().all(RecipientState::is_final) {
            self.finish(&q, &rt.config.hostname, now).await;
            return;
        }
        if now >= schedule.expires_at(received) {
            self.expire(&q).await;
            timers.set(q.id, now.as_second());
            return;
        }
        if schedule.delay_warning_due(received, now, q.warned) {
            self.warn_delay(&q, &rt.config.hostname, now, schedule.expires_at(received))
                .await;
        }
        let (due, later) = decide::due(&q, now.as_second());
        if let Some(l) = later {
            timers.set(q.id, l);
        }
        if due.is_empty() {
            return;
        }
        let mut groups: BTreeMap<Route, Vec<usize>> = BTreeMap::new();
        for &i in &due {
            let rcpt = &q.envelope.recipients[i];
            groups
                .entry(route(rt, &domain_of(rcpt)))
                .or_default()
                .push(i);
        }
        timers.clear(&q.id);
        self.book().busy.insert(q.id);
        self.enqueue(Job {
            q,
            groups: groups.into_iter().collect(),
            schedule: schedule.clone(),
            body: None,
        });
    }

    /// Every recipient reached a final state: remove, or bounce the failures.
    async fn finish(&self, q: &Queued, hostname: &str, now: Timestamp) {
        let reports = decide::failure_reports(q, now);
        if reports.is_empty() {
            match self.spool.remove(&q.id).await {
                Ok(()) => tracing::info!(queue_id = %q.id, "removed: all recipients delivered"),
                Err(e) => {
                    tracing::error!(queue_id = %q.id, error = %e, "cannot remove a delivered message")
                }
            }
            return;
        }
        self.notice(q, hostname, now, &reports, Notice::Bounce)
            .await;
    }

    /// Fail every recipient still waiting: the queue lifetime is over.
    async fn expire(&self, q: &Queued) {
        let updates: Vec<(usize, RecipientState)> = q
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_final())
            .map(|(i, s)| (i, decide::expired(decide::last_reply(s))))
            .collect();
        tracing::info!(queue_id = %q.id, recipients = updates.len(), "expired in the queue");
        if let Err(e) = self.spool.record(&q.id, &updates).await {
            tracing::error!(queue_id = %q.id, error = %e, "cannot record expiry");
        }
    }

    async fn warn_delay(&self, q: &Queued, hostname: &str, now: Timestamp, until: Timestamp) {
        let reports = decide::delay_reports(q, now, until);
        if !reports.is_empty() {
            self.notice(q, hostname, now, &reports, Notice::DelayWarning)
                .await;
        }
    }

    /// A DSN about `q`, committed with its effect on `q` in one spool step.
    async fn notice(
        &self,
        q: &Queued,
        hostname: &str,
        now: Timestamp,
        reports: &[dsn::RecipientReport],
        notice: Notice,
    ) {
        let original = match self.spool.read_body(&q.id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %q.id, error = %e, "cannot read the message for its notice");
                return;
            }
        };
        let arrival = Timestamp::from_second(q.envelope.received_at).unwrap_or(now);
        let input = DsnInput {
            envelope: &q.envelope,
            message: &original,
            reporting_mta: hostname,
            queue_id: q.id,
            arrival_date: arrival,
            now,
            recipients: reports,
        };
        let Some(dsn) = dsn::build(&input) else {
            // RFC 5321 §6.1: never a notice to the null sender.
            if notice == Notice::Bounce {
                tracing::info!(queue_id = %q.id, "failed message from <> dropped: no bounce to a bounce");
                if let Err(e) = self.spool.remove(&q.id).await {
                    tracing::error!(queue_id = %q.id, error = %e, "cannot remove a failed message");
                }
            }
            return;
        };
        let id = self.spool.new_id();
        let envelope = Envelope {
            sender: dsn.sender.clone(),
            recipients: vec![dsn.recipient.clone()],
            received_at: now.as_second(),
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            helo: hostname.to_string(),
            auth: None,
            tls: false,
            size: dsn.message.len() as u64,
            smtputf8: dsn.needs_smtputf8(),
            body_8bit: dsn.is_8bit(),
            handed_off: None,
        };
        match self
            .spool
            .commit_notice(&id, &envelope, &dsn.message, &q.id, notice)
            .await
        {
            Ok(()) => tracing::info!(
                queue_id = %q.id,
                notice_id = %id,
                to = %dsn.recipient,
                kind = if notice == Notice::Bounce { "bounce" } else { "delay warning" },
                "notice queued"
            ),
            Err(e) => tracing::error!(queue_id = %q.id, error = %e, "cannot queue the notice"),
        }
    }
}

/// Queue gauges, counted during a full rescan.
#[derive(Default)]
struct Gauges {
    by_state: BTreeMap<&'static str, i64>,
    oldest: i64,
}

impl Gauges {
    fn add(&mut self, q: &Queued, now: Timestamp) {
        self.oldest = self.oldest.max(now.as_second() - q.envelope.received_at);
        for s in &q.recipients {
            let key = match s {
                RecipientState::Pending => "pending",
                RecipientState::Deferred { .. } => "deferred",
                RecipientState::Delivered { .. } => "delivered",
                RecipientState::Failed { .. } => "failed",
            };
            *self.by_state.entry(key).or_default() += 1;
        }
        if q.held {
            *self.by_state.entry("held").or_default() += 1;
        }
    }

    fn publish(mut self, metrics: &Metrics, busy: i64) {
        *self.by_state.entry("pending").or_default() += busy;
        metrics.queue_state(&self.by_state, self.oldest);
    }
}
