//! `rill bench produce|consume`: a load generator in the spirit of kafka-producer-perf-test and
//! iggy-bench. Creates its topic if missing, runs producers or consumers in parallel, shows a
//! progress bar, and reports records/s, MB/s (10^6 bytes) and latency percentiles from an HDR
//! histogram. Produce latency is from `send` to acknowledgement; consume latency is the time of
//! each poll that returned records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rill_client::protocol::api::OffsetSpec;
use rill_client::{
    Admin, Client, ClientError, Compression, Consumer, ConsumerConfig, NewTopic, Producer,
    ProducerConfig, Record, SeekTo,
};
use rill_protocol::ErrorCode;

use crate::produce::AcksArg;
use crate::Format;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Produce messages as fast as the producers can.
    Produce(ProduceArgs),
    /// Consume a topic from the beginning as fast as the consumers can.
    Consume(ConsumeArgs),
}

#[derive(Debug, clap::Args)]
pub struct Common {
    #[arg(long, default_value = "rill-bench")]
    topic: String,
    /// Partitions of the topic if the bench creates it.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Replication factor of the topic if the bench creates it.
    #[arg(long, default_value_t = 1)]
    replicas: u16,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Payload {
    /// `--size` bytes of 'x' (compresses to almost nothing).
    Constant,
    /// JSON events of about `--size` bytes, varying per record (user ids, pages, numbers,
    /// timestamps): a realistic payload for measuring compression.
    Json,
}

/// `count` distinct JSON event values of about `size` bytes each.
fn json_values(count: usize, size: usize) -> Vec<Bytes> {
    let pages = [
        "/",
        "/cart",
        "/checkout",
        "/items",
        "/search",
        "/account",
        "/help",
    ];
    let events = ["view", "click", "add_to_cart", "purchase", "scroll"];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count)
        .map(|i| {
            let mut value = format!(
                "{{\"ts\":{},\"user\":\"user-{}\",\"session\":\"{:016x}\",\"event\":\"{}\",\"page\":\"{}\",\"item\":{},\"price\":{}.{:02},\"tags\":[",
                1_764_000_000_000u64 + i as u64 * 17,
                next() % 50_000,
                next(),
                events[(next() % events.len() as u64) as usize],
                pages[(next() % pages.len() as u64) as usize],
                next() % 100_000,
                next() % 500,
                next() % 100,
            );
            while value.len() + 40 < size {
                value.push_str(&format!("\"tag-{}\",", next() % 300));
            }
            value.push_str("\"end\"]}");
            Bytes::from(value)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Keys {
    /// Unkeyed (sticky partitioning).
    None,
    /// Keys drawn from `--key-space` values, pseudo-randomly.
    Random,
    /// Keys 0, 1, 2, ... modulo `--key-space`.
    Sequential,
}

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    /// Messages to send in total.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Stop after this many seconds even if messages remain.
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Producers in parallel, each with its own connections.
    #[arg(long, default_value_t = 1)]
    producers: u32,
    #[arg(long, value_enum, default_value = "1")]
    acks: AcksArg,
    #[arg(long, default_value_t = 512 * 1024)]
    batch_size: usize,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Unkeyed records move to the next partition after this many bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    sticky_partition_bytes: usize,
    #[arg(long, value_enum, default_value_t = Keys::None)]
    keys: Keys,
    #[arg(long, default_value_t = 1000)]
    key_space: u64,
    /// Batch compression: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// What the values hold.
    #[arg(long, value_enum, default_value_t = Payload::Constant)]
    payload: Payload,
    /// Turn the idempotent producer off (one batch per partition in flight).
    #[arg(long)]
    no_idempotence: bool,
    /// Batches in flight per partition with idempotence.
    #[arg(long, default_value_t = 5)]
    max_in_flight: usize,
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// Messages to read in total (default: everything in the topic when the bench starts).
    #[arg(long)]
    messages: Option<u64>,
    /// Consumers in parallel, partitions split between them.
    #[arg(long, default_value_t = 1)]
    consumers: u32,
}

pub async fn run(brokers: &str, command: Command) -> anyhow::Result<()> {
    let client = crate::connect(brokers).await?;
    match command {
        Command::Produce(args) => produce(client, args).await,
        Command::Consume(args) => consume(client, args).await,
    }
}

async fn ensure_topic(client: &Client, common: &Common) -> anyhow::Result<()> {
    match Admin::new(client.clone())
        .create_topic(NewTopic {
            replication_factor: common.replicas,
            ..NewTopic::new(&common.topic, common.partitions)
        })
        .await
    {
        Ok(()) => Ok(()),
        Err(ClientError::Broker {
            code: ErrorCode::TOPIC_ALREADY_EXISTS,
            ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn progress(total: u64, format: Format) -> ProgressBar {
    let bar = if format == Format::Json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

async fn produce(client: Client, args: ProduceArgs) -> anyhow::Result<()> {
    ensure_topic(&client, &args.common).await?;
    let values = Arc::new(match args.payload {
        Payload::Constant => vec![Bytes::from(vec![b'x'; args.size])],
        Payload::Json => json_values(4096, args.size),
    });
    let latencies = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let bar = progress(args.messages, args.common.format);
    let deadline = args
        .duration_secs
        .map(|s| Instant::now() + Duration::from_secs(s));
    let config = ProducerConfig {
        acks: args.acks.into(),
        batch_size_bytes: args.batch_size,
        linger: Duration::from_millis(args.linger_ms),
        sticky_partition_bytes: args.sticky_partition_bytes,
        compression: args.compression,
        enable_idempotence: !args.no_idempotence,
        max_in_flight_per_partition: args.max_in_flight,
        ..ProducerConfig::default()
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..u64::from(args.producers.max(1)) {
        let share = args.messages / u64::from(args.producers.max(1))
            + u64::from(p < args.messages % u64::from(args.producers.max(1)));
        let (client, config, values, latencies, errors, acked, bar, topic) = (
            client.clone(),
            config.clone(),
            values.clone(),
            latencies.clone(),
            errors.clone(),
            acked.clone(),
            bar.clone(),
            args.common.topic.clone(),
        );
        let (keys, key_space) = (args.keys, args.key_space.max(1));
        tasks.push(tokio::spawn(async move {
            let producer = Producer::new(client, config);
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(
                Instant,
                rill_client::producer::DeliveryFuture,
            )>(65_536);
            let acker = tokio::spawn(async move {
                while let Some((sent, delivery)) = rx.recv().await {
                    match delivery.await {
                        Ok(_) => {
                            let micros = sent.elapsed().as_micros().clamp(1, 600_000_000) as u64;
                            latencies
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .saturating_record(micros);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    bar.inc(1);
                }
            });
            let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (p + 1);
            for i in 0..share {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let value = values[(i % values.len() as u64) as usize].clone();
                let mut record = Record::new(&topic).value(value);
                match keys {
                    Keys::None => {}
                    Keys::Sequential => record = record.key((i % key_space).to_string()),
                    Keys::Random => {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        record = record.key((seed % key_space).to_string());
                    }
                }
                let sent = Instant::now();
                let delivery = producer.send(record).await?;
                if tx.send((sent, delivery)).await.is_err() {
                    break;
                }
            }
            producer.flush().await;
            drop(tx);
            acker
                .await
                .map_err(|e| anyhow::anyhow!("acknowledgement task failed: {e}"))?;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let histogram = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report(
        "produce",
        &args.common,
        acked.load(Ordering::Relaxed),
        (args.size) as u64,
        errors.load(Ordering::Relaxed),
        elapsed,
        &histogram,
        "send to acknowledgement",
    )
}

async fn consume(client: Client, args: ConsumeArgs) -> anyhow::Result<()> {
    ensure_topic(&client, &args.common).await?;
    let admin = Admin::new(client.clone());
    let earliest = admin
        .list_offsets(&args.common.topic, OffsetSpec::Earliest)
        .await?;
    let latest = admin
        .list_offsets(&args.common.topic, OffsetSpec::Latest)
        .await?;
    let available: u64 = latest
        .iter()
        .zip(&earliest)
        .map(|((_, l), (_, e))| l.unwrap_or(0).saturating_sub(e.unwrap_or(0)))
        .sum();
    let total = args.messages.unwrap_or(available);
    if total == 0 {
        anyhow::bail!(
            "topic {} is empty: run `rill bench produce` first or pass --messages",
            args.common.topic
        );
    }
    let partitions: Vec<u32> = latest.iter().map(|(p, _)| *p).collect();
    let consumers = args.consumers.max(1).min(partitions.len() as u32) as usize;
    let latencies = Arc::new(Mutex::new(histogram()));
    let consumed = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let bar = progress(total, args.common.format);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..consumers {
        let mine: Vec<(String, u32)> = partitions
            .iter()
            .skip(c)
            .step_by(consumers)
            .map(|p| (args.common.topic.clone(), *p))
            .collect();
        let (client, latencies, consumed, bytes, bar) = (
            client.clone(),
            latencies.clone(),
            consumed.clone(),
            bytes.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(client, ConsumerConfig::default());
            consumer.assign(mine);
            consumer.seek_all(SeekTo::Earliest).await?;
            let mut idle_since = Instant::now();
            while consumed.load(Ordering::Relaxed) < total {
                let polled = Instant::now();
                let records = consumer.poll(Duration::from_millis(500)).await?;
                if records.is_empty() {
                    if idle_since.elapsed() > Duration::from_secs(10) {
                        break; // this consumer's partitions are drained
                    }
                    continue;
                }
                idle_since = Instant::now();
                let micros = polled.elapsed().as_micros().clamp(1, 600_000_000) as u64;
                latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .saturating_record(micros);
                let n = records.len() as u64;
                let b: usize = records
                    .iter()
                    .map(|r| {
                        r.value.as_ref().map_or(0, Bytes::len)
                            + r.key.as_ref().map_or(0, Bytes::len)
                    })
                    .sum();
                bytes.fetch_add(b as u64, Ordering::Relaxed);
                consumed.fetch_add(n, Ordering::Relaxed);
                bar.inc(n);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let count = consumed.load(Ordering::Relaxed);
    let average = bytes
        .load(Ordering::Relaxed)
        .checked_div(count)
        .unwrap_or(0);
    let histogram = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report(
        "consume",
        &args.common,
        count,
        average,
        0,
        elapsed,
        &histogram,
        "poll returning records",
    )
}

#[allow(clippy::too_many_arguments)]
fn report(
    kind: &str,
    common: &Common,
    records: u64,
    record_bytes: u64,
    errors: u64,
    elapsed: Duration,
    latencies: &Histogram<u64>,
    latency_of: &str,
) -> anyhow::Result<()> {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let records_per_sec = records as f64 / seconds;
    let mb_per_sec = (records * record_bytes) as f64 / seconds / 1e6;
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    let percentiles = [
        ("p50", ms(0.5)),
        ("p90", ms(0.9)),
        ("p99", ms(0.99)),
        ("p99.9", ms(0.999)),
        ("max", latencies.max() as f64 / 1000.0),
    ];
    if common.format == Format::Json {
        let mut latency = serde_json::Map::new();
        for (name, value) in percentiles {
            latency.insert(format!("{name}_ms"), serde_json::json!(value));
        }
        let value = serde_json::json!({
            "bench": kind, "topic": common.topic, "records": records, "errors": errors, "seconds": seconds,
            "records_per_sec": records_per_sec, "mb_per_sec": mb_per_sec, "latency_of": latency_of, "latency": latency,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "{kind} {}: {records} records in {seconds:.2} s, {errors} errors",
            common.topic
        );
        println!("  {records_per_sec:.0} records/s, {mb_per_sec:.1} MB/s");
        let line: Vec<String> = percentiles
            .iter()
            .map(|(n, v)| format!("{n} {v:.2} ms"))
            .collect();
        println!("  latency ({latency_of}): {}", line.join(", "));
    }
    if errors > 0 {
        anyhow::bail!("{errors} records failed");
    }
    Ok(())
}
