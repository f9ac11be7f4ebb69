//! Compaction throughput and memory: one cleaning pass over a log of JSON-like events that
//! overwrite a fixed key set, plain and lz4-compressed. Prints MB/s read by the pass, what it
//! wrote and its key map's memory. `cargo bench --bench cleaner` (docs/STORAGE.md 8b).

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use bytes::Bytes;
use rill_broker::log::cleaner::clean;
use rill_broker::log::{
    CleanerConfig, CleanupPolicy, FlushPolicy, LogConfig, LogManager, TopicPartition,
};
use rill_protocol::batch::{Compression, RecordBatchBuilder};

const LOG_BYTES: u64 = 256 << 20;
const KEYS: usize = 100_000;
const RECORDS_PER_BATCH: usize = 100;

fn batch(first: usize, codec: Compression) -> Bytes {
    let mut builder = RecordBatchBuilder::new();
    for i in first..first + RECORDS_PER_BATCH {
        let key = format!("user-{}", i % KEYS);
        let value = format!(
            "{{\"ts\":{},\"user\":\"{key}\",\"event\":\"profile-update\",\"plan\":\"pro\",\"country\":\"NL\",\"n\":{i},\"pad\":\"{}\"}}",
            1_764_000_000_000u64 + i as u64,
            "x".repeat(380)
        );
        builder.append(
            1_764_000_000_000,
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            &[],
        );
    }
    builder.build_compressed(codec).expect("compress")
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    for codec in [Compression::None, Compression::Lz4] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            segment_bytes: 64 << 20,
            retention_ms: None,
            flush: FlushPolicy::Os,
            cleanup_policy: CleanupPolicy::COMPACT,
            ..LogConfig::default()
        };
        let logs = LogManager::open(dir.path(), config.clone()).expect("open");
        let tp = TopicPartition::new("bench", 0);
        let partition = logs.get_or_create(&tp, Some(config), 0).expect("log");
        let mut n = 0;
        partition
            .with_log(|log| {
                while log.size_bytes() < LOG_BYTES {
                    log.append(&batch(n, codec), 0)?;
                    n += RECORDS_PER_BATCH;
                }
                log.roll()
            })
            .expect("fill");
        let (bytes, end) = partition
            .with_log(|log| Ok((log.size_bytes(), log.log_end_offset())))
            .expect("size");
        let rss_before = peak_rss_mib();
        let started = Instant::now();
        let stats = clean(
            &partition,
            end,
            rill_broker::log::now_ms(),
            &CleanerConfig::default(),
            &AtomicBool::new(false),
        )
        .expect("clean")
        .expect("a pass ran");
        let elapsed = started.elapsed();
        println!(
            "cleaner {:>5}: {} records, {:.1} MB log -> {:.1} MB in {:.2} s: {:.0} MB/s of log ({:.0} MB/s read incl. the map pass), {} keys, map {:.1} MiB, peak RSS {:.0} -> {:.0} MiB",
            codec.name(),
            n,
            bytes as f64 / 1e6,
            stats.bytes_written as f64 / 1e6,
            elapsed.as_secs_f64(),
            bytes as f64 / 1e6 / elapsed.as_secs_f64(),
            stats.read_mb_per_second(),
            stats.map_keys,
            stats.map_bytes as f64 / (1 << 20) as f64,
            rss_before,
            peak_rss_mib(),
        );
    }
}
