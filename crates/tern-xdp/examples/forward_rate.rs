//! Rough forwarding cost, kernel path against a user-space relay, in the test topology (root
//! only; about 5 seconds of bounded load between namespaces):
//!
//! ```text
//! cargo run --release -p tern-xdp --example forward_rate
//! ```
//!
//! For each path a client blasts ChannelData (100-byte payload) at the listener for 2 seconds and
//! the peer counts what arrives. Kernel path: the XDP program's own run time per packet (kernel
//! BPF statistics). User space: the relaying thread's CPU time per packet (recv + send, as tern's
//! simplest loop would do it). Neither includes the veth and softirq work both share, and the
//! blaster usually limits the packet rate: read the per-packet costs, not the rates.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_xdp::{ClientTuple, FastPath};

const RUN: Duration = Duration::from_secs(2);
const PAYLOAD: usize = 100;

fn main() {
    if !can_run() {
        return;
    }
    let topology = Topology::new();
    let client = Topology::socket(&topology.client, addr(CLIENT_V4, 40000));
    let listener = Topology::socket(&topology.tern, addr(TERN_CLIENT_SIDE_V4, 3478));
    let relay = Topology::socket(&topology.tern, addr(TERN_PEER_SIDE_V4, 49152));
    let peer = Topology::socket(&topology.peer, addr(PEER_V4, 50000));
    let mut frame = vec![0x40, 0x00, 0, PAYLOAD as u8];
    frame.resize(4 + PAYLOAD, 0x5A);

    // Kernel path.
    set_bpf_stats(true);
    let settings = tern_xdp::Settings {
        interfaces: vec!["t0".into(), "t1".into()],
        capacity: 16,
        relay_ports: 49152..=65535,
        attach: tern_xdp::AttachPolicy::Auto,
    };
    let mut fast_path =
        Topology::within(&topology.tern, move || FastPath::attach(&settings)).expect("attach");
    let tuple = ClientTuple {
        client: client.local_addr().unwrap(),
        server: listener.local_addr().unwrap(),
    };
    let id = fast_path
        .install_channel(
            tuple,
            0x4000,
            relay.local_addr().unwrap(),
            peer.local_addr().unwrap(),
        )
        .unwrap();
    // The kernel learns its next hops from the first packets of each side.
    client
        .send_to(&frame, listener.local_addr().unwrap())
        .unwrap();
    peer.send_to(b"hello", relay.local_addr().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (sent, received) = blast(&client, &listener, &peer, &frame);
    let (runs, run_ns) = xdp_prog_stats();
    println!(
        "kernel path: sent {sent}, peer received {received} ({:.0}/s); XDP program {:.0} ns/packet over {runs} runs -> {:.1} Mpps per core for the program alone",
        received as f64 / RUN.as_secs_f64(),
        run_ns as f64 / runs.max(1) as f64,
        runs as f64 / run_ns.max(1) as f64 * 1e3,
    );
    println!("counters: {:?}", fast_path.counters(id).unwrap());
    fast_path.remove(id).unwrap();
    drop(fast_path);
    set_bpf_stats(false);

    // User space: recv on the listener, strip the header, send from the relay socket.
    let stop = Arc::new(AtomicBool::new(false));
    let relayer = {
        let stop = stop.clone();
        let listener = listener.try_clone().unwrap();
        let relay = relay.try_clone().unwrap();
        let peer_addr = peer.local_addr().unwrap();
        std::thread::spawn(move || {
            listener
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let start = thread_cpu();
            let mut relayed = 0u64;
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = listener.recv_from(&mut buf) {
                    if n >= 4 {
                        relay.send_to(&buf[4..n], peer_addr).unwrap();
                        relayed += 1;
                    }
                }
            }
            (relayed, thread_cpu() - start)
        })
    };
    let (sent, received) = blast(&client, &listener, &peer, &frame);
    stop.store(true, Ordering::Relaxed);
    let (relayed, cpu) = relayer.join().unwrap();
    println!(
        "user space: sent {sent}, peer received {received} ({:.0}/s); relay thread {:.0} ns CPU/packet -> {:.2} Mpps per core",
        received as f64 / RUN.as_secs_f64(),
        cpu.as_nanos() as f64 / relayed.max(1) as f64,
        relayed as f64 / cpu.as_secs_f64().max(1e-9) / 1e6,
    );
}

/// Sends `frame` to the listener for RUN; returns (sent, received by the peer).
fn blast(client: &UdpSocket, listener: &UdpSocket, peer: &UdpSocket, frame: &[u8]) -> (u64, u64) {
    let target = listener.local_addr().unwrap();
    let counter = {
        let peer = peer.try_clone().unwrap();
        std::thread::spawn(move || {
            peer.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            while peer.recv_from(&mut buf).is_ok() {
                n += 1;
            }
            n
        })
    };
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..64 {
            if client.send_to(frame, target).is_ok() {
                sent += 1;
            }
        }
    }
    (sent, counter.join().unwrap())
}

fn set_bpf_stats(on: bool) {
    let _ = std::fs::write(
        "/proc/sys/kernel/bpf_stats_enabled",
        if on { "1" } else { "0" },
    );
}

/// run_cnt and run_time_ns of this process's XDP program (from its fdinfo).
fn xdp_prog_stats() -> (u64, u64) {
    for entry in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // BPF_PROG_TYPE_XDP is 6.
        if field("prog_type:") == Some(6) {
            return (
                field("run_cnt:").unwrap_or(0),
                field("run_time_ns:").unwrap_or(0),
            );
        }
    }
    (0, 0)
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
