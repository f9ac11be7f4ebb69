//! `kill -9` of the broker during production with acks=1 and flush policy `always`: after a
//! restart every acknowledged record is at the partition and offset its acknowledgement gave.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, BrokerProcess};
use rill_client::{Admin, NewTopic, Producer, ProducerConfig, Record};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_kill_9_during_production() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), &["--flush", "always"]);
    let address = broker.address.clone();
    let client = client(&address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("durable", 3))
        .await
        .unwrap();

    // Produce continuously; remember every acknowledgement.
    let acked: Arc<Mutex<BTreeMap<(u32, u64), String>>> = Arc::default();
    let mut config = ProducerConfig {
        linger: Duration::from_millis(1),
        delivery_timeout: Duration::from_secs(2),
        ..ProducerConfig::default()
    };
    config.batch_size_bytes = 4096;
    let producer = Producer::new(client.clone(), config);
    let sender = {
        let acked = acked.clone();
        tokio::spawn(async move {
            for i in 0u64.. {
                let value = format!("value-{i}");
                let Ok(delivery) = producer
                    .send(
                        Record::new("durable")
                            .key(format!("k{}", i % 17))
                            .value(value.clone()),
                    )
                    .await
                else {
                    break;
                };
                let acked = acked.clone();
                tokio::spawn(async move {
                    if let Ok(metadata) = delivery.await {
                        acked
                            .lock()
                            .unwrap()
                            .insert((metadata.partition, metadata.offset.unwrap()), value);
                    }
                });
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    common::eventually_async(Duration::from_secs(60), "500 acknowledged records", || {
        let acked = acked.clone();
        async move { acked.lock().unwrap().len() >= 500 }
    })
    .await;
    broker.kill9();
    let acknowledged = acked.lock().unwrap().clone();
    sender.abort();

    let broker = BrokerProcess::start_on(data.path(), &address, &["--flush", "always"]);
    let client = common::client(&broker.address).await;
    let stored =
        common::read_positions(&client, "durable", None, acknowledged.keys().copied()).await;
    for (position, value) in &acknowledged {
        assert_eq!(
            stored.get(position),
            Some(value),
            "acknowledged record at partition {} offset {} was lost or changed",
            position.0,
            position.1
        );
    }
}
