//! MailDomains into hosted domains, with the "older one wins" rule.

use std::collections::{BTreeMap, BTreeSet};

use super::{Problem, Report, age_order, normalize, smarthost};
use crate::common::ObjectRef;
use crate::config::{
    DeliveryConfig, DkimConfig, DomainConfig, InboundConfig, SecretFile, SenderConfig,
    SubmissionConfig,
};
use crate::maildomain::{Delivery, InboundAuthPolicy, MailDomain, MailDomainSpec, Submission};

pub(super) fn compile_domains(
    relay: &ObjectRef,
    selected: &[&MailDomain],
    problems: &mut Vec<Problem>,
) -> Vec<DomainConfig> {
    let mut ordered = selected.to_vec();
    ordered.sort_by(|a, b| age_order(*a, *b));

    // Which MailDomain holds each name, primary or alias.
    let mut owners: BTreeMap<String, ObjectRef> = BTreeMap::new();
    let mut out = Vec::new();
    for md in ordered {
        let object = ObjectRef::of(md);
        let mut r = Report {
            object: &object,
            problems,
        };
        let Some(mut domain) = compile_domain(&object, &md.spec, &mut r) else {
            continue;
        };
        if let Some(owner) = owners.get(&domain.name) {
            r.add(
                "spec.domain",
                format!(
                    "{} is already served by {owner}, which is older; Relay {} does not use this MailDomain",
                    domain.name, relay.name
                ),
            );
            continue;
        }
        domain.aliases.retain(|alias| match owners.get(alias) {
            Some(owner) => {
                let i = md.spec.aliases.iter().position(|a| normalize::domain_name(a).as_deref() == Ok(alias));
                r.add(
                    format!("spec.aliases[{}]", i.unwrap_or_default()),
                    format!("{alias} is already served by {owner}, which is older; the alias is not used"),
                );
                false
            }
            None => true,
        });
        owners.insert(domain.name.clone(), object.clone());
        for alias in &domain.aliases {
            owners.insert(alias.clone(), object.clone());
        }
        out.push(domain);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One MailDomain on its own. `None` when it cannot be served at all; a
/// bad alias, local part or sender grant only leaves that item out.
fn compile_domain(
    object: &ObjectRef,
    spec: &MailDomainSpec,
    r: &mut Report,
) -> Option<DomainConfig> {
    let name = r.check("spec.domain", normalize::domain_name(&spec.domain));
    let aliases: BTreeSet<String> = spec
        .aliases
        .iter()
        .enumerate()
        .filter_map(|(i, a)| r.check(format!("spec.aliases[{i}]"), normalize::domain_name(a)))
        .filter(|a| Some(a) != name.as_ref())
        .collect();
    let inbound = inbound(spec, r);
    let delivery = delivery(&spec.delivery, r);
    let submission = spec.submission.as_ref().and_then(|s| submission(s, r));
    let dkim = spec.dkim.as_ref().and_then(|d| {
        let selector = r.check(
            "spec.dkim.selector",
            normalize::domain_name(&d.selector).and_then(|s| {
                if s.contains('.') {
                    Err(format!("{:?} must be a single DNS label", d.selector))
                } else {
                    Ok(s)
                }
            }),
        );
        let key = secret(
            r,
            "spec.dkim.privateKey",
            &d.private_key.name,
            &d.private_key.key,
        );
        Some(DkimConfig {
            selector: selector?,
            algorithm: d.algorithm,
            private_key: key?,
        })
    });
    // A smarthost that cannot be used leaves the domain out, as a broken
    // delivery does: its mail must not leave by another way than asked.
    let smarthost = match &spec.outbound.smarthost {
        None => Some(None),
        Some(s) => smarthost::compile(r, "spec.outbound.smarthost", s).map(Some),
    };
    Some(DomainConfig {
        name: name?,
        aliases: aliases.into_iter().collect(),
        source: object.clone(),
        inbound,
        delivery: delivery?,
        submission,
        dkim,
        smarthost: smarthost?,
        inbound_auth: spec.inbound_auth.policy,
        arc_seal: arc_seal(spec, r),
    })
}

/// `spec.arc.seal`, when what it needs is there: a key to seal with, and
/// checks whose results the ARC set records.
fn arc_seal(spec: &MailDomainSpec, r: &mut Report) -> bool {
    if !spec.arc.seal {
        return false;
    }
    if spec.dkim.is_none() {
        r.add(
            "spec.arc.seal",
            "sealing needs spec.dkim: ARC sets are signed with the domain's DKIM key; mail is not sealed",
        );
        return false;
    }
    if spec.inbound_auth.policy == InboundAuthPolicy::Accept {
        r.add(
            "spec.arc.seal",
            "sealing needs inbound checks, and spec.inboundAuth.policy Accept makes none; mail is not sealed",
        );
        return false;
    }
    true
}

fn inbound(spec: &MailDomainSpec, r: &mut Report) -> InboundConfig {
    let i = &spec.inbound;
    let local_parts: BTreeSet<String> = i
        .local_parts
        .iter()
        .enumerate()
        .filter_map(|(n, lp)| {
            r.check(
                format!("spec.inbound.localParts[{n}]"),
                normalize::local_part(lp),
            )
        })
        .collect();
    if i.enabled && !i.catch_all && i.local_parts.is_empty() {
        r.add(
            "spec.inbound.localParts",
            "inbound mail is enabled but no recipient is accepted: list localParts or set catchAll",
        );
    }
    let mut chars = i.recipient_delimiter.chars();
    let recipient_delimiter = match (chars.next(), chars.next()) {
        (None, _) => None,
        (Some(c), None) if c.is_ascii_punctuation() && c != '@' && c != '"' => Some(c),
        _ => {
            r.add(
                "spec.inbound.recipientDelimiter",
                format!(
                    "{:?} must be one punctuation character such as '+' or '-', or empty",
                    i.recipient_delimiter
                ),
            );
            None
        }
    };
    InboundConfig {
        enabled: i.enabled,
        catch_all: i.catch_all,
        local_parts: local_parts.into_iter().collect(),
        recipient_delimiter,
    }
}

fn port(r: &mut Report, field: &str, port: Option<i32>, default: Option<u16>) -> Option<u16> {
    match port {
        None => {
            if default.is_none() {
                r.add(field, "is required");
            }
            default
        }
        Some(p) => r.check(
            field,
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{p} is not a port from 1 to 65535")),
        ),
    }
}

fn delivery(d: &Delivery, r: &mut Report) -> Option<DeliveryConfig> {
    match (&d.lmtp, &d.smtp, &d.maildir) {
        (Some(l), None, None) => {
            let host = r.check("spec.delivery.lmtp.host", normalize::host(&l.host));
            if l.port.is_none() {
                r.add(
                    "spec.delivery.lmtp.port",
                    "LMTP has no well-known port: set the port of the LMTP service, for example 24",
                );
                return None;
            }
            let port = port(r, "spec.delivery.lmtp.port", l.port, None);
            Some(DeliveryConfig::Lmtp {
                host: host?,
                port: port?,
            })
        }
        (None, Some(s), None) => {
            let host = r.check("spec.delivery.smtp.host", normalize::host(&s.host));
            let port = port(r, "spec.delivery.smtp.port", Some(s.port), Some(25));
            Some(DeliveryConfig::Smtp {
                host: host?,
                port: port?,
                tls: s.tls,
            })
        }
        (None, None, Some(m)) => {
            let path = std::path::Path::new(&m.path);
            let ok = path.is_absolute()
                && !path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                && !m.path.chars().any(char::is_control);
            if !ok {
                r.add(
                    "spec.delivery.maildir.path",
                    format!("{:?} must be an absolute path without '..'", m.path),
                );
                return None;
            }
            Some(DeliveryConfig::Maildir {
                path: m.path.clone(),
            })
        }
        _ => {
            r.add("spec.delivery", "set exactly one of lmtp, smtp and maildir");
            None
        }
    }
}

fn secret(r: &mut Report, field: &str, name: &str, key: &str) -> Option<SecretFile> {
    let n = r.check(format!("{field}.name"), normalize::object_name(name));
    let k = r.check(format!("{field}.key"), normalize::secret_key(key));
    n.and(k).map(|()| SecretFile::new(name, key))
}

fn submission(s: &Submission, r: &mut Report) -> Option<SubmissionConfig> {
    // Without a usable reference nobody can authenticate for the domain:
    // the rest of it is still served.
    let accounts = secret(
        r,
        "spec.submission.accounts",
        &s.accounts.name,
        &s.accounts.key,
    );
    let suspended: BTreeSet<String> = s
        .suspended
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            r.check(
                format!("spec.submission.suspended[{i}]"),
                normalize::address(a),
            )
        })
        .collect();
    let mut grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, g) in s.senders.iter().enumerate() {
        let Some(account) = r.check(
            format!("spec.submission.senders[{i}].account"),
            normalize::address(&g.account),
        ) else {
            continue;
        };
        let addresses = g.addresses.iter().enumerate().filter_map(|(j, a)| {
            r.check(
                format!("spec.submission.senders[{i}].addresses[{j}]"),
                normalize::address_pattern(a),
            )
        });
        grants.entry(account).or_default().extend(addresses);
    }
    Some(SubmissionConfig {
        accounts: accounts?,
        suspended: suspended.into_iter().collect(),
        senders: grants
            .into_iter()
            .map(|(account, addresses)| SenderConfig {
                account,
                addresses: addresses.into_iter().collect(),
            })
            .collect(),
    })
}
