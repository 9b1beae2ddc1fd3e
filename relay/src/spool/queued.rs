//! Per-recipient delivery state: what the delivery manager records about
//! each queued message, replayed by recovery like the messages themselves.
//!
//! State lives in small records of its own (kinds 3 to 5, see `record`)
//! rather than in rewritten message records, so a retry costs one short
//! append, not a copy of the body.

use super::admit::check_recipients;
use super::envelope::Envelope;
use super::error::SpoolError;
use super::id::QueueId;
use super::index::{Glance, Meta, Parked};
use super::op::{Carried, Op};
use super::record;
use super::tally::Tally;
use super::types::{Notice, Queued, RecipientState};
use super::{Arrival, Spool};

impl Spool {
    /// All queued messages with their state, sorted by id, read from the
    /// segments: for admin commands and tests (a message that cannot be
    /// read is left out and logged).
    pub(crate) fn queued(&self) -> Vec<Queued> {
        self.ids()
            .iter()
            .filter_map(|id| match self.queued_one(id) {
                Ok(q) => q,
                Err(e) => {
                    tracing::error!(%id, error = %e, "spool: cannot read a queued message");
                    None
                }
            })
            .collect()
    }

    /// One message with its state, read from the segments (blocking
    /// reads, one per record: from the page cache, for mail that moves).
    /// `Ok(None)` when it is not queued.
    pub(crate) fn queued_one(&self, id: &QueueId) -> Result<Option<Queued>, SpoolError> {
        let refs = match self.inner.shared.lock().message_refs(id) {
            Ok(refs) => refs,
            Err(SpoolError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        refs.read().map(Some)
    }

    /// What delivery may know of `id` without reading it; `None` when it
    /// is not queued.
    pub(crate) fn glance(&self, id: &QueueId) -> Option<Glance> {
        self.inner.shared.lock().index.glance(id)
    }

    /// Set (`None`: clear) when delivery means to look at `id` again:
    /// `None` if it is not queued, else the time it had (see
    /// `index::Entry::wake`).
    pub(crate) fn set_wake(&self, id: &QueueId, at: Option<i64>) -> Option<Option<i64>> {
        self.inner.shared.lock().index.set_wake(id, at)
    }

    /// Mark `id` parked (or no longer, see `index::Index::set_parked`):
    /// `None` if it is not queued, else the mark it had.
    pub(crate) fn set_parked(&self, id: &QueueId, parked: Parked) -> Option<Parked> {
        self.inner.shared.lock().index.set_parked(id, parked)
    }

    /// Messages delivery means to look at again at a set time.
    pub(crate) fn waiting(&self) -> usize {
        self.inner.shared.lock().index.waiting()
    }

    /// Whether `at` is still delivery's time for `id`; if so it is spent.
    pub(crate) fn take_wake(&self, id: &QueueId, at: i64) -> bool {
        self.inner.shared.lock().index.take_wake(id, at)
    }

    /// Whether a message that is not held has a recipient due by `until`
    /// (unix seconds): a walk over the index, reading nothing.
    pub(crate) fn anything_due(&self, until: i64) -> bool {
        self.inner.shared.lock().index.anything_due(until)
    }

    /// Queued recipients by state, and when the oldest message arrived.
    pub(crate) fn tally(&self) -> (Tally, Option<i64>) {
        let shared = self.inner.shared.lock();
        (shared.index.tally(), shared.index.oldest_received())
    }

    /// The ids of all queued messages, sorted: what the delivery manager
    /// scans for new mail without copying every envelope and state.
    pub(crate) fn ids(&self) -> Vec<QueueId> {
        self.inner.shared.lock().index.ids()
    }

    /// Durably record new states for some recipients (by index into
    /// `envelope.recipients`), all in one record. Unknown id:
    /// `SpoolError::NotFound`; an index out of range:
    /// `SpoolError::NoSuchRecipient`, and nothing is written.
    pub(crate) async fn record(
        &self,
        id: &QueueId,
        updates: &[(usize, RecipientState)],
    ) -> Result<(), SpoolError> {
        // Checked here for a prompt answer; the writer checks again against
        // the queue as it is when the record is written.
        let recipients = self
            .inner
            .shared
            .lock()
            .index
            .get(id)
            .ok_or(SpoolError::NotFound { id: *id })?
            .recipient_count();
        check_recipients(id, updates, recipients)?;
        if updates.is_empty() {
            return Ok(());
        }
        let frame = record::encode_states(self.inner.salt, id, updates)?;
        self.submit(Op::States {
            id: *id,
            updates: updates.to_vec(),
            frame,
        })
        .await
    }

    /// Hold (no delivery attempts until released) or release a message.
    pub(crate) async fn set_held(&self, id: &QueueId, held: bool) -> Result<(), SpoolError> {
        let frame = record::encode_held(self.inner.salt, id, held)?;
        self.submit(Op::Held {
            id: *id,
            held,
            frame,
        })
        .await
    }

    /// Commit a new message `id` (a DSN to the original sender) that is
    /// about `about`, in one durable step: `Notice::Bounce` also removes
    /// `about`; `Notice::DelayWarning` marks it warned. A crash can neither
    /// lose the notice nor produce it twice. If `about` is not queued
    /// (any more), `SpoolError::NotFound` names it and nothing is stored.
    pub(crate) async fn commit_notice(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        body: &[u8],
        about: &QueueId,
        notice: Notice,
    ) -> Result<(), SpoolError> {
        let frame = record::encode_notice(self.inner.salt, id, envelope, body, about, notice)?;
        self.submit(Op::Commit {
            id: *id,
            meta: Meta::of(envelope, body.len() as u64),
            frame,
            notice: Some((*about, notice)),
            carried: None,
        })
        .await?;
        self.arrived(|| Arrival::fresh(*id, envelope));
        Ok(())
    }

    /// Commit a message that arrives with recipient states and a hold
    /// (handed over by a peer) in one durable step: the message, its
    /// states and its hold are written together and become visible
    /// together, so delivery never takes it for a new message with every
    /// recipient pending (and repeats a delivery the peer already made).
    pub(crate) async fn commit_with_states(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        body: &[u8],
        states: &[(usize, RecipientState)],
        held: bool,
    ) -> Result<(), SpoolError> {
        check_recipients(id, states, envelope.recipients.len())?;
        let salt = self.inner.salt;
        let mut frame = record::encode_message(salt, id, envelope, body)?;
        let message_len = frame.len() as u64;
        if !states.is_empty() {
            frame.extend(record::encode_states(salt, id, states)?);
        }
        let states_len = frame.len() as u64 - message_len;
        if held {
            frame.extend(record::encode_held(salt, id, true)?);
        }
        self.submit(Op::Commit {
            id: *id,
            meta: Meta::of(envelope, body.len() as u64),
            frame,
            notice: None,
            carried: Some(Box::new(Carried {
                message_len,
                states_len,
                states: states.to_vec(),
                held,
            })),
        })
        .await?;
        self.arrived(|| Arrival {
            id: *id,
            queued: None,
        });
        Ok(())
    }

    /// Resolves after the next successful commit, notice, removal, state
    /// record or hold change. The wait starts when `changed` is called,
    /// not when the future is first polled, so
    /// `let changed = spool.changed(); scan(spool.queued()); changed.await`
    /// cannot miss a change made during the scan.
    #[cfg(test)]
    pub(crate) fn changed(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        std::sync::Arc::clone(&self.inner.shared.changed).notified_owned()
    }
}
