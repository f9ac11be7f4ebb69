//! The fault suite (docs/TESTING.md): a three-broker cluster, each broker in its own network
//! namespace with its data directory on its own small tmpfs; workloads (appends, a consumer
//! group, topic creation and deletion) that record every operation in a history; a nemesis
//! that partitions, kills, pauses and fills disks on a schedule drawn from a seed; then a
//! heal, a recovery phase, a final read of every partition and every replica's log, and a
//! checker that finds anomalies from those files alone.
//!
//! - `cargo test --test fault` runs the short schedules CI runs (`RILL_FAULT_SEEDS`,
//!   `RILL_FAULT_SECS` change them);
//! - `RILL_FAULT_RUNS=100 RILL_FAULT_SECS=300 cargo test --release --test fault campaign --
//!   --ignored --nocapture` runs a campaign of randomized runs (`RILL_FAULT_SEED` sets the
//!   first seed; with `RILL_FAULT_RUNS=1` it repeats one);
//! - `RILL_FAULT_CHECK=<dir> cargo test --test fault recheck_a_run -- --ignored --nocapture`
//!   checks a run's directory again.
//!
//! Each run writes `history.jsonl`, `final.jsonl`, `report.txt`, the brokers' logs
//! (`node-N.log`) and the clients' (`clients.log`) into `target/tmp/fault/seed-<seed>/` (or `$RILL_FAULT_OUT/seed-<seed>/`).

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod history;
mod nemesis;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::tmpfs::Tmpfs;
use history::{Event, History, Type};
use rill_client::{Admin, Consumer, ConsumerConfig, NewTopic};
use workload::{PARTITIONS, TOPIC};

/// Brokers in the cluster.
const NODES: usize = 3;
/// Size of each broker's tmpfs: room for the run's data several times over, small enough to
/// fill in a moment.
const DISK_MIB: u64 = 96;
/// Producers of the append workload, and the time between two sends of one producer.
const PRODUCERS: u32 = 2;
const SEND_EVERY: Duration = Duration::from_millis(2);
/// Member slots of the group workload.
const MEMBERS: u32 = 3;
/// How long the workload runs on after the last heal (see `checker`'s no-recovery).
const RECOVERY: Duration = Duration::from_secs(10);
/// How long the cluster gets to return to full health after the last heal.
const CONVERGE: Duration = Duration::from_secs(60);

/// Where a run's files go.
fn out_dir(seed: u64) -> PathBuf {
    let base = std::env::var_os("RILL_FAULT_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault"));
    base.join(format!("seed-{seed}"))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// Where the clients' (`rill_client`'s) log lines go: the current run's `clients.log`.
static CLIENT_LOG: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// Sends the clients' INFO and higher log lines to `path` (from now until the next call).
fn log_clients_to(path: &Path) {
    struct ClientLog;
    impl std::io::Write for ClientLog {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut file = CLIENT_LOG.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(file) = file.as_mut() {
                file.write_all(buf)?;
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let file = std::fs::File::create(path).expect("create clients.log");
    *CLIENT_LOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("rill_client=info"))
            .with_ansi(false)
            .with_writer(|| ClientLog)
            .try_init();
    });
}

/// Watches broker processes for deaths and panics the nemesis did not cause, and copies their
/// logs into the run's directory (`node-N.log`).
struct Watch {
    /// Per node: (pid, log lines already looked at).
    seen: Vec<(u32, usize)>,
    dir: PathBuf,
}

impl Watch {
    fn new(dir: &Path) -> Watch {
        Watch {
            seen: vec![(0, 0); NODES],
            dir: dir.to_owned(),
        }
    }

    /// Copies node `node`'s log lines since the last look into `node-N.log`, records a crash
    /// event for a panic among them.
    fn copy(&mut self, node: u32, broker: &mut common::BrokerProcess, history: &History) {
        use std::io::Write;
        let i = node as usize - 1;
        if self.seen[i].0 != broker.pid() {
            self.seen[i] = (broker.pid(), 0);
        }
        let log = broker.drain_log();
        let path = self.dir.join(format!("node-{node}.log"));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open a broker log copy");
        for line in &log[self.seen[i].1..] {
            writeln!(file, "{line}").expect("copy a broker log line");
            if line.contains("panicked") {
                history.record(
                    Event::new("harness", Type::Info, "crash")
                        .value(format!("node {node}"))
                        .error(format!("panic: {line}")),
                );
            }
        }
        self.seen[i].1 = log.len();
    }

    /// [`Watch::copy`] for every broker; records a crash event for every broker that died
    /// (and restarts it); `down` are the nodes the nemesis stopped.
    fn scan(&mut self, cluster: &mut Cluster, down: &[u32], history: &History) {
        for node in 1..=NODES as u32 {
            let i = node as usize - 1;
            let Some(broker) = cluster.brokers[i].as_mut() else {
                continue;
            };
            self.copy(node, broker, history);
            if !down.contains(&node) && !broker.is_running() {
                let log = &broker.log;
                let tail = log[log.len().saturating_sub(5)..].join(" | ");
                history.record(
                    Event::new("harness", Type::Info, "crash")
                        .value(format!("node {node}"))
                        .error(format!("exited on its own; last lines: {tail}")),
                );
                cluster.brokers[i] = None;
                cluster.start_node(node);
            }
        }
    }
}

/// The active controller and the leader of partition `partition`, as the cluster says now.
async fn targets(admin: &Admin, partition: u32) -> (Option<u32>, Option<u32>) {
    let wait = Duration::from_secs(3);
    let controller = tokio::time::timeout(wait, admin.cluster())
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|c| c.controller);
    let leader = tokio::time::timeout(wait, admin.describe_topic(TOPIC))
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|ps| ps.into_iter().find(|p| p.partition == partition))
        .and_then(|p| p.leader);
    (controller, leader)
}

/// Runs the nemesis schedule (blocking: it runs commands and sleeps through the schedule).
fn run_nemesis(
    cluster: &mut Cluster,
    disks: &[Tmpfs],
    steps: Vec<nemesis::Step>,
    admin: &Admin,
    history: &History,
    watch: &mut Watch,
) -> nemesis::Nemesis {
    let runtime = tokio::runtime::Handle::current();
    let mut nemesis = nemesis::Nemesis::new(NODES);
    for step in steps {
        std::thread::sleep(step.quiet);
        watch.scan(cluster, &nemesis.down(), history);
        for (kind, pick) in step.faults {
            let (controller, leader) =
                runtime.block_on(targets(admin, (pick % u64::from(PARTITIONS)) as u32));
            if let Some(what) = nemesis.apply(cluster, disks, kind, pick, controller, leader) {
                eprintln!("nemesis: {}: {what}", kind.name());
                history.record(
                    Event::new("nemesis", Type::Invoke, "fault")
                        .value(format!("{}: {what}", kind.name())),
                );
            }
        }
        std::thread::sleep(step.hold);
        watch.scan(cluster, &nemesis.down(), history);
        let healed = nemesis.heal(cluster, disks);
        if !healed.is_empty() {
            eprintln!("nemesis: {}", healed.join(", "));
            history.record(Event::new("nemesis", Type::Ok, "heal").value(healed.join(", ")));
        }
    }
    watch.scan(cluster, &[], history);
    nemesis
}

/// High watermarks at the end: topic -> one per partition.
type Hws = std::collections::BTreeMap<String, Vec<u64>>;

/// Waits for every partition of every workload topic to have a leader, all replicas in sync
/// and the high watermark at the log end; returns the high watermarks, or why not.
async fn converge(admin: &Admin) -> Result<Hws, String> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let last = match healthy(admin).await {
            Ok(Ok(hws)) => return Ok(hws),
            Ok(Err(why)) | Err(why) => why,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "not healthy {CONVERGE:?} after the last heal: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The high watermarks if every workload topic is healthy (`Ok(Err(why))` if one is not).
async fn healthy(admin: &Admin) -> Result<Result<Hws, String>, String> {
    let topics = admin.list_topics().await.map_err(|e| e.to_string())?;
    let mut hws = Hws::new();
    for topic in topics.iter().filter(|t| !t.starts_with("__")) {
        let partitions = admin
            .describe_topic(topic)
            .await
            .map_err(|e| format!("{topic}: {e}"))?;
        let ok = partitions.iter().all(|p| {
            p.leader.is_some()
                && p.isr.len() == NODES
                && p.latest_offset.is_some()
                && p.latest_offset == p.log_end_offset
        });
        if !ok {
            return Ok(Err(format!("{topic}: {partitions:?}")));
        }
        let mut partitions = partitions;
        partitions.sort_by_key(|p| p.partition);
        hws.insert(
            topic.clone(),
            partitions
                .iter()
                .map(|p| p.latest_offset.unwrap_or(0))
                .collect(),
        );
    }
    if !hws.contains_key(TOPIC) {
        return Ok(Err(format!("{TOPIC} is missing")));
    }
    Ok(Ok(hws))
}

/// Reads every partition from offset 0 up to its high watermark through a client.
async fn final_read(bootstrap: &str, hws: &Hws) -> Result<Vec<checker::LogLine>, String> {
    let mut consumer = Consumer::new(workload::client(bootstrap).await, ConsumerConfig::default());
    consumer.assign(
        hws.iter()
            .flat_map(|(t, ps)| (0..ps.len() as u32).map(move |p| (t.clone(), p))),
    );
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = |consumer: &Consumer| {
        hws.iter().all(|(t, ps)| {
            ps.iter()
                .enumerate()
                .all(|(p, hw)| consumer.position(t, p as u32).unwrap_or(0) >= *hw)
        })
    };
    while !done(&consumer) {
        if Instant::now() > deadline {
            return Err("the final read did not reach the high watermarks in 60 s".into());
        }
        match consumer.poll(Duration::from_millis(500)).await {
            Ok(records) => lines.extend(
                records
                    .into_iter()
                    .filter(|r| r.offset < hws[&*r.topic][r.partition as usize])
                    .map(|r| checker::LogLine {
                        source: "read".into(),
                        topic: r.topic.to_string(),
                        partition: r.partition,
                        offset: r.offset,
                        value: r.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                        producer: None,
                    }),
            ),
            Err(e) => eprintln!("final read: {e}"),
        }
    }
    Ok(lines)
}

/// A last group member processes everything left up to the high watermarks and commits;
/// returns the group's committed offsets then (`committed` lines).
async fn drain(
    bootstrap: &str,
    admin: &Admin,
    history: &History,
    hws: &Hws,
) -> Result<Vec<checker::LogLine>, String> {
    let hws = &hws[TOPIC];
    let client = workload::client(bootstrap).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reached = false;
    workload::member(&client, "drain", history, |consumer| {
        reached = (0..PARTITIONS).all(|p| {
            consumer
                .position(TOPIC, p)
                .is_some_and(|o| o >= hws[p as usize])
        });
        reached || Instant::now() > deadline
    })
    .await;
    if !reached {
        return Err("the last group member did not reach the high watermarks in 60 s".into());
    }
    let committed = admin
        .group_offsets(workload::GROUP)
        .await
        .map_err(|e| format!("the group's committed offsets: {e}"))?;
    Ok(committed
        .into_iter()
        .map(|((topic, partition), offset)| checker::LogLine {
            source: "committed".into(),
            topic,
            partition,
            offset,
            value: None,
            producer: None,
        })
        .collect())
}

/// Replica `node`'s records of `partition` below `hw`, read from its data directory.
fn replica_log(
    dir: &Path,
    node: u32,
    topic: &str,
    partition: u32,
    hw: u64,
) -> Result<Vec<checker::LogLine>, String> {
    let dir = dir.join(format!("{topic}-{partition}"));
    let mut log = rill_broker::log::Log::open(&dir, rill_broker::log::LogConfig::default())
        .map_err(|e| format!("node {node}: open {}: {e}", dir.display()))?;
    let mut lines = Vec::new();
    let mut offset = 0;
    while offset < hw {
        let chunk = log
            .read(offset, 1 << 20)
            .map_err(|e| format!("node {node}: read {}: {e}", dir.display()))?;
        if chunk.is_empty() {
            break;
        }
        for batch in rill_protocol::batch::batches(chunk) {
            let batch = batch.map_err(|e| format!("node {node}: {e}"))?;
            for record in batch.records().map_err(|e| format!("node {node}: {e}"))? {
                let record = record.map_err(|e| format!("node {node}: {e}"))?;
                if record.offset < hw {
                    lines.push(checker::LogLine {
                        source: format!("node-{node}"),
                        topic: topic.into(),
                        partition,
                        offset: record.offset,
                        value: record
                            .value
                            .map(|v| String::from_utf8_lossy(&v).into_owned()),
                        producer: Some(format!(
                            "{}/{}/{}",
                            batch.producer_id(),
                            batch.producer_epoch(),
                            batch.base_sequence()
                        )),
                    });
                }
            }
            offset = batch.last_offset() as u64 + 1;
        }
    }
    Ok(lines)
}

/// Stops every broker with SIGTERM (SIGKILL after 30 s, recorded as a crash).
fn stop_all(cluster: &mut Cluster, history: &History, watch: &mut Watch) {
    for node in 1..=NODES as u32 {
        let Some(broker) = cluster.brokers[node as usize - 1].as_mut() else {
            continue;
        };
        let pid = rustix::process::Pid::from_raw(broker.pid() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while broker.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if broker.is_running() {
            history.record(
                Event::new("harness", Type::Info, "crash")
                    .value(format!("node {node}"))
                    .error("did not stop within 30 s of SIGTERM"),
            );
        }
        watch.copy(node, broker, history);
        cluster.kill(node);
    }
}

/// One run: start, load, faults, heal, final logs, check. Returns the report.
async fn run(seed: u64, duration: Duration) -> checker::Report {
    let dir = out_dir(seed);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the run's directory");
    eprintln!(
        "fault run: seed {seed}, {duration:?} of faults, files in {}",
        dir.display()
    );
    let disks: Vec<Tmpfs> = (0..NODES).map(|_| Tmpfs::mount(DISK_MIB)).collect();
    let parents: Vec<&Path> = disks.iter().map(Tmpfs::path).collect();
    let mut cluster = Cluster::start_in_network_in(
        NODES,
        &[
            "--min-insync-replicas",
            "2",
            "--segment-bytes",
            "1048576",
            "--offsets-topic-segment-bytes",
            "1048576",
        ],
        &parents,
    );
    let bootstrap = cluster.bootstrap();
    let admin = Admin::new(cluster.client().await);
    let mut topic = NewTopic::new(TOPIC, PARTITIONS);
    topic.replication_factor = NODES as u16;
    admin.create_topic(topic).await.expect("create the topic");

    let history = History::create(&dir.join("history.jsonl"));
    log_clients_to(&dir.join("clients.log"));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients: Vec<_> = (1..=PRODUCERS)
        .map(|id| {
            workload::producer(
                id,
                bootstrap.clone(),
                history.clone(),
                stop.clone(),
                SEND_EVERY,
            )
        })
        .collect();
    clients.push(workload::reader(
        bootstrap.clone(),
        history.clone(),
        stop.clone(),
    ));
    clients.push(workload::topics(
        seed,
        bootstrap.clone(),
        history.clone(),
        stop.clone(),
    ));
    for slot in 1..=MEMBERS {
        clients.push(workload::member_slot(
            slot,
            seed,
            bootstrap.clone(),
            history.clone(),
            stop.clone(),
        ));
    }

    let steps = nemesis::schedule(seed, duration);
    // The nemesis blocks (commands, the schedule's pauses); the workload runs on meanwhile.
    let mut watch = Watch::new(&dir);
    let nemesis = tokio::task::block_in_place(|| {
        run_nemesis(&mut cluster, &disks, steps, &admin, &history, &mut watch)
    });
    eprintln!("nemesis done: {:?}", nemesis.applied);

    // Healed: the workload runs on for a while (every producer must be acknowledged again),
    // then stops, and the cluster must return to full health by itself.
    history.record(Event::new("harness", Type::Invoke, "recovery"));
    tokio::time::sleep(RECOVERY).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let failure = match tokio::time::timeout(Duration::from_secs(60), client).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => format!("a workload task failed: {e}"),
            Err(_) => "a workload client did not finish within 60 s of the heal".to_string(),
        };
        history.record(Event::new("harness", Type::Fail, "converge").error(failure));
    }
    let mut logs = Vec::new();
    match converge(&admin).await {
        Ok(hws) => {
            for (topic, partitions) in &hws {
                for (p, hw) in partitions.iter().enumerate() {
                    logs.push(checker::LogLine {
                        source: "hw".into(),
                        topic: topic.clone(),
                        partition: p as u32,
                        offset: *hw,
                        value: None,
                        producer: None,
                    });
                }
            }
            match final_read(&bootstrap, &hws).await {
                Ok(lines) => logs.extend(lines),
                Err(e) => history.record(Event::new("harness", Type::Fail, "converge").error(e)),
            }
            match drain(&bootstrap, &admin, &history, &hws).await {
                Ok(committed) => logs.extend(committed),
                Err(e) => history.record(Event::new("harness", Type::Fail, "converge").error(e)),
            }
            tokio::task::block_in_place(|| stop_all(&mut cluster, &history, &mut watch));
            for node in 1..=NODES as u32 {
                for (topic, partitions) in &hws {
                    for (p, hw) in partitions.iter().enumerate() {
                        match replica_log(&cluster.data_dir(node), node, topic, p as u32, *hw) {
                            Ok(lines) => logs.extend(lines),
                            Err(e) => history
                                .record(Event::new("harness", Type::Fail, "converge").error(e)),
                        }
                    }
                }
            }
        }
        Err(e) => {
            history.record(Event::new("harness", Type::Fail, "converge").error(e));
            tokio::task::block_in_place(|| stop_all(&mut cluster, &history, &mut watch));
        }
    }
    history.flush();
    drop(disks);
    let mut out = String::new();
    for line in &logs {
        out.push_str(&serde_json::to_string(line).expect("a log line serializes"));
        out.push('\n');
    }
    std::fs::write(dir.join("final.jsonl"), out).expect("write final.jsonl");
    recheck(&dir, seed)
}

/// Checks a run's directory; prints and writes the report.
fn recheck(dir: &Path, seed: u64) -> checker::Report {
    let history = history::read(&dir.join("history.jsonl"));
    let logs = checker::read_logs(&dir.join("final.jsonl"));
    let report = checker::check(&history, &logs);
    let text = format!(
        "seed {seed} ({}; repeat: RILL_FAULT_SEED={seed})\n{}",
        dir.display(),
        report.render()
    );
    std::fs::write(dir.join("report.txt"), &text).expect("write report.txt");
    eprintln!("{text}");
    report
}

/// The short schedules CI runs: a few seeds, under a minute of faults each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_fault_schedules_find_no_anomaly() {
    let seeds: Vec<u64> = match std::env::var("RILL_FAULT_SEEDS") {
        Ok(list) => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("RILL_FAULT_SEEDS: numbers, comma-separated")
            })
            .collect(),
        Err(_) => vec![1, 2, 3],
    };
    let secs = env_u64("RILL_FAULT_SECS").unwrap_or(30);
    let mut failed = Vec::new();
    for seed in seeds {
        let report = run(seed, Duration::from_secs(secs)).await;
        if !report.anomalies.is_empty() {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "anomalies with seeds {failed:?} (reports above)"
    );
}

/// A campaign: `RILL_FAULT_RUNS` runs of `RILL_FAULT_SECS` seconds of faults each, seeds from
/// `RILL_FAULT_SEED` on (default: the clock). Prints totals; fails if any run found anomalies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run on demand (docs/TESTING.md)"]
async fn campaign() {
    let runs = env_u64("RILL_FAULT_RUNS").unwrap_or(10);
    let secs = env_u64("RILL_FAULT_SECS").unwrap_or(300);
    let first = env_u64("RILL_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let started = Instant::now();
    let mut faults: std::collections::BTreeMap<String, u64> = Default::default();
    let mut anomalies: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let (mut acked, mut failed_seeds) = (0, Vec::new());
    for seed in first..first + runs {
        let report = run(seed, Duration::from_secs(secs)).await;
        for (kind, n) in &report.faults {
            *faults.entry(kind.clone()).or_default() += n;
        }
        for (kind, n) in report.counts() {
            *anomalies.entry(kind).or_default() += n;
        }
        acked += report.acknowledged;
        if !report.anomalies.is_empty() {
            failed_seeds.push(seed);
        }
    }
    let summary = format!(
        "campaign: {runs} runs x {secs} s (seeds {first}..{}), {:.0} s in all\nfaults: {faults:?}\nrecords acknowledged: {acked}\nanomalies: {anomalies:?}\nseeds with anomalies: {failed_seeds:?}\n",
        first + runs,
        started.elapsed().as_secs_f64()
    );
    let base = out_dir(0);
    let path = base
        .parent()
        .unwrap_or(&base)
        .join(format!("campaign-{first}.txt"));
    std::fs::write(&path, &summary).expect("write the campaign summary");
    eprintln!("{summary}(written to {})", path.display());
    assert!(
        failed_seeds.is_empty(),
        "anomalies with seeds {failed_seeds:?}"
    );
}

/// Checks the run directory `RILL_FAULT_CHECK` again (e.g. after changing the checker).
#[test]
#[ignore = "on demand: RILL_FAULT_CHECK=<run directory>"]
fn recheck_a_run() {
    let dir = PathBuf::from(std::env::var("RILL_FAULT_CHECK").expect("RILL_FAULT_CHECK=<dir>"));
    let seed = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("seed-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let report = recheck(&dir, seed);
    assert!(report.anomalies.is_empty());
}
