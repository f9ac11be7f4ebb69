//! [`Producer`]: sends records in batches.
//!
//! `send` picks a partition (explicit, `murmur2(key)`, or sticky for unkeyed records), waits for
//! buffer memory if `buffer_memory_bytes` is in use (backpressure: memory never grows without
//! bound), and, when its partition already has [`QUEUED_FULL_BATCHES`] full batches waiting
//! behind those in flight, for one of them to be sent; then appends the record to that
//! partition's open batch and returns a [`DeliveryFuture`].
//! A background sender closes a batch when it reaches `batch_size_bytes` or is `linger` old
//! (or at once when its partition has no request in flight, with `send_when_idle`),
//! groups ready batches by leader into one Produce request per broker, and pipelines requests.
//! Retriable errors (not leader, disconnects, ...) refresh metadata and retry with backoff until
//! `delivery_timeout`.
//!
//! **Idempotence** (`enable_idempotence`, the default unless acks = 0): the producer gets a
//! producer id from a broker (InitProducerId) and stamps every batch with it and a
//! per-partition sequence number, so a leader writes each batch once however often it is
//! retried (a retry of a written batch is answered with its original offsets). Up to
//! `max_in_flight_per_partition` batches per partition are in flight, and still never
//! reordered: requests go out in sequence order on one connection, the broker appends a
//! connection's requests in order, and a failed batch is re-sent only after every batch sent
//! before it came back, in sequence order. If a partition loses the producer's state
//! (`UNKNOWN_PRODUCER_ID`, or `OUT_OF_ORDER_SEQUENCE` for the oldest unsettled batch:
//! acknowledged records were lost, e.g. acks = 1 and a failover, or an earlier batch failed to
//! the application, e.g. by its delivery timeout, without reaching the log) the producer takes
//! a new id and re-sends what is unacknowledged under it: a batch written but never
//! acknowledged before that may then appear twice. (Without the new id, a batch that expired
//! unwritten left a hole in the sequence that every later batch of its partition was refused
//! for, for good.) Without idempotence one batch per partition is in flight.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_protocol::api::{
    Acks, InitProducerIdRequest, ProducePartition, ProduceRequest, ProduceTopic, RequestBody,
    ResponseBody,
};
use rill_protocol::batch::{
    Compression, Header, RecordBatchBuilder, BATCH_HEADER_BYTES, IDEMPOTENT_MAX_IN_FLIGHT,
};
use rill_protocol::ErrorCode;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::client::{Client, Purpose};
use crate::error::{ClientError, Result};
use crate::partitioner::partition_for_key;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Default: leader acknowledgement.
    pub acks: Acks,
    /// A batch is sent once it reaches this size. Default 256 KiB (keep it under the broker's
    /// `max_batch_bytes`, 1 MiB by default). With one batch in flight per partition, this is
    /// the main throughput lever: see docs/OPERATIONS.md, "Benchmarking".
    pub batch_size_bytes: usize,
    /// ... or once its first record waited this long. Default 5 ms.
    pub linger: Duration,
    /// Send a partition's batch at once, without waiting for `linger`, when the partition has
    /// no request in flight; linger then applies only while requests are in flight (records
    /// arriving meanwhile would wait anyway). Lower latency at modest rates (measured: p50
    /// 4.7 -> 0.9 ms at 40,000 records/s), smaller requests at full speed (about 10% fewer
    /// 100-byte records/s). Default false: Kafka's `linger.ms` behaviour.
    pub send_when_idle: bool,
    /// Bytes of records buffered (queued or in flight) before `send` waits. Default 32 MiB.
    /// (`send` also waits while its partition has [`QUEUED_FULL_BATCHES`] full batches queued
    /// behind those in flight, so with few partitions far less is in use.)
    pub buffer_memory_bytes: usize,
    /// How long a record may take to be acknowledged, retries included. Default 120 s.
    pub delivery_timeout: Duration,
    /// Unkeyed records without a partition stick to one partition for this many bytes, then
    /// move to the next (Kafka's sticky partitioner switches after `batch.size`, 16 KiB), so
    /// they spread over the partitions without shrinking the batches sent. Default 16 KiB.
    pub sticky_partition_bytes: usize,
    /// Codec batches are compressed with (Kafka's `compression.type`). Default none.
    /// `batch_size_bytes` counts records before compression.
    pub compression: Compression,
    /// Every batch is written exactly once per partition, retries included (see the module
    /// docs). Default true, as in Kafka since 3.0; ignored with acks = 0.
    pub enable_idempotence: bool,
    /// Batches in flight per partition with idempotence (without: 1). Default 5, Kafka's
    /// `max.in.flight.requests.per.connection`, and at most
    /// [`IDEMPOTENT_MAX_IN_FLIGHT`] (5): a leader recognises retries only among a producer's
    /// last five batches, so a larger value is held to five (with a warning), as Kafka's
    /// producer refuses it.
    pub max_in_flight_per_partition: usize,
    /// How long one produce request may take before it is retried (Kafka's
    /// `request.timeout.ms`). Default: the client's `request_timeout`.
    pub request_timeout: Option<Duration>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::Leader,
            batch_size_bytes: 256 << 10,
            linger: Duration::from_millis(5),
            send_when_idle: false,
            buffer_memory_bytes: 32 << 20,
            delivery_timeout: Duration::from_secs(120),
            sticky_partition_bytes: 16 << 10,
            compression: Compression::None,
            enable_idempotence: true,
            max_in_flight_per_partition: 5,
            request_timeout: None,
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Topic to write to. Shared: a producer sending many records to one topic clones an
    /// `Arc` per record instead of allocating a `String` (`Record::new(topic.clone())`).
    pub topic: Arc<str>,
    /// Partition; `None` picks one (key hash, or sticky for unkeyed records).
    pub partition: Option<u32>,
    /// Key, if any: records with the same key go to the same partition.
    pub key: Option<Bytes>,
    /// Value, if any.
    pub value: Option<Bytes>,
    /// Headers (key and optional value).
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; default now.
    pub timestamp: Option<i64>,
}

/// What names a record's topic: `&str`, `String`, `&String`, or an `Arc<str>` (or a reference
/// to one), which a producer sending many records to one topic clones instead of allocating
/// a name per record.
pub trait IntoTopic {
    /// The topic name, shared.
    fn into_topic(self) -> Arc<str>;
}

impl IntoTopic for &str {
    fn into_topic(self) -> Arc<str> {
        Arc::from(self)
    }
}

impl IntoTopic for String {
    fn into_topic(self) -> Arc<str> {
        Arc::from(self)
    }
}

impl IntoTopic for &String {
    fn into_topic(self) -> Arc<str> {
        Arc::from(self.as_str())
    }
}

impl IntoTopic for Arc<str> {
    fn into_topic(self) -> Arc<str> {
        self
    }
}

impl IntoTopic for &Arc<str> {
    fn into_topic(self) -> Arc<str> {
        self.clone()
    }
}

impl Record {
    /// A record for `topic` with no key, value or headers.
    pub fn new(topic: impl IntoTopic) -> Record {
        Record {
            topic: topic.into_topic(),
            ..Record::default()
        }
    }
    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Record {
        self.key = Some(key.into());
        self
    }
    /// Sets the value.
    pub fn value(mut self, value: impl Into<Bytes>) -> Record {
        self.value = Some(value.into());
        self
    }
    /// Sends to this partition.
    pub fn partition(mut self, partition: u32) -> Record {
        self.partition = Some(partition);
        self
    }
    /// Sets the timestamp (ms since the Unix epoch).
    pub fn timestamp(mut self, timestamp_ms: i64) -> Record {
        self.timestamp = Some(timestamp_ms);
        self
    }
    /// Adds a header.
    pub fn header(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Record {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }
}

/// Where a record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic written to.
    pub topic: Arc<str>,
    /// Partition written to.
    pub partition: u32,
    /// `None` with `acks = 0` (the broker does not answer).
    pub offset: Option<u64>,
    /// The record's timestamp.
    pub timestamp: i64,
}

/// Resolves when the record is acknowledged (or finally fails).
pub struct DeliveryFuture {
    batch: Arc<Completion>,
    /// The record's place in its batch.
    index: u32,
    timestamp: i64,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.batch.lock();
        match &state.outcome {
            Some(Ok(base)) => Poll::Ready(Ok(RecordMetadata {
                topic: self.batch.topic.clone(),
                partition: self.batch.partition,
                offset: base.map(|b| b + u64::from(self.index)),
                timestamp: self.timestamp,
            })),
            Some(Err(e)) => Poll::Ready(Err(e.clone())),
            None => {
                if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    state.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// One batch's outcome, shared by the [`DeliveryFuture`]s of its records: one allocation per
/// batch instead of a channel per record (a oneshot per record was most of the producer's
/// allocation cost per record; callgrind figures in the commit that made this).
struct Completion {
    topic: Arc<str>,
    partition: u32,
    state: Mutex<CompletionState>,
}

#[derive(Default)]
struct CompletionState {
    /// The batch's base offset (`None` with acks = 0), or why it failed; set once.
    outcome: Option<std::result::Result<Option<u64>, ClientError>>,
    /// Futures waiting for the outcome.
    wakers: Vec<std::task::Waker>,
}

impl Completion {
    fn lock(&self) -> std::sync::MutexGuard<'_, CompletionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the outcome (the first one wins) and wakes every waiting future.
    fn resolve(&self, outcome: std::result::Result<Option<u64>, ClientError>) {
        let wakers = {
            let mut state = self.lock();
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

type TopicPartition = (Arc<str>, u32);

/// Full batches a partition keeps waiting behind its in-flight ones before `send` waits for one
/// to go. One ready batch refills the pipeline when a response frees a slot; more only wait
/// (in a closed loop, buffer memory's 32 MiB of them) and are cold in the CPU caches by the time
/// the sender checksums them and the kernel copies them into the socket. Measured, 1M x 1 KiB,
/// one partition, one run alternating: 32 MiB of queue 1,066-1,099 MB/s at 0.48-0.50 s of
/// client user CPU; a 4 MiB buffer (about this cap) 1,210-1,240 MB/s at 0.38-0.40 s.
pub const QUEUED_FULL_BATCHES: usize = 2;

/// A new batch reserves this much and grows as records arrive, so idle partitions do not hold
/// `batch_size_bytes` each. (Reserving as much as the topic's last batch instead saved the
/// regrowth's copies, 8% of a 1 KiB record's instructions by callgrind, but no time: three
/// alternating rounds each, 1.02-1.08M records/s with it, 1.04-1.09M without.)
const INITIAL_BATCH_BYTES: usize = 16 << 10;

struct Batch {
    builder: RecordBatchBuilder,
    built: Option<Bytes>,
    created: Instant,
    full: bool,
    /// Records in the batch, and where their futures learn the outcome.
    records: u32,
    completion: Arc<Completion>,
    /// The buffer memory its records hold (one permit, merged as records arrive).
    _memory: Option<OwnedSemaphorePermit>,
    attempts: u32,
    retry_at: Option<Instant>,
    /// The error of an earlier attempt that may have been written all the same (a timeout, a
    /// lost connection): such a batch is never re-sent under another producer id, where the
    /// leader could not recognize it and would write it twice.
    maybe_written: Option<ClientError>,
    /// Producer id, epoch and base sequence, once first sent (idempotent producers).
    stamp: Option<Stamp>,
    /// Order of first sending in its partition (re-sent batches go back in this order).
    send_order: u64,
}

impl Drop for Batch {
    /// A batch dropped without an outcome (the producer went away with it queued): its
    /// records' futures fail with `Closed` instead of waiting for ever.
    fn drop(&mut self) {
        self.completion.resolve(Err(ClientError::Closed));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    producer_id: i64,
    epoch: i16,
    sequence: i32,
}

/// Sending state of one partition.
#[derive(Default)]
struct PartitionState {
    in_flight: usize,
    /// The producer id the in-flight batches carry.
    in_flight_id: Option<i64>,
    /// Producer id and next sequence number to assign.
    next: Option<(i64, i32)>,
    /// Producer id and the sequence after the last settled batch: acknowledged, or failed to
    /// the application (e.g. its delivery timeout passed). The next batch is the oldest one
    /// the partition can be waiting for.
    settled: Option<(i64, i32)>,
    sent: u64,
}

/// The producer's own maps, looked up per record: foldhash instead of the standard SipHash,
/// which took 14% of a 100-byte record's instructions (callgrind). Their keys are the
/// application's topics and partitions, not a peer's input, so hash flooding is no concern.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the producer keeps per topic: looked up once per record, by `&str`, allocating nothing
/// once the topic and partition have been seen.
#[derive(Default)]
struct TopicState {
    /// The topic's partition count and the client's metadata version it was read at: read
    /// again once the metadata changed (instead of from the client's cache, under its lock,
    /// per record).
    partitions: Option<(u64, u32)>,
    /// Unkeyed records: the partition they go to, and bytes sent there since it was chosen.
    sticky: Option<(u32, usize)>,
    /// Batches per partition, oldest first.
    queues: FastMap<u32, VecDeque<Batch>>,
}

#[derive(Default)]
struct State {
    /// Every topic sent to, in first-use order, and where each is in it.
    topics: Vec<(Arc<str>, TopicState)>,
    topic_index: FastMap<Arc<str>, usize>,
    /// Index of the topic looked up last.
    last_topic: usize,
    partitions: FastMap<TopicPartition, PartitionState>,
    /// The producer id and epoch (idempotent producers), once a broker gave one.
    producer: Option<(i64, i16)>,
    flushing: bool,
}

impl State {
    /// The topic's state, created on first use. The last topic looked up is checked first,
    /// by pointer or by name, before the map (hashing the name and probing took 100
    /// instructions of a record's 2,600, callgrind; a producer mostly sends to one topic).
    fn topic(&mut self, topic: &Arc<str>) -> &mut TopicState {
        let last = self.last_topic;
        let hit = self
            .topics
            .get(last)
            .is_some_and(|(name, _)| Arc::ptr_eq(name, topic) || **name == **topic);
        let index = if hit {
            last
        } else {
            let next = self.topics.len();
            let index = *self.topic_index.entry(topic.clone()).or_insert(next);
            if index == next {
                self.topics.push((topic.clone(), TopicState::default()));
            }
            self.last_topic = index;
            index
        };
        &mut self.topics[index].1
    }

    /// Forgets `topic` if nothing of it is queued: sends to names that turn out not to exist
    /// leave no state behind (an application sending to many wrong names would grow it for
    /// ever). The others keep their order.
    fn forget(&mut self, topic: &str) {
        let Some(&index) = self.topic_index.get(topic) else {
            return;
        };
        if self.topics[index].1.queues.values().any(|q| !q.is_empty()) {
            return;
        }
        self.topics.remove(index);
        self.topic_index.remove(topic);
        for i in self.topic_index.values_mut() {
            if *i > index {
                *i -= 1;
            }
        }
        self.last_topic = 0;
    }

    fn queue(&mut self, topic: &Arc<str>, partition: u32) -> &mut VecDeque<Batch> {
        self.topic(topic).queues.entry(partition).or_default()
    }
}

struct Shared {
    client: Client,
    config: ProducerConfig,
    idempotent: bool,
    state: Mutex<State>,
    wake: Notify,
    idle: Notify,
    /// Notified when batches leave a partition's queue (sent, or completed while queued):
    /// `send`s waiting for their partition's queue (see [`QUEUED_FULL_BATCHES`]) look again.
    dequeued: Notify,
    memory: Arc<Semaphore>,
    outstanding: AtomicUsize,
    closed: AtomicBool,
    /// Set by [`Producer::abort`]: a failed attempt fails its records instead of a retry.
    aborted: AtomicBool,
}

impl Shared {
    /// Appends `record` (of `size` bytes, holding `permit`, which it takes) to its partition's
    /// open batch, or opens one. `None` when the topic's partition count is not known at the
    /// metadata's current version (nothing done then): the caller reads it and passes it as
    /// `known` (metadata version, count). [`Enqueued::QueueFull`] when the partition already
    /// has [`QUEUED_FULL_BATCHES`] full batches waiting (nothing appended then either).
    /// The caller holds the state's lock (`state`), and adds the delivery to `outstanding`
    /// and wakes the sender when told to before it lets go of it.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        state: &mut State,
        version: u64,
        record: &Record,
        size: usize,
        permit: &mut Option<OwnedSemaphorePermit>,
        timestamp: i64,
        known: Option<(u64, u32)>,
    ) -> Result<Enqueued> {
        let topic = state.topic(&record.topic);
        if let Some(known) = known {
            topic.partitions = Some(known);
        }
        let partitions = match topic.partitions {
            Some((read_at, count)) if read_at == version || known.is_some() => count,
            _ => return Ok(Enqueued::PartitionsUnknown),
        };
        if partitions == 0 {
            return Err(ClientError::Invalid(format!(
                "topic {} has no partitions",
                record.topic
            )));
        }
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p < partitions => p,
            (Some(p), _) => {
                return Err(ClientError::Invalid(format!(
                    "partition {p} does not exist: topic {} has {partitions}",
                    record.topic
                )))
            }
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => sticky_partition(
                &mut topic.sticky,
                partitions,
                self.config.sticky_partition_bytes,
            ),
        };
        let batch_size = self.config.batch_size_bytes;
        let queue = topic.queues.entry(partition).or_default();
        let needs_new = queue.back().is_none_or(|b| {
            b.full
                || b.built.is_some()
                || (b.builder.size_bytes() + size > batch_size && b.builder.record_count() > 0)
        });
        if needs_new {
            if let Some(last) = queue.back_mut() {
                last.full = true;
            }
            // Every batch queued is full now.
            if queue.len() >= QUEUED_FULL_BATCHES {
                return Ok(Enqueued::QueueFull);
            }
            queue.push_back(Batch {
                builder: RecordBatchBuilder::with_capacity(
                    INITIAL_BATCH_BYTES.max(size + BATCH_HEADER_BYTES),
                ),
                built: None,
                created: Instant::now(),
                full: false,
                records: 0,
                completion: Arc::new(Completion {
                    topic: record.topic.clone(),
                    partition,
                    state: Mutex::default(),
                }),
                _memory: None,
                attempts: 0,
                retry_at: None,
                maybe_written: None,
                stamp: None,
                send_order: 0,
            });
        }
        let batch = queue.back_mut().expect("a batch was pushed above");
        batch.builder.append(
            timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
        let delivery = DeliveryFuture {
            batch: batch.completion.clone(),
            index: batch.records,
            timestamp,
        };
        batch.records += 1;
        if let Some(permit) = permit.take() {
            match &mut batch._memory {
                Some(memory) => memory.merge(permit),
                None => batch._memory = Some(permit),
            }
        }
        let became_full = batch.builder.size_bytes() >= batch_size;
        batch.full |= became_full;
        if record.partition.is_none() && record.key.is_none() {
            if became_full {
                // Sticky partitioning: move unkeyed records on once a batch is full.
                topic.sticky = Some(((partition + 1) % partitions, 0));
            } else if let Some((_, sent)) = &mut topic.sticky {
                // Counted once appended: a `send` that found the queue full and comes back
                // counts its record once.
                *sent += size;
            }
        }
        // A new batch (which also closes the one before it) gives the sender a new deadline:
        // without this wake-up an idle sender slept on to its 1 s fallback, and a record sent
        // after a pause waited up to a second instead of `linger` (issue 14's stalls).
        let wake = became_full || needs_new || self.config.linger.is_zero();
        Ok(Enqueued::Delivery { delivery, wake })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn complete(&self, batch: Batch, outcome: std::result::Result<Option<u64>, ClientError>) {
        let n = batch.records as usize;
        batch.completion.resolve(outcome);
        // Dropping the batch releases its buffer memory.
        drop(batch);
        // It may have been queued (expired, or failed before it was sent).
        self.dequeued.notify_waiters();
        if self.outstanding.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }
}

/// Stops the sender when the last `Producer` handle is dropped (after sending what is queued).
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

/// A batching producer. Cheap to clone; clones share batches and the sender.
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
    _close: Arc<CloseOnDrop>,
}

impl Producer {
    /// A producer on `client` (spawns its sender task on the current runtime).
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let idempotent = config.enable_idempotence && config.acks != Acks::None;
        if idempotent && config.max_in_flight_per_partition > IDEMPOTENT_MAX_IN_FLIGHT {
            tracing::warn!(
                "max_in_flight_per_partition {} is more than an idempotent producer may have in flight; using {IDEMPOTENT_MAX_IN_FLIGHT}",
                config.max_in_flight_per_partition
            );
        }
        let memory = Arc::new(Semaphore::new(
            config.buffer_memory_bytes.min(Semaphore::MAX_PERMITS),
        ));
        let shared = Arc::new(Shared {
            client,
            idempotent,
            config,
            state: Mutex::default(),
            wake: Notify::new(),
            idle: Notify::new(),
            dequeued: Notify::new(),
            memory,
            outstanding: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
        });
        tokio::spawn(sender(shared.clone()));
        Producer {
            _close: Arc::new(CloseOnDrop(shared.clone())),
            shared,
        }
    }

    /// Queues a record; waits only for buffer memory. Await the returned future for its offset.
    pub async fn send(&self, record: Record) -> Result<DeliveryFuture> {
        let mut delivery = None;
        self.queue(std::iter::once(record), |d| delivery = Some(d))
            .await?;
        delivery.ok_or(ClientError::Closed)
    }

    /// Queues `records` in order, as [`send`](Self::send) would one by one, but taking the
    /// producer's lock and reading the clock once for as many of them as can go without a
    /// wait: for applications that have records at hand in bulk (a bench, a bridge, a
    /// replay), where the per-record hand-over is a large part of the client's CPU. Their
    /// deliveries are added to `deliveries`, one per producer batch the records went into.
    /// On an error (a record refused, the producer closed), the records before the failing
    /// one are queued and their deliveries are in `deliveries`; none after it is. `records`
    /// is advanced while the producer's lock is held (its sender waits meanwhile): pass
    /// records at hand (a `Vec`, its `drain(..)`), not an iterator that does work per item.
    pub async fn send_batch(
        &self,
        records: impl IntoIterator<Item = Record>,
        deliveries: &mut Deliveries,
    ) -> Result<()> {
        self.queue(records.into_iter(), |delivery| deliveries.push(delivery))
            .await
    }

    /// Queues `records` in order, handing each one's delivery to `queued`. The lock is held
    /// across records until one needs a wait (buffer memory,
    /// the topic's partition count, a full queue), and `outstanding` and the sender's
    /// wake-up are updated once per hold.
    async fn queue(
        &self,
        mut records: impl Iterator<Item = Record>,
        mut queued: impl FnMut(DeliveryFuture),
    ) -> Result<()> {
        let shared = &self.shared;
        let mut now = None;
        // A record that waits, with what it already holds.
        let mut waiting: Option<Waiting> = None;
        loop {
            if shared.closed.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            let mut added = 0;
            let mut wake = false;
            let step = {
                let version = shared.client.metadata_version();
                let mut state = None;
                loop {
                    let mut next = match waiting.take() {
                        Some(next) => next,
                        None => match records.next() {
                            None => break Step::Done,
                            Some(record) => match Waiting::new(shared, record) {
                                Ok(next) => next,
                                Err(e) => break Step::Failed(e),
                            },
                        },
                    };
                    if next.permit.is_none() {
                        // Without a wait first: the wait's future takes the semaphore's lock,
                        // a try only an atomic (3% of a 1 KiB record's CPU went to the future
                        // and its release, perf).
                        match shared
                            .memory
                            .clone()
                            .try_acquire_many_owned(next.size as u32)
                        {
                            Ok(permit) => next.permit = Some(permit),
                            Err(_) => break Step::Memory(next),
                        }
                    }
                    let timestamp = next
                        .record
                        .timestamp
                        .unwrap_or_else(|| *now.get_or_insert_with(now_ms));
                    let state = state.get_or_insert_with(|| shared.lock());
                    match shared.enqueue(
                        state,
                        version,
                        &next.record,
                        next.size,
                        &mut next.permit,
                        timestamp,
                        next.known,
                    ) {
                        Err(e) => break Step::Failed(e),
                        Ok(Enqueued::Delivery { delivery, wake: w }) => {
                            added += 1;
                            wake |= w;
                            queued(delivery);
                        }
                        Ok(Enqueued::PartitionsUnknown) => break Step::Partitions(next),
                        Ok(Enqueued::QueueFull) => {
                            wake = true;
                            break Step::QueueFull(next);
                        }
                    }
                }
            };
            if added > 0 {
                shared.outstanding.fetch_add(added, Ordering::AcqRel);
            }
            if wake {
                shared.wake.notify_one();
            }
            match step {
                Step::Done => return Ok(()),
                Step::Failed(e) => return Err(e),
                Step::Memory(mut next) => {
                    let permit = shared
                        .memory
                        .clone()
                        .acquire_many_owned(next.size as u32)
                        .await
                        .map_err(|_| ClientError::Closed)?;
                    next.permit = Some(permit);
                    waiting = Some(next);
                }
                Step::Partitions(mut next) => {
                    // Not known at the metadata's current version.
                    let count = match shared.client.partition_count(&next.record.topic).await {
                        Ok(count) => count,
                        Err(e) => {
                            shared.lock().forget(&next.record.topic);
                            return Err(e);
                        }
                    };
                    next.known = Some((shared.client.metadata_version(), count));
                    waiting = Some(next);
                }
                // Registered before looking again, so a batch that leaves the queue in between
                // still wakes this send (registering only here keeps it off the common path).
                Step::QueueFull(mut next) => {
                    match next.registered.take() {
                        None => {
                            let mut dequeued = Box::pin(shared.dequeued.notified());
                            dequeued.as_mut().enable();
                            next.registered = Some(dequeued);
                        }
                        Some(dequeued) => dequeued.await,
                    }
                    waiting = Some(next);
                }
            }
        }
    }

    /// Sends everything queued now and waits until every record sent so far is acknowledged or failed.
    pub async fn flush(&self) {
        let shared = &self.shared;
        loop {
            let idle = shared.idle.notified();
            if shared.outstanding.load(Ordering::Acquire) == 0 {
                break;
            }
            shared.lock().flushing = true;
            shared.wake.notify_one();
            idle.await;
        }
        shared.lock().flushing = false;
    }

    /// Flushes, then stops the sender. Later `send`s fail with `Closed`.
    pub async fn close(&self) {
        self.flush().await;
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// Gives up without waiting (Kafka's `close(Duration.ZERO)`): every record queued and not
    /// in flight fails at once with `Closed`, an attempt in flight that comes back failed
    /// fails its records instead of a retry, and later `send`s fail with `Closed`. Requests in
    /// flight still complete (against a broker that vanished, within the request timeout);
    /// [`flush`](Self::flush) waits for them. For an application that has given up on the
    /// cluster (`rill bench` after its first failed record), where each queued batch would
    /// otherwise wait out its own delivery timeout.
    pub fn abort(&self) {
        let shared = &self.shared;
        shared.aborted.store(true, Ordering::Release);
        shared.closed.store(true, Ordering::Release);
        let queued: Vec<Batch> = {
            let mut state = shared.lock();
            state
                .topics
                .iter_mut()
                .flat_map(|(_, topic)| topic.queues.values_mut())
                .flat_map(|queue| queue.drain(..))
                .collect()
        };
        // Not in flight (a batch waiting for a retry is not counted as such): nothing of its
        // partition's in-flight count or sequences to settle, and nothing is sent any more.
        for batch in queued {
            shared.complete(batch, Err(ClientError::Closed));
        }
        // `send`s waiting for buffer memory or queue room give up too.
        shared.memory.close();
        shared.dequeued.notify_waiters();
        shared.wake.notify_one();
    }
}

/// The deliveries of records sent with [`Producer::send_batch`]: one [`DeliveryFuture`] per
/// run of records that went into one producer batch one after the other with one timestamp
/// (that of the run's first record), with how many they are, instead of one per record. A
/// batch's records succeed or fail together, and a run's offsets follow its first record's.
#[derive(Default)]
pub struct Deliveries {
    runs: Vec<(DeliveryFuture, u32)>,
}

impl Deliveries {
    /// None yet.
    pub fn new() -> Deliveries {
        Deliveries::default()
    }

    /// Adds a record's delivery: to the last run if it follows that run's last record in the
    /// same batch with the same timestamp (another sender's record may have gone in between
    /// while this call waited, and a record may carry its own timestamp), else as a new run.
    fn push(&mut self, delivery: DeliveryFuture) {
        if let Some((first, count)) = self.runs.last_mut() {
            if Arc::ptr_eq(&first.batch, &delivery.batch)
                && first.index + *count == delivery.index
                && first.timestamp == delivery.timestamp
            {
                *count += 1;
                return;
            }
        }
        self.runs.push((delivery, 1));
    }

    /// Records in it.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|(_, n)| *n as usize).sum()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Runs of records that went into one batch, in the order sent: the first one's delivery
    /// and how many they are. The others' offsets follow the first one's.
    pub fn runs(self) -> impl Iterator<Item = (DeliveryFuture, u32)> {
        self.runs.into_iter()
    }

    /// Waits for every record's outcome; returns them in the order sent.
    pub async fn wait(self) -> Vec<Result<RecordMetadata>> {
        let mut outcomes = Vec::with_capacity(self.len());
        for (delivery, count) in self.runs {
            let outcome = delivery.await;
            for k in 0..u64::from(count) {
                outcomes.push(outcome.clone().map(|mut metadata| {
                    metadata.offset = metadata.offset.map(|offset| offset + k);
                    metadata
                }));
            }
        }
        outcomes
    }
}

/// A record on its way into a batch, with what it already holds.
struct Waiting<'a> {
    record: Record,
    size: usize,
    permit: Option<OwnedSemaphorePermit>,
    /// The topic's partition count, read when the metadata's was stale.
    known: Option<(u64, u32)>,
    /// Registered for the next batch to leave a full queue.
    registered: Option<Pin<Box<tokio::sync::futures::Notified<'a>>>>,
}

impl Waiting<'_> {
    /// Refuses a record that could never fit in the buffer memory.
    fn new(shared: &Shared, record: Record) -> Result<Self> {
        let size = RecordBatchBuilder::record_size_bytes(
            record.key.as_ref().map(Bytes::len),
            record.value.as_ref().map(Bytes::len),
            &record.headers,
        );
        if size + BATCH_HEADER_BYTES > shared.config.buffer_memory_bytes {
            return Err(ClientError::Invalid(format!(
                "record of {size} bytes exceeds buffer_memory_bytes {}",
                shared.config.buffer_memory_bytes
            )));
        }
        Ok(Waiting {
            record,
            size,
            permit: None,
            known: None,
            registered: None,
        })
    }
}

/// Why [`Producer::queue`] let go of the lock.
enum Step<'a> {
    Done,
    Failed(ClientError),
    /// The record waits for buffer memory.
    Memory(Waiting<'a>),
    /// The record's topic's partition count is not known at the metadata's current version.
    Partitions(Waiting<'a>),
    /// The record's partition has [`QUEUED_FULL_BATCHES`] full batches waiting.
    QueueFull(Waiting<'a>),
}

/// What [`Shared::enqueue`] did.
enum Enqueued {
    /// Queued; `wake`: the sender has a new deadline.
    Delivery {
        delivery: DeliveryFuture,
        wake: bool,
    },
    /// The topic's partition count is not known at the metadata's current version.
    PartitionsUnknown,
    /// The partition has [`QUEUED_FULL_BATCHES`] full batches waiting to be sent.
    QueueFull,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Asks a broker for a producer id.
async fn init_producer_id(shared: &Shared) -> Result<(i64, i16)> {
    let request = RequestBody::InitProducerId(InitProducerIdRequest {
        transactional_id: None,
        transaction_timeout_ms: 0,
    });
    match shared.client.request_any(request).await? {
        ResponseBody::InitProducerId(r) if r.error_code == ErrorCode::NONE => {
            Ok((r.producer_id, r.producer_epoch))
        }
        ResponseBody::InitProducerId(r) => Err(ClientError::broker(
            r.error_code,
            "InitProducerId".to_string(),
            None,
        )),
        _ => Err(crate::admin::unexpected()),
    }
}

/// Fails queued batches past their delivery timeout (while no producer id can be had).
fn expire_queued(shared: &Shared, error: &ClientError) {
    let mut expired = Vec::new();
    {
        let mut state = shared.lock();
        for (topic, topic_state) in state.topics.iter_mut() {
            for (partition, queue) in topic_state.queues.iter_mut() {
                while queue
                    .front()
                    .is_some_and(|b| b.created.elapsed() >= shared.config.delivery_timeout)
                {
                    if let Some(batch) = queue.pop_front() {
                        expired.push((topic.clone(), *partition, batch));
                    }
                }
            }
        }
    }
    for (topic, partition, batch) in expired {
        let error = ClientError::Timeout(
            shared.config.delivery_timeout,
            format!("delivery to {topic}-{partition}: no producer id: {error}"),
        );
        shared.complete(batch, Err(error));
    }
}

/// Batches a partition may have in flight: one without idempotence, else the configured number
/// held to 1..=[`IDEMPOTENT_MAX_IN_FLIGHT`].
fn max_in_flight(config: &ProducerConfig, idempotent: bool) -> usize {
    if idempotent {
        config
            .max_in_flight_per_partition
            .clamp(1, IDEMPOTENT_MAX_IN_FLIGHT)
    } else {
        1
    }
}

/// Takes sendable batches, groups them by leader, and queues one request per leader, in order.
async fn sender(shared: Arc<Shared>) {
    let max_in_flight = max_in_flight(&shared.config, shared.idempotent);
    loop {
        if shared.idempotent
            && shared.lock().producer.is_none()
            && shared.outstanding.load(Ordering::Acquire) > 0
        {
            match init_producer_id(&shared).await {
                Ok(producer) => {
                    tracing::debug!(producer_id = producer.0, "idempotent producer id");
                    shared.lock().producer = Some(producer);
                }
                Err(e) => {
                    tracing::debug!("no producer id yet: {e}");
                    expire_queued(&shared, &e);
                    tokio::select! {
                        _ = shared.wake.notified() => {}
                        _ = tokio::time::sleep(shared.client.config().retry_backoff) => {}
                    }
                    continue;
                }
            }
        }
        let now = Instant::now();
        let mut ready: Vec<(TopicPartition, Batch)> = Vec::new();
        let mut abandoned: Vec<(TopicPartition, Batch)> = Vec::new();
        let mut next_wake: Option<Instant> = None;
        {
            let mut state = shared.lock();
            let drain = state.flushing || shared.closed.load(Ordering::Acquire);
            let producer = state.producer;
            let State {
                topics,
                partitions: partition_states,
                ..
            } = &mut *state;
            for (topic, topic_state) in topics.iter_mut() {
                for (partition, queue) in topic_state.queues.iter_mut() {
                    let Some(front) = queue.front() else { continue };
                    let tp = (topic.clone(), *partition);
                    let ps = partition_states.entry(tp.clone()).or_default();
                    if ps.in_flight >= max_in_flight {
                        continue;
                    }
                    // Order: a re-sent batch, or one under a new producer id, goes only once
                    // every batch sent before it came back.
                    let current_id = producer.map(|p| p.0);
                    if ps.in_flight > 0 && (front.attempts > 0 || ps.in_flight_id != current_id) {
                        continue;
                    }
                    let idle = ps.in_flight == 0 && shared.config.send_when_idle;
                    let due = match front.retry_at {
                        Some(at) => at,
                        None if front.full || drain || idle => now,
                        None => front.created + shared.config.linger,
                    };
                    if due > now {
                        next_wake = Some(next_wake.map_or(due, |w: Instant| w.min(due)));
                        continue;
                    }
                    let Some(mut batch) = queue.pop_front() else {
                        continue;
                    };
                    if let Some((producer_id, epoch)) = producer.filter(|_| shared.idempotent) {
                        let restamp = batch.stamp.map(|s| s.producer_id) != Some(producer_id);
                        if restamp && batch.stamp.is_some() && batch.maybe_written.is_some() {
                            // Sent under an earlier producer id and maybe written: under the
                            // new id the leader would write it again. Its outcome stays
                            // unknown (Kafka fails such batches after an epoch bump too).
                            abandoned.push((tp, batch));
                            continue;
                        }
                        if restamp {
                            let sequence = match ps.next {
                                Some((id, next)) if id == producer_id => next,
                                _ => 0,
                            };
                            let records = batch.records as i32;
                            ps.next = Some((producer_id, increment(sequence, records)));
                            batch.stamp = Some(Stamp {
                                producer_id,
                                epoch,
                                sequence,
                            });
                            ps.sent += 1;
                            batch.send_order = ps.sent;
                        }
                    }
                    ps.in_flight += 1;
                    ps.in_flight_id = batch.stamp.map(|s| s.producer_id);
                    ready.push((tp, batch));
                }
            }
        }
        for (tp, mut batch) in abandoned {
            let error = batch.maybe_written.take().unwrap_or(ClientError::Closed);
            tracing::warn!(topic = %tp.0, partition = tp.1, "not re-sending a batch under the new producer id: an earlier attempt may have been written ({error}); its records fail with that error");
            shared.complete(batch, Err(error));
            shared.wake.notify_one();
        }
        if ready.is_empty() {
            if shared.closed.load(Ordering::Acquire)
                && shared.outstanding.load(Ordering::Acquire) == 0
            {
                return;
            }
            let sleep = next_wake.map_or(Duration::from_secs(1), |w| {
                w.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
            continue;
        }
        let mut by_leader: HashMap<u32, Vec<(TopicPartition, Batch)>> = HashMap::new();
        shared.dequeued.notify_waiters();
        for (tp, batch) in ready {
            match shared.client.leader(&tp.0, tp.1).await {
                Ok(leader) => by_leader.entry(leader).or_default().push((tp, batch)),
                Err(e) => retry_or_fail(&shared, tp, batch, e),
            }
        }
        for (leader, batches) in by_leader {
            send_to_leader(&shared, leader, batches).await;
        }
    }
}

/// The partition for an unkeyed record without one: the sticky partition (`None`: one picked
/// by the clock), moved on to the next once `sticky_bytes` were sent to it. The caller counts
/// the record's bytes once it is appended.
fn sticky_partition(
    sticky: &mut Option<(u32, usize)>,
    partitions: u32,
    sticky_bytes: usize,
) -> u32 {
    let (partition, sent) = match *sticky {
        Some((p, sent)) if sent >= sticky_bytes => ((p + 1) % partitions, 0),
        Some((p, sent)) => (p % partitions, sent),
        None => ((now_ms() as u32) % partitions, 0),
    };
    *sticky = Some((partition, sent));
    partition
}

/// Whether sequence `a` comes after `b`, sequences wrapping from `i32::MAX` to 0 (at most a
/// quarter of the range apart, far more than a producer has in flight).
fn sequence_after(a: i32, b: i32) -> bool {
    let distance = (i64::from(a) - i64::from(b)).rem_euclid(1 << 31);
    distance > 0 && distance < 1 << 29
}

/// `seq + delta` wrapping at `i32::MAX` to 0, as the broker counts.
fn increment(seq: i32, delta: i32) -> i32 {
    if seq > i32::MAX - delta {
        delta - (i32::MAX - seq) - 1
    } else {
        seq + delta
    }
}

/// The batch's bytes, built (stamped, compressed) on first use; re-stamped if its stamp
/// changed since.
fn batch_bytes(shared: &Shared, batch: &mut Batch) -> Result<Bytes> {
    if let Some(built) = &batch.built {
        let current = rill_protocol::batch::RecordBatch::parse(built.clone()).ok();
        let stale = match (batch.stamp, current) {
            (Some(stamp), Some(b)) => {
                b.producer_id() != stamp.producer_id
                    || b.producer_epoch() != stamp.epoch
                    || b.base_sequence() != stamp.sequence
            }
            _ => false,
        };
        if !stale {
            return Ok(built.clone());
        }
        let mut bytes = bytes::BytesMut::from(&built[..]);
        if let Some(stamp) = batch.stamp {
            rill_protocol::batch::set_producer(
                &mut bytes,
                stamp.producer_id,
                stamp.epoch,
                stamp.sequence,
            );
        }
        return Ok(batch.built.insert(bytes.freeze()).clone());
    }
    let mut builder = std::mem::take(&mut batch.builder);
    if let Some(stamp) = batch.stamp {
        builder = builder.producer(stamp.producer_id, stamp.epoch, stamp.sequence);
    }
    let bytes = builder
        .build_compressed(shared.config.compression)
        .map_err(|e| ClientError::Invalid(format!("compressing a batch failed: {e}")))?;
    Ok(batch.built.insert(bytes).clone())
}

/// Builds one Produce request for `leader` and queues it on its connection now (so requests
/// leave in the order the sender made them); the response is handled in a task.
async fn send_to_leader(
    shared: &Arc<Shared>,
    leader: u32,
    mut batches: Vec<(TopicPartition, Batch)>,
) {
    let mut topics: Vec<ProduceTopic> = Vec::new();
    let mut unbuildable = Vec::new();
    for (i, ((topic, partition), batch)) in batches.iter_mut().enumerate() {
        let bytes = match batch_bytes(shared, batch) {
            Ok(bytes) => bytes,
            Err(e) => {
                unbuildable.push((i, e));
                continue;
            }
        };
        match topics.iter_mut().find(|t| *t.name == **topic) {
            Some(t) => t.partitions.push(ProducePartition {
                partition: *partition,
                records: bytes,
            }),
            None => topics.push(ProduceTopic {
                name: topic.to_string(),
                partitions: vec![ProducePartition {
                    partition: *partition,
                    records: bytes,
                }],
            }),
        }
    }
    for (i, e) in unbuildable.into_iter().rev() {
        let ((topic, partition), batch) = batches.remove(i);
        finish(shared, &topic, partition, batch, Err(e));
    }
    if batches.is_empty() {
        return;
    }
    let timeout = shared
        .config
        .request_timeout
        .unwrap_or(shared.client.config().request_timeout);
    let request = RequestBody::Produce(ProduceRequest {
        acks: shared.config.acks,
        timeout_ms: timeout.as_millis() as u32,
        topics,
    });
    if shared.config.acks == Acks::None {
        let sent = shared.client.send_only_node(leader, request).await;
        for ((topic, partition), batch) in batches {
            match &sent {
                Ok(()) => finish(shared, &topic, partition, batch, Ok(None)),
                Err(e) => retry_or_fail(shared, (topic, partition), batch, e.clone()),
            }
        }
        return;
    }
    let queued = shared
        .client
        .enqueue_node(leader, Purpose::Produce, request, timeout)
        .await;
    let shared = shared.clone();
    tokio::spawn(async move {
        let response = match queued {
            Ok(wait) => wait.await,
            Err(e) => Err(e),
        };
        handle_response(&shared, batches, response);
    });
}

fn handle_response(
    shared: &Arc<Shared>,
    batches: Vec<(TopicPartition, Batch)>,
    response: Result<ResponseBody>,
) {
    let mut results: HashMap<TopicPartition, (ErrorCode, u64, Option<String>)> = HashMap::new();
    let failure = match response {
        Ok(ResponseBody::Produce(response)) => {
            for topic in response.topics {
                for p in topic.partitions {
                    results.insert(
                        (Arc::from(topic.name.as_str()), p.partition),
                        (p.error_code, p.base_offset, p.error_message),
                    );
                }
            }
            None
        }
        Ok(_) => Some(crate::admin::unexpected()),
        Err(e) => Some(e),
    };
    for (tp, batch) in batches {
        let outcome = match (&failure, results.remove(&tp)) {
            (Some(e), _) => Err(e.clone()),
            (None, Some((ErrorCode::NONE, base, _))) => Ok(Some(base)),
            (None, Some((code, _, message))) => Err(ClientError::broker(
                code,
                format!("produce to {}-{}", tp.0, tp.1),
                message,
            )),
            (None, None) => Err(ClientError::Invalid(format!(
                "no produce result for {}-{}",
                tp.0, tp.1
            ))),
        };
        match outcome {
            Ok(base) => finish(shared, &tp.0, tp.1, batch, Ok(base)),
            Err(e) => {
                let mut batch = batch;
                if batch.stamp.is_some() && batch.maybe_written.is_none() && maybe_written(&e) {
                    batch.maybe_written = Some(e.clone());
                }
                dispatch_error(shared, tp, batch, e)
            }
        }
    }
}

/// Whether a failed produce attempt may have been written all the same: a timeout, a lost
/// connection, an error after the append. Not the refusals a leader gives before appending.
fn maybe_written(error: &ClientError) -> bool {
    match error {
        ClientError::Broker { code, .. } => !matches!(
            *code,
            ErrorCode::NOT_LEADER
                | ErrorCode::LEADER_NOT_AVAILABLE
                | ErrorCode::FENCED_LEADER_EPOCH
                | ErrorCode::NOT_ENOUGH_REPLICAS
                | ErrorCode::CLUSTER_NOT_READY
                | ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
                | ErrorCode::MESSAGE_TOO_LARGE
                | ErrorCode::CORRUPT_MESSAGE
                | ErrorCode::OUT_OF_ORDER_SEQUENCE
                | ErrorCode::UNKNOWN_PRODUCER_ID
                | ErrorCode::INVALID_PRODUCER_EPOCH
        ),
        ClientError::NoBrokers { .. } | ClientError::Invalid(_) | ClientError::Closed => false,
        _ => true,
    }
}

/// Routes a failed attempt: producer id and sequence errors to [`sequence_error`], the rest to
/// [`retry_or_fail`].
fn dispatch_error(shared: &Arc<Shared>, tp: TopicPartition, batch: Batch, e: ClientError) {
    match e.code() {
        Some(
            ErrorCode::OUT_OF_ORDER_SEQUENCE
            | ErrorCode::UNKNOWN_PRODUCER_ID
            | ErrorCode::INVALID_PRODUCER_EPOCH,
        ) if batch.stamp.is_some() => sequence_error(shared, tp, batch, e),
        _ => retry_or_fail(shared, tp, batch, e),
    }
}

/// A batch refused for its producer id or sequence. `OUT_OF_ORDER_SEQUENCE` for a batch that
/// is not the oldest unacknowledged one of its partition only means an earlier batch failed
/// first: it is re-sent after that one. Otherwise the partition lost this producer's state
/// (or records it acknowledged): take a new producer id and re-send under it.
fn sequence_error(shared: &Arc<Shared>, tp: TopicPartition, batch: Batch, error: ClientError) {
    let Some(stamp) = batch.stamp else {
        return retry_or_fail_as(shared, tp, batch, error, true);
    };
    let oldest = {
        let state = shared.lock();
        let settled = state.partitions.get(&tp).and_then(|p| p.settled);
        match settled {
            Some((id, next)) if id == stamp.producer_id => next == stamp.sequence,
            _ => stamp.sequence == 0,
        }
    };
    if error.code() == Some(ErrorCode::OUT_OF_ORDER_SEQUENCE) && !oldest {
        return retry_or_fail_as(shared, tp, batch, error, true);
    }
    {
        let mut state = shared.lock();
        if state.producer.map(|p| p.0) == Some(stamp.producer_id) {
            tracing::warn!(
                topic = %tp.0,
                partition = tp.1,
                producer_id = stamp.producer_id,
                "partition lost this producer's state ({error}): taking a new producer id; unacknowledged batches are re-sent under it (one written but not acknowledged before may appear twice)"
            );
            state.producer = None;
        }
    }
    retry_or_fail_as(shared, tp, batch, error, true)
}

fn finish(
    shared: &Shared,
    topic: &Arc<str>,
    partition: u32,
    batch: Batch,
    outcome: std::result::Result<Option<u64>, ClientError>,
) {
    // Written, or failed to the application: either way no batch of this producer id will
    // fill this range any more. A failed one may never have reached the log, and then the
    // partition refuses every later sequence (OUT_OF_ORDER_SEQUENCE) until the producer takes
    // a new id (`sequence_error`): the batch after it is now the oldest one.
    let settled = batch.stamp.map(|stamp| {
        (
            stamp.producer_id,
            increment(stamp.sequence, batch.records as i32),
        )
    });
    shared.complete(batch, outcome);
    {
        let mut state = shared.lock();
        if let Some(ps) = state.partitions.get_mut(&(topic.clone(), partition)) {
            ps.in_flight = ps.in_flight.saturating_sub(1);
            if let Some((id, end)) = settled {
                // Batches may settle out of order (one fails while an earlier one is still
                // retried): keep the furthest end.
                match ps.settled {
                    Some((old_id, old_end)) if old_id == id && !sequence_after(end, old_end) => {}
                    _ => ps.settled = Some((id, end)),
                }
            }
        }
    }
    shared.wake.notify_one();
}

/// Puts a failed batch back at the front of its queue (order kept) or fails its records.
fn retry_or_fail(shared: &Arc<Shared>, tp: TopicPartition, batch: Batch, error: ClientError) {
    let retriable = error.is_retriable();
    retry_or_fail_as(shared, tp, batch, error, retriable)
}

/// [`retry_or_fail`], with the caller deciding whether the error is worth a retry. A retried
/// batch goes back before every batch sent after it, so the queue keeps sending order.
fn retry_or_fail_as(
    shared: &Arc<Shared>,
    tp: TopicPartition,
    mut batch: Batch,
    error: ClientError,
    retriable: bool,
) {
    let expired = batch.created.elapsed() >= shared.config.delivery_timeout;
    if !retriable || expired || shared.aborted.load(Ordering::Acquire) {
        let error = if expired && retriable {
            ClientError::Timeout(
                shared.config.delivery_timeout,
                format!("delivery to {}-{}: {error}", tp.0, tp.1),
            )
        } else {
            error
        };
        return finish(shared, &tp.0.clone(), tp.1, batch, Err(error));
    }
    batch.attempts += 1;
    let backoff =
        shared.client.config().retry_backoff * 2u32.saturating_pow(batch.attempts.min(10));
    batch.retry_at = Some(Instant::now() + backoff.min(shared.client.config().retry_backoff_max));
    tracing::debug!(topic = %tp.0, partition = tp.1, attempt = batch.attempts, "retrying produce: {error}");
    {
        let mut state = shared.lock();
        let queue = state.queue(&tp.0, tp.1);
        let at = queue
            .iter()
            .position(|b| b.send_order == 0 || b.send_order > batch.send_order)
            .unwrap_or(queue.len());
        queue.insert(at, batch);
        if let Some(ps) = state.partitions.get_mut(&tp) {
            ps.in_flight = ps.in_flight.saturating_sub(1);
        }
    }
    let refresh = shared.clone();
    tokio::spawn(async move {
        let _ = refresh.client.refresh_metadata().await;
        refresh.wake.notify_one();
    });
}

#[cfg(test)]
mod tests {
    use super::{
        increment, max_in_flight, maybe_written, sequence_after, sticky_partition, ProducerConfig,
        State,
    };
    use crate::ClientError;
    use rill_protocol::ErrorCode;
    use std::sync::Arc;

    #[test]
    fn an_idempotent_producer_keeps_no_more_in_flight_than_a_leader_remembers() {
        let with = |n| ProducerConfig {
            max_in_flight_per_partition: n,
            ..ProducerConfig::default()
        };
        assert_eq!(max_in_flight(&with(5), true), 5);
        assert_eq!(max_in_flight(&with(3), true), 3);
        // More than the leader's memory of a producer's batches: a retry of the oldest would
        // be refused as out of order and re-sent under a new id.
        assert_eq!(max_in_flight(&with(10), true), 5);
        assert_eq!(max_in_flight(&with(0), true), 1);
        assert_eq!(max_in_flight(&with(10), false), 1);
    }

    #[test]
    fn a_topic_has_one_state_whichever_name_it_is_looked_up_by() {
        let mut state = State::default();
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        state.topic(&a).sticky = Some((1, 0));
        state.topic(&b).sticky = Some((2, 0));
        // The last topic by another `Arc` of the same name, then back and forth via the map.
        assert_eq!(state.topic(&Arc::from("b")).sticky, Some((2, 0)));
        assert_eq!(state.topic(&a).sticky, Some((1, 0)));
        assert_eq!(state.topic(&Arc::from("a")).sticky, Some((1, 0)));
        assert_eq!(state.topic(&b).sticky, Some((2, 0)));
        assert_eq!(state.topic(&Arc::from("c")).sticky, None);
        assert_eq!(state.topics.len(), 3);
        assert_eq!(state.topic_index.len(), 3);
    }

    #[test]
    fn a_forgotten_topic_leaves_the_others_in_order_and_reachable() {
        let mut state = State::default();
        let names: Vec<Arc<str>> = ["a", "b", "c"].into_iter().map(Arc::from).collect();
        for (i, name) in names.iter().enumerate() {
            state.topic(name).sticky = Some((i as u32, 0));
        }
        state.forget("b");
        state.forget("nope");
        let order: Vec<&str> = state.topics.iter().map(|(n, _)| &**n).collect();
        assert_eq!(order, ["a", "c"]);
        assert_eq!(state.topic_index.len(), 2);
        assert_eq!(state.topic(&names[2]).sticky, Some((2, 0)));
        assert_eq!(state.topic(&names[0]).sticky, Some((0, 0)));
        // Back as new, at the end.
        assert_eq!(state.topic(&names[1]).sticky, None);
        assert_eq!(state.topics.len(), 3);
        // Only queued batches keep a topic, not a partition's empty queue.
        state.topic(&names[0]).queues.entry(0).or_default();
        state.forget("a");
        assert_eq!(state.topics.len(), 2, "an empty queue does not keep it");
    }

    #[test]
    fn only_refusals_before_the_append_prove_a_batch_unwritten() {
        let broker = |code| ClientError::broker(code, "produce to t-0", None);
        for code in [
            ErrorCode::NOT_LEADER,
            ErrorCode::NOT_ENOUGH_REPLICAS,
            ErrorCode::OUT_OF_ORDER_SEQUENCE,
            ErrorCode::UNKNOWN_PRODUCER_ID,
        ] {
            assert!(!maybe_written(&broker(code)), "{code:?}");
        }
        for code in [ErrorCode::REQUEST_TIMED_OUT, ErrorCode::STORAGE_ERROR] {
            assert!(maybe_written(&broker(code)), "{code:?}");
        }
        assert!(maybe_written(&ClientError::Timeout(
            std::time::Duration::from_secs(3),
            "produce".into()
        )));
        assert!(maybe_written(&ClientError::Connection {
            address: "b:9292".into(),
            reason: "reset".into()
        }));
    }

    #[test]
    fn the_sticky_partition_moves_on_after_its_bytes_and_choosing_counts_nothing() {
        let mut sticky = Some((2, 0));
        // Choosing again (a `send` retried after a full queue) does not count the record.
        for _ in 0..3 {
            assert_eq!(sticky_partition(&mut sticky, 4, 100), 2);
        }
        assert_eq!(sticky, Some((2, 0)));
        sticky = Some((2, 99));
        assert_eq!(sticky_partition(&mut sticky, 4, 100), 2);
        sticky = Some((3, 100));
        assert_eq!(
            sticky_partition(&mut sticky, 4, 100),
            0,
            "wraps to the first"
        );
        assert_eq!(sticky, Some((0, 0)));
        // Fewer partitions than the remembered one (metadata changed): still in range.
        sticky = Some((7, 0));
        assert_eq!(sticky_partition(&mut sticky, 4, 100), 3);
        let mut none = None;
        let p = sticky_partition(&mut none, 4, 100);
        assert!(p < 4);
        assert_eq!(none, Some((p, 0)));
    }

    #[test]
    fn sequences_wrap_and_compare_across_the_wrap() {
        assert_eq!(increment(5, 3), 8);
        assert_eq!(increment(i32::MAX, 1), 0);
        assert_eq!(increment(i32::MAX - 1, 3), 1);
        assert!(sequence_after(8, 5));
        assert!(!sequence_after(5, 8));
        assert!(!sequence_after(5, 5));
        assert!(sequence_after(1, i32::MAX - 1), "across the wrap");
        assert!(!sequence_after(i32::MAX - 1, 1));
    }
}
