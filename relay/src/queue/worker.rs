//! One attempt, as a task of its own: a job's groups (one per route of
//! its destination) are tried in turn over the route's kept connections
//! (the pool), each group's results are made durable before the next, and
//! the manager is told what the attempt learnt of the destination.

use crate::delivery::classify::Classifier;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use jiff::Timestamp;
use rand::SeedableRng;

use super::attempt::{AttemptCtx, attempt};
use super::decide;
use super::destination::Dest;
use super::health::Contact;
use super::job::{Ended, Job, Nudge};
use super::pool::Pool;
use super::router::Route;
use super::scheduler::{Start, Throttle};
use crate::config::Current;
use crate::delivery::tls_policy::OutboundTls;
use crate::delivery::{CachedDns, Outcome, Timeouts};
use crate::events::outcomes;
use crate::ops::metrics::Metrics;
use crate::policy::HickoryDns;
use crate::spool::Spool;
use crate::spool::{Queued, RecipientState};
use tokio::sync::mpsc;

/// What deliveries and the spool writes around them run on; tasks of
/// their own, reporting back to the manager through its inbox.
pub(crate) struct Worker {
    pub(super) spool: Spool,
    pub(super) current: Current,
    /// Routing lookups, kept for a few seconds (see `delivery::mx_cache`).
    pub(super) dns: CachedDns<HickoryDns>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) mx_port: u16,
    pub(super) pool: Pool,
    /// Outbound TLS policy state: the MTA-STS cache, trusted roots.
    pub(super) outbound_tls: OutboundTls,
    pub(super) inbox: mpsc::UnboundedSender<Nudge>,
    /// Tasks that hold a message (attempts, spool writes).
    pub(super) in_flight: AtomicUsize,
    /// Set by `Manager::stop`: start no more deliveries (a draining relay
    /// hands what is left to a peer).
    pub(super) stopping: AtomicBool,
}

impl Worker {
    pub(super) fn send(&self, nudge: Nudge) {
        let _ = self.inbox.send(nudge);
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A task takes hold of a message; `Released` or `Ended` lets go.
    pub(super) fn hold(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn let_go(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Deliver the job of `start`, then report to the manager.
    pub(super) async fn work(self: Arc<Self>, start: Start<Dest, Job>) {
        let Start {
            dest,
            id,
            job,
            probe,
        } = start;
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let (contact, reason, throttle) = if self.is_stopping() {
            // Draining: what has not started stays queued for hand-off.
            (Contact::Unknown, String::new(), None)
        } else {
            self.deliver(&dest, job, &mut rng).await
        };
        self.send(Nudge::Ended(Box::new(Ended {
            dest,
            id,
            contact,
            reason,
            probe,
            throttle,
        })));
    }

    /// Try each group of `job`, recording each group's results before the
    /// next: the window in which a crash repeats a delivery stays one
    /// transaction wide. Returns what was learnt of the destination, and
    /// the reaction of a throttle rule that a reply matched.
    async fn deliver(
        &self,
        dest: &Dest,
        job: Job,
        rng: &mut rand::rngs::StdRng,
    ) -> (Contact, String, Option<Throttle>) {
        let Job {
            q,
            groups,
            schedule,
            shape,
        } = job;
        let body = match self.spool.read_body(&q.id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %q.id, error = %e, "cannot read the message body; will retry");
                return (Contact::Unknown, String::new(), None);
            }
        };
        let rt = self.current.get();
        let events = self.spool.events();
        let message_id = crate::events::record::message_id(&body);
        let mut seen = Contact::Unknown;
        let mut reason = String::new();
        let mut throttle = None;
        // Throttle rules are about remote receivers, not our own servers.
        let shaped = matches!(
            dest,
            Dest::Site(_) | Dest::Domain(_) | Dest::Route(Route::Smarthost { .. })
        );
        for (route, indices) in groups {
            let ctx = AttemptCtx {
                runtime: &rt,
                dns: &self.dns,
                timeouts: Timeouts::default(),
                mx_port: self.mx_port,
                pool: &self.pool,
                dest,
                shape: &shape,
                metrics: &self.metrics,
                outbound_tls: &self.outbound_tls,
                queue_id: Some(q.id),
                reports: self.spool.reports(),
            };
            let recipients: Vec<String> = indices
                .iter()
                .map(|&i| q.envelope.recipients[i].clone())
                .collect();
            let tried = attempt(&ctx, &route, &q.envelope.sender, &recipients, &body).await;
            seen = match (seen, tried.contact) {
                (Contact::Reached, _) | (_, Contact::Reached) => Contact::Reached,
                (Contact::Failed, _) | (_, Contact::Failed) => Contact::Failed,
                _ => Contact::Unknown,
            };
            if let Some(Outcome::TempFail { reason: r }) = tried.outcomes.first() {
                reason.clone_from(r);
            }
            let now = Timestamp::now();
            if shaped && throttle.is_none() {
                let replies = tried.outcomes.iter().filter_map(|o| match o {
                    Outcome::TempFail { reason } | Outcome::PermFail { reason } => {
                        Some(reason.as_str())
                    }
                    Outcome::Delivered { .. } => None,
                });
                throttle = rt.shaper.throttle(replies, now.as_second());
            }
            let received = Timestamp::from_second(q.envelope.received_at).unwrap_or(now);
            let mut updates = Vec::with_capacity(indices.len());
            let mut emitted = Vec::with_capacity(indices.len());
            for ((&i, rcpt), outcome) in indices.iter().zip(&recipients).zip(&tried.outcomes) {
                let state =
                    decide::after_attempt(&q.recipients[i], outcome, &schedule, received, now, rng);
                let class = class_of(&rt.classifier, outcome);
                let result = log_outcome(&q, rcpt, &route, outcome, &state, class);
                let age = (now.as_second() - q.envelope.received_at).max(0);
                self.metrics.delivery(route.kind(), result, class, age);
                emitted.push(outcomes::after_attempt(
                    events,
                    &q,
                    &outcomes::AfterAttempt {
                        index: i,
                        outcome,
                        state: &state,
                        route: route.kind(),
                        class,
                        peer: tried.peer.as_ref(),
                        message_id: message_id.as_deref(),
                    },
                ));
                updates.push((i, state));
            }
            // The events first: a crash between the two repeats the
            // attempt (and its events, with the same ids), never loses them.
            events.emit_before_step(&rt, &emitted);
            // Awaited: the next group (and the next job) waits until this
            // outcome is on disk, so a crash repeats at most one
            // transaction per attempt.
            self.record(&q, updates).await;
        }
        (seen, reason, throttle)
    }

    /// Make one group's results durable. The common case — every
    /// recipient of the message delivered in one transaction — needs no
    /// state record: removing the message says it all.
    async fn record(&self, q: &Queued, updates: Vec<(usize, RecipientState)>) {
        let all_done = updates.len() == q.recipients.len()
            && updates
                .iter()
                .all(|(_, s)| matches!(s, RecipientState::Delivered { .. }));
        let written = if all_done {
            self.spool.remove(&q.id).await
        } else {
            self.spool.record(&q.id, &updates).await
        };
        match written {
            Ok(()) if all_done => {
                tracing::debug!(queue_id = %q.id, "removed: all recipients delivered");
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(queue_id = %q.id, error = %e, "cannot record delivery results; they will be retried");
            }
        }
    }

    /// A job for a suspended destination: every recipient deferred with
    /// the destination's reason, and no connection made.
    pub(super) async fn record_deferred(&self, job: Job, dest: &str, reason: &str) {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let q = &job.q;
        let now = Timestamp::now();
        let received = Timestamp::from_second(q.envelope.received_at).unwrap_or(now);
        let outcome = Outcome::temp(reason);
        let rt = self.current.get();
        let class = rt.classifier.classify(reason).as_str();
        let events = self.spool.events();
        let mut updates = Vec::new();
        let mut emitted = Vec::new();
        for (route, indices) in &job.groups {
            for &i in indices {
                let state = decide::after_attempt(
                    &q.recipients[i],
                    &outcome,
                    &job.schedule,
                    received,
                    now,
                    &mut rng,
                );
                emitted.push(outcomes::after_attempt(
                    events,
                    q,
                    &outcomes::AfterAttempt {
                        index: i,
                        outcome: &outcome,
                        state: &state,
                        route: route.kind(),
                        class,
                        peer: None,
                        message_id: None,
                    },
                ));
                updates.push((i, state));
            }
        }
        tracing::info!(queue_id = %q.id, destination = dest, recipients = updates.len(),
            result = "deferred", class, reason, "delivery: destination suspended, no attempt");
        self.metrics.delivery(
            "suspended",
            "deferred",
            class,
            (now.as_second() - q.envelope.received_at).max(0),
        );
        events.emit_before_step(&rt, &emitted);
        self.record(q, updates).await;
    }
}

impl Worker {
    /// The job is for a destination that takes no attempts: record every
    /// recipient as deferred with the destination's reason, no connection.
    pub(super) fn defer_suspended(self: &Arc<Self>, job: Job, dest: &Dest, reason: &str) {
        let reason = reason.to_string();
        let dest = dest.to_string();
        let id = job.q.id;
        self.hold();
        let worker = Arc::clone(self);
        tokio::spawn(async move {
            worker.record_deferred(job, &dest, &reason).await;
            worker.let_go();
            worker.send(Nudge::Released { id, recheck: true });
        });
    }
}

/// The bounce class of an outcome; empty for a delivery.
fn class_of(classifier: &Classifier, outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered { .. } => "",
        Outcome::TempFail { reason } | Outcome::PermFail { reason } => {
            classifier.classify(reason).as_str()
        }
    }
}

/// One structured event per recipient decision; returns the result label.
fn log_outcome(
    q: &Queued,
    rcpt: &str,
    route: &Route,
    outcome: &Outcome,
    state: &RecipientState,
    class: &'static str,
) -> &'static str {
    let result = match state {
        RecipientState::Delivered { .. } => "delivered",
        RecipientState::Failed { .. } => "bounced",
        RecipientState::Deferred { .. } | RecipientState::Pending => "deferred",
    };
    // A delivery's event line (`mailrelay::event`, always written) says
    // all of this and more; formatting it again cost about 11,000
    // instructions a message. Failures keep their line: operators grep
    // them by recipient and class.
    if matches!(state, RecipientState::Delivered { .. }) {
        tracing::debug!(queue_id = %q.id, recipient = %rcpt, route = route.kind(), result, reply = %outcome, "delivery");
    } else {
        tracing::info!(
            queue_id = %q.id,
            recipient = %rcpt,
            route = route.kind(),
            result,
            class,
            reply = %outcome,
            "delivery"
        );
    }
    result
}
