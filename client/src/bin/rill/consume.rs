//! `rill consume TOPIC`: prints records; follows the log like `tail -f` unless `--count` or
//! `--timeout-ms` says when to stop.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rill_client::{Consumer, ConsumerConfig, ConsumerRecord, GroupConfig, OffsetReset, SeekTo};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RecordFormat {
    /// The value only.
    Value,
    /// key<TAB>value
    KeyValue,
    /// One JSON object per line with topic, partition, offset, timestamp, key, value.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    topic: String,
    /// Start at the earliest offset (default: only new records).
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset (in every selected partition).
    #[arg(long)]
    offset: Option<u64>,
    /// Only this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Stop after this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long without a record.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Consume as a member of this group (partitions shared with other members, offsets
    /// committed; starts at the group's committed offsets, or per --from-beginning otherwise).
    #[arg(long, conflicts_with_all = ["offset", "partition"])]
    group: Option<String>,
    /// How to print each record.
    #[arg(long, value_enum, default_value_t = RecordFormat::Value)]
    format: RecordFormat,
}

pub async fn run(brokers: &str, args: Args) -> anyhow::Result<()> {
    let client = crate::connect(brokers).await?;
    let reset = if args.from_beginning {
        OffsetReset::Earliest
    } else {
        OffsetReset::Latest
    };
    let mut consumer = Consumer::new(
        client.clone(),
        ConsumerConfig {
            offset_reset: reset,
            ..ConsumerConfig::default()
        },
    );
    if let Some(group) = &args.group {
        // Commits are made here, for exactly the records printed (see below).
        let config = GroupConfig {
            auto_commit_interval: None,
            ..GroupConfig::new(group.clone())
        };
        consumer.subscribe(config, &[args.topic.as_str()]);
    } else {
        match args.partition {
            Some(p) => consumer.assign([(args.topic.clone(), p)]),
            None => consumer.assign_topic(&args.topic).await?,
        }
        let start = match (args.offset, args.from_beginning) {
            (Some(offset), _) => SeekTo::Offset(offset),
            (None, true) => SeekTo::Earliest,
            (None, false) => SeekTo::Latest,
        };
        consumer.seek_all(start).await?;
    }
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut printed_positions: std::collections::BTreeMap<(String, u32), u64> = Default::default();
    let mut last_record = Instant::now();
    let idle = args.timeout_ms.map(Duration::from_millis);
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
        if idle.is_some_and(|idle| last_record.elapsed() >= idle) {
            break;
        }
        let wait = idle.map_or(Duration::from_millis(500), |idle| {
            idle.saturating_sub(last_record.elapsed())
                .min(Duration::from_millis(500))
        });
        let records = tokio::select! {
            records = consumer.poll(wait) => records?,
            _ = tokio::signal::ctrl_c() => break,
        };
        if !records.is_empty() {
            last_record = Instant::now();
        }
        for record in records {
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
            print(&mut stdout, &record, args.format)?;
            printed += 1;
            printed_positions.insert(
                (record.topic.to_string(), record.partition),
                record.offset + 1,
            );
        }
        stdout.flush()?;
        if args.group.is_some() && !printed_positions.is_empty() {
            consumer
                .commit_offsets(std::mem::take(&mut printed_positions))
                .await?;
        }
    }
    if args.group.is_some() {
        // What was printed is committed: leave the group, so the next member starts after it.
        consumer.close().await?;
    }
    Ok(())
}

fn text(bytes: &Option<bytes::Bytes>) -> Option<String> {
    bytes
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn print(
    out: &mut impl Write,
    record: &ConsumerRecord,
    format: RecordFormat,
) -> std::io::Result<()> {
    match format {
        RecordFormat::Value => writeln!(out, "{}", text(&record.value).unwrap_or_default()),
        RecordFormat::KeyValue => writeln!(
            out,
            "{}\t{}",
            text(&record.key).unwrap_or_default(),
            text(&record.value).unwrap_or_default()
        ),
        RecordFormat::Json => {
            let value = serde_json::json!({
                "topic": &*record.topic, "partition": record.partition, "offset": record.offset,
                "timestamp": record.timestamp, "key": text(&record.key), "value": text(&record.value),
            });
            writeln!(out, "{value}")
        }
    }
}
