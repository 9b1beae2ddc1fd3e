//! Counts of queued recipients by state, kept up to date as the index
//! changes, so the queue gauges cost nothing per scrape and need no walk
//! over the queue (DESIGN.md §6: no whole-queue scans but at start-up).

use super::types::RecipientState;

/// Queued recipients by state; `held` counts messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub pending: u64,
    pub deferred: u64,
    pub delivered: u64,
    pub failed: u64,
    pub held: u64,
}

impl Tally {
    fn slot(&mut self, state: &RecipientState) -> &mut u64 {
        match state {
            RecipientState::Pending => &mut self.pending,
            RecipientState::Deferred { .. } => &mut self.deferred,
            RecipientState::Delivered { .. } => &mut self.delivered,
            RecipientState::Failed { .. } => &mut self.failed,
        }
    }

    pub(crate) fn add(&mut self, state: &RecipientState) {
        *self.slot(state) += 1;
    }

    pub(crate) fn sub(&mut self, state: &RecipientState) {
        let slot = self.slot(state);
        *slot = slot.saturating_sub(1);
    }

    pub(crate) fn hold(&mut self, was: bool, now: bool) {
        match (was, now) {
            (false, true) => self.held += 1,
            (true, false) => self.held = self.held.saturating_sub(1),
            _ => {}
        }
    }
}
