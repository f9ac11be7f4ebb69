//! Kafka clients against a real `rill-broker`'s Kafka listener (docs/KAFKA.md).
//!
//! rskafka is an independent, pure-Rust implementation of Kafka's protocol (it does not use the
//! `kafka-protocol` crate the listener decodes with): topic admin, produce with every codec,
//! fetch, list offsets. Records cross between the protocols both ways. Bad input on the Kafka
//! port closes the connection and leaves the broker serving.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{kcat, BrokerProcess};
use rill_client::protocol::batch::Header;
use rill_client::{Consumer, ConsumerConfig, Producer, ProducerConfig, Record};
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record as KafkaRecord;

/// An rskafka client of `broker`'s Kafka listener.
async fn kafka_client(broker: &BrokerProcess) -> rskafka::client::Client {
    let address = broker
        .kafka_address
        .clone()
        .expect("the Kafka listener is on");
    ClientBuilder::new(vec![address])
        .build()
        .await
        .expect("rskafka connects to the Kafka listener")
}

/// A keyed record with two headers; `n` makes it unique.
fn kafka_record(partition: i32, codec: usize, n: usize) -> KafkaRecord {
    KafkaRecord {
        key: Some(format!("key-{partition}-{codec}-{n}").into_bytes()),
        value: Some(format!("value {partition}/{codec}/{n} {}", "x".repeat(n * 7)).into_bytes()),
        headers: BTreeMap::from([
            ("codec".to_string(), codec.to_string().into_bytes()),
            ("n".to_string(), n.to_string().into_bytes()),
        ]),
        timestamp: chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + n as i64)
            .expect("a valid timestamp"),
    }
}

/// Every record of `topic`/`partition` from offset 0 to the high watermark, through rskafka.
async fn fetch_all(
    client: &rskafka::client::Client,
    topic: &str,
    partition: i32,
) -> Vec<(i64, KafkaRecord)> {
    let partition_client = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    let end = partition_client.get_offset(OffsetAt::Latest).await.unwrap();
    let mut out = Vec::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while offset < end {
        assert!(
            Instant::now() < deadline,
            "fetching {topic}/{partition} to {end} timed out"
        );
        let (records, _hw) = partition_client
            .fetch_records(offset, 1..1_000_000, 500)
            .await
            .expect("fetch");
        for r in records {
            if r.offset >= offset {
                offset = r.offset + 1;
                out.push((r.offset, r.record));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rskafka_creates_produces_with_every_codec_consumes_lists_offsets_and_deletes() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let kafka = kafka_client(&broker).await;
    let controller = kafka.controller_client().unwrap();
    controller
        .create_topic("kafka-events", 3, 1, 5_000)
        .await
        .expect("CreateTopics");
    let err = controller
        .create_topic("kafka-events", 3, 1, 5_000)
        .await
        .expect_err("a second create fails");
    assert!(err.to_string().contains("TopicAlreadyExists"), "{err}");

    let codecs = [
        Compression::NoCompression,
        Compression::Gzip,
        Compression::Lz4,
        Compression::Snappy,
        Compression::Zstd,
    ];
    let mut sent: BTreeMap<i32, Vec<(i64, KafkaRecord)>> = BTreeMap::new();
    for partition in 0..3 {
        let client = kafka
            .partition_client("kafka-events", partition, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        for (c, codec) in codecs.iter().enumerate() {
            let records: Vec<KafkaRecord> =
                (0..20).map(|n| kafka_record(partition, c, n)).collect();
            let offsets = client
                .produce(records.clone(), *codec)
                .await
                .expect("produce");
            assert_eq!(offsets.len(), 20);
            sent.entry(partition)
                .or_default()
                .extend(offsets.into_iter().zip(records));
        }
        assert_eq!(client.get_offset(OffsetAt::Earliest).await.unwrap(), 0);
        assert_eq!(client.get_offset(OffsetAt::Latest).await.unwrap(), 100);
    }
    // Every record back, in order, at the offsets the produce answers named: keys, values,
    // headers and timestamps exact.
    for (partition, expected) in &sent {
        let got = fetch_all(&kafka, "kafka-events", *partition).await;
        assert_eq!(&got, expected, "partition {partition}");
    }

    // Kafka producer -> Rill consumer: the same records.
    let rill = common::client(&broker.address).await;
    let mut consumer = Consumer::new(rill.clone(), ConsumerConfig::default());
    consumer.assign([("kafka-events".to_string(), 1)]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 100 {
        assert!(
            Instant::now() < deadline,
            "the Rill consumer got {} of 100",
            seen.len()
        );
        seen.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    for (record, (offset, kafka)) in seen.iter().zip(&sent[&1]) {
        assert_eq!(record.offset as i64, *offset);
        assert_eq!(record.key.as_deref(), kafka.key.as_deref());
        assert_eq!(record.value.as_deref(), kafka.value.as_deref());
        assert_eq!(record.timestamp, kafka.timestamp.timestamp_millis());
        let headers: BTreeMap<String, Vec<u8>> = record
            .headers
            .iter()
            .map(|h| {
                let value = h.value.clone().unwrap_or_default().to_vec();
                (String::from_utf8(h.key.to_vec()).unwrap(), value)
            })
            .collect();
        assert_eq!(headers, kafka.headers);
    }

    // Rill producer -> Kafka consumer.
    let producer = Producer::new(rill.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for n in 0..10 {
        let record = Record::new("kafka-events")
            .partition(2)
            .key(format!("rill-{n}"))
            .value(format!("from rill {n}"));
        let mut record = record;
        record.headers.push(Header {
            key: Bytes::from_static(b"origin"),
            value: Some(Bytes::from_static(b"rill")),
        });
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await;
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    let got = fetch_all(&kafka, "kafka-events", 2).await;
    assert_eq!(got.len(), 110);
    for (n, (offset, record)) in got[100..].iter().enumerate() {
        assert_eq!(*offset, 100 + n as i64);
        assert_eq!(record.key.as_deref(), Some(format!("rill-{n}").as_bytes()));
        assert_eq!(
            record.value.as_deref(),
            Some(format!("from rill {n}").as_bytes())
        );
        assert_eq!(
            record.headers.get("origin").map(Vec::as_slice),
            Some(&b"rill"[..])
        );
    }

    // Metadata lists the topic with its partitions; DeleteTopics removes it.
    let topics = kafka.list_topics().await.unwrap();
    let topic = topics
        .iter()
        .find(|t| t.name == "kafka-events")
        .expect("listed");
    assert_eq!(topic.partitions.len(), 3);
    controller
        .delete_topic("kafka-events", 5_000)
        .await
        .expect("DeleteTopics");
    common::eventually_async(Duration::from_secs(30), "the topic to be gone", || {
        let kafka = &kafka;
        async move {
            let topics = kafka.list_topics().await.unwrap();
            !topics.iter().any(|t| t.name == "kafka-events")
        }
    })
    .await;
    assert!(!data.path().join("kafka-events-0").exists());
}

/// Sends `bytes` on a new connection to `address` and reads until the broker closes it (or
/// 10 s pass); what it answered.
fn exchange(address: &str, bytes: &[u8]) -> Vec<u8> {
    let mut socket = std::net::TcpStream::connect(address).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = socket.write_all(bytes);
    // End of input: a truncated frame stays truncated.
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    answer
}

/// A Kafka request frame: size, api key, version, correlation id, client id, body.
fn request(api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&api_key.to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&42i32.to_be_bytes());
    frame.extend_from_slice(&4i16.to_be_bytes());
    frame.extend_from_slice(b"test");
    frame.extend_from_slice(body);
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend(frame);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_kafka_port_is_refused_and_the_broker_keeps_serving() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), &["--max-frame-bytes", "1048576"]);
    let address = broker.kafka_address.clone().unwrap();

    // KIP-511: ApiVersions at a version newer than served gets a version-0 answer with
    // UNSUPPORTED_VERSION (35) and the served ranges.
    let answer = exchange(&address, &request(18, 99, &[]));
    assert!(answer.len() > 14, "an answer: {answer:?}");
    assert_eq!(&answer[4..8], &42i32.to_be_bytes(), "correlation id");
    assert_eq!(&answer[8..10], &35i16.to_be_bytes(), "UNSUPPORTED_VERSION");

    // SASL on a listener that does not require it: ILLEGAL_SASL_STATE (34), as Kafka answers
    // on a plaintext listener; transactions, not served: an answer with UNSUPPORTED_VERSION,
    // so a client set up for them fails at once instead of reconnecting for ever.
    let answer = exchange(
        &address,
        &request(17, 1, &[0, 5, b'P', b'L', b'A', b'I', b'N']),
    );
    assert_eq!(
        &answer[4..8],
        &42i32.to_be_bytes(),
        "SaslHandshake: {answer:?}"
    );
    assert_eq!(
        &answer[8..10],
        &34i16.to_be_bytes(),
        "SaslHandshake: {answer:?}"
    );
    let mut end_txn = vec![0, 2, b't', b'x'];
    end_txn.extend_from_slice(&7i64.to_be_bytes());
    end_txn.extend_from_slice(&0i16.to_be_bytes());
    end_txn.push(1);
    let answer = exchange(&address, &request(26, 0, &end_txn));
    assert_eq!(&answer[12..14], &35i16.to_be_bytes(), "EndTxn: {answer:?}");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a truncated frame", {
            let mut frame = request(3, 1, &[0, 0, 0, 0]);
            frame.truncate(9);
            frame
        }),
        ("a header shorter than 8 bytes", vec![0, 0, 0, 3, 0, 3, 0]),
        ("an unknown api key", request(999, 0, &[])),
        ("an api not served (AlterConfigs)", request(33, 0, &[1])),
        ("a version not served", request(3, 50, &[])),
        ("an oversized frame", {
            let mut frame = (64u32 << 20).to_be_bytes().to_vec();
            frame.extend_from_slice(&[0; 64]);
            frame
        }),
        ("a negative size", vec![0xff, 0xff, 0xff, 0xfe, 0, 0]),
        (
            "an array claiming 2^31 entries",
            request(3, 1, &[0x7f, 0xff, 0xff, 0xff]),
        ),
        (
            "a string longer than the frame",
            request(3, 1, &[0, 0, 0, 1, 0x7f, 0xff]),
        ),
        // Produce v3: no transactional id, acks 1, then the timeout is missing.
        ("a body cut short", request(0, 3, &[0xff, 0xff, 0, 1])),
    ];
    for (what, bytes) in &cases {
        let answer = exchange(&address, bytes);
        assert!(
            answer.is_empty(),
            "{what}: closed without an answer, got {answer:?}"
        );
        assert!(broker.is_running(), "{what}: the broker is still running");
    }
    // Still serving Kafka clients.
    let kafka = kafka_client(&broker).await;
    kafka
        .controller_client()
        .unwrap()
        .create_topic("after-bad-input", 1, 1, 5_000)
        .await
        .unwrap();
    let lines = broker.drain_log().join("\n");
    for needle in [
        "unknown api key 999",
        "is not served",
        "undecodable request body",
        "bad Kafka request frame",
    ] {
        assert!(lines.contains(needle), "logged {needle:?}:\n{lines}");
    }
    assert!(!lines.contains("panicked"), "{lines}");
}

#[test]
fn a_kafka_port_in_use_is_one_clear_error_naming_the_setting() {
    common::assert_port_in_use_is_refused("--kafka-listen", "kafka_listen");
}

/// Runs kcat (librdkafka) with `args`, feeding it `input`; its stdout. A missing kcat fails
/// the test, naming it (tests/install-test-tools.sh installs it).
#[test]
fn kcat_produces_idempotently_with_every_codec_and_consumes_exactly_what_was_acknowledged() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &["--auto-create-topics", "true"]);
    let address = broker.kafka_address.clone().unwrap();
    let mut expected = String::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let lines: String = (0..500)
            .map(|n| format!("{codec}-{n}:value {n} of {codec}\n"))
            .collect();
        // librdkafka's idempotent producer: InitProducerId, sequences, acks=all.
        kcat(
            &[
                "-b",
                &address,
                "-P",
                "-t",
                "kcat",
                "-p",
                "0",
                "-K",
                ":",
                "-X",
                &format!("compression.codec={codec}"),
                "-X",
                "enable.idempotence=true",
                "-X",
                "acks=all",
            ],
            &lines,
        );
        expected.push_str(&lines);
    }
    // Consumed back in order with keys, at consecutive offsets; then the end offset.
    let consumed = kcat(
        &[
            "-b",
            &address,
            "-C",
            "-t",
            "kcat",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%o %k:%s\n",
        ],
        "",
    );
    let (offsets, records): (Vec<u64>, String) = consumed
        .lines()
        .map(|l| {
            let (offset, record) = l.split_once(' ').expect("offset and record");
            (
                offset.parse::<u64>().expect("an offset"),
                format!("{record}\n"),
            )
        })
        .unzip();
    assert_eq!(records, expected);
    assert_eq!(offsets, (0..2500).collect::<Vec<u64>>());
    // ListOffsets: the latest offset.
    let latest = kcat(&["-b", &address, "-Q", "-t", "kcat:0:-1"], "");
    assert!(latest.contains("offset 2500"), "{latest}");
    // Metadata: this broker, the topic and its leader.
    let listing = kcat(&["-b", &address, "-L", "-t", "kcat"], "");
    assert!(
        listing.contains(&format!("broker 1 at {address}"))
            && listing.contains("partition 0, leader 1"),
        "{listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_client_bootstrapped_at_one_broker_of_a_cluster_reaches_every_leader() {
    let mut cluster = common::cluster::Cluster::start(3, &[]);
    let kafka: Vec<String> = (1..=3)
        .map(|n| {
            cluster
                .broker(n)
                .kafka_address
                .clone()
                .expect("Kafka listener")
        })
        .collect();
    rill_client::Admin::new(cluster.client().await)
        .create_topic(rill_client::NewTopic {
            replication_factor: 3,
            configs: BTreeMap::from([("min.insync.replicas".to_string(), "2".to_string())]),
            ..rill_client::NewTopic::new("spread", 6)
        })
        .await
        .unwrap();
    // Broker 1's Metadata names all three brokers at their Kafka addresses (each registers
    // its own), and the partitions have leaders on all three.
    common::eventually(
        Duration::from_secs(60),
        "every broker's Kafka address in Metadata",
        || {
            let listing = kcat(&["-b", &kafka[0], "-L", "-t", "spread"], "");
            kafka.iter().all(|a| listing.contains(&format!(" at {a}")))
                && (1..=3).all(|n| listing.contains(&format!("leader {n},")))
        },
    );
    // An idempotent acks=all producer that knows only broker 1 writes to every partition; a
    // consumer that knows only broker 2 reads every record back.
    let lines: String = (0..600).map(|n| format!("key-{n}:value {n}\n")).collect();
    kcat(
        &[
            "-b",
            &kafka[0],
            "-P",
            "-t",
            "spread",
            "-K",
            ":",
            "-X",
            "enable.idempotence=true",
            "-X",
            "acks=all",
        ],
        &lines,
    );
    let consumed = kcat(
        &[
            "-b",
            &kafka[1],
            "-C",
            "-t",
            "spread",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p %k:%s\n",
        ],
        "",
    );
    let mut got: Vec<&str> = consumed
        .lines()
        .map(|l| l.split_once(' ').expect("partition and record").1)
        .collect();
    got.sort();
    let mut expected: Vec<&str> = lines.lines().collect();
    expected.sort();
    assert_eq!(got, expected);
    let partitions: std::collections::BTreeSet<&str> = consumed
        .lines()
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(partitions.len(), 6, "records on every partition");
}

/// librdkafka's admin client of the Kafka listener at `address`, and options with a 10 s
/// operation timeout.
fn rdkafka_admin(
    address: &str,
) -> (
    rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    rdkafka::admin::AdminOptions,
) {
    let admin = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", address)
        .create()
        .expect("admin client");
    let options =
        rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    (admin, options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_admin_grows_a_topic_and_describes_the_cluster() {
    use rdkafka::admin::{NewPartitions, NewTopic, TopicReplication};
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.kafka_address.clone().unwrap();
    let (admin, options) = rdkafka_admin(&address);
    for result in admin
        .create_topics(
            &[NewTopic::new("grown", 2, TopicReplication::Fixed(1)).set("retention.ms", "60000")],
            &options,
        )
        .await
        .expect("CreateTopics")
    {
        result.expect("created");
    }
    // CreatePartitions: 2 -> 5; shrinking is refused with Kafka's INVALID_PARTITIONS.
    let grown = admin
        .create_partitions(&[NewPartitions::new("grown", 5)], &options)
        .await
        .expect("CreatePartitions");
    assert!(grown[0].is_ok(), "{grown:?}");
    let shrunk = admin
        .create_partitions(&[NewPartitions::new("grown", 3)], &options)
        .await
        .expect("CreatePartitions");
    assert!(
        matches!(
            &shrunk[0],
            Err((_, rdkafka::types::RDKafkaErrorCode::InvalidPartitions))
        ),
        "{shrunk:?}"
    );
    let kafka = kafka_client(&broker).await;
    common::eventually_async(
        Duration::from_secs(30),
        "five partitions in Metadata",
        || {
            let kafka = &kafka;
            async move {
                kafka.list_topics().await.is_ok_and(|topics| {
                    topics
                        .iter()
                        .any(|t| t.name == "grown" && t.partitions.len() == 5)
                })
            }
        },
    )
    .await;

    // DescribeConfigs: the topic's own retention, the broker's defaults for the rest.
    use rdkafka::admin::{ConfigSource, ResourceSpecifier};
    let described = admin
        .describe_configs(
            &[
                ResourceSpecifier::Topic("grown"),
                ResourceSpecifier::Broker(1),
            ],
            &options,
        )
        .await
        .expect("DescribeConfigs");
    let topic = described[0].as_ref().expect("topic configs");
    let retention = topic.get("retention.ms").expect("retention.ms");
    assert_eq!(retention.value.as_deref(), Some("60000"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    let segment = topic.get("segment.bytes").expect("segment.bytes");
    assert_eq!(segment.source, ConfigSource::Default);
    assert!(segment
        .value
        .as_deref()
        .is_some_and(|v| v.parse::<u64>().is_ok()));
    let broker_configs = described[1].as_ref().expect("broker configs");
    assert!(
        broker_configs.get("log.segment.bytes").is_some(),
        "{broker_configs:?}"
    );

    // OffsetForLeaderEpoch v2 for partition 0 after three records: the epoch they were written
    // in ends at offset 3; a current epoch from the future is UNKNOWN_LEADER_EPOCH (75).
    let partition = kafka
        .partition_client("grown", 0, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    partition
        .produce(
            (0..3).map(|n| kafka_record(0, 0, n)).collect(),
            Compression::NoCompression,
        )
        .await
        .expect("produced");
    let epoch_request = |current: i32| {
        let mut body = Vec::new();
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&5i16.to_be_bytes());
        body.extend_from_slice(b"grown");
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes()); // partition
        body.extend_from_slice(&current.to_be_bytes()); // current leader epoch
        body.extend_from_slice(&i32::MAX.to_be_bytes()); // leader epoch asked about
        request(23, 2, &body)
    };
    let answer = exchange(&address, &epoch_request(-1));
    assert_eq!(answer.len(), 45, "{answer:?}");
    assert_eq!(&answer[27..29], &0i16.to_be_bytes(), "no error: {answer:?}");
    assert_eq!(
        &answer[37..45],
        &3i64.to_be_bytes(),
        "ends at 3: {answer:?}"
    );
    let answer = exchange(&address, &epoch_request(1_000));
    assert_eq!(&answer[27..29], &75i16.to_be_bytes(), "{answer:?}");

    // DescribeCluster v0 (flexible: header and body end with empty tagged fields): no error,
    // and this broker at its Kafka address.
    let answer = exchange(&address, &request(60, 0, &[0, 0, 0]));
    assert!(answer.len() > 15, "an answer: {answer:?}");
    assert_eq!(&answer[4..8], &42i32.to_be_bytes(), "correlation id");
    assert_eq!(&answer[13..15], &0i16.to_be_bytes(), "no error: {answer:?}");
    let (host, port) = address.rsplit_once(':').unwrap();
    let port: i32 = port.parse().unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains(host), "{answer:?}");
    assert!(
        answer.windows(4).any(|w| w == port.to_be_bytes()),
        "the Kafka port in {answer:?}"
    );
}

/// A record as librdkafka produced it, to compare with what it consumes back.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    key: String,
    value: String,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_produces_keyed_records_with_headers_under_every_codec_and_reads_them_back() {
    use rdkafka::admin::{NewTopic, TopicReplication};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header as KafkaHeader, Headers, Message, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Offset, Timestamp, TopicPartitionList};

    const TOPIC: &str = "codecs";
    const PARTITIONS: i32 = 3;
    const BASE_TIME: i64 = 1_750_000_000_000;
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.kafka_address.clone().unwrap();
    let (admin, options) = rdkafka_admin(&address);
    for result in admin
        .create_topics(
            &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .expect("CreateTopics")
    {
        result.expect("created");
    }

    // One idempotent producer per codec; each sends 300 keyed records with two headers and its
    // own timestamps without waiting in between, so batches hold many records.
    let mut acked: BTreeMap<(i32, i64), Sent> = BTreeMap::new();
    let mut sequence = 0i64;
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &address)
            .set("enable.idempotence", "true")
            .set("compression.type", codec)
            .set("linger.ms", "20")
            .create()
            .expect("producer");
        let mut pending = Vec::new();
        for n in 0..300u32 {
            let sent = Sent {
                key: format!("key-{}", n % 20),
                value: format!("{codec} record {n} {}", "v".repeat(n as usize % 97)),
                headers: vec![
                    ("codec".to_string(), codec.as_bytes().to_vec()),
                    ("n".to_string(), n.to_be_bytes().to_vec()),
                ],
                timestamp: BASE_TIME + sequence,
            };
            sequence += 1;
            let headers = sent
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |headers, (key, value)| {
                    headers.insert(KafkaHeader {
                        key,
                        value: Some(value),
                    })
                });
            let delivery = producer
                .send_result(
                    FutureRecord::to(TOPIC)
                        .key(&sent.key)
                        .payload(&sent.value)
                        .headers(headers)
                        .timestamp(sent.timestamp),
                )
                .map_err(|(e, _)| e)
                .expect("queued");
            pending.push((delivery, sent));
        }
        for (delivery, sent) in pending {
            let delivered = delivery
                .await
                .expect("not cancelled")
                .map_err(|(e, _)| e)
                .unwrap_or_else(|e| panic!("{codec} record acknowledged: {e}"));
            acked.insert((delivered.partition, delivered.offset), sent);
        }
    }
    assert_eq!(acked.len(), 1500);
    // Keyed partitioning: a key always lands on one partition, and every partition has records.
    let mut partition_of: BTreeMap<&str, i32> = BTreeMap::new();
    for ((partition, _), sent) in &acked {
        let first = *partition_of.entry(&sent.key).or_insert(*partition);
        assert_eq!(first, *partition, "{} on one partition", sent.key);
    }
    let used: std::collections::BTreeSet<i32> = partition_of.values().copied().collect();
    assert_eq!(used.len(), PARTITIONS as usize, "{partition_of:?}");

    // Consumed back from the beginning of each partition (assigned, no group): every record at
    // its acknowledged offset, in order, with key, value, headers and timestamp exact.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("group.id", "codecs-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut consumed: BTreeMap<(i32, i64), Sent> = BTreeMap::new();
    let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed.len() < acked.len() {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {} records",
            consumed.len(),
            acked.len()
        );
        let Ok(message) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let message = message.expect("a record");
        let previous = last_offset.insert(message.partition(), message.offset());
        assert_eq!(
            message.offset(),
            previous.map_or(0, |o| o + 1),
            "partition {} in order",
            message.partition()
        );
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let Timestamp::CreateTime(timestamp) = message.timestamp() else {
            panic!("a create time: {:?}", message.timestamp());
        };
        let text = |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or_default()).into();
        consumed.insert(
            (message.partition(), message.offset()),
            Sent {
                key: text(message.key()),
                value: text(message.payload()),
                headers,
                timestamp,
            },
        );
    }
    assert_eq!(consumed, acked);

    // ListOffsets: earliest and latest per partition, and by timestamp the first record at or
    // after it.
    let middle = BASE_TIME + 750;
    let mut times = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        let end = acked.range((partition, 0)..(partition + 1, 0)).count() as i64;
        let watermarks = consumer
            .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
            .expect("ListOffsets");
        assert_eq!(watermarks, (0, end), "partition {partition}");
        times
            .add_partition_offset(TOPIC, partition, Offset::Offset(middle))
            .expect("timestamp query");
    }
    let found = consumer
        .offsets_for_times(times, Duration::from_secs(10))
        .expect("ListOffsets by timestamp");
    for element in found.elements() {
        let expected = acked
            .iter()
            .find(|((p, _), sent)| *p == element.partition() && sent.timestamp >= middle)
            .map(|((_, offset), _)| *offset)
            .expect("a record after the middle");
        assert_eq!(
            element.offset(),
            Offset::Offset(expected),
            "partition {}",
            element.partition()
        );
    }

    // DeleteTopics: gone from Metadata.
    for result in admin
        .delete_topics(&[TOPIC], &options)
        .await
        .expect("DeleteTopics")
    {
        result.expect("deleted");
    }
    common::eventually(
        Duration::from_secs(30),
        "the topic gone from Metadata",
        || {
            consumer
                .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
                .is_ok_and(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .all(|t| t.name() != TOPIC || t.error().is_some())
                })
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_refused_with_unsupported_version() {
    use rdkafka::producer::{BaseProducer, Producer};
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.kafka_address.clone().unwrap();
    // FindCoordinator v2 for a transaction coordinator (key type 1): UNSUPPORTED_VERSION (35).
    let mut find = vec![0, 8];
    find.extend_from_slice(b"payments");
    find.push(1);
    let answer = exchange(&address, &request(10, 2, &find));
    assert_eq!(&answer[12..14], &35i16.to_be_bytes(), "{answer:?}");
    // InitProducerId v0 with a transactional id: UNSUPPORTED_VERSION, no producer id.
    let mut init = vec![0, 8];
    init.extend_from_slice(b"payments");
    init.extend_from_slice(&60_000i32.to_be_bytes());
    let answer = exchange(&address, &request(22, 0, &init));
    assert_eq!(&answer[12..14], &35i16.to_be_bytes(), "{answer:?}");
    assert_eq!(&answer[14..22], &(-1i64).to_be_bytes(), "{answer:?}");

    // librdkafka retries a coordinator lookup whatever the error (only authorization failures
    // are fatal to it), so its init_transactions ends with its own timeout, as against a
    // Kafka cluster whose transaction coordinator is down; it gets an error, not a hang.
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &address)
        .set("transactional.id", "payments")
        .create()
        .expect("producer");
    let refused =
        tokio::task::spawn_blocking(move || producer.init_transactions(Duration::from_secs(3)))
            .await
            .expect("init_transactions ran");
    assert!(refused.is_err(), "transactions are refused");
    // The broker serves on.
    let kafka = kafka_client(&broker).await;
    kafka
        .controller_client()
        .unwrap()
        .create_topic("after-transactions", 1, 1, 5_000)
        .await
        .unwrap();
}
