//! Small pieces every I/O module uses: the lock that shrugs off poisoning, wall-clock seconds,
//! and the size of a reply buffer.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Responses are small; 4 KiB is plenty for any the server writes.
pub(super) const REPLY_BUFFER: usize = 4096;

/// Locks `mutex`, poisoned or not. Every mutex of the I/O layer guards plain data (free port
/// lists, counters, maps of handles) that a panicking holder cannot leave half-valid in a way
/// that matters more than stopping the server would.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seconds since the Unix epoch (0 if the clock is before it): what `turn::Server` anchors REST
/// expiry and nonces to.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
