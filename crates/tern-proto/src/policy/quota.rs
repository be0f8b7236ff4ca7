//! Allocation quotas shared by all workers: per user, per client address and in total. Touched
//! only on Allocate and on allocation end, never per packet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Why an allocation was refused by quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("user quota reached")]
    User,
    #[error("allocations per client address reached")]
    Address,
    #[error("total quota reached")]
    Total,
}

/// The limits an Allocate is admitted under; 0 means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    /// `user-quota`: live allocations per user id.
    pub per_user: u32,
    /// `max-allocations-per-ip`: live allocations per client address (IPv6 by /64).
    pub per_address: u32,
    /// `total-quota`: live allocations in total.
    pub total: u32,
}

/// Counts of live allocations, in total, per user id and per client address.
///
/// All counts change only under the lock, so a check and its increment are atomic with respect
/// to other callers; `total` is atomic only so it can be read without the lock.
#[derive(Debug, Default)]
pub struct Quotas {
    total: AtomicUsize,
    held: Mutex<Held>,
}

/// Users and addresses with at least one live allocation; entries are removed at 0, so the maps
/// stay bounded by the number of live allocations.
#[derive(Debug, Default)]
struct Held {
    per_user: HashMap<String, u32>,
    per_address: HashMap<IpAddr, u32>,
}

/// What a client address counts as: itself for IPv4, its /64 for IPv6 (one subscriber's prefix,
/// which a single host can draw addresses from at will).
pub fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
    }
}

impl Quotas {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one slot for `user` from `address`. When several limits are reached the user limit
    /// is reported first, then the address one, as those are what a client can do something
    /// about.
    pub fn try_acquire(
        &self,
        user: &str,
        address: IpAddr,
        limits: QuotaLimits,
    ) -> Result<(), QuotaError> {
        let address = address_key(address);
        let mut held = self.lock();
        let by_user = held.per_user.get(user).copied().unwrap_or(0);
        if (limits.per_user != 0 && by_user >= limits.per_user) || by_user == u32::MAX {
            return Err(QuotaError::User);
        }
        let by_address = held.per_address.get(&address).copied().unwrap_or(0);
        if (limits.per_address != 0 && by_address >= limits.per_address) || by_address == u32::MAX {
            return Err(QuotaError::Address);
        }
        // Only written under the lock, so a relaxed load sees the latest value.
        let total = self.total.load(Ordering::Relaxed);
        if limits.total != 0 && total >= limits.total as usize {
            return Err(QuotaError::Total);
        }
        match held.per_user.get_mut(user) {
            Some(count) => *count += 1,
            // Allocates the key only for a user's first live allocation.
            None => {
                held.per_user.insert(user.to_string(), 1);
            }
        }
        *held.per_address.entry(address).or_insert(0) += 1;
        self.total.store(total + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back a slot taken by `try_acquire`. Releasing for a user with no live allocation is
    /// a no-op, so a double release cannot underflow any count.
    pub fn release(&self, user: &str, address: IpAddr) {
        let address = address_key(address);
        let mut held = self.lock();
        let Some(count) = held.per_user.get_mut(user) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            held.per_user.remove(user);
        }
        if let Some(count) = held.per_address.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                held.per_address.remove(&address);
            }
        }
        let total = self.total.load(Ordering::Relaxed);
        self.total.store(total.saturating_sub(1), Ordering::Relaxed);
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn of_user(&self, user: &str) -> usize {
        self.lock()
            .per_user
            .get(user)
            .map_or(0, |&count| count as usize)
    }

    pub fn of_address(&self, address: IpAddr) -> usize {
        self.lock()
            .per_address
            .get(&address_key(address))
            .map_or(0, |&count| count as usize)
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Every critical section leaves the maps consistent before anything that could panic, so
        // a poisoned lock still guards valid counts; refusing service over it would not help.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    use std::thread;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn limits(per_user: u32, total: u32) -> QuotaLimits {
        QuotaLimits {
            per_user,
            per_address: 0,
            total,
        }
    }

    #[test]
    fn starts_empty() {
        let q = Quotas::new();
        assert_eq!(q.total(), 0);
        assert_eq!(q.of_user("alice"), 0);
    }

    #[test]
    fn user_quota_is_enforced_per_user() {
        let q = Quotas::new();
        assert_eq!(q.try_acquire("alice", HOME, limits(2, 0)), Ok(()));
        assert_eq!(q.try_acquire("alice", HOME, limits(2, 0)), Ok(()));
        assert_eq!(
            q.try_acquire("alice", HOME, limits(2, 0)),
            Err(QuotaError::User)
        );
        assert_eq!(q.of_user("alice"), 2);
        // Another user has their own budget.
        assert_eq!(q.try_acquire("bob", HOME, limits(2, 0)), Ok(()));
        assert_eq!(q.of_user("bob"), 1);
        assert_eq!(q.total(), 3);
        // A refusal changes nothing.
        assert_eq!(
            q.try_acquire("alice", HOME, limits(2, 0)),
            Err(QuotaError::User)
        );
        assert_eq!(q.total(), 3);
    }

    #[test]
    fn total_quota_is_enforced_across_users() {
        let q = Quotas::new();
        assert_eq!(q.try_acquire("a", HOME, limits(0, 3)), Ok(()));
        assert_eq!(q.try_acquire("b", HOME, limits(0, 3)), Ok(()));
        assert_eq!(q.try_acquire("c", HOME, limits(0, 3)), Ok(()));
        assert_eq!(
            q.try_acquire("d", HOME, limits(0, 3)),
            Err(QuotaError::Total)
        );
        assert_eq!(q.of_user("d"), 0);
        assert_eq!(q.total(), 3);
    }

    #[test]
    fn user_limit_is_reported_when_both_are_reached() {
        let q = Quotas::new();
        q.try_acquire("a", HOME, limits(1, 1)).unwrap();
        assert_eq!(
            q.try_acquire("a", HOME, limits(1, 1)),
            Err(QuotaError::User)
        );
        assert_eq!(
            q.try_acquire("b", HOME, limits(1, 1)),
            Err(QuotaError::Total)
        );
    }

    #[test]
    fn zero_means_unlimited() {
        let q = Quotas::new();
        for _ in 0..10_000 {
            q.try_acquire("alice", HOME, limits(0, 0)).unwrap();
        }
        assert_eq!(q.of_user("alice"), 10_000);
        assert_eq!(q.total(), 10_000);
    }

    #[test]
    fn release_frees_a_slot_and_forgets_idle_users() {
        let q = Quotas::new();
        q.try_acquire("alice", HOME, limits(1, 2)).unwrap();
        q.try_acquire("bob", HOME, limits(1, 2)).unwrap();
        assert_eq!(
            q.try_acquire("alice", HOME, limits(1, 2)),
            Err(QuotaError::User)
        );
        assert_eq!(
            q.try_acquire("carol", HOME, limits(1, 2)),
            Err(QuotaError::Total)
        );
        q.release("alice", HOME);
        assert_eq!(q.of_user("alice"), 0);
        assert_eq!(q.total(), 1);
        assert!(
            !q.lock().per_user.contains_key("alice"),
            "idle users must not stay in the map"
        );
        assert_eq!(q.try_acquire("carol", HOME, limits(1, 2)), Ok(()));
        assert_eq!(
            q.try_acquire("alice", HOME, limits(1, 2)),
            Err(QuotaError::Total)
        );
        q.release("bob", HOME);
        q.release("carol", HOME);
        assert_eq!(q.total(), 0);
        assert!(q.lock().per_user.is_empty() && q.lock().per_address.is_empty());
    }

    #[test]
    fn releasing_an_unknown_user_does_not_underflow() {
        let q = Quotas::new();
        q.release("ghost", HOME);
        assert_eq!(q.total(), 0);
        q.try_acquire("alice", HOME, limits(0, 0)).unwrap();
        q.release("ghost", HOME);
        q.release("alice", HOME);
        q.release("alice", HOME);
        assert_eq!(q.total(), 0);
        assert_eq!(q.of_user("alice"), 0);
        assert_eq!(q.of_user("ghost"), 0);
        assert!(q.lock().per_user.is_empty() && q.lock().per_address.is_empty());
    }

    /// Runs `threads` threads each making `attempts` acquisitions (user chosen by `user_of`),
    /// checking after every success that no limit is exceeded; returns the number of successes.
    fn hammer(
        q: &Arc<Quotas>,
        threads: usize,
        attempts: usize,
        user_of: fn(usize) -> String,
        user_quota: u32,
        total_quota: u32,
    ) -> u32 {
        let granted = Arc::new(AtomicU32::new(0));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (q, granted) = (Arc::clone(q), Arc::clone(&granted));
                let user = user_of(t);
                thread::spawn(move || {
                    for _ in 0..attempts {
                        if q.try_acquire(&user, HOME, limits(user_quota, total_quota))
                            .is_ok()
                        {
                            granted.fetch_add(1, Ordering::Relaxed);
                            if total_quota != 0 {
                                assert!(q.total() <= total_quota as usize);
                            }
                            if user_quota != 0 {
                                assert!(q.of_user(&user) <= user_quota as usize);
                            }
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        granted.load(Ordering::Relaxed)
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_user_quota() {
        let q = Arc::new(Quotas::new());
        let granted = hammer(&q, 8, 200, |_| "shared".to_string(), 50, 0);
        assert_eq!(granted, 50);
        assert_eq!(q.of_user("shared"), 50);
        assert_eq!(q.total(), 50);
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_total_quota() {
        let q = Arc::new(Quotas::new());
        let granted = hammer(&q, 8, 200, |t| format!("user{t}"), 0, 37);
        assert_eq!(granted, 37);
        assert_eq!(q.total(), 37);
        let per_user_sum: usize = (0..8).map(|t| q.of_user(&format!("user{t}"))).sum();
        assert_eq!(per_user_sum, 37);
    }

    #[test]
    fn concurrent_acquire_and_release_keeps_counts_exact() {
        let q = Arc::new(Quotas::new());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let q = Arc::clone(&q);
                thread::spawn(move || {
                    let user = format!("user{}", t % 3);
                    for _ in 0..1_000 {
                        if q.try_acquire(&user, HOME, limits(4, 10)).is_ok() {
                            assert!(q.total() <= 10);
                            q.release(&user, HOME);
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(q.total(), 0);
        assert!(q.lock().per_user.is_empty() && q.lock().per_address.is_empty());
    }

    #[test]
    fn per_address_limit_counts_ipv4_addresses_and_ipv6_prefixes() {
        let q = Quotas::new();
        let per_address = QuotaLimits {
            per_user: 0,
            per_address: 2,
            total: 0,
        };
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(q.try_acquire("a", v4, per_address), Ok(()));
        assert_eq!(q.try_acquire("b", v4, per_address), Ok(()));
        assert_eq!(
            q.try_acquire("c", v4, per_address),
            Err(QuotaError::Address)
        );
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        assert_eq!(q.try_acquire("c", other, per_address), Ok(()));
        // Two addresses of one /64 are one client; another /64 is another.
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_prefix: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let next_prefix: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(q.try_acquire("d", first, per_address), Ok(()));
        assert_eq!(q.try_acquire("e", same_prefix, per_address), Ok(()));
        assert_eq!(
            q.try_acquire("f", first, per_address),
            Err(QuotaError::Address)
        );
        assert_eq!(q.try_acquire("f", next_prefix, per_address), Ok(()));
        assert_eq!(q.of_address(same_prefix), 2);
        q.release("d", first);
        assert_eq!(q.try_acquire("f", same_prefix, per_address), Ok(()));
        // The user limit is reported before the address limit.
        let both = QuotaLimits {
            per_user: 1,
            ..per_address
        };
        assert_eq!(q.try_acquire("a", v4, both), Err(QuotaError::User));
        for (user, address) in [("a", v4), ("b", v4), ("c", other), ("e", same_prefix)] {
            q.release(user, address);
        }
        q.release("f", next_prefix);
        q.release("f", same_prefix);
        assert_eq!(q.total(), 0);
        assert!(q.lock().per_address.is_empty() && q.lock().per_user.is_empty());
    }
}
