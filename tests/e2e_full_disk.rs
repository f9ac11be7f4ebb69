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

/// Found by the fault suite (seed 1000): the metadata quorum's 4 MiB reserve, released by the
/// first full disk, came back only at the next start; a second full disk then failed a Raft
/// write, openraft stopped the node for good, and the broker heartbeated on but never led
/// anything again. Now the reserve is restored by the first write after space is back, so a
/// second full disk finds it too (and a Raft node that does stop makes the broker exit saying
/// what to do, instead of lingering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_reserve_comes_back_with_the_space_and_covers_a_second_full_disk() {
    let fs = Tmpfs::mount(48);
    let data = fs.path().join("data");
    let mut broker = common::BrokerProcess::start(&data, &[]);
    let address = broker.address.clone();
    let client = common::client(&address).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new("t", 1))
        .await
        .expect("create topic");
    let mut acked = BTreeMap::new();
    let producer = producer(&client);
    assert_eq!(produce(&producer, "first", 100, &mut acked).await, None);

    for round in 1..=2 {
        fs.fill();
        // A metadata write on the full disk: it takes the reserve.
        let _ = admin
            .create_topic(NewTopic::new(format!("full-{round}"), 1))
            .await;
        broker.wait_for_line("DISK FULL: released", Duration::from_secs(30));
        fs.free();
        // The next metadata write, with space, restores the reserve.
        let mut poll = common::Poll::new(Duration::from_secs(30), "the reserve is restored");
        while !broker
            .drain_log()
            .iter()
            .filter(|l| l.contains("disk space is back"))
            .count()
            .eq(&round)
        {
            let _ = admin
                .create_topic(NewTopic::new(format!("free-{round}-{}", rand_suffix()), 1))
                .await;
            poll.pause().await;
        }
        // Still leading: records go in.
        let tag = format!("after-{round}");
        let mut poll =
            common::Poll::new(Duration::from_secs(30), "producing after the space is back");
        while produce(&producer, &tag, 100, &mut acked).await.is_some() {
            poll.pause().await;
        }
        // Forget the records of failed attempts' tags: only acknowledged ones are checked.
        broker.drain_log();
    }
    verify(&client, &acked).await;
    assert!(broker.is_running(), "the broker is still up");
    assert!(
        broker
            .drain_log()
            .iter()
            .all(|l| !l.contains("panicked") && !l.contains("Raft node on this broker stopped")),
        "no panic, the Raft node still runs"
    );
}

/// A suffix that makes topic names unique within a test.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// With no reserve left (deleted here by hand) a metadata write on a full disk fails and
/// openraft stops the Raft node for good: the broker must not linger as a leader that leads
/// nothing; it exits non-zero and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_node_that_cannot_write_stops_the_broker_saying_what_to_do() {
    let fs = Tmpfs::mount(48);
    let data = fs.path().join("data");
    let mut broker = common::BrokerProcess::start(&data, &[]);
    let client = common::client(&broker.address).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new("t", 1))
        .await
        .expect("create topic");
    std::fs::remove_file(data.join("raft").join("reserve")).expect("remove the reserve");
    fs.fill();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        admin.create_topic(NewTopic::new("u", 1)),
    )
    .await;
    let status = broker.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "exits non-zero: {status:?}");
    let line = broker.wait_for_line("Raft node on this broker stopped", Duration::from_secs(5));
    assert!(
        line.contains("free space in") && line.contains("restart the broker"),
        "says what to do: {line}"
    );
    assert!(
        broker.log.iter().all(|l| !l.contains("panicked")),
        "no panic"
    );
}
