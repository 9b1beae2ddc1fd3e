//! Reading the YAML manifests a user would `kubectl apply`: every `.yaml`
//! and `.yml` file of a directory, multi-document files included.
//!
//! Every error names the file, the document, the object and the field.
//! Unknown fields are errors too: the API server would drop them, which
//! turns a typo such as `catchall` into a silently different setting.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Blocklist, MailDomain, Relay};

/// Namespace given to objects whose manifest names none, as kubectl does
/// with its default context.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Where an object was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based position of the document in its file.
    pub document: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

/// An object and where it came from.
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    pub source: Source,
    pub object: T,
}

/// Everything read from a directory.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub relays: Vec<Sourced<Relay>>,
    pub domains: Vec<Sourced<MailDomain>>,
    pub blocklists: Vec<Sourced<Blocklist>>,
    pub secrets: Vec<Sourced<Secret>>,
    /// Objects of other kinds: not used, listed so nothing is silently dropped.
    pub ignored: Vec<Sourced<String>>,
}

impl Manifests {
    pub fn domain_objects(&self) -> Vec<MailDomain> {
        self.domains.iter().map(|s| s.object.clone()).collect()
    }

    pub fn blocklist_objects(&self) -> Vec<Blocklist> {
        self.blocklists.iter().map(|s| s.object.clone()).collect()
    }

    /// Where the object `kind namespace/name` was read from.
    pub fn source_of(&self, object: &crate::common::ObjectRef) -> Option<&Source> {
        fn find<'a, K: kube::Resource>(
            list: &'a [Sourced<K>],
            o: &crate::common::ObjectRef,
        ) -> Option<&'a Source> {
            list.iter()
                .find(|s| {
                    let m = s.object.meta();
                    m.name.as_deref() == Some(&o.name)
                        && m.namespace.as_deref().unwrap_or_default() == o.namespace
                })
                .map(|s| &s.source)
        }
        match object.kind.as_str() {
            "Relay" => find(&self.relays, object),
            "MailDomain" => find(&self.domains, object),
            "Blocklist" => find(&self.blocklists, object),
            _ => None,
        }
    }
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid YAML: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("{at}: {object}: {field}: {message}")]
    Object {
        at: Source,
        /// `Kind name`, as far as it could be read.
        object: String,
        field: String,
        message: String,
    },
}

/// Read every manifest in `dir` (not recursive), in file-name order.
pub fn load_dir(dir: &Path) -> Result<Manifests, Vec<LoadError>> {
    let entries = std::fs::read_dir(dir).map_err(|source| {
        vec![LoadError::Io {
            path: dir.to_path_buf(),
            source,
        }]
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(vec![LoadError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no .yaml or .yml files"),
        }]);
    }
    let mut manifests = Manifests::default();
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&file, &text, &mut manifests, &mut errors),
            Err(source) => errors.push(LoadError::Io { path: file, source }),
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

/// Read the documents of one file's text into `manifests`.
pub fn load_text(file: &Path, text: &str, manifests: &mut Manifests, errors: &mut Vec<LoadError>) {
    let documents: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => {
            errors.push(LoadError::Yaml {
                path: file.to_path_buf(),
                message: e.to_string(),
            });
            return;
        }
    };
    for (i, doc) in documents.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let source = Source {
            file: file.to_path_buf(),
            document: i + 1,
        };
        if let Err(e) = load_document(source, doc, manifests) {
            errors.push(e);
        }
    }
}

fn load_document(source: Source, mut doc: Value, m: &mut Manifests) -> Result<(), LoadError> {
    let str_at = |doc: &Value, ptr: &str| {
        doc.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let api_version = str_at(&doc, "/apiVersion");
    let kind = str_at(&doc, "/kind");
    let name = str_at(&doc, "/metadata/name");
    let error = |field: &str, message: String| LoadError::Object {
        at: source.clone(),
        object: format!(
            "{} {}",
            if kind.is_empty() { "object" } else { &kind },
            if name.is_empty() { "(unnamed)" } else { &name }
        ),
        field: field.to_string(),
        message,
    };
    if kind.is_empty() || api_version.is_empty() {
        return Err(error("kind", "a manifest needs apiVersion and kind".into()));
    }
    if name.is_empty() {
        return Err(error("metadata.name", "is required".into()));
    }
    if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("namespace")
            .or_insert_with(|| DEFAULT_NAMESPACE.into());
    }
    let ours = api_version == format!("{}/{}", crate::common::GROUP, crate::common::VERSION);
    match (api_version.as_str(), kind.as_str()) {
        (_, "Relay" | "MailDomain" | "Blocklist") if !ours => Err(error(
            "apiVersion",
            format!("{api_version:?} is not served; use mailrelay.io/v1alpha1"),
        )),
        (_, "Relay") => typed(doc, &error).map(|object| m.relays.push(Sourced { source, object })),
        (_, "MailDomain") => {
            typed(doc, &error).map(|object| m.domains.push(Sourced { source, object }))
        }
        (_, "Blocklist") => {
            typed(doc, &error).map(|object| m.blocklists.push(Sourced { source, object }))
        }
        ("v1", "Secret") => {
            typed(doc, &error).map(|object| m.secrets.push(Sourced { source, object }))
        }
        _ => {
            m.ignored.push(Sourced {
                source,
                object: format!("{kind} {name}"),
            });
            Ok(())
        }
    }
}

/// Deserialise one object, reporting the first bad field or the first
/// unknown one by its path.
fn typed<T: DeserializeOwned>(
    doc: Value,
    error: &dyn Fn(&str, String) -> LoadError,
) -> Result<T, LoadError> {
    let mut unknown = Vec::new();
    let result: Result<T, _> =
        serde_ignored::deserialize(doc.clone(), |path| unknown.push(path.to_string()));
    match result {
        // apiVersion and kind were checked by the caller; `status` is the
        // operator's, and a manifest exported from a cluster may carry it.
        Ok(object) => match unknown
            .iter()
            .find(|p| !matches!(p.as_str(), "apiVersion" | "kind") && !p.starts_with("status"))
        {
            Some(path) => Err(error(
                path,
                "unknown field (a typo?); the API server would drop it".into(),
            )),
            _ => Ok(object),
        },
        Err(_) => {
            let err = serde_path_to_error::deserialize::<_, T>(doc)
                .err()
                .map(|e| (e.path().to_string(), e.inner().to_string()));
            let (path, message) = err.unwrap_or_else(|| (".".into(), "cannot be read".into()));
            Err(error(&path, message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Manifests, Vec<LoadError>) {
        let mut m = Manifests::default();
        let mut e = Vec::new();
        load_text(Path::new("test.yaml"), text, &mut m, &mut e);
        (m, e)
    }

    #[test]
    fn reads_multi_document_files_and_defaults_the_namespace() {
        let (m, e) = load(
            "---\napiVersion: mailrelay.io/v1alpha1\nkind: Blocklist\nmetadata: {name: a}\nspec: {}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: mail}\nstringData: {k: v}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(m.blocklists.len(), 1);
        assert_eq!(
            m.blocklists[0].object.metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(m.blocklists[0].source.document, 1);
        assert_eq!(m.secrets[0].source.document, 2);
        assert_eq!(
            m.secrets[0].object.metadata.namespace.as_deref(),
            Some("mail")
        );
        assert_eq!(m.ignored[0].object, "Deployment d");
    }

    #[test]
    fn errors_name_file_document_object_and_field() {
        let (_, e) = load(
            "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {name: shop}\n\
             spec:\n  domain: shop.example\n  delivery:\n    lmtp: {host: dovecot, port: lots}\n",
        );
        let text = e[0].to_string();
        assert!(
            text.starts_with("test.yaml (document 1): MailDomain shop: spec.delivery.lmtp.port: "),
            "{text}"
        );

        let (_, e) = load(
            "apiVersion: mailrelay.io/v1alpha1\nkind: MailDomain\nmetadata: {name: shop}\n\
             spec:\n  domain: shop.example\n  inbound: {catchall: true}\n  delivery: {maildir: {path: /m}}\n",
        );
        let text = e[0].to_string();
        assert!(
            text.contains("MailDomain shop: spec.inbound.catchall: unknown field"),
            "{text}"
        );

        let (_, e) =
            load("apiVersion: mailrelay.io/v1\nkind: Relay\nmetadata: {name: r}\nspec: {}\n");
        assert!(
            e[0].to_string()
                .contains("Relay r: apiVersion: \"mailrelay.io/v1\" is not served")
        );

        let (_, e) = load("kind: Relay\n");
        assert!(e[0].to_string().contains("apiVersion and kind"));

        let (_, e) = load("a: [\n");
        assert!(matches!(e[0], LoadError::Yaml { .. }));
    }
}
