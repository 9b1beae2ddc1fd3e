//! Compaction: the live records of mostly dead segments are copied forward
//! into the active segment, so the old segments can be deleted.
//!
//! Without it a segment stays while one message in it is queued, and a
//! relay with any deferred mail keeps nearly all the traffic of its
//! messages' lifetime on disk. With it the closed segments hold less than
//! twice the live bytes (see `Ledgers::worth_compacting` for the rule and
//! why it bounds the space).
//!
//! A pass takes the segments worth compacting at its start (the sources)
//! and walks the index once, in id order, in steps of at most
//! `STEP_ENTRIES` entries and `STEP_BYTES` of copies. For each message
//! that needs a record in a source:
//!
//! - its message record is there: one COPY record, the message with its
//!   whole delivery state (every recipient, hold, warned), read back from
//!   its records;
//! - only some of its state is there: one SNAPSHOT record with its whole
//!   delivery state.
//!
//! A step's records go through the writer like any other: appended in
//! front of the requests of the batch it rides with (or alone when there
//! are none), synced with them, and only then applied to the index. Their
//! states are read from the records the index points to as the batch
//! begins (see `load`), which is exactly what replaying the log up to
//! that point gives; the batch's own requests
//! come after and replay over them. So a step never waits for more than
//! one batch, a batch carries at most one step, and commits keep going.
//!
//! Crash safety: the old records stay until their segment is deleted,
//! which happens only after the copies are synced, oldest segment first.
//! A crash in between leaves both; recovery keeps the later one (see
//! `index`) and the old segment, no longer needed, is deleted at open. A
//! torn copy is cut off like any torn record, and the original still
//! holds. A segment with a copy waits for the segment of the original
//! (see `ledger`), so the original can never outlive the copy and a
//! removal of the message.
//!
//! While the disk is full compaction pauses: the reserve's room is for
//! delivery's records.
//!
//! What it costs: a pass copies no more than it frees (that is the rule),
//! and its records ride in batches that sync anyway. But copies land in
//! the active segment among new mail; once that mail is delivered the
//! segment is mostly dead again and its copies are copied once more, until
//! copies make up half of a segment. So a long-deferred message may be
//! copied several times, and the extra bytes written can reach the bytes
//! of new mail when much of it is deferred. Keeping copies in segments of
//! their own would avoid that, but replay order is segment order, so a
//! second segment appended beside the active one needs records that say
//! their order (not in this format).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::error::SpoolError;
use super::id::QueueId;
use super::index::Index;
use super::record;
use super::state::{RecordRef, Shared};
use super::types::{DeliveryState, Location};

/// At most this many bytes of copies per step.
pub(crate) const STEP_BYTES: u64 = 1 << 20;
/// At most this many index entries looked at per step.
pub(crate) const STEP_ENTRIES: usize = 4096;
/// What a snapshot is taken to cost before it is encoded.
const SNAPSHOT_ESTIMATE: u64 = 128;

/// One message to move forward.
#[derive(Debug, PartialEq)]
pub(crate) struct Planned {
    pub id: QueueId,
    /// Its whole delivery state, read from its records when the step is
    /// made (empty in the plan).
    pub state: DeliveryState,
    /// The message record, when it is in a source: copy it whole.
    pub from: Option<Location>,
}

/// Where the pass goes on from after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    After(QueueId),
    Done,
}

/// One pass over the index for a set of source segments.
#[derive(Debug)]
pub(crate) struct Pass {
    sources: BTreeSet<u64>,
    cursor: Option<QueueId>,
    done: bool,
    /// Records copied forward and their bytes.
    pub records: u64,
    pub bytes: u64,
}

impl Pass {
    pub(crate) fn new(sources: BTreeSet<u64>) -> Pass {
        Pass {
            sources,
            cursor: None,
            done: false,
            records: 0,
            bytes: 0,
        }
    }

    pub(crate) fn sources(&self) -> &BTreeSet<u64> {
        &self.sources
    }

    /// The next step's moves, from the index as it is now.
    pub(crate) fn plan(&self, index: &Index) -> (Vec<Planned>, Next) {
        let mut moves = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        for (examined, (id, entry)) in index.entries_after(self.cursor).enumerate() {
            if let Some(last) = last.filter(|_| examined == STEP_ENTRIES || bytes >= STEP_BYTES) {
                return (moves, Next::After(last));
            }
            last = Some(*id);
            if !entry.needs_any(&self.sources) {
                continue;
            }
            let from = Some(entry.location()).filter(|l| self.sources.contains(&l.segment));
            bytes += from.map_or(SNAPSHOT_ESTIMATE, |l| l.len);
            moves.push(Planned {
                id: *id,
                state: DeliveryState::default(),
                from,
            });
        }
        (moves, Next::Done)
    }

    /// A step was written (or had nothing to write).
    pub(crate) fn advance(&mut self, next: Next, records: u64, bytes: u64) {
        match next {
            Next::After(id) => self.cursor = Some(id),
            Next::Done => self.done = true,
        }
        self.records += records;
        self.bytes += bytes;
    }
}

/// A compaction step ready to write: each move with its frame.
pub(crate) struct Step {
    pub moves: Vec<(Planned, Vec<u8>)>,
    pub next: Next,
}

/// The writer's side of compaction: the pass under way and the I/O of
/// its steps (reading the records to copy back from their segments).
#[derive(Debug)]
pub(crate) struct Compactor {
    enabled: bool,
    pass: Option<Pass>,
    /// Segments a pass could not empty (a record there no longer reads
    /// back): never a source again in this process.
    unmovable: BTreeSet<u64>,
}

impl Compactor {
    pub(crate) fn new(enabled: bool) -> Compactor {
        Compactor {
            enabled,
            pass: None,
            unmovable: BTreeSet::new(),
        }
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.pass.is_some()
    }

    /// The pass under way has walked the whole index.
    pub(crate) fn is_done(&self) -> bool {
        self.pass.as_ref().is_some_and(|p| p.done)
    }

    /// Start a pass if segments other than `active` are worth compacting
    /// and none is under way.
    pub(crate) fn start(&mut self, shared: &Shared, active: u64) {
        if !self.enabled || self.pass.is_some() {
            return;
        }
        let sources = {
            let state = shared.lock();
            let segments = state.index.segments();
            segments.worth_compacting(active, &self.unmovable)
        };
        if !sources.is_empty() {
            tracing::info!(sources = ?sources, "spool: compacting segments");
            self.pass = Some(Pass::new(sources));
            shared.compacting.store(true, Ordering::SeqCst);
        }
    }

    /// Plan the pass's next step and make its frames (for a segment
    /// salted `salt`): copies are read back from their segments outside
    /// the lock. `None` when there is nothing to write; a step with
    /// nothing in it moves the pass on at once.
    pub(crate) fn step(&mut self, shared: &Shared, salt: u64) -> Option<Step> {
        let pass = self.pass.as_mut()?;
        let (planned, next, records) = {
            let state = shared.lock();
            let (planned, next) = pass.plan(&state.index);
            let records: Vec<_> = planned
                .iter()
                .map(|p| {
                    let from = p.from.and_then(|l| state.record_ref(l));
                    (from, state.message_refs(&p.id))
                })
                .collect();
            (planned, next, records)
        };
        let mut moves = Vec::with_capacity(planned.len());
        // Read without the lock: only this thread changes the index, so
        // the states read are the index's as the batch begins.
        for (mut planned, (from, refs)) in planned.into_iter().zip(records) {
            let frame = refs.and_then(|r| r.state()).and_then(|state| {
                planned.state = state;
                match (&planned.from, &from) {
                    (None, _) => record::encode_snapshot(salt, &planned.id, &planned.state),
                    (Some(_), Some(from)) => copy_frame(from, &planned.id, &planned.state, salt),
                    (Some(_), None) => Err(SpoolError::NotFound { id: planned.id }),
                }
            });
            match frame {
                Ok(frame) => moves.push((planned, frame)),
                Err(e) => {
                    // Left where it is: its segment stays, and is not
                    // tried again.
                    let segment = planned.from.map(|l| l.segment);
                    tracing::error!(id = %planned.id, segment = ?segment, error = %e,
                        "spool: cannot copy a message forward; its segment stays");
                    self.unmovable.extend(segment);
                }
            }
        }
        if moves.is_empty() {
            pass.advance(next, 0, 0);
            return None;
        }
        Some(Step { moves, next })
    }

    /// A step was written and applied.
    pub(crate) fn advance(&mut self, next: Next, records: u64, bytes: u64) {
        if let Some(pass) = &mut self.pass {
            pass.advance(next, records, bytes);
        }
    }

    /// Give up the pass under way (its step could not be written).
    pub(crate) fn abandon(&mut self, shared: &Shared) {
        if self.pass.take().is_some() {
            shared.compacting.store(false, Ordering::SeqCst);
            tracing::warn!(
                "spool: compaction pass abandoned after a failed write; it starts over later"
            );
        }
    }

    /// End the pass that is done: its sources are spent (the writer
    /// deletes them), unless a record there could not be read.
    pub(crate) fn finish(&mut self, shared: &Shared) {
        let Some(pass) = self.pass.take() else {
            return;
        };
        shared.compacting.store(false, Ordering::SeqCst);
        let left: Vec<u64> = {
            let state = shared.lock();
            let segments = state.index.segments();
            pass.sources()
                .iter()
                .copied()
                .filter(|s| segments.live(*s) > 0)
                .collect()
        };
        self.unmovable.extend(&left);
        tracing::info!(
            sources = ?pass.sources(), records = pass.records, bytes = pass.bytes, left = ?left,
            "spool: compacted segments: their live records copied forward"
        );
    }
}

/// The COPY frame of the message record `from` (read back and verified),
/// with `state`, for a segment salted `salt`.
pub(crate) fn copy_frame(
    from: &RecordRef,
    id: &QueueId,
    state: &DeliveryState,
    salt: u64,
) -> Result<Vec<u8>, SpoolError> {
    let (kind, frame) = from.read()?;
    let payload = &frame[record::HEADER_LEN..];
    let (found, message) =
        record::message_part(kind, payload).map_err(|e| from.corrupt(e.to_string()))?;
    if found != *id {
        return Err(from.corrupt(format!("the record is not message {id}")));
    }
    record::encode_copy(salt, id, message, state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::index::Meta;
    use crate::spool::tests::envelope;
    use crate::spool::types::RecipientState;

    fn id(n: u32) -> QueueId {
        QueueId::from_parts(1_000, n, 0)
    }

    fn at(segment: u64, len: u64) -> Location {
        Location {
            segment,
            offset: 16,
            len,
        }
    }

    fn sources(numbers: &[u64]) -> BTreeSet<u64> {
        numbers.iter().copied().collect()
    }

    /// Messages 1..=count in segment 1, 100 bytes each; segments 1 to 3.
    fn index(count: u32) -> Index {
        let mut index = Index::default();
        for n in 1..=3 {
            index.add_segment(n, 10_000);
        }
        for n in 1..=count {
            index.insert_new(id(n), Meta::of(&envelope(1), 10), at(1, 100));
        }
        index
    }

    #[test]
    fn a_message_in_a_source_is_copied_and_one_with_only_state_there_is_snapshotted() {
        let mut index = index(2);
        index.insert_new(id(3), Meta::of(&envelope(1), 10), at(2, 100));
        let delivered = RecipientState::Delivered {
            reply: "250".into(),
        };
        index.set_states(&id(3), &[(1, delivered)], at(1, 40));
        index.set_held(&id(2), true, at(2, 40));
        let pass = Pass::new(sources(&[1]));
        let (moves, next) = pass.plan(&index);
        assert_eq!(next, Next::Done);
        let froms: Vec<(QueueId, Option<u64>)> = moves
            .iter()
            .map(|m| (m.id, m.from.map(|l| l.segment)))
            .collect();
        assert_eq!(froms, [(id(1), Some(1)), (id(2), Some(1)), (id(3), None)]);
    }

    #[test]
    fn a_pass_goes_in_steps_and_messages_elsewhere_are_left_alone() {
        let count = STEP_ENTRIES as u32 + 10;
        let mut index = index(count);
        index.insert_new(id(count + 1), Meta::of(&envelope(1), 10), at(2, 100));
        let mut pass = Pass::new(sources(&[1]));
        let (moves, next) = pass.plan(&index);
        assert_eq!(moves.len(), STEP_ENTRIES);
        assert_eq!(next, Next::After(id(STEP_ENTRIES as u32)));
        pass.advance(next, 0, 0);
        let (moves, next) = pass.plan(&index);
        assert_eq!(moves.len(), 10, "not the one in segment 2");
        assert_eq!(next, Next::Done);
        pass.advance(next, 0, 0);
        assert!(pass.done);
    }

    #[test]
    fn a_step_stops_after_a_megabyte_of_copies() {
        let mut index = index(0);
        for n in 1..=20 {
            index.insert_new(id(n), Meta::of(&envelope(1), 10), at(1, 100_000));
        }
        let (moves, next) = Pass::new(sources(&[1])).plan(&index);
        assert_eq!(moves.len() as u64, STEP_BYTES.div_ceil(100_000));
        assert_eq!(next, Next::After(moves.last().unwrap().id));
    }

    #[test]
    fn relocating_empties_the_source_and_the_copy_waits_for_it() {
        let mut index = index(2);
        index.set_states(
            &id(1),
            &[(
                0,
                RecipientState::Failed {
                    reply: "550".into(),
                },
            )],
            at(1, 40),
        );
        index.relocate(&id(1), at(2, 150));
        assert_eq!(index.get(&id(1)).unwrap().location().segment, 2);
        assert_eq!(index.segments().live_bytes(), 250);
        // Removed, the copy's segment still waits for the original's.
        index.remove(&id(1), 3);
        assert_eq!(index.collectable(3), None, "2 waits for 1, where 2 is");
        index.remove(&id(2), 3);
        assert_eq!(index.collectable(3), Some(1));
        index.drop_segment(1);
        assert_eq!(index.collectable(3), Some(2));
    }
}
