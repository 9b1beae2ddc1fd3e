//! How long the writer keeps collecting requests before it writes.
//!
//! Callers woken by one sync come back with their next message within
//! microseconds, but by then the writer has started the next batch with
//! whoever queued meanwhile, so concurrent sessions split into two groups
//! that alternate, each paying a whole sync. Waiting a little for
//! stragglers merges them (measured with 4 ms syncs and 20 sessions: 11
//! commits per sync without, 20 with). The wait is an eighth of what a
//! sync costs on this disk, so it never costs more than a small part of
//! what it saves, and it ends as soon as requests stop arriving; on a disk
//! with fast syncs it is off.

use std::time::Duration;

/// Never wait longer than this, however slow the disk.
const MAX_LINGER: Duration = Duration::from_millis(1);
/// Below this a timed wait costs about as much as it could save.
const MIN_LINGER: Duration = Duration::from_micros(20);

#[derive(Debug, Default)]
pub(crate) struct Linger {
    /// Moving average of recent fdatasync times.
    sync: Duration,
}

impl Linger {
    pub(crate) fn record_sync(&mut self, took: Duration) {
        self.sync = self.sync * 7 / 8 + took / 8;
    }

    /// The longest total wait, and the longest quiet gap that ends it.
    pub(crate) fn budget(&self) -> Option<(Duration, Duration)> {
        let most = (self.sync / 8).min(MAX_LINGER);
        (most >= MIN_LINGER).then_some((most, most / 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget after many syncs of `micros` each, in whole microseconds.
    fn budget_after(micros: u64) -> Option<(u128, u128)> {
        let mut linger = Linger::default();
        for _ in 0..200 {
            linger.record_sync(Duration::from_micros(micros));
        }
        linger
            .budget()
            .map(|(most, gap)| (most.as_micros(), gap.as_micros()))
    }

    #[test]
    fn the_wait_follows_the_cost_of_a_sync() {
        let cases = [
            ("no sync yet", 0, None),
            ("fast disk, 80 us syncs", 80, None),
            ("4 ms syncs", 4_000, Some((499, 124))),
            ("very slow disk", 50_000, Some((1_000, 250))),
        ];
        for (name, micros, want) in cases {
            assert_eq!(budget_after(micros), want, "{name}");
        }
    }
}
