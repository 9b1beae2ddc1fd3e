use std::fs;
use std::path::Path;

use super::{file_len, message, open, segment_files};
use crate::spool::record::HEADER_LEN;
use crate::spool::{QueueId, Spool, SpoolError, open_readonly};

/// Commit `count` messages of ~`len` bytes; returns their ids and, for
/// each, the segment length before it was written.
async fn commit_some(dir: &Path, count: usize, len: usize) -> (Vec<QueueId>, Vec<u64>) {
    let (spool, _) = open(dir).await;
    let segment = &segment_files(dir)[0];
    let mut ids = Vec::new();
    let mut starts = Vec::new();
    for n in 0..count {
        starts.push(file_len(segment));
        let (envelope, body) = message(n, len);
        let id = spool.new_id();
        spool.commit(&id, &envelope, &body).await.unwrap();
        ids.push(id);
    }
    (ids, starts)
}

fn ids(spool: &Spool) -> Vec<QueueId> {
    spool.messages().into_iter().map(|(id, _)| id).collect()
}

#[tokio::test]
async fn every_cut_inside_the_last_record_loses_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let (committed, starts) = commit_some(dir.path(), 3, 120).await;
    let segment = segment_files(dir.path())[0].clone();
    let original = fs::read(&segment).unwrap();
    let last = usize::try_from(starts[2]).unwrap();
    for cut in last..original.len() {
        fs::write(&segment, &original[..cut]).unwrap();
        let (spool, recovery) = open(dir.path()).await;
        assert_eq!(recovery.messages, 2, "cut at {cut}");
        assert_eq!(
            recovery.truncated_bytes,
            (cut - last) as u64,
            "cut at {cut}"
        );
        assert_eq!(recovery.skipped_records, 0, "cut at {cut}");
        assert_eq!(ids(&spool), committed[..2], "cut at {cut}");
        assert_eq!(file_len(&segment), starts[2], "the torn tail is cut off");

        let (envelope, body) = message(9, 60);
        let id = spool.new_id();
        spool.commit(&id, &envelope, &body).await.unwrap();
        drop(spool);
        let (spool, recovery) = open(dir.path()).await;
        assert_eq!(recovery.truncated_bytes, 0, "cut at {cut}");
        // Sorted by id: an id made by the reopened spool in the same
        // millisecond as an earlier one may sort before it (the counter
        // restarts), so compare as sets.
        let mut want = vec![committed[0], committed[1], id];
        want.sort();
        assert_eq!(ids(&spool), want, "cut at {cut}");
        assert_eq!(spool.read_body(&id).await.unwrap(), body);
    }
}

#[tokio::test]
async fn a_corrupt_record_in_the_middle_is_skipped_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (committed, starts) = commit_some(dir.path(), 3, 200).await;
    let segment = segment_files(dir.path())[0].clone();
    let mut bytes = fs::read(&segment).unwrap();
    // The CRC field of the second record.
    bytes[usize::try_from(starts[1]).unwrap() + 9] ^= 0xFF;
    fs::write(&segment, &bytes).unwrap();

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.messages, 2);
    assert_eq!(recovery.skipped_records, 1);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(ids(&spool), [committed[0], committed[2]]);
    // The damaged record's bytes are kept for a human, exactly.
    let (start, end) = (
        usize::try_from(starts[1]).unwrap(),
        usize::try_from(starts[2]).unwrap(),
    );
    assert_eq!(recovery.quarantined.len(), 1);
    let copy = &recovery.quarantined[0];
    assert!(copy.starts_with(dir.path().join("quarantine")), "{copy:?}");
    assert!(
        copy.to_string_lossy()
            .ends_with(&format!(".{start}.damaged")),
        "{copy:?}"
    );
    assert_eq!(fs::read(copy).unwrap(), &bytes[start..end]);
    let (_, body) = message(2, 200);
    assert_eq!(spool.read_body(&committed[2]).await.unwrap(), body);
}

#[tokio::test]
async fn a_damaged_length_in_the_middle_is_skipped_too() {
    let dir = tempfile::tempdir().unwrap();
    let (committed, starts) = commit_some(dir.path(), 3, 200).await;
    let segment = segment_files(dir.path())[0].clone();
    let mut bytes = fs::read(&segment).unwrap();
    // The high byte of the second record's length: it now runs off the end.
    bytes[usize::try_from(starts[1]).unwrap() + 8] = 0x7F;
    fs::write(&segment, &bytes).unwrap();

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.skipped_records, 1);
    assert_eq!(ids(&spool), [committed[0], committed[2]]);
}

#[tokio::test]
async fn a_body_damaged_after_open_is_an_error_not_a_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (committed, starts) = commit_some(dir.path(), 2, 200).await;
    let (spool, _) = open(dir.path()).await;
    let segment = segment_files(dir.path())[0].clone();
    let mut bytes = fs::read(&segment).unwrap();
    let end_of_first = usize::try_from(starts[1]).unwrap();
    bytes[end_of_first - 5] ^= 0x01;
    fs::write(&segment, &bytes).unwrap();
    assert!(matches!(
        spool.read_body(&committed[0]).await,
        Err(SpoolError::Corrupt { .. })
    ));
    assert!(spool.read_body(&committed[1]).await.is_ok());
}

#[tokio::test]
async fn a_segment_with_an_unreadable_header_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    commit_some(dir.path(), 2, 100).await;
    let segment = segment_files(dir.path())[0].clone();
    let mut bytes = fs::read(&segment).unwrap();
    bytes[0] = b'X';
    fs::write(&segment, &bytes).unwrap();

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.messages, 0);
    assert_eq!(recovery.skipped_records, 1);
    let aside = dir
        .path()
        .join("quarantine")
        .join(segment.file_name().unwrap());
    assert_eq!(recovery.quarantined, std::slice::from_ref(&aside));
    assert_eq!(fs::read(&aside).unwrap(), bytes, "moved whole");
    assert!(!segment.exists());
    let (envelope, body) = message(5, 100);
    spool
        .commit(&spool.new_id(), &envelope, &body)
        .await
        .unwrap();
    assert_eq!(spool.messages().len(), 1);
}

#[tokio::test]
async fn a_half_created_segment_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    commit_some(dir.path(), 1, 100).await;
    let leftover = dir.path().join("queue/seg-0000000000000002.tmp");
    fs::write(&leftover, b"MRSP").unwrap();
    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(recovery.messages, 1);
    assert!(!leftover.exists());
    assert_eq!(spool.stats().segments, 1);
}

#[tokio::test]
async fn a_read_only_snapshot_reads_without_repairing() {
    let dir = tempfile::tempdir().unwrap();
    let (committed, starts) = commit_some(dir.path(), 3, 150).await;
    let segment = segment_files(dir.path())[0].clone();
    let cut = starts[2] + HEADER_LEN as u64 + 4;
    fs::File::options()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let snapshot = open_readonly(dir.path()).unwrap();
    assert_eq!(snapshot.recovery().messages, 2);
    assert_eq!(snapshot.recovery().truncated_bytes, HEADER_LEN as u64 + 4);
    let listed: Vec<QueueId> = snapshot
        .messages()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, committed[..2]);
    assert_eq!(
        snapshot.read_body(&committed[1]).unwrap(),
        message(1, 150).1
    );
    assert_eq!(snapshot.stats().messages, 2);
    assert_eq!(
        file_len(&segment),
        cut,
        "read-only recovery must not truncate"
    );
}

#[tokio::test]
async fn a_read_only_snapshot_works_beside_a_running_spool() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path()).await;
    let (envelope, body) = message(1, 100);
    let id = spool.new_id();
    spool.commit(&id, &envelope, &body).await.unwrap();
    let snapshot = open_readonly(dir.path()).unwrap();
    assert_eq!(snapshot.messages().unwrap(), [(id, envelope)]);
    assert!(open_readonly(&dir.path().join("missing")).is_err());
}

#[tokio::test]
async fn a_garbage_segment_among_good_ones_is_quarantined_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    // One record per segment.
    let options = || super::small_reserve().segment_bytes(1);
    let (spool, _) = super::open_with(dir.path(), options()).await;
    let mut committed = Vec::new();
    for n in 0..3 {
        let (envelope, body) = message(n, 100);
        let id = spool.new_id();
        spool.commit(&id, &envelope, &body).await.unwrap();
        committed.push(id);
    }
    drop(spool);
    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 4, "three full segments and the active one");
    // The middle one becomes garbage, header and all.
    let garbage: Vec<u8> = (0..700u32).map(|i| (i * 7 + 3) as u8).collect();
    fs::write(&segments[1], &garbage).unwrap();

    let (spool, recovery) = super::open_with(dir.path(), options()).await;
    assert_eq!(ids(&spool), [committed[0], committed[2]]);
    let aside = dir
        .path()
        .join("quarantine")
        .join(segments[1].file_name().unwrap());
    assert_eq!(recovery.quarantined, std::slice::from_ref(&aside));
    assert_eq!(fs::read(&aside).unwrap(), garbage);
    assert!(!segments[1].exists());
    for id in [committed[0], committed[2]] {
        assert!(spool.read_body(&id).await.is_ok());
    }
}

#[tokio::test]
async fn a_torn_tail_with_data_in_it_is_copied_to_the_quarantine_before_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (committed, starts) = commit_some(dir.path(), 2, 150).await;
    let segment = segment_files(dir.path())[0].clone();
    let original = fs::read(&segment).unwrap();
    let last = usize::try_from(starts[1]).unwrap();
    let cut = last + 40;
    fs::write(&segment, &original[..cut]).unwrap();

    let (spool, recovery) = open(dir.path()).await;
    assert_eq!(ids(&spool), committed[..1]);
    assert_eq!(recovery.quarantined.len(), 1);
    assert_eq!(
        fs::read(&recovery.quarantined[0]).unwrap(),
        &original[last..cut]
    );

    // Zeros (a crash after the size grew, before the data landed) are not kept.
    drop(spool);
    let mut zeros = fs::read(&segment).unwrap();
    zeros.extend([0; 64]);
    fs::write(&segment, &zeros).unwrap();
    let (_, recovery) = open(dir.path()).await;
    assert_eq!(recovery.truncated_bytes, 64);
    assert!(recovery.quarantined.is_empty());
}

#[tokio::test]
async fn a_read_only_snapshot_quarantines_nothing() {
    let dir = tempfile::tempdir().unwrap();
    commit_some(dir.path(), 2, 100).await;
    let segment = segment_files(dir.path())[0].clone();
    let mut bytes = fs::read(&segment).unwrap();
    bytes[0] = b'X';
    fs::write(&segment, &bytes).unwrap();
    let snapshot = open_readonly(dir.path()).unwrap();
    assert_eq!(snapshot.recovery().skipped_records, 1);
    assert!(snapshot.recovery().quarantined.is_empty());
    assert!(segment.exists());
    assert!(!dir.path().join("quarantine").exists());
}
