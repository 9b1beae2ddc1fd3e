//! The delivery manager: watches the spool, sends what is due, records each
//! recipient's outcome durably, and finishes messages — removed when all
//! were delivered, bounced (one DSN to the sender) when some failed.
//!
//! Order of effects, for crash safety: an outcome is recorded in the spool
//! before anything is done about it, and a bounce is committed in the same
//! spool step that removes its message. A crash can repeat a delivery
//! whose remote 250 arrived but was not yet recorded (the unavoidable
//! window of SMTP), but never loses a message or sends a bounce twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use rand::SeedableRng;
use tokio::sync::Semaphore;

use super::attempt::{AttemptCtx, attempt};
use super::decide;
use super::dsn::{self, DsnInput};
use super::pool::Pool;
use super::router::{Route, domain_of, route};
use super::schedule::Schedule;
use crate::delivery::{Outcome, Timeouts};
use crate::metrics::Metrics;
use crate::policy::HickoryDns;
use crate::server::listener::Current;
use crate::spool::{Envelope, Notice, QueueId, Queued, RecipientState, Spool};

/// Limits on concurrent deliveries.
#[derive(Clone, Copy, Debug)]
pub struct Concurrency {
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

pub struct Manager {
    spool: Spool,
    current: Current,
    dns: HickoryDns,
    metrics: Arc<Metrics>,
    mx_port: u16,
    total: Arc<Semaphore>,
    per_destination: usize,
    destinations: Mutex<HashMap<Route, Arc<Semaphore>>>,
    in_flight: Mutex<HashSet<QueueId>>,
    pool: Pool,
    /// A delivery finished: its message may now be final.
    done: tokio::sync::Notify,
}

/// Longest sleep between passes when nothing is due (new mail wakes us).
const IDLE: Duration = Duration::from_secs(60);
/// Shortest time between passes.
const PASS_GAP: Duration = Duration::from_millis(20);

impl Manager {
    pub fn new(
        spool: Spool,
        current: Current,
        dns: HickoryDns,
        metrics: Arc<Metrics>,
        mx_port: u16,
        concurrency: Concurrency,
    ) -> Arc<Self> {
        Arc::new(Self {
            spool,
            current,
            dns,
            metrics,
            mx_port,
            total: Arc::new(Semaphore::new(concurrency.total.max(1))),
            per_destination: concurrency.per_destination.max(1),
            destinations: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            pool: Pool::new(concurrency.per_destination.max(1), concurrency.total.max(1)),
            done: tokio::sync::Notify::new(),
        })
    }

    /// Run until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            // Armed before the pass, so a commit during it is not missed.
            let changed = self.spool.changed();
            self.pool.expire();
            let next = self.pass().await;
            let wait = next
                .map(|at| {
                    Duration::from_secs(
                        u64::try_from(at - Timestamp::now().as_second()).unwrap_or(0),
                    )
                })
                .unwrap_or(IDLE)
                .min(IDLE);
            tokio::select! {
                _ = changed => {}
                _ = self.done.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            }
            // Under load every commit wakes us: gather a few before the next
            // pass, which walks the whole queue.
            tokio::time::sleep(PASS_GAP).await;
        }
    }

    fn lock_flight(&self) -> std::sync::MutexGuard<'_, HashSet<QueueId>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One look at the queue; returns when the next deferred recipient is due.
    async fn pass(self: &Arc<Self>) -> Option<i64> {
        let rt = self.current.get();
        let schedule = match Schedule::new(&rt.config.queue) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "invalid queue settings; delivery paused");
                return None;
            }
        };
        let now = Timestamp::now();
        let mut next: Option<i64> = None;
        let queued = self.spool.queued();
        self.gauges(&queued, now);
        for listed in queued {
            // The listing may be older than a delivery that just finished:
            // decide on the state as it is now. A delivery records its
            // results before it leaves `in_flight`, so a message found
            // outside `in_flight` has its latest state in the spool.
            let fresh = {
                let flight = self.lock_flight();
                if flight.contains(&listed.id) {
                    continue;
                }
                self.spool.queued_one(&listed.id)
            };
            let Some(q) = fresh else { continue };
            if q.held {
                continue;
            }
            let received = Timestamp::from_second(q.envelope.received_at).unwrap_or(now);
            if q.recipients.iter().all(RecipientState::is_final) {
                self.finish(&q, &rt.config.hostname, now).await;
                continue;
            }
            if now >= schedule.expires_at(received) {
                self.expire(&q).await;
                continue;
            }
            if schedule.delay_warning_due(received, now, q.warned) {
                self.warn_delay(&q, &rt.config.hostname, now, schedule.expires_at(received))
                    .await;
            }
            let (due, later) = decide::due(&q, now.as_second());
            if let Some(l) = later {
                next = Some(next.map_or(l, |n| n.min(l)));
            }
            if due.is_empty() {
                continue;
            }
            self.lock_flight().insert(q.id);
            let manager = Arc::clone(self);
            let schedule = schedule.clone();
            tokio::spawn(async move {
                manager.deliver(&q, &due, &schedule).await;
                manager.lock_flight().remove(&q.id);
                manager.done.notify_one();
            });
        }
        next
    }

    fn destination(&self, route: &Route) -> Arc<Semaphore> {
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            map.entry(route.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_destination))),
        )
    }

    /// Try the due recipients of one message, route by route.
    async fn deliver(&self, q: &Queued, due: &[usize], schedule: &Schedule) {
        let rt = self.current.get();
        let body = match self.spool.read_body(&q.id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %q.id, error = %e, "cannot read the message body; will retry");
                return;
            }
        };
        let mut groups: BTreeMap<Route, Vec<usize>> = BTreeMap::new();
        for &i in due {
            let rcpt = &q.envelope.recipients[i];
            groups
                .entry(route(&rt, &domain_of(rcpt)))
                .or_default()
                .push(i);
        }
        let ctx = AttemptCtx {
            runtime: &rt,
            dns: &self.dns,
            timeouts: Timeouts::default(),
            mx_port: self.mx_port,
            pool: &self.pool,
            metrics: &self.metrics,
        };
        let received =
            Timestamp::from_second(q.envelope.received_at).unwrap_or_else(|_| Timestamp::now());
        let mut rng = rand::rngs::StdRng::from_os_rng();
        for (route, indices) in groups {
            let Ok(_total) = Arc::clone(&self.total).acquire_owned().await else {
                return;
            };
            let Ok(_dest) = self.destination(&route).acquire_owned().await else {
                return;
            };
            let recipients: Vec<String> = indices
                .iter()
                .map(|&i| q.envelope.recipients[i].clone())
                .collect();
            let outcomes = attempt(&ctx, &route, &q.envelope.sender, &recipients, &body).await;
            let now = Timestamp::now();
            let mut updates = Vec::with_capacity(indices.len());
            for ((&i, rcpt), outcome) in indices.iter().zip(&recipients).zip(&outcomes) {
                let state = decide::after_attempt(
                    &q.recipients[i],
                    outcome,
                    schedule,
                    received,
                    now,
                    &mut rng,
                );
                let result = self.log_outcome(q, rcpt, &route, outcome, &state);
                let age = (now.as_second() - q.envelope.received_at).max(0);
                self.metrics.delivery(route.kind(), result, age);
                updates.push((i, state));
            }
            // The common case — every recipient of the message delivered
            // in this one transaction — needs no state record: removing
            // the message says it all, in one spool write instead of two.
            let all_done = indices.len() == q.recipients.len()
                && updates
                    .iter()
                    .all(|(_, s)| matches!(s, RecipientState::Delivered { .. }));
            let written = if all_done {
                self.spool.remove(&q.id).await
            } else {
                // Recorded before the next route is tried: the window in
                // which a crash repeats a delivery stays one transaction wide.
                self.spool.record(&q.id, &updates).await
            };
            match written {
                Ok(()) if all_done => {
                    tracing::info!(queue_id = %q.id, "removed: all recipients delivered")
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(queue_id = %q.id, error = %e, "cannot record delivery results; they will be retried")
                }
            }
        }
    }

    /// One structured event per recipient decision; returns the result label.
    fn log_outcome(
        &self,
        q: &Queued,
        rcpt: &str,
        route: &Route,
        outcome: &Outcome,
        state: &RecipientState,
    ) -> &'static str {
        let result = match state {
            RecipientState::Delivered { .. } => "delivered",
            RecipientState::Failed { .. } => "bounced",
            RecipientState::Deferred { .. } | RecipientState::Pending => "deferred",
        };
        tracing::info!(
            queue_id = %q.id,
            recipient = %rcpt,
            route = route.kind(),
            result,
            reply = %outcome,
            "delivery"
        );
        result
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

    fn gauges(&self, queued: &[Queued], now: Timestamp) {
        let mut by_state: BTreeMap<&'static str, i64> = BTreeMap::new();
        let mut oldest = 0i64;
        for q in queued {
            oldest = oldest.max(now.as_second() - q.envelope.received_at);
            for s in &q.recipients {
                let key = match s {
                    RecipientState::Pending => "pending",
                    RecipientState::Deferred { .. } => "deferred",
                    RecipientState::Delivered { .. } => "delivered",
                    RecipientState::Failed { .. } => "failed",
                };
                *by_state.entry(key).or_default() += 1;
            }
            if q.held {
                *by_state.entry("held").or_default() += 1;
            }
        }
        self.metrics.queue_state(&by_state, oldest);
    }
}
