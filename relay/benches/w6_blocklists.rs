//! W6 of the benchmark harness: 1,000,000 CIDRs (half IPv4, half IPv6)
//! and 1,000,000 domains in one Blocklist — how long `compile()` and the
//! relay's lookup structures take to build, how much memory they hold,
//! and what one check costs. Not a criterion bench (one big run, its own
//! output): `cargo bench -p mailrelay --bench w6_blocklists [-- N]`.
//! Prints one JSON line.

mod common;

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use mailrelay::policy::{NameRole, Policy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Resident and peak resident memory of this process, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Nanoseconds per call, the median of five rounds.
fn per_call<T>(probes: &[T], f: impl Fn(&T) -> bool) -> (f64, usize) {
    let mut rounds = Vec::new();
    let mut hits = 0;
    for _ in 0..5 {
        let t = Instant::now();
        hits = probes.iter().filter(|p| black_box(f(p))).count();
        rounds.push(t.elapsed().as_nanos() as f64 / probes.len().max(1) as f64);
    }
    rounds.sort_by(f64::total_cmp);
    (rounds[2], hits)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let cidrs = common::cidrs(n, 7);
    let names = common::names(n);
    // Probes: half inside listed networks / names, half random.
    let mut rng = StdRng::seed_from_u64(11);
    let ip_probes: Vec<IpAddr> = (0..1_000_000)
        .map(|i| {
            let listed = &cidrs[rng.random_range(0..n)];
            let ip: IpAddr = listed
                .split('/')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(IpAddr::from([0, 0, 0, 0]));
            match (i % 2, ip) {
                (0, ip) => ip,
                (_, IpAddr::V4(_)) => IpAddr::from(rng.random::<[u8; 4]>()),
                (_, IpAddr::V6(_)) => IpAddr::from(rng.random::<[u8; 16]>()),
            }
        })
        .collect();
    let name_probes: Vec<String> = (0..1_000_000)
        .map(|i| {
            let k = rng.random_range(0..n);
            match i % 4 {
                0 if k % 3 == 0 => format!("mail.w{k}.example"),
                0 | 1 => format!("h{k}.p{}.example", k % 97),
                2 => format!("x{k}.unlisted.example"),
                _ => format!("sub.h{k}.p{}.example", k % 97),
            }
        })
        .collect();
    let relay = common::relay();
    let blocklist = common::blocklist(cidrs, names);
    // What the relay holds is measured from here: the inputs are freed
    // after compiling (the allocator may keep some of that memory).
    let (rss0, _) = memory();

    let t = Instant::now();
    let blocklists = [blocklist];
    let compiled = match mailrelay_crds::compile(&relay, &[], &blocklists) {
        Ok(c) => c,
        Err(problems) => panic!("the bench Relay does not compile: {problems:?}"),
    };
    let compile_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let policy = Policy::build(&compiled.config.policy, 0);
    let build_secs = t.elapsed().as_secs_f64();
    let problems = compiled.problems.len();
    drop(compiled);
    drop(blocklists);
    let (rss1, peak) = memory();

    let (ip_ns, ip_hits) = per_call(&ip_probes, |ip| policy.check_ip(*ip).is_some());
    let (name_ns, name_hits) = per_call(&name_probes, |name| {
        policy.check_name(NameRole::Helo, name).is_some()
    });
    println!(
        "{{\"cidrs\":{n},\"domains\":{n},\"entries\":{},\"problems\":{problems},\
         \"compile_secs\":{compile_secs:.3},\"policy_build_secs\":{build_secs:.3},\
         \"total_secs\":{:.3},\"rss_mib\":{:.0},\"peak_rss_mib\":{:.0},\
         \"ip_lookup_ns\":{ip_ns:.0},\"ip_hit_share\":{:.2},\
         \"name_lookup_ns\":{name_ns:.0},\"name_hit_share\":{:.2},\
         \"ip_lookups_per_s\":{:.0},\"name_lookups_per_s\":{:.0}}}",
        policy.entry_count(),
        compile_secs + build_secs,
        rss1.saturating_sub(rss0) as f64 / 1024.0,
        peak as f64 / 1024.0,
        ip_hits as f64 / ip_probes.len() as f64,
        name_hits as f64 / name_probes.len() as f64,
        1e9 / ip_ns,
        1e9 / name_ns,
    );
}
