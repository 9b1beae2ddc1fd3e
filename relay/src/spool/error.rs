//! Spool errors: one enum; each I/O variant names the file it was about.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::id::QueueId;

/// Why a spool operation failed. Cloneable (sources sit behind `Arc`)
/// because one failed group commit is reported to every waiter in it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem call failed: disk full, EIO, permissions. For `commit`
    /// this means "not stored": answer 452 4.3.1 and let the client retry.
    #[error("spool: {op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The disk is full: new messages are refused until space comes back
    /// (answer 452 4.3.1); removals and delivery states are still written.
    #[error("spool: the disk holding {} is full; new mail is refused until space comes back", .dir.display())]
    Full { dir: PathBuf },
    /// Another process has the spool open for writing.
    #[error("spool: {} is held by another process", .path.display())]
    Locked { path: PathBuf },
    /// A record that recovery accepted no longer reads back intact.
    #[error("spool: corrupt record in {} at offset {offset}: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("spool: message {id} is not queued")]
    NotFound { id: QueueId },
    /// A state update named a recipient the message does not have.
    #[error("spool: message {id} has {recipients} recipient(s); there is no recipient #{index}")]
    NoSuchRecipient {
        id: QueueId,
        index: usize,
        recipients: usize,
    },
    #[error("spool: message {id} is already queued")]
    Duplicate { id: QueueId },
    /// A record's payload length must fit the u32 length field.
    #[error("spool: message {id} is too large for one record ({bytes} bytes)")]
    TooLarge { id: QueueId, bytes: u64 },
    #[error("spool: cannot encode the envelope of {id}: {source}")]
    Encode {
        id: QueueId,
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The writer thread or a blocking task is gone (it panicked, or the
    /// spool is shutting down); nothing was stored.
    #[error("spool: the spool's background worker has stopped")]
    Closed,
}

impl SpoolError {
    /// The filesystem ran out of room (as opposed to failing).
    pub(crate) fn is_no_space(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. } if super::reserve::is_no_space(source))
    }

    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> SpoolError {
        SpoolError::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }
}
