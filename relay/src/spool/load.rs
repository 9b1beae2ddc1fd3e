//! Reading a queued message back from its records: the envelope from the
//! message record, each recipient's state from the record the index
//! points to for it (the message record itself for a new message, whose
//! recipients are pending, or for a compacted copy, which carries them).
//! The index keeps none of this in memory (see `index`).
//!
//! The references are taken under the lock and read without it: a
//! segment handle stays readable after the collector unlinks the file,
//! and records never change once written, so a read sees the message as
//! it was when the references were taken.

use super::error::SpoolError;
use super::id::QueueId;
use super::index::Spot;
use super::record::{self, HEADER_LEN, Record};
use super::state::{RecordRef, State};
use super::types::{DeliveryState, Queued, RecipientState};

/// Where one queued message's envelope and states are.
pub(crate) struct MessageRefs {
    id: QueueId,
    message: RecordRef,
    /// The records holding recipients' latest states, each with the
    /// recipients (by index) it holds them for.
    states: Vec<(RecordRef, Vec<usize>)>,
    held: bool,
    warned: bool,
}

impl State {
    /// `SpoolError::NotFound` when `id` is not queued.
    pub(crate) fn message_refs(&self, id: &QueueId) -> Result<MessageRefs, SpoolError> {
        let missing = || SpoolError::NotFound { id: *id };
        let entry = self.index.get(id).ok_or_else(missing)?;
        let message = self.record_ref(entry.location()).ok_or_else(missing)?;
        let mut spots: Vec<(Spot, Vec<usize>)> = Vec::new();
        for (i, slot) in entry.slots().iter().enumerate() {
            let Some(spot) = slot.at else {
                continue;
            };
            // Few distinct records per message: a search beats a map.
            match spots.iter_mut().find(|(s, _)| *s == spot) {
                Some((_, recipients)) => recipients.push(i),
                None => spots.push((spot, vec![i])),
            }
        }
        let states = spots
            .into_iter()
            .map(|(spot, recipients)| {
                let at = self.record_ref(spot.location()).ok_or_else(missing)?;
                Ok((at, recipients))
            })
            .collect::<Result<_, SpoolError>>()?;
        Ok(MessageRefs {
            id: *id,
            message,
            states,
            held: entry.held,
            warned: entry.warned,
        })
    }
}

impl MessageRefs {
    /// The message with its state: one read per record (from the page
    /// cache, for mail that is moving), each verified again.
    pub(crate) fn read(&self) -> Result<Queued, SpoolError> {
        let (kind, frame) = self.message.read()?;
        let parsed = record::parse_record(kind, &frame[HEADER_LEN..])
            .map_err(|e| self.message.corrupt(e.to_string()))?;
        let (envelope, carried) = match parsed {
            Record::Message { id, envelope, .. } | Record::Notice { id, envelope, .. }
                if id == self.id =>
            {
                (envelope, Vec::new())
            }
            Record::Copy {
                id,
                envelope,
                state,
                ..
            } if id == self.id => (envelope, state.recipients),
            _ => return Err(self.not_this(&self.message)),
        };
        let mut recipients = carried;
        recipients.resize(envelope.recipients.len(), RecipientState::Pending);
        for (at, indices) in &self.states {
            let (kind, frame) = at.read()?;
            let parsed = record::parse_record(kind, &frame[HEADER_LEN..])
                .map_err(|e| at.corrupt(e.to_string()))?;
            match parsed {
                Record::States { id, updates } if id == self.id => {
                    for (i, state) in updates {
                        if indices.contains(&i)
                            && let Some(slot) = recipients.get_mut(i)
                        {
                            *slot = state;
                        }
                    }
                }
                Record::Snapshot { id, state } if id == self.id => {
                    for &i in indices {
                        if let (Some(slot), Some(state)) =
                            (recipients.get_mut(i), state.recipients.get(i))
                        {
                            *slot = state.clone();
                        }
                    }
                }
                _ => return Err(self.not_this(at)),
            }
        }
        Ok(Queued {
            id: self.id,
            envelope,
            recipients,
            held: self.held,
            warned: self.warned,
        })
    }

    /// What a compacted copy of the message must carry.
    pub(crate) fn state(&self) -> Result<DeliveryState, SpoolError> {
        let q = self.read()?;
        Ok(DeliveryState {
            recipients: q.recipients,
            held: q.held,
            warned: q.warned,
        })
    }

    fn not_this(&self, at: &RecordRef) -> SpoolError {
        at.corrupt(format!("the record is not one of message {}", self.id))
    }
}
