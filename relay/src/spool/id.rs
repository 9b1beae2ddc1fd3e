//! Queue ids: short, printable, sortable by time, unique across restarts
//! and pods without coordination.
//!
//! An id is 105 bits written as 21 Crockford base32 characters:
//! 50 bits of unix milliseconds, 20 bits of a per-process counter and
//! 35 random bits. Time comes first so ids sort by arrival (the alphabet is
//! in ASCII order, so string order is numeric order). Within one process
//! the counter makes ids unique unless a million are made in the same
//! millisecond; across processes and restarts the random bits do (two ids
//! collide only if they share the millisecond, the counter value and all 35
//! random bits). Crockford's alphabet has no I, L, O or U, so an id read
//! aloud or retyped is unambiguous and never spells a word.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const TIME_BITS: u32 = 50;
const COUNTER_BITS: u32 = 20;
const RANDOM_BITS: u32 = 35;
/// Characters in an id: 105 bits / 5.
pub const QUEUE_ID_LEN: usize = 21;

/// A queue id. `Display` and `FromStr` use the 21-character form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(u128);

impl QueueId {
    /// Build an id from its parts; each is masked to its field width.
    pub(crate) fn from_parts(unix_millis: u64, counter: u32, random: u64) -> QueueId {
        let time = u128::from(unix_millis) & mask(TIME_BITS);
        let counter = u128::from(counter) & mask(COUNTER_BITS);
        let random = u128::from(random) & mask(RANDOM_BITS);
        QueueId(time << (COUNTER_BITS + RANDOM_BITS) | counter << RANDOM_BITS | random)
    }

    /// When the id was made (as the id source's clock said).
    #[cfg(test)]
    pub(crate) fn unix_millis(&self) -> u64 {
        // 50 bits always fit in a u64.
        u64::try_from(self.0 >> (COUNTER_BITS + RANDOM_BITS)).unwrap_or(u64::MAX)
    }
}

fn mask(bits: u32) -> u128 {
    (1u128 << bits) - 1
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; QUEUE_ID_LEN];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 5 * (QUEUE_ID_LEN - 1 - i);
            *c = ALPHABET[((self.0 >> shift) & 31) as usize];
        }
        // The alphabet is ASCII, so this cannot fail.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({self})")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseQueueIdError {
    #[error("a queue id has {QUEUE_ID_LEN} characters, not {0}")]
    Length(usize),
    #[error("{0:?} is not a Crockford base32 digit")]
    Digit(char),
}

impl FromStr for QueueId {
    type Err = ParseQueueIdError;

    /// Accepts lower case too, since people retype ids from logs.
    fn from_str(s: &str) -> Result<QueueId, ParseQueueIdError> {
        let mut value = 0u128;
        let mut count = 0;
        for c in s.chars() {
            let upper = c.to_ascii_uppercase();
            let digit = ALPHABET
                .iter()
                .position(|&a| char::from(a) == upper)
                .ok_or(ParseQueueIdError::Digit(c))?;
            count += 1;
            value = value << 5 | digit as u128;
        }
        if count != QUEUE_ID_LEN {
            return Err(ParseQueueIdError::Length(count));
        }
        Ok(QueueId(value))
    }
}

impl Serialize for QueueId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<QueueId, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where ids get their time and randomness: the seam tests use to assert
/// exact ids.
pub trait IdSource: Send + Sync {
    fn unix_millis(&self) -> u64;
    fn random_u64(&self) -> u64;
}

/// The wall clock and the thread-local CSPRNG.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemIdSource;

impl IdSource for SystemIdSource {
    fn unix_millis(&self) -> u64 {
        // A clock before 1970 is a broken host; 0 still yields unique ids.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn random_u64(&self) -> u64 {
        rand::random()
    }
}

/// Makes ids: cheap, lock-free, shareable between threads.
pub struct IdGenerator {
    source: Arc<dyn IdSource>,
    counter: AtomicU32,
}

impl IdGenerator {
    pub(crate) fn new(source: Arc<dyn IdSource>) -> IdGenerator {
        IdGenerator {
            source,
            counter: AtomicU32::new(0),
        }
    }

    pub(crate) fn next_id(&self) -> QueueId {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        QueueId::from_parts(self.source.unix_millis(), counter, self.source.random_u64())
    }
}

impl fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdGenerator")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    struct Fixed {
        millis: u64,
        random: u64,
    }

    impl IdSource for Fixed {
        fn unix_millis(&self) -> u64 {
            self.millis
        }
        fn random_u64(&self) -> u64 {
            self.random
        }
    }

    #[test]
    fn injected_clock_and_randomness_give_exact_ids() {
        let ids = IdGenerator::new(Arc::new(Fixed {
            millis: 1_700_000_000_000,
            random: 0xDEAD_BEEF_CAFE,
        }));
        let first = ids.next_id();
        let second = ids.next_id();
        assert_eq!(first.to_string(), "01HF7YAT000000PZEZJQY");
        assert_eq!(second.to_string(), "01HF7YAT000001PZEZJQY");
        assert_eq!(first.unix_millis(), 1_700_000_000_000);
        assert!(first < second);
    }

    #[test]
    fn parts_are_masked_to_their_fields() {
        let id = QueueId::from_parts(u64::MAX, u32::MAX, u64::MAX);
        assert_eq!(id.to_string(), "ZZZZZZZZZZZZZZZZZZZZZ");
        assert_eq!(
            QueueId::from_parts(0, 0, 0).to_string(),
            "000000000000000000000"
        );
    }

    #[test]
    fn a_hundred_thousand_system_ids_are_unique_and_sorted() {
        let ids = IdGenerator::new(Arc::new(SystemIdSource));
        let made: Vec<QueueId> = (0..100_000).map(|_| ids.next_id()).collect();
        let distinct: HashSet<_> = made.iter().collect();
        assert_eq!(distinct.len(), made.len());
        assert!(made.windows(2).all(|w| w[0] < w[1]), "ids sort by creation");
        let strings: HashSet<String> = made.iter().map(ToString::to_string).collect();
        assert_eq!(strings.len(), made.len());
    }

    #[test]
    fn two_generators_in_the_same_millisecond_differ_by_their_random_bits() {
        let a = IdGenerator::new(Arc::new(Fixed {
            millis: 5,
            random: 1,
        }));
        let b = IdGenerator::new(Arc::new(Fixed {
            millis: 5,
            random: 2,
        }));
        assert_ne!(a.next_id(), b.next_id());
    }

    #[test]
    fn parse_rejects_wrong_length_and_foreign_digits() {
        assert_eq!("ABC".parse::<QueueId>(), Err(ParseQueueIdError::Length(3)));
        assert_eq!(
            "01HF7YAT000000PZEZJQY0".parse::<QueueId>(),
            Err(ParseQueueIdError::Length(22))
        );
        assert_eq!(
            "01HF7YAT000000PZEZJQU".parse::<QueueId>(),
            Err(ParseQueueIdError::Digit('U'))
        );
        assert_eq!(
            "01HF7YAT000000PZEZJQ\u{e9}".parse::<QueueId>(),
            Err(ParseQueueIdError::Digit('\u{e9}'))
        );
    }

    #[test]
    fn parse_accepts_lower_case() {
        let id: QueueId = "01hf7yat000000pzezjqy".parse().unwrap();
        assert_eq!(id.to_string(), "01HF7YAT000000PZEZJQY");
    }

    #[test]
    fn serde_uses_the_string_form() {
        let id = QueueId::from_parts(1_700_000_000_000, 0, 0xDEAD_BEEF_CAFE);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"01HF7YAT000000PZEZJQY\"");
        assert_eq!(serde_json::from_str::<QueueId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<QueueId>("\"nope\"").is_err());
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(t in any::<u64>(), c in any::<u32>(), r in any::<u64>()) {
            let id = QueueId::from_parts(t, c, r);
            prop_assert_eq!(id.to_string().parse::<QueueId>(), Ok(id));
        }

        #[test]
        fn string_order_is_id_order(a in any::<(u64, u32, u64)>(), b in any::<(u64, u32, u64)>()) {
            let a = QueueId::from_parts(a.0, a.1, a.2);
            let b = QueueId::from_parts(b.0, b.1, b.2);
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
        }
    }
}
