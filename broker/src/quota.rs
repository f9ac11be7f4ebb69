//! Client quotas (Kafka's model): a produce and a fetch byte rate per client id, from the
//! broker's settings (`quota_producer_byte_rate`, `quota_consumer_byte_rate` for every client
//! id, `quota_overrides` for named ones). A client over its rate is not refused: the broker
//! answers, says in the response how long the client is throttled (`throttle_time_ms`), and
//! reads nothing more from that connection until then (the connection is muted), so even a
//! client that ignores the throttle time gets no more than its rate.
//!
//! Accounting is a token bucket per (client id, direction): it refills at the rate, holds at
//! most one second's worth (the burst), and goes into debt by what a request used beyond it;
//! the throttle time is the time to repay the debt. Invariants: a client id with no rate
//! (unlimited) costs no lock and no bucket; at most `BUCKETS_MAX` buckets are held (full
//! ones are dropped first, they carry no state); a single throttle never exceeds
//! `MAX_THROTTLE` (a larger debt throttles the next requests too). Quotas bind clients only:
//! inter-broker traffic (replication) and the broker's own calls are never throttled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// The longest one response throttles its connection.
pub const MAX_THROTTLE: Duration = Duration::from_secs(10);
/// Most client ids tracked at once.
const BUCKETS_MAX: usize = 10_000;

/// Which byte rate a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Record bytes produced (`producer_byte_rate`).
    Produce,
    /// Record bytes fetched by consumers (`consumer_byte_rate`).
    Fetch,
}

impl Direction {
    /// The label of this direction on metrics.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Produce => "produce",
            Direction::Fetch => "fetch",
        }
    }
}

/// One client id's rates, bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub producer: Option<u64>,
    pub consumer: Option<u64>,
}

impl Rates {
    /// The rate in `direction`.
    pub fn get(&self, direction: Direction) -> Option<u64> {
        match direction {
            Direction::Produce => self.producer,
            Direction::Fetch => self.consumer,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may be used now; negative is debt.
    tokens: f64,
    refilled: Instant,
}

/// The broker's quotas and their accounting.
#[derive(Debug, Default)]
pub struct Quotas {
    default: Rates,
    overrides: HashMap<String, Rates>,
    any: bool,
    buckets: Mutex<HashMap<(String, Direction), Bucket>>,
}

/// A rate setting: 0 is unlimited.
fn rate(value: u64) -> Option<u64> {
    (value > 0).then_some(value)
}

impl Quotas {
    /// Quotas from the settings: default producer and consumer rates (0: unlimited) and
    /// `overrides`, `client:producer_rate:consumer_rate,...` (an empty rate is the default,
    /// 0 unlimited; the client id is everything before the last two colons).
    pub fn new(producer: u64, consumer: u64, overrides: &str) -> Result<Quotas, String> {
        let default = Rates {
            producer: rate(producer),
            consumer: rate(consumer),
        };
        let mut parsed = HashMap::new();
        for entry in overrides
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let mut fields = entry.rsplitn(3, ':');
            let (Some(consumer), Some(producer), Some(client)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!(
                    "{entry:?}: expected client_id:producer_byte_rate:consumer_byte_rate"
                ));
            };
            let field = |text: &str, fallback: Option<u64>| -> Result<Option<u64>, String> {
                if text.trim().is_empty() {
                    return Ok(fallback);
                }
                text.trim()
                    .parse::<u64>()
                    .map(rate)
                    .map_err(|e| format!("{entry:?}: rate {text:?}: {e}"))
            };
            let rates = Rates {
                producer: field(producer, default.producer)?,
                consumer: field(consumer, default.consumer)?,
            };
            if parsed.insert(client.to_string(), rates).is_some() {
                return Err(format!("client id {client:?} is listed twice"));
            }
        }
        let any = default != Rates::default() || parsed.values().any(|r| *r != Rates::default());
        Ok(Quotas {
            default,
            overrides: parsed,
            any,
            buckets: Mutex::default(),
        })
    }

    /// Whether any client id has a rate at all.
    pub fn any(&self) -> bool {
        self.any
    }

    /// `client_id`'s rates.
    pub fn rates(&self, client_id: &str) -> Rates {
        self.overrides
            .get(client_id)
            .copied()
            .unwrap_or(self.default)
    }

    /// Counts `bytes` against `client_id`'s rate in `direction`; returns how long the client
    /// is throttled for it (zero while within its rate).
    pub fn record(&self, direction: Direction, client_id: &str, bytes: u64) -> Duration {
        self.account(direction, client_id, bytes, Instant::now())
    }

    /// How long `client_id` is still throttled in `direction` (its debt), without using
    /// anything.
    pub fn throttled(&self, direction: Direction, client_id: &str) -> Duration {
        self.account(direction, client_id, 0, Instant::now())
    }

    fn account(&self, direction: Direction, client_id: &str, bytes: u64, now: Instant) -> Duration {
        let Some(rate) = self.rates(client_id).get(direction) else {
            return Duration::ZERO;
        };
        let rate = rate as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let key = (client_id.to_string(), direction);
        if !buckets.contains_key(&key) && buckets.len() >= BUCKETS_MAX {
            // Full buckets are as good as absent; in debt ones are kept while there is room.
            buckets.retain(|_, bucket| {
                let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
                bucket.tokens + elapsed * rate < rate
            });
            if buckets.len() >= BUCKETS_MAX {
                tracing::warn!(
                    tracked = buckets.len(),
                    "more client ids in quota debt than can be tracked; forgetting their debts"
                );
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate) - bytes as f64;
        bucket.refilled = now;
        if bucket.tokens >= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((-bucket.tokens / rate).min(MAX_THROTTLE.as_secs_f64()))
    }
}

/// A connection's mute: its next request is read only after this instant (shared by the
/// connection's session and the requests it answers from their own tasks).
#[derive(Debug, Clone, Default)]
pub struct Mute(Arc<Mutex<Option<Instant>>>);

impl Mute {
    /// Reads nothing for `time` from now (or longer, if already muted longer).
    fn extend(&self, time: Duration) {
        let until = Instant::now() + time;
        let mut muted = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *muted = Some(muted.map_or(until, |earlier| earlier.max(until)));
    }

    /// Until when the connection is muted, if it is (clears a mute that has passed).
    pub fn until(&self) -> Option<Instant> {
        let mut muted = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match *muted {
            Some(until) if until > Instant::now() => Some(until),
            _ => {
                *muted = None;
                None
            }
        }
    }
}

/// One request's quota accounting, detachable from its connection (a fetch answers from its
/// own task): the client id, the direction and the connection to mute.
#[derive(Debug, Clone)]
pub struct Charge {
    pub direction: Direction,
    pub client_id: String,
    pub mute: Mute,
}

impl Charge {
    /// How long the client is still throttled (its debt), using nothing.
    pub fn debt(&self, quotas: &Quotas) -> Duration {
        quotas.throttled(self.direction, &self.client_id)
    }

    /// Counts `bytes`; if that throttles the client, mutes its connection for that long and
    /// counts it on the metrics. Returns the throttle time for the response, ms.
    pub fn record(&self, quotas: &Quotas, metrics: &Metrics, bytes: u64) -> u32 {
        self.throttle(
            metrics,
            quotas.record(self.direction, &self.client_id, bytes),
        )
    }

    /// Mutes the connection for `time` (a client found in debt) and counts it; returns ms.
    pub fn throttle(&self, metrics: &Metrics, time: Duration) -> u32 {
        if time.is_zero() {
            return 0;
        }
        self.mute.extend(time);
        metrics.quota_throttled(self.direction.name(), time);
        time.as_millis().min(u128::from(u32::MAX)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_fall_back_to_the_default() {
        let quotas = Quotas::new(1000, 0, "a:10:20, b::5 ,c:0:,host:1:2:3").unwrap();
        assert!(quotas.any());
        assert_eq!(
            quotas.rates("a"),
            Rates {
                producer: Some(10),
                consumer: Some(20)
            }
        );
        assert_eq!(
            quotas.rates("b"),
            Rates {
                producer: Some(1000),
                consumer: Some(5)
            }
        );
        assert_eq!(quotas.rates("c"), Rates::default());
        assert_eq!(quotas.rates("host:1").producer, Some(2));
        assert_eq!(quotas.rates("other").producer, Some(1000));
        assert!(!Quotas::new(0, 0, "").unwrap().any());
        assert!(Quotas::new(0, 0, "a:1").is_err());
        assert!(Quotas::new(0, 0, "a:x:1").is_err());
        assert!(Quotas::new(0, 0, "a:1:1,a:2:2").is_err());
    }

    #[test]
    fn a_client_over_its_rate_is_throttled_until_it_repays() {
        let quotas = Quotas::new(1000, 0, "").unwrap();
        let start = Instant::now();
        // One second of burst is free.
        assert_eq!(
            quotas.account(Direction::Produce, "p", 1000, start),
            Duration::ZERO
        );
        // 500 bytes beyond it: half a second.
        let throttle = quotas.account(Direction::Produce, "p", 500, start);
        assert!((throttle.as_secs_f64() - 0.5).abs() < 1e-6, "{throttle:?}");
        // A quarter second later a quarter of it is repaid.
        let later = start + Duration::from_millis(250);
        let left = quotas.account(Direction::Produce, "p", 0, later);
        assert!((left.as_secs_f64() - 0.25).abs() < 1e-6, "{left:?}");
        // Other client ids and the other direction are not affected.
        assert_eq!(
            quotas.account(Direction::Produce, "q", 1000, start),
            Duration::ZERO
        );
        assert_eq!(
            quotas.account(Direction::Fetch, "p", 1 << 30, start),
            Duration::ZERO
        );
        // A huge debt throttles at most MAX_THROTTLE at a time.
        assert_eq!(
            quotas.account(Direction::Produce, "p", 1 << 40, later),
            MAX_THROTTLE
        );
    }

    #[test]
    fn buckets_are_bounded() {
        let quotas = Quotas::new(1, 0, "").unwrap();
        let now = Instant::now();
        for i in 0..BUCKETS_MAX + 10 {
            quotas.account(Direction::Produce, &i.to_string(), 10, now);
        }
        assert!(quotas.buckets.lock().unwrap().len() <= BUCKETS_MAX);
    }
}
