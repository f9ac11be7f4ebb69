//! `rill bench consume`: reads a topic from the beginning with `--consumers` consumers in
//! parallel (partitions split between them); latency is the time of each poll that returned
//! records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rill_client::bench::{drain, histogram, progress, Percentiles, Report};
use rill_client::protocol::api::OffsetSpec;
use rill_client::{Admin, Consumer, ConsumerConfig, SeekTo};

use super::{ensure_topic, ConsumeArgs, Reading};
use crate::Format;

/// Every consumer is a client of its own, with its own connections (see `produce::run`).
pub async fn run(brokers: &str, args: ConsumeArgs) -> anyhow::Result<()> {
    let client = crate::connect(brokers).await?;
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
    let consumers = args.consumers.min(partitions.len() as u32).max(1) as usize;
    let consumed = Arc::new(AtomicU64::new(0));
    let bar = progress(Some(total), args.common.format == Format::Json);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..consumers {
        let mine: Vec<(String, u32)> = partitions
            .iter()
            .skip(c)
            .step_by(consumers)
            .map(|p| (args.common.topic.clone(), *p))
            .collect();
        let client = crate::connect(brokers).await?;
        let (consumed, bar) = (consumed.clone(), bar.clone());
        let config = ConsumerConfig {
            fetch_max_bytes: args.fetch_max_bytes,
            partition_max_bytes: args.partition_max_bytes,
            ..ConsumerConfig::default()
        };
        tasks.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(client, config);
            consumer.assign(mine);
            consumer.seek_all(SeekTo::Earliest).await?;
            drain(&mut Reading(consumer), total, &consumed, &bar)
                .await
                .map_err(anyhow::Error::msg)
        }));
    }
    let mut latencies = histogram();
    let mut bytes = 0;
    for task in tasks {
        let (read, read_bytes) = task.await??;
        latencies.add(read)?;
        bytes += read_bytes;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    bar.finish_and_clear();
    let records = consumed.load(Ordering::Relaxed);
    Report {
        bench: "consume",
        topic: args.common.topic.clone(),
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
        latency_of: "poll returning records",
        latency: Percentiles::of(&latencies),
        end_to_end: None,
    }
    .print(args.common.format == Format::Json)
    .map_err(anyhow::Error::msg)
}
