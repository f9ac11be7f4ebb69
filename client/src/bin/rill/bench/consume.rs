//! `rill bench consume`: reads a topic from the beginning with `--consumers` consumers in
//! parallel (partitions split between them); latency is the time of each poll that returned
//! records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_client::bench::{histogram, progress, record, Percentiles, Report};
use rill_client::protocol::api::OffsetSpec;
use rill_client::{Admin, Client, Consumer, ConsumerConfig, SeekTo};

use super::{ensure_topic, ConsumeArgs};
use crate::Format;

/// A consumer whose partitions returned nothing for this long counts them as drained.
const DRAINED_AFTER: Duration = Duration::from_secs(10);

pub async fn run(client: Client, args: ConsumeArgs) -> anyhow::Result<()> {
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
    let bytes = Arc::new(AtomicU64::new(0));
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
        let (client, consumed, bytes, bar) =
            (client.clone(), consumed.clone(), bytes.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(client, ConsumerConfig::default());
            consumer.assign(mine);
            consumer.seek_all(SeekTo::Earliest).await?;
            let mut latencies = histogram();
            let mut idle_since = Instant::now();
            while consumed.load(Ordering::Relaxed) < total {
                let polled = Instant::now();
                let records = consumer.poll(Duration::from_millis(500)).await?;
                if records.is_empty() {
                    if idle_since.elapsed() > DRAINED_AFTER {
                        break;
                    }
                    continue;
                }
                idle_since = Instant::now();
                record(&mut latencies, polled.elapsed());
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
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = histogram();
    for task in tasks {
        latencies.add(task.await??)?;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    bar.finish_and_clear();
    let records = consumed.load(Ordering::Relaxed);
    let bytes = bytes.load(Ordering::Relaxed);
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
