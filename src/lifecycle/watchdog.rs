//! The systemd watchdog (`WatchdogSec=`): WATCHDOG=1 every half `WATCHDOG_USEC`, sent from the
//! tokio runtime (so it proves the connection tasks are scheduled) and only while every UDP
//! worker's heartbeat moves (each ticks it from its poll loop about every 500 ms, busy or idle).
//! A stuck worker stops the pings, and systemd restarts tern.

use super::notify;
use crate::net::WorkerStats;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

/// A worker whose heartbeat has not moved for this long is stuck (it ticks every ~500 ms), or
/// for the watchdog period itself when that is longer.
const STALE_AFTER: Duration = Duration::from_secs(2);

/// Starts the pings when systemd asked for them (`WATCHDOG_USEC`, for this process).
pub fn spawn(workers: Vec<Arc<WorkerStats>>) -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    let every = (period / 2).max(Duration::from_millis(1));
    Some(tokio::spawn(async move {
        let mut liveness = Liveness::new(workers.len(), Instant::now(), STALE_AFTER.max(period));
        let mut tick = tokio::time::interval(every);
        let mut reported = false;
        loop {
            tick.tick().await;
            let beats = workers.iter().map(|worker| worker.heartbeat());
            match liveness.stuck(Instant::now(), beats) {
                None => {
                    notify::watchdog();
                    reported = false;
                }
                Some(worker) if !reported => {
                    reported = true;
                    warn!(
                        worker,
                        "relay worker is not running: no longer pinging the systemd watchdog"
                    );
                }
                Some(_) => {}
            }
        }
    }))
}

/// When each worker's heartbeat last moved.
struct Liveness {
    seen: Vec<(u64, Instant)>,
    stale_after: Duration,
}

impl Liveness {
    fn new(workers: usize, now: Instant, stale_after: Duration) -> Liveness {
        Liveness {
            seen: vec![(0, now); workers],
            stale_after,
        }
    }

    /// A worker whose heartbeat has not moved for `stale_after`, if any.
    fn stuck(&mut self, now: Instant, beats: impl Iterator<Item = u64>) -> Option<usize> {
        let mut stuck = None;
        for (index, (beat, seen)) in beats.zip(&mut self.seen).enumerate() {
            if beat != seen.0 {
                *seen = (beat, now);
            } else if now.duration_since(seen.1) >= self.stale_after && stuck.is_none() {
                stuck = Some(index);
            }
        }
        stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_whose_heartbeat_stops_is_stuck_after_the_stale_time() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut liveness = Liveness::new(2, start, Duration::from_secs(2));
        assert_eq!(liveness.stuck(at(500), [1, 1].into_iter()), None);
        assert_eq!(liveness.stuck(at(1000), [2, 2].into_iter()), None);
        // Worker 1 stops at 1 s; it is stuck once 2 s have passed without a tick.
        assert_eq!(liveness.stuck(at(2500), [5, 2].into_iter()), None);
        assert_eq!(liveness.stuck(at(3000), [6, 2].into_iter()), Some(1));
        // It ticks again: alive.
        assert_eq!(liveness.stuck(at(3100), [7, 3].into_iter()), None);
    }

    #[test]
    fn no_workers_is_alive() {
        let mut liveness = Liveness::new(0, Instant::now(), Duration::from_secs(2));
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(liveness.stuck(later, std::iter::empty()), None);
    }
}
