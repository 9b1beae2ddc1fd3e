//! This pod's share of the fleet's aggregate reports (DMARC, RFC 7489
//! §7.2; TLS-RPT, RFC 8460): counts per period, kept in memory on the
//! message path, written to `SPOOL_DIR/reports/` every few seconds, served
//! to the operator on the internal API (`ops::internal`) and handed to a
//! peer with the queue when the pod drains (`lifecycle::handoff::reports`).
//!
//! Recording is a lock, a hash lookup among the period's rows and an
//! add: no I/O per message. The rows' keys come from untrusted mail, so a
//! period keeps at most [`period::MAX_DMARC_ROWS`] DMARC rows and
//! [`period::MAX_TLS_ENTRIES`] TLS entries; counts for new rows past
//! that are dropped, counted in `mailrelay_report_rows_dropped_total{kind}`
//! and logged once per period (see `period`).
//!
//! Writes are serialised (`Inner::flushing`): the periodic flush, a
//! peer's hand-off being merged and our own drain may all write a period,
//! and each writes a snapshot taken under that lock, so an older snapshot
//! never replaces a newer one and no two writers share the temporary file.
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
pub(crate) mod period;
pub(crate) mod store;
pub(crate) mod tls;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mailrelay_crds::reports::{DmarcRow, PeriodAggregates, ReportsConfig, TlsRow};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use period::{Dropped, Period};

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
    /// Held while writing or deleting files (see the module's doc).
    flushing: Mutex<()>,
    /// `None` in unit tests of the recording alone.
    store: Option<Store>,
    /// Counts dropped at the row caps, by kind.
    dropped: Family<KindLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    kind: &'static str,
}

/// The metric of counts dropped at the row caps, registered in `registry`.
pub(crate) fn register_metrics(registry: &mut Registry) -> Family<KindLabel, Counter> {
    let dropped = Family::default();
    registry.register(
        "report_rows_dropped",
        "Messages (DMARC) or TLS sessions not counted in the aggregate reports: their period had no room for another row",
        dropped.clone(),
    );
    dropped
}

#[derive(Default)]
struct Counts {
    periods: BTreeMap<i64, Period>,
    /// Periods changed since they were last written.
    dirty: BTreeSet<i64>,
}

impl Reports {
    /// Counts kept in memory only.
    #[cfg(test)]
    pub(crate) fn in_memory() -> Reports {
        Reports::with(Counts::default(), None, Family::default())
    }

    fn with(counts: Counts, store: Option<Store>, dropped: Family<KindLabel, Counter>) -> Reports {
        Reports {
            inner: Arc::new(Inner {
                counts: Mutex::new(counts),
                flushing: Mutex::new(()),
                store,
                dropped,
            }),
        }
    }

    /// Counts kept in `store`, with what it already holds loaded; counts
    /// dropped at the caps go to `dropped`.
    pub(crate) fn open(store: Store, dropped: Family<KindLabel, Counter>) -> Reports {
        let loaded = store.load_all();
        let reports = Reports::with(Counts::default(), Some(store), dropped);
        reports.restore(&loaded);
        // What was just read from disk needs no writing back.
        reports.counts().dirty.clear();
        reports
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.inner.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count into the period starting at `start` (ending at `end` if it
    /// is new), with the lock held.
    fn add_to(
        &self,
        counts: &mut Counts,
        start: i64,
        end: i64,
        f: impl FnOnce(&mut Period) -> Dropped,
    ) {
        let period = counts
            .periods
            .entry(start)
            .or_insert_with(|| Period::new(start, end));
        let dropped = f(period);
        if dropped != Dropped::default() {
            for (kind, n) in [("dmarc", dropped.dmarc), ("tls", dropped.tls)] {
                if n > 0 {
                    self.inner
                        .dropped
                        .get_or_create(&KindLabel { kind })
                        .inc_by(n);
                }
            }
            if period.first_drop() {
                tracing::warn!(
                    period_start = start,
                    dmarc_dropped = dropped.dmarc,
                    tls_dropped = dropped.tls,
                    max_dmarc_rows = period::MAX_DMARC_ROWS,
                    max_tls_entries = period::MAX_TLS_ENTRIES,
                    "report period full: counts for new rows are dropped until it ends \
                     (mailrelay_report_rows_dropped_total counts them; logged once per period)"
                );
            }
        }
        counts.dirty.insert(start);
    }

    fn add(&self, config: &ReportsConfig, now: i64, f: impl FnOnce(&mut Period) -> Dropped) {
        let start = config.period_start(now);
        let end =
            start.saturating_add(i64::try_from(config.period_secs.max(1)).unwrap_or(i64::MAX));
        let mut counts = self.counts();
        self.add_to(&mut counts, start, end, f);
    }

    /// Count a DMARC row at `now` if `config` asks for DMARC reports.
    pub(crate) fn dmarc(&self, config: Option<&ReportsConfig>, now: i64, row: DmarcRow) {
        if let Some(c) = config.filter(|c| c.dmarc) {
            self.add(c, now, |p| Dropped {
                dmarc: p.add_dmarc(row),
                tls: 0,
            });
        }
    }

    /// Count a TLS row at `now` if `config` asks for TLS reports.
    pub(crate) fn tls(&self, config: Option<&ReportsConfig>, now: i64, row: TlsRow) {
        if let Some(c) = config.filter(|c| c.tls_rpt) {
            self.add(c, now, |p| Dropped {
                dmarc: 0,
                tls: p.add_tls(row),
            });
        }
    }

    /// The period starting at `start`: what it counted, or empty with
    /// `start + period_secs` for its end.
    pub(crate) fn period(&self, start: i64, period_secs: u64) -> PeriodAggregates {
        match self.counts().periods.get(&start) {
            Some(p) => p.aggregates().clone(),
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
            .map(Period::into_aggregates)
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// Put back periods taken out (their hand-off failed), to be written
    /// at the next flush.
    pub(crate) fn restore(&self, periods: &[PeriodAggregates]) {
        let mut counts = self.counts();
        for p in periods {
            self.add_to(&mut counts, p.start, p.end, |period| period.merge(p));
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
        {
            let _writing = self.writing();
            let again: BTreeSet<i64> = self.counts().periods.keys().copied().collect();
            for h in handed.iter().filter(|h| !again.contains(&h.start)) {
                store.remove(h.start)?;
            }
        }
        self.flush()
    }

    fn writing(&self) -> MutexGuard<'_, ()> {
        self.inner
            .flushing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Write every changed period, and delete those past retention. A
    /// failed write leaves its period marked for the next flush.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        // The snapshot is taken under the write lock: whoever takes it
        // later writes later.
        let _writing = self.writing();
        let changed: Vec<PeriodAggregates> = {
            let mut counts = self.counts();
            let dirty = std::mem::take(&mut counts.dirty);
            dirty
                .iter()
                .filter_map(|s| counts.periods.get(s).map(|p| p.aggregates().clone()))
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
                .filter(|(_, p)| p.aggregates().end < oldest)
                .map(|(s, _)| *s)
                .collect();
            for s in &gone {
                counts.periods.remove(s);
                counts.dirty.remove(s);
            }
            gone
        };
        match &self.inner.store {
            Some(store) => {
                let _writing = self.writing();
                store.prune(&gone)
            }
            None => Ok(()),
        }
    }

    /// Flush every [`FLUSH_INTERVAL`] and prune once an hour, until the
    /// task is dropped. The file work (fsyncs) runs on the blocking pool,
    /// never on a runtime worker that sessions need.
    pub(crate) async fn run(self) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        let mut last_prune = i64::MIN;
        loop {
            tick.tick().await;
            let now = jiff::Timestamp::now().as_second();
            let prune = now.saturating_sub(last_prune) >= 3600;
            if prune {
                last_prune = now;
            }
            let me = self.clone();
            let done = tokio::task::spawn_blocking(move || {
                if let Err(e) = me.flush() {
                    tracing::warn!(error = %e, "cannot write the report aggregates; will retry");
                }
                if prune && let Err(e) = me.prune(now) {
                    tracing::warn!(error = %e, "cannot delete old report aggregates");
                }
            })
            .await;
            if let Err(e) = done {
                tracing::error!(error = %e, "writing the report aggregates failed");
            }
        }
    }
}
