//! The shipped Grafana dashboard (`docs/grafana/rill.json`) against a real Prometheus server
//! (Debian's `prometheus`, installed by tests/install-test-tools.sh) scraping a real
//! three-broker cluster with the example scrape config (`docs/grafana/prometheus.yml`): every
//! PromQL expression of every panel returns data through Prometheus's query API.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::Cluster;
use rill_client::{Admin, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig, Record};

/// A Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `prometheus` with the example config scraping `targets` every second.
    fn start(targets: &[String]) -> Prometheus {
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/grafana/prometheus.yml"
        ))
        .expect("docs/grafana/prometheus.yml");
        let listed: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
        let config: String = example
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("- targets:") {
                    format!("      - targets: [{}]", listed.join(", "))
                } else if line.trim_start().starts_with("scrape_interval:") {
                    "  scrape_interval: 1s".to_string()
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(config.contains("scrape_interval: 1s") && config.contains(&listed[0]));
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus could not start ({e}): run `bash tests/install-test-tools.sh` (Debian package prometheus)")
            });
        Prometheus {
            child,
            address,
            _dir: dir,
        }
    }

    /// An instant query: the result vector, or `None` until Prometheus answers successfully.
    fn query(&self, expr: &str) -> Option<Vec<serde_json::Value>> {
        let mut socket = std::net::TcpStream::connect(&self.address).ok()?;
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        // HTTP/1.0: the answer is not chunked and ends when the connection closes.
        write!(
            socket,
            "GET /api/v1/query?query={} HTTP/1.0\r\nHost: {}\r\n\r\n",
            percent_encode(expr),
            self.address
        )
        .ok()?;
        let mut answer = String::new();
        socket.read_to_string(&mut answer).ok()?;
        let (_, body) = answer.split_once("\r\n\r\n")?;
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        if value["status"] != "success" {
            panic!("Prometheus refused {expr}: {value}");
        }
        value["data"]["result"].as_array().cloned()
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every PromQL expression of the dashboard's panels, by panel title.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana/rill.json"
    ))
    .expect("docs/grafana/rill.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    // Importable with any Prometheus: the datasource is a variable every panel uses.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables.iter().any(|v| v["type"] == "datasource"
        && v["name"] == "datasource"
        && v["query"] == "prometheus"));
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap().to_string();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().unwrap();
            expressions.push((title.clone(), expr.to_string()));
        }
    }
    expressions
}

/// Whether a result vector has a sample with a finite value.
fn has_finite_sample(result: &[serde_json::Value]) -> bool {
    result.iter().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let expressions = dashboard_expressions();
    assert!(expressions.len() >= 40, "{}", expressions.len());

    let mut cluster = Cluster::start(3, &[]);
    let targets: Vec<String> = (1..=3)
        .map(|n| cluster.broker(n).admin_address.clone().expect("admin port"))
        .collect();
    let prometheus = Prometheus::start(&targets);
    common::eventually(
        Duration::from_secs(60),
        "Prometheus scrapes 3 brokers",
        || {
            prometheus
                .query(r#"up{job="rill"} == 1"#)
                .is_some_and(|r| r.len() == 3)
        },
    );

    // A group with committed offsets (its lag grows with the traffic).
    let client = cluster.client().await;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic {
            replication_factor: 3,
            ..NewTopic::new("watched", 3)
        })
        .await
        .unwrap();
    let committed: BTreeMap<(String, u32), u64> =
        (0..3).map(|p| (("watched".to_string(), p), 0)).collect();
    admin
        .reset_group_offsets("dashboard", &committed)
        .await
        .unwrap();
    // Live traffic for every panel while Prometheus scrapes (rates need increases between
    // scrapes): acks=all and acks=1 produce, a consumer, metadata requests.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn(live_traffic(client.clone(), stop.clone()));
    common::eventually(Duration::from_secs(60), "records consumed, scraped", || {
        prometheus
            .query(r#"sum(rate(rill_consumed_records_total[1m])) > 0"#)
            .is_some_and(|r| !r.is_empty())
    });
    // A broker dies: leaders move (elections), ISRs shrink, partitions are under-replicated.
    cluster.kill(3);
    common::eventually(Duration::from_secs(60), "elections scraped", || {
        prometheus
            .query(r#"sum(rill_leader_elections_total{kind="clean"}) > 0"#)
            .is_some_and(|r| !r.is_empty())
    });

    // The rate window spans the whole test, so every counter moved within it.
    let mut missing: Vec<String> = Vec::new();
    for (title, expr) in &expressions {
        let query = expr.replace("$__rate_interval", "5m");
        let found = common::eventually_value_sync(Duration::from_secs(30), || {
            prometheus
                .query(&query)
                .filter(|result| has_finite_sample(result))
        });
        if found.is_none() {
            missing.push(format!(
                "{title}: {query} -> {:?}",
                prometheus.query(&query)
            ));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(
        missing.is_empty(),
        "dashboard queries without data:\n{}",
        missing.join("\n")
    );
}

/// Produces (acks=all and acks=1), consumes and asks for metadata until `stop`; errors while a
/// broker is being killed are retried by the clients or skipped here.
async fn live_traffic(
    client: rill_client::Client,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let admin = Admin::new(client.clone());
    let all = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: rill_client::Acks::All,
            ..ProducerConfig::default()
        },
    );
    let leader = Producer::new(client.clone(), ProducerConfig::default());
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.assign_topic("watched").await.unwrap();
    let mut round = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for producer in [&all, &leader] {
            for i in 0..20 {
                let record = Record::new("watched")
                    .key(format!("k{i}"))
                    .value(format!("round {round}"));
                let _ = producer.send(record).await;
            }
            producer.flush().await;
        }
        let _ = consumer.poll(Duration::from_millis(200)).await;
        let _ = admin.describe_topic("watched").await;
        round += 1;
    }
}
