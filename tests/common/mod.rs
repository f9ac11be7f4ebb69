//! Shared helpers for the end-to-end tests: batch builders, log capture, a small PRNG, and
//! `eventually` (poll a condition with a deadline instead of sleeping).
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_protocol::batch::RecordBatchBuilder;

/// A batch of `records` records whose values are `value_bytes` copies of `tag`.
pub fn batch(records: usize, value_bytes: usize, timestamp: i64, tag: u8) -> Bytes {
    let mut builder = RecordBatchBuilder::new();
    let value = vec![tag; value_bytes];
    for i in 0..records {
        builder.append(
            timestamp + i as i64,
            Some(format!("key-{i}").as_bytes()),
            Some(&value),
            &[],
        );
    }
    builder.build()
}

/// xorshift64*: deterministic pseudo-random numbers for reproducible tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// A seed from the clock, printed so a failing run can be repeated with `RILL_TEST_SEED`.
    pub fn from_env_or_time(test: &str) -> Self {
        let seed = std::env::var("RILL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: RILL_TEST_SEED={seed}");
        Rng::new(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[low, high)`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low)
    }
}

/// Collects everything `tracing` writes while `f` runs, and returns it with `f`'s result.
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text =
        String::from_utf8_lossy(&sink.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    (result, text)
}

/// Polls `condition` until it holds or `deadline` passes; panics with `what` on timeout.
pub fn eventually(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    while !condition() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Polls `probe` until it gives a value or `deadline` passes (then `None`: the caller says
/// what was missing).
pub fn eventually_value_sync<T>(
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Path of the `rill-broker` binary, built on first use.
pub fn broker_binary() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| build_binary("rill-broker", "rill-broker"))
        .clone()
}

/// Path of the `rill` CLI binary, built on first use.
pub fn cli_binary() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| build_binary("rill-client", "rill"))
        .clone()
}

/// An example of the root package (`examples/NAME.rs`), built in the test's profile.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    build(&["--example", name], &format!("examples/{name}"))
}

/// `cargo test` builds only the binaries of packages that have their own integration tests, so
/// the root package's tests build the ones they run (a no-op when fresh), in the test's profile.
fn build_binary(package: &str, bin: &str) -> std::path::PathBuf {
    build(&["-p", package, "--bin", bin], bin)
}

/// `cargo build --quiet TARGET` in the test's profile; the path `built` under target/<profile>.
fn build(target: &[&str], built: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/<profile> directory")
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.args(["build", "--quiet"]).args(target);
    if release {
        command.arg("--release");
    }
    let status = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building {built} failed");
    profile_dir.join(built)
}

/// A real `rill-broker` process on 127.0.0.1 with a temp data directory. Killed when dropped.
pub struct BrokerProcess {
    child: std::process::Child,
    /// `host:port` of the client listener.
    pub address: String,
    /// `host:port` of the Kafka-protocol listener (`None` when started with it off).
    pub kafka_address: Option<String>,
    /// The admin HTTP listener's address (`host:port`), when it is on.
    pub admin_address: Option<String>,
    pub data_dir: std::path::PathBuf,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stderr line seen so far (for assertions and failure messages).
    pub log: Vec<String>,
}

impl BrokerProcess {
    /// Starts a broker on an ephemeral port and waits until it listens.
    pub fn start(data_dir: &std::path::Path, extra_args: &[&str]) -> BrokerProcess {
        Self::start_on(data_dir, "127.0.0.1:0", extra_args)
    }

    /// Starts a broker on `listen` (e.g. the address of a broker being restarted).
    pub fn start_on(
        data_dir: &std::path::Path,
        listen: &str,
        extra_args: &[&str],
    ) -> BrokerProcess {
        Self::start_with_prefix(&[], data_dir, listen, extra_args)
    }

    /// Starts a broker through a command `prefix` (e.g. `ip netns exec <namespace>`, which
    /// execs the broker: the child's pid is the broker's).
    pub fn start_with_prefix(
        prefix: &[String],
        data_dir: &std::path::Path,
        listen: &str,
        extra_args: &[&str],
    ) -> BrokerProcess {
        use std::io::BufRead;
        let binary = broker_binary();
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = std::process::Command::new(program);
                command.args(args).arg(&binary);
                command
            }
            None => std::process::Command::new(&binary),
        };
        let mut child = command
            .args([
                "--data-dir",
                data_dir.to_str().expect("utf-8 path"),
                "--listen",
                listen,
                "--log-level",
                "info,openraft=off",
            ])
            .args(extra_args)
            // Any free port for the Kafka listener (its default, 9092, would be shared by
            // every test), unless the test chose one.
            .args(
                (!extra_args.contains(&"--kafka-listen"))
                    .then_some(["--kafka-listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .args(
                (!extra_args.contains(&"--admin-listen"))
                    .then_some(["--admin-listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn rill-broker");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut broker = BrokerProcess {
            child,
            address: String::new(),
            kafka_address: None,
            admin_address: None,
            data_dir: data_dir.to_owned(),
            lines,
            log: Vec::new(),
        };
        let line = broker.wait_for_line("rill-broker listening on", Duration::from_secs(60));
        // An address ends at a space or, in a JSON log line (`--log-format json`), a quote.
        let address_in = |s: &str| s.split([' ', '"']).next().map(str::to_string);
        broker.address = line
            .rsplit("listening on ")
            .next()
            .and_then(address_in)
            .expect("address in the listening line");
        // Logged before the line above, when the Kafka and admin listeners are on.
        let logged_address = |broker: &BrokerProcess, needle: &str| {
            broker
                .log
                .iter()
                .find_map(|l| l.split(needle).nth(1))
                .and_then(address_in)
        };
        broker.kafka_address = logged_address(&broker, "kafka listener on ");
        broker.admin_address = logged_address(&broker, "admin listener on ");
        broker
    }

    /// A stderr line containing `needle`: one already seen, or the next to arrive within `timeout`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no broker log line containing {needle:?} ({e}); log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Every stderr line so far (collects what arrived since the last call without waiting).
    pub fn drain_log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns whether it exited with status 0.
    pub fn terminate(&mut self) -> bool {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Waits (at most `timeout`) for the process to exit on its own; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut status = None;
        eventually(timeout, "the broker to exit", || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        self.drain_log();
        status.expect("exited")
    }

    /// Whether the process is still running (it has not exited or died of a signal).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP (`pause = true`) or SIGCONT the broker.
    pub fn signal_pause(&self, pause: bool) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        let signal = if pause {
            rustix::process::Signal::STOP
        } else {
            rustix::process::Signal::CONT
        };
        rustix::process::kill_process(pid, signal).expect("signal the broker");
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failed test shows what its broker said last.
            let pid = self.child.id();
            let log = self.drain_log();
            let tail = &log[log.len().saturating_sub(40)..];
            eprintln!(
                "--- last {} log lines of broker pid {pid} ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// A client for `address` with short retry timings suited to tests.
pub async fn client(address: &str) -> rill_client::Client {
    let mut config = rill_client::ClientConfig::new(address);
    config.retry_timeout = Duration::from_secs(30);
    config.request_timeout = Duration::from_secs(10);
    rill_client::Client::connect(config)
        .await
        .expect("connect to the broker")
}

/// The pause between polls of a condition, with a deadline: for loops that cannot be written
/// as a closure (they borrow something mutably). `pause` panics with `what` once the deadline
/// has passed.
pub struct Poll {
    start: Instant,
    deadline: Duration,
    pause: Duration,
    what: String,
}

impl Poll {
    pub fn new(deadline: Duration, what: &str) -> Poll {
        Poll {
            start: Instant::now(),
            deadline,
            pause: Duration::from_millis(1),
            what: what.to_string(),
        }
    }

    /// Waits before the next poll (1 ms, doubling up to 50 ms).
    pub async fn pause(&mut self) {
        assert!(
            self.start.elapsed() < self.deadline,
            "timed out after {:?} waiting for: {}",
            self.deadline,
            self.what
        );
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(50));
    }
}

/// Async version of [`eventually`].
pub async fn eventually_async<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut poll = Poll::new(deadline, what);
    while !condition().await {
        poll.pause().await;
    }
}

/// Polls `probe` until it yields a value, or panics with `what` after `deadline`.
pub async fn eventually_value<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut poll = Poll::new(deadline, what);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        poll.pause().await;
    }
}

/// Reads `topic` from the beginning (only `partitions`, or all) until every position in
/// `wanted` was seen; returns `(partition, offset) -> value` of what was read.
pub async fn read_positions(
    client: &rill_client::Client,
    topic: &str,
    partitions: Option<&[u32]>,
    wanted: impl Iterator<Item = (u32, u64)>,
) -> std::collections::BTreeMap<(u32, u64), String> {
    let wanted: Vec<(u32, u64)> = wanted.collect();
    let mut consumer =
        rill_client::Consumer::new(client.clone(), rill_client::ConsumerConfig::default());
    match partitions {
        Some(partitions) => consumer.assign(partitions.iter().map(|p| (topic.to_string(), *p))),
        None => consumer
            .assign_topic(topic)
            .await
            .expect("assign the topic"),
    }
    let mut stored = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted.iter().all(|k| stored.contains_key(k)) {
        assert!(
            Instant::now() < deadline,
            "records missing: {} of {} found",
            wanted.iter().filter(|k| stored.contains_key(*k)).count(),
            wanted.len()
        );
        for r in consumer
            .poll(Duration::from_millis(300))
            .await
            .unwrap_or_default()
        {
            let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
            stored.insert((r.partition, r.offset), value.into_owned());
        }
    }
    stored
}

pub mod certs;
pub mod cluster;
pub mod netns;
pub mod raw;
pub mod tmpfs;

/// Produces `records` with acks=all and waits until every one is acknowledged.
pub async fn produce_acked(client: &rill_client::Client, records: Vec<rill_client::Record>) {
    let producer = rill_client::Producer::new(
        client.clone(),
        rill_client::ProducerConfig {
            acks: rill_client::Acks::All,
            ..rill_client::ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for record in records {
        deliveries.push(producer.send(record).await.expect("queue"));
    }
    producer.flush().await;
    for d in deliveries {
        d.await.expect("acks=all delivery");
    }
}

/// `GET path` on `address`: the status code and body.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut socket = std::net::TcpStream::connect(address).expect("connect to the admin port");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut socket, &mut answer).expect("an HTTP answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `GET path` on `address`, answered with JSON: the status code and the parsed body.
pub fn http_json(address: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(address, path);
    let value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON from {path}: {e}: {body}"));
    (status, value)
}

/// `rill args` against `brokers`: what it printed (panics if it fails).
pub fn rill_output(brokers: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(cli_binary())
        .args(args)
        .env("RILL_BROKERS", brokers)
        .output()
        .expect("run rill");
    assert!(
        output.status.success(),
        "rill {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// `rill args --format json` against `brokers`: its parsed output.
pub fn rill_json(brokers: &str, args: &[&str]) -> serde_json::Value {
    let args: Vec<&str> = args.iter().copied().chain(["--format", "json"]).collect();
    serde_json::from_str(&rill_output(brokers, &args)).expect("rill printed JSON")
}

/// Every sample of a broker's `/metrics` (its admin address): `name{labels}` -> value.
pub fn scrape_metrics(address: &str) -> std::collections::BTreeMap<String, f64> {
    let (status, body) = http_get(address, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text: {body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Starts a broker whose listener `flag` (`--kafka-listen`, `--admin-listen`) is given a port
/// already in use: it must exit with one error naming `setting` and the address.
pub fn assert_port_in_use_is_refused(flag: &str, setting: &str) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(broker_binary());
    command.args([
        "--data-dir",
        data.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    for other in ["--kafka-listen", "--admin-listen"] {
        let address = if other == flag {
            port.as_str()
        } else {
            "127.0.0.1:0"
        };
        command.args([other, address]);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(setting) && stderr.contains(&port),
        "names the setting and address: {stderr}"
    );
}

/// Runs kcat (librdkafka's command-line client) with `input` on its stdin: its output.
pub fn kcat_output(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("kcat")
        .args(args)
        // Cargo puts the library directories of the test's dependencies on the library path,
        // among them the librdkafka the `rdkafka` crate built: kcat must load the system's own,
        // the one it was built against.
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is not installed: run tests/install-test-tools.sh (apt-get install kcat)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to kcat");
    child.wait_with_output().expect("kcat runs")
}

/// Fails unless a command's `output` says it failed, naming `code` on stderr.
pub fn refused(output: std::process::Output, code: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected {code}, it succeeded");
    assert!(stderr.contains(code), "expected {code}: {stderr}");
}

/// Runs kcat with `input` on its stdin and returns what it printed (panics if it fails).
pub fn kcat(args: &[&str], input: &str) -> String {
    let output = kcat_output(args, input);
    assert!(
        output.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}
