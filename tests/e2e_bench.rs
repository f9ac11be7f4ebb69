//! `rill bench` against a real broker: argument errors before any connection, several
//! producers and consumers in one run with the JSON report's shape and exact counts, the
//! open-loop schedule (`--rate`) with a warm-up, values from a payload file, and `bench consume`.
//! These tests check what the bench does and reports, never how fast anything is.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{cli_binary, example_binary, rill_json, rill_output, BrokerProcess};
use rill_client::protocol::api::OffsetSpec;
use rill_client::Admin;
use serde_json::Value;

/// `rill bench args` against `brokers`, as it ran.
fn bench(brokers: &str, args: &[&str]) -> Output {
    Command::new(cli_binary())
        .arg("bench")
        .args(args)
        .env("RILL_BROKERS", brokers)
        .output()
        .expect("run rill bench")
}

/// `rill bench args --format json`: its report.
fn bench_json(brokers: &str, args: &[&str]) -> Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    rill_json(brokers, &all)
}

/// [`bench_json`] off the test's runtime threads (the bench blocks until its run is over).
async fn bench_report(brokers: &str, args: &[&str]) -> Value {
    let brokers = brokers.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench_json(&brokers, &args)
    })
    .await
    .expect("rill bench ran")
}

/// Records in `topic`: the sum of its partitions' log end offsets.
async fn records_in(address: &str, topic: &str) -> u64 {
    let admin = Admin::new(common::client(address).await);
    admin
        .list_offsets(topic, OffsetSpec::Latest)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, end)| end.unwrap_or(0))
        .sum()
}

fn assert_percentiles(latency: &Value, samples: u64, what: &str) {
    assert_eq!(latency["samples"], samples, "{what}: {latency}");
    let p = |name: &str| {
        latency[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: {name} in {latency}"))
    };
    assert!(p("p50_ms") > 0.0, "{what}: {latency}");
    assert!(p("p50_ms") <= p("p90_ms"), "{what}: {latency}");
    assert!(p("p90_ms") <= p("p99_ms"), "{what}: {latency}");
    assert!(p("p99_ms") <= p("p99.9_ms"), "{what}: {latency}");
    assert!(p("p99.9_ms") <= p("max_ms"), "{what}: {latency}");
}

#[test]
fn bench_refuses_bad_arguments_before_connecting() {
    // Nothing listens on port 9: each mistake must be reported before a connection is tried.
    let nowhere = "127.0.0.1:9";
    let payload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(payload.path(), "\n\r\n").unwrap();
    let empty_file = payload.path().to_str().unwrap();
    let cases: [(&[&str], &str); 13] = [
        (&["produce", "--rate", "0"], "--rate"),
        (&["produce", "--max-in-flight", "6"], "--max-in-flight"),
        (&["produce", "--buffer-memory", "0"], "--buffer-memory"),
        (&["produce", "--threads", "0"], "--threads"),
        (&["produce", "--producers", "0"], "--producers"),
        (&["produce", "--warmup-secs=-1"], "--warmup-secs"),
        (&["produce", "--duration-secs", "0"], "--duration-secs"),
        (
            &[
                "produce",
                "--payload-file",
                "/nonexistent/values",
                "--size",
                "8",
            ],
            "cannot be used with",
        ),
        (
            &["produce", "--payload-file", "/nonexistent/values"],
            "payload file /nonexistent/values",
        ),
        (
            &["produce", "--payload-file", empty_file],
            "no non-empty line",
        ),
        (
            &["produce", "--rate", "2", "--producers", "3"],
            "--rate must be at least --producers",
        ),
        (
            &["produce", "--pinned", "--keys", "random"],
            "cannot be used with",
        ),
        (
            &["consume", "--partition-max-bytes", "0"],
            "--partition-max-bytes",
        ),
    ];
    for (args, expected) in cases {
        let output = bench(nowhere, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("connect"),
            "{args:?} tried to connect: {stderr}"
        );
    }
    let output = bench(nowhere, &["produce", "--consumers", "1", "--acks", "0"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("--acks 1 or all"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_producers_and_consumers_and_reports_exact_counts() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.address.clone();
    let report = bench_report(
        &address,
        &[
            "produce",
            "--topic",
            "b",
            "--partitions",
            "4",
            "--messages",
            "3000",
            "--size",
            "200",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--keys",
            "sequential",
            "--threads",
            "3",
            "--buffer-memory",
            "1048576",
        ],
    )
    .await;
    assert_eq!(report["bench"], "produce", "{report}");
    assert_eq!(report["topic"], "b");
    assert_eq!(report["clients"], 2);
    assert_eq!(report["mode"], "max");
    assert_eq!(report["target_records_per_sec"], Value::Null);
    assert_eq!(report["records"], 3000);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["first_error"], Value::Null);
    // Each producer sends 1,500 records keyed 0..999 then 0..499: 4,280 key bytes.
    assert_eq!(report["bytes"], 3000 * 200 + 2 * 4280);
    assert!(report["records_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["mb_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(report["latency_of"], "send to acknowledgement");
    assert_percentiles(&report["latency"], 3000, "produce latency");
    let e2e = &report["end_to_end"];
    assert_eq!(e2e["consumers"], 2, "{report}");
    assert_eq!(e2e["records"], 3000);
    assert_eq!(e2e["missing"], 0);
    assert_eq!(e2e["latency_of"], "send to receipt by a consumer");
    assert_percentiles(&e2e["latency"], 3000, "end-to-end latency");
    assert_eq!(records_in(&address, "b").await, 3000);

    // The table format says the same in words.
    let table = tokio::task::spawn_blocking({
        let address = address.clone();
        move || {
            rill_output(
                &address,
                &[
                    "bench",
                    "produce",
                    "--topic",
                    "b",
                    "--messages",
                    "500",
                    "--consumers",
                    "1",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(table.contains("produce b: 500 records"), "{table}");
    assert!(
        table.contains("end to end (1 consumers, 500 records, 0 missing)"),
        "{table}"
    );

    // bench consume reads everything from the beginning, here 4 KiB per partition per fetch
    // (about 20 of these records).
    let consumed = bench_report(
        &address,
        &[
            "consume",
            "--topic",
            "b",
            "--consumers",
            "3",
            "--partition-max-bytes",
            "4096",
        ],
    )
    .await;
    assert_eq!(consumed["bench"], "consume", "{consumed}");
    assert_eq!(consumed["clients"], 3);
    assert_eq!(consumed["records"], 3500);
    assert_eq!(consumed["end_to_end"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_at_a_fixed_rate_sends_exactly_its_schedule_and_skips_the_warmup() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.address.clone();
    // 400 records/s from 2 producers for 1 s of warm-up and 2 s measured: the schedule holds
    // records 0..1200, however fast or slow the machine, since a producer that falls behind
    // sends late rather than skipping.
    let report = bench_report(
        &address,
        &[
            "produce",
            "--topic",
            "r",
            "--partitions",
            "2",
            "--size",
            "64",
            "--rate",
            "400",
            "--producers",
            "2",
            "--warmup-secs",
            "1",
            "--duration-secs",
            "2",
            "--consumers",
            "1",
        ],
    )
    .await;
    assert_eq!(report["mode"], "rate", "{report}");
    assert_eq!(report["target_records_per_sec"], 400);
    assert_eq!(report["warmup_secs"], 1.0);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["latency_of"], "scheduled send to acknowledgement");
    assert_eq!(records_in(&address, "r").await, 1200);
    // Only records scheduled after the warm-up count: 800, less the one or two at its edge
    // that may have gone a little early.
    let samples = report["latency"]["samples"].as_u64().unwrap();
    assert!((795..=800).contains(&samples), "{report}");
    // Acknowledgements after the warm-up: those 800, and those of warm-up records that came
    // back after it (a few, or more on a loaded machine).
    let records = report["records"].as_u64().unwrap();
    assert!((795..=1200).contains(&records), "{report}");
    let e2e = &report["end_to_end"];
    assert_eq!(e2e["missing"], 0, "{report}");
    assert_eq!(e2e["latency_of"], "scheduled send to receipt by a consumer");
    let e2e_samples = e2e["latency"]["samples"].as_u64().unwrap();
    assert!((795..=800).contains(&e2e_samples), "{report}");
}

/// A record the brokers refuse ends the run: no sender offers another record after the first
/// failure (here every one would fail: 100 kB records against a 64 KiB batch limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_stops_sending_at_the_first_failed_record() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &["--max-batch-bytes", "65536"]);
    let address = broker.address.clone();
    let run = {
        let address = address.clone();
        tokio::task::spawn_blocking(move || {
            bench(
                &address,
                &[
                    "produce",
                    "--topic",
                    "refused",
                    "--messages",
                    "20000",
                    "--size",
                    "100000",
                    "--format",
                    "json",
                ],
            )
        })
        .await
        .unwrap()
    };
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "a failed record fails the run: {stderr}"
    );
    assert!(stderr.contains("records failed"), "{stderr}");
    let report: Value = serde_json::from_slice(&run.stdout).expect("the report is printed");
    let errors = report["errors"].as_u64().unwrap();
    // What was queued or in flight when the first failure came back (32 MiB of buffer
    // memory: about 330 records), not the 20,000 asked for.
    assert!((1..=1000).contains(&errors), "{report}");
    let first = report["first_error"].as_str().unwrap();
    assert!(first.contains("MESSAGE_TOO_LARGE"), "{report}");
    assert_eq!(report["records"], 0, "{report}");
    assert_eq!(records_in(&address, "refused").await, 0);
}

/// A broker that vanishes mid-run: the bench fails once the first record's delivery timeout
/// has passed, and gives up at once on what it had queued (`Producer::abort`). Before, the
/// batches it queued after that first failure waited out a delivery timeout of their own, so
/// the run took at least two (243 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_gives_up_on_a_vanished_broker_after_one_delivery_timeout() {
    const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
    let data = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.address.clone();
    let run = Command::new(cli_binary())
        .args([
            "bench",
            "produce",
            "--topic",
            "vanish",
            "--messages",
            "100000000",
            "--size",
            "1024",
            "--format",
            "json",
            "--delivery-timeout-ms",
            &DELIVERY_TIMEOUT.as_millis().to_string(),
        ])
        .env("RILL_BROKERS", &address)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rill bench");
    let admin = Admin::new(common::client(&address).await);
    let admin = &admin;
    common::eventually_async(
        Duration::from_secs(60),
        "records written",
        move || async move {
            admin
                .list_offsets("vanish", OffsetSpec::Latest)
                .await
                .is_ok_and(|ends| ends.iter().any(|(_, end)| end.unwrap_or(0) > 0))
        },
    )
    .await;
    broker.kill9();
    let killed = Instant::now();
    let out = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .expect("rill bench ran");
    let took = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("the report is printed");
    assert!(report["errors"].as_u64().unwrap() > 0, "{report}");
    let first = report["first_error"].as_str().unwrap();
    assert!(first.contains("timed out after 5s"), "{report}");
    // One delivery timeout and the retry backoff, not two timeouts.
    assert!(
        took < DELIVERY_TIMEOUT * 2 - Duration::from_millis(500),
        "the bench ended {took:?} after the broker was killed: {report}"
    );
}

/// `--pinned`: producer i writes only to partition i modulo the partitions (iggy-bench's
/// pinned producers), here 3 producers into 4 partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_producers_each_write_their_own_partition() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.address.clone();
    let report = bench_report(
        &address,
        &[
            "produce",
            "--topic",
            "pinned",
            "--partitions",
            "4",
            "--messages",
            "3001",
            "--size",
            "100",
            "--producers",
            "3",
            "--pinned",
        ],
    )
    .await;
    assert_eq!(report["records"], 3001, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let mut ends = Admin::new(common::client(&address).await)
        .list_offsets("pinned", OffsetSpec::Latest)
        .await
        .unwrap();
    ends.sort();
    let ends: Vec<u64> = ends.into_iter().map(|(_, end)| end.unwrap_or(0)).collect();
    assert_eq!(ends, [1001, 1000, 1000, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_takes_values_from_a_payload_file_in_order() {
    let data = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(data.path(), &[]);
    let address = broker.address.clone();
    let payload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(payload.path(), "alpha\nbeta\r\n\n{\"n\":3}\n").unwrap();
    let path = payload.path().to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        let report = bench_json(
            &address,
            &[
                "produce",
                "--topic",
                "f",
                "--messages",
                "7",
                "--payload-file",
                &path,
            ],
        );
        assert_eq!(report["records"], 7, "{report}");
        assert_eq!(report["bytes"], 3 * 5 + 2 * 4 + 2 * 7);
        rill_output(
            &address,
            &["consume", "f", "--from-beginning", "--count", "7"],
        )
    })
    .await
    .unwrap();
    let values: Vec<&str> = out.lines().collect();
    assert_eq!(
        values,
        [
            "alpha",
            "beta",
            "{\"n\":3}",
            "alpha",
            "beta",
            "{\"n\":3}",
            "alpha"
        ],
        "{out}"
    );
}

/// `peers_table.py` over the rounds' report directories, writing into `out`: the table.
fn peer_table(rounds: &[std::path::PathBuf], out: &std::path::Path) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("python3")
        .arg(format!("{root}/benches/scripts/peers_table.py"))
        .args(rounds)
        .arg(out)
        .output()
        .expect("python3 is not installed: run tests/install-test-tools.sh");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(out.join("table.md")).unwrap()
}

/// The peer table from several rounds: each figure is the median of the rounds that have it
/// (three rounds: the middle one; two: their mean), and the ratio is taken between medians.
#[test]
fn the_peer_table_takes_the_median_of_the_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let report = |mb: f64| {
        format!(
            r#"{{"bench": "produce", "records": 1000, "bytes": 1000000, "records_per_sec": {}, "mb_per_sec": {mb}}}"#,
            mb * 1000.0
        )
    };
    let mut rounds = Vec::new();
    for (round, rill, nats) in [
        (1, 100.0, Some(50.0)),
        (2, 300.0, None),
        (3, 200.0, Some(150.0)),
    ] {
        let results = dir.path().join(format!("round-{round}"));
        std::fs::create_dir(&results).unwrap();
        std::fs::write(results.join("produce-1k.rill.json"), report(rill)).unwrap();
        if let Some(nats) = nats {
            std::fs::write(results.join("produce-1k.nats.json"), report(nats)).unwrap();
        }
        rounds.push(results);
    }
    let table = peer_table(&rounds, dir.path());
    assert!(
        table.starts_with("Every figure is the median of 3 rounds"),
        "{table}"
    );
    assert!(
        table.contains("| 1 producer x 1 KiB, MB/s | 200 | 100 | not run | not run | 2.00x |"),
        "{table}"
    );
    // No loopback measurement: the targets say so rather than inventing a ratio.
    assert!(table.contains("loopback TCP not measured"), "{table}");
}

/// Issue 14's targets in the peer table: Rill's figures against loopback TCP (the median of
/// iperf3's measurements over the rounds), its own single-node rate and fixed limits, each
/// marked met or not.
#[test]
fn the_peer_table_checks_the_targets_against_loopback_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir(&results).unwrap();
    let report = |mb: f64, rps: f64, p99: f64| {
        format!(
            r#"{{"bench": "produce", "records": 1000, "bytes": 1000000, "records_per_sec": {rps}, "mb_per_sec": {mb},
               "latency": {{"p50_ms": 1.0, "p90_ms": 1.5, "p99_ms": {p99}, "p99.9_ms": 30.0, "max_ms": 40.0}}}}"#
        )
    };
    let iperf3 = |gbit: f64| {
        format!(
            r#"{{"end": {{"sum_received": {{"bits_per_second": {}}}}}}}"#,
            gbit * 1e9
        )
    };
    for (name, text) in [
        ("loopback-start.json", iperf3(19.0)),
        ("loopback-end.json", iperf3(21.0)),
        ("produce-1k.rill.json", report(1300.0, 1.3e6, 3.0)),
        ("produce-1k.nats.json", report(1400.0, 1.4e6, 3.0)),
        ("produce-100.rill.json", report(400.0, 4.0e6, 3.0)),
        ("consume.rill.json", report(2000.0, 2.0e6, 3.0)),
        ("rate-half.rill.json", report(150.0, 1.5e5, 4.0)),
        ("replicated-1k.rill.json", report(650.0, 6.5e5, 8.0)),
        (
            "replication-bound.json",
            r#"{"bytes": 1000000, "chunk": 262144, "rounds": 1,
                "single": {"mb_per_sec": 1500.0, "cpu_secs_per_gb": 0.8, "ratio_to_single": 1.0},
                "three": {"mb_per_sec": 600.0, "cpu_secs_per_gb": 2.4, "ratio_to_single": 0.4},
                "three-zero-copy": {"mb_per_sec": 750.0, "cpu_secs_per_gb": 1.7, "ratio_to_single": 0.5}}"#
                .to_string(),
        ),
    ] {
        std::fs::write(results.join(name), text).unwrap();
    }
    let table = peer_table(&[results], dir.path());
    for line in [
        "against loopback TCP at 2,500 MB/s",
        "| 1 producer x 1 KiB, at least 0.5x loopback TCP | 1,300 MB/s = 0.52x | met |",
        "| 1 producer x 100 B, at least 2M records/s | 4.00M records/s | met |",
        "| consume from the page cache, at least 0.7x loopback TCP | 2,000 MB/s = 0.80x | met |",
        "produce p99 under 5 ms | 4.00 ms | met |",
        "produce p99.9 under 20 ms | 30.00 ms | **not met** |",
        "| 3 brokers, x3, acks=all, burst: at least 0.4x one broker | 0.50x | met |",
        "| 3 brokers, x3, acks=all, sustained: at least 0.4x one broker | - | not run |",
        "| ahead of the best peer on every throughput row | behind on 1 of 1: produce 1 x 1 KiB 0.93x | **not met** |",
        "one node 1,500 MB/s, three 600 MB/s copying (0.40x) and 750 MB/s with sendfile + splice (0.50x)",
    ] {
        assert!(table.contains(line), "no `{line}` in:\n{table}");
    }
}

/// The peer benchmark's script in dry-run mode (no peer installed, nothing started): it must
/// parse its arguments and print the whole plan, every system and workload, so it does not rot
/// between the runs that measure.
#[test]
fn the_peer_benchmark_script_prints_its_whole_plan_in_a_dry_run() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tempfile::tempdir().unwrap();
    let output = Command::new("bash")
        .arg(format!("{root}/benches/scripts/peers.sh"))
        .args(["--dry-run", "--out"])
        .arg(out.path())
        .env("IGGY_SERVER", "/opt/iggy/iggy-server")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}\n{stdout}");
    for system in ["rill", "nats", "redis", "iggy"] {
        for workload in ["produce-1k", "consume", "produce-100", "produce-4x1k"] {
            let file = format!("{workload}.{system}");
            assert!(
                stdout.contains(&file)
                    || (system == "iggy" && stdout.contains(&format!("/iggy/{workload}.iggy"))),
                "no {file} in the plan:\n{stdout}"
            );
        }
    }
    for expected in [
        "rate-half.rill.json",
        "--rate 100000 --warmup-secs 3 --duration-secs 20 --consumers 1",
        "replicated-1k.rill.json",
        "--replicas 3 --acks all",
        "replicated-1k.nats.json",
        "sustain-1k.rill.json",
        "sustain-1k.nats.json",
        "--warmup-secs 3 --duration-secs 20 > ",
        "--consumers 1 --send-when-idle > ",
        "--producers 4 --partitions 4 --messages 2000000 --format json --pinned > ",
        "replicated-sustain.rill.json",
        "replicated-sustain.nats.json",
        "replicated-rate.rill.json",
        "replicated-rate.nats.json",
        "--appendfsync everysec",
        "--flush interval:1000",
        "/opt/iggy/iggy-bench -m 1024 -P 1000 -b 1000 pinned-producer --producers 1",
        "peers_table.py",
        "peers.gnuplot",
        "/rill-peers-recycle bs=1M count=",
        "iperf3 -s -p 15201 &",
        "results/loopback-start.json",
        "results/loopback-end.json",
        "cargo build --release -q --example replication_bound",
        "--rounds 1 --recycle-mib 6144 --dir ",
        "results/replication-bound.json",
    ] {
        assert!(
            stdout.contains(expected),
            "no `{expected}` in the plan:\n{stdout}"
        );
    }
    // Nothing was started or written besides the output directory itself.
    assert!(!out.path().join("results").exists());
    // Every measured workload meets recycled memory, unless told otherwise (loopback TCP
    // is not a workload; the replication bound recycles before each of its pipelines).
    let measured = stdout.matches(" > ").count() + stdout.matches("iggy-bench -m").count()
        - stdout.matches("/loopback-").count()
        - stdout.matches("/replication-bound.json").count();
    assert_eq!(
        stdout.matches("/rill-peers-recycle bs=1M").count(),
        measured,
        "{stdout}"
    );
    let cold = Command::new("bash")
        .arg(format!("{root}/benches/scripts/peers.sh"))
        .args(["--dry-run", "--cold-memory", "--out"])
        .arg(out.path())
        .output()
        .expect("run bash");
    assert!(cold.status.success());
    let cold = String::from_utf8_lossy(&cold.stdout);
    assert!(!cold.contains("rill-peers-recycle"), "{cold}");
    assert!(cold.contains("--recycle-mib 0 "), "{cold}");
    // Rounds: every system measured once per round, each round's reports in a directory of
    // its own, and the table made from all of them (the median of each figure).
    let rounds = Command::new("bash")
        .arg(format!("{root}/benches/scripts/peers.sh"))
        .args(["--dry-run", "--rounds", "2", "--no-cluster", "--out"])
        .arg(out.path())
        .output()
        .expect("run bash");
    assert!(rounds.status.success());
    let plan = String::from_utf8_lossy(&rounds.stdout);
    assert!(!plan.contains("replication_bound"), "{plan}");
    let results = out.path().join("results");
    for round in ["round-1", "round-2"] {
        for system in ["rill", "nats", "redis"] {
            let report = results
                .join(round)
                .join(format!("produce-1k.{system}.json"));
            assert!(
                plan.contains(&format!("> {}", report.display())),
                "no {} in the plan:\n{plan}",
                report.display()
            );
        }
    }
    let table = format!(
        "peers_table.py {} {} {}",
        results.join("round-1").display(),
        results.join("round-2").display(),
        out.path().display()
    );
    assert!(plan.contains(&table), "no `{table}` in the plan:\n{plan}");
    for rounds in ["0", "two"] {
        let refused = Command::new("bash")
            .arg(format!("{root}/benches/scripts/peers.sh"))
            .args(["--dry-run", "--rounds", rounds])
            .output()
            .expect("run bash");
        assert_eq!(refused.status.code(), Some(2), "--rounds {rounds}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--rounds wants a whole number"));
    }
    let bad = Command::new("bash")
        .arg(format!("{root}/benches/scripts/peers.sh"))
        .args(["--dry-run", "--systems", "kafka"])
        .output()
        .expect("run bash");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown system kafka"));
}

/// The machine's bound for three brokers (`examples/replication_bound.rs`), on 16 MB: it runs
/// every pipeline, each with every process it needs, and reports each one's rate, CPU and
/// ratio to the single node; a bad argument fails before anything starts.
#[test]
fn the_replication_bound_runs_every_pipeline_and_reports_it() {
    let exe = example_binary("replication_bound");
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(&exe)
        .args(["--bytes", "16000000", "--format", "json", "--dir"])
        .arg(dir.path().join("scratch"))
        .output()
        .expect("run replication_bound");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["bytes"], 16_000_000);
    for pipeline in [
        "single",
        "three",
        "three-zero-copy",
        "three-splice",
        "three-sendfile",
    ] {
        let p = &report[pipeline];
        assert!(p["mb_per_sec"].as_f64().unwrap() > 0.0, "{report}");
        assert!(p["cpu_secs_per_gb"].as_f64().unwrap() > 0.0, "{report}");
    }
    assert_eq!(report["single"]["ratio_to_single"], 1.0);
    // Each pipeline's files are removed after it, and nothing else.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("scratch"))
        .expect("--dir itself stays")
        .collect();
    assert!(left.is_empty(), "{left:?}");

    for (args, says) in [
        (["--chunk", "0"], "--chunk"),
        (["--format", "yaml"], "--format is text or json"),
    ] {
        let refused = Command::new(&exe)
            .args(args)
            .output()
            .expect("run replication_bound");
        assert!(!refused.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains(says),
            "{args:?}"
        );
    }
}
