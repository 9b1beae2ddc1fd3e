//! Steps 2–4 of a reconcile, pure: compile the Relay with its namespace's
//! MailDomains and Blocklists, make the model, build the objects. Shared
//! by `render` and the controller, so what a user previews is what the
//! operator applies.

use mailrelay_crds::compile::Problem;
use mailrelay_crds::{Blocklist, MailDomain, Relay, compile};

use crate::builders::{BuildError, Objects, build_all};
use crate::model::{Model, ModelError, Settings};

/// The desired state of one Relay.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub model: Model,
    pub objects: Objects,
    /// Problems of MailDomains and Blocklists left out of the config.
    pub problems: Vec<Problem>,
}

/// Why a Relay has no plan: its own spec is wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Invalid {
    /// Problems `compile()` found in the Relay itself.
    #[error("{}", lines(.0).join("\n"))]
    Problems(Vec<Problem>),
    /// A name or namespace the operator cannot derive its objects' names
    /// from, or a config it cannot serialise.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A config that cannot be put into ConfigMaps (too large, or its
    /// compression failed).
    #[error(transparent)]
    Build(#[from] BuildError),
}

fn lines(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

impl Invalid {
    /// One line per problem.
    pub(crate) fn lines(&self) -> Vec<String> {
        match self {
            Self::Problems(p) => lines(p),
            Self::Model(e) => vec![e.to_string()],
            Self::Build(e) => vec![e.to_string()],
        }
    }
}

/// Plan `relay` from the MailDomains and Blocklists around it.
pub(crate) fn plan(
    relay: &Relay,
    domains: &[MailDomain],
    blocklists: &[Blocklist],
    settings: &Settings,
) -> Result<Plan, Invalid> {
    let compiled = compile(relay, domains, blocklists).map_err(Invalid::Problems)?;
    let model = Model::new(relay, compiled.config, domains, settings)?;
    let objects = build_all(&model)?;
    Ok(Plan {
        model,
        objects,
        problems: compiled.problems,
    })
}
