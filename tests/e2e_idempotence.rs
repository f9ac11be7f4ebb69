//! Idempotent producing against real brokers: retries of batches that were in fact written
//! (forced with a produce timeout shorter than acks=all replication, and a leader killed
//! mid-run) leave every acknowledged record exactly once and in send order with idempotence,
//! and duplicates without it; producer state survives restarts (clean and kill -9), and an
//! expired producer id is forgotten.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::cluster::Cluster;
use common::raw::Raw;
use common::BrokerProcess;
use rill_client::protocol::api::{
    Acks as WireAcks, InitProducerIdRequest, ProducePartition, ProduceRequest, ProduceTopic,
    RequestBody, ResponseBody,
};
use rill_client::protocol::batch::RecordBatchBuilder;
use rill_client::protocol::ErrorCode;
use rill_client::{
    Acks, Admin, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig, Record,
};

const PARTITIONS: u32 = 3;
const RECORDS: usize = 3000;

/// Produces `RECORDS` unique records (value = its number, partition = number % 3) with a
/// produce timeout far below what acks=all replication takes, killing the leader of partition
/// 0 a third of the way through. Returns the consumed values per partition in offset order,
/// and how many records were acknowledged.
async fn run(idempotent: bool) -> (BTreeMap<u32, Vec<u64>>, usize) {
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client().await;
    let topic = "events";
    Admin::new(client.clone())
        .create_topic(NewTopic {
            replication_factor: 3,
            ..NewTopic::new(topic, PARTITIONS)
        })
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            enable_idempotence: idempotent,
            request_timeout: Some(Duration::from_millis(3)),
            delivery_timeout: Duration::from_secs(90),
            batch_size_bytes: 4 << 10,
            linger: Duration::from_millis(2),
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for i in 0..RECORDS {
        if i == RECORDS / 3 {
            let leader = Admin::new(client.clone())
                .describe_topic(topic)
                .await
                .unwrap()[0]
                .leader
                .expect("a leader");
            cluster.kill(leader);
        }
        let record = Record::new(topic)
            .partition(i as u32 % PARTITIONS)
            .value(i.to_string());
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await;
    let mut acknowledged = 0;
    for delivery in deliveries {
        if delivery.await.is_ok() {
            acknowledged += 1;
        }
    }
    // Read everything below the high watermark with a patient client.
    let reader = cluster.client().await;
    let ends: Vec<u64> = Admin::new(reader.clone())
        .describe_topic(topic)
        .await
        .unwrap()
        .iter()
        .map(|p| p.latest_offset.unwrap_or(0))
        .collect();
    let total: u64 = ends.iter().sum();
    let mut consumer = Consumer::new(reader, ConsumerConfig::default());
    consumer.assign_topic(topic).await.unwrap();
    let mut values: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut read = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while read < total {
        assert!(
            std::time::Instant::now() < deadline,
            "read {read} of {total}"
        );
        for r in consumer.poll(Duration::from_millis(500)).await.unwrap() {
            let value: u64 = std::str::from_utf8(r.value.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            values.entry(r.partition).or_default().push(value);
            read += 1;
        }
    }
    (values, acknowledged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batches_are_written_once_only_with_idempotence() {
    let (values, acknowledged) = run(true).await;
    assert_eq!(acknowledged, RECORDS, "every record acknowledged");
    let mut seen = std::collections::BTreeSet::new();
    for (partition, values) in &values {
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: in send order, no duplicates"
        );
        for v in values {
            assert_eq!(*v % u64::from(PARTITIONS), u64::from(*partition));
            assert!(seen.insert(*v), "{v} twice");
        }
    }
    assert_eq!(
        seen.len(),
        RECORDS,
        "every acknowledged record is in the log once"
    );

    // The same run without idempotence: the retries of written batches are written again.
    let (values, acknowledged) = run(false).await;
    assert_eq!(acknowledged, RECORDS);
    let stored: usize = values.values().map(Vec::len).sum();
    eprintln!("without idempotence: {stored} records stored for {RECORDS} sent");
    assert!(
        stored > RECORDS,
        "retries of written batches duplicate records without idempotence"
    );
}

fn init_producer_id(raw: &mut Raw) -> i64 {
    let ResponseBody::InitProducerId(r) =
        raw.call(RequestBody::InitProducerId(InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 0,
        }))
    else {
        panic!("wrong response");
    };
    assert_eq!(r.error_code, ErrorCode::NONE);
    assert_eq!(r.producer_epoch, 0);
    r.producer_id
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A batch of an idempotent producer (its timestamps now: a producer state rebuilt from the
/// log counts expiration from them).
fn stamped(producer_id: i64, sequence: i32, records: usize) -> Bytes {
    let mut builder = RecordBatchBuilder::new().producer(producer_id, 0, sequence);
    for i in 0..records {
        builder.append(now_ms(), None, Some(format!("r{i}").as_bytes()), &[]);
    }
    builder.build()
}

/// (error code, base offset) of producing `records` to p-0.
fn produce(raw: &mut Raw, records: Bytes) -> (ErrorCode, u64) {
    let request = RequestBody::Produce(ProduceRequest {
        acks: WireAcks::All,
        timeout_ms: 5000,
        topics: vec![ProduceTopic {
            name: "p".into(),
            partitions: vec![ProducePartition {
                partition: 0,
                records,
            }],
        }],
    });
    let ResponseBody::Produce(r) = raw.call(request) else {
        panic!("wrong response")
    };
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.base_offset)
}

fn connect(broker: &BrokerProcess) -> Raw {
    let mut raw = Raw::connect(&broker.address);
    common::eventually(Duration::from_secs(30), "the broker to lead p-0", || {
        produce(&mut raw, common::batch(1, 1, 0, 0)).0 == ErrorCode::NONE
    });
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_state_survives_restarts_and_expired_ids_are_forgotten() {
    let data = tempfile::tempdir().unwrap();
    let flags = ["--producer-id-expiration-ms", "3000", "--tick-ms", "100"];
    let mut broker = BrokerProcess::start(data.path(), &flags);
    let client = common::client(&broker.address).await;
    Admin::new(client)
        .create_topic(NewTopic::new("p", 1))
        .await
        .unwrap();
    let mut raw = connect(&broker);
    let first = init_producer_id(&mut raw);
    let second = init_producer_id(&mut raw);
    assert_ne!(first, second, "ids are unique");
    let (code, offset) = produce(&mut raw, stamped(first, 0, 5));
    assert_eq!(code, ErrorCode::NONE);
    let (code, again) = produce(&mut raw, stamped(first, 0, 5));
    assert_eq!(
        (code, again),
        (ErrorCode::NONE, offset),
        "a retry is answered, not written"
    );
    assert_eq!(
        produce(&mut raw, stamped(first, 7, 1)).0,
        ErrorCode::OUT_OF_ORDER_SEQUENCE
    );
    assert_eq!(
        produce(&mut raw, stamped(second, 3, 1)).0,
        ErrorCode::UNKNOWN_PRODUCER_ID
    );
    let (_, last) = produce(&mut raw, stamped(first, 5, 5));

    // A clean restart (state from the close snapshot) and a kill -9 (from the log).
    let address = broker.address.clone();
    assert!(broker.terminate());
    drop(broker);
    let mut broker = BrokerProcess::start_on(data.path(), &address, &flags);
    let mut raw = connect(&broker);
    assert_eq!(
        produce(&mut raw, stamped(first, 5, 5)),
        (ErrorCode::NONE, last)
    );
    broker.kill9();
    drop(broker);
    let _broker = BrokerProcess::start_on(data.path(), &address, &flags);
    let mut raw = connect(&_broker);
    assert_eq!(
        produce(&mut raw, stamped(first, 5, 5)),
        (ErrorCode::NONE, last)
    );
    let third = init_producer_id(&mut raw);
    assert!(
        third > second,
        "a restarted broker takes a new block of ids"
    );

    // Silent for the expiration time: forgotten (a retry is no longer recognized).
    common::eventually(Duration::from_secs(30), "the producer id to expire", || {
        produce(&mut raw, stamped(first, 5, 5)).0 == ErrorCode::UNKNOWN_PRODUCER_ID
    });
}

/// Found by the fault suite (seed 200): batches whose requests never reached the leader (sent
/// into a network cut to a broker that was then restarted, so not even TCP's retransmissions
/// arrive) expired unwritten and left a hole in the partition's sequence numbers; every
/// later batch was refused with OUT_OF_ORDER_SEQUENCE, retried until it expired too, and the
/// producer never delivered anything again. Now a failed batch settles its sequence range and
/// the refusal of the next one makes the producer take a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_expire_unwritten_do_not_stop_the_producer_for_good() {
    use common::cluster::NETWORK_CLIENT_PORT;
    let cluster = Cluster::start_in_network(1, &[]);
    let client = cluster.client().await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("t", 1))
        .await
        .expect("create topic");
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(1),
            delivery_timeout: Duration::from_secs(2),
            request_timeout: Some(Duration::from_millis(500)),
            ..ProducerConfig::default()
        },
    );
    let send = |value: String| {
        let producer = &producer;
        async move {
            producer
                .send(Record::new("t").partition(0).value(value))
                .await
                .expect("queue a record")
                .await
        }
    };
    send("before".into())
        .await
        .expect("acknowledged before the cut");

    let mut cluster = cluster;
    cluster.network().cut_host(1, NETWORK_CLIENT_PORT);
    let cut: Vec<_> = {
        let mut deliveries = Vec::new();
        for i in 0..20 {
            let record = Record::new("t").partition(0).value(format!("cut-{i}"));
            deliveries.push(producer.send(record).await.expect("queue a record"));
        }
        futures::future::join_all(deliveries).await
    };
    assert!(
        cut.iter().all(Result::is_err),
        "nothing is acknowledged through the cut"
    );
    // The requests sent into the cut die with the broker's sockets.
    cluster.restart(1);
    cluster.network().heal(1);

    // Delivered again after the heal (before the fix: refused until the deadline).
    let mut poll = common::Poll::new(
        Duration::from_secs(20),
        "a record is acknowledged after the heal",
    );
    let mut after = 0;
    loop {
        match send(format!("after-{after}")).await {
            Ok(_) => break,
            Err(e) => eprintln!("after the heal: {e}"),
        }
        after += 1;
        poll.pause().await;
    }
    producer.flush().await;
    let values: Vec<String> =
        common::eventually_value(Duration::from_secs(20), "the log read back", || async {
            let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
            consumer.assign([("t".to_string(), 0)]);
            let records = consumer.poll(Duration::from_secs(1)).await.ok()?;
            let values: Vec<String> = records
                .iter()
                .filter_map(|r| r.value.as_ref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            values
                .iter()
                .any(|v| v.starts_with("after-"))
                .then_some(values)
        })
        .await;
    assert_eq!(values[0], "before");
    assert!(
        values.iter().all(|v| !v.starts_with("cut-")),
        "no record sent into the cut reached the log: {values:?}"
    );
}
