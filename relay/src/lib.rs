//! The mailrelay data plane.

pub mod check;
