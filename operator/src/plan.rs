//! Steps 2–4 of a reconcile, pure: compile the Relay with its namespace's
//! MailDomains and Blocklists, make the model, build the objects. Shared
//! by `render` and the controller, so what a user previews is what the
//! operator applies.

use mailrelay_crds::compile::Problem;
use mailrelay_crds::{Blocklist, MailDomain, Relay, compile};

use crate::builders::{Objects, build_all};
use crate::model::{Model, Settings};

/// The desired state of one Relay.
#[derive(Clone, Debug)]
pub struct Plan {
    pub model: Model,
    pub objects: Objects,
    /// Problems of MailDomains and Blocklists left out of the config.
    pub problems: Vec<Problem>,
}

/// Why a Relay has no plan: its own spec is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Problems `compile()` found in the Relay itself.
    Problems(Vec<Problem>),
    /// A name, namespace or size problem found making the objects.
    Other(String),
}

impl Invalid {
    /// One line per problem.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Problems(p) => p.iter().map(ToString::to_string).collect(),
            Self::Other(s) => vec![s.clone()],
        }
    }
}

/// Plan `relay` from the MailDomains and Blocklists around it.
pub fn plan(
    relay: &Relay,
    domains: &[MailDomain],
    blocklists: &[Blocklist],
    settings: &Settings,
) -> Result<Plan, Invalid> {
    let compiled = compile(relay, domains, blocklists).map_err(Invalid::Problems)?;
    let model = Model::new(relay, compiled.config, domains, settings)
        .map_err(|e| Invalid::Other(e.to_string()))?;
    let objects = build_all(&model).map_err(|e| Invalid::Other(e.to_string()))?;
    Ok(Plan {
        model,
        objects,
        problems: compiled.problems,
    })
}
