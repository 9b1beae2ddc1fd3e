//! What is in a relay's spool, read with the relay's own read-only API
//! (no lock, no repairs: safe beside a running relay or after a crash).

use std::path::Path;

use mailrelay::spool::{Envelope, Recovery, open_readonly};

/// One queued message.
#[derive(Clone, Debug)]
pub struct Queued {
    pub id: String,
    pub envelope: Envelope,
    pub body: Vec<u8>,
}

impl Queued {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn body_contains(&self, needle: &str) -> bool {
        self.body_text().contains(needle)
    }
}

/// The queued messages, sorted by id, and what recovery found.
pub fn read(dir: &Path) -> (Vec<Queued>, Recovery) {
    let snapshot = open_readonly(dir)
        .unwrap_or_else(|e| panic!("spool {} cannot be read: {e}", dir.display()));
    let messages = snapshot
        .messages()
        .unwrap_or_else(|e| panic!("spool {} cannot be read: {e}", dir.display()))
        .into_iter()
        .map(|(id, envelope)| {
            let body = snapshot
                .read_body(&id)
                .unwrap_or_else(|e| panic!("the body of {id} cannot be read: {e}"));
            Queued {
                id: id.to_string(),
                envelope,
                body,
            }
        })
        .collect();
    (messages, snapshot.recovery().clone())
}

/// Just the messages.
pub fn messages(dir: &Path) -> Vec<Queued> {
    read(dir).0
}

/// The domain of an envelope address.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// The queued messages with each recipient's delivery state, sorted by id.
pub fn states(dir: &Path) -> Vec<mailrelay::spool::Queued> {
    open_readonly(dir)
        .unwrap_or_else(|e| panic!("spool {} cannot be read: {e}", dir.display()))
        .queued()
        .unwrap_or_else(|e| panic!("spool {} cannot be read: {e}", dir.display()))
}
