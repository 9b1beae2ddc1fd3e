//! A short-lived cache in front of the routing lookups.
//!
//! hickory caches answers for their TTL already; this covers the answers it
//! may not keep: records with a TTL of 0 (dnsmasq's default for its own
//! records, and what some load balancers hand out) would otherwise cost an
//! MX and two address queries for every new outbound connection. Answers
//! are kept for [`KEEP`] at most — never longer than a few seconds, so a
//! changed MX takes effect almost at once even when its TTL said it could
//! be kept for a day, and a TTL-0 record is reused only across a burst of
//! connections opened together. Failures are not kept: the next attempt
//! asks again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::mx::{DnsError, MxDns};

/// How long an answer is reused.
pub(crate) const KEEP: Duration = Duration::from_secs(5);
/// Entries kept at most per kind; past it the cache starts over.
const MAX_ENTRIES: usize = 10_000;

type Entries<T> = Mutex<HashMap<String, (Instant, T)>>;

/// [`MxDns`] answers of `D`, reused for [`KEEP`].
pub struct CachedDns<D> {
    inner: D,
    mx: Entries<Vec<(u16, String)>>,
    addrs: Entries<Vec<IpAddr>>,
}

impl<D> CachedDns<D> {
    pub(crate) fn new(inner: D) -> Self {
        CachedDns {
            inner,
            mx: Mutex::new(HashMap::new()),
            addrs: Mutex::new(HashMap::new()),
        }
    }

    #[cfg(test)]
    pub(crate) fn inner(&self) -> &D {
        &self.inner
    }
}

fn get<T: Clone>(entries: &Entries<T>, key: &str) -> Option<T> {
    let map = entries.lock().unwrap_or_else(|p| p.into_inner());
    map.get(key)
        .filter(|(at, _)| at.elapsed() < KEEP)
        .map(|(_, v)| v.clone())
}

fn put<T>(entries: &Entries<T>, key: &str, value: T) {
    let mut map = entries.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, (at, _)| at.elapsed() < KEEP);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
    map.insert(key.to_string(), (Instant::now(), value));
}

impl<D: MxDns> MxDns for CachedDns<D> {
    async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        if let Some(hit) = get(&self.mx, domain) {
            return Ok(hit);
        }
        let answer = self.inner.mx(domain).await?;
        put(&self.mx, domain, answer.clone());
        Ok(answer)
    }

    async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(hit) = get(&self.addrs, host) {
            return Ok(hit);
        }
        let answer = self.inner.addrs(host).await?;
        put(&self.addrs, host, answer.clone());
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Counting {
        mx: AtomicUsize,
        addrs: AtomicUsize,
    }

    impl MxDns for Counting {
        async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
            self.mx.fetch_add(1, Ordering::Relaxed);
            match domain {
                "gone.test" => Err(DnsError::NxDomain),
                _ => Ok(vec![(10, format!("mx.{domain}"))]),
            }
        }

        async fn addrs(&self, _host: &str) -> Result<Vec<IpAddr>, DnsError> {
            self.addrs.fetch_add(1, Ordering::Relaxed);
            Ok(vec![IpAddr::from([127, 0, 0, 2])])
        }
    }

    #[tokio::test]
    async fn answers_are_reused_and_failures_asked_again() {
        let dns = CachedDns::new(Counting::default());
        for _ in 0..3 {
            assert_eq!(
                dns.mx("a.test").await,
                Ok(vec![(10, "mx.a.test".to_string())])
            );
            assert_eq!(
                dns.addrs("mx.a.test").await,
                Ok(vec![IpAddr::from([127, 0, 0, 2])])
            );
            assert_eq!(dns.mx("gone.test").await, Err(DnsError::NxDomain));
        }
        // One query for each cached answer, every time for the failure.
        assert_eq!(dns.inner().mx.load(Ordering::Relaxed), 1 + 3);
        assert_eq!(dns.inner().addrs.load(Ordering::Relaxed), 1);
        dns.mx("b.test").await.ok();
        assert_eq!(dns.inner().mx.load(Ordering::Relaxed), 5, "another name");
    }
}
