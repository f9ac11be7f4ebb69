//! `rill bench produce`: `--producers` producers send records, as fast as they can or open-loop
//! at `--rate`; `--consumers` consumers, positioned at the end of the topic before the first
//! send, read them back for end-to-end latency. The schedule, the counting and the report are
//! [`rill_client::bench::Measure`]'s (its docs say how time and the warm-up count).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use rill_client::bench::{histogram, Measure, Mode, SENT_HEADER};
use rill_client::protocol::api::OffsetSpec;
use rill_client::{
    Admin, Client, Consumer, ConsumerConfig, Deliveries, Producer, ProducerConfig, Record, SeekTo,
};
use tokio::time::Instant;

use super::{ensure_topic, values, Keys, ProduceArgs, Reading};
use crate::Format;

/// Records sent and not yet acknowledged that a producer's acknowledgement task holds at most
/// (beyond it, sends wait).
const PENDING_RECORDS_MAX: usize = 65_536;

/// Records sent when `--messages` and `--duration-secs` are both absent.
const DEFAULT_MESSAGES: u64 = 1_000_000;

/// What one producer task sends.
struct Plan {
    producer: u64,
    /// Records to send at most.
    limit: Option<u64>,
    /// Records per second, or as fast as possible.
    rate: Option<u64>,
    /// Stamp each record's send time in a header, for the consumers.
    stamp: bool,
    keys: Keys,
    key_space: u64,
    /// The one partition it sends to (`--pinned`).
    partition: Option<u32>,
}

/// Checks what clap cannot and loads the values to send.
pub fn check(args: &ProduceArgs) -> anyhow::Result<Vec<Bytes>> {
    if args
        .rate
        .is_some_and(|rate| rate < u64::from(args.producers))
    {
        anyhow::bail!(
            "--rate must be at least --producers (each producer sends at least 1 record/s)"
        );
    }
    if args.consumers > 0 && matches!(args.acks, crate::produce::AcksArg::None) {
        anyhow::bail!(
            "--consumers counts the acknowledged records no consumer received: use --acks 1 or all"
        );
    }
    values(args)
}

/// Every producer and consumer is a client of its own, with its own connections, as separate
/// applications (and iggy-bench's actors) are: on one shared connection the broker serves their
/// requests one after another, whatever the cores.
pub async fn run(brokers: &str, args: ProduceArgs, values: Vec<Bytes>) -> anyhow::Result<()> {
    let client = crate::connect(brokers).await?;
    let producers = u64::from(args.producers);
    ensure_topic(&client, &args.common).await?;
    // The topic's own count: it may have existed before the run.
    let partitions = client.partition_count(&args.common.topic).await?;
    let values = Arc::new(values);
    let messages = match (args.messages, args.duration_secs) {
        (Some(m), _) => Some(m),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_MESSAGES),
    };
    let consumers = position_consumers(brokers, &client, &args).await?;
    let consumer_count = consumers.len() as u32;
    let config = ProducerConfig {
        acks: args.acks.into(),
        batch_size_bytes: args.batch_size,
        linger: Duration::from_millis(args.linger_ms),
        send_when_idle: args.send_when_idle,
        sticky_partition_bytes: args.sticky_partition_bytes,
        compression: args.compression,
        enable_idempotence: !args.no_idempotence,
        max_in_flight_per_partition: args.max_in_flight as usize,
        buffer_memory_bytes: usize::try_from(args.buffer_memory).unwrap_or(usize::MAX),
        delivery_timeout: Duration::from_millis(args.delivery_timeout_ms),
        ..ProducerConfig::default()
    };
    let measure = Arc::new(Measure::new(
        Duration::from_secs_f64(args.warmup_secs),
        args.duration_secs.map(Duration::from_secs),
        messages,
        args.common.format == Format::Json,
    ));
    let consumer_tasks: Vec<_> = consumers
        .into_iter()
        .map(|consumer| tokio::spawn(consume(measure.clone(), consumer)))
        .collect();
    let mut producer_tasks = Vec::new();
    for p in 0..producers {
        let plan = Plan {
            producer: p,
            limit: messages.map(|m| m / producers + u64::from(p < m % producers)),
            rate: args
                .rate
                .map(|r| r / producers + u64::from(p < r % producers)),
            stamp: consumer_count > 0,
            keys: args.keys,
            key_space: args.key_space,
            partition: args.pinned.then(|| (p % u64::from(partitions)) as u32),
        };
        let producer = Producer::new(crate::connect(brokers).await?, config.clone());
        producer_tasks.push(tokio::spawn(produce(
            measure.clone(),
            producer,
            plan,
            values.clone(),
            Arc::from(args.common.topic.as_str()),
        )));
    }
    let mut produce_latency = histogram();
    for task in producer_tasks {
        produce_latency.add(task.await??)?;
    }
    measure.senders_done();
    let mut e2e_latency = histogram();
    for task in consumer_tasks {
        e2e_latency.add(task.await??)?;
    }
    let mode = args.rate.map_or(Mode::Max, Mode::Rate);
    let end_to_end = (consumer_count > 0).then_some((consumer_count, &e2e_latency));
    measure
        .report(
            "produce",
            &args.common.topic,
            args.producers,
            mode,
            &produce_latency,
            end_to_end,
        )
        .and_then(|report| report.print(args.common.format == Format::Json))
        .map_err(anyhow::Error::msg)
}

/// `--consumers` consumers (at most one per partition), each assigned its share of the
/// partitions and positioned at their current ends, before anything is sent.
async fn position_consumers(
    brokers: &str,
    client: &Client,
    args: &ProduceArgs,
) -> anyhow::Result<Vec<Consumer>> {
    if args.consumers == 0 {
        return Ok(Vec::new());
    }
    let partitions: Vec<u32> = Admin::new(client.clone())
        .list_offsets(&args.common.topic, OffsetSpec::Latest)
        .await?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let count = (args.consumers as usize).min(partitions.len()).max(1);
    let mut consumers = Vec::with_capacity(count);
    for c in 0..count {
        let mut consumer = Consumer::new(crate::connect(brokers).await?, ConsumerConfig::default());
        consumer.assign(
            partitions
                .iter()
                .skip(c)
                .step_by(count)
                .map(|p| (args.common.topic.clone(), *p)),
        );
        consumer.seek_all(SeekTo::Latest).await?;
        consumers.push(consumer);
    }
    Ok(consumers)
}

/// Records a producer hands over in one [`Producer::send_batch`] when it sends as fast as it
/// can (at a rate, each record goes at its own time). Measured, 1M x 1 KiB, 4 pinned
/// producers into 4 partitions, in the commit that made this: see its message.
const SEND_CHUNK: u64 = 64;

/// Records sent together: when, each one's key and value bytes, and their deliveries.
struct Sent {
    start: Instant,
    bytes: Vec<u64>,
    deliveries: Deliveries,
}

/// One producer's send loop; returns its send-to-acknowledgement latencies.
async fn produce(
    measure: Arc<Measure>,
    producer: Producer,
    plan: Plan,
    values: Arc<Vec<Bytes>>,
    topic: Arc<str>,
) -> anyhow::Result<Histogram<u64>> {
    let chunk = if plan.rate.is_some() { 1 } else { SEND_CHUNK };
    let (tx, rx) = tokio::sync::mpsc::channel(PENDING_RECORDS_MAX / chunk as usize);
    let acker = tokio::spawn(acknowledge(measure.clone(), rx));
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (plan.producer + 1);
    let mut records = Vec::with_capacity(chunk as usize);
    let mut i = 0u64;
    while plan.limit.is_none_or(|limit| i < limit) {
        let Some(start) = measure.schedule(i, plan.rate).await else {
            break;
        };
        let n = plan.limit.map_or(chunk, |limit| chunk.min(limit - i));
        let mut bytes = Vec::with_capacity(n as usize);
        for j in i..i + n {
            let value = values[(j % values.len() as u64) as usize].clone();
            let mut size = value.len() as u64;
            let mut record = Record::new(&topic).value(value);
            if let Some(partition) = plan.partition {
                record = record.partition(partition);
            }
            let key = match plan.keys {
                Keys::None => None,
                Keys::Sequential => Some(j % plan.key_space),
                Keys::Random => {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    Some(seed % plan.key_space)
                }
            };
            if let Some(key) = key {
                let key = key.to_string();
                size += key.len() as u64;
                record = record.key(key);
            }
            if plan.stamp {
                record = record.header(SENT_HEADER, measure.stamp(start).to_vec());
            }
            bytes.push(size);
            records.push(record);
        }
        let mut deliveries = Deliveries::new();
        let sent = producer
            .send_batch(records.drain(..), &mut deliveries)
            .await;
        // What was queued before an error is still counted.
        bytes.truncate(deliveries.len());
        let queued = bytes.len() as u64;
        let sent_chunk = Sent {
            start,
            bytes,
            deliveries,
        };
        // A try first: an awaited send builds a future that takes the channel's lock.
        let pending = match tx.try_send(sent_chunk) {
            Ok(()) => None,
            Err(tokio::sync::mpsc::error::TrySendError::Full(pending)) => Some(pending),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
        };
        if let Some(pending) = pending {
            if tx.send(pending).await.is_err() {
                break;
            }
        }
        sent.map_err(|e| anyhow::anyhow!("producer {}: send: {e}", plan.producer))?;
        i += queued;
    }
    if measure.failed() {
        // The run has failed: what is queued would only wait out its own delivery timeout
        // (a broker that vanished: each batch queued after the first failure, another 120 s).
        producer.abort();
    }
    producer.flush().await;
    drop(tx);
    acker
        .await
        .map_err(|e| anyhow::anyhow!("acknowledgement task failed: {e}"))
}

/// Sends the acknowledgement task takes from its channel at a time.
const ACK_CHUNK: usize = 256;

/// Acknowledgements that may share one clock reading when they are found complete without a
/// wait.
const SHARED_CLOCK_MAX: u64 = 64;

/// Waits for a producer's deliveries in the order they were sent; returns their latencies.
/// A partition's records complete in order, and one batch's all at once, so waiting in order
/// delays a reading only when partitions complete out of order; a `FuturesUnordered` over
/// every record measured that more exactly but cost the bench a third of its instructions
/// (callgrind), CPU that the producer and the broker share. For the same reason the clock is
/// read when a delivery had to be waited for, and otherwise once per [`SHARED_CLOCK_MAX`]
/// records found complete (the rest of a batch, completed together), and sends come off the
/// channel [`ACK_CHUNK`] at a time.
async fn acknowledge(
    measure: Arc<Measure>,
    mut sent: tokio::sync::mpsc::Receiver<Sent>,
) -> Histogram<u64> {
    use futures::FutureExt;
    let mut latencies = histogram();
    let mut chunk = Vec::with_capacity(ACK_CHUNK);
    let mut now = Instant::now();
    while sent.recv_many(&mut chunk, ACK_CHUNK).await > 0 {
        // The channel may have been waited on: no reading from before it counts.
        let mut shared_clock = SHARED_CLOCK_MAX;
        for Sent {
            start,
            bytes,
            deliveries,
        } in chunk.drain(..)
        {
            let mut bytes = bytes.into_iter();
            for (mut delivery, count) in deliveries.runs() {
                let result = match (&mut delivery).now_or_never() {
                    Some(result) => result,
                    None => {
                        shared_clock = SHARED_CLOCK_MAX;
                        delivery.await
                    }
                };
                if shared_clock >= SHARED_CLOCK_MAX {
                    now = Instant::now();
                    shared_clock = 0;
                }
                shared_clock += u64::from(count);
                let run_bytes = bytes.by_ref().take(count as usize).sum();
                measure.acknowledged_many(
                    start,
                    u64::from(count),
                    run_bytes,
                    result.map(|_| ()),
                    now,
                    &mut latencies,
                );
            }
        }
    }
    latencies
}

/// One consumer's loop; returns end-to-end latencies.
async fn consume(measure: Arc<Measure>, consumer: Consumer) -> anyhow::Result<Histogram<u64>> {
    measure
        .receive(&mut Reading(consumer))
        .await
        .map_err(anyhow::Error::msg)
}
