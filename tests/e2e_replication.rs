//! Replication and failover on a cluster of three real broker processes (all controller voters):
//! leader killed or paused during acks=all production, follower restart, two brokers down, the
//! controller leader killed. After each run every acknowledged record must be exactly where its
//! acknowledgement said, and the replicas' logs identical up to the high watermark.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use rill_client::{
    Acks, Admin, Client, ClientError, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig,
    Record,
};

const TOPIC: &str = "replicated";
const PARTITIONS: u32 = 2;

/// `(partition, offset) -> value` of every acknowledged record, plus when each was acknowledged.
type Acked = Arc<Mutex<BTreeMap<(u32, u64), (String, Instant)>>>;

async fn create_replicated_topic(client: &Client) {
    let mut topic = NewTopic::new(TOPIC, PARTITIONS);
    topic.replication_factor = 3;
    topic
        .configs
        .insert("min.insync.replicas".into(), "2".into());
    Admin::new(client.clone())
        .create_topic(topic)
        .await
        .expect("create the replicated topic");
    wait_for_isr(client, 3).await;
}

/// Creates the topic with three replicas (default `min.insync.replicas`) and waits for full ISRs.
async fn create_rf3_topic(client: &Client) {
    let mut topic = NewTopic::new(TOPIC, PARTITIONS);
    topic.replication_factor = 3;
    Admin::new(client.clone())
        .create_topic(topic)
        .await
        .expect("create the replicated topic");
    wait_for_isr(client, 3).await;
}

/// Waits until every partition of the topic has a leader and `size` in-sync replicas.
async fn wait_for_isr(client: &Client, size: usize) {
    let admin = Admin::new(client.clone());
    common::eventually_async(
        Duration::from_secs(30),
        "full ISR on every partition",
        || {
            let admin = admin.clone();
            async move {
                admin.describe_topic(TOPIC).await.is_ok_and(|partitions| {
                    partitions
                        .iter()
                        .all(|p| p.leader.is_some() && p.isr.len() == size)
                })
            }
        },
    )
    .await;
}

/// The leader of `partition` as the cluster reports it now.
async fn leader_of(client: &Client, partition: u32) -> u32 {
    client.refresh_metadata().await.expect("metadata");
    client.partitions(TOPIC).await.expect("partitions")[partition as usize]
        .leader
        .expect("a leader")
}

/// Produces unique records with acks=all until stopped; records every acknowledgement.
struct Load {
    acked: Acked,
    failures: Arc<Mutex<Vec<ClientError>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Deliveries sent and not yet resolved.
    outstanding: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

fn start_load(client: &Client) -> Load {
    start_load_with(client, Acks::All)
}

fn start_load_with(client: &Client, acks: Acks) -> Load {
    let acked: Acked = Arc::default();
    let failures: Arc<Mutex<Vec<ClientError>>> = Arc::default();
    let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let outstanding: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks,
            linger: Duration::from_millis(2),
            batch_size_bytes: 4096,
            delivery_timeout: Duration::from_secs(30),
            ..ProducerConfig::default()
        },
    );
    let task = {
        let (acked, failures, stop) = (acked.clone(), failures.clone(), stop.clone());
        let outstanding = outstanding.clone();
        tokio::spawn(async move {
            // A modest, steady rate (20 records per 5 ms tick): the point is continuity, not
            // throughput, and three brokers share two cores with the test.
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let value = format!("record-{i}");
                let record = Record::new(TOPIC)
                    .partition((i % u64::from(PARTITIONS)) as u32)
                    .value(value.clone());
                let Ok(delivery) = producer.send(record).await else {
                    break;
                };
                let (acked, failures) = (acked.clone(), failures.clone());
                let outstanding = outstanding.clone();
                outstanding.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    match delivery.await {
                        Ok(m) => {
                            let offset = m.offset.expect("acks=1 and acks=all give an offset");
                            let previous = acked
                                .lock()
                                .unwrap()
                                .insert((m.partition, offset), (value, Instant::now()));
                            assert!(previous.is_none(), "two acknowledgements for one offset");
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    outstanding.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
                i += 1;
                if i.is_multiple_of(20) {
                    pace.tick().await;
                }
            }
            producer.flush().await;
        })
    };
    Load {
        acked,
        failures,
        stop,
        outstanding,
        task,
    }
}

impl Load {
    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for_more(&self, records: usize, what: &str) {
        self.wait_for(self.count() + records, what).await;
    }

    async fn wait_for(&self, more_than: usize, what: &str) {
        let acked = self.acked.clone();
        common::eventually_async(Duration::from_secs(60), what, || {
            let acked = acked.clone();
            async move { acked.lock().unwrap().len() > more_than }
        })
        .await;
    }

    /// Stops producing and returns the acknowledgements.
    async fn finish(self) -> BTreeMap<(u32, u64), (String, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the producer drains")
            .expect("producer task");
        // Deliveries resolve on their own tasks (within the delivery timeout).
        let outstanding = self.outstanding.clone();
        common::eventually_async(Duration::from_secs(60), "every delivery resolved", || {
            let outstanding = outstanding.clone();
            async move { outstanding.load(std::sync::atomic::Ordering::SeqCst) == 0 }
        })
        .await;
        let last = self.acked.lock().unwrap().len();
        let failures = self.failures.lock().unwrap();
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for failure in failures.iter() {
            let kind = failure.to_string();
            *kinds.entry(kind.chars().take(90).collect()).or_default() += 1;
        }
        eprintln!(
            "{} records acknowledged, {} failed deliveries: {kinds:?}",
            last,
            failures.len()
        );
        self.acked.lock().unwrap().clone()
    }
}

/// Reads the partitions of `acked` from the beginning (consumers see up to the high watermark)
/// and checks that every acknowledged record is at its acknowledged offset.
async fn verify_acknowledged(client: &Client, acked: &BTreeMap<(u32, u64), (String, Instant)>) {
    let partitions: Vec<u32> = acked
        .keys()
        .map(|(p, _)| *p)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let stored =
        common::read_positions(client, TOPIC, Some(&partitions), acked.keys().copied()).await;
    for (position, (value, _)) in acked {
        assert_eq!(
            stored.get(position),
            Some(value),
            "acknowledged record at partition {} offset {} was lost or changed",
            position.0,
            position.1
        );
    }
}

/// A three-broker cluster with the replicated topic, under acks=all load that has had `records`
/// acknowledged.
async fn cluster_under_load(records: usize) -> (Cluster, Client, Load) {
    let cluster = Cluster::start(3, &[]);
    let client = cluster.client().await;
    create_replicated_topic(&client).await;
    let load = start_load(&client);
    load.wait_for(records, &format!("{records} acknowledged records"))
        .await;
    (cluster, client, load)
}

/// Every acknowledged record is where its acknowledgement said, and (after stopping the
/// brokers) the replicas' logs are identical below the high watermark.
async fn check_acknowledged_and_replicas(
    cluster: &mut Cluster,
    client: &Client,
    acked: &BTreeMap<(u32, u64), (String, Instant)>,
) {
    verify_acknowledged(client, acked).await;
    let hws = high_watermarks(client).await;
    assert_replicas_identical(cluster, &hws);
}

/// High watermark of every partition, from the leaders.
async fn high_watermarks(client: &Client) -> Vec<u64> {
    let admin = Admin::new(client.clone());
    let partitions = admin.describe_topic(TOPIC).await.expect("describe");
    partitions
        .iter()
        .map(|p| p.latest_offset.expect("high watermark"))
        .collect()
}

/// Stops every broker cleanly and compares the replicas' logs byte for byte below `hws`.
fn assert_replicas_identical(cluster: &mut Cluster, hws: &[u64]) {
    for node in 1..=3 {
        if let Some(broker) = cluster.brokers[node - 1].as_mut() {
            assert!(broker.terminate(), "node {node} stops cleanly");
        }
        cluster.brokers[node - 1] = None;
    }
    for (partition, hw) in hws.iter().enumerate() {
        let mut logs: Vec<Vec<u8>> = Vec::new();
        for node in 1..=3u32 {
            let dir = cluster.data_dir(node).join(format!("{TOPIC}-{partition}"));
            let mut log = rill_broker::log::Log::open(&dir, rill_broker::log::LogConfig::default())
                .expect("open replica log");
            let mut bytes = Vec::new();
            let mut offset = 0;
            while offset < *hw {
                let chunk = log.read(offset, 1 << 20).expect("read replica log");
                assert!(!chunk.is_empty(), "node {node} lacks offsets below the HW");
                for batch in rill_protocol::batch::batches(chunk) {
                    let batch = batch.expect("valid batch");
                    if batch.base_offset() as u64 >= *hw {
                        offset = *hw;
                        break;
                    }
                    offset = batch.last_offset() as u64 + 1;
                    bytes.extend_from_slice(batch.as_bytes());
                }
            }
            logs.push(bytes);
        }
        assert!(
            logs.iter().all(|l| *l == logs[0]),
            "partition {partition}: replica logs differ below the high watermark {hw}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_acks_all_production_loses_nothing() {
    let (mut cluster, client, load) = cluster_under_load(300).await;

    let victim = leader_of(&client, 0).await;
    let before = load.count();
    let killed_at = Instant::now();
    cluster.kill(victim);
    eprintln!("killed node {victim}, the leader of partition 0");
    wait_for_new_leader(&client, victim).await;
    load.wait_for(before + 300, "300 more acknowledged records after the kill")
        .await;
    let acked = load.finish().await;
    let first_after = acked
        .iter()
        .filter(|((p, _), (_, at))| *p == 0 && *at > killed_at)
        .map(|(_, (_, at))| *at)
        .min()
        .expect("acknowledgements on partition 0 after the kill");
    eprintln!(
        "failover: first acks=all acknowledgement on partition 0 {:?} after the kill",
        first_after - killed_at
    );

    if std::env::var("RILL_TEST_LOGS").is_ok() {
        for node in 1..=3u32 {
            if let Some(broker) = cluster.brokers[node as usize - 1].as_mut() {
                for line in broker.drain_log() {
                    eprintln!("node {node}: {line}");
                }
            }
        }
    }
    // The killed broker returns, catches up and rejoins the ISR.
    cluster.restart(victim);
    wait_for_isr(&client, 3).await;
    check_acknowledged_and_replicas(&mut cluster, &client, &acked).await;
}

/// Waits until the cluster reports a leader of partition 0 other than `old`; returns it.
async fn wait_for_new_leader(client: &Client, old: u32) -> u32 {
    common::eventually_value(
        Duration::from_secs(30),
        "a new leader for partition 0",
        || async {
            let _ = client.refresh_metadata().await;
            let leader = client.partitions(TOPIC).await.ok()?[0].leader?;
            (leader != old).then_some(leader)
        },
    )
    .await
}

fn dump_logs(cluster: &mut Cluster) {
    if std::env::var("RILL_TEST_LOGS").is_err() {
        return;
    }
    for node in 1..=3u32 {
        if let Some(broker) = cluster.brokers[node as usize - 1].as_mut() {
            for line in broker.drain_log() {
                eprintln!("node {node}: {line}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_and_acknowledges_nothing_after_losing_leadership() {
    let (mut cluster, client, load) = cluster_under_load(300).await;

    let victim = leader_of(&client, 0).await;
    cluster.signal_pause(victim, true);
    eprintln!("paused node {victim}, the leader of partition 0");
    let new_leader = wait_for_new_leader(&client, victim).await;
    load.wait_for_more(300, "300 more acknowledged records on the new leaders")
        .await;
    // The old leader wakes up still believing it leads: whatever it appends now cannot reach
    // the high watermark (the followers left it), and its divergent tail is truncated when it
    // follows the new leader.
    cluster.signal_pause(victim, false);
    eprintln!("resumed node {victim}; node {new_leader} leads partition 0");
    load.wait_for_more(300, "300 more acknowledged records after the resume")
        .await;
    let acked = load.finish().await;
    wait_for_isr(&client, 3).await;
    dump_logs(&mut cluster);
    check_acknowledged_and_replicas(&mut cluster, &client, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_and_rejoins_the_isr() {
    let (mut cluster, client, load) = cluster_under_load(300).await;

    let leader = leader_of(&client, 0).await;
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    cluster.kill(follower);
    eprintln!("killed node {follower}, a follower of partition 0");
    wait_for_isr(&client, 2).await;
    load.wait_for_more(500, "500 more acknowledged records with a follower down")
        .await;
    cluster.restart(follower);
    wait_for_isr(&client, 3).await;
    load.wait_for_more(200, "200 more acknowledged records with the ISR full again")
        .await;
    let acked = load.finish().await;
    check_acknowledged_and_replicas(&mut cluster, &client, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_brokers_down_nothing_is_acknowledged_and_committed_data_returns_with_a_quorum(
) {
    let (mut cluster, client, load) = cluster_under_load(300).await;
    let acked = load.finish().await;

    let survivor = leader_of(&client, 0).await;
    let down: Vec<u32> = (1..=3).filter(|n| *n != survivor).collect();
    for node in &down {
        cluster.kill(*node);
    }
    eprintln!("only node {survivor}, the leader of partition 0, is left");
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            delivery_timeout: Duration::from_secs(4),
            ..ProducerConfig::default()
        },
    );
    // Refused at once while the followers still count as in sync (NOT_ENOUGH_REPLICAS), or
    // once the survivor's lease ran out (it cannot reach a controller quorum: NOT_LEADER until
    // the delivery timeout): never acknowledged.
    let delivery = producer
        .send(Record::new(TOPIC).partition(0).value("after the outage"))
        .await
        .expect("queue the record");
    let error = delivery
        .await
        .expect_err("acks=all cannot succeed with one broker of three left");
    eprintln!("with two brokers down: {error}");
    // Without a quorum no broker holds a lease: the survivor stops leading, loudly.
    cluster
        .broker(survivor)
        .wait_for_line("leadership lease EXPIRED", Duration::from_secs(30));
    // One broker back: a quorum again, and every committed record readable.
    cluster.restart(down[0]);
    let partition_zero: BTreeMap<(u32, u64), (String, Instant)> =
        acked.into_iter().filter(|((p, _), _)| *p == 0).collect();
    verify_acknowledged(&client, &partition_zero).await;
}

/// Review finding #1: a leader cut off from the controller (clients and the other brokers'
/// replication still reach it) used to keep acknowledging acks=1 writes that were lost when it
/// rejoined. With the lease it stops leading before the controller elects another leader, so
/// every acknowledgement survives the heal, and consumers move to the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_controller_stops_leading_and_no_acks_1_write_is_lost() {
    use common::cluster::NETWORK_CONTROLLER_PORT;
    let mut cluster = Cluster::start_in_network(3, &[]);
    let client = cluster.client().await;
    create_rf3_topic(&client).await;
    // The producer and the consumer have clients of their own, which refresh metadata only
    // when a broker tells them to (as an application's would): the test's own refreshes must
    // not move them to the new leader.
    let load = start_load_with(&cluster.client().await, Acks::Leader);
    load.wait_for(300, "300 acknowledged records").await;

    // A consumer of partition 0 that must keep seeing new records through the cut.
    let mut consumer = Consumer::new(cluster.client().await, ConsumerConfig::default());
    consumer.assign([(TOPIC.to_string(), 0)]);
    consumer
        .seek(TOPIC, 0, rill_client::SeekTo::Earliest)
        .await
        .expect("seek");

    let zombie = leader_of(&client, 0).await;
    let cut_at = Instant::now();
    cluster
        .network()
        .cut_port(zombie as usize, NETWORK_CONTROLLER_PORT);
    eprintln!("cut node {zombie}, the leader of partition 0, from the controller port");
    cluster
        .broker(zombie)
        .wait_for_line("leadership lease EXPIRED", Duration::from_secs(30));
    let expired_after = cut_at.elapsed();
    let new_leader = wait_for_new_leader(&client, zombie).await;
    eprintln!(
        "node {zombie} stopped leading {expired_after:?} after the cut; node {new_leader} leads partition 0"
    );
    load.wait_for_more(300, "300 more acknowledged records on the new leader")
        .await;
    // The consumer reaches records written after the cut (it moved to the new leader).
    let target = load.count();
    let mut seen = 0;
    let mut poll = common::Poll::new(Duration::from_secs(60), "the consumer reads past the cut");
    while seen < target / 2 {
        seen += consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
            .len();
        poll.pause().await;
    }

    cluster.network().heal(zombie as usize);
    eprintln!("healed node {zombie}");
    load.wait_for_more(300, "300 more acknowledged records after the heal")
        .await;
    let acked = load.finish().await;
    wait_for_isr(&client, 3).await;
    let zombie_log = cluster.broker(zombie).drain_log().join("\n");
    assert!(
        zombie_log.contains("leadership lease granted"),
        "node {zombie} leads again after re-registering"
    );
    dump_logs(&mut cluster);
    check_acknowledged_and_replicas(&mut cluster, &client, &acked).await;
}

/// The node id of the active controller.
async fn active_controller(admin: &Admin) -> u32 {
    admin
        .describe_cluster()
        .await
        .expect("cluster")
        .into_iter()
        .find(|b| b.is_controller)
        .expect("an active controller")
        .node_id
}

/// Found by CI: openraft restarts a node that was the Raft leader as leader at once, in its old
/// term. A restarted active controller timed its brokers' sessions from that restart; when it
/// then won a new term from a voter that had gone on electing alone, it fenced that live voter
/// at once (its heartbeats had had no controller to go to), moving its leaderships to a broker
/// that was down: the partitions went offline. Sessions now run from the election of the term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_fences_no_live_broker_when_it_wins_a_new_term() {
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    let controller = active_controller(&admin).await;
    let others: Vec<u32> = (1..=3).filter(|n| *n != controller).collect();
    let (survivor, down) = (others[0], others[1]);
    cluster.kill(controller);
    cluster.kill(down);
    eprintln!("killed nodes {controller} (the active controller) and {down}; {survivor} is left");
    // Alone, the survivor loses its lease and keeps calling elections (higher terms).
    cluster
        .broker(survivor)
        .wait_for_line("leadership lease EXPIRED", Duration::from_secs(30));
    cluster.restart(controller);
    // The broker still down is fenced after a full session of the new active controller's;
    // the survivor, which heartbeats, never is.
    let fenced_down = format!("moving its leaderships node_id={down} ");
    let fenced_survivor = format!("moving its leaderships node_id={survivor} ");
    common::eventually(
        Duration::from_secs(60),
        "the broker still down fenced by the active controller",
        || {
            (1..=3).filter(|n| *n != down).any(|n| {
                cluster
                    .broker(n)
                    .drain_log()
                    .iter()
                    .any(|line| line.contains(&fenced_down))
            })
        },
    );
    for node in [controller, survivor] {
        let log = cluster.broker(node).drain_log();
        assert!(
            !log.iter().any(|line| line.contains(&fenced_survivor)),
            "node {node} fenced the live node {survivor}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_controller_elects_another_and_metadata_changes_continue() {
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    let controller = active_controller(&admin).await;
    cluster.kill(controller);
    eprintln!("killed node {controller}, the active controller");
    let new_controller = common::eventually_value(
        Duration::from_secs(30),
        "a new active controller",
        || async {
            let brokers = admin.describe_cluster().await.ok()?;
            brokers
                .iter()
                .find(|b| b.is_controller && b.node_id != controller)
                .map(|b| b.node_id)
        },
    )
    .await;
    eprintln!("node {new_controller} is the active controller");
    // Metadata changes continue: a new topic, replicated on the two survivors.
    let mut topic = NewTopic::new("after-failover", 2);
    topic.replication_factor = 2;
    admin
        .create_topic(topic)
        .await
        .expect("create a topic after the controller failover");
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        },
    );
    let delivery = producer
        .send(Record::new("after-failover").partition(1).value("v"))
        .await
        .expect("queue");
    producer.flush().await;
    assert_eq!(
        delivery.await.expect("acks=all on the new topic").offset,
        Some(0)
    );
    // The killed voter comes back and follows the new controller.
    cluster.restart(controller);
    let admin = Admin::new(cluster.client().await);
    let brokers = admin.describe_cluster().await.expect("cluster");
    assert!(brokers.iter().all(|b| !b.fenced && b.voter), "{brokers:?}");
}

/// Produces `count` records to `topic` with acks=all, values `{tag}-{i}`.
async fn produce_all(client: &Client, topic: &str, count: usize, tag: &str) {
    let records = (0..count)
        .map(|i| {
            Record::new(topic)
                .key(format!("k{i}"))
                .value(format!("{tag}-{i}"))
        })
        .collect();
    common::produce_acked(client, records).await;
}

/// Polls as a group member, committing after every poll (failures during a failover are
/// retried by the next commit), until `seen` holds `target` records; then commits once more.
async fn consume_and_commit(
    consumer: &mut Consumer,
    seen: &mut std::collections::BTreeSet<(u32, u64)>,
    target: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < target {
        assert!(Instant::now() < deadline, "group consumption stalled");
        let records = consumer
            .poll(Duration::from_millis(100))
            .await
            .unwrap_or_default();
        seen.extend(records.iter().map(|r| (r.partition, r.offset)));
        let _ = consumer.commit().await;
    }
    let mut poll = common::Poll::new(Duration::from_secs(30), "a successful commit");
    while consumer.commit().await.is_err() {
        poll.pause().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_keeps_consuming_through_a_coordinator_failover() {
    const GROUP: &str = "failover-group";
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    let mut topic = NewTopic::new("events", 4);
    topic.replication_factor = 3;
    topic
        .configs
        .insert("min.insync.replicas".into(), "2".into());
    admin.create_topic(topic).await.expect("create topic");
    produce_all(&client, "events", 400, "a").await;

    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            fetch_max_wait: Duration::from_millis(100),
            ..ConsumerConfig::default()
        },
    );
    consumer.subscribe(
        rill_client::GroupConfig {
            session_timeout: Duration::from_secs(10),
            auto_commit_interval: None,
            ..rill_client::GroupConfig::new(GROUP)
        },
        &["events"],
    );
    let mut seen: std::collections::BTreeSet<(u32, u64)> = Default::default();
    consume_and_commit(&mut consumer, &mut seen, 200).await;
    let committed = admin.group_offsets(GROUP).await.expect("committed offsets");
    assert!(!committed.is_empty());

    // The coordinator's broker dies; its offsets partition moves to another replica.
    let coordinator = admin.find_coordinator(GROUP).await.expect("coordinator");
    let node = (1..=3u32)
        .find(|n| cluster.address(*n) == coordinator)
        .expect("coordinator is a cluster node");
    cluster.kill(node);
    eprintln!("killed node {node}, the coordinator of {GROUP}");
    let after = common::eventually_value(Duration::from_secs(30), "a new coordinator", || async {
        let offsets = admin.group_offsets(GROUP).await.ok()?;
        let moved = admin
            .find_coordinator(GROUP)
            .await
            .is_ok_and(|c| c != coordinator);
        moved.then_some(offsets)
    })
    .await;
    assert_eq!(
        after, committed,
        "committed offsets survive the coordinator's death"
    );

    // Consumption continues through the failover, new records included.
    produce_all(&client, "events", 400, "b").await;
    consume_and_commit(&mut consumer, &mut seen, 800).await;
    let ends = admin.describe_topic("events").await.expect("describe");
    let committed = admin.group_offsets(GROUP).await.expect("committed offsets");
    for p in ends {
        assert_eq!(
            committed.get(&("events".to_string(), p.partition)).copied(),
            p.latest_offset,
            "partition {} fully consumed and committed",
            p.partition
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_broker_hosts_and_leads_replicas_without_voting() {
    let cluster = Cluster::start_with_observers(3, 1, &[]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    let brokers = admin.describe_cluster().await.expect("cluster");
    assert_eq!(brokers.len(), 4);
    let observer = brokers.iter().find(|b| b.node_id == 4).expect("node 4");
    assert!(!observer.voter && !observer.fenced, "{observer:?}");
    let mut topic = NewTopic::new("spread", 4);
    topic.replication_factor = 2;
    admin.create_topic(topic).await.expect("create topic");
    let partitions = admin.describe_topic("spread").await.expect("describe");
    assert!(
        partitions.iter().any(|p| p.leader == Some(4)),
        "the observer leads some partitions: {partitions:?}"
    );
    produce_all(&client, "spread", 200, "o").await;
    common::eventually_async(Duration::from_secs(30), "every record committed", || {
        let admin = admin.clone();
        async move {
            admin
                .describe_topic("spread")
                .await
                .is_ok_and(|p| p.iter().map(|p| p.latest_offset.unwrap_or(0)).sum::<u64>() == 200)
        }
    })
    .await;
}

/// Measurement, not a check: failover time (leader SIGKILLed -> first acks=all acknowledgement
/// of a record on the new leader) over ten kills. Run with
/// `cargo test --release -p rill --test e2e_replication failover_time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn failover_time_over_ten_leader_kills() {
    let (mut cluster, client, load) = cluster_under_load(200).await;
    let mut times = Vec::new();
    for round in 0..10 {
        let victim = leader_of(&client, 0).await;
        let killed_at = Instant::now();
        cluster.kill(victim);
        let acked = load.acked.clone();
        common::eventually_async(
            Duration::from_secs(60),
            "an acknowledgement after the kill",
            || {
                let acked = acked.clone();
                async move {
                    acked
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|((p, _), (_, at))| *p == 0 && *at > killed_at)
                }
            },
        )
        .await;
        let first = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|((p, _), (_, at))| *p == 0 && *at > killed_at)
            .map(|(_, (_, at))| *at)
            .min()
            .expect("an acknowledgement after the kill");
        let took = first - killed_at;
        eprintln!("round {round}: killed node {victim}, failover {took:?}");
        times.push(took);
        cluster.restart(victim);
        wait_for_isr(&client, 3).await;
    }
    let acked = load.finish().await;
    verify_acknowledged(&client, &acked).await;
    times.sort();
    eprintln!(
        "failover over {} kills: median {:?}, max {:?} (heartbeat {} ms, session timeout {} ms)",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        common::cluster::HEARTBEAT_MS,
        common::cluster::SESSION_TIMEOUT_MS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_start_in_any_order_and_clients_get_a_retriable_error_meanwhile() {
    let mut cluster = Cluster::prepare(3, 0, &[]);
    cluster.start_node(3);
    cluster.start_node(2);
    // The quorum cannot form yet (a pristine quorum is initialized by its lowest voter id).
    let mut config = rill_client::ClientConfig::new(&cluster.address(3));
    config.retry_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let error = match Client::connect(config).await {
        Ok(_) => panic!("no cluster yet, but the client connected"),
        Err(e) => e,
    };
    assert!(error.is_retriable(), "{error}");
    assert!(error.to_string().contains("CLUSTER_NOT_READY"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "no hang");
    cluster.start_node(1);
    let client = cluster.client().await;
    let brokers = Admin::new(client)
        .describe_cluster()
        .await
        .expect("cluster");
    assert_eq!(brokers.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_returns_to_the_preferred_replica_automatically() {
    let mut cluster = Cluster::start(3, &["--leader-rebalance-interval-ms", "500"]);
    let client = cluster.client().await;
    create_replicated_topic(&client).await;
    let preferred = client.partitions(TOPIC).await.expect("partitions")[0].replicas[0];
    assert_eq!(leader_of(&client, 0).await, preferred);
    cluster.kill(preferred);
    let interim = wait_for_new_leader(&client, preferred).await;
    eprintln!("node {interim} leads partition 0 while node {preferred} is down");
    cluster.restart(preferred);
    wait_for_isr(&client, 3).await;
    common::eventually_async(
        Duration::from_secs(30),
        "the preferred replica leads again",
        || {
            let client = client.clone();
            async move {
                let _ = client.refresh_metadata().await;
                client
                    .partitions(TOPIC)
                    .await
                    .is_ok_and(|p| p[0].leader == Some(preferred))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_its_disk_rejoins_the_quorum_and_re_replicates_its_partitions() {
    let (mut cluster, _, load) = cluster_under_load(500).await;
    let acked = load.finish().await;
    // Node 1 initialized the quorum; it comes back with an empty data directory.
    cluster.kill(1);
    cluster.wipe(1);
    cluster.restart(1);
    let client = cluster.client().await;
    wait_for_isr(&client, 3).await;
    let admin = Admin::new(client.clone());
    let brokers = admin.describe_cluster().await.expect("cluster");
    assert!(brokers.iter().all(|b| b.voter && !b.fenced), "{brokers:?}");
    check_acknowledged_and_replicas(&mut cluster, &client, &acked).await;
}

/// The partition of `topic` whose replicas are exactly `replicas` (in order).
async fn partition_on(client: &Client, topic: &str, replicas: &[u32]) -> u32 {
    client.refresh_metadata().await.expect("metadata");
    client
        .partitions(topic)
        .await
        .expect("partitions")
        .iter()
        .find(|p| p.replicas == replicas)
        .map(|p| p.partition)
        .expect("a partition on those replicas")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclean_leader_election_only_where_the_topic_allows_it_and_loudly() {
    // Voters 1-3 keep the quorum; the partitions under test live on observers 4 and 5.
    let mut cluster = Cluster::start_with_observers(3, 2, &[]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    for (name, unclean) in [("clean-t", false), ("unclean-t", true)] {
        // Five partitions of RF 2 over five brokers: exactly one sits on [4, 5].
        let mut topic = NewTopic::new(name, 5);
        topic.replication_factor = 2;
        if unclean {
            topic
                .configs
                .insert("unclean.leader.election.enable".into(), "true".into());
        }
        admin.create_topic(topic).await.expect("create topic");
    }
    let clean = partition_on(&client, "clean-t", &[4, 5]).await;
    let unclean = partition_on(&client, "unclean-t", &[4, 5]).await;
    // The two partitions as some broker reports them (a broker's view may lag: `None`).
    let state = |client: Client| async move {
        let _ = client.refresh_metadata().await;
        let c = client.partitions("clean-t").await.ok()?[clean as usize].clone();
        let u = client.partitions("unclean-t").await.ok()?[unclean as usize].clone();
        Some((c, u))
    };
    // The follower dies: both ISRs shrink to the leader, which takes more writes alone.
    cluster.kill(5);
    common::eventually_async(Duration::from_secs(30), "ISRs shrunk to [4]", || {
        let client = client.clone();
        async move {
            state(client)
                .await
                .is_some_and(|(c, u)| c.isr == [4] && u.isr == [4])
        }
    })
    .await;
    // The last in-sync replica dies too: both partitions go offline.
    cluster.kill(4);
    common::eventually_async(Duration::from_secs(30), "both partitions offline", || {
        let client = client.clone();
        async move {
            state(client)
                .await
                .is_some_and(|(c, u)| c.leader.is_none() && u.leader.is_none())
        }
    })
    .await;
    // The out-of-sync replica returns: only the topic that allows it elects it.
    cluster.restart(5);
    let (c, u) = common::eventually_value(
        Duration::from_secs(30),
        "unclean election of node 5",
        || {
            let client = client.clone();
            async move { state(client).await.filter(|(_, u)| u.leader == Some(5)) }
        },
    )
    .await;
    assert_eq!(c.leader, None, "clean-t stays offline: {c:?}");
    assert_eq!(u.isr, vec![5], "{u:?}");
    let logged = cluster
        .broker(1)
        .wait_for_line("UNCLEAN leader election", Duration::from_secs(10));
    assert!(logged.contains("ERROR"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_restart_keeps_every_acknowledged_record() {
    let (mut cluster, _, load) = cluster_under_load(500).await;
    let acked = load.finish().await;
    // SIGTERM one after the other (controlled shutdown while a quorum is left), then start all.
    for node in 1..=3u32 {
        assert!(
            cluster.broker(node).terminate(),
            "node {node} stops cleanly"
        );
        cluster.brokers[node as usize - 1] = None;
    }
    for node in [3, 1, 2] {
        cluster.start_node(node);
    }
    let client = cluster.client().await;
    wait_for_isr(&client, 3).await;
    check_acknowledged_and_replicas(&mut cluster, &client, &acked).await;
}

/// Review finding #7: a group member whose heartbeats stop reaching the coordinator used to
/// keep consuming its partitions after the coordinator had expired it and given them to
/// another member. Now it releases them (as lost) before its session runs out, so a partition
/// is never consumed by two members at once. Member B is this test process, cut from the
/// coordinator's broker only (it still reaches the data leaders); member A is the `rill` CLI in
/// a namespace of its own that still reaches everything.
/// The node id of `group`'s coordinator.
async fn coordinator_node(cluster: &Cluster, admin: &Admin, group: &str) -> u32 {
    let address = common::eventually_value(
        Duration::from_secs(30),
        "the group's coordinator",
        || async { admin.find_coordinator(group).await.ok() },
    )
    .await;
    (1..=3u32)
        .find(|n| cluster.address(*n) == address)
        .expect("the coordinator is a broker of the cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_its_coordinator_releases_its_partitions_before_others_get_them() {
    use common::cluster::NETWORK_CLIENT_PORT;
    const SHARED: &str = "shared";
    const GROUP: &str = "cut-group";
    if let Ok(filter) = std::env::var("RILL_TEST_CLIENT_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let cluster = Cluster::start_in_network(3, &[]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new(SHARED, 6))
        .await
        .expect("create the topic");
    let coordinator = coordinator_node(&cluster, &admin, GROUP).await;
    // Data on the other brokers only, so the cut member still reaches every record it consumes.
    client.refresh_metadata().await.expect("metadata");
    let data: Vec<u32> = client
        .partitions(SHARED)
        .await
        .expect("partitions")
        .iter()
        .filter(|p| p.leader.is_some_and(|l| l != coordinator))
        .map(|p| p.partition)
        .collect();
    assert!(
        !data.is_empty(),
        "some partitions led away from the coordinator"
    );
    eprintln!("coordinator: node {coordinator}; data partitions {data:?}");

    // A steady producer on the data partitions.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let (producer, stop, data) = (
            Producer::new(cluster.client().await, ProducerConfig::default()),
            stop.clone(),
            data.clone(),
        );
        tokio::spawn(async move {
            // A steady rate, 10 records per 5 ms tick.
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let partition = data[(i % data.len() as u64) as usize];
                let _ = producer
                    .send(
                        Record::new(SHARED)
                            .partition(partition)
                            .value(format!("v{i}")),
                    )
                    .await;
                i += 1;
                if i.is_multiple_of(10) {
                    pace.tick().await;
                }
            }
            producer.flush().await;
        })
    };

    // Member B: (partition, when consumed) of every record.
    let b_seen: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let member_b = {
        let mut consumer = Consumer::new(cluster.client().await, ConsumerConfig::default());
        let mut config = rill_client::GroupConfig::new(GROUP);
        config.session_timeout = Duration::from_secs(3);
        config.auto_commit_interval = Some(Duration::from_millis(200));
        consumer.subscribe(config, &[SHARED]);
        let (seen, stop) = (b_seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(records) = consumer.poll(Duration::from_millis(100)).await {
                    let now = Instant::now();
                    seen.lock()
                        .unwrap()
                        .extend(records.iter().map(|r| (r.partition, now)));
                }
            }
        })
    };
    let seen = b_seen.clone();
    common::eventually(Duration::from_secs(60), "member B consumes", || {
        !seen.lock().unwrap().is_empty()
    });

    // Member A: the CLI in the client namespace; (partition, when its line arrived).
    let mut a_process = {
        let prefix = cluster.client_namespace();
        let mut command = std::process::Command::new(&prefix[0]);
        command
            .args(&prefix[1..])
            .arg(common::cli_binary())
            .args(["--brokers", &cluster.bootstrap(), "consume", SHARED])
            .args(["--group", GROUP, "--format", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        command.spawn().expect("start the rill CLI as member A")
    };
    let a_seen: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    {
        use std::io::BufRead;
        let stdout = a_process.stdout.take().expect("stdout");
        let seen = a_seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let now = Instant::now();
                if let Some(partition) = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["partition"].as_u64())
                {
                    seen.lock().unwrap().push((partition as u32, now));
                }
            }
        });
    }
    let seen = a_seen.clone();
    common::eventually(Duration::from_secs(60), "member A gets partitions", || {
        !seen.lock().unwrap().is_empty()
    });

    let cut_at = Instant::now();
    cluster
        .network()
        .cut_host(coordinator as usize, NETWORK_CLIENT_PORT);
    eprintln!("cut the test process (member B) from node {coordinator}'s client port");
    let seen = a_seen.clone();
    let data_partitions = data.clone();
    common::eventually(
        Duration::from_secs(60),
        "member A consumes every data partition after the cut",
        || {
            let seen = seen.lock().unwrap();
            data_partitions.iter().all(|p| {
                seen.iter()
                    .any(|(partition, at)| partition == p && *at > cut_at)
            })
        },
    );
    // Let both run a little longer: B must not take anything back.
    let settle = Instant::now() + Duration::from_secs(2);
    let mut poll = common::Poll::new(Duration::from_secs(10), "two more seconds of consumption");
    while Instant::now() < settle {
        poll.pause().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = a_process.kill();
    let _ = a_process.wait();
    let _ = tokio::time::timeout(Duration::from_secs(30), member_b).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), producing).await;

    let (a_seen, b_seen) = (a_seen.lock().unwrap(), b_seen.lock().unwrap());
    for p in &data {
        // A's first record of p after the cut: from then on, p is A's.
        let Some(a_first) = a_seen
            .iter()
            .filter(|(partition, at)| partition == p && *at > cut_at)
            .map(|(_, at)| *at)
            .min()
        else {
            continue;
        };
        let b_after = b_seen
            .iter()
            .filter(|(partition, at)| partition == p && *at >= a_first)
            .count();
        assert_eq!(
            b_after,
            0,
            "partition {p}: member B consumed {b_after} records after member A took it over ({:?} after the cut)",
            a_first - cut_at
        );
    }
}

/// Review #14: controlled shutdown stopped serving before fencing itself, so acks=1 records
/// still on their way to the followers at SIGTERM were lost. Now the leader stops
/// acknowledging, lets the followers catch up, hands leadership over, and only then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_leader_under_acks_1_load_loses_no_acknowledged_record() {
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client().await;
    create_rf3_topic(&client).await;
    let load = start_load_with(&cluster.client().await, Acks::Leader);
    load.wait_for(500, "500 acknowledged records").await;
    let leader = leader_of(&client, 0).await;
    assert!(
        cluster.broker(leader).terminate(),
        "node {leader} exits cleanly on SIGTERM"
    );
    cluster.brokers[leader as usize - 1] = None;
    wait_for_new_leader(&client, leader).await;
    load.wait_for_more(300, "300 more acknowledged records after the SIGTERM")
        .await;
    let acked = load.finish().await;
    cluster.start_node(leader);
    wait_for_isr(&client, 3).await;
    check_acknowledged_and_replicas(&mut cluster, &client, &acked).await;
}

/// Review #8: heartbeats shared the controller connection with proposals, so a burst of ISR
/// expansions (hundreds of partitions whose follower returns at once) could hold a broker's
/// heartbeats past its session timeout and fence it, in waves. Heartbeats have their own
/// connection now: no broker is fenced while 300 partitions take their follower back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_isr_expansions_at_once_fence_no_broker() {
    const MANY: &str = "many";
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client().await;
    let mut topic = NewTopic::new(MANY, 300);
    topic.replication_factor = 3;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(topic)
        .await
        .expect("create 300 partitions");
    let full_isr = |size: usize| {
        let admin = admin.clone();
        async move {
            admin
                .describe_topic(MANY)
                .await
                .is_ok_and(|ps| ps.len() == 300 && ps.iter().all(|p| p.isr.len() == size))
        }
    };
    common::eventually_async(
        Duration::from_secs(60),
        "300 partitions with 3 in sync",
        || full_isr(3),
    )
    .await;
    // Node 3 goes away long enough to leave every ISR, then returns: its 300 replicas catch up
    // at once and the leaders propose 300 ISR expansions together.
    cluster.kill(3);
    common::eventually_async(Duration::from_secs(60), "node 3 out of every ISR", || {
        full_isr(2)
    })
    .await;
    let fenced_before: Vec<usize> = (1..=2u32)
        .map(|n| {
            cluster
                .broker(n)
                .drain_log()
                .iter()
                .filter(|l| l.contains("fencing broker"))
                .count()
        })
        .collect();
    cluster.restart(3);
    common::eventually_async(Duration::from_secs(90), "node 3 back in every ISR", || {
        full_isr(3)
    })
    .await;
    for (i, n) in (1..=3u32).enumerate() {
        let fences: Vec<String> = cluster
            .broker(n)
            .drain_log()
            .iter()
            .filter(|l| l.contains("fencing broker"))
            .skip(fenced_before.get(i).copied().unwrap_or(0))
            .cloned()
            .collect();
        assert!(
            fences.is_empty(),
            "node {n} fenced brokers while the ISRs expanded: {fences:?}"
        );
    }
}

/// Review #2: a broker that missed a topic's deletion (down while it was deleted and created
/// again) picked its old log up as the new topic's: as a follower it kept the old records below
/// the new leader's end (replicas differ), as a leader it would serve them. Topic ids tell the
/// incarnations apart: the old log is deleted and the replica starts empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_missed_a_topic_deletion_never_serves_the_old_topic_log() {
    // A long session: node 3 stays registered (and gets replicas of the new topic) while down.
    let mut cluster = Cluster::start(3, &["--broker-session-timeout-ms", "60000"]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    let create = || {
        let mut topic = NewTopic::new(TOPIC, PARTITIONS);
        topic.replication_factor = 3;
        topic
    };
    admin
        .create_topic(create())
        .await
        .expect("create the topic");
    wait_for_isr(&client, 3).await;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        },
    );
    for i in 0..100 {
        for partition in 0..PARTITIONS {
            producer
                .send(
                    Record::new(TOPIC)
                        .partition(partition)
                        .value(format!("old-{i}")),
                )
                .await
                .expect("queue");
        }
    }
    producer.flush().await;
    wait_for_isr(&client, 3).await;
    cluster.kill(3);
    admin.delete_topic(TOPIC).await.expect("delete the topic");
    admin.create_topic(create()).await.expect("create it again");
    // New records on the partitions not led by the (down) node 3.
    client.refresh_metadata().await.expect("metadata");
    let partitions = client.partitions(TOPIC).await.expect("partitions");
    let writable: Vec<u32> = partitions
        .iter()
        .filter(|p| p.leader.is_some_and(|l| l != 3))
        .map(|p| p.partition)
        .collect();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    for i in 0..10 {
        for partition in &writable {
            producer
                .send(
                    Record::new(TOPIC)
                        .partition(*partition)
                        .value(format!("new-{i}")),
                )
                .await
                .expect("queue");
        }
    }
    producer.flush().await;
    cluster.restart(3);
    wait_for_isr(&client, 3).await;
    cluster.broker(3).wait_for_line(
        "belongs to an earlier topic of this name",
        Duration::from_secs(30),
    );
    // Every replica holds the new topic's records only, identical below the HW.
    let hws = high_watermarks(&client).await;
    let below_hws = hws
        .iter()
        .enumerate()
        .flat_map(|(p, hw)| (0..*hw).map(move |o| (p as u32, o)));
    let stored = common::read_positions(&client, TOPIC, None, below_hws).await;
    for (position, value) in &stored {
        assert!(
            value.starts_with("new-"),
            "the old topic's record {value:?} came back at {position:?}"
        );
    }
    assert_replicas_identical(&mut cluster, &hws);
}

/// Found by the fault suite (seed 2009): a heartbeat answered with an assignment whose
/// membership snapshot was not replicated yet, so a coordinator failover could forget it and
/// give the same partitions to a second member. Now a member hears of an assignment only once
/// the snapshot is on every in-sync replica: with the coordinator's followers unable to fetch
/// (their replication port cut; the controller port still works, so nobody is fenced), a new
/// member gets nothing until they fetch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_hears_of_an_assignment_only_once_the_membership_is_replicated() {
    use common::cluster::NETWORK_REPLICATION_PORT;
    const GROUP: &str = "replicated-membership";
    let cluster = Cluster::start_in_network(3, &[]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new("work", 2))
        .await
        .expect("create the topic");
    let coordinator = coordinator_node(&cluster, &admin, GROUP).await;
    let followers: Vec<u32> = (1..=3).filter(|n| *n != coordinator).collect();
    for node in &followers {
        cluster
            .network()
            .cut_port(*node as usize, NETWORK_REPLICATION_PORT);
    }
    let mut consumer = Consumer::new(cluster.client().await, ConsumerConfig::default());
    let mut config = rill_client::GroupConfig::new(GROUP);
    config.session_timeout = Duration::from_secs(10);
    consumer.subscribe(config, &["work"]);
    // Well within the replica lag limit (4 s): the followers are still in the ISR, so the
    // snapshot cannot be on all of them.
    let cut_at = Instant::now();
    while cut_at.elapsed() < Duration::from_millis(2500) {
        let _ = consumer.poll(Duration::from_millis(100)).await;
        assert!(
            consumer.assignment().is_empty(),
            "assigned {:?} {:?} after the cut, before the membership could be replicated",
            consumer.assignment(),
            cut_at.elapsed()
        );
    }
    for node in &followers {
        cluster.network().heal(*node as usize);
    }
    let mut poll = common::Poll::new(
        Duration::from_secs(60),
        "an assignment once the followers fetch again",
    );
    while consumer.assignment().is_empty() {
        let _ = consumer.poll(Duration::from_millis(100)).await;
        poll.pause().await;
    }
}

/// A follower whose first fetch of a new topic reaches the leader before the leader created
/// the partition backs off (100 ms), and is fetched again then: not after the long poll its
/// other partitions' fetch is waiting out. With a 5 s long poll, every topic's first
/// `acks=all` record must be acknowledged well within it (it waited the whole poll before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_acks_all_record_of_a_new_topic_does_not_wait_out_a_follower_long_poll() {
    let cluster = Cluster::start(3, &["--replica-fetch-wait-max-ms", "5000"]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        },
    );
    for i in 0..4 {
        let name = format!("fresh-{i}");
        let mut topic = NewTopic::new(&name, 1);
        topic.replication_factor = 3;
        admin.create_topic(topic).await.expect("create topic");
        let started = Instant::now();
        let delivery = producer
            .send(Record::new(&name).value("first"))
            .await
            .expect("send");
        delivery.await.expect("acknowledged");
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(2_500),
            "{name}: the first acks=all record took {took:?} (a 5 s follower long poll held it)"
        );
    }
}

/// A follower's fetch returns at least one whole batch, however small its byte limit: batches
/// of about 200 KiB reach every replica through fetches capped at 64 KiB, and the replicas'
/// logs end up identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_larger_than_a_follower_fetch_still_replicate() {
    let mut cluster = Cluster::start(3, &["--replica-fetch-max-bytes", "65536"]);
    let client = cluster.client().await;
    create_replicated_topic(&client).await;
    let value = "x".repeat(200 << 10);
    let records = (0..12u32)
        .map(|i| {
            Record::new(TOPIC)
                .partition(i % PARTITIONS)
                .value(format!("{i}-{value}"))
        })
        .collect();
    common::produce_acked(&client, records).await;
    wait_for_isr(&client, 3).await;
    let hws = high_watermarks(&client).await;
    assert_eq!(
        hws.iter().sum::<u64>(),
        12,
        "every record is below a high watermark"
    );
    assert_replicas_identical(&mut cluster, &hws);
}
