//! Where a recipient's mail goes (DESIGN.md §1 step 4). Pure: the decision
//! from the compiled config alone; DNS and connections come after.

use mailrelay_crds::config::DeliveryConfig;

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
    /// Every remote domain through the Relay's smarthost.
    Smarthost,
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
            Route::Smarthost => "smarthost",
            Route::Mx { .. } => "mx",
        }
    }
}

/// The route for a recipient whose domain (lower-case A-labels) is `domain`.
pub(crate) fn route(runtime: &Runtime, domain: &str) -> Route {
    let config = &runtime.config;
    // The runtime's index (domains and aliases), not a scan of the config.
    match runtime.domain(domain).map(|d| &d.delivery) {
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
        None if config.smarthost.is_some() => Route::Smarthost,
        None => Route::Mx {
            domain: domain.to_string(),
        },
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
    use mailrelay_crds::config::SmarthostConfig;

    fn config(smarthost: bool) -> Runtime {
        let (rt, _dir) = crate::testutil::runtime();
        let mut c = rt.config.clone();
        c.domains[0].aliases = vec!["alias.example".into()];
        if smarthost {
            c.smarthost = Some(SmarthostConfig {
                host: "relay.isp.example".into(),
                port: 587,
                tls: TlsMode::Required,
                username: None,
                password: None,
            });
        }
        Runtime::build(c, 0).0
    }

    #[test]
    fn hosted_domains_go_to_their_mailbox_server_and_the_rest_by_mx_or_smarthost() {
        let c = config(false);
        assert_eq!(
            route(&c, "hosted.example"),
            Route::Lmtp {
                host: "127.0.0.1".into(),
                port: 24
            }
        );
        assert_eq!(
            route(&c, "alias.example"),
            Route::Lmtp {
                host: "127.0.0.1".into(),
                port: 24
            }
        );
        assert_eq!(
            route(&c, "remote.example"),
            Route::Mx {
                domain: "remote.example".into()
            }
        );
        let c = config(true);
        assert_eq!(route(&c, "remote.example"), Route::Smarthost);
        assert_eq!(route(&c, "hosted.example").kind(), "lmtp");
        assert_eq!(domain_of("Bob@Remote.Example"), "remote.example");
    }
}
