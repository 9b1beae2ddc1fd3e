//! One period's counts in memory: the rows of `PeriodAggregates` (the
//! shape served and stored), indexed by key so that counting a message is
//! a hash lookup, and capped, because the keys come from untrusted mail:
//! every source IP (an IPv6 sender has billions) and every From: domain
//! makes a DMARC row, every MX name a TLS failure entry. The index holds
//! a copy of each key, so a period takes about twice its rows' memory,
//! bounded by the caps.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use mailrelay_crds::reports::{DmarcRow, PeriodAggregates, TlsFailure, TlsRow};

/// DMARC rows a period keeps; counts for new rows past it are dropped
/// (and counted in `mailrelay_report_rows_dropped_total{kind="dmarc"}`).
/// A row is a few hundred bytes in memory, on disk and in the report:
/// 20,000 of them is a few MiB, far more distinct senders than a relay's
/// honest traffic brings in a day.
pub(crate) const MAX_DMARC_ROWS: usize = 20_000;
/// TLS policies (rows) plus failure entries a period keeps, likewise
/// (`kind="tls"`).
pub(crate) const MAX_TLS_ENTRIES: usize = 20_000;
/// DKIM results kept per DMARC row: a message may carry any number of
/// signatures, and each distinct set would make a new row.
pub(crate) const MAX_DKIM_PER_ROW: usize = 8;

/// What a count did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub dmarc: u64,
    pub tls: u64,
}

/// A period's rows and their index.
pub(super) struct Period {
    agg: PeriodAggregates,
    /// Key (the row without its count) → place in `agg.dmarc`.
    dmarc: HashMap<DmarcRow, usize>,
    /// Policy key → place in `agg.tls`.
    tls: HashMap<TlsRow, usize>,
    /// (place in `agg.tls`, failure key) → place in that row's failures.
    failures: HashMap<(usize, TlsFailure), usize>,
    /// Whether a drop was logged: once per period is enough to explain.
    logged: bool,
}

impl Period {
    pub(super) fn new(start: i64, end: i64) -> Period {
        Period {
            agg: PeriodAggregates::new(start, end),
            dmarc: HashMap::new(),
            tls: HashMap::new(),
            failures: HashMap::new(),
            logged: false,
        }
    }

    pub(super) fn aggregates(&self) -> &PeriodAggregates {
        &self.agg
    }

    pub(super) fn into_aggregates(self) -> PeriodAggregates {
        self.agg
    }

    /// Count every row of `other` (the same period).
    pub(super) fn merge(&mut self, other: &PeriodAggregates) -> Dropped {
        let mut dropped = Dropped::default();
        for r in &other.dmarc {
            dropped.dmarc += self.add_dmarc(r.clone());
        }
        for r in &other.tls {
            dropped.tls += self.add_tls(r.clone());
        }
        dropped
    }

    /// Count `row`; the count dropped (0 or the row's).
    pub(super) fn add_dmarc(&mut self, mut row: DmarcRow) -> u64 {
        row.dkim.truncate(MAX_DKIM_PER_ROW);
        let full = self.agg.dmarc.len() >= MAX_DMARC_ROWS;
        match self.dmarc.entry(row.key()) {
            Entry::Occupied(e) => {
                let r = &mut self.agg.dmarc[*e.get()];
                r.count = r.count.saturating_add(row.count);
                0
            }
            Entry::Vacant(_) if full => row.count,
            Entry::Vacant(e) => {
                e.insert(self.agg.dmarc.len());
                self.agg.dmarc.push(row);
                0
            }
        }
    }

    fn tls_entries(&self) -> usize {
        self.agg.tls.len() + self.failures.len()
    }

    /// Count `row`; the sessions dropped.
    pub(super) fn add_tls(&mut self, row: TlsRow) -> u64 {
        let at = match self.tls.get(&row.key()) {
            Some(at) => *at,
            None if self.tls_entries() >= MAX_TLS_ENTRIES => {
                return row.successes + row.failures.iter().map(|f| f.count).sum::<u64>();
            }
            None => {
                let at = self.agg.tls.len();
                self.tls.insert(row.key(), at);
                // The key: the policy with no counts yet.
                self.agg.tls.push(row.key());
                at
            }
        };
        let mut dropped = 0;
        let successes = &mut self.agg.tls[at].successes;
        *successes = successes.saturating_add(row.successes);
        for f in row.failures {
            let full = self.tls_entries() >= MAX_TLS_ENTRIES;
            match self.failures.entry((at, f.key())) {
                Entry::Occupied(e) => {
                    let g = &mut self.agg.tls[at].failures[*e.get()];
                    g.count = g.count.saturating_add(f.count);
                }
                Entry::Vacant(_) if full => dropped += f.count,
                Entry::Vacant(e) => {
                    let failures = &mut self.agg.tls[at].failures;
                    e.insert(failures.len());
                    failures.push(f);
                }
            }
        }
        dropped
    }

    /// Whether this is the period's first drop (to log it once).
    pub(super) fn first_drop(&mut self) -> bool {
        !std::mem::replace(&mut self.logged, true)
    }
}

#[cfg(test)]
mod tests {
    use mailrelay_crds::reports::{
        Disposition, DkimAuth, PublishedPolicy, SpfAuth, TlsFailure, TlsPolicyType,
    };

    use super::*;

    fn dmarc(n: u32, dkim: usize) -> DmarcRow {
        DmarcRow {
            header_from: "example.org".into(),
            envelope_from: String::new(),
            source_ip: std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(n)).into(),
            policy: PublishedPolicy {
                domain: "example.org".into(),
                adkim: "r".into(),
                aspf: "r".into(),
                p: "none".into(),
                sp: "none".into(),
                pct: 100,
            },
            disposition: Disposition::None,
            dkim_aligned: false,
            spf_aligned: false,
            dkim: (0..dkim)
                .map(|i| DkimAuth {
                    domain: format!("d{i}.example"),
                    selector: "s".into(),
                    result: "fail".into(),
                })
                .collect(),
            spf: SpfAuth {
                domain: String::new(),
                scope: "helo".into(),
                result: "none".into(),
            },
            count: 1,
        }
    }

    fn tls(mx: u32) -> TlsRow {
        TlsRow {
            policy_domain: "example.net".into(),
            policy_type: TlsPolicyType::NoPolicyFound,
            policy_string: Vec::new(),
            mx_host: Vec::new(),
            successes: 0,
            failures: vec![TlsFailure {
                result_type: "starttls-not-supported".into(),
                sending_mta_ip: None,
                receiving_mx_hostname: format!("mx{mx}.example.net"),
                receiving_ip: None,
                additional_information: None,
                count: 1,
            }],
        }
    }

    #[test]
    fn dmarc_rows_stop_at_the_cap_while_existing_rows_still_count() {
        let mut p = Period::new(0, 3600);
        for n in 0..MAX_DMARC_ROWS as u32 {
            assert_eq!(p.add_dmarc(dmarc(n, 1)), 0);
        }
        assert_eq!(p.add_dmarc(dmarc(MAX_DMARC_ROWS as u32, 1)), 1, "a new row");
        assert_eq!(p.add_dmarc(dmarc(7, 1)), 0, "a known row");
        assert_eq!(p.aggregates().dmarc.len(), MAX_DMARC_ROWS);
        assert_eq!(p.aggregates().dmarc[7].count, 2);
        assert!(p.first_drop());
        assert!(!p.first_drop());
    }

    #[test]
    fn a_row_keeps_at_most_eight_dkim_results() {
        let mut p = Period::new(0, 3600);
        p.add_dmarc(dmarc(1, 50));
        assert_eq!(p.aggregates().dmarc[0].dkim.len(), MAX_DKIM_PER_ROW);
        // Rows that differ only past the eighth signature count together.
        p.add_dmarc(dmarc(1, 9));
        assert_eq!(p.aggregates().dmarc.len(), 1);
        assert_eq!(p.aggregates().dmarc[0].count, 2);
    }

    #[test]
    fn tls_entries_stop_at_the_cap_and_the_merge_reports_what_it_dropped() {
        let mut p = Period::new(0, 3600);
        // One policy row, then one failure entry per MX host.
        for mx in 0..(MAX_TLS_ENTRIES - 1) as u32 {
            assert_eq!(p.add_tls(tls(mx)), 0);
        }
        assert_eq!(p.aggregates().tls.len(), 1);
        assert_eq!(p.aggregates().tls[0].failures.len(), MAX_TLS_ENTRIES - 1);
        assert_eq!(p.add_tls(tls(MAX_TLS_ENTRIES as u32)), 1);
        assert_eq!(p.add_tls(tls(3)), 0, "a known entry");
        let mut more = PeriodAggregates::new(0, 3600);
        more.tls.push(tls(MAX_TLS_ENTRIES as u32 + 1));
        more.dmarc.push(dmarc(1, 0));
        assert_eq!(p.merge(&more), Dropped { dmarc: 0, tls: 1 });
    }
}
