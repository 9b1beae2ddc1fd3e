//! Admission: which requests in a batch may be written. A request is
//! judged against the queue as the requests before it in the same batch
//! will leave it, so a batch never holds, say, a state record for a
//! message an earlier request in it removed, nor two bounces of one
//! message.

use std::collections::{HashMap, HashSet};

use super::error::SpoolError;
use super::id::QueueId;
use super::index::Index;
use super::op::Op;
use super::types::{Notice, RecipientState};

/// The queue as the requests admitted so far in a batch will leave it, so
/// each request is judged as if those before it were already written.
pub(crate) struct Ahead<'a> {
    index: &'a Index,
    /// Committed in this batch: id -> recipient count.
    added: HashMap<QueueId, usize>,
    /// Removed (or bounced) in this batch.
    removed: HashSet<QueueId>,
}

impl<'a> Ahead<'a> {
    pub(crate) fn new(index: &'a Index) -> Ahead<'a> {
        Ahead {
            index,
            added: HashMap::new(),
            removed: HashSet::new(),
        }
    }

    /// How many recipients `id` has, if it is queued.
    fn recipients(&self, id: &QueueId) -> Result<usize, SpoolError> {
        let count = if self.removed.contains(id) {
            None
        } else if let Some(count) = self.added.get(id) {
            Some(*count)
        } else {
            self.index.get(id).map(|e| e.recipient_count())
        };
        count.ok_or(SpoolError::NotFound { id: *id })
    }

    /// Check `op` and, if it may be written, account for its effects.
    pub(crate) fn admit(&mut self, op: &Op) -> Result<(), SpoolError> {
        match op {
            Op::Commit {
                id, meta, notice, ..
            } => {
                if self.index.contains(id) || self.added.contains_key(id) {
                    return Err(SpoolError::Duplicate { id: *id });
                }
                if let Some((about, notice)) = notice {
                    self.recipients(about)?;
                    if *notice == Notice::Bounce {
                        self.removed.insert(*about);
                    }
                }
                self.added.insert(*id, meta.recipients);
            }
            Op::Remove { id, .. } => {
                self.recipients(id)?;
                self.removed.insert(*id);
            }
            Op::States { id, updates, .. } => {
                check_recipients(id, updates, self.recipients(id)?)?;
            }
            Op::Held { id, .. } => {
                self.recipients(id)?;
            }
            Op::Probe => {}
        }
        Ok(())
    }
}

/// Every update must name a recipient the message has.
pub(crate) fn check_recipients(
    id: &QueueId,
    updates: &[(usize, RecipientState)],
    recipients: usize,
) -> Result<(), SpoolError> {
    match updates.iter().find(|(index, _)| *index >= recipients) {
        Some(&(index, _)) => Err(SpoolError::NoSuchRecipient {
            id: *id,
            index,
            recipients,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::index::Meta;
    use crate::spool::tests::envelope;
    use crate::spool::types::Location;

    fn id(n: u32) -> QueueId {
        QueueId::from_parts(1_000, n, 0)
    }

    fn commit(n: u32, notice: Option<(QueueId, Notice)>) -> Op {
        Op::Commit {
            id: id(n),
            meta: Meta::of(&envelope(1), 0),
            frame: Vec::new(),
            notice,
            carried: None,
        }
    }

    fn remove(n: u32) -> Op {
        Op::Remove {
            id: id(n),
            frame: Vec::new(),
        }
    }

    fn states(n: u32, recipient: usize) -> Op {
        Op::States {
            id: id(n),
            updates: vec![(recipient, RecipientState::Pending)],
            frame: Vec::new(),
        }
    }

    fn held(n: u32) -> Op {
        Op::Held {
            id: id(n),
            held: true,
            frame: Vec::new(),
        }
    }

    /// Each request in a batch is judged after those before it.
    #[test]
    fn a_batch_is_admitted_in_order() {
        let mut index = Index::default();
        index.add_segment(1, 16);
        let location = Location {
            segment: 1,
            offset: 16,
            len: 10,
        };
        for n in [1, 2] {
            index.insert_new(id(n), Meta::of(&envelope(1), 0), location);
        }
        let mut ahead = Ahead::new(&index);
        let bounce = Some((id(1), Notice::Bounce));
        let cases: Vec<(&str, Op, Result<(), &str>)> = vec![
            ("queued message: state", states(1, 1), Ok(())),
            ("recipient out of range", states(1, 2), Err("no recipient")),
            ("bounce of 1", commit(5, bounce), Ok(())),
            ("second bounce of 1", commit(6, bounce), Err("not queued")),
            (
                "state of a bounced message",
                states(1, 0),
                Err("not queued"),
            ),
            ("removal of a bounced message", remove(1), Err("not queued")),
            ("hold of the new bounce", held(5), Ok(())),
            ("new message", commit(7, None), Ok(())),
            ("same id again", commit(7, None), Err("already queued")),
            ("its state", states(7, 1), Ok(())),
            ("its removal", remove(7), Ok(())),
            ("then a hold", held(7), Err("not queued")),
            (
                "a warning about 2",
                commit(8, Some((id(2), Notice::DelayWarning))),
                Ok(()),
            ),
            ("2 is still queued", remove(2), Ok(())),
            (
                "a warning about what is gone",
                commit(9, Some((id(2), Notice::DelayWarning))),
                Err("not queued"),
            ),
        ];
        for (name, op, want) in cases {
            let got = ahead.admit(&op).map_err(|e| e.to_string());
            match want {
                Ok(()) => assert!(got.is_ok(), "{name}: {got:?}"),
                Err(text) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(text)),
                    "{name}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn updates_must_name_existing_recipients() {
        let id = QueueId::from_parts(1, 2, 3);
        let update = |i| (i, RecipientState::Pending);
        assert!(check_recipients(&id, &[update(0), update(1)], 2).is_ok());
        assert!(check_recipients(&id, &[], 0).is_ok());
        assert!(matches!(
            check_recipients(&id, &[update(0), update(2)], 2),
            Err(SpoolError::NoSuchRecipient {
                index: 2,
                recipients: 2,
                ..
            })
        ));
    }
}
