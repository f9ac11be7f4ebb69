//! Data directory identity (`meta.properties`): a broker refuses, with one clear error and
//! without changing a byte, a directory of an older data format, another node id, or another
//! cluster — pinned with `--cluster-id`, or learned from the controller quorum it reaches.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{batch, BrokerProcess};
use rill_broker::log::{Log, LogConfig};
use rill_client::{Admin, NewTopic, Producer, ProducerConfig, Record};

/// Every file under `dir` (relative path -> contents), to show nothing was touched.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                files.insert(name, std::fs::read(&path).expect("read"));
            }
        }
    }
    files
}

/// Runs the broker binary on `dir` expecting it to refuse at start: its stderr.
fn refused_at_start(dir: &Path, args: &[&str]) -> String {
    let before = snapshot(dir);
    let output = std::process::Command::new(common::broker_binary())
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .output()
        .expect("run rill-broker");
    assert!(!output.status.success(), "the broker must refuse {dir:?}");
    assert_eq!(snapshot(dir), before, "a refused directory is not touched");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn produce_some(address: &str, topic: &str) {
    let client = common::client(address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new(topic, 1))
        .await
        .unwrap();
    let producer = Producer::new(client, ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..20 {
        deliveries.push(
            producer
                .send(Record::new(topic).value(format!("v{i}")))
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    for delivery in deliveries {
        delivery.await.unwrap();
    }
}

#[test]
fn a_directory_of_the_crc32_format_is_refused_untouched() {
    // What a Rill before data format 1 left: logs (and its lock file), no meta.properties.
    let data = tempfile::tempdir().unwrap();
    let mut log = Log::open(&data.path().join("orders-0"), LogConfig::default()).unwrap();
    log.append(&batch(10, 100, 0, 1), 0).unwrap();
    log.close().unwrap();
    std::fs::write(data.path().join(".lock"), b"").unwrap();
    let stderr = refused_at_start(data.path(), &[]);
    assert!(
        stderr.contains("no meta.properties") && stderr.contains("orders-0"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_id_or_pinned_cluster_is_refused_untouched() {
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), &["--cluster-id", "alpha"]);
    produce_some(&broker.address, "events").await;
    assert!(broker.terminate());
    let meta = std::fs::read_to_string(data.path().join("meta.properties")).unwrap();
    assert!(
        meta.contains("rill.format.version=1")
            && meta.contains("node.id=1")
            && meta.contains("cluster.id=alpha"),
        "{meta}"
    );

    let stderr = refused_at_start(data.path(), &["--node-id", "2"]);
    assert!(
        stderr.contains("belongs to node 1 but this broker is node 2"),
        "{stderr}"
    );
    let stderr = refused_at_start(data.path(), &["--cluster-id", "beta"]);
    assert!(
        stderr.contains("belongs to cluster alpha but this broker's cluster is beta"),
        "{stderr}"
    );
    let mut other_format = meta.replace("rill.format.version=1", "rill.format.version=7");
    std::fs::write(data.path().join("meta.properties"), &other_format).unwrap();
    let stderr = refused_at_start(data.path(), &[]);
    assert!(stderr.contains("data format is 7"), "{stderr}");
    other_format = meta;
    std::fs::write(data.path().join("meta.properties"), &other_format).unwrap();

    // The same directory still opens as itself, with its data.
    let broker = BrokerProcess::start(data.path(), &["--cluster-id", "alpha"]);
    let client = common::client(&broker.address).await;
    let partitions = Admin::new(client).describe_topic("events").await.unwrap();
    assert_eq!(partitions[0].latest_offset, Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_another_cluster_is_refused_by_its_quorum_untouched() {
    // Cluster X: voter node 1 and observer node 2; node 2's directory records X's id and
    // holds a replica of `events`.
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let x_voters = format!("1@127.0.0.1:{}", port(()));
    let x1 = tempfile::tempdir().unwrap();
    let x2 = tempfile::tempdir().unwrap();
    let voter = BrokerProcess::start(x1.path(), &["--controller-voters", &x_voters]);
    let mut observer = BrokerProcess::start(
        x2.path(),
        &["--node-id", "2", "--controller-voters", &x_voters],
    );
    observer.wait_for_line("registered with the controller", Duration::from_secs(30));
    let client = common::client(&voter.address).await;
    Admin::new(client)
        .create_topic(NewTopic {
            replication_factor: 2,
            ..NewTopic::new("events", 2)
        })
        .await
        .unwrap();
    produce_some(&voter.address, "more").await;
    assert!(observer.terminate());
    let x_meta = std::fs::read_to_string(x2.path().join("meta.properties")).unwrap();
    assert!(x_meta.contains("cluster.id="), "{x_meta}");

    // Cluster Y, a quorum of its own (it names itself with a new UUID).
    let y_voters = format!("1@127.0.0.1:{}", port(()));
    let y1 = tempfile::tempdir().unwrap();
    let mut y = BrokerProcess::start(y1.path(), &["--controller-voters", &y_voters]);
    // Named once its own voter registered: a quorum with no name yet takes the name of the
    // first directory that registers, which must be Y's own, not X's.
    y.wait_for_line("registered with the controller", Duration::from_secs(30));

    // Node 2 with X's directory pointed at Y: Y's controller refuses it; it exits non-zero
    // without having opened (recovered, rewritten) anything in the directory.
    let before = snapshot(x2.path());
    let mut lost = BrokerProcess::start(
        x2.path(),
        &["--node-id", "2", "--controller-voters", &y_voters],
    );
    let status = lost.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "exits with an error");
    let log = lost.drain_log().join("\n");
    assert!(
        log.contains("belongs to cluster") && log.contains("refusing to join"),
        "{log}"
    );
    assert!(!log.contains("opened partition log"), "{log}");
    assert_eq!(snapshot(x2.path()), before, "X's directory is not touched");
}
