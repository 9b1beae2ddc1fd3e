//! The outcome book: what each Relay's last reconcile found, which the
//! MailDomain and Blocklist controllers read to write their status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use mailrelay_crds::Relay;
use mailrelay_crds::compile::Problem;
use tokio::sync::mpsc;

/// What one Relay's last reconcile found, for the status of the
/// MailDomains and Blocklists (and for mapping their changes to Relays).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The Relay's spec is invalid: its running config was kept.
    pub invalid: bool,
    /// Names of the MailDomains in its config.
    pub domains: BTreeSet<String>,
    /// Names of the Blocklists in its config.
    pub blocklists: BTreeSet<String>,
    /// Problems of the MailDomains and Blocklists it left out.
    pub problems: Vec<Problem>,
    pub ready: bool,
    /// External addresses of its Service (load-balancer IPs and host
    /// names, external IPs), for the MX check.
    pub external: Vec<String>,
}

/// The kinds a Relay selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selected {
    MailDomain,
    Blocklist,
}

impl Selected {
    fn kind(self) -> &'static str {
        match self {
            Self::MailDomain => "MailDomain",
            Self::Blocklist => "Blocklist",
        }
    }
}

impl Outcome {
    /// Does this Relay's config (or its problem list) involve `kind/name`?
    fn involves(&self, kind: Selected, name: &str) -> bool {
        let listed = match kind {
            Selected::MailDomain => self.domains.contains(name),
            Selected::Blocklist => self.blocklists.contains(name),
        };
        listed
            || self
                .problems
                .iter()
                .any(|p| p.object.kind == kind.kind() && p.object.name == name)
    }
}

/// How long after start-up a Relay without an outcome counts as one not
/// reconciled *yet*.
const GRACE: Duration = Duration::from_secs(60);

/// The last [`Outcome`] of each Relay, by (namespace, name).
pub(crate) struct OutcomeBook {
    outcomes: RwLock<BTreeMap<(String, String), Outcome>>,
    /// Wakes the MailDomain and Blocklist controllers when an outcome
    /// changes, so they re-read it.
    changed: Vec<mpsc::UnboundedSender<()>>,
    /// When the controllers started: until [`GRACE`] has passed, a Relay
    /// without an outcome is one not reconciled *yet*.
    started: Instant,
}

impl OutcomeBook {
    pub(crate) fn new(changed: Vec<mpsc::UnboundedSender<()>>) -> Self {
        Self {
            outcomes: RwLock::default(),
            changed,
            started: Instant::now(),
        }
    }

    /// Record a Relay's outcome (`None`: it is gone); wake the status
    /// controllers if it changed.
    pub(crate) fn record(&self, ns: &str, name: &str, outcome: Option<Outcome>) {
        let key = (ns.to_string(), name.to_string());
        let changed = match self.outcomes.write() {
            Ok(mut map) => match outcome {
                Some(o) => map.insert(key, o.clone()).as_ref() != Some(&o),
                None => map.remove(&key).is_some(),
            },
            Err(_) => false,
        };
        if changed {
            for tx in &self.changed {
                let _ = tx.send(());
            }
        }
    }

    /// The last outcome of Relay `ns/name`, if it has one.
    pub(crate) fn get(&self, ns: &str, name: &str) -> Option<Outcome> {
        self.outcomes
            .read()
            .ok()
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())).cloned())
    }

    /// Outcomes of the Relays of `ns` that still exist, by name, and the
    /// names of those without one (not reconciled yet, or failing).
    pub(crate) fn in_namespace(
        &self,
        relays: &Store<Relay>,
        ns: &str,
    ) -> (BTreeMap<String, Outcome>, Vec<String>) {
        let (mut out, mut missing) = (BTreeMap::new(), Vec::new());
        let Ok(map) = self.outcomes.read() else {
            return (out, missing);
        };
        for relay in relays.state() {
            if relay.namespace().as_deref() != Some(ns) || relay.meta().deletion_timestamp.is_some()
            {
                continue;
            }
            let name = relay.name_any();
            match map.get(&(ns.to_string(), name.clone())) {
                Some(o) => {
                    out.insert(name, o.clone());
                }
                None => missing.push(name),
            }
        }
        (out, missing)
    }

    /// Names of the Relays of `ns` whose last outcome involves `kind/name`.
    pub(crate) fn involving(&self, ns: &str, kind: Selected, name: &str) -> BTreeSet<String> {
        let Ok(map) = self.outcomes.read() else {
            return BTreeSet::new();
        };
        map.iter()
            .filter(|((n, _), o)| n == ns && o.involves(kind, name))
            .map(|((_, relay), _)| relay.clone())
            .collect()
    }

    /// Right after start-up Relays without an outcome are simply not
    /// reconciled yet: status written now would flap. The caller looks
    /// again after this long instead.
    pub(crate) fn settling(&self) -> Option<Duration> {
        GRACE
            .checked_sub(self.started.elapsed())
            .map(|left| left.max(Duration::from_secs(5)))
    }
}
