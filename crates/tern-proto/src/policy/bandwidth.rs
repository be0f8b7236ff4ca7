//! Token buckets over relayed bytes: `max-bps` per allocation and `bps-capacity` per server, in
//! bytes per second as coTURN counts them (each direction on its own).
//!
//! A bucket holds at most one second of its rate, and never less than [`MIN_BURST`] so that any
//! single datagram can pass. It starts full. The rate is passed on every call (it comes from the
//! configuration, which a reload may change); the bucket itself is 24 bytes, kept by its owner
//! (an allocation, a worker), with no lock and no allocation.

use std::time::{Duration, Instant};

/// The smallest burst: one datagram of the largest size a relay carries.
pub const MIN_BURST: u64 = 65_536;

const NANOS: u128 = 1_000_000_000;

/// A token bucket of bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteBucket {
    available: u64,
    /// The moment `available` is up to date with; `None` until first used (then full).
    at: Option<Instant>,
}

/// How many bytes a bucket of `rate` bytes per second holds at most.
pub fn burst(rate: u64) -> u64 {
    rate.max(MIN_BURST)
}

impl ByteBucket {
    /// Takes `bytes` if the bucket has them at `now`; false (and nothing taken) if not. A rate of
    /// 0 means no limit.
    pub fn try_take(&mut self, now: Instant, rate: u64, bytes: usize) -> bool {
        let has = self.has(now, rate, bytes);
        if has {
            self.take(rate, bytes);
        }
        has
    }

    /// Whether the bucket holds `bytes` at `now` (always, at rate 0).
    pub fn has(&mut self, now: Instant, rate: u64, bytes: usize) -> bool {
        if rate == 0 {
            return true;
        }
        self.refill(now, rate);
        self.available >= bytes as u64
    }

    /// Takes `bytes` (as many as there are) after [`ByteBucket::has`] said yes at this rate.
    pub fn take(&mut self, rate: u64, bytes: usize) {
        if rate != 0 {
            self.available = self.available.saturating_sub(bytes as u64);
        }
    }

    /// How long from `now` until `bytes` may pass (zero if they may now); nothing is taken. For
    /// more than a burst, the time until the bucket is full.
    pub fn delay(&mut self, now: Instant, rate: u64, bytes: usize) -> Duration {
        if rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now, rate);
        let wanted = (bytes as u64).min(burst(rate));
        let missing = wanted.saturating_sub(self.available);
        let nanos = (u128::from(missing) * NANOS).div_ceil(u128::from(rate));
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }

    /// Brings `available` up to `now`. Only the time that earned whole bytes is consumed, so
    /// frequent calls lose nothing to rounding.
    fn refill(&mut self, now: Instant, rate: u64) {
        let full = burst(rate);
        let Some(at) = self.at else {
            self.available = full;
            self.at = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(at).as_nanos();
        let earned = elapsed * u128::from(rate) / NANOS;
        if u128::from(self.available) + earned >= u128::from(full) {
            self.available = full;
            self.at = Some(now);
        } else if earned > 0 {
            self.available += earned as u64;
            let spent = earned * NANOS / u128::from(rate);
            self.at = Some(at + Duration::from_nanos(spent as u64));
        }
        // A rate lowered by a reload leaves no more than the new burst.
        self.available = self.available.min(full);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u64 = 100_000;

    #[test]
    fn starts_full_then_passes_the_rate() {
        let start = Instant::now();
        let mut bucket = ByteBucket::default();
        // The burst (one second, at least 64 KiB) passes at once.
        let mut passed = 0;
        while bucket.try_take(start, RATE, 1000) {
            passed += 1000;
        }
        assert_eq!(passed, RATE);
        // Then 1000 bytes every 10 ms, even when asked every millisecond (no rounding loss).
        let mut passed = 0;
        for ms in 1..=2000 {
            let now = start + Duration::from_millis(ms);
            while bucket.try_take(now, RATE, 1000) {
                passed += 1000;
            }
        }
        assert_eq!(passed, 2 * RATE);
    }

    #[test]
    fn a_small_rate_still_passes_a_whole_datagram() {
        let start = Instant::now();
        let mut bucket = ByteBucket::default();
        assert!(bucket.try_take(start, 1000, 65_000));
        assert!(!bucket.try_take(start, 1000, 1000));
        // 1000 bytes per second: a 1000-byte datagram a second later.
        assert!(bucket.try_take(start + Duration::from_secs(1), 1000, 1000));
    }

    #[test]
    fn delay_says_when_bytes_may_pass() {
        let start = Instant::now();
        let mut bucket = ByteBucket::default();
        assert_eq!(bucket.delay(start, RATE, 1000), Duration::ZERO);
        assert!(bucket.try_take(start, RATE, RATE as usize));
        assert_eq!(bucket.delay(start, RATE, 1000), Duration::from_millis(10));
        let later = start + Duration::from_millis(4);
        assert_eq!(bucket.delay(later, RATE, 1000), Duration::from_millis(6));
        let ready = later + Duration::from_millis(6);
        assert_eq!(bucket.delay(ready, RATE, 1000), Duration::ZERO);
        assert!(bucket.try_take(ready, RATE, 1000));
        // More than a burst: the time until full.
        assert_eq!(
            bucket.delay(ready, RATE, 10 * RATE as usize),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn rate_zero_is_no_limit() {
        let start = Instant::now();
        let mut bucket = ByteBucket::default();
        assert!((0..1000).all(|_| bucket.try_take(start, 0, 65_535)));
        assert_eq!(bucket.delay(start, 0, 1 << 30), Duration::ZERO);
    }
}
