//! Token buckets over relayed bytes: `max-bps` per allocation and `bps-capacity` per server, in
//! bytes per second as coTURN counts them (each direction on its own).
//!
//! A bucket holds at most one second of its rate, and never less than [`MIN_BURST`] so that any
//! single datagram can pass. It starts full. The rate is passed on every call (it comes from the
//! configuration, which a reload may change).
//!
//! - [`ByteBucket`]: 24 bytes kept by one owner (an allocation, a worker), no lock, no atomic.
//! - [`SharedByteBucket`]: the same bucket for owners on several threads, one atomic, drawn from
//!   in batches ([`SharedByteBucket::draw`]) that the owner then spends on its own, so the shared
//!   cache line is touched once per batch, not per packet.
//! - [`CapacityPool`]: the `bps-capacity` share that servers without one of their own (the
//!   TCP/TLS connections, a `turn::Server` each) draw batches from.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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

/// How many bytes an owner of a [`SharedByteBucket`] draws at once when it can: 5 ms of the rate,
/// at most 64 KiB. What an owner holds and has not spent is lost to the others until it spends
/// it: one batch per owner at most, and a few milliseconds of the rate.
pub fn batch(rate: u64) -> u64 {
    (rate / 200).clamp(1, 65_536)
}

/// Nanoseconds `bytes` take at `rate`, rounded up.
fn cost(bytes: u64, rate: u64) -> u64 {
    let nanos = (u128::from(bytes) * NANOS).div_ceil(u128::from(rate));
    nanos.min(u128::from(u64::MAX)) as u64
}

/// A token bucket of bytes that owners on several threads draw from, as the generic cell rate
/// algorithm keeps it: one atomic, the moment (in nanoseconds after `base`) at which the bucket
/// would be full again. Same burst and start as [`ByteBucket`].
#[derive(Debug)]
pub struct SharedByteBucket {
    base: Instant,
    full_at: AtomicU64,
}

impl SharedByteBucket {
    /// A full bucket; `base` is any moment no later than the first `now` it will see.
    pub fn new(base: Instant) -> Self {
        SharedByteBucket {
            base,
            full_at: AtomicU64::new(0),
        }
    }

    /// Takes as many bytes as the bucket holds at `now`, up to `want`, if it holds at least
    /// `need` (at most a burst); how many. Otherwise takes nothing and says how long until it
    /// holds `need`. At rate 0 (no limit), `want` at once.
    pub fn draw(&self, now: Instant, rate: u64, need: u64, want: u64) -> Result<u64, Duration> {
        if rate == 0 {
            return Ok(want);
        }
        let need = need.min(burst(rate));
        let want = want.max(need);
        let now = now.saturating_duration_since(self.base).as_nanos();
        let now = now.min(u128::from(u64::MAX / 2)) as u64;
        let horizon = now + cost(burst(rate), rate);
        let mut full_at = self.full_at.load(Relaxed);
        loop {
            // What the bucket holds is the time from when it would be full to a burst from now.
            let from = full_at.max(now);
            let room = horizon.saturating_sub(from);
            let held = (u128::from(room) * u128::from(rate) / NANOS) as u64;
            if held < need {
                return Err(Duration::from_nanos(cost(need, rate) - room));
            }
            let taken = held.min(want);
            let next = from + cost(taken, rate);
            match self
                .full_at
                .compare_exchange_weak(full_at, next, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(taken),
                Err(current) => full_at = current,
            }
        }
    }
}

/// `bps-capacity` for the servers that take no share of their own (see
/// `turn::Server::set_capacity_pool`): together they get `1/shares` of it, one
/// [`SharedByteBucket`] per direction that each draws [`batch`]es from.
#[derive(Debug)]
pub struct CapacityPool {
    shares: u32,
    /// By direction; each on its own cache line, as the two are drawn from independently.
    buckets: [Padded; 2],
}

#[derive(Debug)]
#[repr(align(128))]
struct Padded(SharedByteBucket);

impl CapacityPool {
    /// A pool of `1/shares` of the capacity (`shares` at least 1).
    pub fn new(shares: u32, now: Instant) -> Self {
        CapacityPool {
            shares: shares.max(1),
            buckets: [
                Padded(SharedByteBucket::new(now)),
                Padded(SharedByteBucket::new(now)),
            ],
        }
    }

    /// The pool's rate under a `bps-capacity` of `capacity` (0: no limit).
    pub fn rate(&self, capacity: u64) -> u64 {
        match capacity {
            0 => 0,
            capacity => (capacity / u64::from(self.shares)).max(1),
        }
    }

    /// [`SharedByteBucket::draw`] from the bucket of `direction` (an index, 0 or 1).
    pub fn draw(
        &self,
        now: Instant,
        rate: u64,
        direction: usize,
        need: u64,
        want: u64,
    ) -> Result<u64, Duration> {
        self.buckets[direction].0.draw(now, rate, need, want)
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

    #[test]
    fn a_shared_bucket_passes_the_rate_in_batches() {
        let start = Instant::now();
        let bucket = SharedByteBucket::new(start);
        // Full at first: a burst, in batches of at most `want`.
        assert_eq!(bucket.draw(start, RATE, 1000, 60_000), Ok(60_000));
        assert_eq!(bucket.draw(start, RATE, 1000, 60_000), Ok(40_000));
        assert_eq!(
            bucket.draw(start, RATE, 1000, 60_000),
            Err(Duration::from_millis(10))
        );
        // 4 ms later 400 bytes are there: not the 1000 needed, 6 ms more.
        let later = start + Duration::from_millis(4);
        assert_eq!(
            bucket.draw(later, RATE, 1000, 5000),
            Err(Duration::from_millis(6))
        );
        assert_eq!(bucket.draw(later, RATE, 100, 5000), Ok(400));
        // Drawn every millisecond for two seconds: the rate, nothing lost to rounding.
        let mut drawn = 0;
        for ms in 5..=2004 {
            let now = start + Duration::from_millis(ms);
            drawn += bucket.draw(now, RATE, 1, 1_000_000).unwrap_or(0);
        }
        assert_eq!(drawn, 2 * RATE);
        // Left alone it fills up to a burst, no more.
        let idle = start + Duration::from_secs(10);
        assert_eq!(bucket.draw(idle, RATE, 1, u64::MAX), Ok(RATE));
        // At rate 0, anything.
        assert_eq!(bucket.draw(idle, 0, 1, 1 << 40), Ok(1 << 40));
    }

    #[test]
    fn threads_drawing_from_a_shared_bucket_share_its_rate() {
        use std::sync::{Arc, Barrier};
        let start = Instant::now();
        let bucket = Arc::new(SharedByteBucket::new(start));
        let barrier = Arc::new(Barrier::new(4));
        // Four threads draw every simulated millisecond for a second: a burst and a second's
        // rate between them, whoever wins each race.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (bucket, barrier) = (bucket.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut drawn = 0;
                    for ms in 0..=1000 {
                        barrier.wait();
                        let now = start + Duration::from_millis(ms);
                        drawn += bucket.draw(now, RATE, 500, batch(RATE)).unwrap_or(0);
                    }
                    drawn
                })
            })
            .collect();
        let drawn: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!((2 * RATE - 500..=2 * RATE).contains(&drawn), "{drawn}");
    }

    #[test]
    fn a_pool_takes_its_share_and_batches_stay_small() {
        let pool = CapacityPool::new(3, Instant::now());
        assert_eq!(pool.rate(300_000), 100_000);
        assert_eq!(pool.rate(0), 0);
        assert_eq!(batch(100_000), 500);
        assert_eq!(batch(1_000_000_000), 65_536);
        assert_eq!(batch(10), 1);
    }
}
