//! The requests the writer thread takes: each carries its encoded frame
//! and what applying it does to the index.

use tokio::sync::oneshot;

use super::error::SpoolError;
use super::id::QueueId;
use super::index::Meta;
use super::types::{Notice, RecipientState};

pub(crate) enum Op {
    Commit {
        id: QueueId,
        meta: Meta,
        frame: Vec<u8>,
        /// A notice: the message it is about and what it does to it.
        notice: Option<(QueueId, Notice)>,
        /// State the message arrives with (handed over by a peer), its
        /// records in the same frame after the message's.
        carried: Option<Box<Carried>>,
    },
    Remove {
        id: QueueId,
        frame: Vec<u8>,
    },
    States {
        id: QueueId,
        updates: Vec<(usize, RecipientState)>,
        frame: Vec<u8>,
    },
    Held {
        id: QueueId,
        held: bool,
        frame: Vec<u8>,
    },
    /// Nothing to write: if the disk is full, look for space again (at
    /// most once per retry interval).
    Probe,
}

/// Recipient states and a hold a message is committed with, applied with
/// it, so that nobody (the delivery manager) sees it without them.
pub(crate) struct Carried {
    /// Length of the message's own record, the start of the frame.
    pub message_len: u64,
    /// Length of the states record after it (0 without states); the hold
    /// record, if any, is the rest of the frame.
    pub states_len: u64,
    pub states: Vec<(usize, RecipientState)>,
    pub held: bool,
}

impl Op {
    pub(crate) fn frame(&self) -> &[u8] {
        match self {
            Op::Commit { frame, .. }
            | Op::Remove { frame, .. }
            | Op::States { frame, .. }
            | Op::Held { frame, .. } => frame,
            Op::Probe => &[],
        }
    }

    /// A new message from a client: what a full disk refuses. Notices
    /// (bounces, delay warnings) are part of delivery and still go in.
    pub(crate) fn is_new_mail(&self) -> bool {
        matches!(self, Op::Commit { notice: None, .. })
    }

    /// A step that delivery events may precede: it removes or changes a
    /// message (a removal, recipient states, a hold, a notice's effect).
    /// New mail never is: its Reception comes after it.
    pub(crate) fn may_follow_events(&self) -> bool {
        !matches!(self, Op::Commit { notice: None, .. } | Op::Probe)
    }
}

/// The event log as the writer sees it: a step's events must be durable
/// no later than the step (see `events`), so the writer carries the lines
/// the log has not synced yet in the step's batch. Positions are the
/// log's sequence numbers, which survive restarts.
pub(crate) trait StepLog: Send + Sync {
    /// Every line appended so far from `from` on that the log itself has
    /// not made durable; `None` when there is none.
    fn carry(&self, from: u64) -> Option<CarriedLines>;
    /// Every line below this is durable in the log itself.
    fn durable(&self) -> u64;
    /// Return once every line below `end` is durable in the log itself
    /// (syncing it if needed).
    fn wait(&self, end: u64);
}

/// Lines `first..first + count`, each in the event log's own line format.
pub(crate) struct CarriedLines {
    pub first: u64,
    pub count: u32,
    pub bytes: Vec<u8>,
}

/// Set with the spool's events: see [`StepLog`].
pub(crate) struct StepBarrier(pub std::sync::Arc<dyn StepLog>);

impl std::fmt::Debug for StepBarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepBarrier")
    }
}

pub(crate) struct Request {
    pub op: Op,
    pub done: Waiter,
}

pub(crate) type Waiter = oneshot::Sender<Result<(), SpoolError>>;
