//! What is due, per destination (DESIGN.md §6): pure decisions — routes
//! and destinations, the retry schedule, outcomes, bounces, destination
//! health and the scheduler — and the manager and workers that carry them
//! out against the spool and the transports.

pub(crate) mod attempt;
pub(crate) mod decide;
pub(crate) mod destination;
pub(crate) mod dsn;
mod finish;
pub(crate) mod health;
mod job;
pub(crate) mod manager;
pub(crate) mod pool;
mod report;
pub(crate) mod router;
pub(crate) mod schedule;
pub(crate) mod scheduler;
pub(crate) mod shaping;
mod worker;
