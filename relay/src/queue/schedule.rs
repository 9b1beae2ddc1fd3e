//! The retry schedule: when a message that was deferred (4xx, or a network
//! failure) is tried again, and when it is given up and bounced.
//!
//! RFC 5321 §4.5.4.1 asks for a first retry after at least 30 minutes and
//! a give-up time of 4-5 days; in practice (and in our default) the first
//! retries come sooner, within the first hour, and then every one to three
//! hours. Each wait is varied at random so that messages deferred together
//! (a receiving host that was down) do not all come back in the same second.

use std::time::Duration;

use jiff::Timestamp;
use mailrelay_crds::config::QueueConfig;
use rand::Rng;

/// Waits between attempts, jitter, lifetime and the delay warning of one
/// relay, from its compiled [`QueueConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// Wait after attempt n is `waits[min(n - 1, len - 1)]`; never empty.
    waits: Vec<Duration>,
    /// Each wait varies uniformly by ± this share of itself; 0..=100.
    jitter_percent: u8,
    /// How long after its arrival a message may still be tried.
    lifetime: Duration,
    /// When to tell the sender that a message is late; `None`: never.
    delay_warning: Option<Duration>,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again at this time.
    RetryAt(Timestamp),
    /// The lifetime is over, or would be before the next attempt: bounce
    /// now (RFC 5321 §4.5.4.1: the sender must learn of the failure).
    Expire,
}

/// A queue configuration that cannot be scheduled. `compile()` never
/// produces one; this guards a hand-written or older config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScheduleError {
    #[error("the retry schedule has no waits")]
    NoWaits,
    #[error("jitter of {0}% is more than 100%")]
    Jitter(u8),
}

/// Waits shorter than this are raised to it: a zero wait (possible with
/// 100% jitter) would retry in a busy loop.
const MIN_WAIT_SECS: u64 = 1;
/// Waits longer than this (about 35,000 years, past the range of a
/// timestamp) are cut to it, which keeps the jitter arithmetic in range.
const MAX_WAIT_SECS: u64 = 1 << 40;

impl Schedule {
    pub(crate) fn new(config: &QueueConfig) -> Result<Self, ScheduleError> {
        if config.retry_schedule_secs.is_empty() {
            return Err(ScheduleError::NoWaits);
        }
        if config.jitter_percent > 100 {
            return Err(ScheduleError::Jitter(config.jitter_percent));
        }
        Ok(Self {
            waits: config
                .retry_schedule_secs
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            jitter_percent: config.jitter_percent,
            lifetime: Duration::from_secs(config.lifetime_secs),
            delay_warning: config.delay_warning_secs.map(Duration::from_secs),
        })
    }

    /// When a message received at `received_at` must be given up: the
    /// `Will-Retry-Until` of a delay warning (RFC 3464 §2.3.9).
    pub(crate) fn expires_at(&self, received_at: Timestamp) -> Timestamp {
        add(received_at, self.lifetime).unwrap_or(Timestamp::MAX)
    }

    /// The wait after `attempt` attempts (≥ 1; 0 counts as 1) before
    /// jitter: the configured waits in order, then the last one repeating.
    pub(crate) fn nominal_wait(&self, attempt: u32) -> Duration {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.waits
            .get(index)
            .or(self.waits.last())
            .copied()
            .unwrap_or(Duration::from_secs(MIN_WAIT_SECS))
    }

    /// What to do after `attempt` attempts (≥ 1) all failed temporarily,
    /// the last one just now. An attempt exactly at the end of the lifetime
    /// is still made; one that would come after it is not, and the message
    /// is bounced now instead of sitting in the queue for another wait only
    /// to be bounced then.
    pub(crate) fn next_attempt(
        &self,
        attempt: u32,
        received_at: Timestamp,
        now: Timestamp,
        rng: &mut impl Rng,
    ) -> Next {
        let wait = self.jittered(self.nominal_wait(attempt), rng);
        match add(now, wait) {
            Some(at) if at <= self.expires_at(received_at) => Next::RetryAt(at),
            // Past the lifetime, or past the end of time.
            _ => Next::Expire,
        }
    }

    /// When a delay warning for a message received at `received_at` falls
    /// due, if warnings are on.
    pub(crate) fn delay_warning_at(&self, received_at: Timestamp) -> Option<Timestamp> {
        add(received_at, self.delay_warning?)
    }

    /// Whether to send the sender a delay warning (an RFC 3464 DSN with
    /// `Action: delayed`) now: once per message, after it has waited the
    /// configured time, and not when the lifetime is over (a bounce is due
    /// instead, and a warning that we "will retry" would be false).
    pub(crate) fn delay_warning_due(
        &self,
        received_at: Timestamp,
        now: Timestamp,
        already_warned: bool,
    ) -> bool {
        let Some(due) = self.delay_warning_at(received_at) else {
            return false;
        };
        !already_warned && now >= due && now < self.expires_at(received_at)
    }

    /// `wait` varied uniformly over `wait ± jitter_percent`, in whole
    /// seconds, never below [`MIN_WAIT_SECS`].
    ///
    /// One `u64` from the generator is mapped onto the range by a widening
    /// multiply (the high half of `x · width`), so the result is a plain
    /// function of that draw: tests pin it with a fixed generator, and its
    /// bias (width / 2^64) is far below a second.
    fn jittered(&self, wait: Duration, rng: &mut impl Rng) -> Duration {
        let secs = u128::from(wait.as_secs().min(MAX_WAIT_SECS));
        let span = secs * u128::from(self.jitter_percent) / 100;
        let secs = if span == 0 {
            secs
        } else {
            let width = 2 * span + 1;
            let offset = (u128::from(rng.next_u64()) * width) >> 64;
            secs - span + offset
        };
        let secs = u64::try_from(secs).unwrap_or(u64::MAX);
        Duration::from_secs(secs.max(MIN_WAIT_SECS))
    }
}

/// `t + d`, or `None` past the range of a timestamp.
fn add(t: Timestamp, d: Duration) -> Option<Timestamp> {
    t.checked_add(d).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;

    /// A generator that returns the same number every time, so a jittered
    /// wait is an exact, known value.
    struct Fixed(u64);

    impl rand::RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            (self.0 >> 32) as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            for (d, s) in dst.iter_mut().zip(self.0.to_le_bytes().into_iter().cycle()) {
                *d = s;
            }
        }
    }

    fn config(waits: &[u64], jitter: u8, lifetime: u64, warn: Option<u64>) -> QueueConfig {
        QueueConfig {
            retry_schedule_secs: waits.to_vec(),
            jitter_percent: jitter,
            lifetime_secs: lifetime,
            delay_warning_secs: warn,
            storage: None,
            suspend_after: 5,
            probe_secs: 30,
            max_probe_secs: 1800,
        }
    }

    /// The default of `crds::defaults`: 5m, 10m, 15m, 30m, 2h; 50%; 5d; 4h.
    fn default_schedule(jitter: u8) -> Schedule {
        let c = config(
            &[5 * MIN, 10 * MIN, 15 * MIN, 30 * MIN, 2 * HOUR],
            jitter,
            5 * DAY,
            Some(4 * HOUR),
        );
        Schedule::new(&c).unwrap()
    }

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs as i64).unwrap()
    }

    fn retry_secs(next: Next, now: Timestamp) -> u64 {
        match next {
            Next::RetryAt(at) => (at - now).get_seconds() as u64,
            Next::Expire => panic!("expected a retry, got Expire"),
        }
    }

    #[test]
    fn without_jitter_the_waits_are_exact_and_the_last_repeats() {
        let s = default_schedule(0);
        let mut rng = StdRng::seed_from_u64(1);
        let now = t(1000);
        let got: Vec<u64> = (1..=8)
            .map(|n| retry_secs(s.next_attempt(n, t(0), now, &mut rng), now))
            .collect();
        let h2 = 2 * HOUR;
        assert_eq!(got, [5 * MIN, 10 * MIN, 15 * MIN, 30 * MIN, h2, h2, h2, h2]);
        assert_eq!(
            s.next_attempt(1, t(0), now, &mut rng),
            Next::RetryAt(t(1000 + 5 * MIN))
        );
        assert_eq!(
            s.nominal_wait(0),
            Duration::from_secs(5 * MIN),
            "attempt 0 counts as 1"
        );
        assert_eq!(s.nominal_wait(u32::MAX), Duration::from_secs(h2));
    }

    #[test]
    fn jitter_spans_exactly_plus_or_minus_the_percentage() {
        let s = default_schedule(50);
        let now = t(0);
        for (draw, want) in [(0, 150), (1 << 63, 300), (u64::MAX, 450)] {
            assert_eq!(
                retry_secs(s.next_attempt(1, now, now, &mut Fixed(draw)), now),
                want,
                "draw {draw:#x}"
            );
        }
        // 2h ± 50%: 1h to 3h.
        assert_eq!(
            retry_secs(s.next_attempt(9, now, now, &mut Fixed(0)), now),
            HOUR
        );
        assert_eq!(
            retry_secs(s.next_attempt(9, now, now, &mut Fixed(u64::MAX)), now),
            3 * HOUR
        );
    }

    #[test]
    fn a_seeded_generator_gives_a_reproducible_wait_from_one_draw() {
        let s = default_schedule(50);
        let now = t(0);
        let draw = StdRng::seed_from_u64(42).next_u64();
        let want = 150 + ((u128::from(draw) * 301) >> 64) as u64;
        let got = retry_secs(
            s.next_attempt(1, now, now, &mut StdRng::seed_from_u64(42)),
            now,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn waits_never_drop_below_one_second() {
        let s = Schedule::new(&config(&[1, 3], 100, DAY, None)).unwrap();
        let now = t(0);
        assert_eq!(
            retry_secs(s.next_attempt(1, now, now, &mut Fixed(0)), now),
            1
        );
        assert_eq!(
            retry_secs(s.next_attempt(2, now, now, &mut Fixed(0)), now),
            1
        );
        assert_eq!(
            retry_secs(s.next_attempt(2, now, now, &mut Fixed(u64::MAX)), now),
            6
        );
    }

    #[test]
    fn expiry_is_exactly_at_the_lifetime() {
        let s = default_schedule(0);
        let mut rng = StdRng::seed_from_u64(0);
        let end = 5 * DAY;
        // A retry landing exactly on the end of the lifetime is still made...
        let now = t(end - 2 * HOUR);
        assert_eq!(
            s.next_attempt(9, t(0), now, &mut rng),
            Next::RetryAt(t(end))
        );
        assert_eq!(s.expires_at(t(0)), t(end));
        // ...one a second later is not: the message is bounced now.
        assert_eq!(
            s.next_attempt(9, t(0), t(end - 2 * HOUR + 1), &mut rng),
            Next::Expire
        );
        // And once the lifetime is over, always Expire.
        assert_eq!(s.next_attempt(1, t(0), t(end), &mut rng), Next::Expire);
        assert_eq!(
            s.next_attempt(1, t(0), t(end + DAY), &mut rng),
            Next::Expire
        );
    }

    #[test]
    fn times_beyond_the_timestamp_range_expire_instead_of_panicking() {
        let s = Schedule::new(&config(&[u64::MAX], 100, u64::MAX, Some(u64::MAX))).unwrap();
        let now = t(0);
        for draw in [1 << 63, u64::MAX] {
            assert_eq!(s.next_attempt(1, now, now, &mut Fixed(draw)), Next::Expire);
        }
        // 100% jitter can bring even this wait down to the floor.
        let soon = s.next_attempt(1, now, now, &mut Fixed(0));
        assert_eq!(soon, Next::RetryAt(t(1)));
        assert_eq!(s.expires_at(now), Timestamp::MAX);
        assert!(!s.delay_warning_due(now, now, false));
    }

    #[test]
    fn delay_warning_is_due_once_after_its_time_and_before_expiry() {
        let s = default_schedule(50);
        let r = t(0);
        assert!(!s.delay_warning_due(r, t(4 * HOUR - 1), false));
        assert!(s.delay_warning_due(r, t(4 * HOUR), false));
        assert!(!s.delay_warning_due(r, t(4 * HOUR), true), "only once");
        assert!(s.delay_warning_due(r, t(5 * DAY - 1), false));
        assert!(
            !s.delay_warning_due(r, t(5 * DAY), false),
            "a bounce is due instead"
        );
        let off = Schedule::new(&config(&[60], 0, DAY, None)).unwrap();
        assert!(!off.delay_warning_due(r, t(DAY - 1), false));
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert_eq!(
            Schedule::new(&config(&[], 0, DAY, None)),
            Err(ScheduleError::NoWaits)
        );
        assert_eq!(
            Schedule::new(&config(&[60], 101, DAY, None)),
            Err(ScheduleError::Jitter(101))
        );
    }

    proptest! {
        /// The default schedule over a message's whole life, for any seed:
        /// the first retries within the first hour, then every 1-3 hours,
        /// no attempt after the lifetime, and a bounce within one wait of it.
        #[test]
        fn the_default_schedule_retries_early_then_every_one_to_three_hours(seed in any::<u64>()) {
            let s = default_schedule(50);
            let mut rng = StdRng::seed_from_u64(seed);
            let received = t(0);
            let mut now = received;
            let mut attempt = 1;
            loop {
                match s.next_attempt(attempt, received, now, &mut rng) {
                    Next::RetryAt(at) => {
                        let wait = (at - now).get_seconds() as u64;
                        let since = (at - received).get_seconds() as u64;
                        if attempt <= 3 {
                            prop_assert!(since <= HOUR, "retry {attempt} at {since}s");
                        }
                        if attempt >= 5 {
                            prop_assert!((HOUR..=3 * HOUR).contains(&wait), "wait {wait}s");
                        }
                        prop_assert!(since <= 5 * DAY);
                        now = at;
                        attempt += 1;
                    }
                    Next::Expire => {
                        let since = (now - received).get_seconds() as u64;
                        prop_assert!(since > 5 * DAY - 3 * HOUR && since <= 5 * DAY, "expired at {since}s");
                        break;
                    }
                }
            }
            // Roughly 5 days / 2 h of retries, whatever the draws.
            prop_assert!((40..=125).contains(&attempt), "{attempt} attempts");
        }
    }
}
