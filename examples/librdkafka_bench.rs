//! librdkafka (through the `rdkafka` crate) as a load generator against a Kafka listener:
//! the same workload as `rill bench produce|consume`, for the Kafka column of docs/KAFKA.md's
//! "Measured" section. Run by `benches/scripts/kafka_vs_native.sh`; by hand:
//!
//!   cargo run --release --example librdkafka_bench -- produce 127.0.0.1:9092 topic 200000 1024
//!   cargo run --release --example librdkafka_bench -- consume 127.0.0.1:9092 topic 200000
//!
//! Produce: one idempotent acks=all producer (linger.ms 5, batch.size 256 KiB: `rill bench`'s
//! defaults; librdkafka's own queue limit of 100,000 records), unkeyed values of `size` bytes,
//! timed from the first send to the last acknowledgement. Consume: one consumer assigned every partition from the beginning (no
//! group), timed until `records` arrived. Prints one JSON line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

/// Counts acknowledgements and failures.
#[derive(Default)]
struct Counting {
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn report(bench: &str, records: u64, bytes: u64, failed: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{{\"bench\": \"{bench}\", \"client\": \"librdkafka {}\", \"records\": {records}, \
         \"errors\": {failed}, \"seconds\": {seconds:.3}, \"records_per_sec\": {:.0}, \
         \"mb_per_sec\": {:.1}}}",
        rdkafka::util::get_rdkafka_version().1,
        records as f64 / seconds,
        bytes as f64 / seconds / 1e6
    );
}

fn produce(brokers: &str, topic: &str, records: u64, size: usize) -> Result<(), KafkaError> {
    let producer: ThreadedProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "262144")
        .create_with_context(Counting::default())?;
    let value = vec![b'x'; size];
    let start = Instant::now();
    for _ in 0..records {
        let mut record = BaseRecord::<(), [u8]>::to(topic).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
    producer.flush(Duration::from_secs(300))?;
    let elapsed = start.elapsed();
    let context = producer.context();
    let acked = context.acked.load(Ordering::Relaxed);
    let failed = context.failed.load(Ordering::Relaxed);
    report("produce", acked, acked * size as u64, failed, elapsed);
    if failed > 0 || acked != records {
        eprintln!("{acked} of {records} acknowledged, {failed} failed");
        std::process::exit(1);
    }
    Ok(())
}

fn consume(brokers: &str, topic: &str, records: u64) -> Result<(), KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "librdkafka-bench")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (mut count, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    while count < records {
        if let Some(message) = consumer.poll(Duration::from_secs(10)) {
            let message = message?;
            count += 1;
            bytes += message.payload_len() as u64;
        } else {
            eprintln!("nothing for 10 s after {count} of {records} records");
            std::process::exit(1);
        }
    }
    report("consume", count, bytes, 0, start.elapsed());
    Ok(())
}

fn main() -> Result<(), KafkaError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, what: &str| -> u64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("argument {i}: {what} (a number)"))
    };
    match args.first().map(String::as_str) {
        Some("produce") if args.len() == 5 => produce(
            &args[1],
            &args[2],
            number(3, "records"),
            number(4, "size") as usize,
        ),
        Some("consume") if args.len() == 4 => consume(&args[1], &args[2], number(3, "records")),
        _ => {
            eprintln!(
                "usage: librdkafka_bench produce BROKERS TOPIC RECORDS SIZE\n       \
                 librdkafka_bench consume BROKERS TOPIC RECORDS"
            );
            std::process::exit(2);
        }
    }
}
