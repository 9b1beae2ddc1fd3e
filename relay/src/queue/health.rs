//! Destination health (DESIGN.md §6): after a run of connection-level
//! failures a destination is suspended, its mail gets no attempts, and
//! one probe goes out per back-off step until one gets through. Pure: the
//! time is passed in, so the state machine is tested to exact values.
//!
//! Only failures before a transaction starts count — refused, timed out,
//! a 4xx/5xx greeting, TLS that policy requires failing — because they say
//! the destination cannot take mail at all. A 4xx to one recipient says
//! nothing of the next; it is the retry schedule's business.

/// How a destination is judged. `Default` is what a Relay gets when its
/// spec says nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HealthSettings {
    /// Consecutive connection-level failures that suspend a destination.
    pub suspend_after: u32,
    /// Wait before the first probe of a suspended destination, seconds.
    pub first_probe_secs: i64,
    /// The wait doubles after each failed probe, up to this, seconds.
    pub max_probe_secs: i64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        // Postfix gives up on a site after 1 failed cohort of connections
        // and waits `minimal_backoff_time` (300 s); we suspend a little
        // later (5 failures, so one unlucky connection does not stop a
        // site) and probe sooner, since a probe costs one connection.
        Self {
            suspend_after: 5,
            first_probe_secs: 30,
            max_probe_secs: 30 * 60,
        }
    }
}

/// What an attempt learnt about its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contact {
    /// A server answered and a transaction could start (whatever became
    /// of the recipients).
    Reached,
    /// No server could be reached or none would talk to us.
    Failed,
    /// Nothing learnt (a DNS failure, a route without a server).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Up {
        /// Connection-level failures in a row.
        failures: u32,
    },
    Suspended {
        failures: u32,
        /// Failed probes so far; the next wait is `first · 2^probes`.
        probes: u32,
        /// When the next probe may go (unix seconds).
        next_probe: i64,
        /// A probe is under way.
        probing: bool,
    },
}

/// What a result changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// The destination is now suspended.
    Suspended,
    /// A probe got through: the destination takes mail again.
    Released,
}

/// May an attempt start now?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    Open,
    /// Suspended, and this attempt would be the probe.
    Probe,
    /// Suspended: no attempt.
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Health {
    pub state: State,
    /// The reason of the last connection-level failure.
    pub last_error: Option<String>,
    /// Suspended by a throttle rule: until when, and the reply that
    /// matched. Only the probe after it releases the destination, not an
    /// attempt that was already under way.
    pub held: Option<Held>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub until: i64,
    pub reply: String,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: State::Up { failures: 0 },
            last_error: None,
            held: None,
        }
    }
}

impl Health {
    pub(crate) fn gate(&self, now: i64) -> Gate {
        match self.state {
            State::Up { .. } => Gate::Open,
            State::Suspended {
                next_probe,
                probing,
                ..
            } if !probing && now >= next_probe => Gate::Probe,
            State::Suspended { .. } => Gate::Closed,
        }
    }

    pub(crate) fn is_suspended(&self) -> bool {
        matches!(self.state, State::Suspended { .. })
    }

    /// Up with no failure counted: nothing worth remembering.
    pub(crate) fn is_clean(&self) -> bool {
        self.state == State::Up { failures: 0 } && self.held.is_none()
    }

    /// Suspend until `until` because the remote asked us to back off
    /// (`reply` matched a throttle rule); the probe goes at `until`. A
    /// reply that matches again while held starts the wait over.
    pub(crate) fn hold(&mut self, until: i64, reply: &str) {
        let failures = match self.state {
            State::Up { failures } | State::Suspended { failures, .. } => failures,
        };
        self.state = State::Suspended {
            failures,
            probes: 0,
            next_probe: until,
            probing: false,
        };
        self.held = Some(Held {
            until,
            reply: reply.to_string(),
        });
    }

    /// When a suspended destination may be probed next.
    pub(crate) fn next_probe(&self) -> Option<i64> {
        match self.state {
            State::Suspended { next_probe, .. } => Some(next_probe),
            State::Up { .. } => None,
        }
    }

    /// A probe was handed out (after `gate` said `Probe`).
    pub(crate) fn probe_started(&mut self) {
        if let State::Suspended { probing, .. } = &mut self.state {
            *probing = true;
        }
    }

    /// Account for one attempt's result. `probe`: it was the probe.
    pub(crate) fn record(
        &mut self,
        contact: Contact,
        reason: &str,
        probe: bool,
        now: i64,
        settings: &HealthSettings,
    ) -> Change {
        if contact == Contact::Failed {
            self.last_error = Some(reason.to_string());
        }
        match (&mut self.state, contact) {
            (_, Contact::Unknown) => {
                // A probe that learnt nothing frees the slot for the next.
                if let State::Suspended { probing, .. } = &mut self.state
                    && probe
                {
                    *probing = false;
                }
                Change::None
            }
            (State::Up { failures }, Contact::Reached) => {
                *failures = 0;
                Change::None
            }
            (State::Up { failures }, Contact::Failed) => {
                *failures = failures.saturating_add(1);
                if *failures < settings.suspend_after.max(1) {
                    return Change::None;
                }
                self.state = State::Suspended {
                    failures: *failures,
                    probes: 0,
                    next_probe: now.saturating_add(wait(settings, 0)),
                    probing: false,
                };
                Change::Suspended
            }
            (State::Suspended { .. }, Contact::Reached)
                if !probe && self.held.as_ref().is_some_and(|h| now < h.until) =>
            {
                // Held by a throttle rule: the remote asked for the pause,
                // so an attempt that got through does not end it early.
                Change::None
            }
            (State::Suspended { .. }, Contact::Reached) => {
                // Any attempt that got through (a probe, or one already
                // under way when the suspension came) shows it is back.
                self.state = State::Up { failures: 0 };
                self.held = None;
                Change::Released
            }
            (
                State::Suspended {
                    failures,
                    probes,
                    next_probe,
                    probing,
                },
                Contact::Failed,
            ) => {
                *failures = failures.saturating_add(1);
                if probe {
                    *probes = probes.saturating_add(1);
                    *next_probe = now.saturating_add(wait(settings, *probes));
                    *probing = false;
                }
                Change::None
            }
        }
    }
}

/// The wait before probe number `probes + 1`: doubling, capped.
pub(crate) fn wait(settings: &HealthSettings, probes: u32) -> i64 {
    let first = settings.first_probe_secs.max(1);
    let cap = settings.max_probe_secs.max(first);
    first.saturating_mul(1_i64 << probes.min(40)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: HealthSettings = HealthSettings {
        suspend_after: 3,
        first_probe_secs: 10,
        max_probe_secs: 60,
    };

    fn fail(h: &mut Health, probe: bool, now: i64) -> Change {
        h.record(Contact::Failed, "connection refused", probe, now, &S)
    }

    #[test]
    fn consecutive_failures_suspend_and_a_success_in_between_resets_the_count() {
        let mut h = Health::default();
        assert_eq!(fail(&mut h, false, 0), Change::None);
        assert_eq!(fail(&mut h, false, 0), Change::None);
        assert_eq!(h.record(Contact::Reached, "", false, 0, &S), Change::None);
        assert_eq!(fail(&mut h, false, 1), Change::None);
        assert_eq!(fail(&mut h, false, 1), Change::None);
        assert_eq!(h.gate(1), Gate::Open);
        assert_eq!(fail(&mut h, false, 1), Change::Suspended);
        assert_eq!(
            h.state,
            State::Suspended {
                failures: 3,
                probes: 0,
                next_probe: 11,
                probing: false
            }
        );
        assert_eq!(h.last_error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn a_suspended_destination_gets_one_probe_per_step() {
        let mut h = Health::default();
        for _ in 0..3 {
            fail(&mut h, false, 100);
        }
        assert_eq!(h.gate(105), Gate::Closed);
        assert_eq!(h.gate(110), Gate::Probe);
        h.probe_started();
        assert_eq!(h.gate(110), Gate::Closed, "one probe at a time");
        assert_eq!(h.gate(500), Gate::Closed, "still one while it runs");
        // Attempts that were already under way fail too: no new step.
        assert_eq!(fail(&mut h, false, 111), Change::None);
        assert_eq!(h.gate(500), Gate::Closed);
        assert_eq!(fail(&mut h, true, 112), Change::None);
        assert_eq!(h.next_probe(), Some(112 + 20));
        assert_eq!(h.gate(131), Gate::Closed);
        assert_eq!(h.gate(132), Gate::Probe);
    }

    #[test]
    fn a_probe_that_gets_through_releases() {
        let mut h = Health::default();
        for _ in 0..3 {
            fail(&mut h, false, 0);
        }
        h.probe_started();
        assert_eq!(
            h.record(Contact::Reached, "", true, 10, &S),
            Change::Released
        );
        assert_eq!(h.state, State::Up { failures: 0 });
        assert_eq!(h.gate(10), Gate::Open);
    }

    #[test]
    fn a_probe_that_learns_nothing_frees_the_slot_without_a_step() {
        let mut h = Health::default();
        for _ in 0..3 {
            fail(&mut h, false, 0);
        }
        assert_eq!(h.gate(10), Gate::Probe);
        h.probe_started();
        h.record(Contact::Unknown, "dns", true, 10, &S);
        assert_eq!(h.gate(10), Gate::Probe);
        assert_eq!(h.next_probe(), Some(10));
    }

    #[test]
    fn a_throttle_hold_ends_only_with_the_probe_after_it() {
        let mut h = Health::default();
        h.hold(100, "421 4.7.0 Try again later");
        assert!(h.is_suspended() && !h.is_clean());
        assert_eq!(h.gate(99), Gate::Closed);
        // An attempt that was under way gets through: still held.
        assert_eq!(h.record(Contact::Reached, "", false, 50, &S), Change::None);
        assert_eq!(h.gate(99), Gate::Closed);
        assert_eq!(h.gate(100), Gate::Probe);
        h.probe_started();
        assert_eq!(
            h.record(Contact::Reached, "", true, 101, &S),
            Change::Released
        );
        assert!(h.is_clean());
        // A probe refused at connection level backs off as any other.
        h.hold(200, "421 4.7.0 Try again later");
        h.probe_started();
        assert_eq!(fail(&mut h, true, 200), Change::None);
        assert_eq!(h.next_probe(), Some(200 + 20));
    }

    #[test]
    fn back_off_doubles_up_to_its_cap() {
        let waits: Vec<i64> = (0..8).map(|p| wait(&S, p)).collect();
        assert_eq!(waits, [10, 20, 40, 60, 60, 60, 60, 60]);
        assert_eq!(wait(&S, u32::MAX), 60);
        let odd = HealthSettings {
            suspend_after: 0,
            first_probe_secs: 0,
            max_probe_secs: 0,
        };
        assert_eq!(wait(&odd, 0), 1, "never a zero wait");
        let mut h = Health::default();
        assert_eq!(
            h.record(Contact::Failed, "x", false, 0, &odd),
            Change::Suspended,
            "a threshold of 0 acts as 1"
        );
    }

    #[test]
    fn repeated_failed_probes_reach_the_cap_and_stay_there() {
        let mut h = Health::default();
        for _ in 0..3 {
            fail(&mut h, false, 0);
        }
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let now = h.next_probe().unwrap();
            assert_eq!(h.gate(now), Gate::Probe);
            h.probe_started();
            fail(&mut h, true, now);
            gaps.push(h.next_probe().unwrap() - now);
        }
        assert_eq!(gaps, [20, 40, 60, 60, 60, 60]);
    }
}
