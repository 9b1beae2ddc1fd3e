//! Read-only access for admin commands (`mailrelay queue list`), on a
//! stopped relay or beside a running one: recovery without repairs, no
//! lock, no writes.

use std::path::Path;

use super::envelope::Envelope;
use super::error::SpoolError;
use super::id::QueueId;
use super::recover::{self, Access};
use super::state::State;
use super::types::{Queued, Recovery};

/// The queue as it was on disk when read. Against a running relay it may
/// show a torn tail (a batch being written) as `truncated_bytes`; nothing
/// is cut.
#[derive(Debug)]
pub struct SpoolSnapshot {
    state: State,
    recovery: Recovery,
}

pub fn open_readonly(dir: &Path) -> Result<SpoolSnapshot, SpoolError> {
    let loaded = recover::load(&dir.join("queue"), Access::ReadOnly)?;
    Ok(SpoolSnapshot {
        state: loaded.state,
        recovery: loaded.recovery,
    })
}

impl SpoolSnapshot {
    /// Sorted by id; `queued` adds the delivery state.
    pub fn messages(&self) -> Result<Vec<(QueueId, Envelope)>, SpoolError> {
        Ok(self
            .queued()?
            .into_iter()
            .map(|q| (q.id, q.envelope))
            .collect())
    }

    /// All queued messages with their state, sorted by id, read from the
    /// segments.
    pub fn queued(&self) -> Result<Vec<Queued>, SpoolError> {
        self.state
            .index
            .ids()
            .iter()
            .map(|id| self.state.message_refs(id)?.read())
            .collect()
    }

    /// `Ok(None)` when `id` is not queued.
    pub(crate) fn queued_one(&self, id: &QueueId) -> Result<Option<Queued>, SpoolError> {
        match self.state.message_refs(id) {
            Ok(refs) => refs.read().map(Some),
            Err(SpoolError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What a writable open would repair.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Messages, bytes and segments; commits and syncs are zero.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> super::types::SpoolStats {
        self.state.stats()
    }

    pub fn read_body(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        self.state.body_ref(id)?.read()
    }
}
