//! Asking the workers things from outside the packet path (the admin API, reloads): a message on
//! the worker's control channel, a wake-up, and a reply on a one-shot channel, waited for with a
//! deadline so a stuck worker cannot hang the caller.

use super::udp_worker::Control;
use crate::turn::{AllocId, AllocationInfo};
use mio::Waker;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One allocation as the admin API lists it.
#[derive(Clone, Debug)]
pub struct AllocationEntry {
    pub worker: usize,
    pub id: AllocId,
    pub info: AllocationInfo,
}

impl AllocationEntry {
    /// `"<worker>-<slot>-<generation>"`: stable for the allocation's life, never reused in a process
    /// (the generation counter of a worker only grows).
    pub fn id_string(&self) -> String {
        format!("{}-{}-{}", self.worker, self.id.index, self.id.generation)
    }
}

/// Parses an id made by [`AllocationEntry::id_string`].
pub fn parse_allocation_id(text: &str) -> Option<(usize, AllocId)> {
    let mut parts = text.splitn(3, '-');
    let worker = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    Some((worker, AllocId { index, generation }))
}

/// A cloneable handle on every worker's control channel. Calls block up to `timeout`; call them
/// from a blocking context (e.g. `tokio::task::spawn_blocking`).
#[derive(Clone, Default)]
pub struct WorkerControl {
    pub(super) workers: Vec<(Sender<Control>, Arc<Waker>)>,
}

impl WorkerControl {
    fn ask<T>(
        &self,
        worker: usize,
        make: impl FnOnce(Sender<T>) -> Control,
    ) -> Option<Receiver<T>> {
        let (control, waker) = self.workers.get(worker)?;
        let (reply, receiver) = mpsc::channel();
        control.send(make(reply)).ok()?;
        let _ = waker.wake();
        Some(receiver)
    }

    fn ask_all<T>(&self, make: impl Fn(Sender<T>) -> Control) -> Vec<Receiver<T>> {
        (0..self.workers.len())
            .filter_map(|worker| self.ask(worker, &make))
            .collect()
    }

    /// Every worker's allocations; a worker that does not answer in time is left out.
    pub fn list_allocations(&self, timeout: Duration) -> Vec<AllocationEntry> {
        let deadline = Instant::now() + timeout;
        let receivers: Vec<_> = (0..self.workers.len())
            .filter_map(|worker| Some((worker, self.ask(worker, Control::ListAllocations)?)))
            .collect();
        let mut entries = Vec::new();
        for (worker, receiver) in receivers {
            if let Some(list) = receive(&receiver, deadline) {
                entries.extend(list.into_iter().map(|(id, info)| AllocationEntry {
                    worker,
                    id,
                    info,
                }));
            }
        }
        entries
    }

    /// Deletes every allocation of `username` on every worker; returns how many.
    pub fn delete_user(&self, username: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let receivers = self.ask_all(|reply| Control::DeleteUser(username.to_string(), reply));
        receivers
            .iter()
            .filter_map(|receiver| receive(receiver, deadline))
            .sum()
    }

    /// Deletes one allocation; `None` if the worker does not exist or did not answer.
    pub fn delete_allocation(&self, worker: usize, id: AllocId, timeout: Duration) -> Option<bool> {
        let receiver = self.ask(worker, |reply| Control::DeleteAllocation(id, reply))?;
        receive(&receiver, Instant::now() + timeout)
    }

    /// Waits until every worker has handled the control messages sent before this call (e.g. a
    /// reload); false if one did not answer in time.
    pub fn sync(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let receivers = self.ask_all(Control::Sync);
        receivers.len() == self.workers.len()
            && receivers
                .iter()
                .all(|receiver| receive(receiver, deadline).is_some())
    }
}

fn receive<T>(receiver: &Receiver<T>, deadline: Instant) -> Option<T> {
    receiver
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .ok()
}
