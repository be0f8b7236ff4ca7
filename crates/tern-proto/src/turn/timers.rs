//! One timer queue per server: each allocation is filed under its earliest deadline. Entries are
//! never removed early; a stale entry (the allocation moved its deadline or is gone) is skipped
//! when it comes up, so refreshing costs one push and nothing else. So that stale entries cannot
//! pile up (allocations made and deleted long before their deadline), the owner rebuilds the
//! queue from its live allocations once stale entries outnumber them (`Server::schedule`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, usize, u32)>>,
}

impl TimerQueue {
    pub fn schedule(&mut self, at: Instant, index: usize, generation: u32) {
        self.heap.push(Reverse((at, index, generation)));
    }

    /// Entries filed, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Replaces every entry by `live` (one per live allocation), giving back the memory the
    /// stale ones held.
    pub fn rebuild(&mut self, live: impl Iterator<Item = (Instant, usize, u32)>) {
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        entries.clear();
        entries.extend(live.map(Reverse));
        entries.shrink_to(2 * entries.len() + 64);
        self.heap = BinaryHeap::from(entries);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pops the next entry due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}
