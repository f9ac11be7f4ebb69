//! Kafka consumer groups from librdkafka (the `rdkafka` crate, built from librdkafka's bundled
//! source) against a real `rill-broker`: the classic JoinGroup/SyncGroup protocol with
//! client-side assignment, rebalances as members join and leave, committed offsets that survive
//! a broker crash, and the group seen through Rill's own CLI with its lag.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::BrokerProcess;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

fn kafka_address(broker: &BrokerProcess) -> String {
    broker
        .kafka_address
        .clone()
        .expect("the Kafka listener is on")
}

async fn create_topic(kafka: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("CreateTopics answered");
    for result in results {
        result.expect("topic created");
    }
}

/// Produces `values` (key = value) with an idempotent producer; returns each record's
/// (partition, offset) and value.
async fn produce(
    kafka: &str,
    topic: &str,
    values: impl Iterator<Item = String>,
) -> BTreeMap<(i32, i64), String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut acked = BTreeMap::new();
    for value in values {
        let delivered = producer
            .send(
                FutureRecord::to(topic).key(&value).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("record acknowledged");
        acked.insert((delivered.partition, delivered.offset), value);
    }
    acked
}

fn consumer_config(kafka: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", kafka)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    config
}

/// A librdkafka group member consuming in a task until stopped (it then closes: LeaveGroup).
struct Member {
    stop: Arc<AtomicBool>,
    assigned: Arc<Mutex<BTreeSet<i32>>>,
    task: tokio::task::JoinHandle<()>,
}

type Seen = Arc<Mutex<BTreeMap<(i32, i64), String>>>;

/// A member of `group` reading `topic` into `seen`, with `partition.assignment.strategy` `assignor`.
fn member(kafka: &str, group: &str, topic: &str, assignor: &str, seen: Seen) -> Member {
    let consumer: StreamConsumer = consumer_config(kafka, group)
        .set("partition.assignment.strategy", assignor)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "100")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let assigned: Arc<Mutex<BTreeSet<i32>>> = Arc::default();
    let (stop_flag, assigned_now) = (stop.clone(), assigned.clone());
    let task = tokio::spawn(async move {
        while !stop_flag.load(Ordering::SeqCst) {
            if let Ok(Ok(message)) =
                tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await
            {
                let value = String::from_utf8_lossy(message.payload().unwrap_or_default());
                seen.lock()
                    .unwrap()
                    .insert((message.partition(), message.offset()), value.into_owned());
            }
            if let Ok(assignment) = consumer.assignment() {
                *assigned_now.lock().unwrap() = assignment
                    .elements()
                    .iter()
                    .map(|e| e.partition())
                    .collect();
            }
        }
        // Closing commits and leaves the group: blocking, so off the runtime's threads.
        tokio::task::spawn_blocking(move || drop(consumer))
            .await
            .expect("consumer closed");
    });
    Member {
        stop,
        assigned,
        task,
    }
}

impl Member {
    fn assigned(&self) -> usize {
        self.partitions().len()
    }

    fn partitions(&self) -> BTreeSet<i32> {
        self.assigned.lock().unwrap().clone()
    }

    async fn leave(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("member task");
    }
}

fn missing(acked: &BTreeMap<(i32, i64), String>, seen: &Seen) -> usize {
    let seen = seen.lock().unwrap();
    acked.iter().filter(|(k, v)| seen.get(k) != Some(v)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_consumers_share_a_topic_through_rebalances_and_nothing_is_skipped() {
    share_through_rebalances("range,roundrobin").await;
}

/// KIP-429's incremental rebalancing is the clients' own (the coordinator runs the same
/// classic protocol); it works only if each member's subscription, with the partitions it owns,
/// reaches the leader intact. Sticky: a joining member takes partitions only from the others,
/// who keep the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_librdkafka_consumers_rebalance_incrementally_and_skip_nothing() {
    share_through_rebalances("cooperative-sticky").await;
}

/// Two members of `assignor` split six partitions, a third joins, one leaves; every
/// acknowledged record is consumed.
async fn share_through_rebalances(assignor: &str) {
    let cooperative = assignor == "cooperative-sticky";
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &["--group-initial-rebalance-delay-ms", "300"]);
    let kafka = kafka_address(&broker);
    create_topic(&kafka, "shared", 6).await;
    let mut acked = produce(&kafka, "shared", (0..300).map(|i| format!("r{i}"))).await;
    let seen: Seen = Arc::default();

    let a = member(&kafka, "sharers", "shared", assignor, seen.clone());
    let b = member(&kafka, "sharers", "shared", assignor, seen.clone());
    common::eventually_async(
        Duration::from_secs(60),
        "a and b split the partitions",
        || {
            let split = a.assigned() > 0 && b.assigned() > 0 && a.assigned() + b.assigned() == 6;
            async move { split }
        },
    )
    .await;
    common::eventually_async(Duration::from_secs(60), "the first 300 consumed", || {
        let done = missing(&acked, &seen) == 0;
        async move { done }
    })
    .await;

    // A third member joins: the group rebalances over three.
    let (a_before, b_before) = (a.partitions(), b.partitions());
    let c = member(&kafka, "sharers", "shared", assignor, seen.clone());
    common::eventually_async(
        Duration::from_secs(60),
        "a, b and c share the partitions",
        || {
            let shared = [a.assigned(), b.assigned(), c.assigned()];
            async move { shared.iter().all(|n| *n == 2) }
        },
    )
    .await;
    if cooperative {
        assert!(
            a.partitions().is_subset(&a_before) && b.partitions().is_subset(&b_before),
            "sticky: a {a_before:?} -> {:?}, b {b_before:?} -> {:?}",
            a.partitions(),
            b.partitions()
        );
    }
    acked.extend(produce(&kafka, "shared", (300..600).map(|i| format!("r{i}"))).await);
    common::eventually_async(Duration::from_secs(60), "600 consumed", || {
        let done = missing(&acked, &seen) == 0;
        async move { done }
    })
    .await;

    // b leaves: a and c take its partitions over from its committed offsets.
    let (a_before, c_before) = (a.partitions(), c.partitions());
    b.leave().await;
    acked.extend(produce(&kafka, "shared", (600..900).map(|i| format!("r{i}"))).await);
    common::eventually_async(
        Duration::from_secs(60),
        "a and c hold every partition",
        || {
            let held = a.assigned() + c.assigned();
            async move { held == 6 }
        },
    )
    .await;
    if cooperative {
        assert!(
            a_before.is_subset(&a.partitions()) && c_before.is_subset(&c.partitions()),
            "sticky: a {a_before:?} -> {:?}, c {c_before:?} -> {:?}",
            a.partitions(),
            c.partitions()
        );
    }
    common::eventually_async(Duration::from_secs(60), "all 900 consumed", || {
        let done = missing(&acked, &seen) == 0;
        async move { done }
    })
    .await;
    assert_eq!(acked.len(), 900);
    a.leave().await;
    c.leave().await;
}

/// A subscribed group member that commits only when told.
fn manual_committer(kafka: &str, group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = consumer_config(kafka, group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// The (partition, offset) of the next record `consumer` reads.
async fn next_position(consumer: &StreamConsumer) -> (i32, i64) {
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .expect("consumed");
    (message.partition(), message.offset())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_from_librdkafka_survive_a_broker_crash_and_rill_shows_the_group_lag() {
    let data = tempfile::tempdir().unwrap();
    let mut broker =
        BrokerProcess::start(data.path(), &["--group-initial-rebalance-delay-ms", "0"]);
    let kafka = kafka_address(&broker);
    create_topic(&kafka, "kept", 2).await;
    let acked = produce(&kafka, "kept", (0..100).map(|i| format!("k{i}"))).await;

    let consumer = manual_committer(&kafka, "keepers", "kept");
    let mut first: BTreeSet<(i32, i64)> = BTreeSet::new();
    while first.len() < 60 {
        first.insert(next_position(&consumer).await);
    }
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("offsets committed");

    // Rill's own CLI shows the Kafka client's group: its member and its lag.
    let described = common::rill_json(&broker.address, &["group", "describe", "keepers"]);
    assert_eq!(described["total_lag"], 40, "{described}");
    // The coordinator's metrics show the same lag and member.
    let metrics = common::scrape_metrics(broker.admin_address.as_deref().expect("admin port"));
    assert_eq!(
        metrics.get(r#"rill_group_lag_records{group="keepers",topic="kept"}"#),
        Some(&40.0),
        "{metrics:?}"
    );
    assert_eq!(
        metrics.get(r#"rill_group_members{group="keepers"}"#),
        Some(&1.0)
    );
    assert_eq!(
        described["group"]["members"].as_array().map(Vec::len),
        Some(1),
        "{described}"
    );
    let listed = common::rill_output(&broker.address, &["group", "list"]);
    assert!(listed.contains("keepers"), "{listed}");

    // One protocol per group: a Rill consumer cannot join the Kafka client's group.
    let mut native = rill_client::Consumer::new(
        common::client(&broker.address).await,
        rill_client::ConsumerConfig::default(),
    );
    native.subscribe(rill_client::GroupConfig::new("keepers"), &["kept"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match native.poll(Duration::from_millis(100)).await {
            Err(e) => break e,
            Ok(records) => {
                assert!(records.is_empty(), "the native member got records");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the native member was not refused"
                );
            }
        }
    };
    assert!(
        refused.to_string().contains("INCONSISTENT_GROUP_PROTOCOL"),
        "{refused}"
    );
    drop(native);

    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .unwrap();
    broker.kill9();
    let broker = BrokerProcess::start(data.path(), &["--group-initial-rebalance-delay-ms", "0"]);
    let kafka = kafka_address(&broker);

    // A new member resumes where the commit left off: exactly the other 40.
    let consumer = manual_committer(&kafka, "keepers", "kept");
    let mut rest: BTreeSet<(i32, i64)> = BTreeSet::new();
    while rest.len() < 40 {
        let at = next_position(&consumer).await;
        assert!(
            !first.contains(&at),
            "{at:?} was consumed and committed before the crash"
        );
        rest.insert(at);
    }
    let all: BTreeSet<(i32, i64)> = first.union(&rest).copied().collect();
    assert_eq!(all, acked.keys().copied().collect::<BTreeSet<_>>());
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_member_carries_on_through_a_coordinator_failover_and_its_commits_survive() {
    let mut cluster =
        common::cluster::Cluster::start(3, &["--group-initial-rebalance-delay-ms", "0"]);
    let kafka: Vec<String> = (1..=3).map(|n| kafka_address(cluster.broker(n))).collect();
    let admin = rill_client::Admin::new(cluster.client().await);
    admin
        .create_topic(rill_client::NewTopic {
            replication_factor: 3,
            ..rill_client::NewTopic::new("moved", 3)
        })
        .await
        .expect("topic created");
    let acked = produce(&kafka.join(","), "moved", (0..150).map(|i| format!("m{i}"))).await;

    let consumer = manual_committer(&kafka.join(","), "movers", "moved");
    let mut seen: BTreeSet<(i32, i64)> = BTreeSet::new();
    while seen.len() < 100 {
        seen.insert(next_position(&consumer).await);
    }
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("offsets committed");

    // Kill the group's coordinator: the offsets partition's leadership moves to a follower,
    // which resumes the group from `__consumer_offsets`.
    let coordinator = admin.find_coordinator("movers").await.expect("coordinator");
    let node = (1..=3)
        .find(|n| cluster.address(*n) == coordinator)
        .expect("the coordinator is a cluster broker");
    cluster.kill(node);

    // The same member reads the rest (leaders of "moved" may have moved too) and commits to
    // the new coordinator.
    while seen.len() < 150 {
        seen.insert(next_position(&consumer).await);
    }
    assert_eq!(seen, acked.keys().copied().collect::<BTreeSet<_>>());
    let mut poll = common::Poll::new(Duration::from_secs(60), "a commit after the failover");
    while let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::info!("commit not taken yet: {e}");
        poll.pause().await;
    }
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .unwrap();

    // What was committed is what a new member of the group sees.
    let survivors: Vec<String> = (1..=3u32)
        .filter(|n| *n != node)
        .map(|n| kafka[n as usize - 1].clone())
        .collect();
    let consumer = manual_committer(&survivors.join(","), "movers", "moved");
    let committed = tokio::task::block_in_place(|| {
        let mut list = rdkafka::TopicPartitionList::new();
        for partition in 0..3 {
            list.add_partition("moved", partition);
        }
        consumer.committed_offsets(list, Duration::from_secs(30))
    })
    .expect("committed offsets");
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(-1))
        .sum();
    assert_eq!(total, 150, "{committed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_librdkafka_producer_loses_and_repeats_nothing_when_a_leader_is_killed() {
    use rdkafka::consumer::BaseConsumer;
    let mut cluster = common::cluster::Cluster::start(3, &[]);
    let kafka: Vec<String> = (1..=3).map(|n| kafka_address(cluster.broker(n))).collect();
    let admin = rill_client::Admin::new(cluster.client().await);
    admin
        .create_topic(rill_client::NewTopic {
            replication_factor: 3,
            configs: BTreeMap::from([("min.insync.replicas".to_string(), "2".to_string())]),
            ..rill_client::NewTopic::new("exactly", 3)
        })
        .await
        .expect("topic created");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.join(","))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    // Three rounds of 1,000 records in flight at once; the leader of partition 0 is killed
    // while the second is in flight.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut sent = 0;
    let mut killed = None;
    for round in 0..3 {
        let deliveries: Vec<_> = (0..1000)
            .map(|i| {
                let value = format!("x{round}-{i}");
                let future = producer
                    .send_result(FutureRecord::to("exactly").key(&value).payload(&value))
                    .map_err(|(e, _)| e)
                    .expect("queued");
                (value, future)
            })
            .collect();
        sent += deliveries.len();
        if round == 1 {
            // With the second round in flight.
            let leader = admin.describe_topic("exactly").await.expect("described")[0]
                .leader
                .expect("partition 0 has a leader");
            cluster.kill(leader);
            killed = Some(leader);
        }
        for (value, delivery) in deliveries {
            if let Ok(Ok(_)) = delivery.await {
                acked.insert(value);
            }
        }
    }
    assert!(
        acked.len() > 2000,
        "most records are acknowledged: {}",
        acked.len()
    );

    // Every record the survivors hold, read from the beginning.
    let killed = killed.expect("a leader was killed");
    let survivors: Vec<String> = (1..=3u32)
        .filter(|n| *n != killed)
        .map(|n| kafka[n as usize - 1].clone())
        .collect();
    let consumed = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", survivors.join(","))
            .set("group.id", "verifier")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut list = rdkafka::TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for partition in 0..3 {
            list.add_partition_offset("exactly", partition, rdkafka::Offset::Beginning)
                .expect("partition");
            let (_, high) = consumer
                .fetch_watermarks("exactly", partition, Duration::from_secs(30))
                .expect("watermarks");
            ends.insert(partition, high);
        }
        consumer.assign(&list).expect("assign");
        let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
        let mut values: Vec<String> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while ends
            .iter()
            .any(|(p, end)| positions.get(p).copied().unwrap_or(0) < *end)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "reading back timed out"
            );
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                positions.insert(message.partition(), message.offset() + 1);
                values.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into());
            }
        }
        values
    })
    .await
    .expect("read back");
    eprintln!(
        "acknowledged {} of {sent}, read back {} (broker {killed} killed)",
        acked.len(),
        consumed.len()
    );
    let distinct: BTreeSet<&String> = consumed.iter().collect();
    assert_eq!(distinct.len(), consumed.len(), "no record twice");
    let missing: Vec<&String> = acked.iter().filter(|v| !distinct.contains(v)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(consumed.len() <= sent);
}
