//! A server's part of `bps-capacity`: buckets of its own at an even share of it (a UDP worker,
//! with no bucket across cores), or batches drawn from a pool that many servers share (the
//! TCP/TLS connections, a server each: a share per connection would be wrong, and a bucket
//! touched per frame by every connection a shared cache line per packet).

use crate::policy::bandwidth::{self, CapacityPool};
use crate::policy::ByteBucket;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(super) enum Capacity {
    /// `1/share` of the capacity in buckets of its own, by direction; share 0: the capacity
    /// does not apply to this server.
    Share {
        share: u32,
        buckets: [ByteBucket; 2],
    },
    /// What this server drew from the pool and has not spent yet, by direction. A frame passes
    /// on it without touching the pool; when it runs short, the next batch is drawn.
    Pooled {
        pool: Arc<CapacityPool>,
        held: [u64; 2],
    },
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity::Share {
            share: 0,
            buckets: Default::default(),
        }
    }
}

impl Capacity {
    pub fn share(share: u32) -> Self {
        Capacity::Share {
            share,
            buckets: Default::default(),
        }
    }

    pub fn pooled(pool: Arc<CapacityPool>) -> Self {
        Capacity::Pooled { pool, held: [0; 2] }
    }

    /// This server's rate in bytes per second under a `bps-capacity` of `capacity`; 0 = no limit.
    pub fn rate(&self, capacity: u64) -> u64 {
        match self {
            Capacity::Share { share, .. } => match (capacity, *share) {
                (0, _) | (_, 0) => 0,
                (capacity, share) => (capacity / u64::from(share)).max(1),
            },
            Capacity::Pooled { pool, .. } => pool.rate(capacity),
        }
    }

    /// Whether `bytes` may pass `direction` at `now` (drawing a batch from the pool if it must).
    pub fn has(&mut self, now: Instant, capacity: u64, direction: usize, bytes: usize) -> bool {
        let rate = self.rate(capacity);
        match self {
            Capacity::Share { buckets, .. } => buckets[direction].has(now, rate, bytes),
            Capacity::Pooled { .. } => self.delay(now, capacity, direction, bytes).is_zero(),
        }
    }

    /// Takes `bytes` after [`Capacity::has`] or [`Capacity::delay`] said they may pass.
    pub fn take(&mut self, capacity: u64, direction: usize, bytes: usize) {
        let rate = self.rate(capacity);
        match self {
            Capacity::Share { buckets, .. } => buckets[direction].take(rate, bytes),
            Capacity::Pooled { held, .. } if rate != 0 => {
                held[direction] = held[direction].saturating_sub(bytes as u64);
            }
            Capacity::Pooled { .. } => {}
        }
    }

    /// How long from `now` until `bytes` may pass `direction`. A pooled server that holds too
    /// little draws what it lacks and a batch more, if the pool has it.
    pub fn delay(
        &mut self,
        now: Instant,
        capacity: u64,
        direction: usize,
        bytes: usize,
    ) -> Duration {
        let rate = self.rate(capacity);
        match self {
            Capacity::Share { buckets, .. } => buckets[direction].delay(now, rate, bytes),
            Capacity::Pooled { .. } if rate == 0 => Duration::ZERO,
            Capacity::Pooled { pool, held } => {
                let held = &mut held[direction];
                let Some(need) = (bytes as u64).checked_sub(*held).filter(|&n| n > 0) else {
                    return Duration::ZERO;
                };
                let want = need.max(bandwidth::batch(rate));
                match pool.draw(now, rate, direction, need, want) {
                    Ok(drawn) => {
                        *held += drawn;
                        Duration::ZERO
                    }
                    Err(delay) => delay,
                }
            }
        }
    }
}
