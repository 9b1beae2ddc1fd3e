//! The in-memory index: which messages are queued, their delivery state,
//! where their records are, and which segments can be deleted. Pure
//! bookkeeping, no I/O.
//!
//! A segment may be deleted when no queued message needs a record in it
//! and none of its removal records still matters. A queued message needs
//! its message record and the latest of each kind of state it has: one
//! state record per recipient, the latest hold record, the notice that
//! marked it warned. Older states it has outgrown do not pin their
//! segment: replay lets the later record win whether or not the earlier
//! one is still there. State records of a message that is gone pin
//! nothing and replay to nothing, since they never create an entry.
//!
//! A removal record (and a bounce notice, which removes the message it is
//! about) matters while the segment holding the message it removes
//! exists: delete the removal first and the message would come back at the
//! next recovery. Removals always sit in the same or a later segment than
//! their message (only the newest segment is appended to), so this never
//! deadlocks.

use std::collections::BTreeMap;
use std::iter;

use super::envelope::Envelope;
use super::id::QueueId;
use super::record::Record;
use super::types::{Location, Notice, Queued, RecipientState};

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

/// The segments holding the latest state records of one message.
#[derive(Clone, Debug, Default, PartialEq)]
struct Pins {
    recipients: Vec<Option<u64>>,
    held: Option<u64>,
    warned: Option<u64>,
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

    /// Every segment this entry needs, once per record it needs there.
    fn segments(&self) -> impl Iterator<Item = u64> + '_ {
        iter::once(self.location.segment)
            .chain(self.pins.recipients.iter().flatten().copied())
            .chain(self.pins.held)
            .chain(self.pins.warned)
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

#[derive(Debug, Default)]
struct Ledger {
    /// Bytes in the file that are records or the header.
    bytes: u64,
    /// Records here that queued messages need (see `Entry::segments`).
    live: u64,
    /// For removal records here: older segment -> how many removals of
    /// messages in it.
    removals_of: BTreeMap<u64, u64>,
}

type Ledgers = BTreeMap<u64, Ledger>;

fn pin(segments: &mut Ledgers, number: u64) {
    if let Some(ledger) = segments.get_mut(&number) {
        ledger.live += 1;
    }
}

fn unpin(segments: &mut Ledgers, number: u64) {
    if let Some(ledger) = segments.get_mut(&number) {
        ledger.live = ledger.live.saturating_sub(1);
    }
}

/// The latest record of one kind moved to segment `to`.
fn repin(segments: &mut Ledgers, slot: &mut Option<u64>, to: u64) {
    if let Some(from) = slot.replace(to) {
        unpin(segments, from);
    }
    pin(segments, to);
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: BTreeMap<QueueId, Entry>,
    segments: Ledgers,
    body_bytes: u64,
}

impl Index {
    pub(crate) fn add_segment(&mut self, number: u64, bytes: u64) {
        self.segments.entry(number).or_default().bytes = bytes;
    }

    pub(crate) fn set_segment_bytes(&mut self, number: u64, bytes: u64) {
        if let Some(ledger) = self.segments.get_mut(&number) {
            ledger.bytes = bytes;
        }
    }

    /// Replay one record found at `location`, in write order.
    pub(crate) fn apply(&mut self, location: Location, record: Record<'_>) {
        let at = location.segment;
        match record {
            Record::Message { id, envelope, body } => {
                self.insert(id, Entry::new(envelope, location, body.len() as u64));
            }
            Record::Removed { id } => {
                self.remove(&id, at);
            }
            Record::States { id, updates } => self.set_states(&id, updates, at),
            Record::Held { id, held } => self.set_held(&id, held, at),
            Record::Notice {
                id,
                envelope,
                body,
                about,
                notice,
            } => {
                self.insert(id, Entry::new(envelope, location, body.len() as u64));
                self.notice(&about, notice, at);
            }
        }
    }

    /// A later record for the same id wins, as replay order demands.
    pub(crate) fn insert(&mut self, id: QueueId, entry: Entry) {
        for number in entry.segments() {
            pin(&mut self.segments, number);
        }
        self.body_bytes += entry.body_len;
        if let Some(old) = self.entries.insert(id, entry) {
            self.forget(&old);
        }
    }

    /// Remove a message whose removal record is in segment `at`.
    pub(crate) fn remove(&mut self, id: &QueueId, at: u64) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.forget(&entry);
        let home = entry.location.segment;
        if home != at
            && let Some(ledger) = self.segments.get_mut(&at)
        {
            *ledger.removals_of.entry(home).or_default() += 1;
        }
        Some(entry)
    }

    /// What a notice (in segment `at`) does to the message it is about.
    pub(crate) fn notice(&mut self, about: &QueueId, notice: Notice, at: u64) {
        match notice {
            Notice::Bounce => {
                self.remove(about, at);
            }
            Notice::DelayWarning => {
                if let Some(entry) = self.entries.get_mut(about) {
                    entry.warned = true;
                    repin(&mut self.segments, &mut entry.pins.warned, at);
                }
            }
        }
    }

    /// New states from a record in segment `at`. A message that is gone
    /// stays gone: states never create an entry.
    pub(crate) fn set_states(
        &mut self,
        id: &QueueId,
        updates: Vec<(usize, RecipientState)>,
        at: u64,
    ) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        for (index, state) in updates {
            // The writer refuses out-of-range updates, so one here can only
            // come from a record damaged in a way the CRC did not catch.
            let (Some(slot), Some(pinned)) = (
                entry.recipients.get_mut(index),
                entry.pins.recipients.get_mut(index),
            ) else {
                continue;
            };
            *slot = state;
            repin(&mut self.segments, pinned, at);
        }
    }

    pub(crate) fn set_held(&mut self, id: &QueueId, held: bool, at: u64) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.held = held;
            repin(&mut self.segments, &mut entry.pins.held, at);
        }
    }

    fn forget(&mut self, entry: &Entry) {
        self.body_bytes = self.body_bytes.saturating_sub(entry.body_len);
        for number in entry.segments() {
            unpin(&mut self.segments, number);
        }
    }

    pub(crate) fn get(&self, id: &QueueId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub(crate) fn contains(&self, id: &QueueId) -> bool {
        self.entries.contains_key(id)
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

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub(crate) fn segment_bytes(&self, number: u64) -> Option<u64> {
        self.segments.get(&number).map(|l| l.bytes)
    }

    pub(crate) fn last_segment(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }

    /// The oldest segment other than `active` that can be deleted.
    pub(crate) fn collectable(&self, active: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(number, ledger)| {
                **number != active
                    && ledger.live == 0
                    && ledger
                        .removals_of
                        .keys()
                        .all(|home| !self.segments.contains_key(home))
            })
            .map(|(number, _)| *number)
    }

    pub(crate) fn drop_segment(&mut self, number: u64) {
        self.segments.remove(&number);
        for ledger in self.segments.values_mut() {
            ledger.removals_of.remove(&number);
        }
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
        index.set_states(&id(1), vec![(0, delivered())], 2);
        index.set_held(&id(1), true, 3);
        index.notice(&id(1), Notice::DelayWarning, 4);
        assert_eq!(index.collectable(5), None);
        let entry = index.get(&id(1)).unwrap();
        assert_eq!(
            entry.recipients,
            [delivered(), RecipientState::Pending],
            "{entry:?}"
        );
        assert!(entry.held && entry.warned);

        // Outgrown records pin nothing.
        index.set_states(&id(1), vec![(0, RecipientState::Pending)], 5);
        assert_eq!(index.collectable(5), Some(2));
        index.drop_segment(2);
        index.set_held(&id(1), false, 5);
        assert_eq!(index.collectable(5), Some(3));
        index.drop_segment(3);
        // Gone: everything it pinned is free, and states bring nothing back.
        index.remove(&id(1), 5);
        index.set_states(&id(1), vec![(0, delivered())], 4);
        index.set_held(&id(1), true, 4);
        assert_eq!(index.len(), 0);
        assert_eq!(index.collectable(5), Some(1));
        index.drop_segment(1);
        assert_eq!(index.collectable(5), Some(4));
    }

    #[test]
    fn an_update_for_a_recipient_the_message_lacks_is_ignored() {
        let mut index = index_with_segments(3);
        message(&mut index, 1, 1);
        index.set_states(&id(1), vec![(2, delivered()), (1, delivered())], 2);
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
        index.notice(&id(1), Notice::Bounce, 2);
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
