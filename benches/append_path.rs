//! Chooses the append path (docs/STORAGE.md): copying into a preallocated writable mapping versus
//! positional writes (`pwrite`) into a file preallocated with `fallocate`, each with no sync, a
//! sync after every 64 KiB batch, and a sync after every MiB. `cargo bench --bench append_path`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memmap2::MmapMut;

const BATCH_BYTES: usize = 64 * 1024;
const FILE_BYTES: usize = 32 << 20;

#[derive(Clone, Copy)]
enum Sync {
    Never,
    EveryBatch,
    EveryMiB,
}

fn preallocated(dir: &Path) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("segment"))
        .expect("create");
    rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::empty(),
        0,
        FILE_BYTES as u64,
    )
    .expect("fallocate");
    file
}

fn should_sync(sync: Sync, written: usize) -> bool {
    match sync {
        Sync::Never => false,
        Sync::EveryBatch => true,
        Sync::EveryMiB => written.is_multiple_of(1 << 20),
    }
}

/// Writes FILE_BYTES in 64 KiB batches through a writable mapping; returns the time taken.
fn through_mapping(dir: &Path, batch: &[u8], sync: Sync) -> Duration {
    let file = preallocated(dir);
    let start = Instant::now();
    // SAFETY: the file is private to this bench and never truncated while mapped.
    let mut map = unsafe { MmapMut::map_mut(&file) }.expect("map");
    let mut position = 0;
    while position < FILE_BYTES {
        map[position..position + batch.len()].copy_from_slice(batch);
        position += batch.len();
        if should_sync(sync, position) {
            let from = if matches!(sync, Sync::EveryMiB) {
                position - (1 << 20)
            } else {
                position - batch.len()
            };
            map.flush_range(from, position - from).expect("msync");
        }
    }
    start.elapsed()
}

/// Writes FILE_BYTES in 64 KiB batches with pwrite; returns the time taken.
fn positional(dir: &Path, batch: &[u8], sync: Sync) -> Duration {
    let file = preallocated(dir);
    let start = Instant::now();
    let mut position = 0;
    while position < FILE_BYTES {
        file.write_all_at(batch, position as u64).expect("pwrite");
        position += batch.len();
        if should_sync(sync, position) {
            file.sync_data().expect("fdatasync");
        }
    }
    start.elapsed()
}

fn benches(c: &mut Criterion) {
    let batch = vec![0x5au8; BATCH_BYTES];
    let root = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))
        .expect("bench directory on the project's disk");
    let mut group = c.benchmark_group("append_path");
    group.throughput(Throughput::Bytes(FILE_BYTES as u64));
    for (name, sync) in [
        ("no_sync", Sync::Never),
        ("sync_per_MiB", Sync::EveryMiB),
        ("sync_per_batch", Sync::EveryBatch),
    ] {
        group.bench_function(format!("mmap_copy/{name}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| through_mapping(root.path(), &batch, sync))
                    .sum()
            })
        });
        group.bench_function(format!("pwrite/{name}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| positional(root.path(), &batch, sync))
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = append_path;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(append_path);
