//! Compressed batches end to end: every codec through the client and the CLI, mixed codecs in
//! one partition, and compressed batches replicated to followers and served by a new leader
//! after failover, each consumed back record for record.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::Cluster;
use common::BrokerProcess;
use rill_client::{
    Acks, Admin, Compression, Consumer, ConsumerConfig, ConsumerRecord, NewTopic, Producer,
    ProducerConfig, Record,
};

fn json_event(i: usize) -> String {
    format!(
        "{{\"ts\":{},\"user\":\"user-{}\",\"event\":\"click\",\"page\":\"/items/{}\",\"n\":{i}}}",
        1_764_000_000_000u64 + i as u64,
        i % 31,
        i % 7
    )
}

/// Sends `count` records numbered from `first`, compressed with `codec`, to partition 0.
async fn send(
    client: &rill_client::Client,
    topic: &str,
    codec: Compression,
    first: usize,
    count: usize,
    acks: Acks,
) {
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            compression: codec,
            acks,
            batch_size_bytes: 16 << 10,
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for i in first..first + count {
        let record = Record::new(topic)
            .partition(0)
            .key(format!("key-{}", i % 13))
            .value(json_event(i))
            .header("codec", codec.name());
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await;
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

async fn consume(client: rill_client::Client, topic: &str, expected: usize) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    consumer.assign_topic(topic).await.unwrap();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while records.len() < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "consumed {} of {expected}",
            records.len()
        );
        records.extend(consumer.poll(Duration::from_millis(500)).await.unwrap());
    }
    records
}

/// Records `0..n` as sent: keys, values, the codec header, offsets 0..n in order.
fn check(records: &[ConsumerRecord], codecs: &[(Compression, usize)]) {
    let mut i = 0;
    for (codec, count) in codecs {
        for _ in 0..*count {
            let r = &records[i];
            assert_eq!(r.offset, i as u64);
            assert_eq!(r.key.as_deref(), Some(format!("key-{}", i % 13).as_bytes()));
            assert_eq!(r.value.as_deref(), Some(json_event(i).as_bytes()));
            assert_eq!(r.headers[0].value.as_deref(), Some(codec.name().as_bytes()));
            i += 1;
        }
    }
    assert_eq!(records.len(), i);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_round_trips_and_codecs_mix_in_one_partition() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let client = common::client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("mixed", 1))
        .await
        .unwrap();
    let mut codecs = Vec::new();
    let mut first = 0;
    for codec in Compression::ALL
        .into_iter()
        .chain([Compression::Zstd, Compression::None])
    {
        send(&client, "mixed", codec, first, 300, Acks::Leader).await;
        codecs.push((codec, 300));
        first += 300;
    }
    let records = consume(client.clone(), "mixed", first).await;
    check(&records, &codecs);

    // The CLI: `rill produce --compression` for each codec, `rill consume` reads it back.
    for codec in Compression::ALL {
        let topic = format!("cli-{codec}");
        let input: String = (0..50).map(|i| format!("{}\n", json_event(i))).collect();
        Admin::new(client.clone())
            .create_topic(NewTopic::new(&topic, 1))
            .await
            .unwrap();
        let mut child = Command::new(common::cli_binary())
            .args(["produce", &topic, "--compression", codec.name()])
            .env("RILL_BROKERS", &broker.address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let produced = child.wait_with_output().unwrap();
        assert!(
            produced.status.success(),
            "{}",
            String::from_utf8_lossy(&produced.stderr)
        );
        let consumed = Command::new(common::cli_binary())
            .args(["consume", &topic, "--from-beginning", "--count", "50"])
            .env("RILL_BROKERS", &broker.address)
            .output()
            .unwrap();
        assert!(
            consumed.status.success(),
            "{}",
            String::from_utf8_lossy(&consumed.stderr)
        );
        assert_eq!(
            String::from_utf8(consumed.stdout).unwrap(),
            input,
            "{codec}"
        );
    }
    let bad = Command::new(common::cli_binary())
        .args(["produce", "mixed", "--compression", "brotli"])
        .env("RILL_BROKERS", &broker.address)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown compression"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_replicate_and_survive_a_failover() {
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client().await;
    Admin::new(client.clone())
        .create_topic(NewTopic {
            replication_factor: 3,
            ..NewTopic::new("replicated", 1)
        })
        .await
        .unwrap();
    let mut codecs = Vec::new();
    for (n, codec) in [
        Compression::Zstd,
        Compression::Lz4,
        Compression::Gzip,
        Compression::Snappy,
    ]
    .into_iter()
    .enumerate()
    {
        send(&client, "replicated", codec, n * 400, 400, Acks::All).await;
        codecs.push((codec, 400));
    }
    let leader = Admin::new(client.clone())
        .describe_topic("replicated")
        .await
        .unwrap()[0]
        .leader
        .expect("a leader");
    cluster.kill(leader);
    let records = consume(cluster.client().await, "replicated", 1600).await;
    check(&records, &codecs);
}
