//! The in-memory index: which messages are queued, where their records
//! are, and just what scheduling and accounting need of them: per
//! recipient the kind of state and when it is next due, per message its
//! arrival, hold and warned marks and the delivery manager's wake-up
//! time. Envelopes and recipient states (reply texts and all) stay on
//! disk and are read back when a message's turn comes (`load`), so a
//! queued message costs about a hundred bytes here whatever its envelope
//! (DESIGN.md §6). Pure bookkeeping, no I/O; which segments can go (and
//! which are worth compacting) is the `ledger`'s part.
//!
//! A queued message needs its message record and, per recipient, the
//! latest record holding that recipient's state, plus the latest hold
//! record and the notice that marked it warned. Those pin their segments.
//! Older states it has outgrown do not: replay lets the later record win
//! whether or not the earlier one is still there. State records of a
//! message that is gone pin nothing and replay to nothing, since they
//! never create an entry.
//!
//! Two message records for one id (a compacted copy and its original, both
//! on disk after a crash between the copy and the deletion of the old
//! segment) are one message: the later record in replay order wins, with
//! the states it carries. That is right because the writer takes a copy's
//! states from the records the index points to at the point in the log
//! where the copy is appended: everything before it is already folded in,
//! everything after it (later states, a removal) is newer and replays
//! over it.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::iter;
use std::num::NonZeroU32;
use std::ops::Bound;

use super::envelope::Envelope;
use super::id::QueueId;
use super::ledger::{Ledgers, Pin};
use super::record::Record;
use super::tally::{Class, Tally};
use super::types::{DeliveryState, Location, Notice, RecipientState};

/// Where a record is: a `Location` in 16 bytes. Segment numbers fit 32
/// bits (see `Pin`), and so does a record: the largest is one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spot {
    offset: u64,
    segment: NonZeroU32,
    len: u32,
}

impl Spot {
    /// `None` for segment 0 and for what does not fit.
    pub(crate) fn new(at: Location) -> Option<Spot> {
        Some(Spot {
            offset: at.offset,
            segment: NonZeroU32::new(u32::try_from(at.segment).ok()?)?,
            len: u32::try_from(at.len).ok()?,
        })
    }

    pub(crate) fn location(self) -> Location {
        Location {
            segment: u64::from(self.segment.get()),
            offset: self.offset,
            len: u64::from(self.len),
        }
    }

    fn segment(self) -> u64 {
        u64::from(self.segment.get())
    }
}

/// One recipient as the index keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// The record with its latest state; `None`: the message record (a
    /// new message's recipients are pending; a copy carries them).
    pub at: Option<Spot>,
    pub class: Class,
    /// Deferred: the next attempt, unix seconds.
    next: u32,
}

impl Slot {
    const PENDING: Slot = Slot {
        at: None,
        class: Class::Pending,
        next: 0,
    };

    fn of(state: &RecipientState, at: Option<Spot>) -> Slot {
        let next = match state {
            RecipientState::Deferred { next_attempt, .. } => seconds(*next_attempt),
            _ => 0,
        };
        Slot {
            at,
            class: Class::of(state),
            next,
        }
    }

    /// When this recipient is due: now for pending, its next attempt when
    /// deferred, never when final.
    fn due(self) -> Option<i64> {
        match self.class {
            Class::Pending => Some(0),
            Class::Deferred => Some(i64::from(self.next)),
            Class::Delivered | Class::Failed => None,
        }
    }
}

/// Unix seconds in 32 bits (good until 2106), clamped.
fn seconds(unix: i64) -> u32 {
    u32::try_from(unix.max(0)).unwrap_or(u32::MAX)
}

/// The recipients of one message: most messages have one, and it costs
/// no allocation of its own.
#[derive(Clone, Debug, PartialEq)]
enum Slots {
    One(Slot),
    Many(Box<[Slot]>),
}

impl Slots {
    fn new(count: usize) -> Slots {
        if count == 1 {
            Slots::One(Slot::PENDING)
        } else {
            Slots::Many(vec![Slot::PENDING; count].into_boxed_slice())
        }
    }

    fn as_slice(&self) -> &[Slot] {
        match self {
            Slots::One(slot) => std::slice::from_ref(slot),
            Slots::Many(slots) => slots,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Slot] {
        match self {
            Slots::One(slot) => std::slice::from_mut(slot),
            Slots::Many(slots) => slots,
        }
    }
}

/// What the index needs of a new message's envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub recipients: usize,
    pub received_at: i64,
    pub body_len: u64,
    /// Handed over with a delay warning already sent.
    pub warned: bool,
}

impl Meta {
    pub(crate) fn of(envelope: &Envelope, body_len: u64) -> Meta {
        Meta {
            recipients: envelope.recipients.len(),
            received_at: envelope.received_at,
            body_len,
            warned: envelope.handed_off.as_ref().is_some_and(|h| h.warned),
        }
    }
}

/// What the delivery manager may know of a message without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Glance {
    pub held: bool,
    pub warned: bool,
    /// Parked at a destination (see `set_parked`).
    pub parked: Parked,
    /// Recipients not yet final.
    pub open: usize,
    pub received_at: i64,
    /// When the earliest recipient still to deliver is due (0: now);
    /// `None` when every recipient is final.
    pub due: Option<i64>,
}

/// Whether the delivery manager parked a message at a destination that
/// could not be reached, and whether that destination is suspended (then
/// the message's own retry time does not matter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Parked {
    #[default]
    No,
    Failing,
    Suspended,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    /// The message record (envelope and body are read back from it).
    message: Spot,
    slots: Slots,
    held_pin: Option<Pin>,
    warned_pin: Option<Pin>,
    body_len: u32,
    received: u32,
    /// When the delivery manager means to look at the message again
    /// (unix seconds; 0: no time set). Kept here rather than in a map of
    /// the manager's own, where it would cost more than the entry.
    wake: u32,
    pub held: bool,
    pub warned: bool,
    parked: Parked,
}

impl Entry {
    /// A freshly committed message: every recipient pending. `None` when
    /// `location` does not fit a `Spot` (it always does: see there).
    pub(crate) fn new(meta: Meta, location: Location) -> Option<Entry> {
        Some(Entry {
            message: Spot::new(location)?,
            slots: Slots::new(meta.recipients),
            held_pin: None,
            warned_pin: None,
            body_len: u32::try_from(meta.body_len).unwrap_or(u32::MAX),
            received: seconds(meta.received_at),
            wake: 0,
            held: false,
            warned: meta.warned,
            parked: Parked::No,
        })
    }

    /// A compacted copy: the message with the whole state it carries, all
    /// of it in the one record at `location`.
    fn copied(meta: Meta, location: Location, state: &DeliveryState) -> Option<Entry> {
        let mut entry = Entry::new(meta, location)?;
        for (slot, recipient) in entry.slots.as_mut_slice().iter_mut().zip(&state.recipients) {
            *slot = Slot::of(recipient, None);
        }
        entry.held = state.held;
        entry.warned = state.warned;
        Some(entry)
    }

    pub(crate) fn location(&self) -> Location {
        self.message.location()
    }

    pub(crate) fn slots(&self) -> &[Slot] {
        self.slots.as_slice()
    }

    pub(crate) fn recipient_count(&self) -> usize {
        self.slots.as_slice().len()
    }

    /// What a state record at `spot` is worth for each recipient it
    /// holds: its length shared among the message's recipients.
    fn share(&self, spot: Spot) -> u64 {
        u64::from(spot.len) / (self.recipient_count().max(1) as u64)
    }

    /// Every segment this entry needs, once per record it needs there,
    /// with what that record is worth.
    fn segments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let states = self
            .slots
            .as_slice()
            .iter()
            .filter_map(|slot| slot.at)
            .map(|spot| (spot.segment(), self.share(spot)));
        let pins = self.held_pin.iter().chain(&self.warned_pin);
        iter::once((self.message.segment(), u64::from(self.message.len)))
            .chain(states)
            .chain(pins.map(|pin| (pin.segment(), pin.share())))
    }

    /// Whether any record this entry needs is in one of `segments`.
    pub(crate) fn needs_any(&self, segments: &BTreeSet<u64>) -> bool {
        self.segments()
            .any(|(number, _)| segments.contains(&number))
    }

    pub(crate) fn glance(&self) -> Glance {
        let slots = self.slots.as_slice();
        Glance {
            held: self.held,
            warned: self.warned,
            parked: self.parked,
            open: slots.iter().filter(|s| s.due().is_some()).count(),
            received_at: i64::from(self.received),
            due: slots.iter().filter_map(|s| s.due()).min(),
        }
    }

    /// Some recipient is due by `until` and the message is not held.
    fn due_by(&self, until: i64) -> bool {
        !self.held && self.glance().due.is_some_and(|due| due <= until)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Id -> position in `slab`: ordered, and its nodes hold 20 bytes an
    /// entry instead of a whole `Entry` (a B-tree fills its nodes about
    /// half, so what it holds counts twice).
    ids: BTreeMap<QueueId, u32>,
    slab: Vec<Option<Entry>>,
    /// Free positions in `slab`.
    free: Vec<u32>,
    segments: Ledgers,
    body_bytes: u64,
    tally: Tally,
    /// Entries with a wake-up time set.
    wakes: usize,
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
                let meta = Meta::of(&envelope, body.len() as u64);
                self.insert_new(id, meta, location);
            }
            Record::Removed { id } => {
                self.remove(&id, location.segment);
            }
            Record::States { id, updates } => self.set_states(&id, &updates, location),
            Record::Held { id, held } => self.set_held(&id, held, location),
            Record::Notice {
                id,
                envelope,
                body,
                about,
                notice,
            } => {
                let meta = Meta::of(&envelope, body.len() as u64);
                self.insert_new(id, meta, location);
                self.notice(&about, notice, location);
            }
            Record::Copy {
                id,
                envelope,
                body,
                state,
            } => {
                let meta = Meta::of(&envelope, body.len() as u64);
                match Entry::copied(meta, location, &state) {
                    Some(entry) => self.insert(id, entry),
                    None => unplaceable(&id, location),
                }
            }
            Record::Snapshot { id, state } => self.snapshot(&id, &state, location),
            // Never live: what keeps them is the event log (see `writer`).
            Record::Events { .. } => {}
        }
    }

    /// A new message whose record is at `location`.
    pub(crate) fn insert_new(&mut self, id: QueueId, meta: Meta, location: Location) {
        match Entry::new(meta, location) {
            Some(entry) => self.insert(id, entry),
            None => unplaceable(&id, location),
        }
    }

    fn position(&self, id: &QueueId) -> Option<usize> {
        self.ids.get(id).map(|&i| i as usize)
    }

    pub(crate) fn get(&self, id: &QueueId) -> Option<&Entry> {
        self.slab.get(self.position(id)?)?.as_ref()
    }

    fn get_mut(&mut self, id: &QueueId) -> Option<&mut Entry> {
        let i = self.position(id)?;
        self.slab.get_mut(i)?.as_mut()
    }

    /// A later record for the same id wins, as replay order demands; its
    /// segment then waits for the earlier one's (see `ledger`).
    pub(crate) fn insert(&mut self, id: QueueId, entry: Entry) {
        for (number, bytes) in entry.segments() {
            self.segments.pin(number, bytes);
        }
        self.body_bytes += u64::from(entry.body_len);
        for slot in entry.slots.as_slice() {
            self.tally.add(slot.class);
        }
        self.tally.hold(false, entry.held);
        let home = entry.message.segment();
        if let Some(i) = self.position(&id)
            && let Some(place) = self.slab.get_mut(i)
        {
            if let Some(old) = place.replace(entry) {
                self.forget(&old);
                self.segments.wait(home, old.message.segment());
            }
            return;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(entry);
                i
            }
            None => {
                // Positions are u32: four billion queued messages would
                // need hundreds of GiB of index anyway.
                let i = u32::try_from(self.slab.len()).unwrap_or(u32::MAX);
                self.slab.push(Some(entry));
                i
            }
        };
        self.ids.insert(id, i);
    }

    /// The message was copied, with its whole current state, into the
    /// record at `location` (see `compact`).
    pub(crate) fn relocate(&mut self, id: &QueueId, location: Location) {
        let Some(spot) = Spot::new(location) else {
            return unplaceable(id, location);
        };
        let Some(i) = self.position(id) else {
            return;
        };
        let Some(entry) = self.slab.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        for (number, bytes) in entry.segments() {
            self.segments.unpin(number, bytes);
        }
        let old = std::mem::replace(&mut entry.message, spot);
        for slot in entry.slots.as_mut_slice() {
            slot.at = None;
        }
        entry.held_pin = None;
        entry.warned_pin = None;
        for (number, bytes) in entry.segments() {
            self.segments.pin(number, bytes);
        }
        self.segments.wait(spot.segment(), old.segment());
    }

    /// Remove a message whose removal record is in segment `at`.
    pub(crate) fn remove(&mut self, id: &QueueId, at: u64) -> Option<Entry> {
        let i = self.ids.remove(id)?;
        let entry = self.slab.get_mut(i as usize)?.take()?;
        self.free.push(i);
        self.forget(&entry);
        self.segments.wait(at, entry.message.segment());
        Some(entry)
    }

    /// What a notice (the record at `at`) does to the message it is about.
    pub(crate) fn notice(&mut self, about: &QueueId, notice: Notice, at: Location) {
        match notice {
            Notice::Bounce => {
                self.remove(about, at.segment);
            }
            Notice::DelayWarning => {
                let Some(i) = self.position(about) else {
                    return;
                };
                if let Some(entry) = self.slab.get_mut(i).and_then(Option::as_mut) {
                    entry.warned = true;
                    // The notice's bytes count for the notice message.
                    let pin = Pin::new(at.segment, 0);
                    self.segments.repin(&mut entry.warned_pin, pin);
                }
            }
        }
    }

    /// New states from the record at `at`. A message that is gone stays
    /// gone: states never create an entry.
    pub(crate) fn set_states(
        &mut self,
        id: &QueueId,
        updates: &[(usize, RecipientState)],
        at: Location,
    ) {
        let Some(i) = self.position(id) else {
            return;
        };
        let Some(entry) = self.slab.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let Some(spot) = Spot::new(at) else {
            return unplaceable(id, at);
        };
        let count = entry.recipient_count().max(1) as u64;
        let share = |spot: Spot| u64::from(spot.len) / count;
        for (index, state) in updates {
            // The writer refuses out-of-range updates, so one here can only
            // come from a record damaged in a way the CRC did not catch.
            let Some(slot) = entry.slots.as_mut_slice().get_mut(*index) else {
                continue;
            };
            if let Some(old) = slot.at {
                self.segments.unpin(old.segment(), share(old));
            }
            self.tally.sub(slot.class);
            *slot = Slot::of(state, Some(spot));
            self.tally.add(slot.class);
            self.segments.pin(spot.segment(), share(spot));
        }
    }

    pub(crate) fn set_held(&mut self, id: &QueueId, held: bool, at: Location) {
        let Some(i) = self.position(id) else {
            return;
        };
        if let Some(entry) = self.slab.get_mut(i).and_then(Option::as_mut) {
            self.tally.hold(entry.held, held);
            entry.held = held;
            let pin = Pin::new(at.segment, at.len);
            self.segments.repin(&mut entry.held_pin, pin);
        }
    }

    /// The whole state of a message, from one record at `at` (see
    /// `compact`): every recipient, the hold and the warned mark.
    pub(crate) fn snapshot(&mut self, id: &QueueId, state: &DeliveryState, at: Location) {
        let updates: Vec<(usize, RecipientState)> =
            state.recipients.iter().cloned().enumerate().collect();
        self.set_states(id, &updates, at);
        let Some(i) = self.position(id) else {
            return;
        };
        if let Some(entry) = self.slab.get_mut(i).and_then(Option::as_mut) {
            self.tally.hold(entry.held, state.held);
            entry.held = state.held;
            entry.warned = state.warned;
            // Worth nothing more: the recipients' pins count the record.
            let pin = Pin::new(at.segment, 0);
            self.segments.repin(&mut entry.held_pin, pin);
            self.segments.repin(&mut entry.warned_pin, pin);
        }
    }

    fn forget(&mut self, entry: &Entry) {
        self.body_bytes = self.body_bytes.saturating_sub(u64::from(entry.body_len));
        if entry.wake != 0 {
            self.wakes = self.wakes.saturating_sub(1);
        }
        for slot in entry.slots.as_slice() {
            self.tally.sub(slot.class);
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
        let (id, _) = self.ids.first_key_value()?;
        self.get(id).map(|e| i64::from(e.received))
    }

    pub(crate) fn contains(&self, id: &QueueId) -> bool {
        self.ids.contains_key(id)
    }

    pub(crate) fn glance(&self, id: &QueueId) -> Option<Glance> {
        self.get(id).map(Entry::glance)
    }

    /// Set (or with `None` clear) the delivery manager's time for `id`:
    /// `None` if it is not queued, else the time it had.
    pub(crate) fn set_wake(&mut self, id: &QueueId, at: Option<i64>) -> Option<Option<i64>> {
        let entry = self.get_mut(id)?;
        let old = (entry.wake != 0).then_some(i64::from(entry.wake));
        // 0 means unset; a time of 0 (the epoch) is long past anyway.
        entry.wake = at.map_or(0, |at| seconds(at).max(1));
        let set = entry.wake != 0;
        match (old.is_some(), set) {
            (false, true) => self.wakes += 1,
            (true, false) => self.wakes = self.wakes.saturating_sub(1),
            _ => {}
        }
        Some(old)
    }

    /// Mark `id` parked (`Parked::No`: no longer). A mark only rises
    /// while parked (`Failing` to `Suspended`). `None` if it is not
    /// queued, else the mark it had. The mark lets the delivery manager
    /// park a message once, in a list rather than a set.
    pub(crate) fn set_parked(&mut self, id: &QueueId, parked: Parked) -> Option<Parked> {
        let entry = self.get_mut(id)?;
        let old = entry.parked;
        entry.parked = if parked == Parked::No {
            Parked::No
        } else {
            old.max(parked)
        };
        Some(old)
    }

    /// Messages with a wake-up time: those waiting for one.
    pub(crate) fn waiting(&self) -> usize {
        self.wakes
    }

    /// Whether `at` is still the manager's time for `id`; if so it is
    /// spent (cleared).
    pub(crate) fn take_wake(&mut self, id: &QueueId, at: i64) -> bool {
        match self.get_mut(id) {
            Some(entry) if entry.wake != 0 && entry.wake == seconds(at).max(1) => {
                entry.wake = 0;
                self.wakes = self.wakes.saturating_sub(1);
                true
            }
            _ => false,
        }
    }

    /// Whether a message that is not held has a recipient due by `until`.
    pub(crate) fn anything_due(&self, until: i64) -> bool {
        self.slab.iter().flatten().any(|e| e.due_by(until))
    }

    /// The entries after `cursor` (all of them without one), in id order.
    pub(crate) fn entries_after(
        &self,
        cursor: Option<QueueId>,
    ) -> impl Iterator<Item = (&QueueId, &Entry)> {
        let from = cursor.map_or(Bound::Unbounded, Bound::Excluded);
        self.ids
            .range((from, Bound::Unbounded))
            .filter_map(|(id, &i)| Some((id, self.slab.get(i as usize)?.as_ref()?)))
    }

    /// The queued ids, sorted, with nothing else copied.
    pub(crate) fn ids(&self) -> Vec<QueueId> {
        self.ids.keys().copied().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
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

/// A record the index cannot point to (see `Spot`): it stays on disk and
/// the message is not scheduled; said loudly, since it cannot happen with
/// segments numbered one by one and records no larger than a message.
fn unplaceable(id: &QueueId, at: Location) {
    tracing::error!(%id, segment = at.segment, offset = at.offset, len = at.len,
        "spool: a record's place does not fit the index; the message is left on disk");
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
        index.insert_new(id(n), Meta::of(&envelope(1), 10), location);
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
        assert_eq!(index.get(&id(1)).map(|e| e.location().segment), Some(2));
        assert_eq!(index.collectable(2), Some(1));
    }

    fn classes(entry: &Entry) -> Vec<Class> {
        entry.slots().iter().map(|s| s.class).collect()
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
        index.set_states(&id(1), &[(0, delivered())], at(2));
        index.set_held(&id(1), true, at(3));
        index.notice(&id(1), Notice::DelayWarning, at(4));
        assert_eq!(index.collectable(5), None);
        let entry = index.get(&id(1)).unwrap();
        assert_eq!(
            classes(entry),
            [Class::Delivered, Class::Pending],
            "{entry:?}"
        );
        assert!(entry.held && entry.warned);

        // Outgrown records pin nothing.
        index.set_states(&id(1), &[(0, RecipientState::Pending)], at(5));
        assert_eq!(index.collectable(5), Some(2));
        index.drop_segment(2);
        index.set_held(&id(1), false, at(5));
        assert_eq!(index.collectable(5), Some(3));
        index.drop_segment(3);
        // Gone: everything it pinned is free, and states bring nothing back.
        index.remove(&id(1), 5);
        index.set_states(&id(1), &[(0, delivered())], at(4));
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
        index.set_states(&id(1), &[(2, delivered()), (1, delivered())], at(2));
        let entry = index.get(&id(1)).unwrap();
        assert_eq!(classes(entry), [Class::Pending, Class::Delivered]);
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

    #[test]
    fn an_entry_stays_small() {
        // What issue "Queue at scale" asks of the whole relay is 200 bytes
        // per queued message; the entry and its id in the map take this.
        assert!(std::mem::size_of::<Option<Entry>>() <= 80);
        assert_eq!(std::mem::size_of::<Option<Spot>>(), 16);
    }

    fn deferred(next_attempt: i64) -> RecipientState {
        RecipientState::Deferred {
            attempts: 1,
            next_attempt,
            last_reply: "451".into(),
        }
    }

    #[test]
    fn a_drain_waits_only_for_what_can_be_tried_in_time() {
        let mut index = index_with_segments(2);
        assert!(!index.anything_due(100), "empty");
        message(&mut index, 1, 1);
        assert!(index.anything_due(100), "pending");
        index.set_states(&id(1), &[(0, delivered()), (1, deferred(101))], at(2));
        assert!(!index.anything_due(100), "deferred past the deadline");
        assert!(index.anything_due(101));
        index.set_states(&id(1), &[(1, deferred(100))], at(2));
        assert!(index.anything_due(100));
        index.set_held(&id(1), true, at(2));
        assert!(!index.anything_due(100), "held");
        index.set_held(&id(1), false, at(2));
        index.set_states(&id(1), &[(1, delivered())], at(2));
        assert!(!index.anything_due(i64::MAX), "every recipient final");
    }

    #[test]
    fn a_glance_tells_when_a_message_is_due() {
        let mut index = index_with_segments(2);
        message(&mut index, 1, 1);
        let g = index.glance(&id(1)).unwrap();
        assert_eq!(
            (g.due, g.held, g.received_at),
            (Some(0), false, 1_700_000_001)
        );
        index.set_states(&id(1), &[(0, deferred(500)), (1, deferred(300))], at(2));
        assert_eq!(index.glance(&id(1)).unwrap().due, Some(300));
        index.set_states(&id(1), &[(0, delivered()), (1, delivered())], at(2));
        assert_eq!(index.glance(&id(1)).unwrap().due, None);
        assert_eq!(index.glance(&id(9)), None);
    }

    #[test]
    fn only_the_latest_wake_time_counts() {
        let mut index = index_with_segments(2);
        message(&mut index, 1, 1);
        assert_eq!(index.set_wake(&id(9), Some(10)), None, "not queued");
        assert_eq!(index.set_wake(&id(1), Some(10)), Some(None));
        assert_eq!(index.set_wake(&id(1), Some(20)), Some(Some(10)));
        assert_eq!(index.waiting(), 1);
        assert!(!index.take_wake(&id(1), 10), "moved on");
        assert!(index.take_wake(&id(1), 20));
        assert!(!index.take_wake(&id(1), 20), "spent");
        assert_eq!(index.waiting(), 0);
        index.set_wake(&id(1), Some(30));
        index.set_wake(&id(1), None);
        assert!(!index.take_wake(&id(1), 30), "cleared");
        index.set_wake(&id(1), Some(40));
        index.remove(&id(1), 2);
        assert_eq!(index.waiting(), 0, "gone with its message");
    }

    #[test]
    fn a_parked_mark_only_rises_until_cleared() {
        let mut index = index_with_segments(1);
        message(&mut index, 1, 1);
        assert_eq!(index.set_parked(&id(9), Parked::Failing), None);
        assert_eq!(index.set_parked(&id(1), Parked::Failing), Some(Parked::No));
        assert_eq!(
            index.set_parked(&id(1), Parked::Suspended),
            Some(Parked::Failing)
        );
        assert_eq!(
            index.set_parked(&id(1), Parked::Failing),
            Some(Parked::Suspended)
        );
        assert_eq!(index.glance(&id(1)).unwrap().parked, Parked::Suspended);
        assert_eq!(
            index.set_parked(&id(1), Parked::No),
            Some(Parked::Suspended)
        );
        assert_eq!(index.glance(&id(1)).unwrap().parked, Parked::No);
    }
}
