//! `rill bench produce|consume`: a load generator in the spirit of kafka-producer-perf-test,
//! OpenMessaging Benchmark and iggy-bench. It creates its topic if missing, runs producers (and,
//! with `--consumers`, consumers reading what they write) in parallel, shows a progress bar, and
//! reports records/s, MB/s (10^6 bytes of keys and values) and latency percentiles from HDR
//! histograms, as a table or as JSON (`--format json`).
//!
//! - `produce` runs as fast as the producers can, or open-loop at `--rate` records/s, where a
//!   record's latency counts from the time the schedule meant to send it (no coordinated
//!   omission: a stalled broker shows as latency, not as fewer samples).
//! - `produce --consumers M` also measures end-to-end latency: each record carries its intended
//!   send time in a header (`rill_client::bench::SENT_HEADER`) and the consumers, positioned at
//!   the end of the topic before the first send, take `now - sent` on receipt.
//! - `--warmup-secs` excludes the first seconds from every figure.
//! - `consume` reads a topic from the beginning as fast as the consumers can.
//!
//! `produce.rs` and `consume.rs` run the two workloads; the schedule, the counters and the
//! report are `rill_client::bench`'s, shared with the peer benchmark in `benches/peers`.

mod consume;
mod produce;

use std::path::PathBuf;

use bytes::Bytes;
use clap::{Subcommand, ValueEnum};
use rill_client::bench::{Reader, Received, SENT_HEADER};
use rill_client::{Admin, Client, ClientError, Compression, Consumer, ConsumerConfig, NewTopic};
use rill_protocol::ErrorCode;

use crate::produce::AcksArg;
use crate::Format;

/// Largest payload file read, so a wrong path (a disk image, say) fails clearly.
const PAYLOAD_FILE_MAX_BYTES: u64 = 256 << 20;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Produce records, as fast as the producers can or at a fixed rate (`--rate`); with
    /// `--consumers`, also consume them and measure end-to-end latency.
    Produce(ProduceArgs),
    /// Consume a topic from the beginning as fast as the consumers can.
    Consume(ConsumeArgs),
}

#[derive(Debug, clap::Args)]
pub struct Common {
    #[arg(long, default_value = "rill-bench")]
    topic: String,
    /// Partitions of the topic if the bench creates it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    partitions: u32,
    /// Replication factor of the topic if the bench creates it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    replicas: u16,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Threads the bench's clients run on. Default: one per producer and consumer, at most
    /// half the machine's cores (at least one), leaving the rest to a broker on the same
    /// machine (`rill_client::bench::threads`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Payload {
    /// `--size` bytes of 'x' (compresses to almost nothing).
    Constant,
    /// JSON events of about `--size` bytes, varying per record (user ids, pages, numbers,
    /// timestamps): a realistic payload for measuring compression.
    Json,
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
    /// Records to send in total, warm-up included (default 1,000,000, or no limit with
    /// `--duration-secs`).
    #[arg(long)]
    messages: Option<u64>,
    /// Stop sending this many seconds after the warm-up, even if records remain.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    duration_secs: Option<u64>,
    /// Seconds at the start whose records count in no figure (connections, metadata, page
    /// faults of fresh segments and first-touch memory settle meanwhile).
    #[arg(long, default_value_t = 0.0, value_parser = parse_seconds)]
    warmup_secs: f64,
    /// Open loop: send this many records per second in total, spread over the producers, and
    /// count each record's latency from its scheduled send time. Default: as fast as possible.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Take values from this file, one per line (empty lines skipped), cycling through them,
    /// instead of generating `--size` bytes (as kafka-producer-perf-test's --payload-file).
    #[arg(long, conflicts_with_all = ["size", "payload"])]
    payload_file: Option<PathBuf>,
    /// Producers in parallel, each with its own connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    producers: u32,
    /// Consumers reading the records as they are written (partitions split between them),
    /// for end-to-end latency. 0: none.
    #[arg(long, default_value_t = 0)]
    consumers: u32,
    #[arg(long, value_enum, default_value = "1")]
    acks: AcksArg,
    #[arg(long, default_value_t = 256 * 1024)]
    batch_size: usize,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Send a partition's batch at once when it has no request in flight (linger only while
    /// requests are in flight): lower latency at modest rates.
    #[arg(long)]
    send_when_idle: bool,
    /// Unkeyed records move to the next partition after this many bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    sticky_partition_bytes: usize,
    #[arg(long, value_enum, default_value_t = Keys::None)]
    keys: Keys,
    /// Each producer sends to one partition only: producer i to partition i modulo the
    /// topic's partitions (iggy-bench's pinned producers), instead of spreading its records
    /// over every partition.
    #[arg(long, conflicts_with = "keys")]
    pinned: bool,
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
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
    /// Batches in flight per partition with idempotence: at most 5, the last batches of a
    /// producer a leader remembers to recognise a retry.
    #[arg(
        long,
        default_value_t = 5,
        value_parser = clap::value_parser!(u64)
            .range(1..=rill_protocol::batch::IDEMPOTENT_MAX_IN_FLIGHT as u64)
    )]
    max_in_flight: u64,
    /// Bytes of records a producer buffers (queued or in flight) before `send` waits (Kafka's
    /// `buffer.memory`).
    #[arg(long, default_value_t = 32 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    buffer_memory: u64,
    /// How long a record may take to be acknowledged, retries included, before it fails
    /// (Kafka's `delivery.timeout.ms`).
    #[arg(long, default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(1..))]
    delivery_timeout_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// Messages to read in total (default: everything in the topic when the bench starts).
    #[arg(long)]
    messages: Option<u64>,
    /// Consumers in parallel, partitions split between them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    consumers: u32,
    /// Bytes a fetch response holds at most (Kafka's `fetch.max.bytes`).
    #[arg(long, default_value_t = ConsumerConfig::default().fetch_max_bytes, value_parser = clap::value_parser!(u32).range(1..))]
    fetch_max_bytes: u32,
    /// Bytes a fetch returns per partition at most (Kafka's `max.partition.fetch.bytes`); at
    /// least one batch comes back whatever its size.
    #[arg(long, default_value_t = ConsumerConfig::default().partition_max_bytes, value_parser = clap::value_parser!(u32).range(1..))]
    partition_max_bytes: u32,
}

impl Command {
    /// The worker threads to run the bench on (`--threads`, or its default).
    pub fn threads(&self) -> usize {
        let (common, clients) = match self {
            Command::Produce(args) => (&args.common, args.producers + args.consumers),
            Command::Consume(args) => (&args.common, args.consumers),
        };
        rill_client::bench::threads(common.threads, clients)
    }
}

pub async fn run(brokers: &str, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Produce(args) => {
            // Arguments and payload first: a mistake fails before any connection is tried.
            let values = produce::check(&args)?;
            produce::run(brokers, args, values).await
        }
        Command::Consume(args) => consume::run(brokers, args).await,
    }
}

/// A consumer as the measuring code reads: each record's sent stamp and key and value bytes.
struct Reading(Consumer);

impl Reader for Reading {
    async fn read(&mut self, wait: std::time::Duration) -> Result<Vec<Received>, String> {
        let records = self.0.poll(wait).await.map_err(|e| e.to_string())?;
        Ok(records
            .iter()
            .map(|r| {
                let stamp = r
                    .headers
                    .iter()
                    .find(|h| h.key.as_ref() == SENT_HEADER.as_bytes())
                    .and_then(|h| <[u8; 8]>::try_from(h.value.as_deref()?).ok());
                let bytes =
                    r.value.as_ref().map_or(0, Bytes::len) + r.key.as_ref().map_or(0, Bytes::len);
                (stamp, bytes as u64)
            })
            .collect())
    }
}

/// Seconds as a finite, non-negative decimal number.
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => Ok(s),
        _ => Err(format!(
            "`{text}` is not a number of seconds between 0 and 86400"
        )),
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

/// The values the producers cycle through.
fn values(args: &ProduceArgs) -> anyhow::Result<Vec<Bytes>> {
    if let Some(path) = &args.payload_file {
        return payload_file(path);
    }
    Ok(match args.payload {
        Payload::Constant => vec![Bytes::from(vec![b'x'; args.size])],
        Payload::Json => json_values(4096, args.size),
    })
}

/// The non-empty lines of `path` (a trailing `\r` dropped), as values.
fn payload_file(path: &std::path::Path) -> anyhow::Result<Vec<Bytes>> {
    let length = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("payload file {}: {e}", path.display()))?
        .len();
    if length > PAYLOAD_FILE_MAX_BYTES {
        anyhow::bail!(
            "payload file {} is {length} bytes; the limit is {PAYLOAD_FILE_MAX_BYTES}: use a smaller sample of records",
            path.display()
        );
    }
    let content = Bytes::from(
        std::fs::read(path).map_err(|e| anyhow::anyhow!("payload file {}: {e}", path.display()))?,
    );
    let values = split_lines(&content);
    if values.is_empty() {
        anyhow::bail!(
            "payload file {} has no non-empty line: put one record value per line",
            path.display()
        );
    }
    Ok(values)
}

/// Splits `content` at `\n` into slices of it (no copy), dropping a trailing `\r` and empty lines.
fn split_lines(content: &Bytes) -> Vec<Bytes> {
    let mut values = Vec::new();
    let mut start = 0;
    for (i, byte) in content.iter().enumerate() {
        if *byte == b'\n' {
            push_line(content, start, i, &mut values);
            start = i + 1;
        }
    }
    push_line(content, start, content.len(), &mut values);
    values
}

fn push_line(content: &Bytes, start: usize, mut end: usize, values: &mut Vec<Bytes>) {
    if end > start && content[end - 1] == b'\r' {
        end -= 1;
    }
    if end > start {
        values.push(content.slice(start..end));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_without_empty_ones_or_carriage_returns() {
        let content = Bytes::from_static(b"a\r\n\nbc\nd");
        assert_eq!(split_lines(&content), vec!["a", "bc", "d"]);
        assert!(split_lines(&Bytes::from_static(b"\n\r\n")).is_empty());
        assert_eq!(split_lines(&Bytes::from_static(b"x\n")), vec!["x"]);
    }

    #[test]
    fn seconds_must_be_finite_and_non_negative() {
        assert_eq!(parse_seconds("1.5"), Ok(1.5));
        assert_eq!(parse_seconds("0"), Ok(0.0));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
