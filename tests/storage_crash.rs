//! Durability under SIGKILL: a child process appends with flush policy `always` and reports each
//! batch once `append` returned; the parent kills it at random moments, reopens the log, and
//! checks that every reported batch is there byte for byte and that nothing torn is served.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{batch, Rng};
use rill_broker::log::{FlushPolicy, Log, LogConfig};
use rill_protocol::batch::{batches, RecordBatch};

const CHILD_DIR_ENV: &str = "RILL_CRASH_CHILD_DIR";

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        preallocate_bytes: 16 * 1024,
        retention_ms: None,
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    }
}

/// The child: appends until killed, printing `ACK base last crc` after each durable append.
/// It does nothing when run as an ordinary test.
#[test]
fn crash_child_process() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let mut log = Log::open(Path::new(&dir), config()).expect("child opens the log");
    let mut stdout = std::io::stdout().lock();
    for i in 0u64.. {
        let records = 1 + (i % 7) as usize;
        let value_bytes = 50 + (i * 131 % 3000) as usize;
        let info = log
            .append(&batch(records, value_bytes, i as i64, (i % 256) as u8), 3)
            .expect("append");
        let stored = batches(log.read(info.base_offset, 1).expect("read back"))
            .next()
            .expect("one batch")
            .expect("valid");
        writeln!(
            stdout,
            "ACK {} {} {}",
            info.base_offset,
            info.last_offset,
            stored.crc()
        )
        .expect("stdout");
        stdout.flush().expect("stdout");
    }
}

#[test]
fn acknowledged_batches_survive_sigkill_at_random_moments() {
    let mut rng = Rng::from_env_or_time("acknowledged_batches_survive_sigkill_at_random_moments");
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged: Vec<(u64, u64, u32)> = Vec::new();
    for round in 0..8 {
        let mut child = Command::new(&exe)
            .args([
                "crash_child_process",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = rng.range(1, 120);
        let mut acks = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let fields: Vec<u64> = rest.split(' ').map(|f| f.parse().unwrap()).collect();
            acknowledged.push((fields[0], fields[1], fields[2] as u32));
            acks += 1;
            if acks == kill_after {
                // SIGKILL while the child is somewhere inside its next append.
                child.kill().unwrap();
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(acks, kill_after, "round {round}: the child died early");

        let mut log = Log::open(dir.path(), config()).unwrap();
        for &(base, last, crc) in &acknowledged {
            let stored = batches(log.read(base, 1).unwrap())
                .next()
                .expect("acknowledged batch is present")
                .unwrap();
            assert_eq!(
                (
                    stored.base_offset() as u64,
                    stored.last_offset() as u64,
                    stored.crc()
                ),
                (base, last, crc),
                "round {round}"
            );
        }
        // Nothing torn is served: every batch from the start validates and offsets are dense.
        let mut offset = 0;
        while offset < log.log_end_offset() {
            for b in batches(log.read(offset, 1 << 20).unwrap()) {
                let b: RecordBatch = b.unwrap();
                b.validate().unwrap();
                assert_eq!(b.base_offset() as u64, offset);
                offset = b.last_offset() as u64 + 1;
            }
        }
        let (_, last, _) = acknowledged.last().copied().unwrap();
        assert!(
            log.log_end_offset() > last,
            "round {round}: the end is past the last acknowledged offset"
        );
        log.close().unwrap();
    }
    assert!(acknowledged.len() >= 8);
}
