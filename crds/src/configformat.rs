//! How the compiled config reaches a relay pod: the contract between the
//! operator's ConfigMap builder and the relay's loader (both use this
//! module, so they cannot drift apart).
//!
//! The operator stores the compiled JSON in ConfigMaps, all projected into
//! one read-only directory, [`CONFIG_DIR`]. The relay is started with
//! `--config CONFIG_DIR/relay.json` ([`CONFIG_FILE`]), and finds in that
//! directory exactly one of three forms:
//!
//! 1. **plain** — `relay.json`: the JSON itself. Used while the JSON, as
//!    serialised inside the ConfigMap, takes at most [`MAX_PAYLOAD_BYTES`].
//! 2. **compressed** — `relay.json.gz`: the JSON as one gzip stream (stored
//!    in `binaryData`). Used while its base64 text takes at most
//!    [`MAX_PAYLOAD_BYTES`].
//! 3. **sharded** — `relay.json.gz.000`, `relay.json.gz.001`, …: one gzip
//!    stream cut into pieces of at most [`SHARD_BYTES`], one per ConfigMap.
//!    Concatenated in key order (the keys sort as numbers: three digits)
//!    they are the stream.
//!
//! Every form also holds `relay.json.sha256`: the lower-case hex SHA-256 of
//! the uncompressed JSON. The ConfigMaps of one set are updated one after
//! another, so a relay can see a torn set (a new shard beside an old one):
//! the gzip trailer (CRC-32 and length) and this hash reject it, and the
//! relay keeps the config it runs until the next change of the directory.
//!
//! So the relay's loader is: read `PATH`; if it does not exist, gunzip
//! `PATH.gz`; if that does not exist, gunzip the concatenation of
//! `PATH.gz.NNN` from `000` up to the first missing number; then check
//! `PATH.sha256` when present. [`assemble`] is that loader over a map of
//! file names to bytes, and the tests hold the builders to it.
//!
//! Sizes: the API server refuses an object over 1 MiB (1,048,576 bytes,
//! metadata included). The payload limit leaves 124 KiB for metadata and
//! the hash key; a shard's base64 text is at most 900 KiB.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256, as stored under [`HASH_KEY`].
pub fn hex_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of hex digits (either case); `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Where the ConfigMaps are mounted in the relay pod.
pub const CONFIG_DIR: &str = "/etc/mailrelay";
/// What the relay's `--config` names.
pub const CONFIG_FILE: &str = "/etc/mailrelay/relay.json";
/// Key of the plain form.
pub const JSON_KEY: &str = "relay.json";
/// Key of the compressed form; shard keys add `.000`, `.001`, ….
pub const GZIP_KEY: &str = "relay.json.gz";
/// Key of the hex SHA-256 of the JSON.
pub const HASH_KEY: &str = "relay.json.sha256";
/// Largest payload of one ConfigMap, as serialised (JSON-escaped text, or
/// base64 for binary data).
pub const MAX_PAYLOAD_BYTES: usize = 900 * 1024;
/// Largest raw shard: its base64 text is exactly [`MAX_PAYLOAD_BYTES`].
pub const SHARD_BYTES: usize = MAX_PAYLOAD_BYTES / 4 * 3;
/// Most shards: 64 × 675 KiB of gzip holds far more than any relay should
/// load (hundreds of MiB of JSON).
pub const MAX_SHARDS: usize = 64;

/// The config in one of the three forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Plain,
    Compressed(Vec<u8>),
    Sharded(Vec<Vec<u8>>),
}

/// Why the config cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot compress the config: {0}")]
    Compress(std::io::Error),
    #[error(
        "the compiled config is {compressed} bytes after compression, more than {MAX_SHARDS} ConfigMaps of {SHARD_BYTES} bytes hold"
    )]
    TooLarge { compressed: usize },
}

/// Choose the form for `json`, compressing only when it does not fit.
pub fn encode(json: &str) -> Result<Payload, FormatError> {
    if escaped_len(json) <= MAX_PAYLOAD_BYTES {
        return Ok(Payload::Plain);
    }
    let gz = gzip(json.as_bytes()).map_err(FormatError::Compress)?;
    if base64_len(gz.len()) <= MAX_PAYLOAD_BYTES {
        return Ok(Payload::Compressed(gz));
    }
    let shards: Vec<Vec<u8>> = gz.chunks(SHARD_BYTES).map(<[u8]>::to_vec).collect();
    if shards.len() > MAX_SHARDS {
        return Err(FormatError::TooLarge {
            compressed: gz.len(),
        });
    }
    Ok(Payload::Sharded(shards))
}

/// Key of shard `i`.
pub fn shard_key(i: usize) -> String {
    format!("{GZIP_KEY}.{i:03}")
}

/// Bytes `text` takes as a JSON string value, quotes excluded: `"` and `\`
/// gain a backslash, other control characters become `\u00XX` (or a
/// two-byte escape). The compiled JSON is full of quotes, so this is up to
/// a quarter more than its length.
pub fn escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// Length of the standard, padded base64 text of `n` bytes.
pub fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// gzip with a fixed header (no name, mtime 0), so the same JSON always
/// gives the same bytes and an unchanged config is an unchanged object.
fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// Why the files of a config directory do not make a config.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("no {JSON_KEY}, {GZIP_KEY} or {GZIP_KEY}.000")]
    Missing,
    #[error("the gzip stream is broken or incomplete: {0}")]
    Gunzip(std::io::Error),
    #[error("the config is not UTF-8")]
    Utf8,
    #[error("{HASH_KEY} says {expected} but the config hashes to {actual}: a torn update")]
    Hash { expected: String, actual: String },
}

/// The relay's side: the JSON from the files of the config directory
/// (file name → contents). See the module documentation.
pub fn assemble(files: &BTreeMap<String, Vec<u8>>) -> Result<String, AssembleError> {
    let bytes = if let Some(json) = files.get(JSON_KEY) {
        json.clone()
    } else if let Some(gz) = files.get(GZIP_KEY) {
        gunzip(gz)?
    } else {
        let stream: Vec<u8> = (0..)
            .map_while(|i| files.get(&shard_key(i)))
            .flatten()
            .copied()
            .collect();
        if stream.is_empty() {
            return Err(AssembleError::Missing);
        }
        gunzip(&stream)?
    };
    let json = String::from_utf8(bytes).map_err(|_| AssembleError::Utf8)?;
    if let Some(expected) = files.get(HASH_KEY) {
        let expected = String::from_utf8_lossy(expected).trim().to_string();
        let actual = hex_sha256(json.as_bytes());
        if expected != actual {
            return Err(AssembleError::Hash { expected, actual });
        }
    }
    Ok(json)
}

fn gunzip(stream: &[u8]) -> Result<Vec<u8>, AssembleError> {
    let mut out = Vec::new();
    GzDecoder::new(stream)
        .read_to_end(&mut out)
        .map_err(AssembleError::Gunzip)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_length_counts_what_json_adds() {
        for text in ["plain", r#"{"a":"b\\c"}"#, "tab\there\u{1}", "ünïcode"] {
            let serialised = serde_json::to_string(text).unwrap_or_default();
            assert_eq!(escaped_len(text) + 2, serialised.len(), "{text:?}");
        }
    }

    #[test]
    fn a_shard_is_as_large_as_base64_allows() {
        assert_eq!(base64_len(SHARD_BYTES), MAX_PAYLOAD_BYTES);
        assert_eq!(base64_len(1), 4);
        assert_eq!(base64_len(3), 4);
        assert_eq!(base64_len(4), 8);
    }

    #[test]
    fn small_json_stays_plain_and_large_json_is_compressed() {
        assert_eq!(encode("{}").ok(), Some(Payload::Plain));
        let big = format!("[{}]", vec!["0"; MAX_PAYLOAD_BYTES / 2 + 1].join(","));
        let Ok(Payload::Compressed(gz)) = encode(&big) else {
            panic!("expected one compressed ConfigMap");
        };
        let files = BTreeMap::from([(GZIP_KEY.to_string(), gz)]);
        assert_eq!(assemble(&files).ok().as_deref(), Some(big.as_str()));
    }

    #[test]
    fn a_torn_or_truncated_set_is_refused() {
        let json = "{\"version\":1}";
        let good = gzip(json.as_bytes()).unwrap_or_default();
        let mut files = BTreeMap::from([
            (shard_key(0), good[..good.len() / 2].to_vec()),
            (
                HASH_KEY.to_string(),
                hex_sha256(json.as_bytes()).into_bytes(),
            ),
        ]);
        assert!(matches!(assemble(&files), Err(AssembleError::Gunzip(_))));
        files.insert(shard_key(1), good[good.len() / 2..].to_vec());
        assert_eq!(assemble(&files).ok().as_deref(), Some(json));
        files.insert(HASH_KEY.to_string(), b"00".to_vec());
        assert!(matches!(assemble(&files), Err(AssembleError::Hash { .. })));
        assert!(matches!(
            assemble(&BTreeMap::new()),
            Err(AssembleError::Missing)
        ));
    }
}
