//! The steady-load engine: every flow is an independent stream, as a call is — its own packet
//! rate, a random start phase, and each gap jittered around its period — so the packets of all
//! flows together arrive spread out in time, not in a burst per timer tick. A server then
//! wakes for one or two datagrams at a time, which is the regime real TURN servers live in.
//!
//! One sender thread keeps every flow's next due time in a heap and sleeps until the earliest
//! (`clock_nanosleep` on an absolute time, timer slack 1 µs), then sends that one packet with
//! its own `send` on the flow's socket: the generator never batches. One receiver thread
//! reads the echoes (RTT, loss) and records how they arrive. How late each send was against its
//! schedule is reported, so a generator that cannot keep up shows.

use crate::echo::{Arrivals, Echo};
use crate::framing::Framing;
use crate::histogram::Histogram;
use crate::load::{Outcome, Snapshot, SLOT};
use crate::meter::{Meter, Usage};
use mio::{Events, Interest, Poll, Token};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tern_udp::{RecvBatch, BATCH};

/// After sending stops, how long echoes are still collected before loss is counted.
const DRAIN: Duration = Duration::from_millis(300);
/// A packet this late against its schedule is skipped (and counted), not sent in a catch-up
/// burst: the arrival pattern must stay spread even when the machine stalls the generator.
const LATE_LIMIT_NS: u64 = 20_000_000;
/// Longest single sleep, so the stop flag is seen.
const MAX_SLEEP_NS: u64 = 10_000_000;

#[derive(Clone, Debug)]
pub struct SteadySpec {
    /// Packets per second each flow sends.
    pub per_flow_rate: f64,
    /// Each gap is the period × (1 ± jitter), uniformly.
    pub jitter: f64,
    pub seed: u64,
    pub warmup: Duration,
    pub duration: Duration,
    /// Stop sending after this many packets (0 = no count bound).
    pub max_packets: u64,
}

/// What the sender saw, besides the common outcome.
#[derive(Default)]
pub struct SenderStats {
    /// Send time minus scheduled time, nanoseconds, inside the window.
    pub lateness: Histogram,
    /// Packets skipped because they were more than 20 ms late.
    pub skipped: u64,
    /// Sends the kernel refused (full buffer): counted as sent, so as lost.
    pub refused: u64,
}

pub struct SteadyOutcome {
    pub outcome: Outcome,
    pub sender: SenderStats,
    /// How the echoes arrived back at the clients (per receiver wake-up).
    pub client_arrivals: Arrivals,
}

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    received: AtomicU64,
    measuring: AtomicBool,
    stop_sending: AtomicBool,
    done: AtomicBool,
}

/// CLOCK_MONOTONIC in nanoseconds (the clock `clock_nanosleep` sleeps on).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sleep_until(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: an absolute CLOCK_MONOTONIC time; an early return (signal) is harmless, the
    // caller checks the time again.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

/// Runs the streams over `flows` (connected sockets, one per allocation) and meters the window.
pub fn run(
    flows: Vec<UdpSocket>,
    framing: &dyn Framing,
    spec: &SteadySpec,
    mut meter: Meter,
    echo: &Echo,
) -> io::Result<SteadyOutcome> {
    if framing.max_len() > SLOT {
        return Err(io::Error::other("packet size too large for tern-bench"));
    }
    if !(spec.per_flow_rate > 0.0 && spec.per_flow_rate <= 100_000.0) {
        return Err(io::Error::other(
            "per-stream rate must be in (0, 100000] pkt/s",
        ));
    }
    for flow in &flows {
        flow.set_nonblocking(true)?;
    }
    let fds: Vec<RawFd> = flows.iter().map(AsRawFd::as_raw_fd).collect();
    let shared = Shared::default();
    let base = mono_ns();
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| send_streams(&fds, framing, spec, &shared, base));
        let receiver = scope.spawn(|| receive(&flows, framing, &shared, base));
        let snapshot = |shared: &Shared| Snapshot {
            received: shared.received.load(Relaxed),
            side: echo.echoed.load(Relaxed),
        };
        let set_measuring = |on: bool| {
            shared.measuring.store(on, Relaxed);
            echo.measuring.store(on, Relaxed);
        };
        let bounded = |until: Instant| {
            while Instant::now() < until {
                if spec.max_packets > 0 && shared.sent.load(Relaxed) >= spec.max_packets {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let window = (|| -> io::Result<(Snapshot, Snapshot, Usage)> {
            bounded(Instant::now() + spec.warmup);
            let started = meter.start()?;
            let start = snapshot(&shared);
            set_measuring(true);
            bounded(Instant::now() + spec.duration);
            set_measuring(false);
            let end = snapshot(&shared);
            Ok((start, end, meter.stop(started)?))
        })();
        shared.stop_sending.store(true, Relaxed);
        std::thread::sleep(DRAIN);
        shared.done.store(true, Relaxed);
        let sender = sender
            .join()
            .map_err(|_| io::Error::other("sender thread panicked"))?;
        let (rtt, client_arrivals) = receiver
            .join()
            .map_err(|_| io::Error::other("receiver thread panicked"))??;
        let (start, end, usage) = window?;
        Ok(SteadyOutcome {
            outcome: Outcome {
                start,
                end,
                usage,
                total_sent: shared.sent.load(Relaxed),
                total_received: shared.received.load(Relaxed),
                rtt,
            },
            sender,
            client_arrivals,
        })
    })
}

/// The sender: one packet per due time, earliest first, each with its own `send`.
fn send_streams(
    fds: &[RawFd],
    framing: &dyn Framing,
    spec: &SteadySpec,
    shared: &Shared,
    base: u64,
) -> SenderStats {
    // SAFETY: prctl with an integer argument; affects this thread's timer slack only (the
    // default 50 µs would bunch wake-ups that are ~100 µs apart).
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let period = 1e9 / spec.per_flow_rate;
    let jitter = spec.jitter.clamp(0.0, 1.0);
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let first = mono_ns() + 1_000_000;
    let mut due: BinaryHeap<Reverse<(u64, usize)>> = (0..fds.len())
        .map(|i| Reverse((first + rng.gen_range(0.0..period) as u64, i)))
        .collect();
    let mut stats = SenderStats::default();
    let mut buf = vec![0u8; SLOT];
    let mut sent: u64 = 0;
    while !shared.stop_sending.load(Relaxed) && (spec.max_packets == 0 || sent < spec.max_packets) {
        let Some(&Reverse((at, flow))) = due.peek() else {
            break;
        };
        let now = mono_ns();
        if at > now {
            sleep_until(at.min(now + MAX_SLEEP_NS));
            continue;
        }
        due.pop();
        let late = now - at;
        if late > LATE_LIMIT_NS {
            stats.skipped += 1;
        } else {
            let len = framing.write(flow, &mut buf, sent, now - base);
            // SAFETY: a connected socket and `len` initialised bytes of `buf`.
            let n = unsafe { libc::send(fds[flow], buf.as_ptr().cast(), len, libc::MSG_DONTWAIT) };
            if n < 0 {
                stats.refused += 1;
            }
            sent += 1;
            shared.sent.fetch_add(1, Relaxed);
            if shared.measuring.load(Relaxed) {
                stats.lateness.record(late);
            }
        }
        let gap = period * (1.0 + jitter * rng.gen_range(-1.0..=1.0));
        due.push(Reverse((at + gap.max(1.0) as u64, flow)));
    }
    stats
}

/// The receiver: echoes from every flow, RTT from their stamps, arrivals per wake-up.
fn receive(
    flows: &[UdpSocket],
    framing: &dyn Framing,
    shared: &Shared,
    base: u64,
) -> io::Result<(Histogram, Arrivals)> {
    let mut poll = Poll::new()?;
    for (i, flow) in flows.iter().enumerate() {
        poll.registry().register(
            &mut mio::unix::SourceFd(&flow.as_raw_fd()),
            Token(i),
            Interest::READABLE,
        )?;
    }
    let mut events = Events::with_capacity(1024);
    let mut rx = RecvBatch::new(SLOT);
    let mut rtt = Histogram::default();
    let mut arrivals = Arrivals::default();
    let mut last_wake: Option<u64> = None;
    while !shared.done.load(Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(20))) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let woke = mono_ns();
        let measuring = shared.measuring.load(Relaxed);
        let mut got: u64 = 0;
        for event in events.iter() {
            let Some(flow) = flows.get(event.token().0) else {
                continue;
            };
            loop {
                let count = rx.recv(flow.as_raw_fd(), 0, SLOT, BATCH).unwrap_or(0);
                let now = mono_ns() - base;
                for i in 0..count {
                    let packet = &rx.data[i * SLOT..i * SLOT + rx.meta.len[i]];
                    if let Some((_, sent_ns)) = framing.read(packet) {
                        got += 1;
                        if measuring {
                            rtt.record(now.saturating_sub(sent_ns));
                        }
                    }
                }
                if count < BATCH {
                    break;
                }
            }
        }
        if got > 0 {
            shared.received.fetch_add(got, Relaxed);
            if measuring {
                arrivals.record(got, last_wake.map(|l| woke - l));
            }
            last_wake = Some(woke);
        }
    }
    Ok((rtt, arrivals))
}
