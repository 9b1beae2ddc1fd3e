//! What a policy check found, and the SMTP reply it calls for.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use mailrelay_crds::blocklist::BlockAction;
use mailrelay_crds::config::BlockRule;

/// Longest reply text we send. RFC 5321 §4.5.3.1.5 caps a reply line at
/// 512 octets including the code and CRLF; this leaves ample room.
const MAX_TEXT: usize = 400;

/// A blocklist entry matched: the rule it belongs to and what matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub rule: Arc<BlockRule>,
    pub matched: Matched,
}

/// Which name a [`Policy::check_name`](super::Policy::check_name) call is
/// about; it only changes the default reply text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NameRole {
    /// The name the client gave in HELO/EHLO.
    Helo,
    /// The client's reverse-DNS (PTR) name.
    ReverseDns,
    /// The domain of the MAIL FROM address.
    SenderDomain,
}

/// What matched, in normalised form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matched {
    /// The client address (unmapped to IPv4 where it was IPv4-mapped) and
    /// the listed network containing it.
    Client { ip: IpAddr, net: IpNet },
    /// A name, and the entry that matched it (for a wildcard, the domain
    /// under which it matched).
    Name {
        role: NameRole,
        name: String,
        entry: String,
        wildcard: bool,
    },
    /// A sender address.
    Sender { address: String },
    /// A recipient on a suppression list, and the entry that matched
    /// (the address, `*@domain` or `*.domain`).
    Recipient { address: String, entry: String },
    /// The client address is listed in a DNSBL zone with this answer; the
    /// zone's own reply text, if it has one, takes precedence.
    Dnsbl {
        ip: IpAddr,
        zone: String,
        answer: IpAddr,
        message: Option<String>,
    },
}

/// The parts of an SMTP reply refusing a client or sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockReply {
    pub code: u16,
    /// Enhanced status code (RFC 3463).
    pub enhanced: &'static str,
    /// One line of printable ASCII.
    pub text: String,
}

impl fmt::Display for BlockReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced, self.text)
    }
}

impl Hit {
    /// The reply: 550 5.7.1 for Reject, 450 4.7.1 for TempFail (RFC 3463
    /// §3.8: X.7.1 "delivery not authorized, message refused"), with the
    /// zone's or rule's text, else a default naming what matched.
    pub(crate) fn reply(&self) -> BlockReply {
        let (code, enhanced) = match self.rule.action {
            BlockAction::Reject => (550, "5.7.1"),
            BlockAction::TempFail => (450, "4.7.1"),
        };
        let custom = match &self.matched {
            Matched::Dnsbl {
                message: Some(m), ..
            } => Some(m.as_str()),
            _ => self.rule.message.as_deref(),
        };
        let text = custom
            .map(one_line)
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| one_line(&self.default_text()));
        BlockReply {
            code,
            enhanced,
            text,
        }
    }

    fn default_text(&self) -> String {
        match &self.matched {
            Matched::Client { ip, .. } => format!("Client address {ip} is blocked"),
            Matched::Name { role, name, .. } => match role {
                NameRole::Helo => format!("HELO name {name} is blocked"),
                NameRole::ReverseDns => format!("Client host name {name} is blocked"),
                NameRole::SenderDomain => format!("Sender domain {name} is blocked"),
            },
            Matched::Sender { address } => format!("Sender {address} is blocked"),
            Matched::Recipient { address, .. } => {
                format!("Recipient {address} is on a suppression list")
            }
            Matched::Dnsbl { ip, zone, .. } => {
                format!("Client address {ip} is listed by {zone}")
            }
        }
    }
}

/// Text safe inside one reply line: printable ASCII only (anything else
/// becomes `?`, so a CR or LF can never end the line early and smuggle a
/// second reply), trimmed, and bounded in length.
fn one_line(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(MAX_TEXT)
        .collect();
    let end = out.trim_end().len();
    out.truncate(end);
    out.trim_start().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailrelay_crds::common::ObjectRef;

    fn rule(action: BlockAction, message: Option<&str>) -> Arc<BlockRule> {
        Arc::new(BlockRule {
            action,
            source: ObjectRef::new("Blocklist", "mail", "spam"),
            message: message.map(str::to_string),
        })
    }

    fn name(role: NameRole, name: &str) -> Matched {
        Matched::Name {
            role,
            name: name.into(),
            entry: name.into(),
            wildcard: false,
        }
    }

    #[test]
    fn replies_name_what_matched() {
        let client = Matched::Client {
            ip: "192.0.2.1".parse().expect("ip"),
            net: "192.0.2.0/24".parse().expect("net"),
        };
        let dnsbl = |message: Option<&str>| Matched::Dnsbl {
            ip: "192.0.2.1".parse().expect("ip"),
            zone: "bl.example".into(),
            answer: "127.0.0.2".parse().expect("ip"),
            message: message.map(str::to_string),
        };
        let sender = Matched::Sender {
            address: "x@y.example".into(),
        };
        for (action, message, matched, want) in [
            (
                BlockAction::Reject,
                None,
                client.clone(),
                "550 5.7.1 Client address 192.0.2.1 is blocked",
            ),
            (
                BlockAction::TempFail,
                None,
                client,
                "450 4.7.1 Client address 192.0.2.1 is blocked",
            ),
            (
                BlockAction::Reject,
                None,
                name(NameRole::Helo, "x.example"),
                "550 5.7.1 HELO name x.example is blocked",
            ),
            (
                BlockAction::Reject,
                None,
                name(NameRole::ReverseDns, "x.example"),
                "550 5.7.1 Client host name x.example is blocked",
            ),
            (
                BlockAction::Reject,
                None,
                name(NameRole::SenderDomain, "y.example"),
                "550 5.7.1 Sender domain y.example is blocked",
            ),
            (
                BlockAction::Reject,
                None,
                sender.clone(),
                "550 5.7.1 Sender x@y.example is blocked",
            ),
            (
                BlockAction::Reject,
                Some("Go away"),
                sender,
                "550 5.7.1 Go away",
            ),
            (
                BlockAction::Reject,
                None,
                dnsbl(None),
                "550 5.7.1 Client address 192.0.2.1 is listed by bl.example",
            ),
            (
                BlockAction::Reject,
                Some("rule text"),
                dnsbl(Some("Listed, see https://bl.example")),
                "550 5.7.1 Listed, see https://bl.example",
            ),
            (
                BlockAction::Reject,
                Some("rule text"),
                dnsbl(None),
                "550 5.7.1 rule text",
            ),
        ] {
            let hit = Hit {
                rule: rule(action, message),
                matched,
            };
            assert_eq!(hit.reply().to_string(), want);
        }
    }

    #[test]
    fn reply_text_is_always_one_printable_line() {
        let hit = Hit {
            rule: rule(BlockAction::Reject, Some(" no\r\n250 OK\tü ")),
            matched: Matched::Sender {
                address: "ü@x.example".into(),
            },
        };
        assert_eq!(hit.reply().text, "no??250 OK??");
        let hit = Hit {
            rule: rule(BlockAction::Reject, None),
            matched: Matched::Sender {
                address: "ü\r\n@x.example".into(),
            },
        };
        assert_eq!(hit.reply().text, "Sender ???@x.example is blocked");
        let long = "a".repeat(2000);
        let hit = Hit {
            rule: rule(BlockAction::Reject, Some(&long)),
            matched: Matched::Sender {
                address: "a@b".into(),
            },
        };
        assert_eq!(hit.reply().text.len(), MAX_TEXT);
        // An empty or blank message falls back to the default.
        let hit = Hit {
            rule: rule(BlockAction::Reject, Some("  ")),
            matched: Matched::Sender {
                address: "a@b".into(),
            },
        };
        assert_eq!(hit.reply().text, "Sender a@b is blocked");
    }
}
