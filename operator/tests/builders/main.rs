//! One test file per builder, each starting from manifests a user would
//! write, compiled as the operator compiles them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

mod common;

mod configmap;
mod hpa;
mod keda;
mod metadata;
mod networkpolicy;
mod pdb;
mod rbac;
mod service;
mod serviceaccount;
mod workload;
