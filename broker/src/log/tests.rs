//! Behaviour of `Log`: append/read, roll, retention, truncation, timestamp lookup, reopen.

use bytes::Bytes;
use rill_protocol::batch::{batches, RecordBatch, RecordBatchBuilder};

use super::*;
use crate::Error;

fn batch(records: usize, value_bytes: usize, timestamp: i64) -> Bytes {
    let mut builder = RecordBatchBuilder::new();
    for i in 0..records {
        let value = vec![(i % 251) as u8; value_bytes];
        builder.append(
            timestamp + i as i64,
            Some(format!("k{i}").as_bytes()),
            Some(&value),
            &[],
        );
    }
    builder.build()
}

pub(super) fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 8 * 1024,
        index_interval_bytes: 512,
        preallocate_bytes: 4096,
        retention_ms: None,
        flush: FlushPolicy::Os,
        open_sealed_segments_max: 2,
        ..LogConfig::default()
    }
}

/// Reads the whole log from the start, returning every batch.
fn read_all(log: &mut Log) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(offset, 4096).unwrap();
        assert!(
            !bytes.is_empty(),
            "read at {offset} returned nothing before the log end"
        );
        for b in batches(bytes) {
            let b = b.unwrap();
            b.validate().unwrap();
            offset = b.last_offset() as u64 + 1;
            out.push(b);
        }
    }
    out
}

#[test]
fn append_assigns_dense_offsets_and_read_returns_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..10 {
        let info = log.append(&batch(3, 10, 1000), 7).unwrap();
        assert_eq!((info.base_offset, info.last_offset), (i * 3, i * 3 + 2));
    }
    assert_eq!(log.log_end_offset(), 30);
    let all = read_all(&mut log);
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|b| b.partition_leader_epoch() == 7));
    // A read from an offset inside a batch starts at that batch.
    let first = batches(log.read(4, 1).unwrap()).next().unwrap().unwrap();
    assert_eq!(first.base_offset(), 3);
    assert_eq!(
        log.read(30, 1000).unwrap().len(),
        0,
        "reading at the end is empty, not an error"
    );
    assert!(matches!(
        log.read(31, 1000),
        Err(Error::OffsetOutOfRange { .. })
    ));
}

#[test]
fn reads_are_slices_of_the_mapping_and_at_least_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    log.append(&batch(2, 100, 0), 0).unwrap();
    log.append(&batch(2, 100, 0), 0).unwrap();
    let a = log.read(0, 10).unwrap();
    let b = log.read(0, 10).unwrap();
    assert_eq!(
        a.as_ptr(),
        b.as_ptr(),
        "two reads share the mapping: nothing was copied"
    );
    assert_eq!(
        batches(a).count(),
        1,
        "max_bytes below one batch still returns one batch"
    );
    assert_eq!(batches(log.read(0, 1 << 20).unwrap()).count(), 2);
}

#[test]
fn invalid_batches_are_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_batch_bytes: 2000,
        ..small_config()
    };
    let mut log = Log::open(dir.path(), config).unwrap();
    let mut corrupt = batch(2, 10, 0).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let good = batch(1, 10, 0);
    let mut mixed = good.to_vec();
    mixed.extend_from_slice(&corrupt);
    assert!(matches!(
        log.append(&Bytes::from(corrupt), 0),
        Err(Error::InvalidBatch(_))
    ));
    assert!(
        matches!(
            log.append(&Bytes::from(mixed), 0),
            Err(Error::InvalidBatch(_))
        ),
        "all or nothing"
    );
    assert!(matches!(
        log.append(&batch(1, 3000, 0), 0),
        Err(Error::BatchTooLarge { .. })
    ));
    assert!(matches!(
        log.append(&Bytes::from_static(&[1, 2, 3]), 0),
        Err(Error::InvalidBatch(_))
    ));
    assert!(matches!(
        log.append(&Bytes::new(), 0),
        Err(Error::InvalidBatch(_))
    ));
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
}

#[test]
fn several_batches_in_one_append_get_consecutive_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    let mut input = batch(2, 5, 0).to_vec();
    input.extend_from_slice(&batch(3, 5, 0));
    let info = log.append(&Bytes::from(input), 0).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.batches),
        (0, 4, 2)
    );
    let bases: Vec<i64> = read_all(&mut log).iter().map(|b| b.base_offset()).collect();
    assert_eq!(bases, vec![0, 2]);
}

#[test]
fn rolls_by_size_and_reads_across_segments_within_the_mapping_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    for _ in 0..100 {
        log.append(&batch(4, 60, 0), 0).unwrap();
    }
    assert!(
        log.segment_count() > 3,
        "8 KiB segments must have rolled: {}",
        log.segment_count()
    );
    let all = read_all(&mut log);
    assert_eq!(all.len(), 100);
    assert!(
        log.open_sealed_segments() <= 2,
        "open sealed segments stay within the limit"
    );
    // Sealed segments are trimmed to their data.
    let sealed = dir.path().join(format!("{:020}.log", 0));
    assert!(std::fs::metadata(sealed).unwrap().len() <= 8 * 1024);
}

#[test]
fn rolls_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: 1000,
        segment_bytes: 1 << 20,
        ..small_config()
    };
    let mut log = Log::open(dir.path(), config).unwrap();
    log.append_at(&batch(1, 10, 5_000), 0, 5_000).unwrap();
    log.append_at(&batch(1, 10, 5_500), 0, 5_500).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append_at(&batch(1, 10, 6_000), 0, 6_000).unwrap();
    assert_eq!(
        log.segment_count(),
        2,
        "the first batch is 1000 ms old: roll"
    );
    assert!(!log.roll_if_due(6_500).unwrap());
    assert!(log.roll_if_due(7_000).unwrap());
    assert_eq!(log.segment_count(), 3);
}

#[test]
fn retention_by_size_and_time_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..60 {
        log.append(&batch(4, 60, i * 1000), 0).unwrap();
    }
    let segments = log.segment_count();
    let before = log.size_bytes();
    log.set_config(LogConfig {
        retention_bytes: Some(before / 2),
        ..small_config()
    })
    .unwrap();
    let outcome = log.enforce_retention(0).unwrap();
    assert!(outcome.deleted_segments > 0);
    assert!(
        log.size_bytes() >= before / 2,
        "never below the retention size"
    );
    assert!(log.log_start_offset() > 0);
    assert!(matches!(
        log.read(0, 100),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        read_all(&mut log).last().unwrap().last_offset() as u64 + 1,
        log.log_end_offset()
    );
    assert!(!dir.path().join(format!("{:020}.log", 0)).exists());

    log.set_config(LogConfig {
        retention_ms: Some(1000),
        ..small_config()
    })
    .unwrap();
    // Timestamps reach 60 * 1000 + 3: at "now" = 1e9 every sealed segment is old, the active one stays.
    log.enforce_retention(1_000_000_000).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert!(segments > 1);
    assert_eq!(log.log_end_offset(), 240);
}

#[test]
fn truncate_within_active_and_into_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        LogConfig {
            segment_bytes: 4096,
            ..small_config()
        },
    )
    .unwrap();
    for _ in 0..50 {
        log.append(&batch(2, 100, 0), 0).unwrap();
    }
    let end = log.log_end_offset();
    assert_eq!(
        log.truncate_to(end - 1).unwrap(),
        end - 2,
        "rounded down to the batch start"
    );
    assert!(log.segment_count() > 2);
    assert_eq!(log.truncate_to(21).unwrap(), 20);
    assert_eq!(log.log_end_offset(), 20);
    let info = log.append(&batch(2, 100, 0), 0).unwrap();
    assert_eq!(info.base_offset, 20);
    assert_eq!(read_all(&mut log).len(), 11);
    drop(log);
    let mut reopened = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        reopened.log_end_offset(),
        22,
        "truncated data does not come back after reopen"
    );
    assert_eq!(read_all(&mut reopened).len(), 11);
    assert_eq!(reopened.truncate_to(0).unwrap(), 0);
    assert_eq!(reopened.log_end_offset(), 0);
    assert_eq!(reopened.append(&batch(1, 1, 0), 0).unwrap().base_offset, 0);
}

#[test]
fn timestamp_lookup_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4096,
        ..small_config()
    };
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    // Batch i holds records with timestamps 10_000 + 100 i + {0, 1, 2, 3}.
    for i in 0..80 {
        log.append(&batch(4, 50, 10_000 + 100 * i), 0).unwrap();
    }
    assert!(log.segment_count() > 3);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 10_000)));
    assert_eq!(log.offset_for_timestamp(10_002).unwrap(), Some((2, 10_002)));
    assert_eq!(log.offset_for_timestamp(10_004).unwrap(), Some((4, 10_100)));
    assert_eq!(
        log.offset_for_timestamp(15_001).unwrap(),
        Some((201, 15_001))
    );
    assert_eq!(
        log.offset_for_timestamp(17_903).unwrap(),
        Some((319, 17_903))
    );
    assert_eq!(log.offset_for_timestamp(17_904).unwrap(), None);
    // Still right after a reopen, when sealed segments are known from their indexes only.
    drop(log);
    let mut log = Log::open(dir.path(), config).unwrap();
    assert_eq!(
        log.offset_for_timestamp(15_001).unwrap(),
        Some((201, 15_001))
    );
}

#[test]
fn reopen_after_clean_close_gives_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    for i in 0..40 {
        log.append(&batch(3, 80, i), 1).unwrap();
    }
    let before: Vec<Bytes> = read_all(&mut log)
        .into_iter()
        .map(RecordBatch::into_bytes)
        .collect();
    let (start, end, size) = (
        log.log_start_offset(),
        log.log_end_offset(),
        log.size_bytes(),
    );
    log.close().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.size_bytes()
        ),
        (start, end, size)
    );
    let report = log.recovery_report().clone();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        report.scanned_segments, 1,
        "only the active segment is scanned after a clean close"
    );
    let after: Vec<Bytes> = read_all(&mut log)
        .into_iter()
        .map(RecordBatch::into_bytes)
        .collect();
    assert_eq!(before, after);
    let epoch = log.last_epoch().unwrap_or(0) as i32;
    assert_eq!(log.append(&batch(1, 1, 0), epoch).unwrap().base_offset, end);
    assert!(
        log.append(&batch(1, 1, 0), epoch - 1).is_err(),
        "leader epochs never go back"
    );
}

#[test]
fn flush_policies_track_the_flushed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        LogConfig {
            flush: FlushPolicy::Always,
            ..small_config()
        },
    )
    .unwrap();
    log.append(&batch(2, 10, 0), 0).unwrap();
    assert_eq!(
        log.flushed_offset(),
        2,
        "always: flushed before append returns"
    );
    drop(log);
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        LogConfig {
            flush: FlushPolicy::Interval {
                interval_ms: 60_000,
            },
            ..small_config()
        },
    )
    .unwrap();
    log.append(&batch(2, 10, 0), 0).unwrap();
    assert_eq!(log.flushed_offset(), 0, "interval: not yet due");
    assert!(!log.flush_if_due().unwrap());
    assert_eq!(log.flush().unwrap(), 2);
}

#[test]
fn interval_flush_can_run_without_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        flush: FlushPolicy::Interval { interval_ms: 200 },
        ..small_config()
    };
    let mut log = Log::open(dir.path(), config).unwrap();
    // An append flushes by itself when the interval has passed (a slow machine): append again
    // until one is left unflushed, then poll (with a deadline) until its flush is due.
    let started = std::time::Instant::now();
    log.append(&batch(2, 10, 0), 0).unwrap();
    while log.flushed_offset() == log.log_end_offset() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "every append flushed by itself"
        );
        log.append(&batch(2, 10, 0), 0).unwrap();
    }
    let unflushed_end = log.log_end_offset();
    let pending = loop {
        if let Some(pending) = log.begin_flush_if_due().unwrap() {
            break pending;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the flush never became due"
        );
    };
    assert!(
        log.begin_flush_if_due().unwrap().is_none(),
        "one flush at a time per interval"
    );
    // Appends go on while the sync runs elsewhere; the flush covers what was there when it began.
    log.append(&batch(1, 10, 0), 0).unwrap();
    let end = pending.sync().unwrap();
    log.flush_completed(end);
    assert_eq!(log.flushed_offset(), unflushed_end);
    assert_eq!(log.log_end_offset(), unflushed_end + 1);
}

/// The base offset of the active segment: the newest data file's name.
fn active_base(log: &mut Log) -> u64 {
    std::fs::read_dir(log.dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log")?.parse::<u64>().ok()
        })
        .max()
        .unwrap()
}

fn recovery_point(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join(RECOVERY_POINT_FILE)).unwrap()
}

#[test]
fn a_roll_leaves_its_syncs_to_the_next_flush_and_the_recovery_point_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    // An interval that never passes in this test: only the rolls make a flush due.
    let config = LogConfig {
        flush: FlushPolicy::Interval {
            interval_ms: 3_600_000,
        },
        ..small_config()
    };
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    assert_eq!(recovery_point(dir.path()), "1 0\n");
    while log.segment_count() < 3 {
        log.append(&batch(3, 80, 0), 1).unwrap();
    }
    // Two rolls inside appends, nothing synced by them: the recovery point has not moved.
    assert_eq!(recovery_point(dir.path()), "1 0\n");
    assert_eq!(log.flushed_offset(), 0);
    let sealed_through = active_base(&mut log);
    let pending = log
        .begin_flush_if_due()
        .unwrap()
        .expect("a roll makes a flush due before the interval passes");
    // Appends go on while the sealed segments sync elsewhere.
    log.append(&batch(1, 10, 0), 1).unwrap();
    log.flush_completed(pending.sync().unwrap());
    assert_eq!(recovery_point(dir.path()), format!("1 {sealed_through}\n"));
    assert_eq!(log.flushed_offset(), sealed_through);
    assert!(
        log.begin_flush_if_due().unwrap().is_none(),
        "nothing is left to sync until the interval passes"
    );
    // A crash now (no close): only the active segment needs a scan, and nothing is lost.
    let (end, all) = (log.log_end_offset(), read_all(&mut log).len());
    drop(log);
    let mut log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.recovery_report().scanned_segments, 1);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(read_all(&mut log).len(), all);
}

#[test]
fn a_crash_before_the_flush_after_a_roll_scans_the_unsynced_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    while log.segment_count() < 3 {
        log.append(&batch(3, 80, 0), 1).unwrap();
    }
    let (end, all) = (log.log_end_offset(), read_all(&mut log).len());
    drop(log);
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        log.recovery_report().scanned_segments,
        3,
        "the recovery point stayed before both sealed segments"
    );
    assert_eq!(log.recovery_report().truncated_bytes, 0);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(read_all(&mut log).len(), all);
    // Open synced everything: the point now names the active segment.
    let base = active_base(&mut log);
    assert_eq!(recovery_point(dir.path()), format!("1 {base}\n"));
}

#[test]
fn a_full_flush_syncs_what_rolls_left_and_moves_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    while log.segment_count() < 2 {
        log.append(&batch(3, 80, 0), 1).unwrap();
    }
    assert_eq!(recovery_point(dir.path()), "1 0\n");
    assert_eq!(log.flush().unwrap(), log.log_end_offset());
    let base = active_base(&mut log);
    assert_eq!(recovery_point(dir.path()), format!("1 {base}\n"));
}

#[test]
fn open_deletes_producer_snapshots_past_the_recovered_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    log.append(&batch(3, 10, 0), 1).unwrap();
    drop(log);
    // A roll's snapshot that outlived the unsynced records it was taken after.
    producers::write_snapshot(
        dir.path(),
        1000,
        &producers::ProducerStates::default(),
        true,
    )
    .unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_end_offset(), 3);
    assert!(producers::list_snapshots(dir.path())
        .unwrap()
        .iter()
        .all(|at| *at <= 3));
}

/// A leader's log with two batches (3 and 2 records, appended at `epochs`), an empty
/// follower's, and the leader's batches as a fetch returns them (the directories last: fields
/// drop in order, so they outlive the logs).
struct LeaderAndFollower {
    leader: Log,
    follower: Log,
    fetched: Bytes,
    _dirs: [tempfile::TempDir; 2],
}

fn leader_and_follower(epochs: [i32; 2]) -> LeaderAndFollower {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut leader = Log::open(dirs[0].path(), small_config()).unwrap();
    let follower = Log::open(dirs[1].path(), small_config()).unwrap();
    leader.append(&batch(3, 10, 0), epochs[0]).unwrap();
    leader.append(&batch(2, 10, 0), epochs[1]).unwrap();
    let fetched = leader.read(0, usize::MAX).unwrap();
    LeaderAndFollower {
        leader,
        follower,
        fetched,
        _dirs: dirs,
    }
}

#[test]
fn replicas_keep_the_leaders_offsets_and_epochs_and_truncate_divergent_tails() {
    // Bound first, so dropped last.
    let LeaderAndFollower {
        _dirs: [_leader_dir, follower_dir],
        mut leader,
        mut follower,
        fetched: all,
    } = leader_and_follower([0, 2]);
    follower.append_replica(&all).unwrap();
    assert_eq!(follower.read(0, usize::MAX).unwrap(), all, "byte for byte");
    assert_eq!(follower.epochs(), &[(0, 0), (2, 3)]);
    assert_eq!(follower.end_offset_for_epoch(1), Some((0, 3)));
    assert!(
        follower.append_replica(&all).is_err(),
        "a batch must continue the log"
    );
    // A deposed leader's tail at epoch 2 diverges from the new leader's epoch 3.
    follower.append(&batch(1, 10, 0), 2).unwrap();
    leader.truncate_to(3).unwrap();
    leader.append(&batch(4, 10, 0), 3).unwrap();
    assert_eq!(leader.end_offset_for_epoch(2), Some((0, 3)));
    follower.truncate_to(3).unwrap();
    assert_eq!(follower.epochs(), &[(0, 0)]);
    let tail = leader.read(3, usize::MAX).unwrap();
    follower.append_replica(&tail).unwrap();
    assert_eq!(follower.log_end_offset(), 7);
    drop(follower);
    let follower = Log::open(follower_dir.path(), small_config()).unwrap();
    assert_eq!(
        follower.epochs(),
        &[(0, 0), (3, 3)],
        "the cache survives a restart"
    );
    let mut follower = follower;
    follower.reset_to(100).unwrap();
    assert_eq!(
        (follower.log_start_offset(), follower.log_end_offset()),
        (100, 100)
    );
    assert_eq!(follower.last_epoch(), None);
}

/// A follower checks a replicated batch's CRC (which covers every record byte), not its
/// records one by one: the leader walked them when it took the batch from the producer.
#[test]
fn a_replica_refuses_a_batch_damaged_on_the_way_and_writes_nothing() {
    let LeaderAndFollower {
        _dirs,
        mut follower,
        fetched: all,
        ..
    } = leader_and_follower([0, 0]);
    let first_len = batches(all.clone()).next().unwrap().unwrap().size_bytes();
    for at in [first_len - 1, all.len() - 1] {
        let mut damaged = all.to_vec();
        damaged[at] ^= 0x40;
        let err = follower.append_replica(&Bytes::from(damaged)).unwrap_err();
        assert!(err.to_string().contains("CRC"), "{err}");
        assert_eq!(
            follower.log_end_offset(),
            0,
            "nothing of the fetch is written"
        );
    }
    follower.append_replica(&all).unwrap();
    assert_eq!(follower.read(0, usize::MAX).unwrap(), all);
}

#[test]
fn a_failed_fsync_takes_the_log_offline_until_it_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    log.append(&batch(3, 10, 0), 0).unwrap();
    // What `flush` and the tick do when fdatasync reports an error (EIO): the kernel may have
    // dropped the dirty pages, so the log must not go on as if nothing happened.
    log.flush_failed(&Error::io(
        "sync segment",
        dir.path(),
        std::io::Error::from_raw_os_error(5),
    ));
    assert!(log.failure().is_some());
    for result in [
        log.append(&batch(1, 10, 0), 0).map(|_| ()),
        log.read(0, 4096).map(|_| ()),
        log.flush().map(|_| ()),
        log.truncate_to(1).map(|_| ()),
    ] {
        let error = result.expect_err("a failed log refuses appends, reads, flushes, truncation");
        assert!(matches!(error, Error::LogFailed { .. }), "{error}");
        assert_eq!(error.error_code(), rill_protocol::ErrorCode::STORAGE_ERROR);
    }
    assert!(
        log.begin_flush_if_due().unwrap().is_none(),
        "no flush is retried on a failed log"
    );
    drop(log);
    // A restart re-verifies the data from the recovery point: the log serves again.
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_end_offset(), 3);
    assert_eq!(read_all(&mut log).len(), 1);
}

#[test]
fn a_rotten_batch_length_in_a_trusted_sealed_segment_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    for _ in 0..4 {
        log.append(&batch(2, 10, 0), 0).unwrap();
    }
    log.roll().unwrap();
    log.append(&batch(2, 10, 0), 0).unwrap();
    log.close().unwrap();
    // The second batch of the sealed first segment (trusted at open: before the recovery
    // point) gets a length that makes its size 0.
    let path = dir.path().join("00000000000000000000.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let first = 12 + i32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    bytes[first + 8..first + 12].copy_from_slice(&(-12i32).to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    let error = log
        .read(4, 1 << 20)
        .expect_err("a rotten length is reported");
    assert!(matches!(error, Error::CorruptLog { .. }), "{error}");
    // Reads before it still work.
    assert!(!log.read(0, 1).unwrap().is_empty());
}

#[test]
fn an_epoch_checkpoint_that_lags_the_log_is_rebuilt_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    log.append(&batch(2, 10, 0), 0).unwrap();
    log.append(&batch(2, 10, 0), 3).unwrap();
    log.close().unwrap();
    // A checkpoint that missed epoch 3 (its rename was lost in a power failure).
    std::fs::write(dir.path().join(crate::log::epochs::EPOCH_FILE), "1\n0 0\n").unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.epochs(), &[(0, 0), (3, 2)]);
}

fn idempotent(producer_id: i64, epoch: i16, sequence: i32, records: usize) -> Bytes {
    let mut builder = RecordBatchBuilder::new().producer(producer_id, epoch, sequence);
    for i in 0..records {
        builder.append(
            now_ms(),
            None,
            Some(format!("v{i}-{:>60}", "").as_bytes()),
            &[],
        );
    }
    builder.build()
}

fn producer_code(result: crate::Result<AppendInfo>) -> rill_protocol::ErrorCode {
    match result {
        Err(e) => e.error_code(),
        Ok(info) => panic!("expected a refusal, got {info:?}"),
    }
}

#[test]
fn idempotent_batches_are_written_once_across_rolls_reopens_and_crashes() {
    use rill_protocol::ErrorCode;
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    let mut sequence = 0;
    let mut offsets = Vec::new();
    for _ in 0..40 {
        let info = log.append(&idempotent(9, 0, sequence, 10), 0).unwrap();
        offsets.push(info.base_offset);
        sequence += 10;
    }
    assert!(log.segment_count() > 3, "rolled, writing snapshots");
    let end = log.log_end_offset();
    // A retry of the last batch: its original offsets, nothing written.
    let again = log.append(&idempotent(9, 0, sequence - 10, 10), 0).unwrap();
    assert_eq!(again.base_offset, offsets[39]);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(
        producer_code(log.append(&idempotent(9, 0, sequence + 5, 1), 0)),
        ErrorCode::OUT_OF_ORDER_SEQUENCE
    );
    assert_eq!(
        producer_code(log.append(&idempotent(10, 0, 7, 1), 0)),
        ErrorCode::UNKNOWN_PRODUCER_ID
    );
    // Non-idempotent batches are never checked.
    log.append(&batch(2, 10, 1), 0).unwrap();
    let end = log.log_end_offset();
    drop(log); // a crash: the state is rebuilt from the last roll's snapshot and the log
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    assert!(!producers::list_snapshots(dir.path()).unwrap().is_empty());
    let again = log.append(&idempotent(9, 0, sequence - 10, 10), 0).unwrap();
    assert_eq!(again.base_offset, offsets[39]);
    assert_eq!(log.log_end_offset(), end);
    log.append(&idempotent(9, 0, sequence, 1), 0).unwrap();
    log.close().unwrap();
    // From the close snapshot alone; then without any snapshot, from the log itself.
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        log.producer_state(9)
            .unwrap()
            .batches
            .back()
            .unwrap()
            .first_seq,
        sequence
    );
    drop(log);
    producers::delete_snapshots(dir.path(), |_| true).unwrap();
    let mut log = Log::open(dir.path(), small_config()).unwrap();
    let again = log.append(&idempotent(9, 0, sequence, 1), 0).unwrap();
    assert_eq!(again.base_offset, end);
    // Truncation forgets what it removed: the cut batch may be written again.
    log.truncate_to(offsets[39]).unwrap();
    let info = log.append(&idempotent(9, 0, sequence - 10, 10), 0).unwrap();
    assert_eq!(info.base_offset, offsets[39]);
    // Expiration forgets a silent producer.
    assert_eq!(log.expire_producers(now_ms() + 2 * 24 * 3600 * 1000), 1);
    assert_eq!(log.producer_count(), 0);
}

/// Found by the fault suite: preallocation went in whole `preallocate_bytes` steps whatever
/// the segment size, so each partition with 1 MiB segments reserved 16 MiB and a few of them
/// filled a small disk. Now the active segment reserves at most its size (or one larger batch).
#[test]
fn preallocation_never_goes_past_the_segment_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        preallocate_bytes: 16 << 20,
        ..small_config()
    };
    let mut log = Log::open(dir.path(), config).unwrap();
    log.append(&batch(3, 10, 1000), 0).unwrap();
    let allocated = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .max()
            .unwrap()
    };
    assert_eq!(
        allocated(),
        64 * 1024,
        "one small batch reserves the segment size, not 16 MiB"
    );
    // A batch larger than a segment still goes in whole.
    let big = batch(1, 100 * 1024, 2000);
    log.append(&big, 0).unwrap();
    let allocated = allocated();
    assert!(
        allocated >= big.len() as u64 && allocated < 16 << 20,
        "{allocated}"
    );
}

/// Small segments and preallocation steps, so that appends in the page cache meet every
/// reason to be put off within a few batches.
fn page_cache_test_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 512,
        preallocate_bytes: 16 * 1024,
        retention_ms: None,
        flush: FlushPolicy::Os,
        ..LogConfig::default()
    }
}

/// `append_in_page_cache` appends only what needs no file operation besides the write into the
/// page cache, and otherwise writes and changes nothing (the caller appends the usual way).
#[test]
fn an_append_in_the_page_cache_is_put_off_when_it_needs_more() {
    let dir = tempfile::tempdir().unwrap();
    let config = page_cache_test_config();
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    let small = batch(2, 100, 1000);
    // The first append records epoch 3 (a file write): put off.
    assert!(log.append_in_page_cache(&small, 3).unwrap().is_none());
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.last_epoch(), None);
    log.append(&small, 3).unwrap();
    // Within the preallocated space, same epoch: appended here.
    let info = log.append_in_page_cache(&small, 3).unwrap().unwrap();
    assert_eq!((info.base_offset, info.last_offset), (2, 3));
    // A new epoch: put off.
    assert!(log.append_in_page_cache(&small, 4).unwrap().is_none());
    assert_eq!(log.log_end_offset(), 4);
    // Past the preallocated 16 KiB: put off; the usual append preallocates, then it fits.
    let big = batch(1, 16 * 1024, 1000);
    assert!(log.append_in_page_cache(&big, 3).unwrap().is_none());
    assert_eq!(log.log_end_offset(), 4);
    log.append(&big, 3).unwrap();
    assert!(log.append_in_page_cache(&small, 3).unwrap().is_some());
    // Filling the segment: what is put off (a preallocation step, then the roll past 64 KiB)
    // leaves the log as it was, and the usual append then does it.
    let mut rolled = false;
    for _ in 0..20 {
        let (end, segments) = (log.log_end_offset(), log.segment_count());
        if log.append_in_page_cache(&big, 3).unwrap().is_none() {
            assert_eq!((log.log_end_offset(), log.segment_count()), (end, segments));
            log.append(&big, 3).unwrap();
            if log.segment_count() > segments {
                rolled = true;
                break;
            }
        }
    }
    assert!(rolled, "the segment never rolled");
    // Bad input is refused as by `append`, with nothing written.
    let end = log.log_end_offset();
    let mut corrupt = small.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert!(log.append_in_page_cache(&Bytes::from(corrupt), 3).is_err());
    assert_eq!(log.log_end_offset(), end);
    // Every batch reads back, in order.
    let all = read_all(&mut log);
    assert_eq!(all.last().unwrap().last_offset() as u64 + 1, end);
    drop(log);
    // With flush = always (an fdatasync per append): always put off.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        dir.path(),
        LogConfig {
            flush: FlushPolicy::Always,
            ..config
        },
    )
    .unwrap();
    log.append(&small, 3).unwrap();
    assert!(log.append_in_page_cache(&small, 3).unwrap().is_none());
    assert_eq!(log.log_end_offset(), 2);
}

/// A follower's `append_replica_in_page_cache` takes the leader's batches on the same terms:
/// appended when they only go into the page cache, put off (nothing written) when they start
/// a new epoch or need a file operation; what it wrote is the leader's log byte for byte.
#[test]
fn a_replica_append_in_the_page_cache_is_put_off_when_it_needs_more() {
    let config = page_cache_test_config();
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = Log::open(leader_dir.path(), config.clone()).unwrap();
    let mut follower = Log::open(follower_dir.path(), config).unwrap();
    for epoch in [3, 3, 3, 4, 4] {
        for _ in 0..6 {
            leader.append(&batch(4, 700, 1000), epoch).unwrap();
        }
    }
    let (mut inline, mut put_off) = (0, 0);
    while follower.log_end_offset() < leader.log_end_offset() {
        let fetched = leader.read(follower.log_end_offset(), 8 * 1024).unwrap();
        let end = follower.log_end_offset();
        match follower.append_replica_in_page_cache(&fetched).unwrap() {
            Some(info) => {
                assert_eq!(info.base_offset, end);
                inline += 1;
            }
            None => {
                assert_eq!(follower.log_end_offset(), end, "put off, yet written");
                follower.append_replica(&fetched).unwrap();
                put_off += 1;
            }
        }
    }
    assert!(
        inline > 0 && put_off >= 2,
        "inline {inline}, put off {put_off}"
    );
    assert_eq!(follower.epochs(), leader.epochs());
    let (ours, theirs) = (read_all(&mut follower), read_all(&mut leader));
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a.as_bytes(), b.as_bytes());
    }
}

/// `recent_from` names where the last 4-8 MiB of appends to the active segment begin: the log
/// end until something is appended, then the first of them, moving up in steps as more is
/// appended, and back to the log end after a roll, a truncation or a reset (what was written
/// before is no longer known to be recent there) and after a reopen.
#[test]
fn recent_appends_start_within_the_last_steps_of_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        flush: FlushPolicy::Os,
        retention_ms: None,
        ..LogConfig::default()
    };
    let mut log = Log::open(dir.path(), config.clone()).unwrap();
    assert_eq!(log.recent_from(), 0);
    // 64 KiB batches of one record each: offset n starts at about n * 64 KiB.
    let big = batch(1, 64 << 10, 1000);
    log.append(&big, 1).unwrap();
    assert_eq!(log.recent_from(), 0);
    let step = partition::RECENT_STEP_BYTES;
    for _ in 0..400 {
        log.append(&big, 1).unwrap();
        let end = log.log_end_offset();
        let from = log.recent_from();
        assert!(from < end, "the last append is recent");
        // Never more than two steps and one append behind the end, never less than one
        // step once that much was written.
        let behind = (end - from) * big.len() as u64;
        assert!(
            behind <= 2 * step + big.len() as u64,
            "{behind} bytes behind"
        );
        if end * big.len() as u64 >= 2 * step {
            assert!(behind >= step, "only {behind} bytes behind");
        }
        // What it names reads back.
        assert!(!log.read(from, 1).unwrap().is_empty());
    }
    // A roll: nothing in the new segment yet.
    log.roll().unwrap();
    let end = log.log_end_offset();
    assert_eq!(log.recent_from(), end);
    log.append(&big, 1).unwrap();
    assert_eq!(log.recent_from(), end);
    for _ in 0..100 {
        log.append(&big, 1).unwrap();
    }
    // A truncation: back to the end.
    let end = log.truncate_to(log.log_end_offset() - 10).unwrap();
    assert_eq!(log.recent_from(), end);
    log.append(&big, 1).unwrap();
    assert_eq!(log.recent_from(), end);
    // A reset: back to the new end.
    log.reset_to(5_000).unwrap();
    assert_eq!(log.recent_from(), 5_000);
    log.append(&big, 1).unwrap();
    assert_eq!(log.recent_from(), 5_000);
    log.append(&big, 1).unwrap();
    drop(log);
    // Reopened: nothing this process wrote.
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.recent_from(), log.log_end_offset());
}
