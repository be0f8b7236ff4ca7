//! What the admin API reads and does: list allocations, delete one or a user's.

use super::allocation::AllocationInfo;
use super::server::{live, Removal};
use super::{AllocId, Server};
use std::time::Instant;

impl Server {
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Allocations as the admin API shows them.
    pub fn allocations(&self, now: Instant) -> impl Iterator<Item = AllocationInfo> + '_ {
        self.allocations.iter().map(move |(_, a)| a.info(now))
    }

    /// Allocations with the ids the admin API names them by.
    pub fn allocations_with_ids(
        &self,
        now: Instant,
    ) -> impl Iterator<Item = (AllocId, AllocationInfo)> + '_ {
        self.allocations.iter().map(move |(index, a)| {
            let id = AllocId {
                index,
                generation: a.generation,
            };
            (id, a.info(now))
        })
    }

    /// Deletes one allocation; false if it no longer exists.
    pub fn delete_allocation(&mut self, alloc: AllocId) -> bool {
        if live(&mut self.allocations, alloc).is_none() {
            return false;
        }
        self.remove_allocation(alloc.index, Removal::Deleted);
        true
    }

    /// Deletes every allocation of `username`; returns how many.
    pub fn delete_user(&mut self, username: &str) -> usize {
        let doomed: Vec<usize> = self
            .allocations
            .iter()
            .filter(|(_, a)| &*a.username == username)
            .map(|(i, _)| i)
            .collect();
        for &index in &doomed {
            self.remove_allocation(index, Removal::Deleted);
        }
        doomed.len()
    }
}
