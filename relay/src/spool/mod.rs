//! The durable spool (being written).
