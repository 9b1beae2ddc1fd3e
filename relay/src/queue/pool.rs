//! Idle outbound connections kept for the next message to the same
//! destination, so a queue of mail for one MX site or mailbox server does
//! not pay a TCP, EHLO and TLS handshake per message.
//!
//! Kept per destination, not per route: every domain of an MX site may
//! use a connection to one of its hosts (the attempt checks the domain's
//! TLS policy against it first, see `tls_policy::Check::reusable`). A new
//! connection is made only when the destination has none idle, so the
//! connections open to a destination never outnumber its attempts under
//! way, which the scheduler bounds by `maxConnections`. A connection
//! carries at most `maxMessagesPerConnection` messages and is kept idle
//! at most `idleTimeout`; new connections are spaced by `connectionRate`.
//!
//! Connections to close are handed back to the caller, which closes them
//! before it opens another: a remote counting our connections never sees
//! one more than the limit while a QUIT is under way.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mailrelay_crds::config::{RateConfig, ShapeConfig};
use tokio::net::TcpStream;

use super::destination::Dest;
use crate::delivery::{LmtpClient, SmtpClient};

pub(crate) enum Client {
    // Boxed: both clients carry large buffers, and pools hold many of these.
    Smtp(Box<SmtpClient>),
    Lmtp(Box<LmtpClient<TcpStream>>),
}

impl Client {
    fn broken(&self) -> bool {
        match self {
            Client::Smtp(c) => c.broken().is_some(),
            Client::Lmtp(c) => c.broken().is_some(),
        }
    }

    pub(crate) async fn quit(self) {
        match self {
            Client::Smtp(c) => c.quit().await,
            Client::Lmtp(c) => c.quit().await,
        }
    }
}

/// A connection and the messages it has carried.
pub(crate) struct Kept {
    pub client: Client,
    pub sent: u32,
}

struct Idle {
    kept: Kept,
    until: Instant,
}

#[derive(Default)]
struct Place {
    idle: Vec<Idle>,
    /// `connectionRate`: when the next connection may be made (unix ms).
    next_connect_ms: i64,
}

impl Place {
    fn is_empty(&self) -> bool {
        self.idle.is_empty() && self.next_connect_ms == 0
    }
}

/// What `take` found: a connection to use, and stale ones to close first.
pub(crate) struct Taken {
    pub kept: Option<Kept>,
    pub close: Vec<Client>,
}

pub(crate) struct Pool {
    places: Mutex<HashMap<Dest, Place>>,
    /// Idle connections over all destinations.
    total: usize,
}

impl Pool {
    pub(crate) fn new(total: usize) -> Self {
        Self {
            places: Mutex::new(HashMap::new()),
            total,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Dest, Place>> {
        self.places.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection to `dest` that is still
    /// within its idle time, and the stale ones met on the way.
    pub(crate) fn take(&self, dest: &Dest) -> Taken {
        let mut places = self.lock();
        let mut out = Taken {
            kept: None,
            close: Vec::new(),
        };
        let Some(place) = places.get_mut(dest) else {
            return out;
        };
        let now = Instant::now();
        while let Some(idle) = place.idle.pop() {
            if now < idle.until {
                out.kept = Some(idle.kept);
                break;
            }
            out.close.push(idle.kept.client);
        }
        out
    }

    /// Keep `kept` for the next message to `dest`, or hand it back to be
    /// closed: broken, used up (`maxMessagesPerConnection`), or beyond
    /// what may be kept.
    pub(crate) fn put(&self, dest: &Dest, kept: Kept, shape: &ShapeConfig) -> Option<Client> {
        if kept.client.broken() || kept.sent >= shape.max_messages_per_connection {
            return Some(kept.client);
        }
        let mut places = self.lock();
        let total: usize = places.values().map(|p| p.idle.len()).sum();
        let place = places.entry(dest.clone()).or_default();
        let cap = usize::try_from(shape.max_connections).unwrap_or(usize::MAX);
        if place.idle.len() >= cap || total >= self.total {
            return Some(kept.client);
        }
        let idle = Duration::from_millis(shape.idle_timeout_ms);
        place.idle.push(Idle {
            kept,
            until: Instant::now() + idle,
        });
        None
    }

    /// How long to wait before a new connection to `dest` under `rate`
    /// (GCRA without a burst, like the scheduler's message rate); the
    /// slot is taken.
    pub(crate) fn connect_slot(
        &self,
        dest: &Dest,
        rate: Option<RateConfig>,
        now_ms: i64,
    ) -> Duration {
        let Some(rate) = rate else {
            return Duration::ZERO;
        };
        let mut places = self.lock();
        let place = places.entry(dest.clone()).or_default();
        let at = place.next_connect_ms.max(now_ms);
        let interval = i64::try_from(rate.interval_ms()).unwrap_or(i64::MAX);
        place.next_connect_ms = at.saturating_add(interval);
        Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0))
    }

    /// Close the connections that have been idle too long, and forget
    /// rate slots that have passed.
    pub(crate) fn expire(&self, now_ms: i64) {
        let mut places = self.lock();
        let now = Instant::now();
        for place in places.values_mut() {
            let (fresh, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut place.idle)
                .into_iter()
                .partition(|i| now < i.until);
            place.idle = fresh;
            for idle in stale {
                tokio::spawn(idle.kept.client.quit());
            }
            if place.next_connect_ms <= now_ms {
                place.next_connect_ms = 0;
            }
        }
        places.retain(|_, p| !p.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_spaced_by_the_rate_and_none_without_one() {
        let pool = Pool::new(10);
        let dest = Dest::Site("mx.test".into());
        assert_eq!(pool.connect_slot(&dest, None, 0), Duration::ZERO);
        let rate = Some(RateConfig {
            count: 2,
            per_secs: 1,
        });
        let waits: Vec<u64> = (0..4)
            .map(|_| pool.connect_slot(&dest, rate, 1_000).as_millis() as u64)
            .collect();
        assert_eq!(waits, [0, 500, 1000, 1500]);
        // Later than every slot taken: no wait, and no burst saved up.
        assert_eq!(pool.connect_slot(&dest, rate, 10_000), Duration::ZERO);
        assert_eq!(
            pool.connect_slot(&dest, rate, 10_000),
            Duration::from_millis(500)
        );
    }
}
