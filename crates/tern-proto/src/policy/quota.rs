//! Allocation quotas shared by all workers. Touched only on Allocate and on allocation end,
//! never per packet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Why an allocation was refused by quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("user quota reached")]
    User,
    #[error("total quota reached")]
    Total,
}

/// Counts of live allocations, in total and per user id.
///
/// Both counts change only under the `per_user` lock, so a check and its increment are atomic
/// with respect to other callers; `total` is atomic only so it can be read without the lock.
#[derive(Debug, Default)]
pub struct Quotas {
    total: AtomicUsize,
    /// Users with at least one live allocation; entries are removed at 0 so the map stays bounded
    /// by the number of live allocations.
    per_user: Mutex<HashMap<String, u32>>,
}

impl Quotas {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one slot for `user`; a limit of 0 means unlimited. When both limits are reached the
    /// user limit is reported, as it is the one the client can do something about.
    pub fn try_acquire(
        &self,
        user: &str,
        user_quota: u32,
        total_quota: u32,
    ) -> Result<(), QuotaError> {
        let mut per_user = self.lock();
        let held = per_user.get(user).copied().unwrap_or(0);
        if (user_quota != 0 && held >= user_quota) || held == u32::MAX {
            return Err(QuotaError::User);
        }
        // Only written under the lock, so a relaxed load sees the latest value.
        let total = self.total.load(Ordering::Relaxed);
        if total_quota != 0 && total >= total_quota as usize {
            return Err(QuotaError::Total);
        }
        match per_user.get_mut(user) {
            Some(count) => *count += 1,
            // Allocates the key only for a user's first live allocation.
            None => {
                per_user.insert(user.to_string(), 1);
            }
        }
        self.total.store(total + 1, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back a slot taken by `try_acquire`. Releasing for a user with no live allocation is
    /// a no-op, so a double release cannot underflow either count.
    pub fn release(&self, user: &str) {
        let mut per_user = self.lock();
        let Some(count) = per_user.get_mut(user) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            per_user.remove(user);
        }
        let total = self.total.load(Ordering::Relaxed);
        self.total.store(total.saturating_sub(1), Ordering::Relaxed);
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn of_user(&self, user: &str) -> usize {
        self.lock().get(user).map_or(0, |&count| count as usize)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        // Every critical section leaves the map consistent before anything that could panic, so
        // a poisoned lock still guards valid counts; refusing service over it would not help.
        self.per_user
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

    #[test]
    fn starts_empty() {
        let q = Quotas::new();
        assert_eq!(q.total(), 0);
        assert_eq!(q.of_user("alice"), 0);
    }

    #[test]
    fn user_quota_is_enforced_per_user() {
        let q = Quotas::new();
        assert_eq!(q.try_acquire("alice", 2, 0), Ok(()));
        assert_eq!(q.try_acquire("alice", 2, 0), Ok(()));
        assert_eq!(q.try_acquire("alice", 2, 0), Err(QuotaError::User));
        assert_eq!(q.of_user("alice"), 2);
        // Another user has their own budget.
        assert_eq!(q.try_acquire("bob", 2, 0), Ok(()));
        assert_eq!(q.of_user("bob"), 1);
        assert_eq!(q.total(), 3);
        // A refusal changes nothing.
        assert_eq!(q.try_acquire("alice", 2, 0), Err(QuotaError::User));
        assert_eq!(q.total(), 3);
    }

    #[test]
    fn total_quota_is_enforced_across_users() {
        let q = Quotas::new();
        assert_eq!(q.try_acquire("a", 0, 3), Ok(()));
        assert_eq!(q.try_acquire("b", 0, 3), Ok(()));
        assert_eq!(q.try_acquire("c", 0, 3), Ok(()));
        assert_eq!(q.try_acquire("d", 0, 3), Err(QuotaError::Total));
        assert_eq!(q.of_user("d"), 0);
        assert_eq!(q.total(), 3);
    }

    #[test]
    fn user_limit_is_reported_when_both_are_reached() {
        let q = Quotas::new();
        q.try_acquire("a", 1, 1).unwrap();
        assert_eq!(q.try_acquire("a", 1, 1), Err(QuotaError::User));
        assert_eq!(q.try_acquire("b", 1, 1), Err(QuotaError::Total));
    }

    #[test]
    fn zero_means_unlimited() {
        let q = Quotas::new();
        for _ in 0..10_000 {
            q.try_acquire("alice", 0, 0).unwrap();
        }
        assert_eq!(q.of_user("alice"), 10_000);
        assert_eq!(q.total(), 10_000);
    }

    #[test]
    fn release_frees_a_slot_and_forgets_idle_users() {
        let q = Quotas::new();
        q.try_acquire("alice", 1, 2).unwrap();
        q.try_acquire("bob", 1, 2).unwrap();
        assert_eq!(q.try_acquire("alice", 1, 2), Err(QuotaError::User));
        assert_eq!(q.try_acquire("carol", 1, 2), Err(QuotaError::Total));
        q.release("alice");
        assert_eq!(q.of_user("alice"), 0);
        assert_eq!(q.total(), 1);
        assert!(
            !q.lock().contains_key("alice"),
            "idle users must not stay in the map"
        );
        assert_eq!(q.try_acquire("carol", 1, 2), Ok(()));
        assert_eq!(q.try_acquire("alice", 1, 2), Err(QuotaError::Total));
        q.release("bob");
        q.release("carol");
        assert_eq!(q.total(), 0);
        assert!(q.lock().is_empty());
    }

    #[test]
    fn releasing_an_unknown_user_does_not_underflow() {
        let q = Quotas::new();
        q.release("ghost");
        assert_eq!(q.total(), 0);
        q.try_acquire("alice", 0, 0).unwrap();
        q.release("ghost");
        q.release("alice");
        q.release("alice");
        assert_eq!(q.total(), 0);
        assert_eq!(q.of_user("alice"), 0);
        assert_eq!(q.of_user("ghost"), 0);
        assert!(q.lock().is_empty());
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
                        if q.try_acquire(&user, user_quota, total_quota).is_ok() {
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
                        if q.try_acquire(&user, 4, 10).is_ok() {
                            assert!(q.total() <= 10);
                            q.release(&user);
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(q.total(), 0);
        assert!(q.lock().is_empty());
    }
}
