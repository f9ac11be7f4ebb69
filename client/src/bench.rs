//! Measurement for load generators: the open-loop send schedule, latency histograms, the
//! counters of one run, and its report. `rill bench` uses it with Rill's [`Producer`] and
//! [`Consumer`]; the peer benchmark (`benches/peers`) uses it with other brokers' clients, so
//! every system is measured by the same code.
//!
//! Time: [`Measure::base`] is when the first record may go. Record `i` of a sender at rate `r`
//! is scheduled at `base + i / r` ([`Measure::schedule`]); it goes then, or at once if the
//! sender is behind, and its latency counts from the earlier of its scheduled and its actual
//! send time, so a broker that stalls the senders shows as latency of every record that waited
//! (no coordinated omission). A record counts if it was sent after the warm-up
//! ([`Measure::measure_from`]); the throughput window runs from the end of the warm-up to the
//! last acknowledgement. End-to-end latency needs the send time in the record: [`stamp`] it,
//! and give the receiver's reading to [`Measure::received`].
//!
//! ```
//! use std::time::Duration;
//! use rill_client::bench::{Measure, Mode};
//! # async fn run() {
//! let measure = Measure::new(Duration::ZERO, Some(Duration::from_secs(1)), None, false);
//! let mut latencies = rill_client::bench::histogram();
//! let mut i = 0;
//! while let Some(start) = measure.schedule(i, Some(1000)).await {
//!     // send record i, then when it is acknowledged:
//!     measure.acknowledged(start, 100, Ok::<(), String>(()), &mut latencies);
//!     i += 1;
//! }
//! let report = measure.report("produce", "topic", 1, Mode::Rate(1000), &latencies, None);
//! # }
//! ```
//!
//! [`Producer`]: crate::Producer
//! [`Consumer`]: crate::Consumer

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::time::Instant;

/// The header (or field) in which senders stamp each record's send time: 8 bytes, big-endian
/// microseconds since [`Measure::base`].
pub const SENT_HEADER: &str = "rill-bench-sent-us";

/// Largest latency the histograms hold, in microseconds (10 minutes).
pub const LATENCY_MAX_US: u64 = 600_000_000;

/// A scheduled record goes early rather than sleeping for less than this (the timer's grain is
/// about a millisecond); its latency then counts from its actual send time.
const EARLY_SEND_MAX: Duration = Duration::from_micros(500);

/// Once the senders are done (or, draining a topic, once reads come back empty), a reader that
/// receives nothing for this long stops.
pub const DRAINED_AFTER: Duration = Duration::from_secs(10);

/// One record a [`Reader`] received: its sent stamp, if it carries one ([`SENT_HEADER`]), and
/// its key and value bytes.
pub type Received = (Option<[u8; 8]>, u64);

/// What a load generator reads with: Rill's consumer, or another broker's client.
pub trait Reader: Send {
    /// The records that arrive within about `wait` (none if nothing did).
    fn read(
        &mut self,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Received>, String>> + Send;
}

/// Reads until `consumed` (shared by the readers of one run) reaches `total`, or nothing
/// arrives for [`DRAINED_AFTER`]; returns the latency of each read that returned records, and
/// the bytes read.
pub async fn drain<R: Reader>(
    reader: &mut R,
    total: u64,
    consumed: &AtomicU64,
    bar: &ProgressBar,
) -> Result<(Histogram<u64>, u64), String> {
    let mut latencies = histogram();
    let mut bytes = 0;
    let mut idle_since = Instant::now();
    while consumed.load(Ordering::Relaxed) < total {
        let polled = Instant::now();
        let records = reader.read(Duration::from_millis(500)).await?;
        if records.is_empty() {
            if idle_since.elapsed() > DRAINED_AFTER {
                break;
            }
            continue;
        }
        idle_since = Instant::now();
        record(&mut latencies, polled.elapsed());
        bytes += records.iter().map(|(_, b)| b).sum::<u64>();
        consumed.fetch_add(records.len() as u64, Ordering::Relaxed);
        bar.inc(records.len() as u64);
    }
    Ok((latencies, bytes))
}

/// The worker threads a load generator with `clients` producers and consumers runs on:
/// `requested` (its `--threads`), or by default one per client, at most half the machine's
/// cores (at least one), leaving the rest to a broker on the same machine. On 2 cores, one
/// thread did a 1 KiB producer's work with a quarter less CPU than two (no wake-ups across
/// threads), CPU the broker then had.
pub fn threads(requested: Option<u32>, clients: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    requested.map_or_else(
        || (clients as usize).clamp(1, (cores / 2).max(1)),
        |n| n as usize,
    )
}

/// An HDR histogram of latencies in microseconds, 3 significant digits, up to 10 minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
        .expect("constant bounds: 1 <= LATENCY_MAX_US, 3 significant digits")
}

/// Records one latency, clamped into the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    record_n(histogram, latency, 1);
}

/// Records one latency `count` times, clamped into the histogram's range.
pub fn record_n(histogram: &mut Histogram<u64>, latency: Duration, count: u64) {
    let micros = latency.as_micros().clamp(1, u128::from(LATENCY_MAX_US)) as u64;
    histogram.saturating_record_n(micros, count);
}

/// How a run sent: as fast as possible, or open-loop at a rate (records/s, all senders).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As fast as the senders can.
    Max,
    /// Open loop at this many records per second in total.
    Rate(u64),
}

/// When a record may go ([`Measure::due`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Now; its latency counts from this instant.
    Now(Instant),
    /// Not before this instant.
    At(Instant),
    /// Never: the run's duration is over, or a record failed.
    Stop,
}

/// What every sender and receiver of one run shares: the clock and the counters. Times are
/// tokio's [`Instant`]s, so tests can run the schedule on a paused clock.
#[derive(Debug)]
pub struct Measure {
    base: Instant,
    measure_from: Instant,
    stop_at: Option<Instant>,
    acked: AtomicU64,
    acked_measured: AtomicU64,
    bytes_measured: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    received: AtomicU64,
    received_measured: AtomicU64,
    sending: AtomicBool,
    ended: Mutex<Option<Instant>>,
    bar: ProgressBar,
}

impl Measure {
    /// Starts the clock now. `duration` (after the warm-up) stops the schedule; `total` sizes
    /// the progress bar, shown on stderr unless `quiet`.
    pub fn new(
        warmup: Duration,
        duration: Option<Duration>,
        total: Option<u64>,
        quiet: bool,
    ) -> Measure {
        let base = Instant::now();
        let measure_from = base + warmup;
        Measure {
            base,
            measure_from,
            stop_at: duration.map(|d| measure_from + d),
            acked: AtomicU64::new(0),
            acked_measured: AtomicU64::new(0),
            bytes_measured: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            received: AtomicU64::new(0),
            received_measured: AtomicU64::new(0),
            sending: AtomicBool::new(true),
            ended: Mutex::new(None),
            bar: progress(total, quiet),
        }
    }

    /// When the first record could go.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// The end of the warm-up.
    pub fn measure_from(&self) -> Instant {
        self.measure_from
    }

    /// Whether record `i` of a sender at `rate` records/s (as fast as possible without a rate)
    /// may go now, without waiting: senders that batch by hand (a pipeline) take every record
    /// that is [`Due::Now`] and then wait for the next. After the first failed record every
    /// sender stops ([`Due::Stop`]): the run fails anyway, and a cluster that refuses records
    /// or has gone would otherwise be offered every remaining one, each failing on its own
    /// (after its delivery timeout, if the brokers are gone).
    pub fn due(&self, i: u64, rate: Option<u64>) -> Due {
        let now = Instant::now();
        let scheduled = match rate {
            Some(rate) => self.base + Duration::from_secs_f64(i as f64 / rate.max(1) as f64),
            None => now,
        };
        if self.failed() || self.stop_at.is_some_and(|stop| scheduled >= stop) {
            Due::Stop
        } else if scheduled > now + EARLY_SEND_MAX {
            Due::At(scheduled)
        } else {
            Due::Now(scheduled.min(now))
        }
    }

    /// Waits until record `i` of a sender at `rate` records/s is due (at once without a rate)
    /// and returns the instant its latency counts from; `None` once the duration is over.
    pub async fn schedule(&self, i: u64, rate: Option<u64>) -> Option<Instant> {
        match self.due(i, rate) {
            Due::Stop => None,
            Due::Now(start) => Some(start),
            Due::At(scheduled) => {
                tokio::time::sleep_until(scheduled).await;
                Some(scheduled.min(Instant::now()))
            }
        }
    }

    /// The stamp for a record whose latency counts from `start` (see [`SENT_HEADER`]).
    pub fn stamp(&self, start: Instant) -> [u8; 8] {
        (start.saturating_duration_since(self.base).as_micros() as u64).to_be_bytes()
    }

    /// A record sent at `start` with `bytes` of key and value was acknowledged (or failed).
    pub fn acknowledged<E: Display>(
        &self,
        start: Instant,
        bytes: u64,
        result: Result<(), E>,
        latencies: &mut Histogram<u64>,
    ) {
        self.acknowledged_many(start, 1, bytes, result, Instant::now(), latencies);
    }

    /// `records` records sent at `start` with `bytes` of keys and values in all, which share
    /// one outcome (they went in one batch), were acknowledged (or failed) at `now` (a caller
    /// that sees a batch's records complete together reads the clock once for them).
    pub fn acknowledged_many<E: Display>(
        &self,
        start: Instant,
        records: u64,
        bytes: u64,
        result: Result<(), E>,
        now: Instant,
        latencies: &mut Histogram<u64>,
    ) {
        let done = match result {
            Ok(()) => {
                let acked = self.acked.fetch_add(records, Ordering::Relaxed) + records;
                if now >= self.measure_from {
                    self.acked_measured.fetch_add(records, Ordering::Relaxed);
                    self.bytes_measured.fetch_add(bytes, Ordering::Relaxed);
                }
                if start >= self.measure_from {
                    record_n(latencies, now - start, records);
                }
                acked + self.errors.load(Ordering::Relaxed)
            }
            Err(e) => {
                self.first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(|| e.to_string());
                self.errors.fetch_add(records, Ordering::Relaxed)
                    + records
                    + self.acked.load(Ordering::Relaxed)
            }
        };
        // The bar every 256 records: each update reads the clock (1% of a 1 KiB producer's
        // CPU when it was every record, perf).
        if done % 256 < records {
            self.bar.set_position(done);
        }
    }

    /// A receiver got a record carrying `stamp` (ignored if it is not 8 bytes) at `now`.
    pub fn received(&self, stamp: &[u8], now: Instant, latencies: &mut Histogram<u64>) {
        let Ok(micros) = <[u8; 8]>::try_from(stamp) else {
            return;
        };
        let sent = self.base + Duration::from_micros(u64::from_be_bytes(micros));
        self.received.fetch_add(1, Ordering::Relaxed);
        if sent >= self.measure_from {
            self.received_measured.fetch_add(1, Ordering::Relaxed);
            record(latencies, now.saturating_duration_since(sent));
        }
    }

    /// Updates the progress bar's note on what the receivers have.
    fn show_received(&self) {
        self.bar.set_message(format!(
            "received {}",
            self.received.load(Ordering::Relaxed)
        ));
    }

    /// Whether a record has failed (the run fails, and senders stop: [`Due::Stop`]).
    pub fn failed(&self) -> bool {
        self.errors.load(Ordering::Relaxed) > 0
    }

    /// The senders are done (every record acknowledged or failed): the throughput window ends.
    pub fn senders_done(&self) {
        self.sending.store(false, Ordering::Release);
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
    }

    /// Whether a receiver can stop: the senders are done and every acknowledged record has
    /// been received.
    pub fn all_received(&self) -> bool {
        !self.sending.load(Ordering::Acquire)
            && self.received.load(Ordering::Relaxed) >= self.acked.load(Ordering::Relaxed)
    }

    /// A receiver for end-to-end latency: reads until every acknowledged record has arrived,
    /// or nothing arrives for [`DRAINED_AFTER`] after the senders finished; returns the
    /// latencies of the stamped records.
    pub async fn receive<R: Reader>(&self, reader: &mut R) -> Result<Histogram<u64>, String> {
        let mut latencies = histogram();
        let mut idle_since: Option<Instant> = None;
        loop {
            if self.all_received() {
                break;
            }
            if !self.sending.load(Ordering::Acquire)
                && idle_since.get_or_insert_with(Instant::now).elapsed() > DRAINED_AFTER
            {
                break;
            }
            let records = reader.read(Duration::from_millis(100)).await?;
            if records.is_empty() {
                continue;
            }
            idle_since = None;
            let now = Instant::now();
            for stamp in records.iter().filter_map(|(stamp, _)| stamp.as_ref()) {
                self.received(stamp, now, &mut latencies);
            }
            self.show_received();
        }
        Ok(latencies)
    }

    /// The run's report; `end_to_end` is the receivers' latencies and count, if any ran.
    /// Fails if the run ended within the warm-up.
    pub fn report(
        &self,
        bench: &'static str,
        topic: &str,
        clients: u32,
        mode: Mode,
        latencies: &Histogram<u64>,
        end_to_end: Option<(u32, &Histogram<u64>)>,
    ) -> Result<Report, String> {
        self.bar.finish_and_clear();
        let ended = self
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_else(Instant::now);
        if ended <= self.measure_from {
            return Err(format!(
                "the run ended within its {:.1} s warm-up: send more records or for longer, or shorten the warm-up",
                (self.measure_from - self.base).as_secs_f64()
            ));
        }
        let seconds = (ended - self.measure_from).as_secs_f64().max(1e-9);
        let records = self.acked_measured.load(Ordering::Relaxed);
        let bytes = self.bytes_measured.load(Ordering::Relaxed);
        let open_loop = matches!(mode, Mode::Rate(_));
        let end_to_end = end_to_end.map(|(receivers, latencies)| EndToEnd {
            consumers: receivers,
            records: self.received_measured.load(Ordering::Relaxed),
            missing: self
                .acked
                .load(Ordering::Relaxed)
                .saturating_sub(self.received.load(Ordering::Relaxed)),
            latency_of: if open_loop {
                "scheduled send to receipt by a consumer"
            } else {
                "send to receipt by a consumer"
            },
            latency: Percentiles::of(latencies),
        });
        Ok(Report {
            bench,
            topic: topic.to_string(),
            clients,
            mode: if open_loop { "rate" } else { "max" },
            target_records_per_sec: match mode {
                Mode::Rate(rate) => Some(rate),
                Mode::Max => None,
            },
            warmup_secs: (self.measure_from - self.base).as_secs_f64(),
            records,
            bytes,
            errors: self.errors.load(Ordering::Relaxed),
            first_error: self
                .first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            seconds,
            records_per_sec: records as f64 / seconds,
            mb_per_sec: bytes as f64 / seconds / 1e6,
            latency_of: if open_loop {
                "scheduled send to acknowledgement"
            } else {
                "send to acknowledgement"
            },
            latency: Percentiles::of(latencies),
            end_to_end,
        })
    }
}

/// A progress bar on stderr (hidden when `quiet`); a counter when `total` is unknown.
pub fn progress(total: Option<u64>, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::new(total),
            "{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {pos} {per_sec} {elapsed} {msg}",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Latency percentiles in milliseconds, from an HDR histogram of microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Latencies recorded.
    pub samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9_ms")]
    pub p99_9_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of `histogram` (microseconds).
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            samples: histogram.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p99_9_ms: ms(0.999),
            max_ms: histogram.max() as f64 / 1000.0,
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p99_9_ms, self.max_ms, self.samples
        )
    }
}

/// End-to-end figures: records sent and received by consumers in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    /// Consumers reading.
    pub consumers: u32,
    /// Records received that were sent after the warm-up.
    pub records: u64,
    /// Records acknowledged to the senders that no consumer received.
    pub missing: u64,
    /// What the latency measures.
    pub latency_of: &'static str,
    /// Send (or scheduled send) to receipt.
    pub latency: Percentiles,
}

/// One run's figures; printed as a table or as JSON (its shape is documented in
/// docs/BENCHMARKS.md).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `produce` or `consume`.
    pub bench: &'static str,
    /// The topic (or stream) written or read.
    pub topic: String,
    /// Producers (produce) or consumers (consume) in parallel.
    pub clients: u32,
    /// `max` (as fast as possible) or `rate` (open loop at `target_records_per_sec`).
    pub mode: &'static str,
    /// The open loop's rate, in records/s.
    pub target_records_per_sec: Option<u64>,
    /// Seconds at the start that count in no figure.
    pub warmup_secs: f64,
    /// Records acknowledged (produce) or read (consume) after the warm-up.
    pub records: u64,
    /// Key and value bytes of those records.
    pub bytes: u64,
    /// Records that failed.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Length of the measured window: from the end of the warm-up to the last acknowledgement.
    pub seconds: f64,
    /// Records per second in the window.
    pub records_per_sec: f64,
    /// 10^6 bytes per second in the window.
    pub mb_per_sec: f64,
    /// What `latency` measures.
    pub latency_of: &'static str,
    /// Latency percentiles.
    pub latency: Percentiles,
    /// With consumers in the same run: end-to-end figures.
    pub end_to_end: Option<EndToEnd>,
}

impl Report {
    /// Prints the report as pretty JSON or as lines for people; fails (after printing) if any
    /// record failed or an acknowledged record never reached a consumer.
    pub fn print(&self, json: bool) -> Result<(), String> {
        if json {
            let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
            println!("{text}");
        } else {
            println!("{}", self.text());
        }
        if self.errors > 0 {
            return Err(format!(
                "{} records failed; the first: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("unknown")
            ));
        }
        if let Some(e2e) = self.end_to_end.as_ref().filter(|e| e.missing > 0) {
            return Err(format!(
                "{} acknowledged records never reached a consumer",
                e2e.missing
            ));
        }
        Ok(())
    }

    /// The report in words, a few lines.
    pub fn text(&self) -> String {
        let mode = match self.target_records_per_sec {
            Some(rate) => format!(", open loop at {rate} records/s"),
            None => String::new(),
        };
        let warmup = if self.warmup_secs > 0.0 {
            format!(" after {} s of warm-up", self.warmup_secs)
        } else {
            String::new()
        };
        let mut text = format!(
            "{} {}: {} records in {:.2} s{warmup}{mode}, {} clients, {} errors\n  {:.0} records/s, {:.1} MB/s\n  latency ({}): {}",
            self.bench,
            self.topic,
            self.records,
            self.seconds,
            self.clients,
            self.errors,
            self.records_per_sec,
            self.mb_per_sec,
            self.latency_of,
            self.latency.line()
        );
        if let Some(e2e) = &self.end_to_end {
            text.push_str(&format!(
                "\n  end to end ({} consumers, {} records, {} missing): {}",
                e2e.consumers,
                e2e.records,
                e2e.missing,
                e2e.latency.line()
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_schedule_spaces_records_by_the_rate_and_stops_after_the_duration() {
        let measure = Measure::new(
            Duration::from_secs(1),
            Some(Duration::from_secs(1)),
            None,
            true,
        );
        let base = measure.base();
        let mut starts = Vec::new();
        let mut i = 0;
        while let Some(start) = measure.schedule(i, Some(10)).await {
            starts.push(start);
            i += 1;
        }
        // 10 records/s over 1 s of warm-up and 1 s measured: records 0..20.
        assert_eq!(starts.len(), 20);
        for (i, start) in starts.iter().enumerate() {
            assert_eq!(*start - base, Duration::from_millis(100 * i as u64));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_record_counts_from_its_schedule_and_warmup_records_count_nowhere() {
        let measure = Measure::new(Duration::from_secs(1), None, None, true);
        let mut latencies = histogram();
        // Scheduled in the warm-up: acknowledged, but in no figure.
        let early = measure.schedule(0, Some(1)).await.unwrap();
        tokio::time::advance(Duration::from_millis(1500)).await;
        measure.acknowledged(early, 10, Ok::<(), String>(()), &mut latencies);
        assert_eq!(latencies.len(), 0);
        // Record 1 was due at 1 s; the sender is 500 ms late: its latency counts from 1 s.
        let late = measure.schedule(1, Some(1)).await.unwrap();
        assert_eq!(late - measure.base(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(100)).await;
        measure.acknowledged(late, 20, Ok::<(), String>(()), &mut latencies);
        assert_eq!(latencies.len(), 1);
        assert!(latencies.max() >= 600_000, "{}", latencies.max());
        assert!(matches!(measure.due(2, Some(1)), Due::At(_)));
        measure.acknowledged(late, 20, Err("refused"), &mut latencies);
        assert!(
            matches!(measure.due(2, Some(1)), Due::Stop),
            "no record is sent after one failed"
        );
        assert_eq!(measure.schedule(2, None).await, None);
        measure.senders_done();
        let report = measure
            .report("produce", "t", 1, Mode::Rate(1), &latencies, None)
            .unwrap();
        assert_eq!(report.records, 2, "both acknowledged after the warm-up");
        assert_eq!(report.bytes, 30);
        assert_eq!(report.errors, 1);
        assert_eq!(report.first_error.as_deref(), Some("refused"));
        assert_eq!(report.mode, "rate");
        assert!(report.print(true).is_err(), "a failed record fails the run");
    }

    #[tokio::test(start_paused = true)]
    async fn receipts_count_by_their_stamp() {
        let measure = Measure::new(Duration::from_secs(1), None, None, true);
        let mut latencies = histogram();
        let in_warmup = measure.stamp(measure.base() + Duration::from_millis(10));
        let after = measure.stamp(measure.base() + Duration::from_millis(1200));
        tokio::time::advance(Duration::from_millis(1250)).await;
        let now = Instant::now();
        measure.received(&in_warmup, now, &mut latencies);
        measure.received(&after, now, &mut latencies);
        measure.received(b"short", now, &mut latencies);
        assert_eq!(latencies.len(), 1);
        let latency = latencies.max();
        assert!((49_000..=51_000).contains(&latency), "{latency}");
        measure.acknowledged(Instant::now(), 1, Ok::<(), String>(()), &mut histogram());
        measure.acknowledged(Instant::now(), 1, Ok::<(), String>(()), &mut histogram());
        assert!(!measure.all_received(), "still sending");
        measure.senders_done();
        assert!(measure.all_received());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_that_ends_in_its_warmup_has_no_figures() {
        let measure = Measure::new(Duration::from_secs(5), None, None, true);
        measure.senders_done();
        let error = measure
            .report("produce", "t", 1, Mode::Max, &histogram(), None)
            .unwrap_err();
        assert!(error.contains("warm-up"), "{error}");
    }
}
