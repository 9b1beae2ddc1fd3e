//! Per-segment accounting: how many bytes each segment holds, how many of
//! them queued messages still need, and what must be gone before it may
//! go. From that: which segments can be deleted, and which are worth
//! compacting. Pure bookkeeping, no I/O.
//!
//! A segment may be deleted when no queued message needs a record in it
//! (`live` is zero) and every segment it waits for is gone. A segment
//! waits for an older one in two cases:
//!
//! - It holds a removal record (or a bounce notice, which removes the
//!   message it is about) of a message whose record is in the older
//!   segment. Delete the removal first and the message would come back at
//!   the next recovery.
//! - It holds a later message record for an id that also has a record in
//!   the older segment: a compacted copy. Delete the copy first and a
//!   later removal of the message could go too (it only waits for the
//!   copy), and the stale original would come back.
//!
//! Both point from a segment to an older one (only the newest segment is
//! appended to), so waiting never deadlocks: the oldest segment waits for
//! nothing.
//!
//! Live bytes are what compaction needs to copy to empty a segment. A
//! message record counts whole; a state record's length is shared among
//! the pins it gives (a record of three recipients' states pins its
//! segment three times, a third each). When some of those pins move on,
//! the record is still needed whole but counts for less: live bytes can
//! be too low, never too high, so the space bound below holds in real
//! bytes, at the price of compacting a little early.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

/// Where one pinned record is and its share of the segment's live bytes,
/// in 8 bytes (the index keeps a few per queued message). Segment numbers
/// start at 1 (see `recover::load`), so the niche makes an `Option<Pin>`
/// no larger; they grow by one per segment written, so 32 bits last
/// 4 billion segments (256 PiB at the default size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pin {
    segment: NonZeroU32,
    share: u32,
}

impl Pin {
    /// `None` for segment 0, which is never used (nor past `u32::MAX`).
    pub(crate) fn new(segment: u64, share: u64) -> Option<Pin> {
        Some(Pin {
            segment: NonZeroU32::new(u32::try_from(segment).ok()?)?,
            share: u32::try_from(share).unwrap_or(u32::MAX),
        })
    }

    pub(crate) fn segment(self) -> u64 {
        u64::from(self.segment.get())
    }

    pub(crate) fn share(self) -> u64 {
        u64::from(self.share)
    }
}

#[derive(Debug, Default)]
struct Ledger {
    /// Bytes in the file that are records or the header.
    bytes: u64,
    /// Records here that queued messages need (see `Entry::segments`).
    live: u64,
    /// What those records are worth in bytes (see the module comment).
    live_bytes: u64,
    /// Older segments this one waits for -> how many of its records do.
    waits_for: BTreeMap<u64, u64>,
}

impl Ledger {
    /// Bytes compaction would not need to copy.
    fn waste(&self) -> u64 {
        self.bytes.saturating_sub(self.live_bytes)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Ledgers {
    segments: BTreeMap<u64, Ledger>,
}

impl Ledgers {
    pub(crate) fn add(&mut self, number: u64, bytes: u64) {
        self.segments.entry(number).or_default().bytes = bytes;
    }

    pub(crate) fn set_bytes(&mut self, number: u64, bytes: u64) {
        if let Some(ledger) = self.segments.get_mut(&number) {
            ledger.bytes = bytes;
        }
    }

    pub(crate) fn pin(&mut self, number: u64, bytes: u64) {
        if let Some(ledger) = self.segments.get_mut(&number) {
            ledger.live += 1;
            ledger.live_bytes += bytes;
        }
    }

    pub(crate) fn unpin(&mut self, number: u64, bytes: u64) {
        if let Some(ledger) = self.segments.get_mut(&number) {
            ledger.live = ledger.live.saturating_sub(1);
            ledger.live_bytes = ledger.live_bytes.saturating_sub(bytes);
        }
    }

    /// The latest record of one kind moved: `slot` now pins `to`.
    pub(crate) fn repin(&mut self, slot: &mut Option<Pin>, to: Option<Pin>) {
        if let Some(from) = std::mem::replace(slot, to) {
            self.unpin(from.segment(), from.share());
        }
        if let Some(to) = to {
            self.pin(to.segment(), to.share());
        }
    }

    /// Segment `at` must not go before segment `older` (see the module
    /// comment); nothing to wait for when they are the same.
    pub(crate) fn wait(&mut self, at: u64, older: u64) {
        if at != older
            && let Some(ledger) = self.segments.get_mut(&at)
        {
            *ledger.waits_for.entry(older).or_default() += 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.segments.len()
    }

    pub(crate) fn bytes(&self, number: u64) -> Option<u64> {
        self.segments.get(&number).map(|l| l.bytes)
    }

    /// Every segment's bytes: what the files hold.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.segments.values().map(|l| l.bytes).sum()
    }

    /// What the records queued messages need are worth, over all
    /// segments (see the module comment: never more than they hold).
    pub(crate) fn live_bytes(&self) -> u64 {
        self.segments.values().map(|l| l.live_bytes).sum()
    }

    pub(crate) fn live(&self, number: u64) -> u64 {
        self.segments.get(&number).map_or(0, |l| l.live)
    }

    pub(crate) fn last(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }

    /// The older segments `number` waits for that still exist.
    fn waiting_on(&self, number: u64) -> impl Iterator<Item = u64> + '_ {
        self.segments
            .get(&number)
            .into_iter()
            .flat_map(|l| l.waits_for.keys().copied())
            .filter(|older| self.segments.contains_key(older))
    }

    /// The oldest segment other than `active` that can be deleted.
    pub(crate) fn collectable(&self, active: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(number, ledger)| {
                **number != active && ledger.live == 0 && self.waiting_on(**number).next().is_none()
            })
            .map(|(number, _)| *number)
    }

    pub(crate) fn drop_segment(&mut self, number: u64) {
        self.segments.remove(&number);
        for ledger in self.segments.values_mut() {
            ledger.waits_for.remove(&number);
        }
    }

    /// The closed segments (not `active`, not in `skip`) worth compacting:
    /// copying a segment's live bytes forward lets it go, and with it the
    /// dead segments that wait for it ("stuck" behind it). It is worth it
    /// once what goes is at least what is copied:
    ///
    /// `waste(s) + stuck(s) >= live_bytes(s)`
    ///
    /// Then whenever no segment qualifies, each closed segment with live
    /// records holds, together with the dead ones stuck behind it, less
    /// than twice its live bytes, and every other closed segment is
    /// deleted: the closed segments hold less than twice the live bytes.
    /// A dead segment is stuck behind the oldest segment it waits for, or
    /// if that one is dead and stuck too, behind whatever that one is
    /// stuck behind (waiting only ever points at older segments).
    pub(crate) fn worth_compacting(&self, active: u64, skip: &BTreeSet<u64>) -> BTreeSet<u64> {
        let mut blocker: BTreeMap<u64, u64> = BTreeMap::new();
        let mut stuck: BTreeMap<u64, u64> = BTreeMap::new();
        for (&number, ledger) in &self.segments {
            if number == active || ledger.live > 0 {
                continue;
            }
            let Some(oldest) = self.waiting_on(number).min() else {
                continue;
            };
            let behind = if self.live(oldest) > 0 {
                Some(oldest)
            } else {
                blocker.get(&oldest).copied()
            };
            if let Some(behind) = behind {
                blocker.insert(number, behind);
                *stuck.entry(behind).or_default() += ledger.bytes;
            }
        }
        self.segments
            .iter()
            .filter(|(number, ledger)| {
                **number != active
                    && !skip.contains(number)
                    && ledger.live > 0
                    && ledger.waste() + stuck.get(number).copied().unwrap_or(0) >= ledger.live_bytes
            })
            .map(|(number, _)| *number)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledgers(sizes: &[u64]) -> Ledgers {
        let mut ledgers = Ledgers::default();
        for (n, bytes) in sizes.iter().enumerate() {
            ledgers.add(n as u64 + 1, *bytes);
        }
        ledgers
    }

    fn set(numbers: &[u64]) -> BTreeSet<u64> {
        numbers.iter().copied().collect()
    }

    #[test]
    fn a_segment_is_worth_compacting_once_half_of_it_is_dead() {
        let mut l = ledgers(&[1000, 1000, 1000, 1000]);
        l.pin(1, 600);
        l.pin(2, 500);
        l.pin(3, 10);
        l.pin(4, 10);
        assert_eq!(l.worth_compacting(4, &set(&[])), set(&[2, 3]));
        assert_eq!(l.worth_compacting(4, &set(&[3])), set(&[2]), "skipped");
        assert_eq!(l.worth_compacting(3, &set(&[])), set(&[2, 4]), "active");
    }

    #[test]
    fn live_records_worth_no_bytes_still_get_their_segment_compacted() {
        let mut l = ledgers(&[1000, 1000]);
        l.pin(1, 0);
        assert_eq!(l.worth_compacting(2, &set(&[])), set(&[1]));
    }

    #[test]
    fn dead_segments_stuck_behind_a_live_one_make_it_worth_compacting() {
        // 1 is 80 % live; 2 and 3 are dead but hold removals of messages
        // in 1; 4 is dead and waits for 3 (stuck behind 1 too).
        let mut l = ledgers(&[1000, 100, 100, 100, 1000]);
        l.pin(1, 800);
        l.wait(2, 1);
        l.wait(3, 1);
        l.wait(4, 3);
        assert_eq!(l.collectable(5), None);
        assert!(
            l.worth_compacting(5, &set(&[])).is_empty(),
            "200 + 300 < 800"
        );
        l.add(4, 400);
        assert_eq!(
            l.worth_compacting(5, &set(&[])),
            set(&[1]),
            "200 + 600 >= 800"
        );
    }

    #[test]
    fn waiting_for_an_older_segment_holds_a_dead_one_until_that_one_goes() {
        let mut l = ledgers(&[100, 100, 100]);
        l.pin(1, 50);
        l.wait(2, 1);
        l.wait(3, 3);
        assert_eq!(l.collectable(1), Some(3), "waiting for itself is nothing");
        l.unpin(1, 50);
        assert_eq!(l.collectable(3), Some(1));
        l.drop_segment(1);
        assert_eq!(l.collectable(3), Some(2));
    }

    #[test]
    fn pins_account_bytes_and_never_go_below_zero() {
        let mut l = ledgers(&[100]);
        let mut slot = None;
        l.repin(&mut slot, Pin::new(1, 30));
        assert_eq!((l.live(1), l.segments[&1].live_bytes), (1, 30));
        l.repin(&mut slot, Pin::new(1, 20));
        assert_eq!((l.live(1), l.segments[&1].live_bytes), (1, 20));
        l.unpin(1, 500);
        l.unpin(1, 500);
        assert_eq!((l.live(1), l.segments[&1].live_bytes), (0, 0));
        assert_eq!(Pin::new(0, 1), None);
        assert_eq!(std::mem::size_of::<Option<Pin>>(), 8);
    }
}
