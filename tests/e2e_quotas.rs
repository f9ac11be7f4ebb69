//! Client quotas (docs/SECURITY.md "Quotas") against a real broker: a client id with a produce
//! or fetch byte rate is throttled to it (it takes at least as long as its rate allows, the
//! responses say so in their throttle time, and its connection reads nothing meanwhile), on
//! the native protocol and the Kafka one; other client ids are not throttled. Quotas set at run
//! time (`rill quota`, Kafka's AlterClientQuotas) apply at once and win over the settings.

mod common;

use std::time::{Duration, Instant};

use common::raw::Raw;
use common::{kcat, scrape_metrics, BrokerProcess};
use rill_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig, Record,
};
use rill_protocol::api::{
    ApiVersionsRequest, FetchPartition, FetchRequest, FetchTopic, ProducePartition, ProduceRequest,
    ProduceTopic, RequestBody, ResponseBody,
};

/// The quota of client id `slow`, produce and fetch: 512 KiB/s (its burst: one second's worth).
const RATE: u64 = 512 << 10;
/// What each timed run moves: 32 records of 64 KiB.
const RECORDS: usize = 32;
const VALUE: usize = 64 << 10;

fn start(data: &std::path::Path) -> BrokerProcess {
    BrokerProcess::start(data, &["--quota-overrides", &format!("slow:{RATE}:{RATE}")])
}

/// The least time moving `total` bytes may take at `RATE`: all but the burst and the last
/// request (whose throttle delays only what comes after it) are paid for by waiting.
fn least(total: usize, last: usize) -> Duration {
    Duration::from_secs_f64((total - RATE as usize - last) as f64 / RATE as f64)
}

async fn client_as(address: &str, client_id: &str) -> rill_client::Client {
    let mut config = ClientConfig::new(address);
    config.client_id = client_id.into();
    config.request_timeout = Duration::from_secs(30);
    rill_client::Client::connect(config).await.unwrap()
}

fn produce_request(topic: &str, value_bytes: usize) -> RequestBody {
    RequestBody::Produce(ProduceRequest {
        acks: rill_protocol::api::Acks::Leader,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition {
                partition: 0,
                records: common::batch(1, value_bytes, 0, b'q'),
            }],
        }],
    })
}

fn fetch_request(topic: &str, max_bytes: u32) -> RequestBody {
    RequestBody::Fetch(FetchRequest {
        replica_id: None,
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes,
        topics: vec![FetchTopic {
            name: topic.into(),
            partitions: vec![FetchPartition {
                partition: 0,
                current_leader_epoch: None,
                fetch_offset: 0,
                partition_max_bytes: max_bytes,
                last_fetched_epoch: None,
            }],
        }],
    })
}

fn metric(broker: &BrokerProcess, name: &str) -> f64 {
    let admin = broker.admin_address.as_deref().expect("admin listener");
    scrape_metrics(admin).get(name).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_over_its_quota_is_throttled_to_it_and_others_are_not() {
    let data = tempfile::tempdir().unwrap();
    let broker = start(data.path());
    let admin = Admin::new(common::client(&broker.address).await);
    admin.create_topic(NewTopic::new("quota", 1)).await.unwrap();

    // Produce v1 answers with the throttle time: 0 for a client id without a quota, more
    // than 0 for `slow` beyond its burst (600 KiB at 512 KiB/s: about 170 ms).
    let mut raw = Raw::connect(&broker.address);
    let ResponseBody::Produce(free) = raw.call_as("free", 1, produce_request("quota", 600 << 10))
    else {
        panic!("a produce response")
    };
    assert_eq!(
        free.topics[0].partitions[0].error_code,
        rill_protocol::ErrorCode::NONE
    );
    assert_eq!(free.throttle_time_ms, 0);
    let mut slow = Raw::connect(&broker.address);
    let ResponseBody::Produce(throttled) =
        slow.call_as("slow", 1, produce_request("quota", 600 << 10))
    else {
        panic!("a produce response")
    };
    assert_eq!(
        throttled.topics[0].partitions[0].error_code,
        rill_protocol::ErrorCode::NONE
    );
    assert!(
        (100..=1000).contains(&throttled.throttle_time_ms),
        "throttle time {} ms",
        throttled.throttle_time_ms
    );
    // The connection reads its next request only once the throttle time has passed.
    let asked = Instant::now();
    slow.call_as("slow", 0, RequestBody::ApiVersions(ApiVersionsRequest {}));
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(u64::from(throttled.throttle_time_ms) - 20),
        "answered after {waited:?}, throttled for {} ms",
        throttled.throttle_time_ms
    );
    // Version 0 (no throttle time) is still served.
    let ResponseBody::Produce(v0) = slow.call_as("slow", 0, produce_request("quota", 1000)) else {
        panic!("a produce response")
    };
    assert_eq!(
        v0.topics[0].partitions[0].error_code,
        rill_protocol::ErrorCode::NONE
    );

    // The Rust client as `slow`: 2 MiB one record at a time takes at least what the rate
    // allows, and every record is acknowledged.
    let producer = Producer::new(
        client_as(&broker.address, "slow").await,
        ProducerConfig {
            acks: Acks::Leader,
            ..ProducerConfig::default()
        },
    );
    let started = Instant::now();
    for _ in 0..RECORDS {
        let delivery = producer
            .send(Record::new("quota").value(vec![7u8; VALUE]))
            .await
            .unwrap();
        producer.flush().await;
        delivery.await.expect("acknowledged");
    }
    let took = started.elapsed();
    eprintln!(
        "Rust producer as slow: {} bytes in {took:?}",
        RECORDS * VALUE
    );
    let floor = least(RECORDS * VALUE, VALUE);
    assert!(
        took >= floor,
        "{} bytes at {RATE} B/s took {took:?}, less than {floor:?}",
        RECORDS * VALUE
    );
    assert!(metric(&broker, "rill_quota_throttled_total{direction=\"produce\"}") >= 2.0);
    assert!(
        metric(
            &broker,
            "rill_quota_throttle_seconds_total{direction=\"produce\"}"
        ) > 1.0
    );

    // The Kafka door: kcat as `slow`, one 60 KiB record per batch.
    let kafka = broker.kafka_address.clone().expect("kafka listener");
    let line = "k".repeat(60 << 10);
    let lines: String = (0..RECORDS).map(|_| format!("{line}\n")).collect();
    let started = Instant::now();
    kcat(
        &[
            "-b",
            &kafka,
            "-P",
            "-t",
            "quota",
            "-p",
            "0",
            "-X",
            "client.id=slow",
            "-X",
            "batch.size=65536",
        ],
        &lines,
    );
    let took = started.elapsed();
    eprintln!(
        "kcat producer as slow: {} bytes in {took:?}",
        RECORDS * (60 << 10)
    );
    let floor = least(RECORDS * (60 << 10), 64 << 10);
    assert!(took >= floor, "kcat took {took:?}, less than {floor:?}");
}

/// The Rust client honours throttle times: a producer with five batches in flight past its
/// quota, and a request timeout shorter than the throttles its later batches wait behind, has
/// every record acknowledged at the first attempt. (A client that counted a request's timeout
/// from when it was queued would time out the batches waiting behind the muted connection and
/// send them again, spending more of its quota on copies the broker drops.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_producer_waits_out_its_throttle_instead_of_timing_out() {
    const BIG: usize = 256 << 10;
    const COUNT: usize = 12;
    let data = tempfile::tempdir().unwrap();
    let broker = start(data.path());
    let admin = Admin::new(common::client(&broker.address).await);
    admin
        .create_topic(NewTopic::new("pipelined", 1))
        .await
        .unwrap();
    let produce_requests = || {
        metric(
            &broker,
            r#"rill_requests_total{listener="rill",api="Produce",error="NONE"}"#,
        )
    };
    let before = produce_requests();

    // Each record is a batch of its own, and a request of its own (one partition): each
    // throttles the connection for half a second, and the fifth in flight waits two seconds
    // behind the four before it, twice the request timeout.
    let mut config = ClientConfig::new(&broker.address);
    config.client_id = "slow".into();
    config.request_timeout = Duration::from_secs(1);
    let producer = Producer::new(
        rill_client::Client::connect(config).await.unwrap(),
        ProducerConfig {
            acks: Acks::Leader,
            batch_size_bytes: BIG,
            max_in_flight_per_partition: 5,
            ..ProducerConfig::default()
        },
    );
    let started = Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..COUNT {
        let value = vec![i as u8; BIG];
        let record = Record::new("pipelined").partition(0).value(value);
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await;
    for (i, delivery) in deliveries.into_iter().enumerate() {
        let metadata = delivery.await.expect("acknowledged");
        assert_eq!(metadata.offset, Some(i as u64), "record {i}");
    }
    let took = started.elapsed();
    eprintln!("{COUNT} pipelined records of {BIG} bytes as slow: {took:?}");
    let floor = least(COUNT * BIG, BIG);
    assert!(took >= floor, "took {took:?}, less than {floor:?}");
    // One produce request per record: none timed out and went again.
    assert_eq!(produce_requests() - before, COUNT as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_over_its_quota_is_throttled_to_it() {
    let data = tempfile::tempdir().unwrap();
    let broker = start(data.path());
    let client = common::client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("quota", 1))
        .await
        .unwrap();
    common::produce_acked(
        &client,
        (0..RECORDS)
            .map(|_| Record::new("quota").partition(0).value(vec![3u8; VALUE]))
            .collect(),
    )
    .await;

    // A fetch beyond the burst is answered with its records and a throttle time (up to 1 MiB
    // at 512 KiB/s: up to a second); fetched again while in debt (a new connection is not
    // muted), the answer holds no records, only the throttle time.
    let mut first = Raw::connect(&broker.address);
    let ResponseBody::Fetch(fetched) = first.call_as("slow", 1, fetch_request("quota", 1 << 20))
    else {
        panic!("a fetch response")
    };
    let answered = Instant::now();
    let partition = &fetched.topics[0].partitions[0];
    assert!(
        partition.records.len() >= 768 << 10,
        "{} bytes",
        partition.records.len()
    );
    assert!(
        fetched.throttle_time_ms >= 400,
        "{} ms",
        fetched.throttle_time_ms
    );
    let mut second = Raw::connect(&broker.address);
    let ResponseBody::Fetch(empty) = second.call_as("slow", 1, fetch_request("quota", 1 << 20))
    else {
        panic!("a fetch response")
    };
    let partition = &empty.topics[0].partitions[0];
    assert!(partition.records.is_empty());
    assert_eq!(partition.high_watermark, RECORDS as u64);
    assert!(empty.throttle_time_ms > 0);
    // The first connection's next fetch is read at once but served only after its throttle
    // time.
    first.call_as("slow", 1, fetch_request("quota", 1));
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(u64::from(fetched.throttle_time_ms) - 20),
        "served {waited:?} after a fetch throttled for {} ms",
        fetched.throttle_time_ms
    );
    // Another client id fetches everything at once.
    let mut third = Raw::connect(&broker.address);
    let ResponseBody::Fetch(free) = third.call_as("free", 1, fetch_request("quota", 4 << 20))
    else {
        panic!("a fetch response")
    };
    assert_eq!(free.throttle_time_ms, 0);
    assert!(free.topics[0].partitions[0].records.len() >= RECORDS * VALUE);

    // The Rust consumer as `slow`, 128 KiB per fetch: at least what the rate allows.
    let mut consumer = Consumer::new(
        client_as(&broker.address, "slow").await,
        ConsumerConfig {
            fetch_max_bytes: 128 << 10,
            partition_max_bytes: 128 << 10,
            ..ConsumerConfig::default()
        },
    );
    consumer.assign([("quota".to_string(), 0)]);
    let started = Instant::now();
    let mut read = 0;
    while read < RECORDS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "read {read} records"
        );
        read += consumer
            .poll(Duration::from_millis(500))
            .await
            .unwrap()
            .len();
    }
    let took = started.elapsed();
    eprintln!(
        "Rust consumer as slow: {} bytes in {took:?}",
        RECORDS * VALUE
    );
    let floor = least(RECORDS * VALUE, 128 << 10);
    assert!(
        took >= floor,
        "consuming took {took:?}, less than {floor:?}"
    );
    assert!(metric(&broker, "rill_quota_throttled_total{direction=\"fetch\"}") >= 2.0);

    // The Kafka door: kcat as `slow`, at most 128 KiB per fetch.
    let kafka = broker.kafka_address.clone().expect("kafka listener");
    let started = Instant::now();
    let consumed = kcat(
        &[
            "-b",
            &kafka,
            "-C",
            "-t",
            "quota",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%o\n",
            "-X",
            "client.id=slow",
            "-X",
            "fetch.max.bytes=131072",
            "-X",
            "message.max.bytes=131072",
            "-X",
            "max.partition.fetch.bytes=131072",
        ],
        "",
    );
    let took = started.elapsed();
    eprintln!(
        "kcat consumer as slow: {} bytes in {took:?}",
        RECORDS * VALUE
    );
    assert_eq!(consumed.lines().count(), RECORDS);
    let floor = least(RECORDS * VALUE, 128 << 10);
    assert!(took >= floor, "kcat took {took:?}, less than {floor:?}");
}

/// A Kafka request (header v1: no tagged fields; the APIs used here at version 0) on a new
/// connection to `address`: the response body after its correlation id.
fn kafka_call(address: &str, api_key: i16, body: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut frame = Vec::new();
    frame.extend_from_slice(&api_key.to_be_bytes());
    frame.extend_from_slice(&0i16.to_be_bytes());
    frame.extend_from_slice(&7i32.to_be_bytes());
    kafka_string(&mut frame, "kafka-admin");
    frame.extend_from_slice(body);
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    socket
        .write_all(&(frame.len() as u32).to_be_bytes())
        .unwrap();
    socket.write_all(&frame).unwrap();
    let mut size = [0u8; 4];
    socket.read_exact(&mut size).unwrap();
    let mut response = vec![0u8; u32::from_be_bytes(size) as usize];
    socket.read_exact(&mut response).unwrap();
    response.split_off(4)
}

fn kafka_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_set_at_run_time_apply_at_once_and_win_over_the_settings() {
    let data = tempfile::tempdir().unwrap();
    let broker = start(data.path());
    let address = broker.address.clone();
    let admin = Admin::new(common::client(&address).await);
    admin.create_topic(NewTopic::new("quota", 1)).await.unwrap();
    let throttle_of = |client: &str| {
        let mut raw = Raw::connect(&address);
        let ResponseBody::Produce(response) =
            raw.call_as(client, 1, produce_request("quota", 600 << 10))
        else {
            panic!("a produce response")
        };
        assert_eq!(
            response.topics[0].partitions[0].error_code,
            rill_protocol::ErrorCode::NONE
        );
        response.throttle_time_ms
    };

    // `rill quota set`: a client id without any quota gets one, at once.
    assert_eq!(throttle_of("dyn"), 0);
    common::rill_output(
        &address,
        &[
            "quota",
            "set",
            "--client-id",
            "dyn",
            "--producer-byte-rate",
            "262144",
        ],
    );
    assert!(throttle_of("dyn") > 0, "throttled by the quota just set");
    // Over the broker's own setting for `slow`: 0 is no limit.
    common::rill_output(
        &address,
        &[
            "quota",
            "set",
            "--client-id",
            "slow",
            "--producer-byte-rate",
            "0",
        ],
    );
    assert_eq!(throttle_of("slow"), 0);
    // The default of every client id without its own.
    common::rill_output(
        &address,
        &[
            "quota",
            "set",
            "--default",
            "--producer-byte-rate",
            "262144",
        ],
    );
    assert!(throttle_of("anyone") > 0);
    let listed = common::rill_json(&address, &["quota", "list"]);
    let rows = listed.as_array().expect("a list");
    assert_eq!(rows.len(), 3, "{listed}");
    assert!(
        rows.iter()
            .any(|r| r["client_id"] == "dyn" && r["producer_byte_rate"] == 262144),
        "{listed}"
    );
    assert!(rows.iter().any(|r| r["default"] == true), "{listed}");
    common::rill_output(&address, &["quota", "remove", "--default"]);
    common::rill_output(&address, &["quota", "remove", "--client-id", "dyn"]);
    assert_eq!(throttle_of("someone-else"), 0);
    let listed = common::rill_json(&address, &["quota", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // Removing a quota that is not there is no error.
    common::rill_output(
        &address,
        &[
            "quota",
            "remove",
            "--client-id",
            "x",
            "--consumer-byte-rate",
        ],
    );

    // The Kafka door: AlterClientQuotas and DescribeClientQuotas v0 (kafka-configs.sh).
    let kafka = broker.kafka_address.clone().expect("kafka listener");
    let mut alter = Vec::new();
    alter.extend_from_slice(&1i32.to_be_bytes()); // entries
    alter.extend_from_slice(&1i32.to_be_bytes()); // entity components
    kafka_string(&mut alter, "client-id");
    kafka_string(&mut alter, "kdyn");
    alter.extend_from_slice(&1i32.to_be_bytes()); // ops
    kafka_string(&mut alter, "producer_byte_rate");
    alter.extend_from_slice(&262144f64.to_be_bytes());
    alter.push(0); // remove
    alter.push(0); // validate_only
    let answer = kafka_call(&kafka, 49, &alter);
    // throttle_time_ms, one entry, its error code.
    assert_eq!(&answer[4..8], &1i32.to_be_bytes());
    assert_eq!(&answer[8..10], &0i16.to_be_bytes(), "{answer:?}");
    assert!(
        throttle_of("kdyn") > 0,
        "throttled by the quota Kafka's API set"
    );
    let mut describe = Vec::new();
    describe.extend_from_slice(&1i32.to_be_bytes()); // components
    kafka_string(&mut describe, "client-id");
    describe.push(0); // match exactly
    kafka_string(&mut describe, "kdyn");
    describe.push(0); // strict
    let answer = kafka_call(&kafka, 48, &describe);
    assert_eq!(&answer[4..6], &0i16.to_be_bytes(), "{answer:?}");
    let needle = 262144f64.to_be_bytes();
    assert!(
        answer.windows(needle.len()).any(|w| w == needle),
        "the quota's value in {answer:?}"
    );
    assert!(
        answer.windows("kdyn".len()).any(|w| w == b"kdyn"),
        "only the entity asked for"
    );
    // A user quota is not served: refused per entry.
    let mut user = Vec::new();
    user.extend_from_slice(&1i32.to_be_bytes());
    user.extend_from_slice(&1i32.to_be_bytes());
    kafka_string(&mut user, "user");
    kafka_string(&mut user, "alice");
    user.extend_from_slice(&1i32.to_be_bytes());
    kafka_string(&mut user, "producer_byte_rate");
    user.extend_from_slice(&1024f64.to_be_bytes());
    user.push(0);
    user.push(0);
    let answer = kafka_call(&kafka, 49, &user);
    assert_ne!(&answer[8..10], &0i16.to_be_bytes(), "{answer:?}");
}
