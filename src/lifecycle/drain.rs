//! The graceful stop's bookkeeping, without I/O: given the live allocation count now and then,
//! when to report progress and when the drain is over. The caller ([`super::run`]) owns the
//! signals, the clock and the log.

use std::time::{Duration, Instant};

/// Progress is reported at most this often (and only when the count moved).
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The last allocation ended.
    Drained,
    /// `drain-timeout` passed with allocations still live.
    TimedOut { left: usize },
}

/// What to do after looking at the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Wait,
    Report { live: usize, left: Duration },
    Done(End),
}

pub struct Drain {
    deadline: Instant,
    last_report: Instant,
    reported: usize,
}

impl Drain {
    /// A drain started at `now` with `live` allocations, for at most `timeout`.
    pub fn new(now: Instant, timeout: Duration, live: usize) -> Drain {
        Drain {
            deadline: now + timeout,
            last_report: now,
            reported: live,
        }
    }

    pub fn step(&mut self, now: Instant, live: usize) -> Step {
        if live == 0 {
            return Step::Done(End::Drained);
        }
        if now >= self.deadline {
            return Step::Done(End::TimedOut { left: live });
        }
        if live != self.reported && now.duration_since(self.last_report) >= REPORT_EVERY {
            self.last_report = now;
            self.reported = live;
            return Step::Report {
                live,
                left: self.deadline - now,
            };
        }
        Step::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_when_the_last_allocation_ends() {
        let start = Instant::now();
        let mut drain = Drain::new(start, Duration::from_secs(60), 3);
        assert_eq!(drain.step(start + Duration::from_secs(1), 3), Step::Wait);
        assert_eq!(
            drain.step(start + Duration::from_secs(2), 0),
            Step::Done(End::Drained)
        );
    }

    #[test]
    fn ends_at_the_timeout_with_what_is_left() {
        let start = Instant::now();
        let mut drain = Drain::new(start, Duration::from_secs(10), 2);
        assert_eq!(
            drain.step(start + Duration::from_secs(10), 2),
            Step::Done(End::TimedOut { left: 2 })
        );
    }

    #[test]
    fn reports_changes_at_most_every_five_seconds() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut drain = Drain::new(start, Duration::from_secs(60), 10);
        assert_eq!(drain.step(at(1), 9), Step::Wait, "too soon");
        assert_eq!(
            drain.step(at(5), 8),
            Step::Report {
                live: 8,
                left: Duration::from_secs(55)
            }
        );
        assert_eq!(drain.step(at(7), 7), Step::Wait, "too soon again");
        assert_eq!(
            drain.step(at(11), 8),
            Step::Wait,
            "no change since the report"
        );
        assert!(matches!(
            drain.step(at(12), 6),
            Step::Report { live: 6, .. }
        ));
    }

    #[test]
    fn nothing_live_at_the_start_ends_at_once() {
        let start = Instant::now();
        let mut drain = Drain::new(start, Duration::from_secs(60), 0);
        assert_eq!(drain.step(start, 0), Step::Done(End::Drained));
    }
}
