//! The per-source rate limit on answers to unauthenticated requests (`unauthenticated-rate-limit`).
//!
//! Over UDP a source address can be spoofed, so anything tern answers without authentication
//! (Binding, 401/438 challenges, errors before authentication) can be aimed at a victim. Each
//! source address (IPv6 by /64) gets a token bucket of `rate` answers per second, burst `rate`;
//! beyond it the request is dropped unanswered.
//!
//! The buckets live in a fixed table of [`SLOTS`] entries indexed by a keyed hash of the address,
//! so memory is bounded whatever the number of sources, nothing is allocated per packet, and the
//! table belongs to one worker (no lock, no shared cache line). Addresses that collide share a
//! bucket: a collision makes the limit stricter for both, never looser, and the key (random per
//! table) keeps an attacker from choosing whom they collide with. Across the whole table at most
//! `SLOTS × rate` answers per second leave a worker.

use super::quota::address_key;
use std::net::IpAddr;
use std::time::Instant;

/// Buckets per table: 4096 × 8 bytes = 32 KiB per worker.
pub const SLOTS: usize = 4096;

/// Token amounts are kept in thousandths, so a rate of a few per second refills smoothly.
const MILLI: u64 = 1000;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Answers available, in thousandths.
    tokens: u32,
    /// When `tokens` was last brought up to date, in milliseconds since the table's `epoch`
    /// (wrapping; 0 marks a slot never used).
    at_ms: u32,
}

/// One worker's table of per-source buckets.
#[derive(Debug)]
pub struct SourceLimiter {
    slots: Box<[Slot]>,
    epoch: Instant,
    key: u64,
}

impl SourceLimiter {
    /// A table whose clock starts at `now`; `key` seeds the address hash (use a random one).
    pub fn new(now: Instant, key: u64) -> Self {
        SourceLimiter {
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
            epoch: now,
            key: key | 1,
        }
    }

    /// Takes one answer from `source`'s bucket at `now` under `rate` answers per second (burst
    /// `rate`); false if the bucket is empty and the request must go unanswered. A rate of 0
    /// means no limit.
    pub fn admit(&mut self, now: Instant, source: IpAddr, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let burst = u64::from(rate) * MILLI;
        // Offset by one so that 0 marks an unused slot. (Once every 49 days a used slot reads as
        // unused, that is, full: as if it had been idle, which is harmless.)
        let now_ms = (now.saturating_duration_since(self.epoch).as_millis() as u32).wrapping_add(1);
        let slot = &mut self.slots[self.index(source)];
        let tokens = if slot.at_ms == 0 {
            burst
        } else {
            let elapsed_ms = u64::from(now_ms.wrapping_sub(slot.at_ms));
            // A slot idle for half the wrap period (~25 days) or more is simply full.
            let refill = if elapsed_ms >= 1 << 31 {
                burst
            } else {
                elapsed_ms * u64::from(rate)
            };
            (u64::from(slot.tokens) + refill).min(burst)
        };
        slot.at_ms = now_ms;
        if tokens < MILLI {
            slot.tokens = tokens as u32;
            return false;
        }
        slot.tokens = (tokens - MILLI) as u32;
        true
    }

    fn index(&self, source: IpAddr) -> usize {
        let bits: u64 = match address_key(source) {
            IpAddr::V4(v4) => u32::from(v4).into(),
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
        };
        // A keyed multiply-xorshift: cheap, and without the key the slot cannot be predicted.
        let mut h = (bits ^ self.key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
        h = h.wrapping_mul(self.key);
        h ^= h >> 32;
        (h as usize) % SLOTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// How many of `tries` back-to-back requests at `now` are answered.
    fn answered(limiter: &mut SourceLimiter, now: Instant, source: IpAddr, tries: u32) -> u32 {
        (0..tries)
            .filter(|_| limiter.admit(now, source, 10))
            .count() as u32
    }

    #[test]
    fn a_burst_of_rate_then_rate_per_second() {
        let start = Instant::now();
        let mut limiter = SourceLimiter::new(start, 42);
        let source = ip("198.51.100.7");
        assert_eq!(answered(&mut limiter, start, source, 100), 10);
        // A tenth of a second refills one answer.
        let later = start + Duration::from_millis(100);
        assert_eq!(answered(&mut limiter, later, source, 100), 1);
        // Over 10 s of steady flood, at most 10 per second.
        let mut total = 0;
        for tick in 1..=100 {
            let now = later + Duration::from_millis(100 * tick);
            total += answered(&mut limiter, now, source, 50);
        }
        assert_eq!(total, 100);
        // An idle source fills up to the burst, no more.
        let idle = later + Duration::from_secs(3600);
        assert_eq!(answered(&mut limiter, idle, source, 100), 10);
    }

    #[test]
    fn sources_have_their_own_buckets() {
        let start = Instant::now();
        let mut limiter = SourceLimiter::new(start, 7);
        let flooder = ip("198.51.100.7");
        assert_eq!(answered(&mut limiter, start, flooder, 1000), 10);
        // Count the sources that still get answers: all but the (rare) ones sharing the slot.
        let fine = (1..=200u32)
            .filter(|i| {
                let other = IpAddr::from([203, 0, 113, *i as u8]);
                limiter.admit(start, other, 10)
            })
            .count();
        assert!(fine >= 195, "{fine} of 200 other sources answered");
    }

    #[test]
    fn an_ipv6_slash64_is_one_source() {
        let start = Instant::now();
        let mut limiter = SourceLimiter::new(start, 9);
        let mut answered_total = 0;
        for host in 1..=100u16 {
            let source = IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, host]);
            answered_total += u32::from(limiter.admit(start, source, 10));
        }
        assert_eq!(answered_total, 10);
    }

    #[test]
    fn rate_zero_is_no_limit() {
        let start = Instant::now();
        let mut limiter = SourceLimiter::new(start, 1);
        let source = ip("192.0.2.1");
        assert!((0..10_000).all(|_| limiter.admit(start, source, 0)));
    }
}
