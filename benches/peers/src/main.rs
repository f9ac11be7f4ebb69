//! `peer-bench`: `rill bench`'s workloads against other brokers, measured by the same code
//! (`rill_client::bench`: the open-loop schedule, the warm-up, the histograms, the report), so
//! that every system in docs/BENCHMARKS.md meets the same client-side workload and is counted
//! alike. Run by `benches/scripts/peers.sh`.
//!
//! - **NATS JetStream** (`async-nats`): a topic is a stream `T` with file storage and one
//!   subject `T.<p>` per partition; producers publish with up to `--in-flight` acknowledgements
//!   outstanding; consumers are ordered pull consumers, one per partition subject.
//! - **Redis Streams** (`redis`): a partition is a stream key `T:<p>`; producers send pipelines
//!   of up to 1,000 `XADD`s (the records due at that moment, at most `--in-flight` records
//!   outstanding); consumers `XREAD BLOCK` their keys.
//!
//! Records are `--size` bytes of `x`. With `--consumers`, each record carries its send time
//! (a header `rill-bench-sent-us` on NATS, a field `t` on Redis) for end-to-end latency.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::Future;
use hdrhistogram::Histogram;
use rill_client::bench::{
    drain, histogram, progress, Due, Measure, Mode, Percentiles, Reader, Received, Report,
    SENT_HEADER,
};
use tokio::time::Instant;

/// Records per Redis pipeline at most.
const PIPELINE_RECORDS_MAX: usize = 1000;

#[derive(Debug, Parser)]
#[command(about = "rill bench's workloads against NATS JetStream and Redis Streams")]
struct Cli {
    #[arg(long, value_enum)]
    system: System,
    /// Server address (default: the system's usual local one).
    #[arg(long)]
    url: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Worker threads; default as `rill bench` (`rill_client::bench::threads`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Nats,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce (as fast as possible or at `--rate`), optionally consumed back end to end.
    Produce(ProduceArgs),
    /// Read a topic from the beginning as fast as possible.
    Consume(ConsumeArgs),
}

#[derive(Debug, clap::Args)]
struct ProduceArgs {
    #[arg(long, default_value = "bench")]
    topic: String,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    partitions: u32,
    /// Replicas of the stream (NATS only; the servers must form a cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    #[arg(long)]
    messages: Option<u64>,
    #[arg(long)]
    duration_secs: Option<u64>,
    #[arg(long, default_value_t = 0.0)]
    warmup_secs: f64,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    producers: u32,
    #[arg(long, default_value_t = 0)]
    consumers: u32,
    /// Records a producer has outstanding (sent, not yet acknowledged) at most.
    #[arg(long, default_value_t = 4096)]
    in_flight: usize,
    /// Each producer sends to one partition only (producer i to partition i modulo
    /// `--partitions`), as `rill bench produce --pinned` and iggy-bench's pinned producers.
    #[arg(long)]
    pinned: bool,
}

#[derive(Debug, clap::Args)]
struct ConsumeArgs {
    #[arg(long, default_value = "bench")]
    topic: String,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    consumers: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let clients = match &cli.command {
        Command::Produce(args) => args.producers + args.consumers,
        Command::Consume(args) => args.consumers,
    };
    let threads = rill_client::bench::threads(cli.threads, clients);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.format == Format::Json;
    let url = cli.url.clone().unwrap_or_else(|| match cli.system {
        System::Nats => "nats://127.0.0.1:4222".into(),
        System::Redis => "redis://127.0.0.1:6379/".into(),
    });
    let report = match (cli.system, cli.command) {
        (System::Nats, Command::Produce(args)) => {
            produce(nats::Nats::connect(&url, &args).await?, args, json).await?
        }
        (System::Redis, Command::Produce(args)) => {
            produce(redis_streams::Redis::connect(&url).await?, args, json).await?
        }
        (System::Nats, Command::Consume(args)) => {
            consume(nats::Nats::connect_existing(&url).await?, args, json).await?
        }
        (System::Redis, Command::Consume(args)) => {
            consume(redis_streams::Redis::connect(&url).await?, args, json).await?
        }
    };
    report.print(json).map_err(anyhow::Error::msg)
}

/// A record a producer sent: when its latency counts from, and its bytes.
type Sent = (Instant, u64);

/// What a broker's client offers the workloads.
trait Broker: Clone + Send + Sync + 'static {
    type Reader: Reader;
    /// Spawns producer `p`'s send loop; it hands each send's pending acknowledgement to `ack`.
    fn send_loop(
        &self,
        measure: Arc<Measure>,
        plan: Plan,
        ack: tokio::sync::mpsc::Sender<(Vec<Sent>, Pending)>,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>>;
    /// A reader of `partitions` of `topic`, from their ends (`from_end`) or their starts.
    fn reader(
        &self,
        topic: &str,
        partitions: Vec<u32>,
        from_end: bool,
    ) -> impl Future<Output = anyhow::Result<Self::Reader>> + Send;
    /// Records in the topic and its partitions.
    fn count(&self, topic: &str) -> impl Future<Output = anyhow::Result<(u64, Vec<u32>)>> + Send;
    /// Another client of the same broker, on connections of its own: each producer and reader
    /// gets one, as separate applications (and `rill bench`'s and iggy-bench's clients) do.
    fn another(&self) -> impl Future<Output = anyhow::Result<Self>> + Send;
}

type Pending = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What one producer sends.
#[derive(Clone)]
struct Plan {
    producer: u64,
    topic: String,
    partitions: u32,
    limit: Option<u64>,
    rate: Option<u64>,
    stamp: bool,
    value: Bytes,
    pinned: bool,
}

impl Plan {
    /// The partition of the producer's `n`th record (or pipeline): its own with `--pinned`,
    /// otherwise the next one round the topic.
    fn partition(&self, n: u64) -> usize {
        let step = if self.pinned { 0 } else { n };
        ((self.producer + step) % u64::from(self.partitions)) as usize
    }
}

async fn produce<B: Broker>(broker: B, args: ProduceArgs, json: bool) -> anyhow::Result<Report> {
    let producers = u64::from(args.producers);
    let messages = match (args.messages, args.duration_secs) {
        (Some(m), _) => Some(m),
        (None, Some(_)) => None,
        (None, None) => Some(1_000_000),
    };
    let partitions: Vec<u32> = (0..args.partitions).collect();
    let consumers = (args.consumers as usize).min(partitions.len());
    let mut readers = Vec::new();
    for c in 0..consumers {
        let mine = partitions
            .iter()
            .copied()
            .skip(c)
            .step_by(consumers)
            .collect();
        readers.push(
            broker
                .another()
                .await?
                .reader(&args.topic, mine, true)
                .await?,
        );
    }
    let measure = Arc::new(Measure::new(
        Duration::from_secs_f64(args.warmup_secs),
        args.duration_secs.map(Duration::from_secs),
        messages,
        json,
    ));
    let reader_tasks: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            let measure = measure.clone();
            tokio::spawn(async move { measure.receive(&mut reader).await })
        })
        .collect();
    let value = Bytes::from(vec![b'x'; args.size]);
    let mut tasks = Vec::new();
    for p in 0..producers {
        let plan = Plan {
            producer: p,
            topic: args.topic.clone(),
            partitions: args.partitions,
            limit: messages.map(|m| m / producers + u64::from(p < m % producers)),
            rate: args
                .rate
                .map(|r| (r / producers + u64::from(p < r % producers)).max(1)),
            stamp: consumers > 0,
            value: value.clone(),
            pinned: args.pinned,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let acker = tokio::spawn(acknowledge(measure.clone(), rx, args.in_flight.max(1)));
        let own = broker.another().await?;
        tasks.push((own.send_loop(measure.clone(), plan, tx), acker, own));
    }
    let mut latencies = histogram();
    for (sender, acker, own) in tasks {
        sender.await??;
        latencies.add(acker.await?)?;
        // Only now: the producer's connection closes with its last client handle (NATS), and
        // acknowledgements still on their way would fail with it.
        drop(own);
    }
    measure.senders_done();
    let mut e2e = histogram();
    for task in reader_tasks {
        e2e.add(task.await?.map_err(anyhow::Error::msg)?)?;
    }
    let mode = args.rate.map_or(Mode::Max, Mode::Rate);
    measure
        .report(
            "produce",
            &args.topic,
            args.producers,
            mode,
            &latencies,
            (consumers > 0).then_some((consumers as u32, &e2e)),
        )
        .map_err(anyhow::Error::msg)
}

/// Waits for a producer's acknowledgements in whatever order they come, with at most
/// `records_max` records outstanding.
async fn acknowledge(
    measure: Arc<Measure>,
    mut sent: tokio::sync::mpsc::Receiver<(Vec<Sent>, Pending)>,
    records_max: usize,
) -> Histogram<u64> {
    let mut latencies = histogram();
    let mut pending = FuturesUnordered::new();
    let mut outstanding = 0usize;
    let mut open = true;
    loop {
        tokio::select! {
            next = sent.recv(), if open && outstanding < records_max => match next {
                Some((records, ack)) => {
                    outstanding += records.len();
                    pending.push(async move { (records, ack.await) });
                }
                None => open = false,
            },
            Some((records, result)) = pending.next(), if !pending.is_empty() => {
                outstanding -= records.len();
                for (start, bytes) in records {
                    measure.acknowledged(start, bytes, result.clone(), &mut latencies);
                }
            }
            else => break,
        }
    }
    latencies
}

async fn consume<B: Broker>(broker: B, args: ConsumeArgs, json: bool) -> anyhow::Result<Report> {
    let (total, partitions) = broker.count(&args.topic).await?;
    if total == 0 {
        anyhow::bail!("topic {} is empty: produce first", args.topic);
    }
    let consumers = (args.consumers as usize).min(partitions.len()).max(1);
    let bar = progress(Some(total), json);
    let consumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for c in 0..consumers {
        let mine = partitions
            .iter()
            .copied()
            .skip(c)
            .step_by(consumers)
            .collect();
        readers.push(
            broker
                .another()
                .await?
                .reader(&args.topic, mine, false)
                .await?,
        );
    }
    let started = Instant::now();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            let (consumed, bar) = (consumed.clone(), bar.clone());
            tokio::spawn(async move { drain(&mut reader, total, &consumed, &bar).await })
        })
        .collect();
    let mut latencies = histogram();
    let mut bytes = 0;
    for task in tasks {
        let (l, b) = task.await?.map_err(anyhow::Error::msg)?;
        latencies.add(l)?;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    bar.finish_and_clear();
    let records = consumed.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Report {
        bench: "consume",
        topic: args.topic,
        clients: consumers as u32,
        mode: "max",
        target_records_per_sec: None,
        warmup_secs: 0.0,
        records,
        bytes,
        errors: 0,
        first_error: None,
        seconds,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: bytes as f64 / seconds / 1e6,
        latency_of: "read returning records",
        latency: Percentiles::of(&latencies),
        end_to_end: None,
    })
}

mod nats {
    use super::*;
    use async_nats::jetstream::{self, consumer, stream};

    #[derive(Clone)]
    pub struct Nats {
        js: jetstream::Context,
        url: String,
    }

    impl Nats {
        /// Connects and makes sure the stream exists.
        pub async fn connect(url: &str, args: &ProduceArgs) -> anyhow::Result<Nats> {
            let nats = Nats::connect_existing(url).await?;
            // A fresh cluster elects its JetStream meta leader first: retry for 30 s.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let created = nats
                    .js
                    .get_or_create_stream(stream::Config {
                        name: args.topic.clone(),
                        subjects: vec![format!("{}.*", args.topic)],
                        storage: stream::StorageType::File,
                        num_replicas: args.replicas,
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("creating stream {}: {e}; retrying", args.topic);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => anyhow::bail!("creating stream {}: {e}", args.topic),
                }
            }
            Ok(nats)
        }

        pub async fn connect_existing(url: &str) -> anyhow::Result<Nats> {
            let client = async_nats::connect(url)
                .await
                .with_context(|| format!("connecting to NATS at {url}"))?;
            Ok(Nats {
                js: jetstream::new(client),
                url: url.to_string(),
            })
        }
    }

    pub struct NatsReader {
        messages: futures::stream::SelectAll<consumer::pull::Ordered>,
        /// The reader's connection stays open as long as it (it may be its only client).
        _js: jetstream::Context,
    }

    impl Broker for Nats {
        type Reader = NatsReader;

        fn send_loop(
            &self,
            measure: Arc<Measure>,
            plan: Plan,
            ack: tokio::sync::mpsc::Sender<(Vec<Sent>, Pending)>,
        ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
            let js = self.js.clone();
            tokio::spawn(async move {
                let subjects: Vec<String> = (0..plan.partitions)
                    .map(|p| format!("{}.{p}", plan.topic))
                    .collect();
                let mut i = 0u64;
                while plan.limit.is_none_or(|limit| i < limit) {
                    let Some(start) = measure.schedule(i, plan.rate).await else {
                        break;
                    };
                    let subject = subjects[plan.partition(i)].clone();
                    let mut headers = async_nats::HeaderMap::new();
                    if plan.stamp {
                        let micros = u64::from_be_bytes(measure.stamp(start));
                        headers.insert(SENT_HEADER, micros.to_string().as_str());
                    }
                    let future = js
                        .publish_with_headers(subject, headers, plan.value.clone())
                        .await
                        .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
                    let pending: Pending =
                        Box::pin(
                            async move { future.await.map(|_| ()).map_err(|e| e.to_string()) },
                        );
                    if ack
                        .send((vec![(start, plan.value.len() as u64)], pending))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    i += 1;
                }
                Ok(())
            })
        }

        async fn reader(
            &self,
            topic: &str,
            partitions: Vec<u32>,
            from_end: bool,
        ) -> anyhow::Result<NatsReader> {
            let stream = self
                .js
                .get_stream(topic)
                .await
                .map_err(|e| anyhow::anyhow!("stream {topic}: {e}"))?;
            let mut all = Vec::new();
            for p in partitions {
                let consumer = stream
                    .create_consumer(consumer::pull::OrderedConfig {
                        filter_subject: format!("{topic}.{p}"),
                        deliver_policy: if from_end {
                            consumer::DeliverPolicy::New
                        } else {
                            consumer::DeliverPolicy::All
                        },
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("consumer on {topic}.{p}: {e}"))?;
                all.push(
                    consumer
                        .messages()
                        .await
                        .map_err(|e| anyhow::anyhow!("messages of {topic}.{p}: {e}"))?,
                );
            }
            Ok(NatsReader {
                messages: futures::stream::select_all(all),
                _js: self.js.clone(),
            })
        }

        async fn count(&self, topic: &str) -> anyhow::Result<(u64, Vec<u32>)> {
            let mut stream = self
                .js
                .get_stream(topic)
                .await
                .map_err(|e| anyhow::anyhow!("stream {topic}: {e}"))?;
            let info = stream.info().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let subjects = info.state.subjects_count.max(1) as u32;
            Ok((info.state.messages, (0..subjects).collect()))
        }

        async fn another(&self) -> anyhow::Result<Nats> {
            Nats::connect_existing(&self.url).await
        }
    }

    impl Reader for NatsReader {
        async fn read(&mut self, wait: Duration) -> Result<Vec<Received>, String> {
            let mut out = Vec::new();
            let Ok(first) = tokio::time::timeout(wait, self.messages.next()).await else {
                return Ok(out);
            };
            let mut next = first;
            loop {
                match next {
                    Some(Ok(message)) => {
                        let stamp = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(SENT_HEADER))
                            .and_then(|v| v.as_str().parse::<u64>().ok())
                            .map(u64::to_be_bytes);
                        out.push((stamp, message.payload.len() as u64));
                    }
                    Some(Err(e)) => return Err(format!("reading: {e}")),
                    None => break,
                }
                if out.len() >= 1000 {
                    break;
                }
                match futures::FutureExt::now_or_never(self.messages.next()) {
                    Some(more) => next = more,
                    None => break,
                }
            }
            Ok(out)
        }
    }
}

mod redis_streams {
    use super::*;
    use redis::aio::MultiplexedConnection;
    use redis::streams::{StreamRangeReply, StreamReadReply};

    #[derive(Clone)]
    pub struct Redis {
        client: redis::Client,
        connection: MultiplexedConnection,
    }

    impl Redis {
        pub async fn connect(url: &str) -> anyhow::Result<Redis> {
            let client = redis::Client::open(url)?;
            let connection = client
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("connecting to Redis at {url}"))?;
            Ok(Redis { client, connection })
        }
    }

    fn key(topic: &str, partition: u32) -> String {
        format!("{topic}:{partition}")
    }

    pub struct RedisReader {
        connection: MultiplexedConnection,
        keys: Vec<String>,
        ids: Vec<String>,
    }

    impl Broker for Redis {
        type Reader = RedisReader;

        fn send_loop(
            &self,
            measure: Arc<Measure>,
            plan: Plan,
            ack: tokio::sync::mpsc::Sender<(Vec<Sent>, Pending)>,
        ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
            let connection = self.connection.clone();
            tokio::spawn(async move {
                let keys: Vec<String> = (0..plan.partitions).map(|p| key(&plan.topic, p)).collect();
                let bytes = plan.value.len() as u64;
                let mut i = 0u64;
                let mut pipelines = 0u64;
                let mut stop = false;
                while !stop {
                    let key = &keys[plan.partition(pipelines)];
                    let mut pipe = redis::pipe();
                    let mut records = Vec::new();
                    while records.len() < PIPELINE_RECORDS_MAX {
                        if plan.limit.is_some_and(|limit| i >= limit) {
                            stop = true;
                            break;
                        }
                        match measure.due(i, plan.rate) {
                            Due::Now(start) => {
                                let command = pipe
                                    .cmd("XADD")
                                    .arg(key)
                                    .arg("*")
                                    .arg("v")
                                    .arg(plan.value.as_ref());
                                if plan.stamp {
                                    command.arg("t").arg(&measure.stamp(start)[..]);
                                }
                                command.ignore();
                                records.push((start, bytes));
                                i += 1;
                            }
                            Due::At(at) if records.is_empty() => tokio::time::sleep_until(at).await,
                            Due::At(_) => break,
                            Due::Stop => {
                                stop = true;
                                break;
                            }
                        }
                    }
                    if records.is_empty() {
                        break;
                    }
                    pipelines += 1;
                    let mut connection = connection.clone();
                    let pending: Pending = Box::pin(async move {
                        pipe.query_async::<()>(&mut connection)
                            .await
                            .map_err(|e| e.to_string())
                    });
                    if ack.send((records, pending)).await.is_err() {
                        break;
                    }
                }
                Ok(())
            })
        }

        async fn reader(
            &self,
            topic: &str,
            partitions: Vec<u32>,
            from_end: bool,
        ) -> anyhow::Result<RedisReader> {
            // Its own connection: a blocking XREAD holds a connection.
            let mut connection = self.client.get_multiplexed_async_connection().await?;
            let keys: Vec<String> = partitions.iter().map(|p| key(topic, *p)).collect();
            let mut ids = Vec::new();
            for key in &keys {
                let id = if from_end {
                    let last: StreamRangeReply = redis::cmd("XREVRANGE")
                        .arg(key)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut connection)
                        .await?;
                    last.ids
                        .first()
                        .map_or_else(|| "0-0".to_string(), |e| e.id.clone())
                } else {
                    "0-0".to_string()
                };
                ids.push(id);
            }
            Ok(RedisReader {
                connection,
                keys,
                ids,
            })
        }

        async fn count(&self, topic: &str) -> anyhow::Result<(u64, Vec<u32>)> {
            let mut connection = self.connection.clone();
            let mut total = 0;
            let mut partitions = Vec::new();
            for p in 0.. {
                let length: u64 = redis::cmd("XLEN")
                    .arg(key(topic, p))
                    .query_async(&mut connection)
                    .await?;
                let exists: bool = redis::cmd("EXISTS")
                    .arg(key(topic, p))
                    .query_async(&mut connection)
                    .await?;
                if !exists {
                    break;
                }
                total += length;
                partitions.push(p);
            }
            Ok((total, partitions))
        }

        async fn another(&self) -> anyhow::Result<Redis> {
            let connection = self
                .client
                .get_multiplexed_async_connection()
                .await
                .context("connecting to Redis")?;
            Ok(Redis {
                client: self.client.clone(),
                connection,
            })
        }
    }

    impl Reader for RedisReader {
        async fn read(&mut self, wait: Duration) -> Result<Vec<Received>, String> {
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(PIPELINE_RECORDS_MAX)
                .arg("BLOCK")
                .arg(wait.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.keys)
                .arg(&self.ids)
                .query_async(&mut self.connection)
                .await
                .map_err(|e| format!("XREAD: {e}"))?;
            let mut out = Vec::new();
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                let Some(index) = self.keys.iter().position(|k| *k == stream.key) else {
                    continue;
                };
                for entry in &stream.ids {
                    let bytes = match entry.map.get("v") {
                        Some(redis::Value::BulkString(v)) => v.len() as u64,
                        _ => 0,
                    };
                    let stamp = match entry.map.get("t") {
                        Some(redis::Value::BulkString(t)) => <[u8; 8]>::try_from(t.as_slice()).ok(),
                        _ => None,
                    };
                    out.push((stamp, bytes));
                }
                if let Some(last) = stream.ids.last() {
                    self.ids[index] = last.id.clone();
                }
            }
            Ok(out)
        }
    }
}
