//! The delivery side of the queue, as pure logic: when to try a message
//! again ([`schedule`]) and what to tell its sender when it cannot be
//! delivered ([`dsn`]). Neither reads the clock or does I/O; the scheduler
//! and delivery loops pass time and randomness in, so both are tested to
//! exact values.

pub mod dsn;
pub mod schedule;
