//! The leadership lease: how long this broker may act as a partition leader or group
//! coordinator without hearing from the active controller.
//!
//! The controller fences a broker `broker_session_timeout_ms` after it last *received* a
//! heartbeat, and only then elects other leaders. The broker renews its lease from the moment
//! it *sent* a heartbeat that the controller accepted, for the session timeout less one
//! heartbeat interval. A lapsed lease is granted again only once the broker's replica roles have
//! caught up with what the controller had applied when it accepted the heartbeat (a broker that
//! still holds its lease cannot have been fenced, so its lease simply extends). So a broker cut
//! off from the controller stops leading before any other broker can be elected in its place,
//! and after a cut it leads again only what the current metadata gives it (it re-registered
//! first).
//!
//! Invariant: `valid_until` never moves back except through [`Lease::revoke`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// See the module docs. Cheap to check (one atomic load).
pub struct Lease {
    origin: Instant,
    /// Nanoseconds after `origin` until which this broker may lead; 0: not granted.
    valid_until_ns: AtomicU64,
    duration: Duration,
    /// Set by [`Lease::revoke`]: no renewal takes effect any more (shutting down).
    revoked: std::sync::atomic::AtomicBool,
}

impl Lease {
    /// A lease not yet granted, that lasts `duration` from each renewing heartbeat's send time.
    pub fn new(duration: Duration) -> Lease {
        let now = Instant::now();
        Lease {
            // Earlier than any send time a caller can pass (heartbeats sent before the lease
            // existed, tests).
            origin: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
            valid_until_ns: AtomicU64::new(0),
            duration,
            revoked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A lease that never expires (tests of single components).
    #[cfg(test)]
    pub fn unlimited() -> Lease {
        let lease = Lease::new(Duration::from_secs(1 << 40));
        lease.renew(Instant::now());
        lease
    }

    /// How long a renewal lasts.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Extends the lease to `sent_at + duration` (never shortens it); nothing once revoked.
    pub fn renew(&self, sent_at: Instant) {
        if self.revoked.load(Ordering::Acquire) {
            return;
        }
        let until = sent_at.saturating_duration_since(self.origin) + self.duration;
        let until_ns = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.valid_until_ns.fetch_max(until_ns, Ordering::AcqRel);
    }

    /// Ends the lease now and for good (controlled shutdown).
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.valid_until_ns.store(0, Ordering::Release);
    }

    /// Whether [`Lease::revoke`] ended it (shutting down).
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Whether this broker may act as a leader now.
    pub fn is_valid(&self) -> bool {
        let now_ns = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now_ns < self.valid_until_ns.load(Ordering::Acquire)
    }

    /// Time left, or `None` when expired.
    pub fn remaining(&self) -> Option<Duration> {
        let now = self.origin.elapsed();
        let until = Duration::from_nanos(self.valid_until_ns.load(Ordering::Acquire));
        until.checked_sub(now).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lasts_its_duration_from_the_send_time_and_never_shrinks() {
        let lease = Lease::new(Duration::from_millis(200));
        assert!(!lease.is_valid(), "not granted before the first renewal");
        let sent = Instant::now();
        lease.renew(sent);
        assert!(lease.is_valid());
        // An older heartbeat answered late does not shorten it.
        lease.renew(sent - Duration::from_millis(150));
        assert!(lease.remaining().unwrap() > Duration::from_millis(100));
        lease.renew(sent - Duration::from_millis(500));
        assert!(lease.is_valid());
        lease.revoke();
        assert!(!lease.is_valid());
        assert_eq!(lease.remaining(), None);
        lease.renew(Instant::now());
        assert!(!lease.is_valid(), "a revoked lease is never renewed");
    }

    #[test]
    fn a_lease_renewed_from_an_old_send_time_is_already_expired() {
        let lease = Lease::new(Duration::from_millis(50));
        lease.renew(Instant::now() - Duration::from_millis(60));
        assert!(!lease.is_valid());
    }
}
