//! `mailrelay check`: read a manifest directory, compile every Relay in
//! it and report each problem with the file it comes from.

use std::path::Path;

use mailrelay_crds::compile;
use mailrelay_crds::manifests::{Manifests, load_dir};

/// What `check` found: lines for the user, and whether any is a problem.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// Check the manifests in `dir`; with `relay`, only the Relay of that name.
pub fn check(dir: &Path, relay: Option<&str>) -> Report {
    let mut report = Report::default();
    let manifests = match load_dir(dir) {
        Ok(m) => m,
        Err(errors) => {
            report.problems = errors.iter().map(ToString::to_string).collect();
            return report;
        }
    };
    for ignored in &manifests.ignored {
        report.notes.push(format!(
            "{}: {}: not used by mailrelay",
            ignored.source, ignored.object
        ));
    }
    let relays: Vec<_> = manifests
        .relays
        .iter()
        .filter(|r| relay.is_none_or(|name| r.object.metadata.name.as_deref() == Some(name)))
        .collect();
    if relays.is_empty() {
        report.problems.push(match relay {
            Some(name) => format!("{}: no Relay named {name:?}", dir.display()),
            None => format!("{}: no Relay: add a manifest of kind Relay", dir.display()),
        });
        return report;
    }
    let domains = manifests.domain_objects();
    let blocklists = manifests.blocklist_objects();
    for r in relays {
        let name = r.object.metadata.name.as_deref().unwrap_or_default();
        match compile(&r.object, &domains, &blocklists) {
            Ok(compiled) => {
                report
                    .problems
                    .extend(compiled.problems.iter().map(|p| located(&manifests, p)));
                report.notes.push(format!(
                    "Relay {name}: {} domains, {} blocklist entries, {} listeners",
                    compiled.config.domains.len(),
                    compiled.config.policy.entry_count(),
                    compiled.config.listeners.len(),
                ));
            }
            Err(problems) => report
                .problems
                .extend(problems.iter().map(|p| located(&manifests, p))),
        }
    }
    // One MailDomain can be selected by several Relays: say each problem once.
    report.problems.sort();
    report.problems.dedup();
    report
}

fn located(manifests: &Manifests, problem: &compile::Problem) -> String {
    match manifests.source_of(&problem.object) {
        Some(source) => format!("{}: {problem}", source.file.display()),
        None => problem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn the_examples_check_clean() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples");
        let report = check(&dir, None);
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.starts_with("Relay edge: 2 domains")),
            "{:?}",
            report.notes
        );
    }

    #[test]
    fn a_broken_manifest_names_file_object_field_and_reason() {
        let dir = dir_with(&[
            (
                "relay.yaml",
                "apiVersion: mailrelay.io/v1alpha1\nkind: Relay\nmetadata: {name: r}\nspec: {hostname: mx.example.com}\n",
            ),
            (
                "domain.yaml",
                "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {name: shop}\nspec:\n  domain: shop.example\n  inbound: {localParts: [x]}\n  delivery: {lmtp: {host: dovecot}}\n",
            ),
        ]);
        let report = check(dir.path(), None);
        assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);
        let p = &report.problems[0];
        assert!(p.ends_with("domain.yaml: MailDomain default/shop: spec.delivery.lmtp.port: LMTP has no well-known port: set the port of the LMTP service, for example 24"), "{p}");
    }

    #[test]
    fn a_missing_relay_is_a_problem() {
        let dir = dir_with(&[(
            "b.yaml",
            "apiVersion: mailrelay.io/v1alpha1\nkind: Blocklist\nmetadata: {name: b}\nspec: {}\n",
        )]);
        assert!(check(dir.path(), None).problems[0].contains("no Relay"));
        assert!(check(dir.path(), Some("edge")).problems[0].contains("no Relay named \"edge\""));
    }
}
