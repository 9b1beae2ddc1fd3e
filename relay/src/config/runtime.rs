//! The loaded configuration a session works with: the compiled
//! `RelayConfig` plus the lookup structures built from it once, at load
//! time, so the SMTP hot path does no parsing. Immutable; a reload builds a
//! new one and swaps it in, and sessions already open keep theirs.

use crate::delivery::classify::Classifier;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use mailrelay_crds::compile::normalize;
use mailrelay_crds::config::{DomainConfig, RelayConfig};

use crate::policy::Policy;
use crate::policy::accounts::Accounts;

pub struct Runtime {
    pub config: RelayConfig,
    /// Domain or alias → index into `config.domains`.
    domains: HashMap<String, usize>,
    pub accounts: Accounts,
    suspended: HashSet<String>,
    /// Login → extra addresses or `*@domain` patterns it may send as.
    senders: HashMap<String, Vec<String>>,
    pub policy: Policy,
    /// `spec.delivery.classification` before the built-in table.
    pub classifier: Classifier,
    /// `spec.delivery.shaping` and `throttle`.
    pub(crate) shaper: crate::queue::shaping::Shaper,
}

/// Where a recipient's mail would go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recipient<'a> {
    /// A hosted domain that accepts this local part.
    Hosted(&'a DomainConfig),
    /// A hosted domain that does not know this local part.
    UnknownUser(&'a DomainConfig),
    /// A hosted domain that does not take inbound mail from outside.
    InboundDisabled(&'a DomainConfig),
    /// Not hosted here: relaying.
    Remote,
}

impl Runtime {
    /// Build from a compiled config, reading account files from its
    /// secrets directory. Problems with a file are returned as warnings:
    /// AUTH then fails for that domain only.
    pub fn build(config: RelayConfig, now_unix: i64) -> (Runtime, Vec<String>) {
        let mut warnings = Vec::new();
        let mut domains = HashMap::new();
        let mut accounts = Accounts::default();
        let mut suspended = HashSet::new();
        let mut senders: HashMap<String, Vec<String>> = HashMap::new();
        for (i, d) in config.domains.iter().enumerate() {
            domains.insert(d.name.clone(), i);
            for alias in &d.aliases {
                domains.insert(alias.clone(), i);
            }
            let Some(sub) = &d.submission else { continue };
            let path = sub.accounts.path(&config.secrets_dir);
            let names: Vec<&str> = std::iter::once(d.name.as_str())
                .chain(d.aliases.iter().map(String::as_str))
                .collect();
            match accounts.load_file(&path, &names) {
                Ok(bad) => warnings.extend(
                    bad.into_iter()
                        .map(|b| format!("{}: line {}: {}", path.display(), b.line, b.reason)),
                ),
                Err(e) => warnings.push(format!(
                    "{}: {e}; nobody can authenticate for {}",
                    path.display(),
                    d.name
                )),
            }
            suspended.extend(sub.suspended.iter().cloned());
            for grant in &sub.senders {
                senders
                    .entry(grant.account.clone())
                    .or_default()
                    .extend(grant.addresses.iter().cloned());
            }
        }
        let policy = Policy::build(&config.policy, now_unix);
        let classifier = Classifier::new(&config.classification);
        let shaper = crate::queue::shaping::Shaper::new(&config.shaping);
        let runtime = Runtime {
            classifier,
            shaper,
            config,
            domains,
            accounts,
            suspended,
            senders,
            policy,
        };
        (runtime, warnings)
    }

    pub(crate) fn domain(&self, name: &str) -> Option<&DomainConfig> {
        self.domains.get(name).map(|&i| &self.config.domains[i])
    }

    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = normalize::unmap_addr(ip);
        self.config
            .trusted_networks
            .iter()
            .any(|n: &IpNet| n.contains(&ip))
    }

    /// What `local@domain` (domain a lower-case A-label) is to this relay.
    pub(crate) fn recipient(&self, local: &str, domain: &str) -> Recipient<'_> {
        let Some(domain) = self.domain(domain) else {
            return Recipient::Remote;
        };
        let inbound = &domain.inbound;
        if !inbound.enabled {
            return Recipient::InboundDisabled(domain);
        }
        let local = local.to_lowercase();
        let base = base_local_part(&local, inbound.recipient_delimiter);
        if inbound.catch_all
            || inbound
                .local_parts
                .binary_search_by(|p| p.as_str().cmp(base))
                .is_ok()
        {
            Recipient::Hosted(domain)
        } else {
            Recipient::UnknownUser(domain)
        }
    }

    pub(crate) fn is_suspended(&self, login: &str) -> bool {
        self.suspended.contains(login)
    }

    /// May `login` use `sender` in MAIL FROM (both normalised: local part
    /// lower-cased, domain an A-label)? Its own address always; others by
    /// grant.
    pub(crate) fn may_send_as(&self, login: &str, sender: &str) -> bool {
        if sender == login {
            return true;
        }
        self.senders.get(login).is_some_and(|grants| {
            grants.iter().any(|g| match g.strip_prefix("*@") {
                Some(domain) => sender.rsplit_once('@').is_some_and(|(_, d)| d == domain),
                None => *g == sender,
            })
        })
    }
}

/// The local part with a sub-address removed: `alice+news` → `alice`.
pub(crate) fn base_local_part(local: &str, delimiter: Option<char>) -> &str {
    match delimiter.and_then(|d| local.split_once(d)) {
        Some((base, _)) if !base.is_empty() => base,
        _ => local,
    }
}

#[cfg(test)]
mod tests {
    use super::base_local_part;

    #[test]
    fn sub_addresses_fold_to_the_base() {
        assert_eq!(base_local_part("alice+news", Some('+')), "alice");
        assert_eq!(base_local_part("alice", Some('+')), "alice");
        assert_eq!(base_local_part("+x", Some('+')), "+x");
        assert_eq!(base_local_part("alice+news", None), "alice+news");
    }
}
