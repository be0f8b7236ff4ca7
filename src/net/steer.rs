//! A UDP worker's side of the kernel's steering (`tern_steer`, `udp-worker-budget`): it pins
//! the clients of its allocations to itself, unpins them when the allocations end, and
//! publishes how busy it is so that new clients go to another worker when it is over the budget.
//! Nothing here runs per packet but a counter.

use crate::turn::{AllocId, FiveTuple};
use std::sync::Arc;
use std::time::Duration;
use tern_steer::Steering;
use tracing::{debug, warn};

/// The clients this worker has pinned to itself (its allocations' 5-tuples), by allocation
/// index, so that each is unpinned when its allocation ends.
pub(super) struct Pins {
    steering: Option<Arc<Steering>>,
    worker: usize,
    by_alloc: Vec<Option<(u32, FiveTuple)>>,
}

impl Pins {
    pub fn new(worker: usize) -> Pins {
        Pins {
            steering: None,
            worker,
            by_alloc: Vec::new(),
        }
    }

    pub fn set_steering(&mut self, steering: Arc<Steering>) {
        self.steering = Some(steering);
    }

    pub fn steering(&self) -> Option<&Steering> {
        self.steering.as_deref()
    }

    /// Steers `tuple` to this worker from now on. Called before the Allocate's answer leaves,
    /// so every later datagram of the client finds the pin.
    pub fn pin(&mut self, alloc: AllocId, tuple: FiveTuple) {
        let Some(steering) = &self.steering else {
            return;
        };
        if let Err(error) = steering.pin(tuple.client, tuple.server, self.worker) {
            warn!(worker = self.worker, client = %tuple.client, %error, "could not pin a client to its worker");
            return;
        }
        debug!(worker = self.worker, client = %tuple.client, "client pinned to its worker");
        if self.by_alloc.len() <= alloc.index {
            self.by_alloc.resize(alloc.index + 1, None);
        }
        self.by_alloc[alloc.index] = Some((alloc.generation, tuple));
    }

    /// The allocation ended: its client is a new one again.
    pub fn unpin(&mut self, alloc: AllocId) {
        let (Some(steering), Some(slot)) = (&self.steering, self.by_alloc.get_mut(alloc.index))
        else {
            return;
        };
        if let Some((_, tuple)) = slot.take_if(|(generation, _)| *generation == alloc.generation) {
            steering.unpin(tuple.client, tuple.server);
        }
    }
}

/// Datagrams a worker read since it last published its load.
#[derive(Default)]
pub(super) struct LoadMeter {
    datagrams: u64,
}

impl LoadMeter {
    pub fn add(&mut self, datagrams: usize) {
        self.datagrams += datagrams as u64;
    }

    /// Tells the steering how many datagrams per second the worker read over `elapsed`.
    pub fn publish(&mut self, steering: Option<&Steering>, worker: usize, elapsed: Duration) {
        let datagrams = std::mem::take(&mut self.datagrams);
        let Some(steering) = steering else {
            return;
        };
        let per_second = u128::from(datagrams) * 1_000_000 / elapsed.as_micros().max(1);
        let per_second = u64::try_from(per_second).unwrap_or(u64::MAX);
        if let Err(error) = steering.publish_load(worker, per_second) {
            debug!(worker, %error, "could not publish the load");
        }
    }
}
