//! A broker on a full disk (review findings #4, #5, #10): its data directory on a small tmpfs
//! that the test fills to the last byte. Produce fails with a clear retriable error and nothing
//! crashes; the broker restarts on the full disk (no crash loop) and serves every acknowledged
//! record; once space is freed, producing resumes. Needs root (mount) like the network tests.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::tmpfs::Tmpfs;
use rill_client::{Acks, Admin, NewTopic, Producer, ProducerConfig, Record};

fn producer(client: &rill_client::Client) -> Producer {
    Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::Leader,
            linger: Duration::from_millis(1),
            batch_size_bytes: 8 << 10,
            delivery_timeout: Duration::from_secs(3),
            ..ProducerConfig::default()
        },
    )
}

/// Produces `count` records (value `tag-i`) one delivery at a time; records what was
/// acknowledged; stops at the first failed delivery and returns its error.
async fn produce(
    producer: &Producer,
    tag: &str,
    count: usize,
    acked: &mut BTreeMap<u64, String>,
) -> Option<String> {
    let value_pad = "x".repeat(1000);
    let mut deliveries = Vec::new();
    for i in 0..count {
        let value = format!("{tag}-{i}-{value_pad}");
        let delivery = producer
            .send(Record::new("t").partition(0).value(value.clone()))
            .await
            .expect("queue a record");
        deliveries.push((value, delivery));
        if deliveries.len() == 4096 || i + 1 == count {
            for (value, delivery) in deliveries.drain(..) {
                match delivery.await {
                    Ok(m) => {
                        acked.insert(m.offset.expect("acks=1 gives an offset"), value);
                    }
                    Err(e) => return Some(e.to_string()),
                }
            }
        }
    }
    None
}

/// Every acknowledged record is at its offset (read from the beginning of partition 0).
async fn verify(client: &rill_client::Client, acked: &BTreeMap<u64, String>) {
    let stored =
        common::read_positions(client, "t", Some(&[0]), acked.keys().map(|o| (0, *o))).await;
    for (offset, value) in acked {
        assert_eq!(
            stored.get(&(0, *offset)),
            Some(value),
            "acknowledged record at offset {offset} lost or changed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_produce_cleanly_survives_a_restart_and_resumes_when_freed() {
    let started = std::time::Instant::now();
    let fs = Tmpfs::mount(48);
    let data = fs.path().join("data");
    let mut broker = common::BrokerProcess::start(&data, &[]);
    let address = broker.address.clone();
    let client = common::client(&address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("t", 1))
        .await
        .expect("create topic");
    let mut acked = BTreeMap::new();
    let producer1 = producer(&client);
    assert_eq!(produce(&producer1, "before", 2000, &mut acked).await, None);

    eprintln!("{:?}: 2000 acknowledged", started.elapsed());
    fs.fill();
    eprintln!("{:?}: filled", started.elapsed());
    // Produce into the full disk: the segment's preallocated space takes some, then every
    // append fails with a retriable storage error; the broker stays up.
    let error = produce(&producer1, "full", 200_000, &mut acked)
        .await
        .expect("the full disk refuses appends eventually");
    eprintln!("{} records acknowledged; then: {error}", acked.len());
    assert!(
        error.contains("STORAGE_ERROR"),
        "a full disk is a storage error: {error}"
    );
    assert!(
        broker.drain_log().iter().all(|l| !l.contains("panicked")),
        "no panic"
    );
    verify(&client, &acked).await;

    eprintln!("{:?}: full disk refused appends", started.elapsed());
    // kill -9 and restart on the still full disk: it must come up and serve everything.
    broker.kill9();
    drop(producer1);
    let mut broker = common::BrokerProcess::start_on(&data, &address, &[]);
    let client = common::client(&address).await;
    verify(&client, &acked).await;

    eprintln!("{:?}: restarted on the full disk", started.elapsed());
    // Space again: producing resumes.
    fs.free();
    let producer2 = producer(&client);
    let mut poll = common::Poll::new(
        Duration::from_secs(60),
        "producing resumes after space is freed",
    );
    loop {
        if produce(&producer2, "after", 500, &mut acked)
            .await
            .is_none()
        {
            break;
        }
        poll.pause().await;
    }
    verify(&client, &acked).await;
    assert!(
        broker.drain_log().iter().all(|l| !l.contains("panicked")),
        "no panic"
    );
}
