//! The built-in UDP echo peer: every datagram goes back to its sender, in batches
//! (recvmmsg/sendmmsg), from one socket or many (one peer address per allocation, as real
//! calls have; coTURN's multiplex-peer mode needs that), served by one or more threads with
//! epoll. Bounded in time; stops when asked. While the window is measured it also
//! records how datagrams arrive: how many each wake-up finds, and the time between wake-ups —
//! the evidence that a load is spread out (one datagram per wake-up) or bursty.

use crate::histogram::Histogram;
use crate::proc_stats;
use serde_json::{Map, Value};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tern_udp::{RecvBatch, SendBatch, BATCH};

/// Largest datagram echoed.
const SLOT: usize = 2048;

pub struct Echo {
    pub addrs: Vec<SocketAddr>,
    /// Datagrams echoed so far, all threads.
    pub echoed: Arc<AtomicU64>,
    /// Set while the window is measured: arrivals are recorded only then.
    pub measuring: Arc<AtomicBool>,
    /// Thread ids of the echo threads (their CPU is reported apart from the generator's).
    pub tids: Vec<i32>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Arrivals>>,
}

/// How datagrams arrived at a socket: per wake-up (a wait that ended with data, then reads until
/// the queue is empty), how many were read, and the time since the previous wake-up.
#[derive(Clone, Default)]
pub struct Arrivals {
    pub wakes: u64,
    pub datagrams: u64,
    /// Wake-ups that found 1, 2, 3–4, 5–8, 9 or more datagrams.
    pub by_count: [u64; 5],
    /// Nanoseconds between consecutive wake-ups.
    pub gaps: Histogram,
    gap_sum: f64,
    gap_sum_sq: f64,
}

impl Arrivals {
    pub fn record(&mut self, datagrams: u64, gap_ns: Option<u64>) {
        self.wakes += 1;
        self.datagrams += datagrams;
        let bucket = match datagrams {
            0 | 1 => 0,
            2 => 1,
            3..=4 => 2,
            5..=8 => 3,
            _ => 4,
        };
        self.by_count[bucket] += 1;
        if let Some(gap) = gap_ns {
            self.gaps.record(gap);
            self.gap_sum += gap as f64;
            self.gap_sum_sq += (gap as f64) * (gap as f64);
        }
    }

    pub fn merge(&mut self, other: &Arrivals) {
        self.wakes += other.wakes;
        self.datagrams += other.datagrams;
        for (a, b) in self.by_count.iter_mut().zip(other.by_count) {
            *a += b;
        }
        self.gaps.merge(&other.gaps);
        self.gap_sum += other.gap_sum;
        self.gap_sum_sq += other.gap_sum_sq;
    }

    /// `<prefix>_per_wake` (mean datagrams per wake-up), `<prefix>_wake_counts` (wake-ups
    /// finding 1, 2, 3–4, 5–8, 9+), the gap quantiles in µs and the gaps' coefficient of
    /// variation (about 1 for independent arrivals, 0 for a metronome, above 1 for bursts).
    pub fn report(&self, fields: &mut Map<String, Value>, prefix: &str) {
        use crate::report::round;
        let mut put = |k: &str, v: Value| {
            fields.insert(format!("{prefix}_{k}"), v);
        };
        put("wakes", Value::from(self.wakes));
        if self.wakes == 0 {
            return;
        }
        put(
            "per_wake",
            round(self.datagrams as f64 / self.wakes as f64, 3),
        );
        put("wake_counts", serde_json::json!(self.by_count));
        for (q, name) in [
            (0.1, "gap_p10_us"),
            (0.5, "gap_p50_us"),
            (0.9, "gap_p90_us"),
        ] {
            put(name, round(self.gaps.quantile(q) as f64 / 1000.0, 1));
        }
        let n = self.gaps.count() as f64;
        if n > 1.0 {
            let mean = self.gap_sum / n;
            let var = (self.gap_sum_sq / n - mean * mean).max(0.0);
            put("gap_cv", round(var.sqrt() / mean.max(1.0), 3));
        }
    }
}

impl Echo {
    /// Starts `sockets` echo sockets on `ip` (ports chosen by the kernel), created inside
    /// network namespace `netns` if one is named, served by `threads` threads (socket `i` by
    /// thread `i % threads`).
    pub fn start(
        threads: usize,
        sockets: usize,
        ip: IpAddr,
        netns: Option<&str>,
        lifetime: Duration,
    ) -> io::Result<Echo> {
        let echoed = Arc::new(AtomicU64::new(0));
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = crate::netns::within(netns, || {
            (0..sockets.max(1))
                .map(|_| echo_socket(SocketAddr::new(ip, 0)))
                .collect::<io::Result<Vec<_>>>()
        })?;
        let addrs = sockets
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        let threads = threads.clamp(1, sockets.len());
        let mut parts: Vec<Vec<UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, socket) in sockets.into_iter().enumerate() {
            parts[i % threads].push(socket);
        }
        let mut handles = Vec::new();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        for (i, socket) in parts.into_iter().enumerate() {
            let (echoed, measuring, stop) = (echoed.clone(), measuring.clone(), stop.clone());
            let tid_tx = tid_tx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("echo-{i}"))
                    .spawn(move || {
                        let _ = tid_tx.send(proc_stats::gettid());
                        drop(tid_tx);
                        serve(&socket, &echoed, &measuring, &stop, lifetime)
                    })?,
            );
        }
        drop(tid_tx);
        let tids = tid_rx.iter().collect();
        Ok(Echo {
            addrs,
            echoed,
            measuring,
            tids,
            stop,
            threads: handles,
        })
    }

    /// Stops the threads; returns the arrivals recorded while measuring.
    pub fn stop(self) -> Arrivals {
        self.stop.store(true, Relaxed);
        let mut all = Arrivals::default();
        for thread in self.threads {
            if let Ok(arrivals) = thread.join() {
                all.merge(&arrivals);
            }
        }
        all
    }
}

fn echo_socket(bind: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        None,
    )?;
    // Deep buffers: the echo must not be where packets are lost.
    force_buffers(&socket, 8 << 20);
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

fn serve(
    sockets: &[UdpSocket],
    echoed: &AtomicU64,
    measuring: &AtomicBool,
    stop: &AtomicBool,
    lifetime: Duration,
) -> Arrivals {
    let mut arrivals = Arrivals::default();
    let Ok(mut poll) = mio::Poll::new() else {
        return arrivals;
    };
    for (i, socket) in sockets.iter().enumerate() {
        let fd = socket.as_raw_fd();
        let source = &mut mio::unix::SourceFd(&fd);
        if poll
            .registry()
            .register(source, mio::Token(i), mio::Interest::READABLE)
            .is_err()
        {
            return arrivals;
        }
    }
    let deadline = Instant::now() + lifetime;
    let mut events = mio::Events::with_capacity(1024);
    let mut batch = RecvBatch::new(SLOT);
    let mut last_wake: Option<Instant> = None;
    while !stop.load(Relaxed) && Instant::now() < deadline {
        if poll
            .poll(&mut events, Some(Duration::from_millis(50)))
            .is_err()
        {
            continue;
        }
        let woke = Instant::now();
        let mut got = 0u64;
        for event in events.iter() {
            let Some(socket) = sockets.get(event.token().0) else {
                continue;
            };
            let fd = socket.as_raw_fd();
            // Edge-triggered: read until a short batch says the queue is empty.
            loop {
                let count = batch.recv(fd, 0, SLOT, BATCH).unwrap_or(0);
                let (slots, meta) = batch.split();
                let mut out = SendBatch::new();
                for (i, slot) in slots.take(count).enumerate() {
                    let (name, len) = meta.raw_source(i);
                    out.push_raw(&slot[..meta.len[i]], name, len);
                }
                out.flush(fd);
                got += count as u64;
                if count < BATCH {
                    break;
                }
            }
        }
        if got > 0 {
            echoed.fetch_add(got, Relaxed);
            if measuring.load(Relaxed) {
                let gap = last_wake.map(|l| woke.duration_since(l).as_nanos() as u64);
                arrivals.record(got, gap);
            }
            last_wake = Some(woke);
        }
    }
    arrivals
}

/// SO_RCVBUF/SO_SNDBUF past `net.core.rmem_max` where allowed (SO_*BUFFORCE needs
/// CAP_NET_ADMIN), else as large as the limit lets.
fn force_buffers(socket: &socket2::Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: setsockopt with a pointer to a c_int and its size.
        let forced = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                force,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !forced {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    plain,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_tell_spread_from_bursts() {
        let mut spread = Arrivals::default();
        let mut bursts = Arrivals::default();
        for i in 0..100 {
            spread.record(1, (i > 0).then_some(100_000));
            if i % 10 == 0 {
                bursts.record(10, (i > 0).then_some(1_000_000));
            }
        }
        let mut a = Map::new();
        spread.report(&mut a, "x");
        assert_eq!(a["x_per_wake"], 1.0);
        assert_eq!(a["x_wake_counts"], serde_json::json!([100, 0, 0, 0, 0]));
        assert_eq!(a["x_gap_cv"], 0.0);
        let mut b = Map::new();
        bursts.report(&mut b, "x");
        assert_eq!(b["x_per_wake"], 10.0);
        assert_eq!(b["x_wake_counts"], serde_json::json!([0, 0, 0, 0, 10]));
    }
}
