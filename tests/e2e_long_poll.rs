//! Long polling: a fetch at the end of the log waits (without busy polling) until a new append
//! wakes it, and an empty fetch returns after `max_wait_ms`.

mod common;

use std::time::{Duration, Instant};

use common::{client, BrokerProcess};
use rill_client::{
    Admin, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig, Record, SeekTo,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_is_woken_by_an_append() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let client = client(&broker.address).await;
    let admin = Admin::new(client.clone());
    admin.create_topic(NewTopic::new("wake", 1)).await.unwrap();

    // An empty fetch waits for max_wait and returns nothing.
    let config = ConsumerConfig {
        fetch_max_wait: Duration::from_millis(300),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config);
    consumer.assign_topic("wake").await.unwrap();
    consumer.seek_all(SeekTo::Latest).await.unwrap();
    let started = Instant::now();
    assert!(consumer
        .poll(Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the broker held the empty fetch for max_wait: {:?}",
        started.elapsed()
    );

    // A long fetch (20 s) is answered as soon as a record arrives.
    let config = ConsumerConfig {
        fetch_max_wait: Duration::from_secs(20),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config);
    consumer.assign_topic("wake").await.unwrap();
    consumer.seek_all(SeekTo::Latest).await.unwrap();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let records = consumer.poll(Duration::from_secs(20)).await.unwrap();
        (records, started.elapsed())
    });
    // Give the fetch time to reach the broker: two round trips on other connections.
    admin.list_topics().await.unwrap();
    admin.describe_topic("wake").await.unwrap();
    let producer = Producer::new(client, ProducerConfig::default());
    producer
        .send(Record::new("wake").value("ping"))
        .await
        .unwrap()
        .await
        .unwrap();
    let (records, waited) = waiting.await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(&b"ping"[..]));
    assert!(
        waited < Duration::from_secs(10),
        "the append woke the fetch instead of it timing out: {waited:?}"
    );
}
