//! A relay's life: start-up in named phases (`app`), the drain on stop or
//! on request, and the hand-off of what is still queued to a peer.

pub mod app;
pub(crate) mod drain;
pub mod handoff;
