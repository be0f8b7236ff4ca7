//! Allocation quotas shared by all workers. Touched only on Allocate and on allocation end,
//! never per packet.

/// Why an allocation was refused by quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("user quota reached")]
    User,
    #[error("total quota reached")]
    Total,
}

/// Counts of live allocations, in total and per user id.
#[derive(Debug, Default)]
pub struct Quotas {}

impl Quotas {
    pub fn new() -> Self {
        todo!("policy helper")
    }
    /// Takes one slot for `user`; a limit of 0 means unlimited.
    pub fn try_acquire(&self, user: &str, user_quota: u32, total_quota: u32) -> Result<(), QuotaError> {
        let _ = (user, user_quota, total_quota);
        todo!("policy helper")
    }
    /// Gives back a slot taken by `try_acquire`.
    pub fn release(&self, user: &str) {
        let _ = user;
        todo!("policy helper")
    }
    pub fn total(&self) -> usize {
        todo!("policy helper")
    }
    pub fn of_user(&self, user: &str) -> usize {
        let _ = user;
        todo!("policy helper")
    }
}
