//! What the delivery manager shows: the queue gauges (from the spool's
//! counts and the scheduler's, never from a walk over the queue) and the
//! destinations for the admin API.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::destination::Dest;
use super::job::Nudge;
use super::manager::Manager;
use super::scheduler::DestView;
use crate::ops::destinations::{DestinationRow, QueueControl};
use crate::spool::QueueId;

impl Manager {
    /// Refresh the queue gauges: the spool keeps the counts.
    pub(super) fn publish(&self) {
        let (tally, oldest) = self.worker.spool.tally();
        let now = Timestamp::now().as_second();
        let mut by_state = BTreeMap::new();
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        by_state.insert("pending", n(tally.pending));
        by_state.insert("deferred", n(tally.deferred));
        by_state.insert("delivered", n(tally.delivered));
        by_state.insert("failed", n(tally.failed));
        by_state.insert("held", n(tally.held));
        self.worker
            .metrics
            .queue_state(&by_state, oldest.map_or(0, |t| (now - t).max(0)));
        let core = self.core();
        let d = &self.worker.metrics.destinations;
        d.suspended.set(core.sched.suspended() as i64);
        d.parked.set(core.sched.parked() as i64);
        d.waiting.set(core.sched.waiting() as i64);
    }
}

impl QueueControl for Manager {
    fn look(&self, id: QueueId) {
        self.worker.send(Nudge::Look(id));
    }

    fn look_all(&self) {
        self.worker.send(Nudge::All);
    }

    /// The destinations with mail or a health worth showing.
    fn destinations(&self) -> Vec<DestinationRow> {
        let mut views: Vec<DestView<Dest>> = self.core().sched.views();
        views.sort_by(|a, b| a.dest.cmp(&b.dest));
        views.into_iter().map(DestinationRow::from).collect()
    }
}
