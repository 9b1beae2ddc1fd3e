//! Per-recipient delivery state: what the delivery manager records about
//! each queued message, replayed by recovery like the messages themselves.
//!
//! State lives in small records of its own (kinds 3 to 5, see `record`)
//! rather than in rewritten message records, so a retry costs one short
//! append, not a copy of the body.

use std::future::Future;
use std::sync::Arc;

use super::Spool;
use super::admit::check_recipients;
use super::envelope::Envelope;
use super::error::SpoolError;
use super::id::QueueId;
use super::op::Op;
use super::record;
use super::types::{Notice, Queued, RecipientState};

impl Spool {
    /// All queued messages with their state, sorted by id.
    pub(crate) fn queued(&self) -> Vec<Queued> {
        self.inner.shared.lock().index.queued()
    }

    pub(crate) fn queued_one(&self, id: &QueueId) -> Option<Queued> {
        self.inner.shared.lock().index.queued_one(id)
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
            .envelope(id)
            .ok_or(SpoolError::NotFound { id: *id })?
            .recipients
            .len();
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
            envelope: envelope.clone(),
            body_len: body.len() as u64,
            frame,
            notice: Some((*about, notice)),
        })
        .await
    }

    /// Resolves after the next successful commit, notice, removal, state
    /// record or hold change. The wait starts when `changed` is called,
    /// not when the future is first polled, so
    /// `let changed = spool.changed(); scan(spool.queued()); changed.await`
    /// cannot miss a change made during the scan.
    pub(crate) fn changed(&self) -> impl Future<Output = ()> + Send + use<> {
        Arc::clone(&self.inner.shared.changed).notified_owned()
    }
}
