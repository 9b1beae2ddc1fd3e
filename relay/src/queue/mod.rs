//! The delivery side of the queue, split by role: where a recipient's mail
//! goes ([`router`]), when to try again ([`schedule`]), what an outcome
//! makes of a recipient ([`decide`]), what to tell a sender when mail
//! cannot be delivered ([`dsn`]) — all pure, time and randomness passed
//! in — and the I/O around them: one attempt over a transport
//! ([`attempt`]), the loop that drives the spool ([`manager`]) and the
//! per-destination workers that send what it finds due (`work`).

pub(crate) mod attempt;
pub(crate) mod decide;
pub(crate) mod dsn;
pub(crate) mod manager;
pub(crate) mod pool;
pub(crate) mod router;
pub(crate) mod schedule;
mod work;
