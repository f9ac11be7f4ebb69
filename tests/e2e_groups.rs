//! Consumer groups against a real broker: three members share a 12-partition topic and consume
//! every record exactly once with synchronous commits; a member that dies without leaving loses
//! its partitions after the session timeout and nothing is skipped; committed offsets survive a
//! broker restart; an offset reset is refused while members are active; an empty group expires
//! after `offsets_retention_ms`, a live one does not.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, BrokerProcess};
use rill_client::{
    Admin, Client, Consumer, ConsumerConfig, GroupConfig, NewTopic, Producer, ProducerConfig,
    Record,
};

async fn produce(client: &Client, topic: &str, count: usize, tag: &str) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..count {
        deliveries.push(
            producer
                .send(
                    Record::new(topic)
                        .key(format!("k{i}"))
                        .value(format!("{tag}-{i}")),
                )
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    for d in deliveries {
        d.await.unwrap();
    }
}

fn group(id: &str) -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_secs(2),
        auto_commit_interval: None,
        ..GroupConfig::new(id)
    }
}

type Seen = Arc<Mutex<Vec<(u32, u64, String)>>>;

/// Consumes as a group member, committing after every poll, until `stop` says so.
async fn member(
    client: Client,
    group_id: &str,
    topic: &str,
    seen: Seen,
    stop: impl Fn(usize) -> bool,
) -> Consumer {
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            fetch_max_wait: Duration::from_millis(200),
            ..ConsumerConfig::default()
        },
    );
    consumer.subscribe(group(group_id), &[topic]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if stop(seen.lock().unwrap().len()) {
            return consumer;
        }
        assert!(
            Instant::now() < deadline,
            "group consumption did not finish"
        );
        let records = consumer.poll(Duration::from_millis(200)).await.unwrap();
        {
            let mut seen = seen.lock().unwrap();
            seen.extend(records.iter().map(|r| {
                (
                    r.partition,
                    r.offset,
                    String::from_utf8_lossy(r.value.as_ref().unwrap()).into_owned(),
                )
            }));
        }
        if !records.is_empty() {
            consumer.commit().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_consume_every_record_exactly_once() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("jobs", 12))
        .await
        .unwrap();
    produce(&client, "jobs", 1200, "a").await;

    let seen: Seen = Arc::default();
    let members: Vec<_> = (0..3)
        .map(|_| {
            let (client, seen) = (client.clone(), seen.clone());
            tokio::spawn(
                async move { member(client, "workers", "jobs", seen, |n| n >= 1200).await },
            )
        })
        .collect();
    let mut consumers = Vec::new();
    for m in members {
        consumers.push(m.await.unwrap());
    }
    let seen = seen.lock().unwrap().clone();
    let unique: BTreeSet<(u32, u64)> = seen.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(unique.len(), 1200, "every record consumed");
    assert_eq!(
        seen.len(),
        1200,
        "no record consumed twice (synchronous commits, no crash)"
    );

    // Members hand partitions over only while they poll: keep polling until the group settles.
    let admin = Admin::new(client.clone());
    let settle_deadline = Instant::now() + Duration::from_secs(30);
    let description = loop {
        for consumer in consumers.iter_mut() {
            assert!(
                consumer
                    .poll(Duration::from_millis(50))
                    .await
                    .unwrap()
                    .is_empty(),
                "nothing left to consume"
            );
        }
        let description = admin.describe_group("workers").await.unwrap();
        if description.state == "Stable" {
            break description;
        }
        assert!(
            Instant::now() < settle_deadline,
            "the group never settled: {description:?}"
        );
    };
    assert_eq!(description.members.len(), 3);
    let owned: Vec<(String, u32)> = description
        .members
        .iter()
        .flat_map(|m| m.partitions.clone())
        .collect();
    assert_eq!(owned.len(), 12);
    assert_eq!(
        owned.iter().collect::<BTreeSet<_>>().len(),
        12,
        "each partition owned by exactly one member"
    );
    assert!(
        description.members.iter().all(|m| m.partitions.len() == 4),
        "balanced: {description:?}"
    );

    // An offset reset needs an empty group.
    let reset = BTreeMap::from([(("jobs".to_string(), 0), 0)]);
    let refused = Admin::new(client.clone())
        .reset_group_offsets("workers", &reset)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("NON_EMPTY_GROUP"), "{refused}");
    for consumer in consumers {
        consumer.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_loses_its_partitions_and_offsets_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.address.clone();
    let client = client(&address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("tasks", 6))
        .await
        .unwrap();

    // Two members settle on 3 partitions each before any record exists.
    let admin = Admin::new(client.clone());
    let config = ConsumerConfig {
        fetch_max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut survivor = Consumer::new(client.clone(), config.clone());
    let mut victim = Consumer::new(client.clone(), config);
    survivor.subscribe(group("crew"), &["tasks"]);
    victim.subscribe(group("crew"), &["tasks"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        survivor.poll(Duration::from_millis(50)).await.unwrap();
        victim.poll(Duration::from_millis(50)).await.unwrap();
        let d = admin.describe_group("crew").await.unwrap();
        if d.state == "Stable"
            && d.members.len() == 2
            && d.members.iter().all(|m| m.partitions.len() == 3)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the group never settled: {d:?}");
    }
    produce(&client, "tasks", 300, "first").await;

    // The victim processes only the first 10 records it gets, commits exactly those, and
    // vanishes without leaving (as if it crashed mid-batch).
    let mut seen: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    let mut victim_partitions = BTreeSet::new();
    let mut processed: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processed.is_empty() {
        assert!(Instant::now() < deadline, "the victim got no records");
        for r in victim
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .into_iter()
            .take(10)
        {
            victim_partitions.insert(r.partition);
            *seen.entry((r.partition, r.offset)).or_default() += 1;
            processed.insert((r.topic.to_string(), r.partition), r.offset + 1);
        }
    }
    victim.commit_offsets(processed).await.unwrap();
    drop(victim);
    let died = Instant::now();

    // The survivor gets the victim's partitions after the session timeout and resumes from its commits.
    let mut takeover = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 300 {
        assert!(
            Instant::now() < deadline,
            "only {} of 300 records consumed",
            seen.len()
        );
        for r in survivor.poll(Duration::from_millis(200)).await.unwrap() {
            if victim_partitions.contains(&r.partition) && takeover.is_none() {
                takeover = Some(died.elapsed());
            }
            *seen.entry((r.partition, r.offset)).or_default() += 1;
        }
        survivor.commit().await.unwrap();
    }
    let takeover = takeover.expect("the survivor consumed the dead member's partitions");
    eprintln!("rebalance latency (member death -> its partitions consumed again), session timeout 2 s: {takeover:?}");
    assert!(
        takeover >= Duration::from_millis(1500),
        "partitions moved only after the session timeout: {takeover:?}"
    );
    assert_eq!(seen.len(), 300, "nothing skipped");
    survivor.close().await.unwrap();

    let committed = Admin::new(client.clone())
        .group_offsets("crew")
        .await
        .unwrap();
    assert_eq!(
        committed.values().sum::<u64>(),
        300,
        "every partition committed to its end"
    );

    assert!(broker.terminate());
    drop(broker);
    let broker = BrokerProcess::start_on(data.path(), &address, &[]);
    let client = common::client(&broker.address).await;
    assert_eq!(
        Admin::new(client.clone())
            .group_offsets("crew")
            .await
            .unwrap(),
        committed,
        "committed offsets survive a restart"
    );

    // A new member resumes from the commits: it sees only records produced after them.
    produce(&client, "tasks", 30, "second").await;
    let seen: Seen = Arc::default();
    let consumer = member(client.clone(), "crew", "tasks", seen.clone(), |n| n >= 30).await;
    assert_eq!(seen.lock().unwrap().len(), 30);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|(_, _, v)| v.starts_with("second")),
        "resumed at the committed offsets"
    );
    consumer.close().await.unwrap();

    // With no members left, offsets can be reset and the group deleted.
    let admin = Admin::new(client);
    admin
        .reset_group_offsets("crew", &BTreeMap::from([(("tasks".to_string(), 0), 0)]))
        .await
        .unwrap();
    assert_eq!(
        admin.group_offsets("crew").await.unwrap()[&("tasks".to_string(), 0)],
        0
    );
    admin.delete_group("crew").await.unwrap();
    assert!(admin.group_offsets("crew").await.unwrap().is_empty());
}

/// Stable, with `members` members sharing the 12 partitions evenly.
fn settled(d: &rill_client::admin::GroupDescription, members: usize) -> bool {
    d.state == "Stable"
        && d.members.len() == members
        && d.members.iter().all(|m| m.partitions.len() == 12 / members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_mid_stream_takes_only_the_partitions_that_move() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let client = client(&broker.address).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new("stream", 12))
        .await
        .unwrap();
    let config = ConsumerConfig {
        fetch_max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    };
    let mut members: Vec<Consumer> = (0..2)
        .map(|_| Consumer::new(client.clone(), config.clone()))
        .collect();
    for m in members.iter_mut() {
        m.subscribe(group("flow"), &["stream"]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for m in members.iter_mut() {
            m.poll(Duration::from_millis(20)).await.unwrap();
        }
        if settled(&admin.describe_group("flow").await.unwrap(), 2) {
            break;
        }
        assert!(Instant::now() < deadline, "two members never settled");
    }
    // describe shows what the coordinator told each member; a consumer applies it on its next
    // poll, so poll once more before draining the events of the first phase.
    for m in members.iter_mut() {
        m.poll(Duration::from_millis(20)).await.unwrap();
        m.take_events();
    }

    let mut newcomer = Consumer::new(client.clone(), config);
    newcomer.subscribe(group("flow"), &["stream"]);
    members.push(newcomer);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for m in members.iter_mut() {
            m.poll(Duration::from_millis(20)).await.unwrap();
        }
        if settled(&admin.describe_group("flow").await.unwrap(), 3) {
            break;
        }
        assert!(Instant::now() < deadline, "three members never settled");
    }
    for m in members.iter_mut() {
        m.poll(Duration::from_millis(20)).await.unwrap();
    }
    let mut revoked = 0;
    for m in members.iter_mut().take(2) {
        for event in m.take_events() {
            match event {
                rill_client::RebalanceEvent::Revoked(partitions) => revoked += partitions.len(),
                rill_client::RebalanceEvent::Assigned(partitions) => {
                    panic!("an existing member gained {partitions:?}")
                }
            }
        }
    }
    assert_eq!(
        revoked, 4,
        "exactly the newcomer's 4 partitions were revoked from the others (cooperative, sticky)"
    );
    for m in members {
        m.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_static_member_gets_its_partitions_back_and_an_idle_member_leaves() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let client = client(&broker.address).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new("static", 12))
        .await
        .unwrap();
    let config = ConsumerConfig {
        fetch_max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    };
    let static_group = |instance: &str| GroupConfig {
        instance_id: Some(instance.into()),
        session_timeout: Duration::from_secs(30),
        ..group("fixed")
    };
    let mut a = Consumer::new(client.clone(), config.clone());
    let mut b = Consumer::new(client.clone(), config.clone());
    a.subscribe(static_group("host-a"), &["static"]);
    b.subscribe(static_group("host-b"), &["static"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        a.poll(Duration::from_millis(20)).await.unwrap();
        b.poll(Duration::from_millis(20)).await.unwrap();
        let d = admin.describe_group("fixed").await.unwrap();
        if d.state == "Stable"
            && d.members.len() == 2
            && d.members.iter().all(|m| m.partitions.len() == 6)
        {
            break d;
        }
        assert!(Instant::now() < deadline, "never settled");
    };
    let a_partitions: Vec<(String, u32)> = before
        .members
        .iter()
        .find(|m| m.instance_id.as_deref() == Some("host-a"))
        .unwrap()
        .partitions
        .clone();

    // "host-a" restarts (a new consumer, same instance id) well within its 30 s session.
    drop(a);
    let mut a = Consumer::new(client.clone(), config.clone());
    a.subscribe(static_group("host-a"), &["static"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        a.poll(Duration::from_millis(20)).await.unwrap();
        b.poll(Duration::from_millis(20)).await.unwrap();
        let d = admin.describe_group("fixed").await.unwrap();
        let restarted = d
            .members
            .iter()
            .find(|m| m.instance_id.as_deref() == Some("host-a"));
        if d.state == "Stable" && restarted.is_some_and(|m| !m.partitions.is_empty()) {
            assert_eq!(d.group_epoch, before.group_epoch, "no rebalance");
            assert_eq!(
                restarted.unwrap().partitions,
                a_partitions,
                "the same partitions"
            );
            assert_eq!(d.members.len(), 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the static member never came back: {d:?}"
        );
    }

    // A member that stops polling for longer than max_poll_interval leaves by itself.
    let idle_config = GroupConfig {
        max_poll_interval: Duration::from_millis(500),
        ..group("idle")
    };
    let mut idle = Consumer::new(client.clone(), config);
    idle.subscribe(idle_config, &["static"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin
        .describe_group("idle")
        .await
        .map(|d| d.members.len())
        .unwrap_or(0)
        == 0
    {
        idle.poll(Duration::from_millis(20)).await.unwrap();
        assert!(Instant::now() < deadline, "the member never joined");
    }
    common::eventually_async(Duration::from_secs(30), "the idle member to leave", || {
        let admin = admin.clone();
        async move {
            // Once its only member left, a group without offsets no longer exists (GROUP_ID_NOT_FOUND).
            admin
                .describe_group("idle")
                .await
                .map(|d| d.members.is_empty())
                .unwrap_or(true)
        }
    })
    .await;
    drop(idle);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_carry_on_without_a_rebalance_when_the_coordinator_restarts() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.address.clone();
    let client = client(&address).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new("steady", 12))
        .await
        .unwrap();
    let config = ConsumerConfig {
        fetch_max_wait: Duration::from_millis(50),
        ..ConsumerConfig::default()
    };
    let long_session = || GroupConfig {
        session_timeout: Duration::from_secs(30),
        ..group("steady")
    };
    let mut members: Vec<Consumer> = (0..2)
        .map(|_| Consumer::new(client.clone(), config.clone()))
        .collect();
    for m in members.iter_mut() {
        m.subscribe(long_session(), &["steady"]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        for m in members.iter_mut() {
            m.poll(Duration::from_millis(20)).await.unwrap();
        }
        let d = admin.describe_group("steady").await.unwrap();
        if settled(&d, 2) {
            break d;
        }
        assert!(Instant::now() < deadline, "never settled");
    };
    for m in members.iter_mut() {
        m.poll(Duration::from_millis(20)).await.unwrap();
        m.take_events();
    }

    assert!(broker.terminate());
    drop(broker);
    let _broker = BrokerProcess::start_on(data.path(), &address, &[]);

    // The members keep polling through the restart; the restarted coordinator knows them.
    let admin = Admin::new(common::client(&address).await);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for m in members.iter_mut() {
            let _ = m.poll(Duration::from_millis(50)).await;
        }
        if let Ok(d) = admin.describe_group("steady").await {
            let ids = |d: &rill_client::admin::GroupDescription| {
                d.members
                    .iter()
                    .map(|m| m.member_id.clone())
                    .collect::<BTreeSet<_>>()
            };
            if settled(&d, 2) {
                assert_eq!(ids(&d), ids(&before), "the same members, not rejoined ones");
                assert_eq!(d.group_epoch, before.group_epoch, "no rebalance");
                break;
            }
        }
        assert!(Instant::now() < deadline, "the group did not come back");
    }
    for m in members.iter_mut() {
        assert!(
            m.take_events().is_empty(),
            "no partition was revoked or reassigned"
        );
    }
}

/// Review finding #12: `__consumer_offsets` inherited the broker-wide size retention, so old
/// commits were deleted and consumers fell back to `offset_reset`. It must keep every offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_broker_wide_size_retention_and_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let flags = [
        "--retention-bytes",
        "8192",
        "--segment-bytes",
        "4096",
        "--tick-ms",
        "20",
    ];
    let mut broker = BrokerProcess::start(data.path(), &flags);
    let address = broker.address.clone();
    let client = common::client(&address).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new("kept", 2))
        .await
        .expect("create topic");
    let offsets = |partition: u32, offset: u64| {
        std::collections::BTreeMap::from([(("kept".to_string(), partition), offset)])
    };
    admin
        .reset_group_offsets("keeper", &offsets(0, 5))
        .await
        .expect("commit partition 0");
    // Many more commits into the same offsets partition: far more than 8 KiB of segments.
    for i in 0..400 {
        admin
            .reset_group_offsets("keeper", &offsets(1, i))
            .await
            .expect("commit partition 1");
    }
    broker.terminate();
    drop(broker);
    let broker = BrokerProcess::start_on(data.path(), &address, &flags);
    let client = common::client(&broker.address).await;
    let committed = common::eventually_value(
        Duration::from_secs(30),
        "the group's offsets after the restart",
        || async {
            Admin::new(client.clone())
                .group_offsets("keeper")
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(
        committed.get(&("kept".to_string(), 0)),
        Some(&5),
        "the first commit survives retention: {committed:?}"
    );
    assert_eq!(committed.get(&("kept".to_string(), 1)), Some(&399));
}

/// Group ids the broker lists.
async fn listed(admin: &Admin) -> Vec<String> {
    admin
        .list_groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.group)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_group_expires_after_the_offsets_retention_and_a_live_one_does_not() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), &["--offsets-retention-ms", "3000"]);
    let address = broker.address.clone();
    let client = client(&address).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new("ledger", 2))
        .await
        .unwrap();
    produce(&client, "ledger", 20, "x").await;

    // "live" consumes everything, commits, and stays (its member keeps polling); then "done"
    // does the same and leaves.
    let seen: Seen = Arc::default();
    let mut live = member(client.clone(), "live", "ledger", seen, |n| n >= 20).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let polling = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                live.poll(Duration::from_millis(200)).await.unwrap();
            }
            live
        })
    };
    let seen: Seen = Arc::default();
    let done = member(client.clone(), "done", "ledger", seen, |n| n >= 20).await;
    done.close().await.unwrap();
    assert_eq!(
        admin
            .group_offsets("done")
            .await
            .unwrap()
            .values()
            .sum::<u64>(),
        20
    );

    // "done" is deleted once empty for the retention: gone from the listing, its offsets too.
    common::eventually_async(Duration::from_secs(30), "group done expired", || async {
        !listed(&admin).await.contains(&"done".to_string())
    })
    .await;
    assert!(admin.group_offsets("done").await.unwrap().is_empty());
    broker.wait_for_line("group expired", Duration::from_secs(5));
    // "live" committed before "done" did, so its last commit is older than the retention too;
    // it has a member, so it stays, with its offsets.
    assert!(listed(&admin).await.contains(&"live".to_string()));
    // Once its member leaves it is empty, and the retention counts from then (not from its
    // last commit, longer ago than the retention): its offsets are still there.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    polling.await.unwrap().close().await.unwrap();
    assert_eq!(
        admin
            .group_offsets("live")
            .await
            .unwrap()
            .values()
            .sum::<u64>(),
        20
    );
    common::eventually_async(Duration::from_secs(30), "group live expired", || async {
        !listed(&admin).await.contains(&"live".to_string())
    })
    .await;

    // The deletions are in the offsets log: a restarted broker does not bring them back.
    assert!(broker.terminate());
    drop(broker);
    let broker = BrokerProcess::start_on(data.path(), &address, &["--offsets-retention-ms", "0"]);
    let admin = Admin::new(common::client(&broker.address).await);
    assert!(listed(&admin).await.is_empty());
}
