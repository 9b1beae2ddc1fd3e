//! The mailrelay.io API.
//!
//! - [`MailDomain`], [`Relay`] and [`Blocklist`]: the custom resources users
//!   apply (group `mailrelay.io`, version `v1alpha1`).
//! - [`RelayConfig`]: everything one relay pod needs, compiled and
//!   normalised, so the data plane never parses user text.
//! - [`compile`]: the pure function from the resources to a `RelayConfig`,
//!   shared by the operator and by the relay's standalone mode.
//! - [`manifests`]: reading the YAML a user would `kubectl apply`.
//! - [`resolver`]: the DNS resolver set-up the relay and the operator share.

// kube's `printcolumn(...)` repeats `type_ = ...` once per column, which
// clippy mistakes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod blocklist;
pub mod common;
pub mod compile;
pub mod config;
pub mod configformat;
pub mod crdgen;
mod defaults;
pub mod dkimkey;
pub mod events;
pub mod maildomain;
pub mod manifests;
pub mod relay;
pub mod reports;
pub mod resolver;
pub mod shaping;

pub use blocklist::{Blocklist, BlocklistSpec, BlocklistStatus};
pub use compile::{Compiled, Problem, compile};
pub use config::RelayConfig;
pub use maildomain::{MailDomain, MailDomainSpec, MailDomainStatus};
pub use relay::{Relay, RelaySpec, RelayStatus};
