//! End-to-end throughput through a real `rill-broker` process on loopback: produce 1 KiB records
//! with the batching producer (acks=1), and consume them back. `cargo bench --bench e2e`.
//! The broker binary is built (release) by this bench if needed.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rill_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig,
    Record, SeekTo,
};

const RECORDS: u64 = 50_000;
const RECORD_BYTES: usize = 1024;

struct Broker(Child, String);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(data_dir: &std::path::Path) -> Broker {
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "rill-broker",
            "--bin",
            "rill-broker",
        ])
        .current_dir(root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building rill-broker failed");
    let mut child = Command::new(format!("{root}/target/release/rill-broker"))
        .args([
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--flush",
            "os",
            "--log-level",
            "warn,rill_broker::server=info",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rill-broker");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("broker exited")
            .expect("read broker log");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Broker(child, address)
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let data = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir");
    let broker = start_broker(data.path());
    let client = runtime.block_on(async {
        let client = Client::connect(ClientConfig::new(&broker.1))
            .await
            .expect("connect");
        Admin::new(client.clone())
            .create_topic(NewTopic::new("bench", 1))
            .await
            .expect("create topic");
        client
    });
    let value = Bytes::from(vec![b'x'; RECORD_BYTES]);
    let mut group = c.benchmark_group("e2e");
    group.throughput(Throughput::Bytes(RECORDS * RECORD_BYTES as u64));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("produce_50k_1KiB_acks1", |b| {
        b.to_async(&runtime).iter(|| async {
            let producer = Producer::new(client.clone(), ProducerConfig::default());
            let mut last = None;
            for _ in 0..RECORDS {
                last = Some(
                    producer
                        .send(Record::new("bench").value(value.clone()))
                        .await
                        .expect("send"),
                );
            }
            producer.flush().await;
            last.expect("one record").await.expect("acknowledged");
        })
    });
    group.bench_function("consume_50k_1KiB", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let client = client.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
                    consumer.assign([("bench".to_string(), 0)]);
                    consumer.seek_all(SeekTo::Earliest).await.expect("seek");
                    let started = Instant::now();
                    let mut read = 0;
                    while read < RECORDS {
                        read += consumer
                            .poll(Duration::from_millis(500))
                            .await
                            .expect("poll")
                            .len() as u64;
                    }
                    total += started.elapsed();
                }
                total
            }
        })
    });
    group.finish();
    drop(broker);
}

criterion_group!(e2e, benches);
criterion_main!(e2e);
