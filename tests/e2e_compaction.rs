//! Log compaction end to end, against real broker processes: keys overwritten many times
//! leave only their latest value at its original offset and tombstones go after
//! `delete.retention.ms`; a broker SIGKILLed at random moments of cleaning restarts with a valid
//! log holding every latest value; `__consumer_offsets` stays small under a million commits.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{eventually_async, BrokerProcess, Rng};
use rill_client::protocol::api::OffsetSpec;
use rill_client::{
    Admin, Compression, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig, Record,
};

/// Latest acknowledged (offset, value) per key.
type Latest = BTreeMap<String, (u64, Option<String>)>;

async fn create_compacted(client: &rill_client::Client, topic: &str, extra: &[(&str, &str)]) {
    let mut configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), "16384".to_string()),
        ("min.cleanable.dirty.ratio".to_string(), "0.01".to_string()),
    ]);
    for (k, v) in extra {
        configs.insert(k.to_string(), v.to_string());
    }
    Admin::new(client.clone())
        .create_topic(NewTopic {
            configs,
            ..NewTopic::new(topic, 1)
        })
        .await
        .unwrap();
}

/// Writes `records` (key, value or tombstone) to partition 0 and records where each landed.
async fn write(
    client: &rill_client::Client,
    topic: &str,
    records: &[(String, Option<String>)],
    latest: &mut Latest,
) {
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            compression: Compression::Lz4,
            batch_size_bytes: 2048,
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for (key, value) in records {
        let mut record = Record::new(topic).partition(0).key(key.clone());
        record.value = value.clone().map(Into::into);
        deliveries.push((key, value, producer.send(record).await.unwrap()));
    }
    producer.flush().await;
    for (key, value, delivery) in deliveries {
        let offset = delivery
            .await
            .unwrap()
            .offset
            .expect("acks=all gives the offset");
        latest.insert(key.clone(), (offset, value.clone()));
    }
}

/// One round over `keys` keys: every key gets a new value of about 200 bytes.
fn round(keys: usize, round: usize) -> Vec<(String, Option<String>)> {
    (0..keys)
        .map(|k| {
            let value = format!("key-{k} round-{round} {}", "v".repeat(180));
            (format!("key-{k}"), Some(value))
        })
        .collect()
}

/// Every record of partition 0 up to its high watermark: offset -> (key, value).
async fn read_all(
    client: &rill_client::Client,
    topic: &str,
) -> BTreeMap<u64, (String, Option<String>)> {
    let end = Admin::new(client.clone())
        .partition_offset(topic, 0, OffsetSpec::Latest)
        .await
        .unwrap()
        .unwrap_or(0);
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.assign([(topic.to_string(), 0)]);
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.position(topic, 0).is_none_or(|p| p < end) {
        assert!(
            Instant::now() < deadline,
            "reading {topic} to {end} timed out"
        );
        for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            let key = String::from_utf8(r.key.unwrap_or_default().to_vec()).unwrap();
            let value = r.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
            assert!(
                out.insert(r.offset, (key, value)).is_none(),
                "offset {} twice",
                r.offset
            );
        }
    }
    out
}

/// Whether every key of `latest` is in `log` with its latest value at its offset.
fn holds_every_latest(
    log: &BTreeMap<u64, (String, Option<String>)>,
    latest: &Latest,
) -> Result<(), String> {
    for (key, (offset, value)) in latest {
        match log.get(offset) {
            Some((k, v)) if k == key && v == value => {}
            other => return Err(format!("{key} at {offset}: found {other:?}")),
        }
    }
    Ok(())
}

/// Bytes of a partition's sealed segments (the active one is preallocated in 16 MiB steps and
/// left out), and its segment count.
fn sealed_bytes(dir: &Path) -> (u64, usize) {
    let mut logs: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .filter_map(|e| {
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().ok()?.len(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    let count = logs.len();
    logs.pop();
    (logs.iter().map(|(_, len)| len).sum(), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_overwritten_many_times_leave_their_latest_value_at_its_offset_and_tombstones_go() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &["--log-cleaner-backoff-ms", "100"]);
    let client = common::client(&broker.address).await;
    create_compacted(&client, "profiles", &[("delete.retention.ms", "1500")]).await;
    let mut latest = Latest::new();
    for r in 0..30 {
        write(&client, "profiles", &round(40, r), &mut latest).await;
    }
    // Keys 0-9 are deleted.
    let tombstones: Vec<(String, Option<String>)> =
        (0..10).map(|k| (format!("key-{k}"), None)).collect();
    write(&client, "profiles", &tombstones, &mut latest).await;
    let written = latest.values().map(|(o, _)| *o).max().unwrap() + 1;

    // Filler on one key keeps rolling segments (the active one is never cleaned) and gives
    // the cleaner new dirt, so passes keep coming after delete.retention.ms.
    let live: Latest = latest
        .iter()
        .filter(|(_, (_, v))| v.is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut n = 0;
    eventually_async(
        Duration::from_secs(90),
        "the topic compacted to its latest values",
        || {
            n += 1;
            let (client, live) = (client.clone(), live.clone());
            async move {
                let filler = vec![(
                    "filler".to_string(),
                    Some(format!("{n} {}", "f".repeat(4000))),
                )];
                write(&client, "profiles", &filler, &mut Latest::new()).await;
                let log = read_all(&client, "profiles").await;
                holds_every_latest(&log, &live).is_ok()
                    && log.range(..written).count() == live.len()
            }
        },
    )
    .await;
    let log = read_all(&client, "profiles").await;
    holds_every_latest(&log, &live).unwrap();
    for k in 0..10 {
        assert!(
            log.values().all(|(key, _)| key != &format!("key-{k}")),
            "key-{k} was deleted"
        );
    }
    // 1210 records were written below `written`; 30 remain, at their original offsets.
    assert_eq!(log.range(..written).count(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_at_random_moments_of_cleaning_keeps_every_latest_value() {
    let mut rng = Rng::from_env_or_time("compaction_sigkill");
    let data = tempfile::tempdir().unwrap();
    // Cleaning throttled to 100 kB/s, so a pass over this log takes a second or so.
    let args = [
        "--log-cleaner-backoff-ms",
        "50",
        "--log-cleaner-io-max-bytes-per-second",
        "100000",
    ];
    let mut broker = BrokerProcess::start(data.path(), &args);
    let client = common::client(&broker.address).await;
    create_compacted(&client, "state", &[]).await;
    let partition_dir = data.path().join("state-0");
    let mut latest = Latest::new();
    let mut kills = 0;
    for r in 0..8 {
        let client = common::client(&broker.address).await;
        write(&client, "state", &round(60, r), &mut latest).await;
        write(&client, "state", &round(60, 100 + r), &mut latest).await;
        // Kill while a pass is writing or swapping (its files are there), a random moment in.
        // Filler keeps sealing segments meanwhile, so passes keep coming.
        let filler = tokio::spawn({
            let client = client.clone();
            async move {
                for n in 0.. {
                    let record = [(
                        "filler".to_string(),
                        Some(format!("{n} {}", "f".repeat(4000))),
                    )];
                    write(&client, "state", &record, &mut Latest::new()).await;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let cleaning = loop {
            let busy = std::fs::read_dir(&partition_dir).unwrap().any(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.ends_with(".cleaned") || name.ends_with(".swap")
            });
            if busy || Instant::now() > deadline {
                break busy;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        tokio::time::sleep(Duration::from_millis(rng.range(0, 400))).await;
        broker.kill9();
        filler.abort();
        let _ = filler.await;
        kills += usize::from(cleaning);
        broker = BrokerProcess::start_on(data.path(), &broker.address.clone(), &args);
        let client = common::client(&broker.address).await;
        let log = read_all(&client, "state").await;
        holds_every_latest(&log, &latest).unwrap_or_else(|e| panic!("after kill {r}: {e}"));
    }
    assert!(kills >= 4, "only {kills} kills landed during cleaning");
    // And cleaning still finishes: only the latest values are left below the active segment.
    // Unthrottled now: how much filler the rounds wrote depends on the machine's speed, and
    // at 100 kB/s a slow machine's log could take minutes.
    broker.kill9();
    broker = BrokerProcess::start_on(
        data.path(),
        &broker.address.clone(),
        &["--log-cleaner-backoff-ms", "50"],
    );
    let client = common::client(&broker.address).await;
    let mut n = 0;
    eventually_async(Duration::from_secs(60), "compacted after the kills", || {
        n += 1;
        let (client, latest) = (client.clone(), latest.clone());
        async move {
            let filler = [(
                "filler".to_string(),
                Some(format!("{n} {}", "f".repeat(4000))),
            )];
            write(&client, "state", &filler, &mut Latest::new()).await;
            let log = read_all(&client, "state").await;
            let keyed = log.values().filter(|(k, _)| k != "filler").count();
            holds_every_latest(&log, &latest).is_ok() && keyed == latest.len()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_offsets_stays_small_under_a_million_commits() {
    let data = tempfile::tempdir().unwrap();
    let args = [
        "--offsets-topic-segment-bytes",
        "1048576",
        "--log-cleaner-backoff-ms",
        "200",
    ];
    let mut broker = BrokerProcess::start(data.path(), &args);
    let client = common::client(&broker.address).await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new("events", 50))
        .await
        .unwrap();
    // 4 groups x 5000 commits x 50 partitions = 1,000,000 committed offsets.
    let (groups, commits, partitions) = (4usize, 5000u64, 50u32);
    let mut tasks = Vec::new();
    for g in 0..groups {
        let admin = Admin::new(client.clone());
        tasks.push(tokio::spawn(async move {
            let group = format!("group-{g}");
            for c in 1..=commits {
                let offsets: BTreeMap<(String, u32), u64> = (0..partitions)
                    .map(|p| (("events".to_string(), p), c * 10 + u64::from(p)))
                    .collect();
                admin.reset_group_offsets(&group, &offsets).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // (sealed bytes of all partitions, most segments of one)
    let offsets_bytes = || -> (u64, usize) {
        (0..8)
            .map(|p| sealed_bytes(&data.path().join(format!("__consumer_offsets-{p}"))))
            .fold((0, 0), |(bytes, most), (b, n)| (bytes + b, most.max(n)))
    };
    // Written: about 60 MB of offset records. Compacted: the latest 200 plus the active segments.
    eventually_async(
        Duration::from_secs(60),
        "__consumer_offsets compacted",
        || {
            let bytes = offsets_bytes();
            async move { bytes.0 < 2 << 20 && bytes.1 <= 3 }
        },
    )
    .await;
    let check = |offsets: BTreeMap<(String, u32), u64>| {
        assert_eq!(offsets.len(), partitions as usize);
        for p in 0..partitions {
            assert_eq!(
                offsets[&("events".to_string(), p)],
                commits * 10 + u64::from(p)
            );
        }
    };
    for g in 0..groups {
        check(admin.group_offsets(&format!("group-{g}")).await.unwrap());
    }
    // A restarted coordinator replays the compacted log to the same offsets.
    assert!(broker.terminate());
    let address = broker.address.clone();
    let broker = BrokerProcess::start_on(data.path(), &address, &args);
    let admin = Admin::new(common::client(&broker.address).await);
    for g in 0..groups {
        let group = format!("group-{g}");
        let offsets =
            common::eventually_value(Duration::from_secs(30), "offsets after restart", || {
                let (admin, group) = (admin.clone(), group.clone());
                async move { admin.group_offsets(&group).await.ok() }
            })
            .await;
        check(offsets);
    }
    eprintln!(
        "__consumer_offsets after 1,000,000 commits: (sealed bytes, most segments) {:?}",
        offsets_bytes()
    );
}
