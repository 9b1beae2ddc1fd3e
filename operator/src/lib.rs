//! The mailrelay control plane.
//!
//! Reconcile is a pipeline; each step says whether it needs the client:
//!
//! 1. read the Relay (from the watch cache) and the MailDomains and
//!    Blocklists of its namespace (listed from the API: a cache could lag
//!    the event that woke the reconcile) — client;
//! 2. validate: [`mailrelay_crds::compile()`] — pure;
//! 3. model: [`Model::new`] gathers what the builders need — pure;
//! 4. build the desired objects: [`builders::build_all`] — pure;
//! 5. server-side apply, prune, status (`apply`, `status`, [`controller`])
//!    — client.
//!
//! Steps 2–4 are `plan::plan`, which `mailrelay-operator render` also
//! runs on a manifest directory ([`render`]), so the objects a user
//! previews are the objects the operator applies.

pub mod apply;
pub mod builders;
pub mod controller;
pub mod crds;
pub mod dkim;
pub mod fleet;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod mx;
pub(crate) mod plan;
pub mod render;
pub mod report_format;
pub(crate) mod status;
pub(crate) mod webhook_keys;

pub use builders::{Objects, build_all};
pub use model::{Model, Settings, Warning};
