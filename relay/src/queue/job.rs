//! What passes between the manager, which decides, and the workers, which
//! deliver: a job, and the nudges the manager is woken with.

use std::collections::VecDeque;
use std::sync::Arc;

use super::destination::Dest;
use super::health::Contact;
use super::router::Route;
use super::schedule::Schedule;
use super::scheduler::Throttle;
use crate::spool::{QueueId, Queued};
use mailrelay_crds::config::ShapeConfig;

/// One message's due recipients for one destination, grouped by route
/// and tried group by group.
pub(super) struct Job {
    pub q: Arc<Queued>,
    pub groups: VecDeque<(Route, Vec<usize>)>,
    pub schedule: Schedule,
    /// The destination's shaping (the pool's part: connections, their
    /// reuse and rate).
    pub shape: ShapeConfig,
}

/// What the manager is told.
pub(super) enum Nudge {
    /// A message changed (or arrived with state): look at it.
    Look(QueueId),
    /// New mail, as it was committed: look at it without reading it back.
    Arrived(Box<Queued>),
    /// Look at every message (an admin flush of the whole queue).
    All,
    /// A domain's site is known.
    Site {
        domain: String,
        site: Arc<str>,
        failed: bool,
    },
    /// An attempt ended.
    Ended(Box<Ended>),
    /// A task holding a message let it go; `recheck` when its state
    /// changed and it needs another look.
    Released { id: QueueId, recheck: bool },
}

pub(super) struct Ended {
    pub dest: Dest,
    pub id: QueueId,
    pub contact: Contact,
    /// The last failure's text, for the destination's last error.
    pub reason: String,
    pub probe: bool,
    /// A reply matched a throttle rule.
    pub throttle: Option<Throttle>,
}
