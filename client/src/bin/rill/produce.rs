//! `rill produce TOPIC`: one record per stdin line.

use std::time::Instant;

use clap::ValueEnum;
use rill_client::{Acks, Compression, Producer, ProducerConfig, Record};
use tokio::io::AsyncBufReadExt;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AcksArg {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    #[value(name = "all")]
    All,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Acks {
        match a {
            AcksArg::None => Acks::None,
            AcksArg::Leader => Acks::Leader,
            AcksArg::All => Acks::All,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    topic: String,
    /// Split each line into key and value at the first SEP.
    #[arg(long)]
    key_separator: Option<String>,
    /// Send every record to this partition.
    #[arg(long)]
    partition: Option<u32>,
    #[arg(long, value_enum, default_value = "1")]
    acks: AcksArg,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Batch compression: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    compression: Compression,
}

pub async fn run(brokers: &str, args: Args) -> anyhow::Result<()> {
    let client = crate::connect(brokers).await?;
    let config = ProducerConfig {
        acks: args.acks.into(),
        linger: std::time::Duration::from_millis(args.linger_ms),
        compression: args.compression,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config);
    let started = Instant::now();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut pending = std::collections::VecDeque::new();
    let (mut records, mut bytes, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    while let Some(line) = lines.next_line().await? {
        let mut record = Record::new(&args.topic);
        match args
            .key_separator
            .as_deref()
            .and_then(|sep| line.split_once(sep))
        {
            Some((key, value)) => record = record.key(key.to_string()).value(value.to_string()),
            None => record = record.value(line.clone()),
        }
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        bytes += line.len() as u64;
        records += 1;
        pending.push_back(producer.send(record).await?);
        // Keep memory bounded for huge inputs: settle the oldest deliveries as we go.
        while pending.len() > 100_000 {
            if let Some(delivery) = pending.pop_front() {
                if let Err(e) = delivery.await {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    producer.flush().await;
    for delivery in pending {
        if let Err(e) = delivery.await {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "produced {} records ({bytes} bytes) to {} in {:.3} s",
        records - failed,
        args.topic,
        elapsed.as_secs_f64()
    );
    if let Some(e) = first_error {
        anyhow::bail!("{failed} of {records} records failed; first error: {e}");
    }
    Ok(())
}
