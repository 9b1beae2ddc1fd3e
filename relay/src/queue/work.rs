//! The work side of the delivery manager: messages due now wait in one
//! FIFO per route, and up to `per_destination` workers per route take them
//! in turn. A worker sends one message after the other over the route's
//! kept connections (the pool), so a busy destination costs one TCP and
//! EHLO handshake per worker, not per message; and it hands each result to
//! the spool without waiting for the sync, so the removals of many workers
//! share one group commit while the next message is already on the wire.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, MutexGuard};

use jiff::Timestamp;
use rand::SeedableRng;

use super::attempt::{AttemptCtx, attempt};
use super::decide;
use super::manager::Manager;
use super::router::Route;
use super::schedule::Schedule;
use crate::delivery::{Outcome, Timeouts};
use crate::spool::{QueueId, Queued, RecipientState};

/// One message's due recipients, grouped by route, tried group by group.
pub(super) struct Job {
    pub q: Queued,
    /// Recipient indices per route, in the order they are tried; the
    /// first is the route whose queue the job waits in.
    pub groups: VecDeque<(Route, Vec<usize>)>,
    pub schedule: Schedule,
    /// Read once, for the first group.
    pub body: Option<Arc<Vec<u8>>>,
}

#[derive(Default)]
struct RouteQueue {
    jobs: VecDeque<Job>,
    workers: usize,
}

/// What the manager is doing with which message.
#[derive(Default)]
pub(super) struct Book {
    /// Messages queued for a worker, being delivered, or whose results
    /// are being recorded: the scan leaves them alone.
    pub busy: HashSet<QueueId>,
    /// Messages released by a worker whose state must be looked at again
    /// (deferred, failed, partly delivered).
    pub recheck: Vec<QueueId>,
    routes: HashMap<Route, RouteQueue>,
}

impl Manager {
    pub(super) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `job` on its first route, starting a worker if that route
    /// has fewer than its limit. The message must already be busy.
    pub(super) fn enqueue(self: &Arc<Self>, job: Job) {
        let Some((route, _)) = job.groups.front() else {
            self.release(job.q.id, false);
            return;
        };
        let route = route.clone();
        let start = {
            let mut book = self.book();
            let queue = book.routes.entry(route.clone()).or_default();
            queue.jobs.push_back(job);
            let start = queue.workers < self.per_destination;
            if start {
                queue.workers += 1;
            }
            start
        };
        if start {
            let manager = Arc::clone(self);
            tokio::spawn(async move { manager.worker(route).await });
        }
    }

    /// The message leaves the manager's hands; `recheck` when its state
    /// changed and it needs another look (anything but a removal).
    pub(super) fn release(&self, id: QueueId, recheck: bool) {
        {
            let mut book = self.book();
            book.busy.remove(&id);
            if recheck {
                book.recheck.push(id);
            }
        }
        // A removal needs no look (the spool's change wakes the loop anyway).
        if recheck {
            self.done.notify_one();
        }
    }

    fn next_job(&self, route: &Route) -> Option<Job> {
        let mut book = self.book();
        let queue = book.routes.get_mut(route)?;
        let job = queue.jobs.pop_front();
        if job.is_none() {
            queue.workers = queue.workers.saturating_sub(1);
            if queue.workers == 0 {
                book.routes.remove(route);
            }
        }
        job
    }

    /// Deliver the jobs of `route` until its queue is empty.
    async fn worker(self: Arc<Self>, route: Route) {
        let permit = Arc::clone(&self.total).acquire_owned().await;
        let mut rng = rand::rngs::StdRng::from_os_rng();
        while let Some(job) = self.next_job(&route) {
            if permit.is_err() {
                // The semaphore is never closed; give the work back.
                self.release(job.q.id, true);
                continue;
            }
            if self.is_stopping() {
                // Draining: what has not started stays queued for hand-off.
                self.release(job.q.id, false);
                continue;
            }
            // Boxed: a delivery's future (DNS, SMTP client, timeouts) is
            // tens of KiB; inline it would make the worker's future that
            // big, and `tokio::spawn` copies that several times for each
            // worker started (callgrind: ≈39k instructions per message).
            Box::pin(self.deliver(job, &route, &mut rng)).await;
        }
    }

    /// Try the first group of `job` (on `route`), then record the results.
    async fn deliver(self: &Arc<Self>, mut job: Job, route: &Route, rng: &mut rand::rngs::StdRng) {
        let rt = self.current.get();
        let body = match &job.body {
            Some(b) => Arc::clone(b),
            None => match self.spool.read_body(&job.q.id).await {
                Ok(b) => {
                    let b = Arc::new(b);
                    job.body = Some(Arc::clone(&b));
                    b
                }
                Err(e) => {
                    tracing::error!(queue_id = %job.q.id, error = %e, "cannot read the message body; will retry");
                    self.release(job.q.id, false);
                    return;
                }
            },
        };
        let Some((_, indices)) = job.groups.pop_front() else {
            self.release(job.q.id, true);
            return;
        };
        let ctx = AttemptCtx {
            runtime: &rt,
            dns: &self.dns,
            timeouts: Timeouts::default(),
            mx_port: self.mx_port,
            pool: &self.pool,
            metrics: &self.metrics,
            outbound_tls: &self.outbound_tls,
            queue_id: Some(job.q.id),
        };
        let q = &job.q;
        let recipients: Vec<String> = indices
            .iter()
            .map(|&i| q.envelope.recipients[i].clone())
            .collect();
        let outcomes = attempt(&ctx, route, &q.envelope.sender, &recipients, &body).await;
        let now = Timestamp::now();
        let received = Timestamp::from_second(q.envelope.received_at).unwrap_or(now);
        let mut updates = Vec::with_capacity(indices.len());
        for ((&i, rcpt), outcome) in indices.iter().zip(&recipients).zip(&outcomes) {
            let state =
                decide::after_attempt(&q.recipients[i], outcome, &job.schedule, received, now, rng);
            let result = log_outcome(q, rcpt, route, outcome, &state);
            let age = (now.as_second() - q.envelope.received_at).max(0);
            self.metrics.delivery(route.kind(), result, age);
            updates.push((i, state));
        }
        // Awaited, not spawned: the worker takes its next message only
        // once this outcome is on disk, so a crash repeats at most one
        // transaction per worker. (A spawned record let a busy worker run
        // ahead of a slow disk with dozens of unrecorded deliveries.)
        Arc::clone(self).record(job, indices.len(), updates).await;
    }

    /// Make one group's results durable, then go on with the next group
    /// or let the message go. Recorded before the next route is tried:
    /// the window in which a crash repeats a delivery stays one
    /// transaction wide.
    async fn record(
        self: Arc<Self>,
        mut job: Job,
        tried: usize,
        updates: Vec<(usize, RecipientState)>,
    ) {
        let id = job.q.id;
        // The common case — every recipient of the message delivered in
        // this one transaction — needs no state record: removing the
        // message says it all, in one spool write instead of two.
        let all_done = tried == job.q.recipients.len()
            && updates
                .iter()
                .all(|(_, s)| matches!(s, RecipientState::Delivered { .. }));
        let written = if all_done {
            self.spool.remove(&id).await
        } else {
            self.spool.record(&id, &updates).await
        };
        match written {
            Ok(()) if all_done => {
                tracing::debug!(queue_id = %id, "removed: all recipients delivered");
                self.release(id, false);
            }
            Ok(()) => {
                for (i, state) in updates {
                    if let Some(s) = job.q.recipients.get_mut(i) {
                        *s = state;
                    }
                }
                if job.groups.is_empty() {
                    self.release(id, true);
                } else {
                    self.enqueue(job);
                }
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot record delivery results; they will be retried");
                self.release(id, true);
            }
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
