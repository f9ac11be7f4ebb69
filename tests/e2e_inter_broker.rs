//! The inter-broker listener (`replication_listen`): follower fetches are served there and
//! nowhere else, so a client cannot pose as a follower to read above the high watermark, move
//! it, or keep a dead broker in the ISR (docs/PROTOCOL.md "Fetch", docs/REPLICATION.md).

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::raw::Raw;
use rill_client::{Acks, Admin, NewTopic, Record};
use rill_protocol::api::{
    FetchPartition, FetchRequest, FetchTopic, ProducePartition, ProduceRequest, ProduceTopic,
    RequestBody, ResponseBody,
};
use rill_protocol::ErrorCode;

const TOPIC: &str = "guarded";

fn fetch(replica_id: Option<u32>, offset: u64) -> RequestBody {
    RequestBody::Fetch(FetchRequest {
        replica_id,
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: TOPIC.into(),
            partitions: vec![FetchPartition {
                partition: 0,
                current_leader_epoch: None,
                fetch_offset: offset,
                partition_max_bytes: 1 << 20,
                last_fetched_epoch: None,
            }],
        }],
    })
}

/// The high watermark a consumer fetch on `raw` reports.
fn high_watermark(raw: &mut Raw) -> u64 {
    let ResponseBody::Fetch(consumed) = raw.call(fetch(None, 0)) else {
        panic!("a fetch response");
    };
    let answer = &consumed.topics[0].partitions[0];
    assert_eq!(answer.error_code, ErrorCode::NONE);
    answer.high_watermark
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_cannot_pose_as_a_follower() {
    // A paused follower stays in the ISR (long lag and session limits): records written with
    // acks=1 then sit above the high watermark, which only that follower's fetches may move.
    let mut cluster = Cluster::start(
        3,
        &[
            "--replica-lag-max-ms",
            "120000",
            "--broker-session-timeout-ms",
            "120000",
        ],
    );
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic {
            replication_factor: 3,
            ..NewTopic::new(TOPIC, 1)
        })
        .await
        .unwrap();
    // Replication works through the inter-broker listeners: acks=all is acknowledged.
    common::produce_acked(
        &client,
        (0..10)
            .map(|i| Record::new(TOPIC).value(format!("v{i}")))
            .collect(),
    )
    .await;
    let partition = common::eventually_value(Duration::from_secs(30), "ISR of 3", || async {
        let described = admin.describe_topic(TOPIC).await.ok()?;
        let p = described.into_iter().next()?;
        (p.isr.len() == 3).then_some(p)
    })
    .await;
    let leader = partition.leader.expect("a leader");
    // Pause a follower that is not the active controller (the quorum stays whole).
    let controller = admin.cluster().await.unwrap().controller;
    let follower = *partition
        .replicas
        .iter()
        .find(|r| **r != leader && Some(**r) != controller)
        .expect("a follower that is not the controller");
    let mut raw = Raw::connect(&cluster.address(leader));
    assert_eq!(high_watermark(&mut raw), 10);
    cluster.signal_pause(follower, true);

    // Five records with acks=1, straight to the leader: above the high watermark.
    let body = RequestBody::Produce(ProduceRequest {
        acks: Acks::Leader,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: TOPIC.into(),
            partitions: vec![ProducePartition {
                partition: 0,
                records: common::batch(5, 10, 1_000, 7),
            }],
        }],
    });
    let ResponseBody::Produce(produced) = raw.call(body) else {
        panic!("a produce response");
    };
    let answer = &produced.topics[0].partitions[0];
    assert_eq!(
        (answer.error_code, answer.base_offset),
        (ErrorCode::NONE, 10)
    );
    assert_eq!(
        high_watermark(&mut raw),
        10,
        "the paused follower has not fetched"
    );

    // A forged fetch of the paused follower on the leader's client listener: refused, nothing
    // returned, the high watermark unmoved (it would move to 15 if believed).
    for offset in [10, 15] {
        let body = fetch(Some(follower), offset);
        raw.send(body.api_key() as u16, 0, &body.encode_to_bytes());
        let (header, body) = raw.receive().expect("an answer, not a closed connection");
        assert_eq!(header.error_code, ErrorCode::CLUSTER_AUTHORIZATION_FAILED);
        assert!(body.is_empty());
    }
    assert_eq!(
        high_watermark(&mut raw),
        10,
        "a forged follower fetch moved the high watermark"
    );
    let refused = cluster
        .broker(leader)
        .wait_for_line("refused a follower fetch", Duration::from_secs(10));
    assert!(refused.contains("replication_listen"), "{refused}");

    // The real follower resumes and moves the high watermark over the inter-broker listener.
    cluster.signal_pause(follower, false);
    common::eventually(Duration::from_secs(30), "high watermark 15", || {
        high_watermark(&mut raw) == 15
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_with_a_taken_node_id_is_refused_loudly() {
    // Two voters and an observer, node 3; a second process claims node id 3 elsewhere.
    let cluster = Cluster::start_with_observers(2, 1, &[]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    let holder = cluster.address(3);
    let data = tempfile::tempdir().unwrap();
    let mut impostor = common::BrokerProcess::start(
        data.path(),
        &["--node-id", "3", "--controller-voters", cluster.voters()],
    );
    impostor.wait_for_line(
        "the controller refused this broker: node id 3 is held by a live broker",
        Duration::from_secs(30),
    );
    // The holder keeps its registration and its address after the impostor has been refused
    // for a while (its heartbeats failing for 5 s are logged once more), and the impostor
    // never becomes ready.
    impostor.wait_for_line(
        "heartbeat to the controller failed for",
        Duration::from_secs(30),
    );
    let brokers = admin.cluster().await.unwrap().brokers;
    let three = brokers.iter().find(|b| b.node_id == 3).expect("node 3");
    assert_eq!(three.address, holder);
    assert!(!three.fenced, "{brokers:?}");
    let admin_address = impostor.admin_address.clone().expect("admin listener");
    let (status, _) = common::http_get(&admin_address, "/health/ready");
    assert_eq!(status, 503, "the refused broker is not ready");
}
