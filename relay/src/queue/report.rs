//! What the delivery manager shows: the scheduler's gauges (never from a
//! walk over the queue) and the destinations for the admin API.

use super::destination::Dest;
use super::job::Nudge;
use super::manager::Manager;
use super::scheduler::DestView;
use crate::ops::destinations::{DestinationRow, QueueControl};
use crate::spool::QueueId;

impl Manager {
    /// The scheduler's gauges (the spool's are published beside it, see
    /// `lifecycle::app`).
    pub(super) fn publish(&self) {
        let core = self.core();
        let d = &self.worker.metrics.destinations;
        d.suspended.set(core.sched.suspended() as i64);
        d.parked.set(core.sched.parked() as i64);
        d.waiting.set(self.worker.spool.waiting() as i64);
        let (held, slowed) = core.sched.throttled(jiff::Timestamp::now().as_second());
        d.throttled(held, slowed);
        d.paced.set(core.sched.paced() as i64);
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
        let mut views: Vec<DestView<Dest>> =
            self.core().sched.views(jiff::Timestamp::now().as_second());
        views.sort_by(|a, b| a.dest.cmp(&b.dest));
        views.into_iter().map(DestinationRow::from).collect()
    }
}
