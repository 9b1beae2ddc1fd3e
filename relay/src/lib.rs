//! The mailrelay data plane.

pub mod check;
pub mod policy;
pub mod proxy;
pub mod spool;
