//! The in-memory index: which messages are queued, their delivery state,
//! and where their records are. Pure bookkeeping, no I/O; which segments
//! can go (and which are worth compacting) is the `ledger`'s part.
//!
//! A queued message needs its message record and the latest of each kind
//! of state it has: one state record per recipient, the latest hold
//! record, the notice that marked it warned. Those pin their segments.
//! Older states it has outgrown do not: replay lets the later record win
//! whether or not the earlier one is still there. State records of a
//! message that is gone pin nothing and replay to nothing, since they
//! never create an entry.
//!
//! Two message records for one id (a compacted copy and its original, both
//! on disk after a crash between the copy and the deletion of the old
//! segment) are one message: the later record in replay order wins, with
//! the states it carries. That is right because the writer takes a copy's
//! states from the index at the point in the log where the copy is
//! appended: everything before it is already folded in, everything after
//! it (later states, a removal) is newer and replays over it.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::iter;
use std::ops::Bound;

use super::envelope::Envelope;
use super::id::QueueId;
use super::ledger::{Ledgers, Pin};
use super::record::Record;
use super::tally::Tally;
use super::types::{DeliveryState, Location, Notice, Queued, RecipientState};

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub envelope: Envelope,
    /// The message record (the body is read back from it).
    pub location: Location,
    pub body_len: u64,
    /// Parallel to `envelope.recipients`.
    pub recipients: Vec<RecipientState>,
    pub held: bool,
    pub warned: bool,
    pins: Pins,
}

/// The latest state records of one message: where, and what they are
/// worth (see `ledger`).
#[derive(Clone, Debug, Default, PartialEq)]
struct Pins {
    recipients: Vec<Option<Pin>>,
    held: Option<Pin>,
    warned: Option<Pin>,
}

impl Entry {
    /// A freshly committed message: every recipient pending.
    pub(crate) fn new(envelope: Envelope, location: Location, body_len: u64) -> Entry {
        let count = envelope.recipients.len();
        Entry {
            recipients: vec![RecipientState::Pending; count],
            held: false,
            warned: envelope.handed_off.as_ref().is_some_and(|h| h.warned),
            pins: Pins {
                recipients: vec![None; count],
                ..Pins::default()
            },
            envelope,
            location,
            body_len,
        }
    }

    /// A compacted copy: the message with the whole state it carries, all
    /// of it in the one record at `location`.
    fn copied(
        envelope: Envelope,
        location: Location,
        body_len: u64,
        state: DeliveryState,
    ) -> Entry {
        let mut entry = Entry::new(envelope, location, body_len);
        for (slot, recipient) in entry.recipients.iter_mut().zip(state.recipients) {
            *slot = recipient;
        }
        entry.held = state.held;
        entry.warned = state.warned;
        entry.pin_all_to(location.segment);
        entry
    }

    /// Every state pinned in segment `at`, worth nothing: the record there
    /// is the message record, counted whole by `location`.
    fn pin_all_to(&mut self, at: u64) {
        let pin = Pin::new(at, 0);
        self.pins.recipients.fill(pin);
        self.pins.held = pin;
        self.pins.warned = pin;
    }

    /// Every segment this entry needs, once per record it needs there,
    /// with what that record is worth.
    fn segments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let pins = self.pins.recipients.iter().flatten();
        iter::once((self.location.segment, self.location.len)).chain(
            pins.chain(&self.pins.held)
                .chain(&self.pins.warned)
                .map(|pin| (pin.segment(), pin.share())),
        )
    }

    /// Whether any record this entry needs is in one of `segments`.
    pub(crate) fn needs_any(&self, segments: &BTreeSet<u64>) -> bool {
        self.segments()
            .any(|(number, _)| segments.contains(&number))
    }

    pub(crate) fn state(&self) -> DeliveryState {
        DeliveryState {
            recipients: self.recipients.clone(),
            held: self.held,
            warned: self.warned,
        }
    }

    fn queued(&self, id: QueueId) -> Queued {
        Queued {
            id,
            envelope: self.envelope.clone(),
            recipients: self.recipients.clone(),
            held: self.held,
            warned: self.warned,
        }
    }
}

/// `len` bytes shared among `count` pins.
fn share(len: u64, count: usize) -> u64 {
    len / (count.max(1) as u64)
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: BTreeMap<QueueId, Entry>,
    segments: Ledgers,
    body_bytes: u64,
    tally: Tally,
}

impl Index {
    pub(crate) fn add_segment(&mut self, number: u64, bytes: u64) {
        self.segments.add(number, bytes);
    }

    pub(crate) fn set_segment_bytes(&mut self, number: u64, bytes: u64) {
        self.segments.set_bytes(number, bytes);
    }

    /// Replay one record found at `location`, in write order.
    pub(crate) fn apply(&mut self, location: Location, record: Record<'_>) {
        match record {
            Record::Message { id, envelope, body } => {
                self.insert(id, Entry::new(envelope, location, body.len() as u64));
            }
            Record::Removed { id } => {
                self.remove(&id, location.segment);
            }
            Record::States { id, updates } => self.set_states(&id, updates, location),
            Record::Held { id, held } => self.set_held(&id, held, location),
            Record::Notice {
                id,
                envelope,
                body,
                about,
                notice,
            } => {
                self.insert(id, Entry::new(envelope, location, body.len() as u64));
                self.notice(&about, notice, location);
            }
            Record::Copy {
                id,
                envelope,
                body,
                state,
            } => {
                let entry = Entry::copied(envelope, location, body.len() as u64, state);
                self.insert(id, entry);
            }
            Record::Snapshot { id, state } => self.snapshot(&id, state, location),
        }
    }

    /// A later record for the same id wins, as replay order demands; its
    /// segment then waits for the earlier one's (see `ledger`).
    pub(crate) fn insert(&mut self, id: QueueId, entry: Entry) {
        for (number, bytes) in entry.segments() {
            self.segments.pin(number, bytes);
        }
        self.body_bytes += entry.body_len;
        for state in &entry.recipients {
            self.tally.add(state);
        }
        self.tally.hold(false, entry.held);
        let home = entry.location.segment;
        if let Some(old) = self.entries.insert(id, entry) {
            self.forget(&old);
            self.segments.wait(home, old.location.segment);
        }
    }

    /// The message was copied, with its whole current state, into the
    /// record at `location` (see `compact`).
    pub(crate) fn relocate(&mut self, id: &QueueId, location: Location) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        for (number, bytes) in entry.segments() {
            self.segments.unpin(number, bytes);
        }
        let old = std::mem::replace(&mut entry.location, location);
        entry.pin_all_to(location.segment);
        for (number, bytes) in entry.segments() {
            self.segments.pin(number, bytes);
        }
        self.segments.wait(location.segment, old.segment);
    }

    /// Remove a message whose removal record is in segment `at`.
    pub(crate) fn remove(&mut self, id: &QueueId, at: u64) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.forget(&entry);
        self.segments.wait(at, entry.location.segment);
        Some(entry)
    }

    /// What a notice (the record at `at`) does to the message it is about.
    pub(crate) fn notice(&mut self, about: &QueueId, notice: Notice, at: Location) {
        match notice {
            Notice::Bounce => {
                self.remove(about, at.segment);
            }
            Notice::DelayWarning => {
                if let Some(entry) = self.entries.get_mut(about) {
                    entry.warned = true;
                    // The notice's bytes count for the notice message.
                    let pin = Pin::new(at.segment, 0);
                    self.segments.repin(&mut entry.pins.warned, pin);
                }
            }
        }
    }

    /// New states from the record at `at`. A message that is gone stays
    /// gone: states never create an entry.
    pub(crate) fn set_states(
        &mut self,
        id: &QueueId,
        updates: Vec<(usize, RecipientState)>,
        at: Location,
    ) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        let pin = Pin::new(at.segment, share(at.len, updates.len()));
        for (index, state) in updates {
            // The writer refuses out-of-range updates, so one here can only
            // come from a record damaged in a way the CRC did not catch.
            let (Some(slot), Some(pinned)) = (
                entry.recipients.get_mut(index),
                entry.pins.recipients.get_mut(index),
            ) else {
                continue;
            };
            self.tally.sub(slot);
            self.tally.add(&state);
            *slot = state;
            self.segments.repin(pinned, pin);
        }
    }

    pub(crate) fn set_held(&mut self, id: &QueueId, held: bool, at: Location) {
        if let Some(entry) = self.entries.get_mut(id) {
            self.tally.hold(entry.held, held);
            entry.held = held;
            let pin = Pin::new(at.segment, at.len);
            self.segments.repin(&mut entry.pins.held, pin);
        }
    }

    /// The whole state of a message, from one record at `at` (see
    /// `compact`): every recipient, the hold and the warned mark.
    pub(crate) fn snapshot(&mut self, id: &QueueId, state: DeliveryState, at: Location) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        let pins = entry.recipients.len() + 2;
        let pin = Pin::new(at.segment, share(at.len, pins));
        let slots = entry.recipients.iter_mut().zip(&mut entry.pins.recipients);
        for ((slot, pinned), recipient) in slots.zip(state.recipients) {
            self.tally.sub(slot);
            self.tally.add(&recipient);
            *slot = recipient;
            self.segments.repin(pinned, pin);
        }
        self.tally.hold(entry.held, state.held);
        entry.held = state.held;
        entry.warned = state.warned;
        self.segments.repin(&mut entry.pins.held, pin);
        self.segments.repin(&mut entry.pins.warned, pin);
    }

    fn forget(&mut self, entry: &Entry) {
        self.body_bytes = self.body_bytes.saturating_sub(entry.body_len);
        for state in &entry.recipients {
            self.tally.sub(state);
        }
        self.tally.hold(entry.held, false);
        for (number, bytes) in entry.segments() {
            self.segments.unpin(number, bytes);
        }
    }

    /// Queued recipients by state.
    pub(crate) fn tally(&self) -> Tally {
        self.tally
    }

    /// When the oldest queued message arrived (ids grow with time).
    pub(crate) fn oldest_received(&self) -> Option<i64> {
        self.entries.values().next().map(|e| e.envelope.received_at)
    }

    pub(crate) fn get(&self, id: &QueueId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub(crate) fn contains(&self, id: &QueueId) -> bool {
        self.entries.contains_key(id)
    }

    /// The entries after `cursor` (all of them without one), in id order.
    pub(crate) fn entries_after(
        &self,
        cursor: Option<QueueId>,
    ) -> impl Iterator<Item = (&QueueId, &Entry)> {
        let from = cursor.map_or(Bound::Unbounded, Bound::Excluded);
        self.entries.range((from, Bound::Unbounded))
    }

    pub(crate) fn messages(&self) -> Vec<(QueueId, Envelope)> {
        self.entries
            .iter()
            .map(|(id, entry)| (*id, entry.envelope.clone()))
            .collect()
    }

    pub(crate) fn queued(&self) -> Vec<Queued> {
        self.entries
            .iter()
            .map(|(id, entry)| entry.queued(*id))
            .collect()
    }

    pub(crate) fn queued_one(&self, id: &QueueId) -> Option<Queued> {
        self.entries.get(id).map(|entry| entry.queued(*id))
    }

    /// The queued ids, sorted, with nothing else copied.
    pub(crate) fn ids(&self) -> Vec<QueueId> {
        self.entries.keys().copied().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    pub(crate) fn segments(&self) -> &Ledgers {
        &self.segments
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub(crate) fn segment_bytes(&self, number: u64) -> Option<u64> {
        self.segments.bytes(number)
    }

    pub(crate) fn last_segment(&self) -> Option<u64> {
        self.segments.last()
    }

    /// The oldest segment other than `active` that can be deleted.
    pub(crate) fn collectable(&self, active: u64) -> Option<u64> {
        self.segments.collectable(active)
    }

    pub(crate) fn drop_segment(&mut self, number: u64) {
        self.segments.drop_segment(number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::envelope;

    fn id(n: u32) -> QueueId {
        QueueId::from_parts(1_000, n, 0)
    }

    fn message(index: &mut Index, n: u32, segment: u64) {
        let location = Location {
            segment,
            offset: 16,
            len: 100,
        };
        index.insert(id(n), Entry::new(envelope(1), location, 10));
    }

    /// A state record in `segment`.
    fn at(segment: u64) -> Location {
        Location {
            segment,
            offset: 16,
            len: 40,
        }
    }

    fn index_with_segments(count: u64) -> Index {
        let mut index = Index::default();
        for n in 1..=count {
            index.add_segment(n, 16);
        }
        index
    }

    #[test]
    fn a_segment_with_a_queued_message_is_kept() {
        let mut index = index_with_segments(2);
        message(&mut index, 1, 1);
        assert_eq!(index.collectable(2), None);
        index.remove(&id(1), 1);
        assert_eq!(index.collectable(2), Some(1));
        assert_eq!(index.len(), 0);
        assert_eq!(index.body_bytes(), 0);
    }

    #[test]
    fn the_active_segment_is_never_collected() {
        let index = index_with_segments(1);
        assert_eq!(index.collectable(1), None);
    }

    #[test]
    fn a_removal_is_kept_while_the_message_it_removes_is_on_disk() {
        // Segment 1: A and C. Segment 2: B and the removal of A.
        let mut index = index_with_segments(3);
        message(&mut index, 1, 1);
        message(&mut index, 3, 1);
        message(&mut index, 2, 2);
        index.remove(&id(1), 2);
        index.remove(&id(2), 2);
        // Deleting segment 2 would resurrect A: C still pins segment 1.
        assert_eq!(index.collectable(3), None);
        index.remove(&id(3), 3);
        assert_eq!(index.collectable(3), Some(1));
        index.drop_segment(1);
        assert_eq!(index.collectable(3), Some(2));
    }

    #[test]
    fn a_later_record_for_the_same_id_replaces_the_earlier() {
        let mut index = index_with_segments(2);
        message(&mut index, 1, 1);
        message(&mut index, 1, 2);
        assert_eq!(index.len(), 1);
        assert_eq!(index.body_bytes(), 10);
        assert_eq!(index.get(&id(1)).map(|e| e.location.segment), Some(2));
        assert_eq!(index.collectable(2), Some(1));
    }

    fn delivered() -> RecipientState {
        RecipientState::Delivered {
            reply: "250".into(),
        }
    }

    #[test]
    fn the_latest_state_records_of_a_queued_message_pin_their_segments() {
        // Message in 1, a state in 2, a hold in 3, a delay warning in 4.
        let mut index = index_with_segments(5);
        message(&mut index, 1, 1);
        index.set_states(&id(1), vec![(0, delivered())], at(2));
        index.set_held(&id(1), true, at(3));
        index.notice(&id(1), Notice::DelayWarning, at(4));
        assert_eq!(index.collectable(5), None);
        let entry = index.get(&id(1)).unwrap();
        assert_eq!(
            entry.recipients,
            [delivered(), RecipientState::Pending],
            "{entry:?}"
        );
        assert!(entry.held && entry.warned);

        // Outgrown records pin nothing.
        index.set_states(&id(1), vec![(0, RecipientState::Pending)], at(5));
        assert_eq!(index.collectable(5), Some(2));
        index.drop_segment(2);
        index.set_held(&id(1), false, at(5));
        assert_eq!(index.collectable(5), Some(3));
        index.drop_segment(3);
        // Gone: everything it pinned is free, and states bring nothing back.
        index.remove(&id(1), 5);
        index.set_states(&id(1), vec![(0, delivered())], at(4));
        index.set_held(&id(1), true, at(4));
        assert_eq!(index.len(), 0);
        assert_eq!(index.collectable(5), Some(1));
        index.drop_segment(1);
        assert_eq!(index.collectable(5), Some(4));
    }

    #[test]
    fn an_update_for_a_recipient_the_message_lacks_is_ignored() {
        let mut index = index_with_segments(3);
        message(&mut index, 1, 1);
        index.set_states(&id(1), vec![(2, delivered()), (1, delivered())], at(2));
        let entry = index.get(&id(1)).unwrap();
        assert_eq!(entry.recipients, [RecipientState::Pending, delivered()]);
    }

    #[test]
    fn a_bounce_is_a_removal_of_the_message_it_is_about() {
        // Segment 1: A and C. Segment 2: the bounce of A (itself queued).
        let mut index = index_with_segments(3);
        message(&mut index, 1, 1);
        message(&mut index, 3, 1);
        message(&mut index, 2, 2);
        index.notice(&id(1), Notice::Bounce, at(2));
        assert_eq!(index.len(), 2);
        index.remove(&id(2), 3);
        assert_eq!(index.collectable(3), None, "C pins 1, so 2 must stay");
    }

    #[test]
    fn removing_an_unknown_id_changes_nothing() {
        let mut index = index_with_segments(2);
        assert_eq!(index.remove(&id(9), 2), None);
        assert_eq!(index.collectable(2), Some(1));
    }
}
