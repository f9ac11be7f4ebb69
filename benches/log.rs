//! Log micro-benchmarks: append of 1 KiB records in 64 KiB batches (flush policy `os`, so this
//! measures the engine, not the disk), and sequential read of the log. `cargo bench --bench log`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rill_broker::log::{FlushPolicy, Log, LogConfig};
use rill_protocol::batch::RecordBatchBuilder;

const BATCHES: usize = 256; // 16 MiB per iteration

fn batch() -> Bytes {
    let value = vec![0x5a; 1024];
    let mut builder = RecordBatchBuilder::with_capacity(65 * 1024);
    while builder.size_bytes() + 1100 < 64 * 1024 {
        builder.append(1_700_000_000_000, Some(b"key-0000"), Some(&value), &[]);
    }
    builder.build()
}

fn config() -> LogConfig {
    LogConfig {
        flush: FlushPolicy::Os,
        segment_bytes: 256 << 20,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn benches(c: &mut Criterion) {
    let batch = batch();
    let bytes_per_iter = (batch.len() * BATCHES) as u64;
    let root = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))
        .expect("bench directory on the project's disk");

    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Bytes(bytes_per_iter));
    group.bench_function("append_64KiB_batches_of_1KiB_records", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir_in(root.path()).expect("temp dir");
                let log = Log::open(dir.path(), config()).expect("open log");
                (dir, log)
            },
            |(dir, mut log)| {
                for _ in 0..BATCHES {
                    log.append(&batch, 0).expect("append");
                }
                (dir, log)
            },
            BatchSize::PerIteration,
        )
    });

    let dir = tempfile::tempdir_in(root.path()).expect("temp dir");
    let mut log = Log::open(dir.path(), config()).expect("open log");
    for _ in 0..BATCHES {
        log.append(&batch, 0).expect("append");
    }
    group.bench_function("sequential_read_1MiB_fetches", |b| {
        b.iter(|| {
            let mut offset = 0;
            let mut bytes = 0usize;
            while offset < log.log_end_offset() {
                let chunk = log.read(offset, 1 << 20).expect("read");
                // Touch every byte, as a socket write would, so the figure includes reading the pages.
                bytes += chunk.iter().map(|b| usize::from(*b & 1)).sum::<usize>();
                let last = rill_protocol::batch::batches(chunk)
                    .last()
                    .expect("batch")
                    .expect("valid");
                offset = last.last_offset() as u64 + 1;
            }
            bytes
        })
    });
    group.finish();
}

criterion_group! {
    name = log;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(5));
    targets = benches
}
criterion_main!(log);
