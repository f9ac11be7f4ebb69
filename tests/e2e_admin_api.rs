//! The admin listener's JSON API (`/v1/`, docs/OPERATIONS.md "JSON API") on real brokers:
//! every broker answers with the same figures the `rill` CLI prints, also for partitions and
//! groups that live elsewhere, and the record browser keeps its limits.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::Cluster;
use common::{client, http_json, rill_json, BrokerProcess};
use rill_client::{Admin, NewTopic, Record};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_shows_the_figures_the_cli_shows() {
    let mut cluster = Cluster::start(3, &[]);
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic {
            replication_factor: 3,
            ..NewTopic::new("shown", 3)
        })
        .await
        .unwrap();
    let records = (0..300)
        .map(|i| {
            Record::new("shown")
                .key(format!("k{i}"))
                .value(format!("value {i}"))
        })
        .collect();
    common::produce_acked(&client, records).await;
    // A group with committed offsets (no members): its lag is known exactly.
    let committed: BTreeMap<(String, u32), u64> = (0..3)
        .map(|p| (("shown".to_string(), p), 10 * u64::from(p)))
        .collect();
    admin
        .reset_group_offsets("viewers", &committed)
        .await
        .unwrap();

    let bootstrap = cluster.bootstrap();
    for node in 1..=3 {
        let http = cluster.broker(node).admin_address.clone().unwrap();
        // The CLI and the API are read one after the other: poll until a quiet moment where
        // both see the same (followers may still be catching up right after the produce).
        common::eventually(
            Duration::from_secs(30),
            "topic page = rill topic describe",
            || {
                let (status, page) = http_json(&http, "/v1/topics/shown");
                assert_eq!(status, 200, "{page}");
                let cli = rill_json(&bootstrap, &["topic", "describe", "shown"]);
                page["partitions"] == cli["partitions"]
            },
        );
        let (_, page) = http_json(&http, "/v1/topics/shown");
        let partitions = page["partitions"].as_array().unwrap();
        assert_eq!(partitions.len(), 3);
        let total: u64 = partitions
            .iter()
            .map(|p| p["latest_offset"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 300);
        for p in partitions {
            assert_eq!(p["isr"].as_array().unwrap().len(), 3, "{p}");
            assert_eq!(p["latest_offset"], p["log_end_offset"], "{p}");
            assert!(p["size_bytes"].as_u64().unwrap() > 0, "{p}");
        }
        let configs = page["configs"].as_array().unwrap();
        assert!(
            configs.contains(
                &json!({"name": "cleanup.policy", "value": "delete", "source": "broker default"})
            ),
            "{configs:?}"
        );

        let (status, group) = http_json(&http, "/v1/groups/viewers");
        assert_eq!(status, 200, "{group}");
        assert_eq!(
            group,
            rill_json(&bootstrap, &["group", "describe", "viewers"])
        );
        assert_eq!(group["total_lag"], json!(300 - 30));

        let (_, groups) = http_json(&http, "/v1/groups");
        assert_eq!(groups, rill_json(&bootstrap, &["group", "list"]));

        let (_, mut info) = http_json(&http, "/v1/cluster");
        assert_eq!(info["served_by"], json!(node));
        info.as_object_mut().unwrap().remove("served_by");
        assert_eq!(info, rill_json(&bootstrap, &["cluster", "info"]));

        let (_, topics) = http_json(&http, "/v1/topics");
        let shown = topics
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "shown")
            .cloned()
            .unwrap();
        assert_eq!(shown["partitions"], json!(3));
        assert_eq!(shown["replication_factor"], json!(3));
        assert_eq!(shown["under_replicated"], json!(0));
        assert_eq!(shown["internal"], json!(false));
    }

    // A broker down: the others show it fenced and its partitions under-replicated.
    cluster.kill(3);
    let http = cluster.broker(1).admin_address.clone().unwrap();
    common::eventually(Duration::from_secs(30), "broker 3 fenced", || {
        let (_, info) = http_json(&http, "/v1/cluster");
        info["brokers"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["node_id"] == 3 && b["fenced"] == true))
    });
    common::eventually(Duration::from_secs(30), "under-replicated", || {
        let (_, topics) = http_json(&http, "/v1/topics");
        topics
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "shown" && t["under_replicated"] == 3)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_browser_keeps_its_limits() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let http = broker.admin_address.clone().unwrap();
    let client = client(&broker.address).await;
    Admin::new(client.clone())
        .create_topic(NewTopic::new("browsed", 1))
        .await
        .unwrap();
    let base = 1_700_000_000_000i64;
    let mut records: Vec<Record> = (0..100)
        .map(|i| {
            Record::new("browsed")
                .key(format!("k{i:02}"))
                .value(format!(r#"{{"i":{i}}}"#))
                .header("h", "v")
                .timestamp(base + i * 1000)
        })
        .collect();
    records.push(
        Record::new("browsed")
            .value(vec![0xffu8, 0x00, 0x10])
            .timestamp(base + 100_000),
    );
    common::produce_acked(&client, records).await;
    let path = |query: &str| format!("/v1/topics/browsed/partitions/0/records?{query}");
    let offsets = |page: &Value| -> Vec<u64> {
        page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect()
    };

    // Default: from the log start, 50 records, and where to go on.
    let (status, page) = http_json(&http, &path(""));
    assert_eq!(status, 200, "{page}");
    assert_eq!(offsets(&page), (0..50).collect::<Vec<_>>());
    assert_eq!(page["next_offset"], json!(50));
    assert_eq!(page["truncated"], json!(true));
    assert_eq!(page["high_watermark"], json!(101));
    let first = &page["records"][0];
    assert_eq!(first["key"], json!("k00"));
    assert_eq!(first["value"], json!(r#"{"i":0}"#));
    assert_eq!(first["headers"], json!([{"key": "h", "value": "v"}]));
    assert_eq!(first["timestamp"], json!(base));

    // Continue from next_offset to the end: the last page stops at the high watermark.
    let (_, page) = http_json(&http, &path("offset=50&max_records=1000000"));
    assert_eq!(page["max_records"], json!(1000), "asked more than the cap");
    assert_eq!(offsets(&page), (50..101).collect::<Vec<_>>());
    assert_eq!(page["truncated"], json!(false));
    assert_eq!(page["next_offset"], json!(101));

    // A byte budget: 3 + 7 + 2 bytes per record below offset 10 -> 100 bytes hold 8 records.
    let (_, page) = http_json(&http, &path("max_bytes=100"));
    assert_eq!(offsets(&page), (0..8).collect::<Vec<_>>());
    assert_eq!(page["truncated"], json!(true));
    assert_eq!(page["next_offset"], json!(8));

    // From the end, from a timestamp, and in each encoding.
    let (_, page) = http_json(&http, &path("from=end&max_records=3&encoding=json"));
    assert_eq!(offsets(&page), vec![98, 99, 100]);
    assert_eq!(page["records"][0]["value"], json!({"i": 98}));
    assert_eq!(page["records"][0]["value_encoding"], json!("json"));
    assert_eq!(page["records"][2]["value"], json!("ff0010"));
    assert_eq!(page["records"][2]["value_encoding"], json!("hex"));
    assert_eq!(page["records"][2]["key"], Value::Null);
    let (_, page) = http_json(
        &http,
        &path(&format!("timestamp={}&max_records=2", base + 40_500)),
    );
    assert_eq!(offsets(&page), vec![41, 42]);
    let (_, page) = http_json(&http, &path("offset=5&max_records=1&encoding=hex"));
    assert_eq!(page["records"][0]["key"], json!("6b3035"));

    // Bad input is a clear error, not a guess.
    for (query, status) in [
        ("offset=1&from=end", 400),
        ("from=middle", 400),
        ("encoding=base64", 400),
        ("max_records=many", 400),
    ] {
        let (got, _) = common::http_get(&http, &path(query));
        assert_eq!(got, status, "{query}");
    }
    let (status, body) = http_json(&http, "/v1/topics/missing/partitions/0/records");
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("UNKNOWN_TOPIC"),
        "{body}"
    );
    let (status, _) = http_json(&http, "/v1/topics/missing");
    assert_eq!(status, 404);
    let (status, _) = http_json(&http, "/v1/groups/missing");
    assert_eq!(status, 404);
}
