//! Where a recipient's mail goes (DESIGN.md §1 step 4). Pure: the decision
//! from the compiled config alone; DNS and connections come after.

use mailrelay_crds::config::{DeliveryConfig, SmarthostConfig};

use crate::config::runtime::Runtime;
use mailrelay_crds::maildomain::TlsMode;

/// One destination: recipients with the same route go out together.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Route {
    /// A hosted domain's LMTP server.
    Lmtp { host: String, port: u16 },
    /// A hosted domain's SMTP mailbox server.
    Smtp {
        host: String,
        port: u16,
        tls: TlsMode,
    },
    /// A hosted domain's maildir root.
    Maildir { path: String },
    /// A remote domain through a smarthost: a MailDomain's (`tenant`, its
    /// canonical name) for mail from its addresses, else the Relay's. Each
    /// tenant's is a destination of its own: its connections authenticate
    /// as that tenant.
    Smarthost { tenant: Option<String> },
    /// A remote domain by its MX records.
    Mx { domain: String },
}

impl Route {
    /// A bounded label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Route::Lmtp { .. } => "lmtp",
            Route::Smtp { .. } => "smtp",
            Route::Maildir { .. } => "maildir",
            Route::Smarthost { .. } => "smarthost",
            Route::Mx { .. } => "mx",
        }
    }
}

/// The route for a recipient whose domain is `recipient`, of mail whose
/// envelope sender's domain is `sender` (both lower-case A-labels; `""`
/// for the null sender). Hosted domains go to their mailbox servers; the
/// rest through the sender's MailDomain's smarthost, else the Relay's,
/// else by MX.
pub(crate) fn route(runtime: &Runtime, sender: &str, recipient: &str) -> Route {
    // The runtime's index (domains and aliases), not a scan of the config.
    match runtime.domain(recipient).map(|d| &d.delivery) {
        Some(DeliveryConfig::Lmtp { host, port }) => Route::Lmtp {
            host: host.clone(),
            port: *port,
        },
        Some(DeliveryConfig::Smtp { host, port, tls }) => Route::Smtp {
            host: host.clone(),
            port: *port,
            tls: *tls,
        },
        Some(DeliveryConfig::Maildir { path }) => Route::Maildir { path: path.clone() },
        None => match runtime.domain(sender).filter(|d| d.smarthost.is_some()) {
            Some(tenant) => Route::Smarthost {
                tenant: Some(tenant.name.clone()),
            },
            None if runtime.config.smarthost.is_some() => Route::Smarthost { tenant: None },
            None => Route::Mx {
                domain: recipient.to_string(),
            },
        },
    }
}

/// The smarthost a [`Route::Smarthost`] names, in the config now in force;
/// `None` when a reload took it away since the route was chosen.
pub(crate) fn smarthost_of<'a>(
    runtime: &'a Runtime,
    tenant: Option<&str>,
) -> Option<&'a SmarthostConfig> {
    match tenant {
        Some(name) => runtime.domain(name)?.smarthost.as_ref(),
        None => runtime.config.smarthost.as_ref(),
    }
}

/// The domain of an address (`local@domain`), lower-cased.
pub(crate) fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smarthost(host: &str) -> SmarthostConfig {
        SmarthostConfig {
            host: host.into(),
            port: 587,
            tls: TlsMode::Required,
            username: None,
            password: None,
        }
    }

    /// `hosted.example` (alias `alias.example`) and `tenant.example` (alias
    /// `tenant-alias.example`, its own smarthost); the Relay's smarthost
    /// when `relay_smarthost`.
    fn config(relay_smarthost: bool) -> Runtime {
        let (rt, _dir) = crate::testutil::runtime();
        let mut c = rt.config.clone();
        c.domains[0].aliases = vec!["alias.example".into()];
        let mut tenant = c.domains[0].clone();
        tenant.name = "tenant.example".into();
        tenant.aliases = vec!["tenant-alias.example".into()];
        tenant.smarthost = Some(smarthost("smtp.tenant.example"));
        c.domains.push(tenant);
        if relay_smarthost {
            c.smarthost = Some(smarthost("relay.isp.example"));
        }
        Runtime::build(c, 0).0
    }

    fn tenant() -> Route {
        Route::Smarthost {
            tenant: Some("tenant.example".into()),
        }
    }

    #[test]
    fn hosted_domains_go_to_their_mailbox_server_and_the_rest_by_mx_or_smarthost() {
        let c = config(false);
        let lmtp = Route::Lmtp {
            host: "127.0.0.1".into(),
            port: 24,
        };
        assert_eq!(route(&c, "remote.example", "hosted.example"), lmtp);
        assert_eq!(route(&c, "remote.example", "alias.example"), lmtp);
        assert_eq!(
            route(&c, "remote.example", "remote.example"),
            Route::Mx {
                domain: "remote.example".into()
            }
        );
        let c = config(true);
        assert_eq!(
            route(&c, "remote.example", "remote.example"),
            Route::Smarthost { tenant: None }
        );
        assert_eq!(
            route(&c, "", "remote.example"),
            Route::Smarthost { tenant: None }
        );
        assert_eq!(route(&c, "remote.example", "hosted.example").kind(), "lmtp");
        assert_eq!(domain_of("Bob@Remote.Example"), "remote.example");
    }

    #[test]
    fn mail_from_a_domain_with_a_smarthost_leaves_through_it_unless_it_is_for_a_hosted_domain() {
        for relay_smarthost in [false, true] {
            let c = config(relay_smarthost);
            for sender in ["tenant.example", "tenant-alias.example"] {
                assert_eq!(route(&c, sender, "remote.example"), tenant(), "{sender}");
                assert_eq!(route(&c, sender, "other.example"), tenant(), "{sender}");
                assert_eq!(route(&c, sender, "hosted.example").kind(), "lmtp");
                assert_eq!(route(&c, sender, "tenant.example").kind(), "lmtp");
            }
            // A hosted domain without a smarthost of its own, a subdomain,
            // the null sender: the Relay's way.
            for sender in ["hosted.example", "sub.tenant.example", ""] {
                let want = match relay_smarthost {
                    true => Route::Smarthost { tenant: None },
                    false => Route::Mx {
                        domain: "remote.example".into(),
                    },
                };
                assert_eq!(route(&c, sender, "remote.example"), want, "{sender:?}");
            }
        }
    }

    #[test]
    fn a_smarthost_route_finds_its_smarthost_in_the_config_in_force() {
        let c = config(true);
        let host = |tenant: Option<&str>| smarthost_of(&c, tenant).map(|s| s.host.clone());
        assert_eq!(host(None).as_deref(), Some("relay.isp.example"));
        assert_eq!(
            host(Some("tenant.example")).as_deref(),
            Some("smtp.tenant.example")
        );
        assert_eq!(
            host(Some("hosted.example")),
            None,
            "no smarthost of its own"
        );
        assert_eq!(host(Some("gone.example")), None, "no longer hosted");
        assert_eq!(smarthost_of(&config(false), None), None);
        assert_eq!(tenant().kind(), "smarthost", "one bounded metric label");
    }
}
