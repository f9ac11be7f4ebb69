//! Limits no client can exhaust (docs/SECURITY.md "Limits"), against real brokers: connections
//! per source address, and request memory under a flood of partial maximum-size frames.
//!
//! Other source addresses are loopback aliases (127.0.0.2, 127.0.0.3): Linux routes all of
//! 127.0.0.0/8 to `lo`, so a socket bound to one of them reaches a broker on 127.0.0.1.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::cluster::Cluster;
use common::{scrape_metrics, BrokerProcess, Poll};
use rill_client::{Admin, NewTopic, Record};
use rill_protocol::api::ApiKey;
use rill_protocol::frame::RequestHeader;
use rill_protocol::wire::Wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from source address `from`.
async fn connect_from(from: &str, to: &str) -> TcpStream {
    let from: IpAddr = from.parse().unwrap();
    let to: SocketAddr = to.parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the broker answers an ApiVersions request on `stream` (`false`: it closed it).
async fn answers(stream: &mut TcpStream) -> bool {
    let mut frame = BytesMut::new();
    frame.put_u32(0);
    RequestHeader {
        api_key: ApiKey::ApiVersions as u16,
        api_version: 0,
        correlation_id: 7,
        client_id: "limits".into(),
    }
    .encode(&mut frame);
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    if stream.write_all(&frame).await.is_err() {
        return false;
    }
    let mut prefix = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut prefix)).await;
    matches!(read, Ok(Ok(_)))
}

/// Whether the admin listener answers a keep-alive `GET /health/live` on `stream` (`false`:
/// it closed it).
async fn http_answers(stream: &mut TcpStream) -> bool {
    let request = b"GET /health/live HTTP/1.1\r\nHost: rill\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && answer.starts_with(b"HTTP/1.1 200")
}

/// A connection from `from` that the broker serves (it may take a moment for a closed one's
/// slot to be given back).
async fn admitted(from: &str, to: &str) -> TcpStream {
    let mut poll = Poll::new(
        Duration::from_secs(20),
        &format!("a connection from {from}"),
    );
    loop {
        let mut stream = connect_from(from, to).await;
        if answers(&mut stream).await {
            return stream;
        }
        poll.pause().await;
    }
}

fn metric(admin_address: &str, name: &str) -> f64 {
    scrape_metrics(admin_address)
        .get(name)
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_limit_are_refused_and_others_still_connect() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        data.path(),
        &[
            "--max-connections-per-ip",
            "2",
            "--max-connections-per-ip-overrides",
            "127.0.0.3:4",
        ],
    );
    let address = broker.address.clone();
    let admin_address = broker.admin_address.clone().expect("admin listener");

    let first = admitted("127.0.0.2", &address).await;
    let _second = admitted("127.0.0.2", &address).await;
    let mut third = connect_from("127.0.0.2", &address).await;
    assert!(
        !answers(&mut third).await,
        "a third connection from one address is closed"
    );

    // Another address has its own count; an override raises one address's limit.
    let overridden: Vec<TcpStream> =
        futures::future::join_all((0..4).map(|_| admitted("127.0.0.3", &address))).await;
    let mut fifth = connect_from("127.0.0.3", &address).await;
    assert!(!answers(&mut fifth).await, "the override's limit holds too");

    // The client on 127.0.0.1 is not affected.
    let client = common::client(&address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("limits", 1))
        .await
        .unwrap();

    // The admin HTTP listener counts its own connections, with the same limit.
    let admin = broker.admin_address.clone().expect("admin listener");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from("127.0.0.2", &admin).await;
        assert!(
            http_answers(&mut stream).await,
            "an admin connection within the limit"
        );
        held.push(stream);
    }
    let mut third_admin = connect_from("127.0.0.2", &admin).await;
    assert!(
        !http_answers(&mut third_admin).await,
        "a third admin connection from one address is closed"
    );
    drop(held);

    // A closed connection gives its slot back.
    drop(first);
    let _again = admitted("127.0.0.2", &address).await;
    assert!(
        metric(
            &admin_address,
            "rill_connections_limited_total{reason=\"max_connections_per_ip\"}"
        ) >= 2.0
    );
    drop(overridden);
}

/// RSS of process `pid`, bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

const FRAME: usize = 8_000_000;
const MAX_FRAME: &str = "8388608";
const PER_IP: usize = 16 << 20;
const FLOODERS: usize = 32;
/// A controller port frame of almost its limit (64 MiB); the port's per-address share holds one.
const RAFT_FRAME: usize = 64_000_000;
const RAFT_SHARE: usize = 64 << 20;
const RAFT_FLOODERS: usize = 8;

/// `n` connections from 127.0.0.2 to `address`, each sending the size of a `frame`-byte frame
/// and 7/8 of its body, then stalling until the broker closes it or the task is aborted.
fn flood(address: &str, n: usize, frame: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let body = Arc::new(vec![0u8; frame * 7 / 8]);
    (0..n)
        .map(|_| {
            let (address, body) = (address.to_string(), body.clone());
            tokio::spawn(async move {
                let mut stream = connect_from("127.0.0.2", &address).await;
                let mut head = (frame as u32).to_be_bytes().to_vec();
                head.extend_from_slice(&[0, 3, 0, 0, 0, 0, 0, 1]);
                if stream.write_all(&head).await.is_ok() {
                    let _ = stream.write_all(&body).await;
                }
                let _ = stream.read_u8().await;
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_partial_frames_neither_exhausts_memory_nor_stops_acks_all() {
    let per_ip = PER_IP.to_string();
    let mut cluster = Cluster::start(
        3,
        &[
            "--max-frame-bytes",
            MAX_FRAME,
            "--request-memory-bytes",
            "33554432",
            "--request-memory-per-ip-bytes",
            &per_ip,
            "--request-read-timeout-ms",
            "2000",
        ],
    );
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic {
            replication_factor: 3,
            ..NewTopic::new("flooded", 1)
        })
        .await
        .unwrap();
    let records = |from: usize| {
        (from..from + 100)
            .map(|i| Record::new("flooded").value(format!("v{i}")))
            .collect::<Vec<_>>()
    };
    common::produce_acked(&client, records(0)).await;
    let leader = common::eventually_value(Duration::from_secs(30), "an ISR of 3", || async {
        let p = admin
            .describe_topic("flooded")
            .await
            .ok()?
            .into_iter()
            .next()?;
        (p.isr.len() == 3).then_some(p.leader).flatten()
    })
    .await;
    let controller = admin
        .cluster()
        .await
        .unwrap()
        .controller
        .expect("a controller");
    let admin_address = cluster.broker(leader).admin_address.clone().expect("admin");
    let (leader_pid, controller_pid) = (
        cluster.broker(leader).pid(),
        cluster.broker(controller).pid(),
    );
    let baseline = (resident_bytes(leader_pid), resident_bytes(controller_pid));
    let mut peak = baseline;
    let mut sample = || {
        peak.0 = peak.0.max(resident_bytes(leader_pid));
        peak.1 = peak.1.max(resident_bytes(controller_pid));
    };

    // Partial maximum-size frames on the partition leader's client port and on the active
    // controller's port (heartbeats and ISR changes go there).
    let mut flooders = flood(&cluster.address(leader), FLOODERS, FRAME);
    flooders.extend(flood(
        &cluster.controller_address(controller),
        RAFT_FLOODERS,
        RAFT_FRAME,
    ));
    let mut poll = Poll::new(
        Duration::from_secs(60),
        "the flood to hold its address's share",
    );
    while metric(
        &admin_address,
        "rill_request_memory_bytes{listener=\"clients\"}",
    ) < (PER_IP / FRAME * FRAME) as f64
    {
        sample();
        poll.pause().await;
    }

    // Meanwhile acks=all is acknowledged (replication, heartbeats and the client's own frames
    // get budget), and a stalled frame's grant is taken back after the read timeout.
    for round in 1..4 {
        common::produce_acked(&client, records(round * 100)).await;
        sample();
    }
    let mut poll = Poll::new(Duration::from_secs(60), "stalled frames to time out");
    while metric(
        &admin_address,
        "rill_connections_limited_total{reason=\"request_read_timeout\"}",
    ) < 2.0
    {
        sample();
        poll.pause().await;
    }
    let described = admin.describe_topic("flooded").await.unwrap();
    assert_eq!(
        described[0].isr.len(),
        3,
        "replication kept up: {described:?}"
    );
    let end = admin
        .partition_offset("flooded", 0, rill_protocol::api::OffsetSpec::Latest)
        .await
        .unwrap();
    assert_eq!(end, Some(400), "every acks=all record is in the log");
    let brokers = admin.cluster().await.unwrap().brokers;
    assert!(
        brokers.len() == 3 && brokers.iter().all(|b| !b.fenced),
        "no broker was fenced: {brokers:?}"
    );

    // Without a budget the leader would buffer every flooder's 7 MB (224 MB) and the
    // controller every flooder's 56 MB (448 MB); with it, one address's share at a time.
    sample();
    println!(
        "RSS under the flood: leader {} -> {} MiB ({FLOODERS} x 7 MB partial frames), controller {} -> {} MiB ({RAFT_FLOODERS} x 56 MB)",
        baseline.0 >> 20,
        peak.0 >> 20,
        baseline.1 >> 20,
        peak.1 >> 20,
    );
    let margin = 48 << 20;
    let (leader_share, controller_share) = if controller == leader {
        (PER_IP + RAFT_SHARE, PER_IP + RAFT_SHARE)
    } else {
        (PER_IP, RAFT_SHARE)
    };
    assert!(
        peak.0.saturating_sub(baseline.0) < leader_share as u64 + margin,
        "the leader's RSS grew by {} MiB, more than its ports' per-address shares plus 48 MiB",
        peak.0.saturating_sub(baseline.0) >> 20
    );
    assert!(
        peak.1.saturating_sub(baseline.1) < controller_share as u64 + margin,
        "the controller's RSS grew by {} MiB, more than its port's per-address share plus 48 MiB",
        peak.1.saturating_sub(baseline.1) >> 20
    );
    for task in flooders {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_partitions_past_max_partitions_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &["--max-partitions", "20"]);
    let admin = Admin::new(common::client(&broker.address).await);
    admin
        .create_topic(NewTopic::new("within", 4))
        .await
        .unwrap();
    for refused in [
        admin.create_topic(NewTopic::new("past", 17)).await,
        admin.create_partitions("within", 21).await,
    ] {
        let err = refused.expect_err("past max_partitions").to_string();
        assert!(
            err.contains("INVALID_PARTITIONS") && err.contains("max_partitions (20)"),
            "{err}"
        );
    }
    admin.create_partitions("within", 6).await.unwrap();
    let names = admin.list_topics().await.unwrap();
    assert!(!names.iter().any(|t| t == "past"), "{names:?}");
}
