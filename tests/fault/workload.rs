//! Workloads: clients doing real work against the cluster while the nemesis runs, each writing
//! every operation into the history.
//!
//! Appends (workload 1): producers (acks=all, idempotent) append unique values `P-N` (producer
//! `P`'s `N`th record) round robin over the topic's partitions; a reader follows every
//! partition from offset 0 and records every record it is given.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rill_client::{Acks, Client, Consumer, ConsumerConfig, Producer, ProducerConfig, Record};
use tokio::task::JoinHandle;

use crate::history::{Event, History, Type};

/// The topic the append workload writes.
pub const TOPIC: &str = "appends";
/// Its partitions.
pub const PARTITIONS: u32 = 3;

/// A client with the retry timings of the workloads: short enough that operations resolve
/// during a fault, long enough to ride over an election.
pub async fn client(bootstrap: &str) -> Client {
    let mut config = rill_client::ClientConfig::new(bootstrap);
    config.retry_timeout = Duration::from_secs(10);
    config.request_timeout = Duration::from_secs(3);
    config.retry_backoff_max = Duration::from_millis(200);
    crate::common::eventually_value(
        Duration::from_secs(60),
        "a workload client connects",
        || {
            let config = config.clone();
            async move { Client::connect(config).await.ok() }
        },
    )
    .await
}

/// The workloads' producers: acks=all and idempotent; a delivery timeout short enough that
/// faults leave unknown outcomes (and expired batches) behind.
fn producer_config() -> ProducerConfig {
    ProducerConfig {
        acks: Acks::All,
        linger: Duration::from_millis(2),
        delivery_timeout: Duration::from_secs(6),
        request_timeout: Some(Duration::from_secs(3)),
        enable_idempotence: true,
        ..ProducerConfig::default()
    }
}

/// One producer: sends one record every `every` until `stop`, then waits for what is in flight.
pub fn producer(
    id: u32,
    bootstrap: String,
    history: History,
    stop: Arc<AtomicBool>,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let process = format!("producer-{id}");
        let producer = Producer::new(client(&bootstrap).await, producer_config());
        // Acknowledgements are awaited in send order by their own task.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
            String,
            u32,
            rill_client::producer::DeliveryFuture,
        )>();
        let acker = {
            let (history, process) = (history.clone(), process.clone());
            tokio::spawn(async move {
                while let Some((value, partition, delivery)) = rx.recv().await {
                    let event = match delivery.await {
                        Ok(meta) => match meta.offset {
                            Some(offset) => Event::new(&process, Type::Ok, "send").offset(offset),
                            None => Event::new(&process, Type::Info, "send")
                                .error("acknowledged without an offset"),
                        },
                        // With retries, an error after a send may hide a write that happened.
                        Err(e) => Event::new(&process, Type::Info, "send").error(e),
                    };
                    history.record(event.topic(TOPIC).partition(partition).value(value));
                }
            })
        };
        let mut pace = tokio::time::interval(every);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            pace.tick().await;
            let partition = (n % u64::from(PARTITIONS)) as u32;
            let value = format!("{id}-{n}");
            n += 1;
            history.record(
                Event::new(&process, Type::Invoke, "send")
                    .topic(TOPIC)
                    .partition(partition)
                    .value(value.clone()),
            );
            let record = Record::new(TOPIC).partition(partition).value(value.clone());
            match producer.send(record).await {
                Ok(delivery) => {
                    let _ = tx.send((value, partition, delivery));
                }
                // Never queued: certainly not written.
                Err(e) => history.record(
                    Event::new(&process, Type::Fail, "send")
                        .topic(TOPIC)
                        .partition(partition)
                        .value(value)
                        .error(e),
                ),
            }
        }
        drop(tx);
        let _ = acker.await;
        producer.close().await;
    })
}

/// The event of `process` being given record `r` (`f`: `read` or `process`).
fn consumed(process: &str, f: &str, r: &rill_client::ConsumerRecord) -> Event {
    let value = r
        .value
        .as_ref()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    Event::new(process, Type::Ok, f)
        .topic(&r.topic)
        .partition(r.partition)
        .offset(r.offset)
        .value(value)
}

/// The reader: follows every partition from offset 0 until `stop`.
pub fn reader(bootstrap: String, history: History, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut consumer = Consumer::new(client(&bootstrap).await, ConsumerConfig::default());
        consumer.assign((0..PARTITIONS).map(|p| (TOPIC.to_string(), p)));
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(200)).await {
                Ok(records) => {
                    for r in &records {
                        history.record(consumed("reader", "read", r));
                    }
                }
                Err(e) => {
                    history.record(Event::new("reader", Type::Info, "read").error(e));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// The group the group workload's members join (they consume [`TOPIC`]).
pub const GROUP: &str = "appends-group";

/// Group workload (2): one member slot. A member joins, processes what it is given (a
/// `process` event per record), commits after every poll that gave it records, and leaves
/// after 3-10 s; 0.5-2 s later the slot's next member joins. Until `stop`.
pub fn member_slot(
    slot: u32,
    seed: u64,
    bootstrap: String,
    history: History,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = crate::common::Rng::new(
            seed ^ (u64::from(slot) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let client = client(&bootstrap).await;
        let mut life = 0;
        while !stop.load(Ordering::Relaxed) {
            life += 1;
            let until =
                tokio::time::Instant::now() + Duration::from_millis(rng.range(3_000, 10_000));
            let process = format!("member-{slot}.{life}");
            member(&client, &process, &history, |_| {
                stop.load(Ordering::Relaxed) || tokio::time::Instant::now() >= until
            })
            .await;
            tokio::time::sleep(Duration::from_millis(rng.range(500, 2_000))).await;
        }
    })
}

/// One member's life: joins [`GROUP`], processes and commits until `done(consumer)`, then
/// leaves. Every assignment, revocation, processed record and commit goes into the history.
pub async fn member<F>(client: &Client, process: &str, history: &History, mut done: F)
where
    F: FnMut(&Consumer) -> bool,
{
    use rill_client::{GroupConfig, RebalanceEvent};
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    let mut config = GroupConfig::new(GROUP);
    config.session_timeout = Duration::from_secs(3);
    config.auto_commit_interval = None;
    consumer.subscribe(config, &[TOPIC]);
    history.record(Event::new(process, Type::Ok, "join"));
    // Per partition: the offset after the last record processed.
    let mut next: std::collections::BTreeMap<u32, u64> = Default::default();
    while !done(&consumer) {
        let records = match consumer.poll(Duration::from_millis(100)).await {
            Ok(records) => records,
            Err(e) => {
                history.record(Event::new(process, Type::Info, "poll").error(e));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Assignments first: they took effect before this poll fetched its records.
        for event in consumer.take_events() {
            let (f, partitions) = match event {
                RebalanceEvent::Assigned(p) => ("assign", p),
                RebalanceEvent::Revoked(p) => ("revoke", p),
            };
            for (topic, partition) in partitions {
                if f == "revoke" {
                    next.remove(&partition);
                }
                history.record(
                    Event::new(process, Type::Ok, f)
                        .topic(&topic)
                        .partition(partition),
                );
            }
        }
        if records.is_empty() {
            continue;
        }
        for r in &records {
            history.record(consumed(process, "process", r));
            next.insert(r.partition, r.offset + 1);
        }
        let assigned: Vec<u32> = consumer.assignment().into_iter().map(|(_, p)| p).collect();
        let offsets: std::collections::BTreeMap<(String, u32), u64> = next
            .iter()
            .filter(|(p, _)| assigned.contains(p))
            .map(|(p, o)| ((TOPIC.to_string(), *p), *o))
            .collect();
        let commit = |kind: Type, error: Option<&rill_client::ClientError>| {
            for ((topic, partition), offset) in &offsets {
                let event = Event::new(process, kind, "commit")
                    .topic(topic)
                    .partition(*partition)
                    .offset(*offset);
                history.record(match error {
                    Some(e) => event.error(e),
                    None => event,
                });
            }
        };
        commit(Type::Invoke, None);
        match consumer.commit_offsets(offsets.clone()).await {
            Ok(()) => commit(Type::Ok, None),
            // Even a refusal may follow a write that later counts (a timed-out append to
            // the offsets topic): unknown.
            Err(e) => commit(Type::Info, Some(&e)),
        }
    }
    match consumer.close().await {
        Ok(()) => history.record(Event::new(process, Type::Ok, "leave")),
        Err(e) => history.record(Event::new(process, Type::Info, "leave").error(e)),
    }
}

/// Topic workload (3): the names it creates, deletes and grows (few, so that names are
/// re-created often).
pub const CHURN: [&str; 3] = ["churn-a", "churn-b", "churn-c"];

/// Topic workload (3): every 0.3-1.5 s creates (2 partitions, RF 3), deletes or adds a
/// partition to one of [`CHURN`], then sends 10 records to it, whose values name the topic's
/// incarnation (`churn-a#3-17`: the 17th record sent after the third creation of `churn-a`
/// was asked for). Every failed operation is recorded as unknown (`info`): a refusal such as
/// TOPIC_ALREADY_EXISTS may answer a retry of a request that did take effect.
pub fn topics(
    seed: u64,
    bootstrap: String,
    history: History,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = crate::common::Rng::new(seed ^ 0x746f_7069_6373);
        let client = client(&bootstrap).await;
        let admin = rill_client::Admin::new(client.clone());
        let producer = Producer::new(client.clone(), producer_config());
        let mut incarnation: std::collections::HashMap<&str, u32> = Default::default();
        let mut sent: u64 = 0;
        let mut deliveries = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(rng.range(300, 1_500))).await;
            let name = CHURN[rng.range(0, CHURN.len() as u64) as usize];
            let op = rng.range(0, 3);
            let (f, detail, result) = match op {
                0 => {
                    let k = incarnation.get(name).copied().unwrap_or(0) + 1;
                    history.record(
                        Event::new("admin", Type::Invoke, "create")
                            .topic(name)
                            .value(k.to_string()),
                    );
                    let mut topic = rill_client::NewTopic::new(name, 2);
                    topic.replication_factor = 3;
                    incarnation.insert(name, k);
                    ("create", k.to_string(), admin.create_topic(topic).await)
                }
                1 => {
                    history.record(Event::new("admin", Type::Invoke, "delete").topic(name));
                    ("delete", String::new(), admin.delete_topic(name).await)
                }
                _ => {
                    let count = match client.partition_count(name).await {
                        Ok(n) => n + 1,
                        Err(_) => continue,
                    };
                    history.record(
                        Event::new("admin", Type::Invoke, "add-partitions")
                            .topic(name)
                            .value(count.to_string()),
                    );
                    (
                        "add-partitions",
                        count.to_string(),
                        admin.create_partitions(name, count).await,
                    )
                }
            };
            let event = |kind| {
                Event::new("admin", kind, f)
                    .topic(name)
                    .value(detail.clone())
            };
            history.record(match &result {
                Ok(()) => event(Type::Ok),
                Err(e) => event(Type::Info).error(e),
            });
            // Records into the topic as it is now, acknowledged in the background.
            let k = incarnation.get(name).copied().unwrap_or(0);
            let Ok(partitions) = client.partition_count(name).await else {
                continue;
            };
            for _ in 0..10 {
                let partition = (sent % u64::from(partitions)) as u32;
                let value = format!("{name}#{k}-{sent}");
                sent += 1;
                history.record(
                    Event::new("admin", Type::Invoke, "send")
                        .topic(name)
                        .partition(partition)
                        .value(value.clone()),
                );
                let record = Record::new(name).partition(partition).value(value.clone());
                match producer.send(record).await {
                    Ok(delivery) => deliveries.push(tokio::spawn({
                        let history = history.clone();
                        async move {
                            let event = match delivery.await {
                                Ok(meta) => match meta.offset {
                                    Some(o) => Event::new("admin", Type::Ok, "send").offset(o),
                                    None => Event::new("admin", Type::Info, "send"),
                                },
                                Err(e) => Event::new("admin", Type::Info, "send").error(e),
                            };
                            history.record(event.topic(name).partition(partition).value(value));
                        }
                    })),
                    Err(e) => history.record(
                        Event::new("admin", Type::Fail, "send")
                            .topic(name)
                            .partition(partition)
                            .value(value)
                            .error(e),
                    ),
                }
            }
            deliveries.retain(|d: &JoinHandle<()>| !d.is_finished());
        }
        for delivery in deliveries {
            let _ = delivery.await;
        }
        producer.close().await;
    })
}
