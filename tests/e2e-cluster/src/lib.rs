//! Nothing here: the scenarios are in `tests/cluster.rs` (see README.md).
