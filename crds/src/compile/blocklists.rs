//! Blocklists merged into one lookup-ready policy.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{Problem, Report, normalize};
use crate::blocklist::{Blocklist, DnsblZone, Entry};
use crate::common::ObjectRef;
use crate::config::{AddressBlock, BlockRule, DnsblConfig, DomainBlock, IpBlock, PolicyConfig};

pub(super) fn compile_blocklists(
    selected: &[&Blocklist],
    problems: &mut Vec<Problem>,
) -> PolicyConfig {
    let lists = rules(selected, problems);
    let mut entries = Entries::default();
    for (index, (rule, bl)) in lists.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let mut r = Report {
            object: &rule.source,
            problems,
        };
        entries.add(bl, index, &mut r);
    }
    entries.into_policy(lists.into_iter().map(|(rule, _)| rule).collect())
}

/// The rules in their final order, so entries can point at them:
/// rejecting lists before tempfailing ones, then by identity.
fn rules<'a>(
    selected: &[&'a Blocklist],
    problems: &mut Vec<Problem>,
) -> Vec<(BlockRule, &'a Blocklist)> {
    let mut lists: Vec<(BlockRule, &Blocklist)> = selected
        .iter()
        .map(|bl| {
            let source = ObjectRef::of(*bl);
            let mut r = Report {
                object: &source,
                problems,
            };
            let message = bl
                .spec
                .message
                .as_deref()
                .and_then(|m| r.check("spec.message", normalize::reply_text(m)))
                .filter(|m| !m.is_empty());
            (
                BlockRule {
                    action: bl.spec.action,
                    source: source.clone(),
                    message,
                },
                *bl,
            )
        })
        .collect();
    lists.sort_by(|a, b| a.0.cmp(&b.0));
    lists
}

/// Every list's valid entries, keyed by (value, rule) so an entry listed
/// twice under one rule is kept once.
#[derive(Default)]
struct Entries {
    ips: BTreeMap<(IpNet, u32), Option<i64>>,
    domains: BTreeMap<(String, bool, u32), Option<i64>>,
    senders: BTreeMap<(String, u32), Option<i64>>,
    dnsbl: BTreeMap<(String, u32), DnsblConfig>,
    recipients: BTreeMap<(String, u32), Option<i64>>,
    recipient_domains: BTreeMap<(String, bool, u32), Option<i64>>,
}

impl Entries {
    /// The entries of `bl`, under rule `index`; invalid ones go to `r`.
    fn add(&mut self, bl: &Blocklist, index: u32, r: &mut Report<'_>) {
        for (i, e) in bl.spec.ips.iter().enumerate() {
            if let Some(net) = r.check(format!("spec.ips[{i}].value"), normalize::network(&e.value))
            {
                keep_longest(&mut self.ips, (net, index), expiry(e));
            }
        }
        for (i, e) in bl.spec.domains.iter().enumerate() {
            let (name, wildcard) = match e.value.strip_prefix("*.") {
                Some(rest) => (rest, true),
                None => (e.value.as_str(), false),
            };
            if let Some(name) = r.check(
                format!("spec.domains[{i}].value"),
                normalize::domain_name(name),
            ) {
                keep_longest(&mut self.domains, (name, wildcard, index), expiry(e));
            }
        }
        for (i, e) in bl.spec.senders.iter().enumerate() {
            if let Some(address) = r.check(
                format!("spec.senders[{i}].value"),
                normalize::address(&e.value),
            ) {
                keep_longest(&mut self.senders, (address, index), expiry(e));
            }
        }
        for (i, e) in bl.spec.recipients.iter().enumerate() {
            let field = format!("spec.recipients[{i}].value");
            let (domain, wildcard) = match (e.value.strip_prefix("*@"), e.value.strip_prefix("*."))
            {
                (Some(domain), _) => (Some(domain), false),
                (None, Some(domain)) => (Some(domain), true),
                (None, None) => (None, false),
            };
            match domain {
                Some(domain) => {
                    if let Some(name) = r.check(field, normalize::domain_name(domain)) {
                        let key = (name, wildcard, index);
                        keep_longest(&mut self.recipient_domains, key, expiry(e));
                    }
                }
                None => {
                    if let Some(address) = r.check(field, normalize::address(&e.value)) {
                        keep_longest(&mut self.recipients, (address, index), expiry(e));
                    }
                }
            }
        }
        for (i, z) in bl.spec.dnsbl.iter().enumerate() {
            if let Some(zone) = dnsbl_zone(z, &format!("spec.dnsbl[{i}]"), index, r) {
                self.dnsbl.entry((zone.zone.clone(), index)).or_insert(zone);
            }
        }
    }

    fn into_policy(self, rules: Vec<BlockRule>) -> PolicyConfig {
        PolicyConfig {
            rules,
            ips: self
                .ips
                .into_iter()
                .map(|((net, rule), expires)| IpBlock { net, rule, expires })
                .collect(),
            domains: domain_blocks(self.domains),
            senders: address_blocks(self.senders),
            dnsbl: self.dnsbl.into_values().collect(),
            recipients: address_blocks(self.recipients),
            recipient_domains: domain_blocks(self.recipient_domains),
        }
    }
}

fn domain_blocks(entries: BTreeMap<(String, bool, u32), Option<i64>>) -> Vec<DomainBlock> {
    entries
        .into_iter()
        .map(|((name, wildcard, rule), expires)| DomainBlock {
            name,
            wildcard,
            rule,
            expires,
        })
        .collect()
}

fn address_blocks(entries: BTreeMap<(String, u32), Option<i64>>) -> Vec<AddressBlock> {
    entries
        .into_iter()
        .map(|((address, rule), expires)| AddressBlock {
            address,
            rule,
            expires,
        })
        .collect()
}

/// One DNSBL zone of a list, `None` when it is left out (reported to `r`).
fn dnsbl_zone(z: &DnsblZone, field: &str, rule: u32, r: &mut Report<'_>) -> Option<DnsblConfig> {
    let zone = r.check(format!("{field}.zone"), normalize::domain_name(&z.zone))?;
    let mut codes: Vec<IpNet> = z
        .return_codes
        .iter()
        .enumerate()
        .filter_map(|(j, c)| r.check(format!("{field}.returnCodes[{j}]"), normalize::network(c)))
        .collect();
    if z.return_codes.is_empty() {
        codes = normalize::default_dnsbl_codes();
    } else if codes.is_empty() {
        // Every code was invalid: querying would block nobody or
        // everybody, so the zone is left out (and reported above).
        return None;
    }
    codes.sort();
    codes.dedup();
    let message = z
        .message
        .as_deref()
        .and_then(|m| r.check(format!("{field}.message"), normalize::reply_text(m)))
        .filter(|m| !m.is_empty());
    Some(DnsblConfig {
        zone,
        return_codes: codes,
        message,
        rule,
    })
}

fn expiry(e: &Entry) -> Option<i64> {
    e.expires.as_ref().map(|t| t.0.as_second())
}

/// The same entry listed twice under one rule is kept once, for as long as
/// the longer-lived listing says (no expiry outlives any).
fn keep_longest<K: Ord>(map: &mut BTreeMap<K, Option<i64>>, key: K, expires: Option<i64>) {
    map.entry(key)
        .and_modify(|cur| {
            *cur = match (*cur, expires) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            }
        })
        .or_insert(expires);
}
