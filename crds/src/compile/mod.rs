//! `compile()`: from the resources a user applied to one relay's
//! [`RelayConfig`]. Pure and deterministic: no I/O, no clock, no
//! randomness; the same objects in any order give byte-identical output.
//!
//! Problems are kept apart by whose they are. A Relay that cannot be
//! compiled is an error: the relay keeps the config it runs. A MailDomain
//! or Blocklist entry that cannot be used is left out and reported as a
//! [`Problem`] beside a config that still serves everyone else — one
//! tenant's typo must not stop mail for the others.

mod blocklists;
mod domains;
mod events;
pub mod normalize;
mod relay;
mod shaping;
mod smarthost;

pub use relay::CLASSIFICATION_REGEX_BYTES;
pub mod selector;

use kube::Resource;
use serde::{Deserialize, Serialize};

use crate::common::ObjectRef;
use crate::config::RelayConfig;
use crate::{Blocklist, MailDomain, Relay};

/// Something wrong with one field of one object, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub object: ObjectRef,
    /// Path of the field, such as `spec.delivery.lmtp.port`.
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(object: &ObjectRef, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            object: object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// A compiled config and the problems of the objects it left out.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    pub config: RelayConfig,
    /// Problems of MailDomains and Blocklists, sorted. What they name is
    /// not in `config`.
    pub problems: Vec<Problem>,
}

/// Compile the config of `relay` from the MailDomains and Blocklists of
/// the cluster (or of a manifest directory). Objects in other namespaces,
/// not matched by the Relay's selectors, or being deleted are ignored.
///
/// Returns `Err` with the Relay's own problems when the Relay cannot be
/// compiled.
pub fn compile(
    relay: &Relay,
    domains: &[MailDomain],
    blocklists: &[Blocklist],
) -> Result<Compiled, Vec<Problem>> {
    let base = relay::compile_relay(relay)?;
    let namespace = namespace_of(relay);
    let mut problems = Vec::new();

    let selected_domains: Vec<&MailDomain> = domains
        .iter()
        .filter(|d| {
            is_candidate(*d, namespace) && base.domain_selector.matches(d.meta().labels.as_ref())
        })
        .collect();
    let selected_blocklists: Vec<&Blocklist> = blocklists
        .iter()
        .filter(|b| {
            is_candidate(*b, namespace) && base.blocklist_selector.matches(b.meta().labels.as_ref())
        })
        .collect();

    let mut config = base.config;
    config.domains = domains::compile_domains(&config.relay, &selected_domains, &mut problems);
    config.policy = blocklists::compile_blocklists(&selected_blocklists, &mut problems);
    events::add_domain_webhooks(
        &mut config.events,
        &selected_domains,
        &config.domains,
        &mut problems,
    );
    problems.sort();
    problems.dedup();
    Ok(Compiled { config, problems })
}

/// What one Blocklist holds on its own, for its status: the entries that
/// compile (duplicates within the list counted once) and the problems of
/// the others. Independent of any Relay: a Blocklist's entries mean the
/// same whichever Relay applies it.
pub fn check_blocklist(blocklist: &Blocklist) -> (i64, Vec<Problem>) {
    let mut problems = Vec::new();
    let policy = blocklists::compile_blocklists(&[blocklist], &mut problems);
    problems.sort();
    problems.dedup();
    (
        i64::try_from(policy.entry_count()).unwrap_or(i64::MAX),
        problems,
    )
}

/// Collects problems against one object.
pub(crate) struct Report<'a> {
    pub object: &'a ObjectRef,
    pub problems: &'a mut Vec<Problem>,
}

impl Report<'_> {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems
            .push(Problem::new(self.object, field, message));
    }

    /// The value, or `None` with the error recorded against `field`.
    pub fn check<T>(&mut self, field: impl Into<String>, result: Result<T, String>) -> Option<T> {
        result.map_err(|e| self.add(field, e)).ok()
    }
}

fn namespace_of<K: Resource>(obj: &K) -> &str {
    obj.meta().namespace.as_deref().unwrap_or_default()
}

fn is_candidate<K: Resource>(obj: &K, namespace: &str) -> bool {
    namespace_of(obj) == namespace && obj.meta().deletion_timestamp.is_none()
}

/// Oldest first (by creation time, then name), so "the older one wins"
/// is the same decision wherever it is made.
fn age_order<K: Resource>(a: &K, b: &K) -> std::cmp::Ordering {
    let key = |o: &K| {
        let m = o.meta();
        (
            m.creation_timestamp.as_ref().map(|t| t.0),
            m.name.clone().unwrap_or_default(),
        )
    };
    let (ta, na) = key(a);
    let (tb, nb) = key(b);
    // Objects without a timestamp (plain manifests) sort after dated ones.
    match (ta, tb) {
        (Some(x), Some(y)) => x.cmp(&y).then(na.cmp(&nb)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => na.cmp(&nb),
    }
}

#[cfg(test)]
mod tests;
