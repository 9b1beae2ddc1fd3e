//! The in-memory index: which messages are queued, where their records
//! are, and which segments can be deleted. Pure bookkeeping, no I/O.
//!
//! A segment may be deleted when no queued message has a record in it and
//! none of its removal records still matters. A removal record matters
//! while the segment holding the message it removes exists: delete the
//! removal first and the message would come back at the next recovery.
//! Removals always sit in the same or a later segment than their message
//! (only the newest segment is appended to), so this never deadlocks.

use std::collections::BTreeMap;

use super::envelope::Envelope;
use super::id::QueueId;
use super::record::Record;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub segment: u64,
    /// Offset of the frame in the segment.
    pub offset: u64,
    /// Frame length, header included.
    pub len: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub envelope: Envelope,
    pub location: Location,
    pub body_len: u64,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Bytes in the file that are records or the header.
    bytes: u64,
    /// Queued messages whose records are here.
    live: u64,
    /// For removal records here: older segment -> how many removals of
    /// messages in it.
    removals_of: BTreeMap<u64, u64>,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: BTreeMap<QueueId, Entry>,
    segments: BTreeMap<u64, Ledger>,
    body_bytes: u64,
}

impl Index {
    pub fn add_segment(&mut self, number: u64, bytes: u64) {
        self.segments.entry(number).or_default().bytes = bytes;
    }

    pub fn set_segment_bytes(&mut self, number: u64, bytes: u64) {
        if let Some(ledger) = self.segments.get_mut(&number) {
            ledger.bytes = bytes;
        }
    }

    /// Replay one record found at `location`, in write order.
    pub fn apply(&mut self, location: Location, record: Record<'_>) {
        match record {
            Record::Message { id, envelope, body } => {
                let body_len = body.len() as u64;
                self.insert(
                    id,
                    Entry {
                        envelope,
                        location,
                        body_len,
                    },
                );
            }
            Record::Removed { id } => {
                self.remove(&id, location.segment);
            }
        }
    }

    /// A later record for the same id wins, as replay order demands.
    pub fn insert(&mut self, id: QueueId, entry: Entry) {
        if let Some(ledger) = self.segments.get_mut(&entry.location.segment) {
            ledger.live += 1;
        }
        self.body_bytes += entry.body_len;
        if let Some(old) = self.entries.insert(id, entry) {
            self.forget(&old);
        }
    }

    /// Remove a message whose removal record is in segment `at`.
    pub fn remove(&mut self, id: &QueueId, at: u64) -> Option<Entry> {
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

    fn forget(&mut self, entry: &Entry) {
        self.body_bytes = self.body_bytes.saturating_sub(entry.body_len);
        if let Some(ledger) = self.segments.get_mut(&entry.location.segment) {
            ledger.live = ledger.live.saturating_sub(1);
        }
    }

    pub fn get(&self, id: &QueueId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn contains(&self, id: &QueueId) -> bool {
        self.entries.contains_key(id)
    }

    pub fn messages(&self) -> Vec<(QueueId, Envelope)> {
        self.entries
            .iter()
            .map(|(id, entry)| (*id, entry.envelope.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn segment_bytes(&self, number: u64) -> Option<u64> {
        self.segments.get(&number).map(|l| l.bytes)
    }

    pub fn last_segment(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }

    /// The oldest segment other than `active` that can be deleted.
    pub fn collectable(&self, active: u64) -> Option<u64> {
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

    pub fn drop_segment(&mut self, number: u64) {
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
        index.insert(
            id(n),
            Entry {
                envelope: envelope(1),
                location,
                body_len: 10,
            },
        );
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

    #[test]
    fn removing_an_unknown_id_changes_nothing() {
        let mut index = index_with_segments(2);
        assert_eq!(index.remove(&id(9), 2), None);
        assert_eq!(index.collectable(2), Some(1));
    }
}
