//! Longest-prefix match over IPv4 and IPv6 networks.
//!
//! The networks are flattened at build time into a sorted table of
//! disjoint address ranges, each labelled with the most specific network
//! that covers it (or none). A lookup is then one binary search over the
//! range starts: O(log n) whatever the mix of prefix lengths, so a miss
//! (the common case: most clients are not listed) costs the same ~21
//! comparisons as a hit with a million entries. A hash map per prefix
//! length would need up to 129 probes for an IPv6 miss when every length
//! is present; a trie needs pointer chasing per bit. The table is two flat
//! arrays (starts, labels), which also keeps it compact and cache-friendly.

use std::net::IpAddr;

use ipnet::IpNet;
use mailrelay_crds::compile::normalize;

/// No network covers the range.
const NONE: u32 = u32::MAX;

/// A set of networks, each with a value, answering longest-prefix lookups.
#[derive(Clone, Debug)]
pub(crate) struct IpSet<V> {
    /// The networks kept, with their values; the tables index into it.
    entries: Vec<(IpNet, V)>,
    v4: RangeTable<u32>,
    v6: RangeTable<u128>,
}

impl<V> Default for IpSet<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            v4: RangeTable::empty(),
            v6: RangeTable::empty(),
        }
    }
}

impl<V> IpSet<V> {
    /// Build from networks and values. Host bits are cleared. When the same
    /// network comes more than once, the first one given wins: callers pass
    /// entries in rule order, so that is the strictest rule.
    pub(crate) fn build(items: impl IntoIterator<Item = (IpNet, V)>) -> Self {
        let mut entries: Vec<(IpNet, V)> =
            items.into_iter().map(|(net, v)| (net.trunc(), v)).collect();
        // Stable, so equal networks keep their given order for dedup below.
        entries.sort_by_key(|(net, _)| *net);
        entries.dedup_by(|later, first| later.0 == first.0);

        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, (net, _)) in entries.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(NONE);
            match net {
                IpNet::V4(n) => v4.push(Prefix {
                    start: u32::from(n.network()),
                    end: u32::from(n.broadcast()),
                    index,
                }),
                IpNet::V6(n) => v6.push(Prefix {
                    start: u128::from(n.network()),
                    end: u128::from(n.broadcast()),
                    index,
                }),
            }
        }
        Self {
            entries,
            v4: RangeTable::build(v4),
            v6: RangeTable::build(v6),
        }
    }

    /// The most specific network containing `ip`, and its value. An
    /// IPv4-mapped IPv6 address is looked up as the IPv4 address it stands
    /// for, as the compiled networks are unmapped the same way.
    pub(crate) fn lookup(&self, ip: IpAddr) -> Option<(&IpNet, &V)> {
        let index = match normalize::unmap_addr(ip) {
            IpAddr::V4(a) => self.v4.find(u32::from(a)),
            IpAddr::V6(a) => self.v6.find(u128::from(a)),
        }?;
        self.entries
            .get(usize::try_from(index).ok()?)
            .map(|(net, v)| (net, v))
    }

    /// Networks in the set (after dropping duplicates).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// An address as an unsigned integer, for either family.
trait Key: Copy + Ord + Default {
    /// The next address, or `None` past the last one.
    fn succ(self) -> Option<Self>;
}

impl Key for u32 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Key for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// One network as an inclusive address range.
#[derive(Clone, Copy, Debug)]
struct Prefix<K> {
    start: K,
    end: K,
    index: u32,
}

/// Disjoint ranges covering the whole address space, in order: range `i`
/// runs from `ranges[i].0` up to the next range's start (exclusive) and
/// belongs to entry `ranges[i].1` (or none).
///
/// `top` holds the start of every block of [`block_len`] ranges: a lookup
/// searches it first (small enough to stay in cache), then one block of
/// about two cache lines, which carries the labels too. A plain binary
/// search over a million starts misses the cache at nearly every step
/// once the table outgrows L2; this layout costs one or two misses.
#[derive(Clone, Debug)]
struct RangeTable<K> {
    ranges: Vec<(K, u32)>,
    top: Vec<K>,
}

/// Ranges per block: about two cache lines' worth.
const fn block_len<K>() -> usize {
    let n = 128 / std::mem::size_of::<(K, u32)>();
    if n == 0 { 1 } else { n }
}

impl<K: Key> RangeTable<K> {
    fn empty() -> Self {
        Self {
            ranges: Vec::new(),
            top: Vec::new(),
        }
    }

    /// Sweep the prefixes in address order with a stack of the ones still
    /// open. CIDR networks are either nested or disjoint, never partly
    /// overlapping, so the innermost open prefix always owns the address.
    fn build(mut prefixes: Vec<Prefix<K>>) -> Self {
        // Outer before inner where they start together.
        prefixes.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let mut table = Self {
            ranges: Vec::with_capacity(prefixes.len() * 2 + 1),
            top: Vec::new(),
        };
        table.push(K::default(), NONE);
        let mut open: Vec<Prefix<K>> = Vec::new();
        for p in prefixes {
            table.close_before(&mut open, Some(p.start));
            table.push(p.start, p.index);
            open.push(p);
        }
        table.close_before(&mut open, None);
        table.ranges.shrink_to_fit();
        table.top = table
            .ranges
            .iter()
            .step_by(block_len::<K>())
            .map(|(start, _)| *start)
            .collect();
        table
    }

    /// Close every open prefix that ends before `next` (all when `None`):
    /// after its end, the enclosing prefix (or none) owns the addresses.
    fn close_before(&mut self, open: &mut Vec<Prefix<K>>, next: Option<K>) {
        while let Some(top) = open.last().copied() {
            if next.is_some_and(|n| top.end >= n) {
                break;
            }
            open.pop();
            let Some(after) = top.end.succ() else {
                // The range ran to the last address: nothing follows.
                continue;
            };
            let label = open.last().map_or(NONE, |p| p.index);
            self.push(after, label);
        }
    }

    /// Append a range start, replacing a range that would be empty and
    /// merging with the previous range when the label is the same.
    fn push(&mut self, start: K, label: u32) {
        if self.ranges.last().is_some_and(|(s, _)| *s == start) {
            self.ranges.pop();
        }
        if self.ranges.last().is_some_and(|(_, l)| *l == label) {
            return;
        }
        self.ranges.push((start, label));
    }

    fn find(&self, addr: K) -> Option<u32> {
        // The first range starts at address 0, so both searches find a
        // start at or below `addr` whenever the table is not empty.
        let block = self.top.partition_point(|s| *s <= addr).checked_sub(1)?;
        let lo = block * block_len::<K>();
        let hi = (lo + block_len::<K>()).min(self.ranges.len());
        let i = self
            .ranges
            .get(lo..hi)?
            .partition_point(|(s, _)| *s <= addr);
        let (_, label) = *self.ranges.get((lo + i).checked_sub(1)?)?;
        (label != NONE).then_some(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Instant;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn lookups_take_the_longest_matching_prefix() {
        let set = IpSet::build([
            (net("10.0.0.0/8"), "ten"),
            (net("10.1.0.0/16"), "ten-one"),
            (net("10.1.2.3/32"), "host"),
            (net("192.0.2.0/24"), "doc"),
            (net("2001:db8::/32"), "v6-doc"),
            (net("2001:db8:1::/48"), "v6-one"),
            (net("::/0"), "all-v6"),
        ]);
        for (addr, want) in [
            ("10.9.9.9", Some("ten")),
            ("10.1.9.9", Some("ten-one")),
            ("10.1.2.3", Some("host")),
            ("10.1.2.4", Some("ten-one")),
            ("10.2.0.0", Some("ten")),
            ("11.0.0.0", None),
            ("9.255.255.255", None),
            ("192.0.2.255", Some("doc")),
            ("192.0.3.0", None),
            ("0.0.0.0", None),
            ("255.255.255.255", None),
            ("2001:db8:1::5", Some("v6-one")),
            ("2001:db8:2::5", Some("v6-doc")),
            ("2001:db9::", Some("all-v6")),
            ("::", Some("all-v6")),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("all-v6")),
            // IPv4-mapped clients are looked up as IPv4, not under ::/0.
            ("::ffff:10.1.2.3", Some("host")),
            ("::ffff:11.0.0.0", None),
        ] {
            assert_eq!(set.lookup(ip(addr)).map(|(_, v)| *v), want, "{addr}");
        }
    }

    #[test]
    fn lookups_report_the_matching_network() {
        let set = IpSet::build([(net("198.51.100.0/24"), 1u32)]);
        let (found, rule) = set.lookup(ip("198.51.100.77")).expect("hit");
        assert_eq!((*found, *rule), (net("198.51.100.0/24"), 1));
    }

    #[test]
    fn the_first_listing_of_a_network_wins_and_host_bits_are_cleared() {
        let set = IpSet::build([
            (net("192.0.2.0/24"), 0u32),
            (net("192.0.2.99/24"), 1),
            (net("192.0.2.0/24"), 2),
        ]);
        assert_eq!(set.len(), 1);
        assert_eq!(set.lookup(ip("192.0.2.1")).map(|(_, r)| *r), Some(0));
    }

    #[test]
    fn edges_of_the_address_space() {
        let set = IpSet::build([
            (net("0.0.0.0/0"), 'a'),
            (net("255.255.255.255/32"), 'b'),
            (net("0.0.0.0/32"), 'c'),
            (net("255.255.255.0/24"), 'd'),
        ]);
        for (addr, want) in [
            ("0.0.0.0", 'c'),
            ("0.0.0.1", 'a'),
            ("255.255.254.255", 'a'),
            ("255.255.255.0", 'd'),
            ("255.255.255.254", 'd'),
            ("255.255.255.255", 'b'),
        ] {
            assert_eq!(set.lookup(ip(addr)).map(|(_, v)| *v), Some(want), "{addr}");
        }
        assert!(IpSet::<()>::build([]).lookup(ip("1.2.3.4")).is_none());
        assert!(IpSet::<()>::default().lookup(ip("::1")).is_none());
    }

    #[test]
    fn adjacent_and_siblings_nets_do_not_leak() {
        let set = IpSet::build([
            (net("10.0.0.0/25"), 1),
            (net("10.0.0.128/25"), 2),
            (net("10.0.0.0/24"), 3),
            (net("10.0.1.0/24"), 4),
        ]);
        for (addr, want) in [
            ("10.0.0.127", 1),
            ("10.0.0.128", 2),
            ("10.0.0.255", 2),
            ("10.0.1.0", 4),
        ] {
            assert_eq!(set.lookup(ip(addr)).map(|(_, v)| *v), Some(want), "{addr}");
        }
        assert!(set.lookup(ip("10.0.2.0")).is_none());
    }

    /// A random network: IPv4 or IPv6, any prefix length, biased towards
    /// the lengths real lists use so that nesting is common.
    fn random_net(rng: &mut StdRng) -> IpNet {
        if rng.random_bool(0.6) {
            let len = if rng.random_bool(0.5) {
                rng.random_range(8..=32)
            } else {
                rng.random_range(0..=32)
            };
            // A small /8 range so that networks overlap and nest.
            let addr = Ipv4Addr::from(rng.random::<u32>() & 0x0fff_ffff);
            IpNet::new(IpAddr::V4(addr), len).map_or_else(|_| net("0.0.0.0/0"), |n| n.trunc())
        } else {
            let len = rng.random_range(0..=128);
            let addr =
                Ipv6Addr::from(rng.random::<u128>() & (((u128::MAX >> 100) << 100) | 0xffff));
            IpNet::new(IpAddr::V6(addr), len).map_or_else(|_| net("::/0"), |n| n.trunc())
        }
    }

    /// A random address inside `net`.
    fn inside(rng: &mut StdRng, net: &IpNet) -> IpAddr {
        match net {
            IpNet::V4(n) => {
                let host = rng.random::<u32>() & !u32::from(n.netmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let host = rng.random::<u128>() & !u128::from(n.netmask());
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }

    /// A network as (is IPv6, first address, last address, prefix length),
    /// so that the naive scan below is cheap even in a debug build.
    type Range = (bool, u128, u128, u8);

    fn range(net: &IpNet) -> Range {
        match net {
            IpNet::V4(n) => (
                false,
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
                n.prefix_len(),
            ),
            IpNet::V6(n) => (
                true,
                u128::from(n.network()),
                u128::from(n.broadcast()),
                n.prefix_len(),
            ),
        }
    }

    /// The obvious algorithm: scan every network, keep the longest match
    /// (the first listed among equal networks).
    fn naive(nets: &[(Range, u32)], addr: IpAddr) -> Option<u32> {
        let (v6, a) = match addr {
            IpAddr::V4(a) => (false, u128::from(u32::from(a))),
            IpAddr::V6(a) => (true, u128::from(a)),
        };
        let mut best: Option<(u8, u32)> = None;
        for ((is_v6, start, end, len), v) in nets {
            if *is_v6 == v6 && (*start..=*end).contains(&a) && best.is_none_or(|(b, _)| *len > b) {
                best = Some((*len, *v));
            }
        }
        best.map(|(_, v)| v)
    }

    #[test]
    fn a_million_random_networks_agree_with_a_naive_scan() {
        let mut rng = StdRng::seed_from_u64(0x1b5e7);
        let nets: Vec<(IpNet, u32)> = (0..1_000_000).map(|i| (random_net(&mut rng), i)).collect();
        let set = IpSet::build(nets.iter().copied());
        let ranges: Vec<(Range, u32)> = nets.iter().map(|(n, v)| (range(n), *v)).collect();
        let mut hits = 0;
        // A linear scan of a million networks takes ~25 ms in a debug
        // build, so the sample is small; the sampled addresses are half
        // inside listed networks (hits), half random (mostly misses).
        for i in 0..120 {
            let addr = if i % 2 == 0 {
                let (n, _) = nets[rng.random_range(0..nets.len())];
                inside(&mut rng, &n)
            } else if i % 4 == 1 {
                IpAddr::V4(Ipv4Addr::from(rng.random::<u32>() & 0x0fff_ffff))
            } else {
                IpAddr::V6(Ipv6Addr::from(rng.random::<u128>()))
            };
            let want = naive(&ranges, addr);
            hits += usize::from(want.is_some());
            assert_eq!(set.lookup(addr).map(|(_, v)| *v), want, "{addr}");
        }
        assert!(hits >= 60, "half the sample should hit, got {hits}");
    }

    /// A network as a big list might hold one: IPv4 /16 to /32 (mostly
    /// /24 and /32) anywhere, IPv6 /32 to /128 in 2000::/3.
    fn listed_net(rng: &mut StdRng) -> IpNet {
        if rng.random_bool(0.7) {
            let len = match rng.random_range(0..10) {
                0..=3 => 32,
                4..=6 => 24,
                _ => rng.random_range(16..=32),
            };
            let addr = Ipv4Addr::from(rng.random::<u32>());
            IpNet::new(IpAddr::V4(addr), len).map_or_else(|_| net("0.0.0.0/0"), |n| n.trunc())
        } else {
            let len = match rng.random_range(0..10) {
                0..=3 => 128,
                4..=6 => 64,
                _ => rng.random_range(32..=128),
            };
            let addr = Ipv6Addr::from((1u128 << 125) | (rng.random::<u128>() >> 3));
            IpNet::new(IpAddr::V6(addr), len).map_or_else(|_| net("::/0"), |n| n.trunc())
        }
    }

    #[test]
    #[ignore = "measurement: cargo test --release -p mailrelay policy -- --ignored --nocapture"]
    fn policy_ipset_measure_a_million_networks() {
        let mut rng = StdRng::seed_from_u64(7);
        let nets: Vec<(IpNet, u32)> = (0..1_000_000).map(|i| (listed_net(&mut rng), i)).collect();
        let t = Instant::now();
        let set = IpSet::build(nets.iter().copied());
        let build = t.elapsed();
        let probes: Vec<IpAddr> = (0..1_000_000)
            // Half inside listed networks, half random (mostly misses).
            .map(|i| match i % 4 {
                0 | 2 => {
                    let n = nets[rng.random_range(0..nets.len())].0;
                    inside(&mut rng, &n)
                }
                1 => IpAddr::V4(Ipv4Addr::from(rng.random::<u32>())),
                _ => IpAddr::V6(Ipv6Addr::from((1u128 << 125) | (rng.random::<u128>() >> 3))),
            })
            .collect();
        let (best, median, found) =
            crate::policy::measure::per_lookup(&probes, |a| set.lookup(*a).is_some());
        println!(
            "ipset: built {} networks ({} ranges v4, {} v6) in {build:?}; \
             {} lookups ({found} hits): {best} ns/lookup best round, {median} median",
            set.len(),
            set.v4.ranges.len(),
            set.v6.ranges.len(),
            probes.len()
        );
    }
}
