//! Rate limiting the log lines a client can provoke (authentication failures, refused peers,
//! refusals by a limit): at most [`LINES_PER_SECOND`] of each kind per second per server. The
//! next line that passes carries how many were left out (`suppressed = n`), and
//! `tern_log_lines_suppressed_total` counts them all.

use super::metrics::LogKind;
use super::Server;
use crate::metrics::LabelSet;
use std::time::{Duration, Instant};

/// Lines of one kind a server writes per second, at most.
pub const LINES_PER_SECOND: u32 = 10;

/// One kind's budget: a one-second window and what it let through.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LogGate {
    window: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl LogGate {
    /// `Some(n)` if a line may be written at `now`, `n` being how many were left out since the
    /// last one written; `None` if this one is left out.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let open = self
            .window
            .is_some_and(|start| now.saturating_duration_since(start) < Duration::from_secs(1));
        if !open {
            self.window = Some(now);
            self.written = 0;
        }
        if self.written >= LINES_PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.written += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Server {
    /// Whether a `kind` line may be logged now: `Some(suppressed since the last one)`, or
    /// `None` (counted as suppressed).
    pub(super) fn log_gate(&mut self, kind: LogKind) -> Option<u64> {
        let admitted = self.log_gates[kind.index()].admit(self.now);
        if admitted.is_none() {
            self.counters.log_lines_suppressed[kind.index()] += 1;
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_a_second_and_the_next_says_how_many_were_left_out() {
        let start = Instant::now();
        let mut gate = LogGate::default();
        let results: Vec<_> = (0..1000).map(|_| gate.admit(start)).collect();
        assert_eq!(results.iter().filter(|r| r.is_some()).count(), 10);
        assert!(results[..10].iter().all(|r| *r == Some(0)));
        let later = start + Duration::from_secs(1);
        assert_eq!(gate.admit(later), Some(990));
        assert_eq!(gate.admit(later), Some(0));
    }
}
