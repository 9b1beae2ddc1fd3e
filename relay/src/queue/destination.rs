//! Where mail waits: one queue per destination. A destination is a hosted
//! target, the smarthost, or an MX *site* — the set of MX hosts a domain
//! points at, shared by every domain that points at the same set (as
//! KumoMTA's sites: `gmail.com` and a thousand Google-hosted domains are
//! one place to be careful with, not a thousand).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::router::Route;
use super::scheduler::DestView;
use crate::delivery::mx::DnsError;
use crate::ops::destinations::DestinationRow;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Dest {
    /// A route that names its server: LMTP/SMTP mailbox server, maildir,
    /// the Relay's or a MailDomain's smarthost.
    Route(Route),
    /// MX hosts (sorted, comma-separated), or `domain` itself for a
    /// domain without MX records or whose MX lookup failed.
    Site(Arc<str>),
    /// A recipient domain with a shaping entry of its own (matched by
    /// `domains`): its mail is not pooled with its MX hosts' other domains.
    Domain(Arc<str>),
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Route(Route::Lmtp { host, port }) => write!(f, "lmtp:{host}:{port}"),
            Dest::Route(Route::Smtp { host, port, .. }) => write!(f, "smtp:{host}:{port}"),
            Dest::Route(Route::Maildir { path }) => write!(f, "maildir:{path}"),
            Dest::Route(Route::Smarthost { tenant: None }) => f.write_str("smarthost"),
            Dest::Route(Route::Smarthost {
                tenant: Some(domain),
            }) => write!(f, "smarthost:{domain}"),
            Dest::Route(Route::Mx { domain }) => write!(f, "mx:{domain}"),
            Dest::Site(hosts) => write!(f, "mx:{hosts}"),
            Dest::Domain(domain) => write!(f, "domain:{domain}"),
        }
    }
}

/// The site of `domain` from its MX lookup: the exchanges, sorted. A
/// failed or empty lookup makes the domain its own site (the implicit MX
/// of RFC 5321 §5.1, or "we do not know yet").
pub(crate) fn site(domain: &str, lookup: Result<Vec<(u16, String)>, DnsError>) -> Arc<str> {
    let mut hosts: Vec<String> = match lookup {
        Ok(records) => records.into_iter().map(|(_, host)| host).collect(),
        Err(_) => Vec::new(),
    };
    if hosts.is_empty() {
        return Arc::from(domain);
    }
    hosts.sort();
    hosts.dedup();
    Arc::from(hosts.join(","))
}

impl From<DestView<Dest>> for DestinationRow {
    fn from(v: DestView<Dest>) -> Self {
        let state = match (v.suspended, &v.throttle) {
            (true, Some(_)) => "throttled",
            (true, None) => "suspended",
            (false, Some(_)) => "slowed",
            (false, None) => "active",
        };
        let shaping = match v.pace.rate {
            Some(rate) => format!("max {}, {rate}", v.pace.max_running),
            None => format!("max {}", v.pace.max_running),
        };
        Self {
            destination: v.dest.to_string(),
            state: state.into(),
            depth: v.depth,
            running: v.running,
            shaping,
            throttle: v.throttle,
            last_error: v.last_error,
            next_probe: v
                .next_probe
                .and_then(|t| jiff::Timestamp::from_second(t).ok())
                .map(|t| t.to_string()),
        }
    }
}

/// How long a domain's site is trusted before it is looked up again.
const SITE_TTL: Duration = Duration::from_secs(300);
/// A failed lookup is tried again sooner.
const FAILED_TTL: Duration = Duration::from_secs(30);

/// Domain → site, with the lookups under way and who waits for them.
pub(crate) struct Sites<Q> {
    known: HashMap<String, (Instant, Arc<str>)>,
    /// Domains being looked up, with what waits for each.
    asked: HashMap<String, Vec<Q>>,
}

impl<Q> Default for Sites<Q> {
    fn default() -> Self {
        Self {
            known: HashMap::new(),
            asked: HashMap::new(),
        }
    }
}

/// What the caller should do about a domain.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Known(Arc<str>),
    /// Waiting; start a lookup when `start` (none is under way yet).
    Wait {
        start: bool,
    },
}

impl<Q> Sites<Q> {
    /// The site of `domain`, or a promise to tell `waiter` later.
    pub(crate) fn get(&mut self, domain: &str, waiter: Q, now: Instant) -> Lookup {
        if let Some((until, site)) = self.known.get(domain)
            && now < *until
        {
            return Lookup::Known(Arc::clone(site));
        }
        match self.asked.get_mut(domain) {
            Some(waiting) => {
                waiting.push(waiter);
                Lookup::Wait { start: false }
            }
            None => {
                self.asked.insert(domain.to_string(), vec![waiter]);
                Lookup::Wait { start: true }
            }
        }
    }

    /// A lookup answered; returns what waited for it.
    pub(crate) fn answered(
        &mut self,
        domain: &str,
        site: Arc<str>,
        failed: bool,
        now: Instant,
    ) -> Vec<Q> {
        let ttl = if failed { FAILED_TTL } else { SITE_TTL };
        if self.known.len() > 100_000 {
            // Bounded: forget what has expired before it grows further.
            self.known.retain(|_, (until, _)| now < *until);
        }
        self.known.insert(domain.to_string(), (now + ttl, site));
        self.asked.remove(domain).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_with_the_same_mx_hosts_share_a_site() {
        let a = site(
            "a.test",
            Ok(vec![
                (20, "mx2.host.test".into()),
                (10, "mx1.host.test".into()),
            ]),
        );
        let b = site(
            "b.test",
            Ok(vec![
                (5, "mx1.host.test".into()),
                (5, "mx2.host.test".into()),
            ]),
        );
        assert_eq!(a, b);
        assert_eq!(&*a, "mx1.host.test,mx2.host.test");
        assert_eq!(&*site("c.test", Ok(vec![])), "c.test");
        assert_eq!(&*site("c.test", Err(DnsError::Timeout)), "c.test");
    }

    #[test]
    fn one_lookup_per_domain_and_every_waiter_is_told() {
        let mut sites: Sites<u32> = Sites::default();
        let t0 = Instant::now();
        assert_eq!(sites.get("a.test", 1, t0), Lookup::Wait { start: true });
        assert_eq!(sites.get("a.test", 2, t0), Lookup::Wait { start: false });
        assert_eq!(
            sites.answered("a.test", Arc::from("mx.test"), false, t0),
            [1, 2]
        );
        assert_eq!(
            sites.get("a.test", 3, t0),
            Lookup::Known(Arc::from("mx.test"))
        );
        assert_eq!(
            sites.get("a.test", 4, t0 + SITE_TTL),
            Lookup::Wait { start: true },
            "looked up again once stale"
        );
    }

    #[test]
    fn destinations_print_as_the_admin_api_shows_them() {
        assert_eq!(Dest::Site(Arc::from("a,b")).to_string(), "mx:a,b");
        let smarthost = |tenant: Option<&str>| Route::Smarthost {
            tenant: tenant.map(String::from),
        };
        assert_eq!(Dest::Route(smarthost(None)).to_string(), "smarthost");
        assert_eq!(
            Dest::Route(smarthost(Some("tenant.example"))).to_string(),
            "smarthost:tenant.example"
        );
        let lmtp = Route::Lmtp {
            host: "dovecot".into(),
            port: 24,
        };
        assert_eq!(Dest::Route(lmtp).to_string(), "lmtp:dovecot:24");
    }

    #[test]
    fn a_suspended_site_shows_its_error_and_next_probe() {
        let row = DestinationRow::from(DestView {
            dest: Dest::Site(Arc::from("mx1.dead.test,mx2.dead.test")),
            suspended: true,
            pace: super::super::scheduler::Pace {
                max_running: 20,
                rate: None,
            },
            throttle: None,
            depth: 1200,
            running: 0,
            last_error: Some("connection refused by 127.0.0.9:25".into()),
            next_probe: Some(1_800_000_000),
        });
        assert_eq!(row.state, "suspended");
        assert_eq!(row.next_probe.as_deref(), Some("2027-01-15T08:00:00Z"));
        let table = crate::ops::destinations::format(&[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].starts_with("DESTINATION"), "{table}");
        assert!(
            lines[1]
                == "mx:mx1.dead.test,mx2.dead.test  suspended     1200        0  max 20            2027-01-15T08:00:00Z  connection refused by 127.0.0.9:25",
            "{table}"
        );
    }
}
