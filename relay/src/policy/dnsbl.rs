//! DNSBL lookups (RFC 5782): is the client address listed in a zone?
//!
//! `192.0.2.1` in `bl.example` is an A query for `1.2.0.192.bl.example`;
//! an IPv6 address is its 32 nibbles, reversed (RFC 5782 §2.4). Listed
//! when an answer lies in the zone's return codes. NXDOMAIN is "not
//! listed"; a timeout or SERVFAIL is an error, never "not listed": the
//! session answers 451 4.7.1 so the client retries instead of passing.
//! Answers are cached per (zone, address) so a busy client does not cost
//! one query per connection.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use mailrelay_crds::compile::normalize;

use super::DnsblZone;
use super::dns::{Dns, DnsError};
use super::hit::{BlockReply, Hit, Matched};

/// Shortest time a listing is cached, whatever its TTL (DNSBLs often
/// answer with TTL 0 from local mirrors).
pub const POSITIVE_TTL_MIN: Duration = Duration::from_secs(60);
/// Longest time a listing is cached: delistings show within the hour.
pub const POSITIVE_TTL_MAX: Duration = Duration::from_secs(3600);
/// How long "not listed" is cached.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(300);

/// Longest domain name (RFC 1035 §2.3.4), without the final dot.
const MAX_NAME: usize = 253;

/// A DNSBL could not be asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsblError {
    #[error("DNSBL {zone} lookup for {ip} failed: {reason}")]
    Temporary {
        zone: String,
        ip: IpAddr,
        reason: String,
    },
}

impl DnsblError {
    /// 451 4.7.1 (RFC 3463 §3.8): try again later, when DNS answers.
    pub(crate) fn reply(&self) -> BlockReply {
        BlockReply {
            code: 451,
            enhanced: "4.7.1",
            text: "Temporary DNS failure checking the client address; try again later".into(),
        }
    }
}

/// The A query name for `ip` in `zone`, fully qualified (trailing dot).
/// An IPv4-mapped IPv6 address is queried as the IPv4 address.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let mut name = String::with_capacity(72 + zone.len());
    match normalize::unmap_addr(ip) {
        IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                let _ = write!(name, "{octet}.");
            }
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
        }
    }
    name.push_str(zone);
    name.push('.');
    name
}

/// Raw answers by (zone, address), bounded, oldest evicted first. Raw
/// answers rather than verdicts, so two lists sharing a zone with
/// different return codes share the cache. The clock is passed in.
#[derive(Debug)]
pub struct DnsblCache {
    capacity: usize,
    map: HashMap<(Box<str>, IpAddr), Cached>,
    /// Insertion order: sequence number → key.
    order: BTreeMap<u64, (Box<str>, IpAddr)>,
    next_seq: u64,
}

#[derive(Debug)]
struct Cached {
    answers: Vec<IpAddr>,
    until: Instant,
    seq: u64,
}

impl DnsblCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            map: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// The cached answers (empty: not listed), unless absent or stale.
    pub(crate) fn get(&self, zone: &str, ip: IpAddr, now: Instant) -> Option<&[IpAddr]> {
        let cached = self.map.get(&(Box::from(zone), ip))?;
        (now < cached.until).then_some(cached.answers.as_slice())
    }

    /// Remember the answers to one query: a listing for its TTL clamped to
    /// [`POSITIVE_TTL_MIN`, `POSITIVE_TTL_MAX`], no answer for
    /// [`NEGATIVE_TTL`].
    pub(crate) fn insert(
        &mut self,
        zone: &str,
        ip: IpAddr,
        answers: Vec<IpAddr>,
        ttl: u32,
        now: Instant,
    ) {
        let life = if answers.is_empty() {
            NEGATIVE_TTL
        } else {
            Duration::from_secs(u64::from(ttl)).clamp(POSITIVE_TTL_MIN, POSITIVE_TTL_MAX)
        };
        let key = (Box::from(zone), ip);
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.map.insert(
            key.clone(),
            Cached {
                answers,
                until: now + life,
                seq,
            },
        ) {
            self.order.remove(&old.seq);
        }
        self.order.insert(seq, key);
        while self.map.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Queries the DNSBL zones of a policy through a [`Dns`], with a cache.
#[derive(Debug)]
pub struct DnsblChecker<D> {
    dns: D,
    cache: Mutex<DnsblCache>,
}

impl<D: Dns> DnsblChecker<D> {
    /// A checker keeping up to `cache_capacity` answers.
    pub(crate) fn new(dns: D, cache_capacity: usize) -> Self {
        Self {
            dns,
            cache: Mutex::new(DnsblCache::new(cache_capacity)),
        }
    }

    pub(crate) fn dns(&self) -> &D {
        &self.dns
    }

    /// The first listing of `ip` in `zones` (strictest rule first, as
    /// [`Policy::dnsbl_zones`](super::Policy::dnsbl_zones) orders them).
    /// Zones are asked concurrently, each name once. A listing wins over a
    /// failure elsewhere (the client is refused either way); with no
    /// listing, any failure is an error: the client must not pass on a
    /// DNS outage.
    pub(crate) async fn check(
        &self,
        zones: &[DnsblZone],
        ip: IpAddr,
    ) -> Result<Option<Hit>, DnsblError> {
        let ip = normalize::unmap_addr(ip);
        let mut names: Vec<&str> = zones.iter().map(|z| z.zone.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let answers = join_all(names.iter().map(|zone| self.answers(zone, ip)).collect()).await;
        let answers_for = |zone: &str| names.binary_search(&zone).ok().and_then(|i| answers.get(i));
        for z in zones {
            if let Some(Ok(addrs)) = answers_for(&z.zone) {
                if let Some(answer) = addrs.iter().copied().find(|a| z.lists(*a)) {
                    tracing::info!(zone = %z.zone, %ip, %answer, "client listed in DNSBL");
                    return Ok(Some(Hit {
                        rule: z.rule.clone(),
                        matched: Matched::Dnsbl {
                            ip,
                            zone: z.zone.clone(),
                            answer,
                            message: z.message.clone(),
                        },
                    }));
                }
                if let Some(other) = addrs.first() {
                    // 127.255.255.x is how some lists refuse a query (for
                    // example one sent through a public resolver).
                    tracing::debug!(zone = %z.zone, %ip, answer = %other, "DNSBL answer outside return codes");
                }
            }
        }
        match answers.into_iter().find_map(Result::err) {
            Some(e) => {
                tracing::warn!(error = %e, "DNSBL lookup failed");
                Err(e)
            }
            None => Ok(None),
        }
    }

    /// Answers for `ip` in `zone`: from the cache, else from DNS (and then
    /// cached). Empty: not listed.
    async fn answers(&self, zone: &str, ip: IpAddr) -> Result<Vec<IpAddr>, DnsblError> {
        if let Some(hit) = self.lock().get(zone, ip, Instant::now()) {
            return Ok(hit.to_vec());
        }
        let fail = |reason: String| DnsblError::Temporary {
            zone: zone.to_string(),
            ip,
            reason,
        };
        let name = query_name(ip, zone);
        if name.len() - 1 > MAX_NAME {
            // Only a zone longer than 188 characters gets here (with an
            // IPv6 client); the query cannot be sent, and passing the
            // client silently is not an option.
            return Err(fail(format!("query name {name} is too long")));
        }
        let (answers, ttl) = match self.dns.lookup_a(&name).await {
            Ok(a) => (a.addrs, a.ttl),
            Err(DnsError::NotFound) => (Vec::new(), 0),
            Err(DnsError::Temporary(reason)) => return Err(fail(reason)),
        };
        self.lock()
            .insert(zone, ip, answers.clone(), ttl, Instant::now());
        Ok(answers)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DnsblCache> {
        // The cache holds no invariant a panicking writer could break
        // halfway that matters more than answering; keep using it.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Run futures concurrently and collect their outputs in order (std only;
/// the workspace has no futures crate).
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
#[path = "dnsbl_tests.rs"]
mod tests;
