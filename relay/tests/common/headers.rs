//! Header fields of a queued message, and the relay's own
//! Authentication-Results among them.

use mailrelay::smtp::inbound_auth::arparse::{self, AuthResultsField};

use super::manifests::HOSTNAME;
use super::spool::Queued;

/// The header section's fields named `name` (any case), unfolded, in
/// order: each value as written after the colon.
pub fn fields(q: &Queued, name: &str) -> Vec<String> {
    let text = q.body_text();
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        match out.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => last.push_str(line),
            _ => out.push(line.to_string()),
        }
    }
    out.into_iter()
        .filter_map(|f| {
            let (n, v) = f.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.to_string())
        })
        .collect()
}

/// Our Authentication-Results field, parsed; exactly one must name us.
#[track_caller]
pub fn our_results(q: &Queued) -> AuthResultsField {
    let ours: Vec<AuthResultsField> = fields(q, "Authentication-Results")
        .iter()
        .map(|v| arparse::parse(v).unwrap_or_else(|e| panic!("{e}: {v:?}")))
        .filter(|f| f.authserv_id.eq_ignore_ascii_case(HOSTNAME))
        .collect();
    assert_eq!(ours.len(), 1, "one A-R of ours in\n{}", q.body_text());
    ours.into_iter().next().expect("one")
}
