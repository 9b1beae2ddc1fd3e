//! The mailrelay data plane, in the order a message travels through it.
//!
//! ## Reports data
//!
//! With `RelayConfig.reports` set, each pod counts its share of the
//! Relay's DMARC (RFC 7489 §7.2) and TLS-RPT (RFC 8460) aggregates per
//! period (`ops::reports`): a DMARC row per inbound message checked against
//! a published policy (`smtp::inbound_auth`), a TLS row per outbound MX
//! session (`delivery::tls_policy`). Counts live in memory, are written to
//! `SPOOL_DIR/reports/period-START.json` every 5 s and at drain, kept 7
//! days, served to the operator on the signed internal API
//! (`ops::internal`: `GET /internal/reports?start=`, `GET /internal/status`
//! with the webhooks' health, `POST /internal/submit` for the reports it
//! sends as mail through the relay), and handed to a peer with the queue
//! when the pod drains (`lifecycle::handoff::reports`). A SIGKILL loses at
//! most the last 5 s of counts; never mail.

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
