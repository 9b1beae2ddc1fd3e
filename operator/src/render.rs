//! `mailrelay-operator render`: every object the operator would create for
//! every Relay of a manifest directory, as one multi-document YAML stream
//! (like `helm template`). Relays in namespace/name order, each Relay's
//! objects in apply order, so the output is stable enough to diff and to
//! keep as a golden file.
//!
//! Pure apart from reading the directory: the same validate → model →
//! build steps as a reconcile, without a client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mailrelay_crds::Relay;
use mailrelay_crds::compile::Problem;
use mailrelay_crds::manifests::{LoadError, Manifests, Sourced, load_dir};

use crate::builders::Objects;
use crate::model::Settings;
use crate::plan::{Invalid, plan};

/// The YAML stream and what the user should know about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub yaml: String,
    /// Problems that did not stop any Relay (a MailDomain or Blocklist left
    /// out, a maildir without a claim), each naming its file where known.
    pub warnings: Vec<String>,
}

/// Why nothing was rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{}", lines(.0))]
    Load(Vec<LoadError>),
    #[error("{}: no Relay: add a manifest of kind Relay", .0.display())]
    NoRelay(PathBuf),
    /// A Relay that does not compile or build, one line per problem.
    #[error("{}", .0.join("\n"))]
    Relays(Vec<String>),
    #[error("{object}: cannot write YAML: {source}")]
    Yaml {
        object: String,
        source: serde_saphyr::SerializeError,
    },
}

fn lines(errors: &[LoadError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Render every Relay of the manifests in `dir`.
pub fn render_dir(dir: &Path, settings: &Settings) -> Result<Rendered, RenderError> {
    let manifests = load_dir(dir).map_err(RenderError::Load)?;
    if manifests.relays.is_empty() {
        return Err(RenderError::NoRelay(dir.to_path_buf()));
    }
    render(&manifests, settings)
}

/// Render every Relay of `manifests`. Any Relay that fails fails the whole
/// render: a partial stream piped into `kubectl apply` would be worse.
pub(crate) fn render(manifests: &Manifests, settings: &Settings) -> Result<Rendered, RenderError> {
    let domains = manifests.domain_objects();
    let blocklists = manifests.blocklist_objects();
    let mut relays: BTreeMap<(String, String), &Sourced<Relay>> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for r in &manifests.relays {
        let m = &r.object.metadata;
        let key = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        if let Some(first) = relays.insert(key.clone(), r) {
            errors.push(format!(
                "{}: Relay {}/{}: also defined in {}",
                r.source, key.0, key.1, first.source
            ));
        }
    }
    let mut built = Vec::new();
    for r in relays.values() {
        match plan(&r.object, &domains, &blocklists, settings) {
            Ok(plan) => {
                warnings.extend(plan.problems.iter().map(|p| located(manifests, p)));
                warnings.extend(plan.model.warnings.iter().map(ToString::to_string));
                built.push(plan.objects);
            }
            Err(Invalid::Problems(problems)) => {
                errors.extend(problems.iter().map(|p| located(manifests, p)));
            }
            Err(e @ (Invalid::Model(_) | Invalid::Build(_))) => {
                errors.push(format!("{}: {e}", r.source.file.display()));
            }
        }
    }
    // One MailDomain can be selected by several Relays: say each problem once.
    warnings.sort();
    warnings.dedup();
    if !errors.is_empty() {
        return Err(RenderError::Relays(errors));
    }
    Ok(Rendered {
        yaml: to_yaml(&built)?,
        warnings,
    })
}

/// `FILE: problem`, as `mailrelay check` prints it.
fn located(manifests: &Manifests, problem: &Problem) -> String {
    match manifests.source_of(&problem.object) {
        Some(source) => format!("{}: {problem}", source.file.display()),
        None => problem.to_string(),
    }
}

/// The objects as one YAML stream: each document opens with `---` and a
/// comment naming it.
pub fn to_yaml(relays: &[Objects]) -> Result<String, RenderError> {
    let mut out = String::new();
    for objects in relays {
        for doc in objects.documents() {
            let object = doc.describe();
            let body = serde_saphyr::to_string(&doc).map_err(|source| RenderError::Yaml {
                object: object.clone(),
                source,
            })?;
            out.push_str("---\n");
            out.push_str(&format!("# {object}\n"));
            out.push_str(&body);
            if !body.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    Ok(out)
}
