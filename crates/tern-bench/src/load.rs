//! The load engine shared by `relay` and `binding`: connected client sockets, each sending
//! framed packets and reading replies in batches, either saturated (a window of packets in
//! flight per flow, refilled as replies come back) or at a fixed total rate, sent as a burst
//! every millisecond tick. A controller thread times the warm-up and the measured window and
//! meters the server, the machine and itself around it.

use super::echo::Echo;
use super::framing::Framing;
use super::histogram::Histogram;
use super::meter::{Meter, Usage};
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tern_udp::{RecvBatch, SendBatch, BATCH};

/// Receive and transmit slot size: the largest packet the tool sends or expects back.
pub const SLOT: usize = 2048;
/// After sending stops, how long replies are still collected before loss is counted.
const DRAIN: Duration = Duration::from_millis(300);
/// Saturated mode: a flow that heard nothing for this long gets a fresh window (lost packets).
const STALL: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Packets per second, all flows; 0 = saturated.
    pub rate: f64,
    pub window: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Stop sending after this many packets (0 = no count bound).
    pub max_packets: u64,
    pub threads: usize,
}

/// Counters at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub received: u64,
    /// The echo peer's datagrams.
    pub side: u64,
}

#[derive(Debug)]
pub struct Outcome {
    pub start: Snapshot,
    pub end: Snapshot,
    pub usage: Usage,
    pub total_sent: u64,
    pub total_received: u64,
    pub rtt: Histogram,
}

impl Outcome {
    pub fn window_secs(&self) -> f64 {
        self.usage.window_secs()
    }

    pub fn loss(&self) -> f64 {
        if self.total_sent == 0 {
            return 0.0;
        }
        1.0 - self.total_received.min(self.total_sent) as f64 / self.total_sent as f64
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram({} samples)", self.count())
    }
}

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    received: AtomicU64,
    measuring: AtomicBool,
    stop_sending: AtomicBool,
    done: AtomicBool,
}

/// Runs the load over `flows` (connected, one per 5-tuple). The echo peer's count is sampled
/// with the other counters and its arrivals recorded inside the window; `meter` measures it.
pub fn run(
    flows: Vec<UdpSocket>,
    framing: &dyn Framing,
    spec: &LoadSpec,
    mut meter: Meter,
    echo: Option<&Echo>,
) -> io::Result<Outcome> {
    if framing.max_len() > SLOT {
        return Err(io::Error::other("packet size too large for tern-bench"));
    }
    let shared = Shared::default();
    let threads = spec.threads.clamp(1, flows.len().max(1));
    let mut parts: Vec<Vec<(usize, UdpSocket)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, flow) in flows.into_iter().enumerate() {
        flow.set_nonblocking(true)?;
        parts[i % threads].push((i, flow));
    }
    let base = Instant::now();
    let snapshot = |shared: &Shared| Snapshot {
        received: shared.received.load(Relaxed),
        side: echo.map_or(0, |e| e.echoed.load(Relaxed)),
    };
    let set_measuring = |shared: &Shared, on: bool| {
        shared.measuring.store(on, Relaxed);
        if let Some(echo) = echo {
            echo.measuring.store(on, Relaxed);
        }
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = parts
            .into_iter()
            .map(|part| {
                let shared = &shared;
                let rate = spec.rate / threads as f64;
                let max = spec.max_packets.div_ceil(threads as u64);
                scope.spawn(move || worker(part, framing, spec, rate, max, shared, base))
            })
            .collect();
        let outcome = (|| -> io::Result<(Snapshot, Snapshot, Usage)> {
            let bounded = |shared: &Shared, until: Instant| {
                while Instant::now() < until {
                    if spec.max_packets > 0 && shared.sent.load(Relaxed) >= spec.max_packets {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            };
            bounded(&shared, Instant::now() + spec.warmup);
            let started = meter.start()?;
            let start = snapshot(&shared);
            set_measuring(&shared, true);
            bounded(&shared, Instant::now() + spec.duration);
            set_measuring(&shared, false);
            let end = snapshot(&shared);
            let usage = meter.stop(started)?;
            Ok((start, end, usage))
        })();
        shared.stop_sending.store(true, Relaxed);
        std::thread::sleep(DRAIN);
        shared.done.store(true, Relaxed);
        let mut rtt = Histogram::default();
        for worker in workers {
            match worker.join() {
                Ok(Ok(h)) => rtt.merge(&h),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("load thread panicked")),
            }
        }
        let (start, end, usage) = outcome?;
        Ok(Outcome {
            start,
            end,
            usage,
            total_sent: shared.sent.load(Relaxed),
            total_received: shared.received.load(Relaxed),
            rtt,
        })
    })
}

struct FlowState {
    socket: mio::net::UdpSocket,
    id: usize,
    last_reply: Instant,
}

struct Sender {
    tx: Box<[u8]>,
    seq: u64,
}

impl Sender {
    /// Sends `n` packets on a connected socket in batches; returns how many went out.
    fn send(
        &mut self,
        fd: RawFd,
        flow: usize,
        n: usize,
        framing: &dyn Framing,
        now_ns: u64,
    ) -> u64 {
        let mut sent = 0;
        let mut left = n;
        while left > 0 {
            let k = left.min(BATCH);
            let mut batch = SendBatch::new();
            for slot in self.tx.chunks_mut(SLOT).take(k) {
                let len = framing.write(flow, slot, self.seq, now_ns);
                self.seq += 1;
                batch.push(&slot[..len], None);
            }
            let done = batch.flush(fd);
            sent += done as u64;
            left -= k;
            if done < k {
                break; // socket buffer full: the rest would fail too
            }
        }
        sent
    }
}

fn worker(
    part: Vec<(usize, UdpSocket)>,
    framing: &dyn Framing,
    spec: &LoadSpec,
    rate: f64,
    max: u64,
    shared: &Shared,
    base: Instant,
) -> io::Result<Histogram> {
    let mut poll = Poll::new()?;
    let mut flows = Vec::with_capacity(part.len());
    for (i, (id, socket)) in part.into_iter().enumerate() {
        let mut socket = mio::net::UdpSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        flows.push(FlowState {
            socket,
            id,
            last_reply: Instant::now(),
        });
    }
    let mut events = Events::with_capacity(1024);
    let mut rx = RecvBatch::new(SLOT);
    let mut sender = Sender {
        tx: vec![0u8; SLOT * BATCH].into_boxed_slice(),
        seq: 0,
    };
    let mut rtt = Histogram::default();
    let saturated = rate <= 0.0;
    let mut sent: u64 = 0;
    let can_send = |sent: u64| !shared.stop_sending.load(Relaxed) && (max == 0 || sent < max);
    let now_ns = || base.elapsed().as_nanos() as u64;
    if saturated {
        for flow in &flows {
            sent += sender.send(
                flow.socket.as_raw_fd(),
                flow.id,
                spec.window,
                framing,
                now_ns(),
            );
        }
        shared.sent.fetch_add(sent, Relaxed);
    }
    let started = Instant::now();
    let mut next_flow = 0;
    let mut last_stall_check = Instant::now();
    while !shared.done.load(Relaxed) {
        let timeout = if saturated || !can_send(sent) {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(1)
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let measuring = shared.measuring.load(Relaxed);
        for event in events.iter() {
            let Some(flow) = flows.get_mut(event.token().0) else {
                continue;
            };
            let fd = flow.socket.as_raw_fd();
            loop {
                let count = rx.recv(fd, 0, SLOT, BATCH).unwrap_or(0);
                if count == 0 {
                    break;
                }
                let now = now_ns();
                let mut got = 0;
                for i in 0..count {
                    let start = i * SLOT;
                    let packet = &rx.data[start..start + rx.meta.len[i]];
                    if let Some((_, sent_ns)) = framing.read(packet) {
                        got += 1;
                        if measuring {
                            rtt.record(now.saturating_sub(sent_ns));
                        }
                    }
                }
                shared.received.fetch_add(got, Relaxed);
                flow.last_reply = Instant::now();
                if saturated && can_send(sent) {
                    let more = sender.send(fd, flow.id, got as usize, framing, now);
                    sent += more;
                    shared.sent.fetch_add(more, Relaxed);
                }
                if count < BATCH {
                    break;
                }
            }
        }
        if !can_send(sent) {
            continue;
        }
        if saturated {
            if last_stall_check.elapsed() >= STALL / 2 {
                last_stall_check = Instant::now();
                let mut more = 0;
                for flow in &mut flows {
                    if flow.last_reply.elapsed() >= STALL {
                        flow.last_reply = Instant::now();
                        more += sender.send(
                            flow.socket.as_raw_fd(),
                            flow.id,
                            spec.window,
                            framing,
                            now_ns(),
                        );
                    }
                }
                sent += more;
                shared.sent.fetch_add(more, Relaxed);
            }
        } else {
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            // After a stall, do not burst more than 50 ms worth.
            let mut owed = due.saturating_sub(sent).min((rate * 0.05) as u64 + 1);
            if max > 0 {
                owed = owed.min(max - sent);
            }
            let mut more = 0;
            let mut skipped = 0;
            while owed > 0 && !flows.is_empty() {
                let flow = &flows[next_flow];
                next_flow = (next_flow + 1) % flows.len();
                let n = sender.send(flow.socket.as_raw_fd(), flow.id, 1, framing, now_ns());
                more += n;
                owed -= 1;
                if n == 0 {
                    skipped += 1;
                }
            }
            // Packets the kernel refused still count as due: they are lost, not postponed.
            sent += more + skipped;
            shared.sent.fetch_add(more, Relaxed);
        }
    }
    Ok(rtt)
}
