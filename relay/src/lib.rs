//! The mailrelay data plane.

pub mod accounts;
pub mod admin;
pub mod app;
pub mod check;
pub mod configwatch;
pub mod delivery;
pub mod dkim;
pub mod drain;
pub mod handoff;
pub mod http;
pub mod inbound_auth;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod queue;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod standalone;
pub mod tls_policy;

#[cfg(test)]
mod testutil;
