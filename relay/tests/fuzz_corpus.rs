//! The fuzz corpus as a regular test: every input in
//! `relay/fuzz/corpus/<target>/` goes through the same entry function the
//! libFuzzer target calls (the harness is included from the fuzz crate),
//! on stable Rust, so CI checks every seed and every regression input
//! without cargo-fuzz. A failed invariant names the file.

// A panic is a test failure: unwrap and expect are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus for {target} in {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus of {target} is empty");
    files
}

/// Run every input of `target`; the inputs that broke an invariant.
fn replay(target: &str) -> usize {
    let (_, run) = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let files = corpus(target);
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).unwrap();
            catch_unwind(AssertUnwindSafe(|| run(&data))).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: invariants broken by {failed:#?}"
    );
    files.len()
}

#[test]
fn every_smtp_session_input_gets_a_reply_to_each_command_and_quit_still_works() {
    replay("smtp_session");
}

#[test]
fn every_data_reader_input_ends_data_at_the_same_place_however_it_is_read() {
    replay("data_reader");
}

#[test]
fn every_proxy_header_input_is_complete_at_exactly_one_length_or_refused() {
    replay("proxy_header");
}

#[test]
fn every_spool_record_input_is_recovered_without_a_panic_and_valid_frames_are_all_found() {
    replay("spool_record");
}

#[test]
fn every_compile_input_compiles_or_is_refused_and_survives_the_json_round_trip() {
    replay("compile");
}

#[test]
fn every_target_has_a_corpus_directory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, _) in harness::TARGETS {
        assert!(dir.join(target).is_dir(), "{target}");
    }
    let names: Vec<&str> = harness::TARGETS.iter().map(|(n, _)| *n).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            names.contains(&name.as_str()),
            "corpus/{name} has no target"
        );
    }
}
