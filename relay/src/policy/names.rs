//! Blocked domain names (exact and `*.` wildcards) and sender addresses.
//!
//! Both are hash sets of normalised strings. A name lookup probes the exact
//! set once, then the wildcard set once per parent domain, longest first.
//! A bitmask of the label counts present in each set skips the probes that
//! cannot match (a list of `*.example.com` entries is only ever probed
//! with two-label parents), so most lookups cost one or two probes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use mailrelay_crds::compile::normalize;

/// Names and wildcard suffixes, each with a value.
#[derive(Clone, Debug)]
pub(crate) struct NameSet<V> {
    exact: HashMap<Box<str>, V>,
    /// `spam.example` here blocks every name under `spam.example`.
    wildcard: HashMap<Box<str>, V>,
    /// Bit `n` set: some exact entry has `n` labels.
    exact_labels: u128,
    /// Bit `n` set: some wildcard entry has `n` labels.
    wildcard_labels: u128,
}

impl<V> Default for NameSet<V> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            exact_labels: 0,
            wildcard_labels: 0,
        }
    }
}

/// The mask bit for a name of `labels` labels; none past 127 (RFC 1035
/// names have at most 127 labels, so no entry has more).
fn label_bit(labels: usize) -> u128 {
    u32::try_from(labels)
        .ok()
        .and_then(|n| 1u128.checked_shl(n))
        .unwrap_or(0)
}

fn label_count(name: &str) -> usize {
    memchr::memchr_iter(b'.', name.as_bytes()).count() + 1
}

/// What a name lookup matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NameHit<'a, V> {
    /// The listed name (for a wildcard, the domain under which it matches).
    pub entry: &'a str,
    pub wildcard: bool,
    pub value: &'a V,
}

impl<V> NameSet<V> {
    /// Build from `(name, wildcard, value)`. A name listed more than once
    /// keeps the first value given (callers pass rule order). Names that
    /// do not normalise are left out: the compiler has already reported
    /// them, and they could never match a normalised lookup anyway.
    pub(crate) fn build(items: impl IntoIterator<Item = (String, bool, V)>) -> Self {
        let mut set = Self::default();
        for (name, wildcard, value) in items {
            let Some(norm) = normalize_name(&name) else {
                tracing::warn!(name, "blocked name does not normalise; left out");
                continue;
            };
            let bit = label_bit(label_count(&norm));
            let map = if wildcard {
                set.wildcard_labels |= bit;
                &mut set.wildcard
            } else {
                set.exact_labels |= bit;
                &mut set.exact
            };
            if let Entry::Vacant(e) = map.entry(Box::from(norm.as_ref())) {
                e.insert(value);
            }
        }
        set
    }

    /// The most specific entry matching `name`: the name itself, else the
    /// closest wildcard parent. `*.spam.example` matches `a.spam.example`
    /// and `x.y.spam.example` but not `spam.example` itself.
    pub(crate) fn lookup(&self, name: &str) -> Option<NameHit<'_, V>> {
        let name = normalize_name(name)?;
        let name = name.as_ref();
        let mut labels = label_count(name);
        if self.exact_labels & label_bit(labels) != 0
            && let Some((entry, value)) = self.exact.get_key_value(name)
        {
            return Some(NameHit {
                entry,
                wildcard: false,
                value,
            });
        }
        if self.wildcard_labels == 0 {
            return None;
        }
        memchr::memchr_iter(b'.', name.as_bytes()).find_map(|dot| {
            // The parent after this dot has one label fewer.
            labels -= 1;
            if self.wildcard_labels & label_bit(labels) == 0 {
                return None;
            }
            let parent = name.get(dot + 1..)?;
            self.wildcard
                .get_key_value(parent)
                .map(|(entry, value)| NameHit {
                    entry,
                    wildcard: true,
                    value,
                })
        })
    }

    /// Entries, exact and wildcard.
    pub(crate) fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

/// Sender addresses, each with a value.
#[derive(Clone, Debug)]
pub(crate) struct AddressSet<V> {
    map: HashMap<Box<str>, V>,
}

impl<V> Default for AddressSet<V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
        }
    }
}

impl<V> AddressSet<V> {
    /// Build from `(address, value)`; the first value of an address wins.
    pub(crate) fn build(items: impl IntoIterator<Item = (String, V)>) -> Self {
        let mut set = Self::default();
        for (address, value) in items {
            let Some(norm) = normalize_address(&address) else {
                tracing::warn!(address, "blocked sender does not normalise; left out");
                continue;
            };
            if let Entry::Vacant(e) = set.map.entry(Box::from(norm.as_ref())) {
                e.insert(value);
            }
        }
        set
    }

    /// The entry equal to `address` after lower-casing, if any.
    pub(crate) fn lookup(&self, address: &str) -> Option<(&str, &V)> {
        let address = normalize_address(address)?;
        self.map
            .get_key_value(address.as_ref())
            .map(|(k, v)| (k.as_ref(), v))
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// A name as the compiled config spells it: ASCII lower case without one
/// trailing dot. ASCII input (nearly all of it) is handled without IDNA and
/// without allocating when already lower case; anything else goes through
/// the compiler's own [`normalize::domain_name`] so U-labels compare equal
/// to the A-labels in the config. `None`: not a name that could match.
pub(crate) fn normalize_name(input: &str) -> Option<Cow<'_, str>> {
    if !input.is_ascii() {
        return normalize::domain_name(input).ok().map(Cow::Owned);
    }
    let name = input.strip_suffix('.').unwrap_or(input);
    if name.is_empty() {
        return None;
    }
    Some(ascii_lower(name))
}

/// An address as the compiled config spells it: lower case, its domain
/// without a trailing dot; non-ASCII input through [`normalize::address`].
pub(crate) fn normalize_address(input: &str) -> Option<Cow<'_, str>> {
    if !input.is_ascii() {
        return normalize::address(input).ok().map(Cow::Owned);
    }
    let address = input.strip_suffix('.').unwrap_or(input);
    if address.is_empty() {
        return None;
    }
    Some(ascii_lower(address))
}

fn ascii_lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::time::Instant;

    fn set() -> NameSet<u32> {
        NameSet::build([
            ("spam.example".to_string(), true, 1),
            ("bad.example".to_string(), false, 2),
            ("deep.spam.example".to_string(), true, 3),
            ("xn--bcher-kva.example".to_string(), false, 4),
            ("bad.example".to_string(), false, 5),
            ("example".to_string(), true, 6),
        ])
    }

    #[test]
    fn names_match_exactly_or_under_a_wildcard() {
        let set = set();
        for (name, want) in [
            ("bad.example", Some(("bad.example", false, 2))),
            ("BAD.Example.", Some(("bad.example", false, 2))),
            ("a.spam.example", Some(("spam.example", true, 1))),
            ("x.y.spam.example", Some(("spam.example", true, 1))),
            // The closest wildcard wins.
            ("a.deep.spam.example", Some(("deep.spam.example", true, 3))),
            ("deep.spam.example", Some(("spam.example", true, 1))),
            // A wildcard does not match the domain itself.
            ("spam.example", Some(("example", true, 6))),
            ("bücher.example", Some(("xn--bcher-kva.example", false, 4))),
            ("BÜCHER.example.", Some(("xn--bcher-kva.example", false, 4))),
            ("example", None),
            ("good.test", None),
            ("notspam.example", Some(("example", true, 6))),
            ("", None),
            (".", None),
            ("ü ü", None),
        ] {
            let got = set.lookup(name).map(|h| (h.entry, h.wildcard, *h.value));
            assert_eq!(got, want, "{name:?}");
        }
    }

    #[test]
    fn a_wildcard_needs_a_label_boundary() {
        let set = NameSet::build([("spam.example".to_string(), true, ())]);
        assert!(set.lookup("notspam.example").is_none());
        assert!(set.lookup("spam.example").is_none());
        assert!(set.lookup("a.spam.example").is_some());
        assert!(set.lookup("a.spam.example.").is_some());
        assert!(set.lookup("spam.example.org").is_none());
    }

    #[test]
    fn senders_match_the_lower_cased_address() {
        let set = AddressSet::build([
            ("bad@example.com".to_string(), 1),
            ("x@xn--bcher-kva.example".to_string(), 2),
            ("bad@example.com".to_string(), 3),
        ]);
        assert_eq!(set.len(), 2);
        for (address, want) in [
            ("bad@example.com", Some(1)),
            ("BAD@Example.COM", Some(1)),
            ("bad@example.com.", Some(1)),
            ("X@Bücher.example", Some(2)),
            ("good@example.com", None),
            ("bad@example.com.org", None),
            ("", None),
            ("bad", None),
        ] {
            assert_eq!(set.lookup(address).map(|(_, v)| *v), want, "{address:?}");
        }
    }

    #[test]
    fn normalising_ascii_borrows_when_it_can() {
        assert!(matches!(
            normalize_name("mail.example"),
            Some(Cow::Borrowed("mail.example"))
        ));
        assert!(matches!(
            normalize_name("mail.example."),
            Some(Cow::Borrowed("mail.example"))
        ));
        assert_eq!(
            normalize_name("MAIL.example").as_deref(),
            Some("mail.example")
        );
        assert_eq!(normalize_name(""), None);
    }

    /// Random names over a small vocabulary, so that wildcards nest and
    /// lookups hit them.
    fn random_name(rng: &mut StdRng) -> String {
        const TLDS: [&str; 4] = ["example", "test", "invalid", "org"];
        let depth = rng.random_range(1..=3);
        let mut labels: Vec<String> = (0..depth)
            .map(|_| format!("l{}", rng.random_range(0..400)))
            .collect();
        labels.push(TLDS[rng.random_range(0..TLDS.len())].to_string());
        labels.join(".")
    }

    fn naive(entries: &[(String, bool, u32)], name: &str) -> Option<(String, bool, u32)> {
        let mut best: Option<&(String, bool, u32)> = None;
        for e in entries {
            let (entry, wildcard, _) = e;
            let matches = if *wildcard {
                name.len() > entry.len()
                    && name.ends_with(entry.as_str())
                    && name.as_bytes()[name.len() - entry.len() - 1] == b'.'
            } else {
                name == entry
            };
            // Exact beats wildcard; a longer wildcard beats a shorter one;
            // the first listed wins among equals.
            let better = |b: &(String, bool, u32)| match (b.1, *wildcard) {
                (true, false) => true,
                (false, _) => false,
                (true, true) => entry.len() > b.0.len(),
            };
            if matches && best.is_none_or(better) {
                best = Some(e);
            }
        }
        best.cloned()
    }

    #[test]
    fn a_million_random_names_agree_with_a_naive_scan() {
        let mut rng = StdRng::seed_from_u64(0xd0_a1);
        let entries: Vec<(String, bool, u32)> = (0..1_000_000)
            .map(|i| (random_name(&mut rng), rng.random_bool(0.3), i))
            .collect();
        let set = NameSet::build(entries.iter().cloned());
        let mut hits = 0;
        for i in 0..150 {
            let name = if i % 3 == 0 {
                random_name(&mut rng)
            } else {
                let (base, _, _) = &entries[rng.random_range(0..entries.len())];
                match i % 3 {
                    1 => base.clone(),
                    _ => format!("h{}.{base}", rng.random_range(0..5)),
                }
            };
            let want = naive(&entries, &name);
            hits += usize::from(want.is_some());
            let got = set
                .lookup(&name)
                .map(|h| (h.entry.to_string(), h.wildcard, *h.value));
            assert_eq!(got, want, "{name}");
        }
        assert!(hits > 75, "the sample should mostly hit, got {hits}");
    }

    #[test]
    #[ignore = "measurement: cargo test --release -p mailrelay policy -- --ignored --nocapture"]
    fn policy_names_measure_a_million_domains() {
        let mut rng = StdRng::seed_from_u64(11);
        let entries: Vec<(String, bool, u32)> = (0..1_000_000)
            .map(|i| {
                let name = format!(
                    "host{}.d{}.example",
                    rng.random::<u32>(),
                    rng.random_range(0..100_000)
                );
                (name, rng.random_bool(0.3), i)
            })
            .collect();
        let t = Instant::now();
        let set = NameSet::build(entries.iter().cloned());
        let build = t.elapsed();
        let probes: Vec<String> = (0..1_000_000)
            .map(|i| {
                let (base, _, _) = &entries[rng.random_range(0..entries.len())];
                match i % 3 {
                    0 => base.clone(),
                    1 => format!("mail.{base}"),
                    _ => format!("mail.host{}.example", rng.random::<u32>()),
                }
            })
            .collect();
        let (best, median, found) =
            crate::policy::measure::per_lookup(&probes, |n| set.lookup(n).is_some());
        println!(
            "names: built {} names in {build:?}; {} lookups ({found} hits): \
             {best} ns/lookup best round, {median} median",
            set.len(),
            probes.len()
        );
    }
}
