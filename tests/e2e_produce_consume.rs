//! A real broker process driven through `rill-client`: create a topic, produce keyed records,
//! consume them all in per-partition order, restart the broker and read them again.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{client, BrokerProcess};
use rill_client::partitioner::partition_for_key;
use rill_client::{
    Admin, Consumer, ConsumerConfig, ConsumerRecord, NewTopic, Producer, ProducerConfig, Record,
};

const RECORDS: usize = 2000;

async fn consume_all(
    client: rill_client::Client,
    topic: &str,
    expected: usize,
) -> Vec<ConsumerRecord> {
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    consumer.assign_topic(topic).await.unwrap();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while records.len() < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "consumed only {} of {expected} records",
            records.len()
        );
        records.extend(consumer.poll(Duration::from_millis(500)).await.unwrap());
    }
    records
}

fn check(records: &[ConsumerRecord], partitions: u32) {
    assert_eq!(records.len(), RECORDS);
    let mut last_offset: BTreeMap<u32, u64> = BTreeMap::new();
    let mut last_value_per_key: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for r in records {
        let key = r.key.clone().unwrap();
        assert_eq!(
            r.partition,
            partition_for_key(&key, partitions),
            "keyed records land on murmur2(key) % partitions"
        );
        if let Some(previous) = last_offset.insert(r.partition, r.offset) {
            assert_eq!(
                r.offset,
                previous + 1,
                "offsets of a partition are consumed in order without gaps"
            );
        }
        let value: usize = std::str::from_utf8(r.value.as_ref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        if let Some(previous) = last_value_per_key.insert(key.to_vec(), value) {
            assert!(value > previous, "records of one key keep their send order");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_restart_and_read_again() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), &[]);
    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("events", 4))
        .await
        .unwrap();

    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..RECORDS {
        let record = Record::new("events")
            .key(format!("key-{}", i % 50))
            .value(i.to_string());
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await;
    let mut acked = BTreeMap::new();
    for delivery in deliveries {
        let metadata = delivery.await.unwrap();
        assert!(
            acked
                .insert((metadata.partition, metadata.offset.unwrap()), ())
                .is_none(),
            "every record gets its own offset"
        );
    }
    assert_eq!(acked.len(), RECORDS);

    let records = consume_all(client.clone(), "events", RECORDS).await;
    check(&records, 4);
    let offsets = Admin::new(client.clone())
        .describe_topic("events")
        .await
        .unwrap();
    assert_eq!(
        offsets
            .iter()
            .map(|p| p.latest_offset.unwrap())
            .sum::<u64>(),
        RECORDS as u64
    );

    assert!(broker.terminate(), "SIGTERM: clean exit 0");
    let address = broker.address.clone();
    drop(broker);
    let broker = BrokerProcess::start_on(data.path(), &address, &[]);
    let client = common::client(&broker.address).await;
    let again = consume_all(client, "events", RECORDS).await;
    check(&again, 4);
    let key = |r: &ConsumerRecord| (r.partition, r.offset, r.value.clone());
    let mut before: Vec<_> = records.iter().map(key).collect();
    let mut after: Vec<_> = again.iter().map(key).collect();
    before.sort();
    after.sort();
    assert_eq!(
        before, after,
        "the restarted broker serves the same records"
    );
}

/// Issue 14 §0: a record sent after the producer went idle is sent after `linger`, not after
/// the sender's 1 s fallback sleep. Each round waits for the previous acknowledgement (the
/// sender then goes idle), pauses, and sends one record: before the fix every round took about
/// the rest of a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_sent_after_an_idle_pause_is_acknowledged_within_a_few_lingers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("idle", 1))
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::from_millis(5),
            ..ProducerConfig::default()
        },
    );
    let send = |i: usize| {
        let producer = producer.clone();
        async move {
            let started = std::time::Instant::now();
            let delivery = producer
                .send(Record::new("idle").partition(0).value(format!("r{i}")))
                .await
                .unwrap();
            delivery.await.unwrap();
            started.elapsed()
        }
    };
    send(0).await; // takes a producer id, learns the leader
    let mut slowest = Duration::ZERO;
    for i in 1..=5 {
        // The idle pause is the scenario under test, not a wait for some state.
        tokio::time::sleep(Duration::from_millis(150)).await;
        slowest = slowest.max(send(i).await);
    }
    assert!(
        slowest < Duration::from_millis(400),
        "a record after an idle pause took {slowest:?} (linger 5 ms)"
    );
}

/// Backpressure per partition: while a partition's batches cannot go (its broker is stopped),
/// `send` accepts records until two full batches wait behind the one in flight and then waits,
/// long before the 32 MiB of buffer memory is used; once the broker runs again every record
/// lands once, in order. (Before the cap, all 40 records were accepted at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_while_its_partition_has_two_full_batches_queued() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("capped", 1))
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            // A second 600-byte record closes a batch; one batch in flight.
            batch_size_bytes: 1024,
            max_in_flight_per_partition: 1,
            request_timeout: Some(Duration::from_secs(60)),
            ..ProducerConfig::default()
        },
    );
    let record = |i: usize| {
        Record::new("capped")
            .partition(0)
            .value(format!("{i:0>600}"))
    };
    // Takes a producer id and learns the leader before the broker stops.
    producer.send(record(0)).await.unwrap().await.unwrap();
    broker.signal_pause(true);
    // Record 1 opens batch A; 2 closes it (A goes in flight, the only slot) and opens B; 3
    // closes B (A has left the queue: sends wait until it has) and opens C. Nothing can leave
    // the queue now: A's response cannot come while the broker is stopped.
    let mut deliveries = Vec::new();
    for i in 1..=3 {
        let send = tokio::time::timeout(Duration::from_secs(10), producer.send(record(i)));
        deliveries.push(send.await.expect("accepted").unwrap());
    }
    // Record 4 would close C: two full batches (B, C) would wait, so its send waits.
    let mut fourth = Box::pin(producer.send(record(4)));
    assert!(
        futures::FutureExt::now_or_never(&mut fourth).is_none(),
        "a fourth record was accepted while the partition's batches could not go"
    );
    broker.signal_pause(false);
    deliveries.push(fourth.await.unwrap());
    for i in 5..=40 {
        deliveries.push(producer.send(record(i)).await.unwrap());
    }
    let mut offsets = Vec::new();
    for delivery in deliveries {
        offsets.push(delivery.await.unwrap().offset);
    }
    let expected: Vec<Option<u64>> = (1..=40).map(Some).collect();
    assert_eq!(offsets, expected, "every record once, in order");
}

/// `send_when_idle`: a partition with nothing in flight sends its batch at once instead of
/// waiting for `linger` (here a minute, so waiting could not pass), and every record still
/// lands once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_send_when_idle_an_idle_partition_does_not_wait_for_linger() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("eager", 1))
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::from_secs(60),
            send_when_idle: true,
            ..ProducerConfig::default()
        },
    );
    let started = std::time::Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..200 {
        let record = Record::new("eager").partition(0).value(format!("r{i}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    let mut offsets = Vec::new();
    for delivery in deliveries {
        offsets.push(delivery.await.unwrap().offset);
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "200 records with a 60 s linger took {:?}",
        started.elapsed()
    );
    let expected: Vec<Option<u64>> = (0..200).map(Some).collect();
    assert_eq!(offsets, expected, "every record once, in order");
}

/// The producer keeps each topic's partition count between records and reads it again once the
/// client's metadata changes: after partitions are added, keyed records spread over all of
/// them and the new partitions take records, where before they were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_sees_partitions_added_to_a_topic() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = client(&broker.address).await;
    let admin = Admin::new(client.clone());
    admin.create_topic(NewTopic::new("grows", 1)).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let first = producer
        .send(Record::new("grows").key("k0").value("v"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(first.partition, 0);
    let refused = producer
        .send(Record::new("grows").partition(3).value("v"))
        .await
        .err()
        .expect("partition 3 of a one-partition topic is refused");
    assert!(refused.to_string().contains("does not exist"), "{refused}");

    admin.create_partitions("grows", 4).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..64 {
        let key = format!("k{i}");
        let delivery = producer
            .send(Record::new("grows").key(key.clone()).value("v"))
            .await
            .unwrap();
        deliveries.push((key, delivery));
    }
    let mut used = std::collections::BTreeSet::new();
    for (key, delivery) in deliveries {
        let written = delivery.await.unwrap();
        assert_eq!(written.partition, partition_for_key(key.as_bytes(), 4));
        used.insert(written.partition);
    }
    assert_eq!(used.len(), 4, "64 keys over 4 partitions: {used:?}");
    let third = producer
        .send(Record::new("grows").partition(3).value("v"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(&*third.topic, "grows");
    assert_eq!(third.partition, 3);
}

/// `send_batch`: many records in one call, through every wait a `send` has (the topic's
/// partition count unknown, buffer memory full, full batches queued), land once each and in
/// order, and their deliveries give each record's offset; a record refused part-way leaves the
/// ones before it queued and delivered, and none after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batch_queues_records_in_order_through_every_wait() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("bulk", 3))
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            // 3,000 records of 200 bytes are 600 KB: the call waits for memory and queues.
            batch_size_bytes: 4096,
            buffer_memory_bytes: 64 << 10,
            ..ProducerConfig::default()
        },
    );
    // The first half into partition 0, the rest round the partitions.
    let partition_of = |i: usize| if i < 1500 { 0 } else { (i % 3) as u32 };
    let records = (0..3000).map(|i| {
        Record::new("bulk")
            .partition(partition_of(i))
            .value(format!("{i:0>200}"))
    });
    let mut deliveries = rill_client::Deliveries::new();
    producer.send_batch(records, &mut deliveries).await.unwrap();
    assert_eq!(deliveries.len(), 3000);
    let outcomes = deliveries.wait().await;
    let mut next = [0u64; 3];
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let metadata = outcome.unwrap();
        let p = partition_of(i);
        assert_eq!(metadata.partition, p, "record {i}");
        assert_eq!(metadata.offset, Some(next[p as usize]), "record {i}");
        next[p as usize] += 1;
    }

    // Records with timestamps of their own, into one batch: each delivery gives its own.
    let records = (0..4).map(|i| {
        Record::new("bulk")
            .partition(2)
            .timestamp(1_000 + i64::from(i / 2))
            .value("t")
    });
    let mut deliveries = rill_client::Deliveries::new();
    producer.send_batch(records, &mut deliveries).await.unwrap();
    let stamped: Vec<_> = deliveries
        .wait()
        .await
        .into_iter()
        .map(|o| o.map(|m| (m.offset, m.timestamp)).unwrap())
        .collect();
    let base = next[2];
    assert_eq!(
        stamped,
        [
            (Some(base), 1_000),
            (Some(base + 1), 1_000),
            (Some(base + 2), 1_001),
            (Some(base + 3), 1_001)
        ]
    );
    next[2] += 4;

    // Record 2 names a partition the topic does not have.
    let records = (0..5).map(|i| {
        Record::new("bulk")
            .partition(if i == 2 { 7 } else { 1 })
            .value(format!("late-{i}"))
    });
    let mut deliveries = rill_client::Deliveries::new();
    let refused = producer.send_batch(records, &mut deliveries).await;
    assert!(
        matches!(&refused, Err(rill_client::ClientError::Invalid(m)) if m.contains("partition 7")),
        "{refused:?}"
    );
    assert_eq!(deliveries.len(), 2, "the records before the refused one");
    let offsets: Vec<_> = deliveries
        .wait()
        .await
        .into_iter()
        .map(|o| o.unwrap().offset)
        .collect();
    assert_eq!(offsets, [Some(next[1]), Some(next[1] + 1)]);

    // Every record once, in its partition's order; nothing after the refused one.
    let records = consume_all(client, "bulk", 3006).await;
    let mut values: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for r in &records {
        values
            .entry(r.partition)
            .or_default()
            .push(String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap());
    }
    for p in 0..3u32 {
        let mut expected: Vec<String> = (0..3000)
            .filter(|i| partition_of(*i) == p)
            .map(|i| format!("{i:0>200}"))
            .collect();
        if p == 1 {
            expected.extend(["late-0".to_string(), "late-1".to_string()]);
        }
        if p == 2 {
            expected.extend(std::iter::repeat_n("t".to_string(), 4));
        }
        assert_eq!(
            values.remove(&p).unwrap_or_default(),
            expected,
            "partition {p}"
        );
    }
}

/// A send to a topic that does not exist fails with the broker's answer, and the producer
/// goes on serving the topics that do (it keeps no state for the missing one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_a_missing_topic_fails_and_the_producer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("present", 1))
        .await
        .unwrap();
    let producer = Producer::new(client, ProducerConfig::default());
    for round in 0..3 {
        let missing = producer
            .send(Record::new(format!("missing-{round}")).value("x"))
            .await;
        assert!(
            matches!(&missing, Err(rill_client::ClientError::Broker { code, .. })
                if *code == rill_client::protocol::ErrorCode::UNKNOWN_TOPIC_OR_PARTITION),
            "{:?}",
            missing.map(|_| ())
        );
        let sent = producer
            .send(Record::new("present").value(format!("v{round}")))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(sent.offset, Some(round));
    }
}

/// `Producer::abort` against a broker that vanished: records queued behind the dead
/// connection fail at once instead of after their delivery timeout (a minute here), later
/// sends fail with `Closed`, and `flush` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_fails_what_is_queued_for_a_vanished_broker_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("abort", 1))
        .await
        .unwrap();
    let producer = Producer::new(
        client,
        ProducerConfig {
            linger: Duration::from_millis(1),
            delivery_timeout: Duration::from_secs(60),
            ..ProducerConfig::default()
        },
    );
    let first = producer.send(Record::new("abort").value("before")).await;
    first.unwrap().await.unwrap();
    broker.kill9();
    let mut deliveries = Vec::new();
    for i in 0..100 {
        let record = Record::new("abort").value(format!("after-{i:0>500}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.abort();
    let outcomes = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join_all(deliveries),
    )
    .await
    .expect("every delivery failed well before its delivery timeout");
    assert!(outcomes.iter().all(Result::is_err));
    assert!(outcomes
        .iter()
        .any(|o| matches!(o, Err(rill_client::ClientError::Closed))));
    let later = producer.send(Record::new("abort").value("later")).await;
    assert!(matches!(later, Err(rill_client::ClientError::Closed)));
    tokio::time::timeout(Duration::from_secs(20), producer.flush())
        .await
        .expect("flush returns once nothing is outstanding");
}
