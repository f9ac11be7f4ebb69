//! The admin HTTP listener of real `rill-broker` processes (docs/OPERATIONS.md, "Admin
//! listener and metrics"): health probes, and `/metrics` counting exactly what was done.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::cluster::Cluster;
use common::{client, http_get as get, scrape_metrics as scrape, BrokerProcess};
use rill_client::{Admin, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig, Record};

fn sample(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("{name} in {:#?}", samples.keys().collect::<Vec<_>>()))
}

/// A Kafka ApiVersions v0 request on a new connection; waits for its answer.
fn kafka_api_versions(address: &str) {
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    let mut frame = vec![0, 18, 0, 0, 0, 0, 0, 7, 0, 1, b'm'];
    let mut request = (frame.len() as u32).to_be_bytes().to_vec();
    request.append(&mut frame);
    socket.write_all(&request).unwrap();
    let mut size = [0u8; 4];
    socket.read_exact(&mut size).unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(size) as usize];
    socket.read_exact(&mut answer).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_was_produced_and_requested() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let admin = broker
        .admin_address
        .clone()
        .expect("the admin listener is on");
    assert_eq!(get(&admin, "/health/live").0, 200);
    common::eventually(Duration::from_secs(30), "ready", || {
        get(&admin, "/health/ready").0 == 200
    });
    assert_eq!(get(&admin, "/nothing-here").0, 404);

    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("metered", 2))
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..250 {
        let record = Record::new("metered")
            .key(format!("k{}", i % 7))
            .value(format!("value {i:04}"));
        deliveries.push(producer.send(record).await.unwrap());
    }
    producer.flush().await;
    for delivery in deliveries {
        delivery.await.unwrap();
    }

    // Five Kafka requests: five counted, five in the latency histogram.
    let kafka = broker.kafka_address.clone().unwrap();
    for _ in 0..5 {
        kafka_api_versions(&kafka);
    }

    let samples = scrape(&admin);
    assert_eq!(
        sample(&samples, r#"rill_produced_records_total{topic="metered"}"#),
        250.0
    );
    // Every byte produced is in the log, and only those: the log's size is what came in.
    assert_eq!(
        sample(&samples, r#"rill_produced_bytes_total{topic="metered"}"#),
        sample(&samples, r#"rill_log_size_bytes{topic="metered"}"#)
    );
    let produce_requests = sample(
        &samples,
        r#"rill_requests_total{listener="rill",api="Produce",error="NONE"}"#,
    );
    assert!(produce_requests >= 1.0);
    assert_eq!(
        sample(
            &samples,
            r#"rill_request_duration_seconds_count{listener="rill",api="Produce"}"#
        ),
        produce_requests
    );
    assert_eq!(
        sample(
            &samples,
            r#"rill_requests_total{listener="kafka",api="ApiVersions",error="NONE"}"#
        ),
        5.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"rill_request_duration_seconds_count{listener="kafka",api="ApiVersions"}"#
        ),
        5.0
    );
    assert!(sample(&samples, "rill_produce_batch_size_bytes_count") >= produce_requests);
    // The produce latency by acks counts the same requests (the producer's default: acks=1).
    assert_eq!(
        sample(&samples, r#"rill_produce_duration_seconds_count{acks="1"}"#),
        produce_requests
    );
    // Per partition: the offsets and sizes add up to the topic's.
    let per_partition = |samples: &BTreeMap<String, f64>, name: &str| -> f64 {
        (0..2)
            .map(|p| {
                sample(
                    samples,
                    &format!(r#"{name}{{topic="metered",partition="{p}"}}"#),
                )
            })
            .sum()
    };
    assert_eq!(
        per_partition(&samples, "rill_partition_high_watermark"),
        250.0
    );
    assert_eq!(
        per_partition(&samples, "rill_partition_log_end_offset"),
        250.0
    );
    assert_eq!(
        per_partition(&samples, "rill_partition_log_start_offset"),
        0.0
    );
    assert_eq!(
        per_partition(&samples, "rill_partition_log_size_bytes"),
        sample(&samples, r#"rill_log_size_bytes{topic="metered"}"#)
    );
    assert_eq!(per_partition(&samples, "rill_partition_segments"), 2.0);
    assert_eq!(
        sample(&samples, r#"rill_log_segments{topic="metered"}"#),
        2.0
    );
    assert!(sample(&samples, "rill_log_mappings") >= 1.0);
    assert_eq!(sample(&samples, "rill_log_recovery_truncations"), 0.0);
    let applied = sample(&samples, "rill_controller_applied_index");
    assert!(applied >= 1.0);
    assert!(sample(&samples, "rill_controller_commit_index") >= applied);
    assert!(sample(&samples, "rill_controller_last_log_index") >= applied);
    assert_eq!(sample(&samples, "rill_controller_active"), 1.0);
    assert_eq!(sample(&samples, "rill_leader_partitions"), 2.0 + 8.0); // + __consumer_offsets
    assert_eq!(sample(&samples, "rill_under_replicated_partitions"), 0.0);
    assert!(sample(&samples, r#"rill_connections{listener="rill"}"#) >= 1.0);
    for process in [
        "rill_process_resident_memory_bytes",
        "rill_process_cpu_seconds",
        "rill_process_open_fds",
    ] {
        assert!(sample(&samples, process) > 0.0, "{process}");
    }
    // The interval flush (every second by default) syncs what was written.
    common::eventually(Duration::from_secs(10), "an fsync timed", || {
        sample(&scrape(&admin), "rill_fsync_duration_seconds_count") >= 1.0
    });
    // The five Kafka connections are closed: the gauge comes back to 0.
    common::eventually(Duration::from_secs(10), "Kafka connections closed", || {
        sample(&scrape(&admin), r#"rill_connections{listener="kafka"}"#) == 0.0
    });

    // Consumed back: the records and bytes out are those in.
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.assign_topic("metered").await.unwrap();
    let mut consumed = 0;
    let mut poll = common::Poll::new(Duration::from_secs(60), "250 records consumed");
    while consumed < 250 {
        consumed += consumer
            .poll(Duration::from_millis(500))
            .await
            .unwrap()
            .len();
        poll.pause().await;
    }
    let samples = scrape(&admin);
    assert_eq!(
        sample(&samples, r#"rill_consumed_records_total{topic="metered"}"#),
        250.0
    );
    // Consumer fetches are timed apart from followers' (there are none on one broker).
    assert_eq!(
        sample(
            &samples,
            r#"rill_fetch_duration_seconds_count{fetcher="consumer"}"#
        ),
        sample(
            &samples,
            r#"rill_request_duration_seconds_count{listener="rill",api="Fetch"}"#
        )
    );
    assert!(!samples.contains_key(r#"rill_fetch_duration_seconds_count{fetcher="follower"}"#));
    drop(consumer);
    common::eventually(Duration::from_secs(10), "no request in flight", || {
        sample(
            &scrape(&admin),
            r#"rill_requests_in_flight{listener="rill"}"#,
        ) == 0.0
    });
    assert_eq!(
        sample(&samples, r#"rill_consumed_bytes_total{topic="metered"}"#),
        sample(&samples, r#"rill_produced_bytes_total{topic="metered"}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_active_controller_and_under_replication_seen_on_the_leader() {
    let mut cluster = Cluster::start(3, &[]);
    let admin = |cluster: &mut Cluster, node: u32| {
        cluster
            .broker(node)
            .admin_address
            .clone()
            .expect("admin listener")
    };
    let client = cluster.client().await;
    Admin::new(client.clone())
        .create_topic(NewTopic {
            replication_factor: 3,
            ..NewTopic::new("replicated", 3)
        })
        .await
        .unwrap();
    let addresses: Vec<String> = (1..=3).map(|n| admin(&mut cluster, n)).collect();
    common::eventually(Duration::from_secs(30), "one active controller", || {
        addresses
            .iter()
            .map(|a| sample(&scrape(a), "rill_controller_active"))
            .sum::<f64>()
            == 1.0
    });
    // Partition leaders are spread; kill a broker, and the others' led partitions whose ISR
    // held it are under-replicated until it is back.
    let under = |addresses: &[String]| -> f64 {
        addresses
            .iter()
            .map(|a| sample(&scrape(a), "rill_under_replicated_partitions"))
            .sum()
    };
    common::eventually(Duration::from_secs(30), "fully replicated", || {
        under(&addresses) == 0.0
    });
    // A group's lag covers partitions without a replica on its coordinator: one replica per
    // partition, spread over the brokers, so the coordinator asks the others' leaders.
    Admin::new(client.clone())
        .create_topic(NewTopic::new("spread", 3))
        .await
        .unwrap();
    let records = (0..90)
        .map(|i| Record::new("spread").key(format!("k{i}")).value("v"))
        .collect();
    common::produce_acked(&client, records).await;
    let committed: BTreeMap<(String, u32), u64> =
        (0..3).map(|p| (("spread".to_string(), p), 0)).collect();
    Admin::new(client.clone())
        .reset_group_offsets("far", &committed)
        .await
        .unwrap();
    common::eventually(
        Duration::from_secs(30),
        "the lag of every partition",
        || {
            let samples: Vec<BTreeMap<String, f64>> = addresses.iter().map(|a| scrape(a)).collect();
            let topic_lag: f64 = samples
                .iter()
                .filter_map(|s| s.get(r#"rill_group_lag_records{group="far",topic="spread"}"#))
                .sum();
            let partition_lag: f64 = samples
            .iter()
            .flat_map(|s| {
                (0..3).filter_map(move |p| {
                    s.get(&format!(
                        r#"rill_group_partition_lag_records{{group="far",topic="spread",partition="{p}"}}"#
                    ))
                })
            })
            .sum();
            topic_lag == 90.0 && partition_lag == 90.0
        },
    );
    // Followers' fetches are timed as such on the leaders.
    assert!(addresses.iter().any(|a| scrape(a)
        .get(r#"rill_fetch_duration_seconds_count{fetcher="follower"}"#)
        .is_some_and(|n| *n > 0.0)));
    cluster.kill(3);
    let survivors = addresses[..2].to_vec();
    common::eventually(
        Duration::from_secs(60),
        "under-replicated partitions on the leaders",
        || under(&survivors) >= 3.0,
    );
    // The partitions broker 3 led moved to the survivors: clean elections there, and the
    // ISRs they lead shrank.
    let total = |addresses: &[String], name: &str| -> f64 {
        addresses
            .iter()
            .map(|a| scrape(a).get(name).copied().unwrap_or(0.0))
            .sum()
    };
    common::eventually(Duration::from_secs(60), "clean elections", || {
        total(&survivors, r#"rill_leader_elections_total{kind="clean"}"#) >= 1.0
    });
    assert!(total(&survivors, "rill_isr_shrinks_total") >= 3.0);
    assert_eq!(
        total(&survivors, r#"rill_leader_elections_total{kind="unclean"}"#),
        0.0
    );
    cluster.restart(3);
    let addresses: Vec<String> = (1..=3).map(|n| admin(&mut cluster, n)).collect();
    common::eventually(Duration::from_secs(60), "replicated again", || {
        under(&addresses) == 0.0
    });
    assert!(total(&addresses, "rill_isr_expands_total") >= 3.0);
    let lag = scrape(&addresses[0]);
    assert!(
        lag.keys()
            .any(|k| k.starts_with("rill_follower_lag_max_records{")),
        "{lag:?}"
    );
}

#[test]
fn a_broker_without_a_quorum_is_live_but_not_ready() {
    // Node 1 of three voters, alone: no quorum, so it never registers.
    let mut cluster = Cluster::prepare(3, 0, &[]);
    cluster.start_node(1);
    let admin = cluster.broker(1).admin_address.clone().unwrap();
    assert_eq!(get(&admin, "/health/live").0, 200);
    let (status, body) = get(&admin, "/health/ready");
    assert_eq!((status, body.as_str()), (503, "not ready\n"));
    // It becomes ready once a quorum forms.
    cluster.start_node(2);
    common::eventually(Duration::from_secs(60), "ready with a quorum", || {
        get(&admin, "/health/ready").0 == 200
    });
}

#[test]
fn an_admin_port_in_use_is_one_clear_error_naming_the_setting() {
    common::assert_port_in_use_is_refused("--admin-listen", "admin_listen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), &["--log-format", "json"]);
    let admin = broker
        .admin_address
        .clone()
        .expect("admin address from a JSON line");
    common::eventually(Duration::from_secs(30), "ready", || {
        get(&admin, "/health/ready").0 == 200
    });
    // Some requests, so that more than start-up lines are written.
    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("logged", 1))
        .await
        .unwrap();
    let lines = broker.drain_log().to_vec();
    assert!(lines.len() > 3, "{lines:?}");
    for line in &lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            object["timestamp"].is_string()
                && object["level"].is_string()
                && object["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(lines
        .iter()
        .any(|l| l.contains("registered with the controller")));
}
