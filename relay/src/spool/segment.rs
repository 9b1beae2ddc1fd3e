//! Segment files: naming, creation, and the scan that finds records,
//! damage and a torn tail in a segment's bytes.
//!
//! A segment is `queue/seg-<16 digits>.log`: a 16-byte header
//! (`MRSPOOL1` + the segment's CRC salt, u64 little-endian) followed by
//! frames (see `record`). Numbers only grow, so name order is write order.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use memchr::memmem;

use super::error::SpoolError;
use super::record::{self, Frame, HEADER_LEN};

pub(crate) const SEGMENT_HEADER_LEN: usize = 16;
/// The trailing digit is the format version.
const FILE_MAGIC: &[u8; 8] = b"MRSPOOL1";

pub(crate) fn file_name(number: u64) -> String {
    format!("seg-{number:016}.log")
}

fn parse_name(name: &str, extension: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(extension)?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What is in the queue directory.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Segment numbers and paths, in write order.
    pub segments: Vec<(u64, PathBuf)>,
    /// Half-created segments from a crash during rotation: never used.
    pub leftovers: Vec<PathBuf>,
}

pub(crate) fn list(queue_dir: &Path) -> Result<Listing, SpoolError> {
    let entries = fs::read_dir(queue_dir).map_err(|e| SpoolError::io("list", queue_dir, e))?;
    let mut listing = Listing::default();
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io("list", queue_dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = parse_name(name, ".log") {
            listing.segments.push((number, entry.path()));
        } else if parse_name(name, ".tmp").is_some() {
            listing.leftovers.push(entry.path());
        }
    }
    listing.segments.sort();
    Ok(listing)
}

pub(crate) fn encode_header(salt: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0; SEGMENT_HEADER_LEN];
    header[..8].copy_from_slice(FILE_MAGIC);
    header[8..].copy_from_slice(&salt.to_le_bytes());
    header
}

/// The salt, if the buffer starts with a segment header.
pub(crate) fn decode_header(buf: &[u8]) -> Option<u64> {
    let header = buf.get(..SEGMENT_HEADER_LEN)?;
    if &header[..8] != FILE_MAGIC {
        return None;
    }
    let mut salt = [0; 8];
    salt.copy_from_slice(&header[8..]);
    Some(u64::from_le_bytes(salt))
}

/// Create segment `number`, durable before it is returned: the header is
/// written to a temporary name, synced, renamed into place and the
/// directory synced, so a crash leaves either no segment or a complete
/// header, and records acknowledged in it cannot vanish with its name.
pub(crate) fn create(
    queue_dir: &Path,
    number: u64,
    salt: u64,
) -> Result<(File, PathBuf), SpoolError> {
    let path = queue_dir.join(file_name(number));
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| SpoolError::io("create", &tmp, e))?;
    let made = file
        .write_all(&encode_header(salt))
        .map_err(|e| SpoolError::io("write header", &tmp, e))
        .and_then(|()| {
            file.sync_all()
                .map_err(|e| SpoolError::io("fsync", &tmp, e))
        })
        .and_then(|()| fs::rename(&tmp, &path).map_err(|e| SpoolError::io("rename", &tmp, e)));
    if let Err(e) = made {
        // On a full disk the attempt must not keep what little it took.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(queue_dir)?;
    Ok((file, path))
}

/// Make created, renamed and removed names in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("fsync directory", dir, e))
}

/// A record found by `scan`, `offset` from the start of the segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Found<'a> {
    pub offset: usize,
    pub kind: u8,
    pub payload: &'a [u8],
}

impl Found<'_> {
    pub(crate) fn len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// What a segment's bytes hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan<'a> {
    pub records: Vec<Found<'a>>,
    /// Damaged bytes with good records after them: corruption, not a crash.
    pub skipped: Vec<Range<usize>>,
    /// Bytes after the last good record: a write the crash interrupted.
    pub torn: Option<Range<usize>>,
}

/// Read the frames in `buf` from `start`. A bad frame is resolved by
/// looking for the next frame that verifies: if there is one, the bytes in
/// between are skipped; if not, everything from the bad frame on is a torn
/// tail. Appends are sequential and a failed append is truncated, so only
/// a crash leaves a bad frame with nothing good after it.
pub(crate) fn scan(buf: &[u8], start: usize, salt: u64) -> Scan<'_> {
    let mut scan = Scan::default();
    let mut pos = start;
    while pos < buf.len() {
        if let Frame::Complete { kind, payload } = record::decode_frame(&buf[pos..], salt) {
            let found = Found {
                offset: pos,
                kind,
                payload,
            };
            pos += found.len();
            scan.records.push(found);
            continue;
        }
        match resync(buf, pos + 1, salt) {
            Some(next) => {
                scan.skipped.push(pos..next);
                pos = next;
            }
            None => {
                scan.torn = Some(pos..buf.len());
                break;
            }
        }
    }
    scan
}

fn resync(buf: &[u8], from: usize, salt: u64) -> Option<usize> {
    let finder = memmem::Finder::new(&record::MAGIC);
    let mut at = from;
    while let Some(found) = buf.get(at..).and_then(|rest| finder.find(rest)) {
        let candidate = at + found;
        if let Frame::Complete { .. } = record::decode_frame(&buf[candidate..], salt) {
            return Some(candidate);
        }
        at = candidate + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::spool::record::{encode_frame, kind};

    const SALT: u64 = 77;

    fn segment(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = encode_header(SALT).to_vec();
        let mut offsets = Vec::new();
        for p in payloads {
            offsets.push(buf.len());
            buf.extend(encode_frame(SALT, kind::REMOVED, &[p]).unwrap());
        }
        (buf, offsets)
    }

    fn payloads(scan: &Scan<'_>) -> Vec<Vec<u8>> {
        scan.records.iter().map(|r| r.payload.to_vec()).collect()
    }

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        assert_eq!(file_name(42), "seg-0000000000000042.log");
        assert_eq!(parse_name(&file_name(42), ".log"), Some(42));
        for stranger in [
            "seg-42.log",
            "seg-000000000000004x.log",
            "lock",
            "seg-0000000000000042.log.corrupt",
        ] {
            assert_eq!(parse_name(stranger, ".log"), None, "{stranger}");
        }
    }

    #[test]
    fn headers_round_trip() {
        assert_eq!(decode_header(&encode_header(SALT)), Some(SALT));
        assert_eq!(decode_header(b"MRSPOOL1"), None);
        assert_eq!(decode_header(&[0; 16]), None);
    }

    #[test]
    fn a_clean_segment_scans_whole() {
        let (buf, offsets) = segment(&[b"one", b"two", b"three"]);
        let scan = scan(&buf, SEGMENT_HEADER_LEN, SALT);
        assert_eq!(
            payloads(&scan),
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(
            scan.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            offsets
        );
        assert!(scan.skipped.is_empty());
        assert_eq!(scan.torn, None);
    }

    #[test]
    fn every_cut_inside_the_last_record_is_a_torn_tail() {
        let (buf, offsets) = segment(&[b"one", b"two", b"three"]);
        let last = offsets[2];
        for cut in last + 1..buf.len() {
            let scan = scan(&buf[..cut], SEGMENT_HEADER_LEN, SALT);
            assert_eq!(
                payloads(&scan),
                [b"one".to_vec(), b"two".to_vec()],
                "cut at {cut}"
            );
            assert_eq!(scan.torn, Some(last..cut), "cut at {cut}");
            assert!(scan.skipped.is_empty());
        }
    }

    #[test]
    fn damage_in_the_middle_is_skipped_and_the_rest_kept() {
        let (clean, offsets) = segment(&[b"one", b"two", b"three"]);
        // Every byte of the middle frame: magic, kind, length, crc, payload.
        for at in offsets[1]..offsets[2] {
            let mut buf = clean.clone();
            buf[at] ^= 0x40;
            let scan = scan(&buf, SEGMENT_HEADER_LEN, SALT);
            assert_eq!(
                payloads(&scan),
                [b"one".to_vec(), b"three".to_vec()],
                "byte {at}"
            );
            assert_eq!(scan.skipped, vec![offsets[1]..offsets[2]], "byte {at}");
            assert_eq!(scan.torn, None);
        }
    }

    #[test]
    fn zeros_after_the_records_are_a_torn_tail() {
        let (mut buf, _) = segment(&[b"one"]);
        let end = buf.len();
        buf.extend([0; 100]);
        let scan = scan(&buf, SEGMENT_HEADER_LEN, SALT);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.torn, Some(end..end + 100));
    }

    #[test]
    fn a_frame_hidden_in_a_payload_is_not_taken_for_a_record() {
        // A body carrying a frame made without this segment's salt.
        let hidden = encode_frame(SALT + 1, kind::REMOVED, &[b"forged"]).unwrap();
        let mut body = b"xx".to_vec();
        body.extend(&hidden);
        let (mut buf, offsets) = segment(&[&body]);
        buf[offsets[0]] ^= 0xFF;
        let scan = scan(&buf, SEGMENT_HEADER_LEN, SALT);
        assert!(scan.records.is_empty());
        assert_eq!(scan.torn, Some(offsets[0]..buf.len()));
    }

    proptest! {
        #[test]
        fn scanning_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let (mut buf, _) = segment(&[b"one"]);
            buf.extend(&bytes);
            buf.extend(&record::MAGIC);
            let scan = scan(&buf, SEGMENT_HEADER_LEN, SALT);
            prop_assert!(!scan.records.is_empty());
        }
    }
}
