//! The mailrelay control plane.
//!
//! Reconcile is a pipeline; each step says whether it needs the client:
//!
//! 1. read the Relay, its MailDomains and Blocklists — client;
//! 2. validate: [`mailrelay_crds::compile()`] — pure;
//! 3. model: [`Model::new`] gathers what the builders need — pure;
//! 4. build the desired objects: [`builders::build_all`] — pure;
//! 5. server-side apply, prune, status — client (not written yet).
//!
//! Steps 2–4 are what `mailrelay-operator render` runs on a manifest
//! directory ([`render`]), so the objects a user previews are the objects
//! the operator applies.

pub mod builders;
pub mod model;
pub mod render;

pub use builders::{Objects, build_all};
pub use model::{Model, ModelError, RelayRef, Settings, Warning};
