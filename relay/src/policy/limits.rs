//! Limits shared by all sessions of a relay: open connections (in total and
//! per client address), messages per minute per client, and failed AUTH
//! attempts per client. The clock is injected so tests are exact.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

const WINDOW: Duration = Duration::from_secs(60);
/// How long failed AUTH attempts count against an address.
const AUTH_WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Clone, Copy, Debug)]
pub(crate) struct LimitSettings {
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    pub messages_per_minute_per_ip: u32,
    pub max_auth_failures_per_ip: u32,
}

impl From<&mailrelay_crds::config::LimitsConfig> for LimitSettings {
    fn from(l: &mailrelay_crds::config::LimitsConfig) -> Self {
        Self {
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
            messages_per_minute_per_ip: l.messages_per_minute_per_ip,
            max_auth_failures_per_ip: l.max_auth_failures_per_ip,
        }
    }
}

#[derive(Default)]
struct PerIp {
    connections: u32,
    /// Start of the current minute and messages in it.
    window: Option<(Instant, u32)>,
    auth_failures: Vec<Instant>,
}

impl PerIp {
    fn idle(&self) -> bool {
        self.connections == 0 && self.window.is_none() && self.auth_failures.is_empty()
    }

    /// Nothing left that still counts at `now`: no connection, no message
    /// in the current minute, no failed AUTH within its window.
    fn spent(&self, now: Instant) -> bool {
        self.connections == 0
            && self
                .window
                .is_none_or(|(start, _)| now.duration_since(start) >= WINDOW)
            && self
                .auth_failures
                .iter()
                .all(|t| now.duration_since(*t) >= AUTH_WINDOW)
    }
}

/// Entries are dropped when spent; a sweep every this many new connections
/// catches those whose last connection closed inside a window, so the map
/// stays bounded by the clients of the last quarter hour.
const SWEEP_EVERY: u32 = 4096;

struct State {
    total: u32,
    by_ip: HashMap<IpAddr, PerIp>,
    opened: u32,
}

pub struct Limiter {
    clock: Clock,
    state: Mutex<State>,
}

/// Refusal of a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnRefused {
    Total,
    PerIp,
}

/// Holds one connection slot; released on drop.
pub(crate) struct ConnSlot {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut s = self.limiter.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(p) = s.by_ip.get_mut(&self.ip) {
            p.connections = p.connections.saturating_sub(1);
            if p.idle() {
                s.by_ip.remove(&self.ip);
            }
        }
    }
}

impl Limiter {
    pub(crate) fn new(clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            clock,
            state: Mutex::new(State {
                total: 0,
                by_ip: HashMap::new(),
                opened: 0,
            }),
        })
    }

    pub fn system() -> Arc<Self> {
        Self::new(Arc::new(Instant::now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters
        // inconsistent in a way worse than a lost count; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn open(
        self: &Arc<Self>,
        ip: IpAddr,
        l: &LimitSettings,
    ) -> Result<ConnSlot, ConnRefused> {
        let now = (self.clock)();
        let mut s = self.lock();
        s.opened = s.opened.wrapping_add(1);
        if s.opened.is_multiple_of(SWEEP_EVERY) {
            s.by_ip.retain(|_, p| !p.spent(now));
        }
        if s.total >= l.max_connections {
            return Err(ConnRefused::Total);
        }
        let p = s.by_ip.entry(ip).or_default();
        if p.connections >= l.max_connections_per_ip {
            return Err(ConnRefused::PerIp);
        }
        p.connections += 1;
        s.total += 1;
        Ok(ConnSlot {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Count a message from `ip`; false when over the per-minute limit.
    pub(crate) fn message(&self, ip: IpAddr, l: &LimitSettings) -> bool {
        let now = (self.clock)();
        let mut s = self.lock();
        let p = s.by_ip.entry(ip).or_default();
        let (start, count) = match p.window {
            Some((start, count)) if now.duration_since(start) < WINDOW => (start, count),
            _ => (now, 0),
        };
        if count >= l.messages_per_minute_per_ip {
            p.window = Some((start, count));
            return false;
        }
        p.window = Some((start, count + 1));
        true
    }

    /// Whether `ip` may try AUTH now.
    pub(crate) fn auth_allowed(&self, ip: IpAddr, l: &LimitSettings) -> bool {
        let now = (self.clock)();
        let mut s = self.lock();
        let Some(p) = s.by_ip.get_mut(&ip) else {
            return true;
        };
        p.auth_failures
            .retain(|t| now.duration_since(*t) < AUTH_WINDOW);
        p.auth_failures.len() < l.max_auth_failures_per_ip as usize
    }

    pub(crate) fn auth_failed(&self, ip: IpAddr) {
        let now = (self.clock)();
        self.lock()
            .by_ip
            .entry(ip)
            .or_default()
            .auth_failures
            .push(now);
    }

    pub(crate) fn open_connections(&self) -> u32 {
        self.lock().total
    }

    /// Addresses with state kept (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.lock().by_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            max_connections: 3,
            max_connections_per_ip: 2,
            messages_per_minute_per_ip: 2,
            max_auth_failures_per_ip: 2,
        }
    }

    fn fake_clock() -> (Clock, Arc<Mutex<Instant>>) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let n = Arc::clone(&now);
        (Arc::new(move || *n.lock().unwrap()), now)
    }

    #[test]
    fn connections_are_limited_in_total_and_per_address() {
        let l = Limiter::system();
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let s1 = l.open(a, &settings()).unwrap();
        let _s2 = l.open(a, &settings()).unwrap();
        assert_eq!(l.open(a, &settings()).err(), Some(ConnRefused::PerIp));
        let _s3 = l.open(b, &settings()).unwrap();
        assert_eq!(l.open(b, &settings()).err(), Some(ConnRefused::Total));
        drop(s1);
        assert!(l.open(b, &settings()).is_ok());
    }

    #[test]
    fn messages_per_minute_reset_after_a_minute() {
        let (clock, now) = fake_clock();
        let l = Limiter::new(clock);
        let ip = "2001:db8::1".parse().unwrap();
        assert!(l.message(ip, &settings()));
        assert!(l.message(ip, &settings()));
        assert!(!l.message(ip, &settings()));
        *now.lock().unwrap() += Duration::from_secs(61);
        assert!(l.message(ip, &settings()));
    }

    #[test]
    fn spent_entries_are_swept_so_the_map_stays_bounded() {
        let (clock, now) = fake_clock();
        let l = Limiter::new(clock);
        let many = LimitSettings {
            max_connections: u32::MAX,
            max_connections_per_ip: 10,
            messages_per_minute_per_ip: 10,
            max_auth_failures_per_ip: 5,
        };
        for i in 0..SWEEP_EVERY {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let slot = l.open(ip, &many).unwrap();
            assert!(l.message(ip, &many));
            drop(slot); // within the minute: kept
        }
        assert_eq!(l.tracked(), SWEEP_EVERY as usize);
        *now.lock().unwrap() += WINDOW;
        let ip = "192.0.2.1".parse().unwrap();
        for _ in 0..SWEEP_EVERY {
            drop(l.open(ip, &many).unwrap());
        }
        assert!(l.tracked() <= 1, "spent entries swept: {}", l.tracked());
    }

    #[test]
    fn auth_failures_lock_out_for_a_while() {
        let (clock, now) = fake_clock();
        let l = Limiter::new(clock);
        let ip = "192.0.2.9".parse().unwrap();
        assert!(l.auth_allowed(ip, &settings()));
        l.auth_failed(ip);
        l.auth_failed(ip);
        assert!(!l.auth_allowed(ip, &settings()));
        *now.lock().unwrap() += AUTH_WINDOW;
        assert!(l.auth_allowed(ip, &settings()));
    }
}
