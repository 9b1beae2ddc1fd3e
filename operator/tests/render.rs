//! `mailrelay-operator render`, run as a user runs it: golden output for
//! the examples and for a set of variants, and the errors it reports.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn render(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailrelay-operator"))
        .args(["render", "--manifests"])
        .arg(dir)
        .output()
        .expect("runs mailrelay-operator")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Compare with the committed file, or rewrite it with UPDATE_GOLDEN=1.
fn golden(name: &str, dir: &Path) {
    let out = render(dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "rendering {} warns", dir.display());
    let rendered = text(&out.stdout);
    let file = root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&file, &rendered).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", file.display()));
    if committed != rendered {
        let line = committed
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .map_or(
                committed.lines().count().min(rendered.lines().count()),
                |i| i,
            );
        panic!(
            "{} differs from the rendered output from line {}:\n  committed: {:?}\n  rendered:  {:?}\n\
             if the change is intended, run `UPDATE_GOLDEN=1 cargo test -p mailrelay-operator --test render` and review the diff",
            file.display(),
            line + 1,
            committed.lines().nth(line),
            rendered.lines().nth(line)
        );
    }
}

#[test]
fn rendering_the_examples_gives_the_golden_objects() {
    golden("examples.yaml", &root().join("../crds/examples"));
}

#[test]
fn rendering_the_variants_gives_the_golden_objects() {
    golden("variants.yaml", &root().join("tests/fixtures/variants"));
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    dir
}

const RELAY: &str = "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {name: r}\nspec: {hostname: mx.example.com}\n";

#[test]
fn a_relay_that_does_not_compile_fails_the_render_and_names_its_file() {
    let dir = dir_with(&[
        ("good.yaml", RELAY),
        (
            "bad.yaml",
            "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {name: s}\nspec:\n  hostname: mx.example.com\n  listeners: [{name: submission}]\n",
        ),
    ]);
    let out = render(dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "", "no partial stream for kubectl apply");
    let stderr = text(&out.stderr);
    assert!(
        stderr.lines().any(|l| l.starts_with("error: ")
            && l.contains(
                "bad.yaml: Relay default/s: spec.tls: the submission listener needs spec.tls"
            )),
        "{stderr}"
    );
}

#[test]
fn a_broken_maildomain_is_a_warning_naming_its_file_and_the_relay_still_renders() {
    let dir = dir_with(&[
        ("relay.yaml", RELAY),
        (
            "domain.yaml",
            "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {name: shop}\nspec:\n  domain: shop.example\n  inbound: {localParts: [x]}\n  delivery: {lmtp: {host: dovecot}}\n",
        ),
    ]);
    let out = render(dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("warning: ")
            && stderr.contains("domain.yaml: MailDomain default/shop: spec.delivery.lmtp.port"),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("\nkind: Deployment\n"));
}

#[test]
fn a_directory_without_a_relay_or_with_one_relay_twice_is_an_error() {
    let dir = dir_with(&[(
        "b.yaml",
        "apiVersion: mailrelay.io/v1alpha1\nkind: Blocklist\nmetadata: {name: b}\nspec: {}\n",
    )]);
    let out = render(dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no Relay"),
        "{}",
        text(&out.stderr)
    );

    let dir = dir_with(&[("a.yaml", RELAY), ("b.yaml", RELAY)]);
    let out = render(dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Relay default/r: also defined in"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_document_is_introduced_by_a_separator_and_a_comment() {
    let out = render(&root().join("tests/fixtures/variants"));
    let stdout = text(&out.stdout);
    let docs: Vec<&str> = stdout.split("---\n").skip(1).collect();
    assert_eq!(docs.len(), 19);
    for doc in docs {
        assert!(doc.starts_with("# "), "{doc}");
        assert!(
            doc.contains("\napiVersion: ") && doc.contains("\nkind: "),
            "{doc}"
        );
    }
    assert!(!stdout.contains('\r'));
}
