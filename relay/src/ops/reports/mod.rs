//! This pod's share of the fleet's aggregate reports (DMARC, RFC 7489
//! §7.2; TLS-RPT, RFC 8460): counts per period, kept in memory on the
//! message path, written to `SPOOL_DIR/reports/` every few seconds, served
//! to the operator on the internal API (`ops::internal`) and handed to a
//! peer with the queue when the pod drains (`lifecycle::handoff::reports`).
//!
//! Recording is a lock, a lookup among the period's rows and an add: no
//! I/O per message. The rows of a period are a `Vec` searched linearly
//! (the shared type's shape); a period has as many rows as distinct
//! (sender, IP, results) or (domain, policy) combinations, which is small
//! beside the messages counted.
//!
//! What a SIGKILL can lose: the counts recorded since the last flush, at
//! most [`FLUSH_INTERVAL`] of them. A clean stop or a drain flushes (or
//! hands the counts off). That is acceptable for statistics: a report
//! is a sample of what happened, receivers tolerate a missing few, and the
//! mail itself never depends on it — it is on disk (fsync'd) before its
//! 250, as always. Periods older than [`RETENTION_SECS`] are deleted: the
//! operator reports a period soon after it ends, and a week covers an
//! operator that was down for days.

pub(crate) mod dmarc;
pub(crate) mod store;
pub(crate) mod tls;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mailrelay_crds::reports::{DmarcRow, PeriodAggregates, ReportsConfig, TlsRow};

pub(crate) use store::{Store, StoreError};

/// How often changed periods are written.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Periods that ended longer ago than this are deleted.
pub(crate) const RETENTION_SECS: i64 = 7 * 86_400;

/// The pod's periods, shared by the sessions (DMARC), the delivery
/// workers (TLS), the internal API and the hand-off.
#[derive(Clone)]
pub(crate) struct Reports {
    inner: Arc<Inner>,
}

struct Inner {
    counts: Mutex<Counts>,
    /// `None` in unit tests of the recording alone.
    store: Option<Store>,
}

#[derive(Default)]
struct Counts {
    periods: BTreeMap<i64, PeriodAggregates>,
    /// Periods changed since they were last written.
    dirty: BTreeSet<i64>,
}

impl Reports {
    /// Counts kept in memory only.
    #[cfg(test)]
    pub(crate) fn in_memory() -> Reports {
        Reports {
            inner: Arc::new(Inner {
                counts: Mutex::new(Counts::default()),
                store: None,
            }),
        }
    }

    /// Counts kept in `store`, with what it already holds loaded.
    pub(crate) fn open(store: Store) -> Reports {
        let mut counts = Counts::default();
        for p in store.load_all() {
            counts
                .periods
                .entry(p.start)
                .or_insert_with(|| PeriodAggregates::new(p.start, p.end))
                .merge(&p);
        }
        Reports {
            inner: Arc::new(Inner {
                counts: Mutex::new(counts),
                store: Some(store),
            }),
        }
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.inner.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, config: &ReportsConfig, now: i64, f: impl FnOnce(&mut PeriodAggregates)) {
        let start = config.period_start(now);
        let end =
            start.saturating_add(i64::try_from(config.period_secs.max(1)).unwrap_or(i64::MAX));
        let mut counts = self.counts();
        f(counts
            .periods
            .entry(start)
            .or_insert_with(|| PeriodAggregates::new(start, end)));
        counts.dirty.insert(start);
    }

    /// Count a DMARC row at `now` if `config` asks for DMARC reports.
    pub(crate) fn dmarc(&self, config: Option<&ReportsConfig>, now: i64, row: DmarcRow) {
        if let Some(c) = config.filter(|c| c.dmarc) {
            self.add(c, now, |p| p.add_dmarc(row));
        }
    }

    /// Count a TLS row at `now` if `config` asks for TLS reports.
    pub(crate) fn tls(&self, config: Option<&ReportsConfig>, now: i64, row: TlsRow) {
        if let Some(c) = config.filter(|c| c.tls_rpt) {
            self.add(c, now, |p| p.add_tls(row));
        }
    }

    /// The period starting at `start`: what it counted, or empty with
    /// `start + period_secs` for its end.
    pub(crate) fn period(&self, start: i64, period_secs: u64) -> PeriodAggregates {
        match self.counts().periods.get(&start) {
            Some(p) => p.clone(),
            None => PeriodAggregates::new(
                start,
                start.saturating_add(i64::try_from(period_secs.max(1)).unwrap_or(i64::MAX)),
            ),
        }
    }

    /// Take every period out (for a hand-off): counts recorded from now
    /// on start afresh. Give them back with [`Reports::restore`] if the
    /// hand-off fails, or [`Reports::handed`] once a peer has them.
    pub(crate) fn take_all(&self) -> Vec<PeriodAggregates> {
        let mut counts = self.counts();
        counts.dirty.clear();
        std::mem::take(&mut counts.periods)
            .into_values()
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// Put back periods taken out (their hand-off failed), to be written
    /// at the next flush.
    pub(crate) fn restore(&self, periods: &[PeriodAggregates]) {
        let mut counts = self.counts();
        for p in periods {
            counts
                .periods
                .entry(p.start)
                .or_insert_with(|| PeriodAggregates::new(p.start, p.end))
                .merge(p);
            counts.dirty.insert(p.start);
        }
    }

    /// Add a peer's periods to ours and write them before returning: the
    /// peer deletes its own once we say we have them.
    pub(crate) fn merge_in(&self, periods: &[PeriodAggregates]) -> Result<(), StoreError> {
        self.restore(periods);
        self.flush()
    }

    /// A peer has the periods `handed` (taken with [`Reports::take_all`]):
    /// delete their files, but for counts recorded here since, which the
    /// next flush writes in their place.
    pub(crate) fn handed(&self, handed: &[PeriodAggregates]) -> Result<(), StoreError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let again: BTreeSet<i64> = self.counts().periods.keys().copied().collect();
        for h in handed.iter().filter(|h| !again.contains(&h.start)) {
            store.remove(h.start)?;
        }
        self.flush()
    }

    /// Write every changed period, and delete those past retention. A
    /// failed write leaves its period marked for the next flush.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let changed: Vec<PeriodAggregates> = {
            let mut counts = self.counts();
            let dirty = std::mem::take(&mut counts.dirty);
            dirty
                .iter()
                .filter_map(|s| counts.periods.get(s).cloned())
                .collect()
        };
        let mut first_error = None;
        for p in &changed {
            if let Err(e) = store.write(p) {
                self.counts().dirty.insert(p.start);
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Delete the periods that ended before `now - RETENTION_SECS`.
    pub(crate) fn prune(&self, now: i64) -> Result<(), StoreError> {
        let oldest = now.saturating_sub(RETENTION_SECS);
        let gone: Vec<i64> = {
            let mut counts = self.counts();
            let gone: Vec<i64> = counts
                .periods
                .iter()
                .filter(|(_, p)| p.end < oldest)
                .map(|(s, _)| *s)
                .collect();
            for s in &gone {
                counts.periods.remove(s);
                counts.dirty.remove(s);
            }
            gone
        };
        match &self.inner.store {
            Some(store) => store.prune(&gone),
            None => Ok(()),
        }
    }

    /// Flush every [`FLUSH_INTERVAL`] and prune once an hour, until the
    /// task is dropped.
    pub(crate) async fn run(self) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        let mut last_prune = i64::MIN;
        loop {
            tick.tick().await;
            if let Err(e) = self.flush() {
                tracing::warn!(error = %e, "cannot write the report aggregates; will retry");
            }
            let now = jiff::Timestamp::now().as_second();
            if now.saturating_sub(last_prune) >= 3600 {
                last_prune = now;
                if let Err(e) = self.prune(now) {
                    tracing::warn!(error = %e, "cannot delete old report aggregates");
                }
            }
        }
    }
}
