//! Timing for the `#[ignore]`d measurement tests: the machine these run on
//! is shared, so each figure is taken over several rounds and both the
//! best and the median round are reported.

use std::time::Instant;

/// Rounds per figure.
const ROUNDS: usize = 5;

/// Nanoseconds per call of `lookup` over `probes` (best round, median
/// round) and how many calls returned true.
pub(crate) fn per_lookup<T>(probes: &[T], lookup: impl Fn(&T) -> bool) -> (u128, u128, usize) {
    let mut rounds = Vec::with_capacity(ROUNDS);
    let mut hits = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        hits = probes
            .iter()
            .filter(|p| std::hint::black_box(lookup(p)))
            .count();
        rounds.push(t.elapsed().as_nanos() / probes.len().max(1) as u128);
    }
    rounds.sort_unstable();
    (rounds[0], rounds[ROUNDS / 2], hits)
}
