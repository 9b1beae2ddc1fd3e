//! What is due, per destination (DESIGN.md §6), split by role: where a
//! recipient's mail goes ([`router`], [`destination`]), when to try again
//! ([`schedule`]), what an outcome makes of a recipient ([`decide`]), what
//! to tell a sender when mail cannot be delivered ([`dsn`]), whether a
//! destination takes attempts ([`health`]) and what to start next
//! ([`scheduler`]) — all pure, time and randomness passed in — and the
//! I/O around them: one attempt over a transport ([`attempt`]), the loop
//! that decides ([`manager`]), the [`Worker`](worker::Worker) its
//! deliveries and spool writes run on (`worker`, `finish`: the ends of a
//! message's life), what passes between them (`job`) and what the
//! manager shows (`report`).

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
mod worker;
