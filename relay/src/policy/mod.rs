//! Who may send what (DESIGN.md §1, step 2): blocklists compiled into
//! lookup structures, DNSBL zones, accounts and per-client limits.

pub(crate) mod accounts;
mod dns;
mod dnsbl;
#[cfg(test)]
mod dnsmasq_tests;
mod hit;
mod ipset;
pub mod limits;
#[cfg(test)]
mod measure;
mod names;

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use mailrelay_crds::compile::normalize;
use mailrelay_crds::config::{BlockRule, PolicyConfig};

pub use dns::{
    Dns, DnsAnswer, DnsError, HickoryDns, ResolverError, parse_resolv_conf, resolver, reverse_name,
};
pub use dnsbl::{
    DnsblCache, DnsblChecker, DnsblError, NEGATIVE_TTL, POSITIVE_TTL_MAX, POSITIVE_TTL_MIN,
    query_name,
};
pub use hit::{BlockReply, Hit, Matched, NameRole};
pub(crate) use ipset::IpSet;
pub(crate) use names::{AddressSet, NameSet, normalize_name};

/// The blocklists of one config, ready for lookups.
///
/// [`Policy::build`] is pure and leaves out entries that have expired; it
/// tells the caller when the next one expires ([`Policy::next_expiry`]) so
/// the caller can rebuild then. Lookups are synchronous and allocation-free
/// on a miss; DNSBL zones need DNS and live in [`dnsbl`].
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Arc<BlockRule>>,
    ips: IpSet<u32>,
    names: NameSet<u32>,
    senders: AddressSet<u32>,
    recipients: AddressSet<u32>,
    recipient_domains: NameSet<u32>,
    dnsbl: Vec<DnsblZone>,
    next_expiry: Option<i64>,
}

/// One DNSBL zone to query for each client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DnsblZone {
    /// Lower-case A-label name, no trailing dot.
    pub zone: String,
    /// Answers that count as listed.
    pub return_codes: Vec<IpNet>,
    /// Reply text for listed clients, over the rule's.
    pub message: Option<String>,
    pub rule: Arc<BlockRule>,
    /// Position of the rule: lower is stricter.
    pub rule_index: u32,
}

impl DnsblZone {
    /// Whether a DNSBL answer counts as a listing.
    pub(crate) fn lists(&self, answer: IpAddr) -> bool {
        self.return_codes.iter().any(|net| net.contains(&answer))
    }
}

impl Policy {
    /// The policy in force at `now_unix`: an entry whose expiry is at or
    /// before `now_unix` is left out ("the time after which the entry no
    /// longer applies"; at that second it is gone, so rebuilding at
    /// [`next_expiry`](Self::next_expiry) removes it). Entries pointing at a
    /// rule that does not exist are left out with a warning.
    pub fn build(config: &PolicyConfig, now_unix: i64) -> Policy {
        let rules: Vec<Arc<BlockRule>> = config.rules.iter().cloned().map(Arc::new).collect();
        let mut next_expiry: Option<i64> = None;
        let mut live = |rule: u32, expires: Option<i64>, what: &dyn std::fmt::Display| {
            if !usize::try_from(rule).is_ok_and(|r| r < rules.len()) {
                tracing::warn!(rule, entry = %what, "blocklist entry names no rule; left out");
                return false;
            }
            match expires {
                Some(t) if t <= now_unix => false,
                Some(t) => {
                    next_expiry = Some(next_expiry.map_or(t, |n| n.min(t)));
                    true
                }
                None => true,
            }
        };
        // Every set keeps the first value given for a duplicate entry, so
        // entries go in rule order: the strictest unexpired rule wins.
        let ips = IpSet::build(by_rule(
            config
                .ips
                .iter()
                .filter(|e| live(e.rule, e.expires, &e.net))
                .map(|e| (e.net, e.rule)),
            |(_, r)| *r,
        ));
        let names = NameSet::build(by_rule(
            config
                .domains
                .iter()
                .filter(|e| live(e.rule, e.expires, &e.name))
                .map(|e| (e.name.clone(), e.wildcard, e.rule)),
            |(_, _, r)| *r,
        ));
        let senders = AddressSet::build(by_rule(
            config
                .senders
                .iter()
                .filter(|e| live(e.rule, e.expires, &e.address))
                .map(|e| (e.address.clone(), e.rule)),
            |(_, r)| *r,
        ));
        let recipients = AddressSet::build(by_rule(
            config
                .recipients
                .iter()
                .filter(|e| live(e.rule, e.expires, &e.address))
                .map(|e| (e.address.clone(), e.rule)),
            |(_, r)| *r,
        ));
        let recipient_domains = NameSet::build(by_rule(
            config
                .recipient_domains
                .iter()
                .filter(|e| live(e.rule, e.expires, &e.name))
                .map(|e| (e.name.clone(), e.wildcard, e.rule)),
            |(_, _, r)| *r,
        ));
        let mut dnsbl: Vec<DnsblZone> = config
            .dnsbl
            .iter()
            .filter(|z| live(z.rule, None, &z.zone))
            .filter_map(|z| {
                Some(DnsblZone {
                    zone: z.zone.clone(),
                    return_codes: z.return_codes.clone(),
                    message: z.message.clone(),
                    rule: rules.get(usize::try_from(z.rule).ok()?)?.clone(),
                    rule_index: z.rule,
                })
            })
            .collect();
        // Strictest rule first, so a check can stop at the first listing.
        dnsbl.sort_by(|a, b| (a.rule_index, &a.zone).cmp(&(b.rule_index, &b.zone)));
        tracing::debug!(
            ips = ips.len(),
            names = names.len(),
            senders = senders.len(),
            dnsbl = dnsbl.len(),
            next_expiry,
            "policy built"
        );
        Policy {
            rules,
            ips,
            names,
            senders,
            recipients,
            recipient_domains,
            dnsbl,
            next_expiry,
        }
    }

    /// Unix time at which the next entry expires: rebuild then.
    pub(crate) fn next_expiry(&self) -> Option<i64> {
        self.next_expiry
    }

    /// The client address against the listed networks (longest prefix).
    pub fn check_ip(&self, ip: IpAddr) -> Option<Hit> {
        let ip = normalize::unmap_addr(ip);
        let (net, rule) = self.ips.lookup(ip)?;
        Some(Hit {
            rule: self.rule(*rule)?,
            matched: Matched::Client { ip, net: *net },
        })
    }

    /// A HELO name, reverse-DNS name or sender domain against the listed
    /// names; `role` only shapes the default reply text.
    pub fn check_name(&self, role: NameRole, name: &str) -> Option<Hit> {
        let hit = self.names.lookup(name)?;
        Some(Hit {
            rule: self.rule(*hit.value)?,
            matched: Matched::Name {
                role,
                name: normalize_name(name)?.into_owned(),
                entry: hit.entry.to_string(),
                wildcard: hit.wildcard,
            },
        })
    }

    /// The MAIL FROM address against the listed senders (exact, lower
    /// case). Its domain is checked separately with
    /// [`check_name`](Self::check_name) and [`NameRole::SenderDomain`].
    pub(crate) fn check_sender(&self, address: &str) -> Option<Hit> {
        let (entry, rule) = self.senders.lookup(address)?;
        Some(Hit {
            rule: self.rule(*rule)?,
            matched: Matched::Sender {
                address: entry.to_string(),
            },
        })
    }

    /// Whether any recipient is suppressed: most relays list none, and
    /// their RCPT path then costs no lookup.
    pub(crate) fn suppresses_recipients(&self) -> bool {
        self.recipients.len() + self.recipient_domains.len() > 0
    }

    /// A recipient (normalised address, and its domain) against the
    /// suppression lists: the address itself, then its domain (`*@name`)
    /// and the domains above it (`*.name`).
    pub(crate) fn check_recipient(&self, address: &str, domain: &str) -> Option<Hit> {
        let (entry, rule) = match self.recipients.lookup(address) {
            Some((entry, rule)) => (entry.to_string(), *rule),
            None => {
                let hit = self.recipient_domains.lookup(domain)?;
                let entry = if hit.wildcard {
                    format!("*.{}", hit.entry)
                } else {
                    format!("*@{}", hit.entry)
                };
                (entry, *hit.value)
            }
        };
        Some(Hit {
            rule: self.rule(rule)?,
            matched: Matched::Recipient {
                address: address.to_string(),
                entry,
            },
        })
    }

    /// DNSBL zones to query, strictest rule first.
    pub(crate) fn dnsbl_zones(&self) -> &[DnsblZone] {
        &self.dnsbl
    }

    /// Entries in force (networks, names, senders, zones, recipients).
    pub fn entry_count(&self) -> usize {
        self.ips.len()
            + self.names.len()
            + self.senders.len()
            + self.dnsbl.len()
            + self.recipients.len()
            + self.recipient_domains.len()
    }

    fn rule(&self, index: u32) -> Option<Arc<BlockRule>> {
        self.rules.get(usize::try_from(index).ok()?).cloned()
    }
}

/// Items in rule order (stable, so otherwise as given).
fn by_rule<T>(items: impl Iterator<Item = T>, rule: impl Fn(&T) -> u32) -> Vec<T> {
    let mut items: Vec<T> = items.collect();
    items.sort_by_key(rule);
    items
}

#[cfg(test)]
mod tests;
