//! The mailrelay data plane, in the order a message travels through it.

// What is in force and how it changes: runtime, reload, standalone manifests.
pub mod config;
// Listeners, the connection loop, TLS, PROXY protocol.
pub mod server;
// The SMTP protocol: session state machine, replies, DATA/BDAT readers,
// the SPF/DKIM/DMARC checks made at the end of DATA.
pub mod smtp;
// Who may send what: blocklists, DNSBL, accounts, per-client limits.
pub mod policy;
// DKIM signing of outgoing mail.
pub mod dkim;
// Durable bytes: the append-only spool with group commit.
pub mod spool;
// What is due, per destination: scheduling, outcomes, bounces.
pub mod queue;
// How mail leaves: SMTP, LMTP, maildir transports and outbound TLS policy.
pub mod delivery;
// Start-up, drain and hand-off of the queue to peers.
pub mod lifecycle;
// HTTP endpoints, metrics, the queue admin commands, offline checks.
pub mod ops;
// Delivery events: one record per event, to the log and to webhooks.
pub mod events;

#[cfg(test)]
mod testutil;
