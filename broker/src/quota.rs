//! Client quotas (Kafka's model): a produce and a fetch byte rate per client id, from the
//! broker's settings (`quota_producer_byte_rate`, `quota_consumer_byte_rate` for every client
//! id, `quota_overrides` for named ones) and from the quotas set at run time in the cluster's
//! metadata (`MetadataState::client_quotas`, which win at their level: see
//! [`Quotas::rate`]). A client over its rate is not refused: the broker
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

use crate::controller::metadata::ClientQuotas;
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

/// One layer of settings for a client id: a rate per direction, bytes per second; `None`:
/// not set in this layer (the next one applies), `Some(0)`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Layer {
    producer: Option<u64>,
    consumer: Option<u64>,
}

impl Layer {
    fn get(&self, direction: Direction) -> Option<u64> {
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
    /// The rate it was last counted at (a quota set at run time may change it).
    rate: f64,
}

/// The broker's quotas and their accounting.
#[derive(Debug, Default)]
pub struct Quotas {
    default: Layer,
    overrides: HashMap<String, Layer>,
    any: bool,
    buckets: Mutex<HashMap<(String, Direction), Bucket>>,
}

impl Direction {
    /// The quota key of this direction (Kafka's name).
    pub fn key(self) -> &'static str {
        match self {
            Direction::Produce => "producer_byte_rate",
            Direction::Fetch => "consumer_byte_rate",
        }
    }
}

impl Quotas {
    /// Quotas from the settings: default producer and consumer rates (0: unlimited) and
    /// `overrides`, `client:producer_rate:consumer_rate,...` (an empty rate is the default,
    /// 0 unlimited; the client id is everything before the last two colons).
    pub fn new(producer: u64, consumer: u64, overrides: &str) -> Result<Quotas, String> {
        let default = Layer {
            producer: (producer > 0).then_some(producer),
            consumer: (consumer > 0).then_some(consumer),
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
            let field = |text: &str| -> Result<Option<u64>, String> {
                if text.trim().is_empty() {
                    return Ok(None);
                }
                text.trim()
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|e| format!("{entry:?}: rate {text:?}: {e}"))
            };
            let layer = Layer {
                producer: field(producer)?,
                consumer: field(consumer)?,
            };
            if parsed.insert(client.to_string(), layer).is_some() {
                return Err(format!("client id {client:?} is listed twice"));
            }
        }
        let limited = |l: &Layer| {
            [l.producer, l.consumer]
                .iter()
                .any(|r| r.is_some_and(|r| r > 0))
        };
        let any = limited(&default) || parsed.values().any(limited);
        Ok(Quotas {
            default,
            overrides: parsed,
            any,
            buckets: Mutex::default(),
        })
    }

    /// Whether any client id may have a rate at all (with `dynamic`, the quotas set at run
    /// time in the metadata).
    pub fn any(&self, dynamic: &ClientQuotas) -> bool {
        self.any || !dynamic.is_empty()
    }

    /// `client_id`'s rate in `direction` (`None`: no limit): the first of its quota set at
    /// run time (`dynamic`), its `quota_overrides` entry, the default set at run time, the
    /// broker's default setting.
    pub fn rate(
        &self,
        direction: Direction,
        client_id: &str,
        dynamic: &ClientQuotas,
    ) -> Option<u64> {
        let from_metadata = |client: Option<String>| {
            dynamic
                .get(&client)
                .and_then(|values| values.get(direction.key()).copied())
        };
        let specific = || {
            if dynamic.is_empty() {
                None
            } else {
                from_metadata(Some(client_id.to_string()))
            }
        };
        specific()
            .or_else(|| self.overrides.get(client_id).and_then(|l| l.get(direction)))
            .or_else(|| from_metadata(None))
            .or_else(|| self.default.get(direction))
            .filter(|rate| *rate > 0)
    }

    /// Counts `bytes` against `client_id`'s `rate` in `direction`; returns how long the
    /// client is throttled for it (zero while within its rate).
    pub fn record(&self, direction: Direction, client_id: &str, rate: u64, bytes: u64) -> Duration {
        self.account(direction, client_id, rate, bytes, Instant::now())
    }

    /// How long `client_id` is still throttled in `direction` at `rate` (its debt), without
    /// using anything.
    pub fn throttled(&self, direction: Direction, client_id: &str, rate: u64) -> Duration {
        self.account(direction, client_id, rate, 0, Instant::now())
    }

    fn account(
        &self,
        direction: Direction,
        client_id: &str,
        rate: u64,
        bytes: u64,
        now: Instant,
    ) -> Duration {
        let rate = rate.max(1) as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let key = (client_id.to_string(), direction);
        if !buckets.contains_key(&key) && buckets.len() >= BUCKETS_MAX {
            // Full buckets are as good as absent; in debt ones are kept while there is room.
            buckets.retain(|_, bucket| {
                let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
                bucket.tokens + elapsed * bucket.rate < bucket.rate
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
            rate,
        });
        bucket.rate = rate;
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
    /// The client id's rate, bytes per second.
    pub rate: u64,
    pub mute: Mute,
}

impl Charge {
    /// How long the client is still throttled (its debt), using nothing.
    pub fn debt(&self, quotas: &Quotas) -> Duration {
        quotas.throttled(self.direction, &self.client_id, self.rate)
    }

    /// Counts `bytes`; if that throttles the client, mutes its connection for that long and
    /// counts it on the metrics. Returns the throttle time for the response, ms.
    pub fn record(&self, quotas: &Quotas, metrics: &Metrics, bytes: u64) -> u32 {
        self.throttle(
            metrics,
            quotas.record(self.direction, &self.client_id, self.rate, bytes),
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
        let none = ClientQuotas::new();
        let quotas = Quotas::new(1000, 0, "a:10:20, b::5 ,c:0:,host:1:2:3").unwrap();
        assert!(quotas.any(&none));
        let rate = |d, client: &str| quotas.rate(d, client, &none);
        assert_eq!(rate(Direction::Produce, "a"), Some(10));
        assert_eq!(rate(Direction::Fetch, "a"), Some(20));
        assert_eq!(rate(Direction::Produce, "b"), Some(1000));
        assert_eq!(rate(Direction::Fetch, "b"), Some(5));
        assert_eq!(rate(Direction::Produce, "c"), None);
        assert_eq!(rate(Direction::Fetch, "c"), None);
        assert_eq!(rate(Direction::Produce, "host:1"), Some(2));
        assert_eq!(rate(Direction::Produce, "other"), Some(1000));
        assert!(!Quotas::new(0, 0, "").unwrap().any(&none));
        assert!(Quotas::new(0, 0, "a:1").is_err());
        assert!(Quotas::new(0, 0, "a:x:1").is_err());
        assert!(Quotas::new(0, 0, "a:1:1,a:2:2").is_err());
    }

    #[test]
    fn quotas_set_at_run_time_win_over_the_settings_at_their_level() {
        let quotas = Quotas::new(1000, 0, "a:10:").unwrap();
        let dynamic = ClientQuotas::from([
            (
                Some("a".to_string()),
                [("producer_byte_rate".to_string(), 77)].into(),
            ),
            (
                Some("free".to_string()),
                [("producer_byte_rate".to_string(), 0)].into(),
            ),
            (None, [("consumer_byte_rate".to_string(), 500)].into()),
        ]);
        assert!(Quotas::new(0, 0, "").unwrap().any(&dynamic));
        let rate = |d, client: &str| quotas.rate(d, client, &dynamic);
        // The client's own run-time quota, then its override, then the run-time default,
        // then the setting; 0 is no limit.
        assert_eq!(rate(Direction::Produce, "a"), Some(77));
        assert_eq!(rate(Direction::Fetch, "a"), Some(500));
        assert_eq!(rate(Direction::Produce, "b"), Some(1000));
        assert_eq!(rate(Direction::Fetch, "b"), Some(500));
        assert_eq!(rate(Direction::Produce, "free"), None);
    }

    #[test]
    fn a_client_over_its_rate_is_throttled_until_it_repays() {
        let quotas = Quotas::new(1000, 0, "").unwrap();
        let rate = 1000;
        let start = Instant::now();
        // One second of burst is free.
        assert_eq!(
            quotas.account(Direction::Produce, "p", rate, 1000, start),
            Duration::ZERO
        );
        // 500 bytes beyond it: half a second.
        let throttle = quotas.account(Direction::Produce, "p", rate, 500, start);
        assert!((throttle.as_secs_f64() - 0.5).abs() < 1e-6, "{throttle:?}");
        // A quarter second later a quarter of it is repaid.
        let later = start + Duration::from_millis(250);
        let left = quotas.account(Direction::Produce, "p", rate, 0, later);
        assert!((left.as_secs_f64() - 0.25).abs() < 1e-6, "{left:?}");
        // Other client ids and the other direction are not affected.
        assert_eq!(
            quotas.account(Direction::Produce, "q", rate, 1000, start),
            Duration::ZERO
        );
        assert_eq!(
            quotas.account(Direction::Fetch, "p", rate, 1000, start),
            Duration::ZERO
        );
        // A huge debt throttles at most MAX_THROTTLE at a time.
        assert_eq!(
            quotas.account(Direction::Produce, "p", rate, 1 << 40, later),
            MAX_THROTTLE
        );
    }

    #[test]
    fn buckets_are_bounded() {
        let quotas = Quotas::new(1, 0, "").unwrap();
        let now = Instant::now();
        for i in 0..BUCKETS_MAX + 10 {
            quotas.account(Direction::Produce, &i.to_string(), 1, 10, now);
        }
        assert!(quotas.buckets.lock().unwrap().len() <= BUCKETS_MAX);
    }
}
