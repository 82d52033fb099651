//! The contract every log implementation keeps, run against the embedded
//! log (and, with the cluster issue, against Kafka).

use lockstep_log::{EmbeddedLog, FsyncPolicy, Log, LogError};

/// Appends, reads, offsets and truncation on any log with at least 2 shards.
fn conformance(log: &dyn Log) {
    assert!(log.shards() >= 2);
    assert_eq!(log.end_offset(0).unwrap(), 0);
    assert_eq!(log.start_offset(0).unwrap(), 0);
    assert_eq!(log.append(0, &[b"a", b"b"]).unwrap(), 0);
    assert_eq!(log.append(0, &[b"c"]).unwrap(), 2);
    assert_eq!(log.append(1, &[b"x"]).unwrap(), 0, "offsets are per shard");
    assert_eq!(log.end_offset(0).unwrap(), 3);
    let all: Vec<(u64, Vec<u8>)> = log
        .read(0, 0, 10)
        .unwrap()
        .into_iter()
        .map(|r| (r.offset, r.bytes))
        .collect();
    assert_eq!(
        all,
        vec![(0, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())]
    );
    assert_eq!(log.read(0, 1, 1).unwrap()[0].bytes, b"b");
    assert!(
        log.read(0, 3, 10).unwrap().is_empty(),
        "reading at the end gives nothing"
    );
    assert_eq!(
        log.append(0, &[]).unwrap(),
        3,
        "an empty append changes nothing"
    );
    log.truncate_below(0, 2).unwrap();
    assert_eq!(log.start_offset(0).unwrap(), 2);
    assert!(matches!(
        log.read(0, 0, 10),
        Err(LogError::Truncated { start: 2, .. })
    ));
    assert_eq!(log.read(0, 2, 10).unwrap()[0].bytes, b"c");
    assert_eq!(
        log.append(0, &[b"d"]).unwrap(),
        3,
        "truncation keeps offsets"
    );
    log.truncate_below(0, 4).unwrap();
    assert_eq!(
        log.start_offset(0).unwrap(),
        4,
        "everything truncated: start = end"
    );
    assert_eq!(log.append(0, &[b"e"]).unwrap(), 4);
    // truncation inside one append keeps the records above the offset
    assert_eq!(log.append(1, &[b"y", b"z", b"w"]).unwrap(), 1);
    log.truncate_below(1, 2).unwrap();
    assert_eq!(log.start_offset(1).unwrap(), 2);
    let rest: Vec<(u64, Vec<u8>)> = log
        .read(1, 2, 10)
        .unwrap()
        .into_iter()
        .map(|r| (r.offset, r.bytes))
        .collect();
    assert_eq!(rest, vec![(2, b"z".to_vec()), (3, b"w".to_vec())]);
    assert!(matches!(
        log.read(1, 1, 10),
        Err(LogError::Truncated { start: 2, .. })
    ));
    assert_eq!(log.read(1, 3, 1).unwrap()[0].bytes, b"w");
    assert!(matches!(
        log.append(99, &[b"z"]),
        Err(LogError::NoShard { shard: 99, .. })
    ));
}

#[test]
fn embedded_log_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 4, FsyncPolicy::Always).unwrap();
    conformance(&log);
}

#[test]
fn embedded_log_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), 2, FsyncPolicy::Always).unwrap();
        log.append(1, &[b"one", b"two"]).unwrap();
        log.truncate_below(1, 1).unwrap();
    }
    let log = reopen(dir.path(), 2, FsyncPolicy::Always);
    assert_eq!(log.start_offset(1).unwrap(), 1);
    assert_eq!(log.end_offset(1).unwrap(), 2);
    assert_eq!(log.append(1, &[b"three"]).unwrap(), 2);
    drop(log);
    let err = (0..250)
        .find_map(
            |_| match EmbeddedLog::open(dir.path(), 3, FsyncPolicy::Always) {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                }
                other => Some(other),
            },
        )
        .expect("the directory lock is released")
        .err()
        .expect("shard count is fixed");
    assert!(err.to_string().contains("has 2 shards but 3"), "{err}");
}

#[test]
fn concurrent_appends_get_dense_distinct_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 2, FsyncPolicy::EveryMillis(50)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let log = &log;
            s.spawn(move || {
                for i in 0..50u8 {
                    log.append(0, &[&[t, i], &[t, i]]).unwrap();
                }
            });
        }
    });
    let recs = log.read(0, 0, 1000).unwrap();
    assert_eq!(recs.len(), 400);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
    }
    // each append's two records are adjacent (appends are atomic)
    for pair in recs.chunks(2) {
        assert_eq!(pair[0].bytes, pair[1].bytes);
    }
}

#[test]
fn atomic_appends_span_shards_and_sidecar_keys() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 4, FsyncPolicy::Always).unwrap();
    log.append(1, &[b"x"]).unwrap();
    let firsts = log
        .append_atomic(
            &[
                (1, vec![b"a".to_vec(), b"b".to_vec()]),
                (3, vec![b"c".to_vec()]),
            ],
            &[(b"idem/k1".to_vec(), Some(b"reply".to_vec()))],
        )
        .unwrap();
    assert_eq!(firsts, vec![1, 0]);
    assert_eq!(log.end_offset(1).unwrap(), 3);
    assert_eq!(log.end_offset(3).unwrap(), 1);
    assert_eq!(log.side_get(b"idem/k1").unwrap(), Some(b"reply".to_vec()));
    drop(log);
    // all of it survives reopening
    let log = reopen(dir.path(), 4, FsyncPolicy::Always);
    let got: Vec<Vec<u8>> = log
        .read(1, 0, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.bytes)
        .collect();
    assert_eq!(got, vec![b"x".to_vec(), b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(log.read(3, 0, 10).unwrap()[0].bytes, b"c".to_vec());
    assert_eq!(log.side_scan(b"idem/").unwrap().len(), 1);
    log.side_remove(&[b"idem/k1".to_vec()]).unwrap();
    assert_eq!(log.side_get(b"idem/k1").unwrap(), None);
}

#[test]
fn raising_the_end_never_reuses_offsets() {
    let dir = tempfile::tempdir().unwrap();
    // `Always`: with a background flusher the reopen below could race its
    // thread for the directory lock
    let log = EmbeddedLog::open(dir.path(), 2, FsyncPolicy::Always).unwrap();
    log.append(0, &[b"a", b"b"]).unwrap();
    // a checkpoint said offset 10 was reached: the log lost its tail
    log.raise_end(0, 10).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), 10);
    assert_eq!(log.start_offset(0).unwrap(), 10);
    assert_eq!(log.append(0, &[b"c"]).unwrap(), 10);
    log.raise_end(0, 5).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), 11, "never lowered");
    log.flush().unwrap();
    drop(log);
    let log = reopen(dir.path(), 2, FsyncPolicy::Always);
    assert_eq!(log.end_offset(0).unwrap(), 11);
    assert_eq!(log.read(0, 10, 5).unwrap()[0].bytes, b"c");
}

/// Opens the log again after dropping it: sled's threads may hold the
/// directory's lock a moment longer, so a refused lock is retried (for at
/// most 5 s); any other error fails.
fn reopen(dir: &std::path::Path, shards: u32, policy: FsyncPolicy) -> EmbeddedLog {
    for _ in 0..250 {
        match EmbeddedLog::open(dir, shards, policy) {
            Ok(log) => return log,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("reopening the log: {e}"),
        }
    }
    panic!("the log's directory lock was not released within 5 s")
}
