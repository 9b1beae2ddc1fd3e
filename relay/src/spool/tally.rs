//! Counts of queued recipients by state, kept up to date as the index
//! changes, so the queue gauges cost nothing per scrape and need no walk
//! over the queue (DESIGN.md §6: no whole-queue scans but at start-up).

use super::types::RecipientState;

/// What kind of state a recipient is in: all the index keeps of it (the
/// state itself, with its reply text, stays on disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Pending,
    Deferred,
    Delivered,
    Failed,
}

impl Class {
    pub(crate) fn of(state: &RecipientState) -> Class {
        match state {
            RecipientState::Pending => Class::Pending,
            RecipientState::Deferred { .. } => Class::Deferred,
            RecipientState::Delivered { .. } => Class::Delivered,
            RecipientState::Failed { .. } => Class::Failed,
        }
    }
}

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
    fn slot(&mut self, class: Class) -> &mut u64 {
        match class {
            Class::Pending => &mut self.pending,
            Class::Deferred => &mut self.deferred,
            Class::Delivered => &mut self.delivered,
            Class::Failed => &mut self.failed,
        }
    }

    pub(crate) fn add(&mut self, class: Class) {
        *self.slot(class) += 1;
    }

    pub(crate) fn sub(&mut self, class: Class) {
        let slot = self.slot(class);
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
