//! Protocol micro-benchmarks: record batch encode, decode + iterate, and CRC-32 over 1 MiB.
//! Run with `cargo bench --bench protocol`; figures go in docs/PROTOCOL.md and the issue notes.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rill_protocol::batch::{RecordBatch, RecordBatchBuilder};

const RECORD_BYTES: usize = 1024;
const BATCH_BYTES: usize = 64 * 1024;
const RECORDS: usize = BATCH_BYTES / RECORD_BYTES - 1;

fn build_batch(value: &[u8]) -> Bytes {
    let mut builder = RecordBatchBuilder::with_capacity(BATCH_BYTES + 1024);
    for i in 0..RECORDS {
        builder.append(
            1_700_000_000_000 + i as i64,
            Some(b"key-0000"),
            Some(value),
            &[],
        );
    }
    builder.build()
}

fn benches(c: &mut Criterion) {
    let value = vec![0x5a; RECORD_BYTES];
    let batch = build_batch(&value);

    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("encode_64KiB_of_1KiB_records", |b| {
        b.iter(|| build_batch(black_box(&value)))
    });
    group.bench_function("decode_validate_iterate_64KiB", |b| {
        b.iter(|| {
            let parsed = RecordBatch::parse(black_box(batch.clone())).expect("valid batch");
            parsed.validate().expect("valid batch");
            let mut total = 0;
            for record in parsed.records().expect("uncompressed") {
                total += record.expect("valid record").value.map_or(0, |v| v.len());
            }
            total
        })
    });
    group.finish();

    let buffer = vec![0xa5u8; 1 << 20];
    let mut group = c.benchmark_group("crc32");
    group.throughput(Throughput::Bytes(buffer.len() as u64));
    group.bench_function("crc32c_1MiB", |b| {
        b.iter(|| rill_protocol::batch::checksum(black_box(&buffer)))
    });
    group.bench_function("crc32fast_1MiB", |b| {
        b.iter(|| crc32fast::hash(black_box(&buffer)))
    });
    group.finish();
}

criterion_group! {
    name = protocol;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(protocol);
