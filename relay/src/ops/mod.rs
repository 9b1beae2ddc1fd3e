//! What operators see and do: the HTTP endpoints (health, readiness,
//! metrics, admin API), the metrics themselves, the queue admin commands
//! and the offline `check` of manifests.

pub mod admin;
pub mod check;
pub mod destinations;
pub(crate) mod disk;
pub(crate) mod http;
pub(crate) mod internal;
pub(crate) mod metrics;
pub(crate) mod reports;
