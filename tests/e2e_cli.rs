//! The `rill` binary against a real broker: topic create/describe/alter/delete, produce from
//! stdin, consume with --count, offsets as JSON, and clear errors with a non-zero exit code;
//! against a three-broker cluster: cluster info (alive/fenced, voters), replicas, ISR and high
//! watermarks, preferred leader election.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{cli_binary, BrokerProcess};

/// Starts `rill args` against `address` with piped stdin, stdout and stderr.
fn spawn_rill(address: &str, args: &[&str]) -> std::process::Child {
    Command::new(cli_binary())
        .args(args)
        .env("RILL_BROKERS", address)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn rill(address: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = spawn_rill(address, args);
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "rill failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn cli_creates_produces_consumes_and_reports_errors() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.address.as_str();
    ok(rill(
        address,
        &[
            "topic",
            "create",
            "cli",
            "--partitions",
            "2",
            "--config",
            "retention.ms=3600000",
        ],
        None,
    ));
    assert!(ok(rill(address, &["topic", "list"], None))
        .lines()
        .any(|l| l == "cli"));

    let input: String = (0..100)
        .map(|i| format!("user-{}|event {i}\n", i % 7))
        .collect();
    let produced = rill(
        address,
        &["produce", "cli", "--key-separator", "|"],
        Some(&input),
    );
    assert!(String::from_utf8_lossy(&produced.stderr).contains("produced 100 records"));
    ok(produced);

    let out = ok(rill(
        address,
        &[
            "consume",
            "cli",
            "--from-beginning",
            "--count",
            "100",
            "--format",
            "json",
        ],
        None,
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 100);
    assert!(lines
        .iter()
        .all(|l| l["key"].as_str().unwrap().starts_with("user-")
            && l["value"].as_str().unwrap().starts_with("event ")));

    let offsets: serde_json::Value = serde_json::from_str(&ok(rill(
        address,
        &["offsets", "cli", "--format", "json"],
        None,
    )))
    .unwrap();
    let total: u64 = offsets
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["latest"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 100);

    let describe = ok(rill(address, &["topic", "describe", "cli"], None));
    assert!(
        describe.contains("PARTITION") && describe.contains("LEADER"),
        "{describe}"
    );

    // Idle timeout ends a consume at the end of the log.
    let tail = ok(rill(
        address,
        &[
            "consume",
            "cli",
            "--partition",
            "0",
            "--offset",
            "0",
            "--timeout-ms",
            "500",
            "--format",
            "key-value",
        ],
        None,
    ));
    assert!(tail.lines().all(|l| l.contains('\t')));

    let missing = rill(address, &["consume", "nope", "--count", "1"], None);
    assert!(!missing.status.success());
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(
        message.contains("UNKNOWN_TOPIC_OR_PARTITION") && message.lines().count() == 1,
        "{message}"
    );

    ok(rill(address, &["topic", "delete", "cli"], None));
    assert!(
        !data.path().join("cli-0").exists(),
        "deleting a topic removes its data"
    );
}

#[test]
fn cli_group_commands() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.address.as_str();
    ok(rill(
        address,
        &["topic", "create", "gt", "--partitions", "2"],
        None,
    ));
    let input: String = (0..40).map(|i| format!("k{i}:v{i}\n")).collect();
    ok(rill(
        address,
        &["produce", "gt", "--key-separator", ":"],
        Some(&input),
    ));

    // Two runs of one group: the second starts where the first stopped (nothing twice, nothing
    // skipped). --from-beginning only applies to partitions without a committed offset.
    let first = ok(rill(
        address,
        &[
            "consume",
            "gt",
            "--group",
            "readers",
            "--from-beginning",
            "--count",
            "15",
        ],
        None,
    ));
    let second = ok(rill(
        address,
        &[
            "consume",
            "gt",
            "--group",
            "readers",
            "--from-beginning",
            "--timeout-ms",
            "3000",
        ],
        None,
    ));
    let mut all: Vec<&str> = first.lines().chain(second.lines()).collect();
    assert_eq!(
        all.len(),
        40,
        "first {} + second {}",
        first.lines().count(),
        second.lines().count()
    );
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40);

    assert!(ok(rill(address, &["group", "list"], None)).contains("readers"));
    let described: serde_json::Value = serde_json::from_str(&ok(rill(
        address,
        &["group", "describe", "readers", "--format", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(described["total_lag"], 0);

    ok(rill(
        address,
        &[
            "group",
            "reset-offsets",
            "readers",
            "--topic",
            "gt",
            "--to-earliest",
        ],
        None,
    ));
    let described: serde_json::Value = serde_json::from_str(&ok(rill(
        address,
        &["group", "describe", "readers", "--format", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(
        described["total_lag"], 40,
        "after a reset to earliest everything is lag again"
    );
    let no_target = rill(
        address,
        &["group", "reset-offsets", "readers", "--topic", "gt"],
        None,
    );
    assert!(!no_target.status.success());
    ok(rill(address, &["group", "delete", "readers"], None));
    assert!(!ok(rill(address, &["group", "list"], None)).contains("readers"));
}

#[test]
fn cli_shows_the_cluster_replicas_isr_and_moves_leaders_back() {
    let mut cluster = common::cluster::Cluster::start(3, &["--auto-leader-rebalance", "false"]);
    let bootstrap = cluster.bootstrap();
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&ok(rill(&bootstrap, args, None))).unwrap()
    };
    common::eventually(
        std::time::Duration::from_secs(30),
        "3 alive brokers",
        || {
            let info = json(&["cluster", "info", "--format", "json"]);
            info["brokers"]
                .as_array()
                .is_some_and(|b| b.len() == 3 && b.iter().all(|b| b["fenced"] == false))
        },
    );
    let info = json(&["cluster", "info", "--format", "json"]);
    assert_eq!(info["voters"], serde_json::json!([1, 2, 3]));
    assert!(info["controller"].is_u64());
    // The broker that takes the request may see the third broker a moment after the others.
    common::eventually(std::time::Duration::from_secs(30), "topic created", || {
        let create = [
            "topic",
            "create",
            "rep",
            "--partitions",
            "3",
            "--replicas",
            "3",
        ];
        rill(&bootstrap, &create, None).status.success()
    });
    ok(rill(
        &bootstrap,
        &["produce", "rep", "--acks", "all"],
        Some("a\nb\nc\n"),
    ));
    let describe = |bootstrap: &str| -> serde_json::Value {
        serde_json::from_str(&ok(rill(
            bootstrap,
            &["topic", "describe", "rep", "--format", "json"],
            None,
        )))
        .unwrap()
    };
    common::eventually(
        std::time::Duration::from_secs(30),
        "full ISR and HW 3",
        || {
            let d = describe(&bootstrap);
            let partitions = d["partitions"].as_array().unwrap().clone();
            partitions
                .iter()
                .all(|p| p["isr"].as_array().unwrap().len() == 3)
                && partitions
                    .iter()
                    .map(|p| p["latest_offset"].as_u64().unwrap_or(0))
                    .sum::<u64>()
                    == 3
        },
    );
    let table = ok(rill(&bootstrap, &["topic", "describe", "rep"], None));
    assert!(
        table.contains("HIGH WATERMARK") && table.contains("ISR"),
        "{table}"
    );

    // Node 1 dies: it shows as fenced and leads nothing.
    cluster.kill(1);
    let alive = cluster.address(2);
    common::eventually(std::time::Duration::from_secs(30), "node 1 fenced", || {
        let info = json(&["--brokers", &alive, "cluster", "info", "--format", "json"]);
        info["brokers"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["node_id"] == 1 && b["fenced"] == true))
    });
    let d = describe(&alive);
    assert!(d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["leader"] != 1));
    // It returns and catches up; leadership goes back on demand.
    cluster.restart(1);
    common::eventually(
        std::time::Duration::from_secs(30),
        "node 1 back in every ISR",
        || {
            describe(&alive)["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["isr"].as_array().unwrap().len() == 3)
        },
    );
    let moved = ok(rill(&alive, &["cluster", "rebalance-leaders"], None));
    assert!(moved.contains("moved"), "{moved}");
    common::eventually(
        std::time::Duration::from_secs(10),
        "preferred leaders everywhere",
        || {
            describe(&alive)["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["leader"] == p["replicas"][0])
        },
    );
    // Partitions can be added.
    ok(rill(
        &alive,
        &["topic", "alter", "rep", "--partitions", "5"],
        None,
    ));
    assert_eq!(describe(&alive)["partitions"].as_array().unwrap().len(), 5);
}

/// The CLI as a new user tries it (review of issue 9, item 10): output piped into `head` ends
/// quietly, a missing broker is reported within a second or two, and unkeyed lines spread over
/// the partitions.
#[test]
fn cli_behaves_like_a_unix_tool() {
    // No broker: a refused connection fails fast with the clear message.
    cli_binary(); // built before the clock starts
    let started = std::time::Instant::now();
    let output = rill("127.0.0.1:1", &["topic", "list"], None);
    let took = started.elapsed();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach any broker") && stderr.contains("is rill-broker running"),
        "{stderr}"
    );
    assert!(
        took < std::time::Duration::from_secs(5),
        "refused bootstrap reported after {took:?}"
    );

    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.address.as_str();
    ok(rill(
        address,
        &["topic", "create", "spread", "--partitions", "6"],
        None,
    ));
    let lines: String = (1..=60_000).map(|i| format!("{i}\n")).collect();
    ok(rill(address, &["produce", "spread"], Some(&lines)));
    let offsets: serde_json::Value = serde_json::from_str(&ok(rill(
        address,
        &["offsets", "spread", "--format", "json"],
        None,
    )))
    .unwrap_or(serde_json::Value::Null);
    eprintln!("offsets: {offsets}");
    let per_partition: Vec<u64> = offsets
        .as_array()
        .expect("offsets as a JSON array")
        .iter()
        .map(|p| p["latest"].as_u64().expect("latest offset"))
        .collect();
    assert_eq!(per_partition.iter().sum::<u64>(), 60_000);
    assert!(
        per_partition.len() == 6 && per_partition.iter().all(|n| *n >= 5_000),
        "unkeyed lines spread over every partition: {per_partition:?}"
    );
    let described = ok(rill(address, &["topic", "describe", "spread"], None));
    eprintln!("{described}");

    // Piped into a reader that stops after one line: no panic, no error message.
    let mut child = spawn_rill(
        address,
        &["consume", "spread", "--from-beginning", "--count", "60000"],
    );
    {
        use std::io::BufRead;
        let stdout = child.stdout.take().unwrap();
        let mut first = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        // The pipe's read end closes here.
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert!(
        output.status.success() || output.status.signal() == Some(13),
        "ends quietly on a closed pipe (exit 0 or SIGPIPE), not {:?}",
        output.status
    );
}
