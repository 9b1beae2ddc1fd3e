use super::*;

fn append(log: &EventLog, target: &str, n: u32) -> oneshot::Receiver<Result<(), ()>> {
    let (done, durable) = oneshot::channel();
    log.append(Append {
        time: jiff::Timestamp::now().as_second(),
        targets: vec![Arc::from(target)].into(),
        json: Arc::from(format!("{{\"n\":{n}}}")),
        done: Some(done),
    })
    .unwrap();
    durable
}

async fn fill(log: &EventLog, targets: &[&str]) {
    let mut last = None;
    for (i, t) in targets.iter().enumerate() {
        last = Some(append(log, t, i as u32));
    }
    if let Some(d) = last {
        d.await.unwrap().unwrap();
    }
}

fn seqs(b: &Batch) -> Vec<u64> {
    b.entries.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn a_webhook_sees_its_own_durable_events_in_order_and_they_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EventLog::open(dir.path()).unwrap();
        fill(&log, &["a", "b", "a", "a"]).await;
        let b = log.backlog.batch("a", 0, 2);
        assert_eq!((seqs(&b), b.next), (vec![0, 2], 3));
        assert_eq!(log.backlog.pending("a"), 3);
        assert_eq!(log.backlog.pending("b"), 1);
    }
    let log = EventLog::open(dir.path()).unwrap();
    let b = log.backlog.batch("a", 0, 10);
    assert_eq!(seqs(&b), [0, 2, 3]);
    assert_eq!(&*b.entries[2].json, "{\"n\":3}");
    fill(&log, &["a"]).await;
    assert_eq!(seqs(&log.backlog.batch("a", 4, 10)), [4]);
}

#[tokio::test]
async fn a_line_cut_short_by_a_crash_is_cut_off_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EventLog::open(dir.path()).unwrap();
        fill(&log, &["a", "a"]).await;
    }
    let segment = segment_path(dir.path(), 0);
    let whole = fs::read(&segment).unwrap();
    let mut torn = whole.clone();
    let mut line = Vec::new();
    encode(&[Arc::from("a")], "{\"n\":2}", &mut line);
    torn.extend_from_slice(&line[..10]);
    fs::write(&segment, &torn).unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    assert_eq!(seqs(&log.backlog.batch("a", 0, 10)), [0, 1]);
    assert_eq!(fs::read(&segment).unwrap(), whole);
    // A flipped byte fails the CRC the same way.
    drop(log);
    let mut flipped = whole.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 1;
    fs::write(&segment, &flipped).unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    assert_eq!(seqs(&log.backlog.batch("a", 0, 10)), [0]);
}

#[tokio::test]
async fn acknowledged_segments_are_deleted_once_every_running_webhook_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open_with(dir.path(), 1, LAZY).unwrap();
    for t in ["a", "b", "a"] {
        fill(&log, &[t]).await;
    }
    let segments = || {
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".log"))
            .collect();
        names.sort();
        names.len()
    };
    // One line per segment, plus the fresh one written to next.
    assert_eq!(segments(), 4);
    let backlog = &log.backlog;
    assert_eq!(backlog.register("a"), 0);
    assert_eq!(backlog.register("b"), 0);
    backlog.ack("a", 3, 2);
    assert_eq!(segments(), 4, "b has acknowledged nothing yet");
    backlog.ack("b", 2, 1);
    assert_eq!(segments(), 2, "seqs 0 and 1 are gone, 2 waits for b");
    assert_eq!(backlog.pending("a"), 0);
    // Progress is kept for the next start.
    drop(log);
    let log = EventLog::open(dir.path()).unwrap();
    assert_eq!(log.backlog.register("a"), 3);
    assert_eq!(log.backlog.register("b"), 2);
    assert_eq!(seqs(&log.backlog.batch("b", 2, 10)), Vec::<u64>::new());
    assert_eq!(log.backlog.pending("b"), 0);
}

#[test]
fn a_barrier_writes_only_what_is_not_durable_yet() {
    let dir = tempfile::tempdir().unwrap();
    // The log's own thread put off: only barriers write.
    let log = EventLog::open_with(dir.path(), SEGMENT_BYTES, Duration::from_secs(3600)).unwrap();
    let flushes = || log.tail.lock_waiting().flushes;
    let line = |n: u32| Append {
        time: jiff::Timestamp::now().as_second(),
        targets: vec![Arc::from("a")].into(),
        json: Arc::from(format!("{{\"n\":{n}}}")),
        done: None,
    };
    log.append(line(0)).unwrap();
    log.append(line(1)).unwrap();
    log.tail().barrier(2);
    assert_eq!(seqs(&log.backlog.batch("a", 0, 10)), [0, 1]);
    assert_eq!(flushes(), 1);
    // Nothing new: a barrier writes nothing and syncs nothing.
    log.tail().barrier(2);
    assert_eq!(flushes(), 1);
    log.append(line(2)).unwrap();
    // Lines appended after the target are not what it waits for.
    log.tail().barrier(2);
    assert_eq!(flushes(), 1);
    log.tail().barrier(3);
    assert_eq!(seqs(&log.backlog.batch("a", 0, 10)), [0, 1, 2]);
    assert_eq!(flushes(), 2);
}
