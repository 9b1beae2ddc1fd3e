//! Every rendered object against the official Kubernetes OpenAPI schemas,
//! for the oldest and the newest version we support, with
//! `kubernetes-validate --strict` (unknown fields are errors). The
//! validator has no schema for KEDA's ScaledObject and says so; every
//! built-in kind must pass.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: panics are its failures

#[path = "builders/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mailrelay_operator::Settings;
use mailrelay_operator::render::{render_dir, to_yaml};

const VERSIONS: [&str; 2] = ["1.31.0", "1.37.0"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The validator tests/run installs; made here the same way when missing.
fn validator() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = workspace();
        let venv = root.join("target/tests-venv");
        let exe = venv.join("bin/kubernetes-validate");
        if !exe.exists() {
            let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
            let installed = made.is_ok_and(|s| s.success())
                && Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "--disable-pip-version-check", "-r"])
                    .arg(root.join("tests/requirements.txt"))
                    .status()
                    .is_ok_and(|s| s.success());
            assert!(
                installed && exe.exists(),
                "kubernetes-validate is not installed in {} and could not be installed: run tests/run",
                venv.display()
            );
        }
        exe
    })
}

/// Validate `file` for every version; the output lines.
fn validate(file: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for v in VERSIONS {
        let out = Command::new(validator())
            .args(["-k", v, "--strict"])
            .arg(file)
            .output()
            .expect("runs kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{text}");
        assert!(
            out.status.success(),
            "kubernetes-validate -k {v} --strict failed:\n{text}"
        );
        lines.extend(text.lines().map(String::from));
    }
    lines
}

fn write(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    file
}

/// Every object of the YAML passed (or is a ScaledObject) for both versions.
fn assert_all_passed(yaml: &str, lines: &[String]) {
    let mut kinds = Vec::new();
    for doc in yaml.split("---\n").skip(1) {
        let value: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        let kind = value["kind"].as_str().unwrap().to_lowercase();
        let name = value["metadata"]["name"].as_str().unwrap();
        kinds.push(kind.clone());
        for v in VERSIONS {
            let minor = &v[..v.len() - 2];
            let passed = format!("passed for resource {kind}/{name} against version {minor}");
            let skipped = kind == "scaledobject";
            assert!(
                skipped || lines.iter().any(|l| l.contains(&passed)),
                "no '{passed}' in:\n{}",
                lines.join("\n")
            );
        }
    }
    assert!(kinds.len() >= 8, "{kinds:?}");
}

#[test]
fn the_rendered_examples_and_variants_pass_the_official_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in ["../crds/examples", "tests/fixtures/variants"] {
        let rendered = render_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(dir),
            &Settings::default(),
        )
        .unwrap();
        let file = write(tmp.path(), "rendered.yaml", &rendered.yaml);
        let lines = validate(&file);
        assert_all_passed(&rendered.yaml, &lines);
    }
}

#[test]
fn sharded_configmaps_of_a_large_config_pass_the_official_schemas() {
    let objects =
        common::big_blocklists(common::Fixture::relay(common::MINIMAL), 8, 100_000).objects();
    assert!(objects.config_maps.len() >= 2);
    let yaml = to_yaml(&[objects]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let lines = validate(&write(tmp.path(), "sharded.yaml", &yaml));
    assert_all_passed(&yaml, &lines);
}

#[test]
fn the_validator_rejects_an_unknown_field_so_it_is_known_to_check() {
    let rendered = render_dir(&workspace().join("crds/examples"), &Settings::default()).unwrap();
    let broken = rendered.yaml.replacen(
        "  maxUnavailable: 1\n",
        "  maxUnavailable: 1\n  notAField: true\n",
        1,
    );
    assert_ne!(broken, rendered.yaml);
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), "broken.yaml", &broken);
    let out = Command::new(validator())
        .args(["-k", "1.31.0", "--strict"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an unknown field passed: the validator is not checking"
    );
}
