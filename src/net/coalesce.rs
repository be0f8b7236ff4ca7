//! Wake-up coalescing for a UDP worker (interrupt moderation for a user-space relay).
//!
//! At steady load datagrams arrive spread out in time, so every wake-up of a worker handles one or
//! two of them and pays a sleep, a wake-up, a receive and a send each. Pausing briefly after a
//! wake-up that handled datagrams lets the next one find several, which `recvmmsg`, `sendmmsg`
//! and GSO then move in fewer system calls. The pause costs latency, so it is only taken where it
//! pays, and never longer than `udp-coalesce-us`:
//!
//! - only while the worker's datagram rate, over the last [`RATE_WINDOW`], makes one pause
//!   collect at least [`MIN_EXPECTED`] datagrams and is at least [`MIN_RATE`]: an idle or lightly
//!   used worker answers at once;
//! - not after a wake-up that already found many datagrams (the worker is busy: polling again
//!   returns at once without sleeping anyway);
//! - not while pauses collect too little ([`MIN_YIELD`] on average): arrivals that wait for
//!   the worker's own answers (one client in a request–response loop) would only be slowed
//!   down; pausing resumes, on trial, after [`BACKOFF`].
//!
//! Sans-IO: the worker passes `now` and what a wake-up handled; tests inject time.

use std::time::{Duration, Instant};

/// The rate decision is remade once per window, from the window just ended.
pub const RATE_WINDOW: Duration = Duration::from_millis(10);
/// Datagrams one pause must be expected to collect (rate × pause) to be worth its own wake-up.
pub const MIN_EXPECTED: u64 = 2;
/// Datagrams per second below which a worker counts as lightly used and never pauses.
pub const MIN_RATE: u64 = 2_000;
/// A wake-up that handled this many datagrams or more is not followed by a pause.
pub const BUSY: usize = 16;
/// Average datagrams found by the wake-up after a pause below which pausing stops.
const MIN_YIELD: u32 = 2;
/// How long pausing stays off after pauses yielded too little.
pub const BACKOFF: Duration = Duration::from_millis(100);
/// Weight of the newest sample in the moving average of pause yields: 1 / 2^YIELD_SHIFT.
const YIELD_SHIFT: u32 = 2;
/// Fixed-point scale of the yield average.
const YIELD_SCALE: u32 = 16;

/// Decides, after each wake-up, whether and how long the worker pauses before polling again.
#[derive(Debug)]
pub struct Coalescer {
    /// The pause; zero turns coalescing off.
    pause: Duration,
    window_start: Instant,
    window_datagrams: u64,
    /// Whether the last window's rate makes pauses pay.
    engaged: bool,
    /// Whether the previous wake-up was followed by a pause (this one measures its yield).
    after_pause: bool,
    /// Moving average of datagrams found after a pause, × [`YIELD_SCALE`].
    yield_average: u32,
    /// No pause before this instant (pauses yielded too little).
    backoff_until: Option<Instant>,
}

impl Coalescer {
    pub fn new(pause: Duration, now: Instant) -> Coalescer {
        Coalescer {
            pause,
            window_start: now,
            window_datagrams: 0,
            engaged: false,
            after_pause: false,
            yield_average: Self::TRIAL_YIELD,
            backoff_until: None,
        }
    }

    /// What a fresh trial assumes pauses yield: enough to keep pausing until measured.
    const TRIAL_YIELD: u32 = (MIN_YIELD + 1) * YIELD_SCALE;

    /// Whether coalescing is configured at all.
    pub fn enabled(&self) -> bool {
        !self.pause.is_zero()
    }

    /// After a wake-up at `now` that handled `datagrams` (all sockets): how long to pause before
    /// polling again, if at all. Never more than the configured pause.
    pub fn after_wake(&mut self, now: Instant, datagrams: usize) -> Option<Duration> {
        if !self.enabled() {
            return None;
        }
        self.count(now, datagrams as u64);
        if std::mem::take(&mut self.after_pause) {
            let sample = u32::try_from(datagrams)
                .unwrap_or(u32::MAX)
                .min(BUSY as u32);
            self.yield_average = self.yield_average - (self.yield_average >> YIELD_SHIFT)
                + ((sample * YIELD_SCALE) >> YIELD_SHIFT);
            if self.yield_average < MIN_YIELD * YIELD_SCALE {
                self.backoff_until = Some(now + BACKOFF);
                self.yield_average = Self::TRIAL_YIELD;
            }
        }
        if let Some(until) = self.backoff_until {
            if now < until {
                return None;
            }
            self.backoff_until = None;
        }
        if !self.engaged || datagrams == 0 || datagrams >= BUSY {
            return None;
        }
        self.after_pause = true;
        Some(self.pause)
    }

    /// Adds a wake-up's datagrams to the rate window; at the window's end, decides from its rate
    /// whether pauses pay during the next one.
    fn count(&mut self, now: Instant, datagrams: u64) {
        self.window_datagrams += datagrams;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < RATE_WINDOW {
            return;
        }
        // rate × pause ≥ MIN_EXPECTED and rate ≥ MIN_RATE, in integers:
        // datagrams / elapsed × pause ≥ MIN_EXPECTED.
        let elapsed_ns = elapsed.as_nanos();
        let collected = u128::from(self.window_datagrams) * self.pause.as_nanos();
        let per_second = u128::from(self.window_datagrams) * 1_000_000_000;
        self.engaged = collected >= u128::from(MIN_EXPECTED) * elapsed_ns
            && per_second >= u128::from(MIN_RATE) * elapsed_ns;
        self.window_start = now;
        self.window_datagrams = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSE: Duration = Duration::from_micros(250);

    /// Drives a coalescer with one wake-up every `gap`, each handling `datagrams`, for `span`;
    /// returns the pauses it asked for.
    fn drive(
        coalescer: &mut Coalescer,
        now: &mut Instant,
        gap: Duration,
        datagrams: usize,
        span: Duration,
    ) -> Vec<Option<Duration>> {
        let end = *now + span;
        let mut pauses = Vec::new();
        while *now < end {
            *now += gap;
            pauses.push(coalescer.after_wake(*now, datagrams));
        }
        pauses
    }

    #[test]
    fn off_when_the_pause_is_zero() {
        let mut now = Instant::now();
        let mut c = Coalescer::new(Duration::ZERO, now);
        let pauses = drive(
            &mut c,
            &mut now,
            Duration::from_micros(20),
            3,
            RATE_WINDOW * 5,
        );
        assert!(pauses.iter().all(Option::is_none));
    }

    #[test]
    fn a_lone_request_after_idle_is_never_delayed() {
        let mut now = Instant::now();
        let mut c = Coalescer::new(PAUSE, now);
        // A busy stretch engages pausing...
        drive(
            &mut c,
            &mut now,
            Duration::from_micros(100),
            2,
            RATE_WINDOW * 3,
        );
        assert!(c.after_wake(now + Duration::from_micros(100), 2).is_some());
        // ...a second of silence, then one request: answered at once, and so is the next one.
        now += Duration::from_secs(1);
        assert_eq!(c.after_wake(now, 1), None);
        now += Duration::from_millis(5);
        assert_eq!(c.after_wake(now, 1), None);
    }

    #[test]
    fn light_load_never_pauses() {
        // 1 000 datagrams/s in single wake-ups (a few calls): under MIN_RATE.
        let mut now = Instant::now();
        let mut c = Coalescer::new(Duration::from_millis(5), now);
        let pauses = drive(
            &mut c,
            &mut now,
            Duration::from_millis(1),
            1,
            Duration::from_secs(1),
        );
        assert!(pauses.iter().all(Option::is_none), "{pauses:?}");
    }

    #[test]
    fn spread_arrivals_above_the_threshold_pause_for_at_most_the_bound() {
        // 10 000 datagrams/s, one per wake-up: a 250 µs pause collects 2.5 on average.
        let mut now = Instant::now();
        let mut c = Coalescer::new(PAUSE, now);
        let mut paused = 0;
        let end = now + Duration::from_millis(200);
        let mut next_pause = None;
        while now < end {
            // After a pause the wake-up finds what arrived meanwhile.
            let (gap, found) = match next_pause {
                Some(p) => (p, 3),
                None => (Duration::from_micros(100), 1),
            };
            now += gap;
            next_pause = c.after_wake(now, found);
            if let Some(p) = next_pause {
                assert!(p <= PAUSE);
                paused += 1;
            }
        }
        assert!(paused > 100, "pauses taken: {paused}");
    }

    #[test]
    fn below_two_datagrams_per_pause_it_does_not_engage() {
        // 6 000 datagrams/s: a 250 µs pause would collect 1.5.
        let mut now = Instant::now();
        let mut c = Coalescer::new(PAUSE, now);
        let pauses = drive(
            &mut c,
            &mut now,
            Duration::from_micros(166),
            1,
            RATE_WINDOW * 10,
        );
        assert!(pauses.iter().all(Option::is_none));
    }

    #[test]
    fn a_busy_wake_up_is_not_followed_by_a_pause() {
        let mut now = Instant::now();
        let mut c = Coalescer::new(PAUSE, now);
        drive(
            &mut c,
            &mut now,
            Duration::from_micros(100),
            2,
            RATE_WINDOW * 2,
        );
        now += Duration::from_micros(100);
        assert_eq!(c.after_wake(now, BUSY), None);
        assert_eq!(c.after_wake(now, 0), None, "nothing handled (a timer)");
    }

    #[test]
    fn request_response_loops_back_off() {
        // One client that sends its next request when the answer comes: every pause delays it
        // and collects exactly one datagram, so pausing stops after a few tries, for BACKOFF.
        let mut now = Instant::now();
        let mut c = Coalescer::new(PAUSE, now);
        drive(
            &mut c,
            &mut now,
            Duration::from_micros(50),
            1,
            RATE_WINDOW * 2,
        );
        let mut delayed = 0;
        let end = now + BACKOFF * 10;
        while now < end {
            now += Duration::from_micros(50);
            if let Some(p) = c.after_wake(now, 1) {
                delayed += 1;
                now += p;
            }
        }
        // Without backing off nearly every request (≈ 3 000) would wait.
        assert!(delayed <= 10 * 5, "delayed {delayed} requests");
        assert!(delayed > 0, "pausing is retried after each backoff");
    }
}
