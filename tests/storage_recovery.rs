//! Recovery of a partition log from damaged files: every kind of damage ends in a valid log
//! (shorter when data was damaged) and a clear log line, never a panic or a SIGBUS.

mod common;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{batch, capture_logs, Rng};
use rill_broker::log::{FlushPolicy, Log, LogConfig, RECOVERY_POINT_FILE};
use rill_protocol::batch::batches;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        preallocate_bytes: 8192,
        retention_ms: None,
        flush: FlushPolicy::Os,
        ..LogConfig::default()
    }
}

/// A closed log of 60 batches of 2 records (offsets 0..120) spread over several segments.
fn build_log(dir: &Path) -> Vec<Bytes> {
    let mut log = Log::open(dir, config()).unwrap();
    for i in 0..60u8 {
        log.append(&batch(2, 100, 1_000 * i64::from(i), i), 0)
            .unwrap();
    }
    assert!(log.segment_count() >= 4);
    let all = read_all(&mut log);
    log.close().unwrap();
    all
}

/// Every batch from the start, each checked (structure and CRC).
fn read_all(log: &mut Log) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let bytes = log.read(offset, 1 << 20).unwrap();
        assert!(
            !bytes.is_empty(),
            "no data at {offset} below the log end {}",
            log.log_end_offset()
        );
        for b in batches(bytes) {
            let b = b.unwrap();
            b.validate().unwrap();
            assert_eq!(b.base_offset() as u64, offset, "offsets are contiguous");
            offset = b.last_offset() as u64 + 1;
            out.push(b.into_bytes());
        }
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

fn with_ext(segment: &Path, ext: &str) -> PathBuf {
    segment.with_extension(ext)
}

/// Reopens and checks: a valid log holding a prefix of `before`, with `expect_lost` batches gone.
fn reopen_and_check(
    dir: &Path,
    before: &[Bytes],
    expect_lost: std::ops::RangeInclusive<usize>,
    expect_line: &str,
) -> Log {
    let (log, logs) = capture_logs(|| Log::open(dir, config()));
    let mut log = log.unwrap();
    let after = read_all(&mut log);
    let lost = before.len() - after.len();
    assert!(
        expect_lost.contains(&lost),
        "lost {lost} batches, expected {expect_lost:?}; log:\n{logs}"
    );
    assert_eq!(
        &before[..after.len()],
        &after[..],
        "what survives is exactly the old prefix"
    );
    assert!(
        logs.contains(expect_line),
        "expected a log line containing {expect_line:?}, got:\n{logs}"
    );
    // The log keeps working: the next append gets the next offset and reads back.
    let end = log.log_end_offset();
    assert_eq!(
        log.append(&batch(1, 10, 0, 99), 0).unwrap().base_offset,
        end
    );
    log
}

#[test]
fn flipped_byte_in_the_active_segment_cuts_from_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let before = build_log(dir.path());
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&last, bytes).unwrap();
    let log = reopen_and_check(dir.path(), &before, 1..=20, "truncated invalid log data");
    assert!(log.recovery_report().truncated_bytes > 0);
}

#[test]
fn flipped_byte_in_a_sealed_segment_after_the_recovery_point_cuts_there_and_drops_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let before = build_log(dir.path());
    // Without a checkpoint every segment counts as unflushed and is scanned.
    std::fs::remove_file(dir.path().join(RECOVERY_POINT_FILE)).unwrap();
    let second = segments(dir.path())[1].clone();
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&second, bytes).unwrap();
    let log = reopen_and_check(dir.path(), &before, 20..=59, "truncated invalid log data");
    assert!(log.recovery_report().deleted_segments >= 1);
}

#[test]
fn truncated_tail_cuts_the_torn_batch() {
    let dir = tempfile::tempdir().unwrap();
    let before = build_log(dir.path());
    let last = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    reopen_and_check(dir.path(), &before, 1..=1, "truncated invalid log data");
}

#[test]
fn zero_filled_tail_is_preallocation_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let before = build_log(dir.path());
    let last = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len + (1 << 20))
        .unwrap();
    let (log, logs) = capture_logs(|| Log::open(dir.path(), config()));
    let mut log = log.unwrap();
    assert_eq!(read_all(&mut log), before, "nothing lost");
    assert_eq!(log.recovery_report().truncated_bytes, 0);
    assert!(
        !logs.contains("truncated invalid log data"),
        "zeros are not reported as corruption:\n{logs}"
    );
}

#[test]
fn zeroed_bytes_inside_the_last_batch_cut_it() {
    let dir = tempfile::tempdir().unwrap();
    let before = build_log(dir.path());
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let len = bytes.len();
    bytes[len - 50..].fill(0);
    std::fs::write(&last, bytes).unwrap();
    reopen_and_check(dir.path(), &before, 1..=1, "truncated invalid log data");
}

#[test]
fn truncated_index_of_a_sealed_segment_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let before = build_log(dir.path());
    let first = segments(dir.path())[0].clone();
    let index = with_ext(&first, "index");
    let len = std::fs::metadata(&index).unwrap().len();
    assert!(len >= 8, "the test needs a non-empty index");
    OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let mut log = reopen_and_check(
        dir.path(),
        &before,
        0..=0,
        "rebuilt missing or corrupt index files",
    );
    assert_eq!(log.recovery_report().rebuilt_indexes, 1);
    assert_eq!(std::fs::metadata(&index).unwrap().len() % 8, 0);
    // Reads through the rebuilt index land on the right batches.
    assert_eq!(
        batches(log.read(7, 1).unwrap())
            .next()
            .unwrap()
            .unwrap()
            .base_offset(),
        6
    );
}

#[test]
fn garbage_and_missing_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let before = build_log(dir.path());
    let sealed = segments(dir.path());
    let garbage: Vec<u8> = (0..96u32).map(|i| (i * 37 % 251) as u8).rev().collect();
    std::fs::write(with_ext(&sealed[0], "index"), &garbage).unwrap();
    std::fs::write(with_ext(&sealed[0], "timeindex"), &garbage).unwrap();
    std::fs::remove_file(with_ext(&sealed[1], "timeindex")).unwrap();
    let mut log = reopen_and_check(
        dir.path(),
        &before,
        0..=0,
        "rebuilt missing or corrupt index files",
    );
    assert_eq!(log.recovery_report().rebuilt_indexes, 2);
    assert_eq!(log.offset_for_timestamp(5_000).unwrap(), Some((10, 5_000)));
}

#[test]
fn opening_never_fails_on_arbitrary_segment_contents() {
    let mut rng = Rng::from_env_or_time("opening_never_fails_on_arbitrary_segment_contents");
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let before = build_log(dir.path());
        std::fs::remove_file(dir.path().join(RECOVERY_POINT_FILE)).unwrap();
        let files = segments(dir.path());
        let victim = &files[rng.range(0, files.len() as u64) as usize];
        let mut bytes = std::fs::read(victim).unwrap();
        match round % 3 {
            // Random bytes over a random range.
            0 => {
                let start = rng.range(0, bytes.len() as u64) as usize;
                let end = rng.range(start as u64, bytes.len() as u64 + 1) as usize;
                for b in &mut bytes[start..end] {
                    *b = rng.next_u64() as u8;
                }
            }
            // A whole file of garbage.
            1 => bytes.iter_mut().for_each(|b| *b = rng.next_u64() as u8),
            // A huge declared batch length.
            _ => bytes[8..12].copy_from_slice(&i32::MAX.to_be_bytes()),
        }
        std::fs::write(victim, bytes).unwrap();
        if rng.range(0, 2) == 0 {
            std::fs::write(
                with_ext(victim, "index"),
                vec![0xffu8; rng.range(0, 64) as usize],
            )
            .unwrap();
        }
        let mut log = Log::open(dir.path(), config()).unwrap();
        let after = read_all(&mut log);
        assert!(after.len() <= before.len());
        assert_eq!(&before[..after.len()], &after[..]);
    }
}
