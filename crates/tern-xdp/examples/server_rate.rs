//! Rough figures for the real tern binary with and without the kernel fast path, in the test
//! topology (client, tern and peer namespaces joined by veth pairs; root only). Not a test, and
//! not the benchmark table (scripts/bench.sh makes that).
//!
//! ```text
//! cargo build --release && cargo run --release -p tern-xdp --example server_rate -- [FLOWS] [RATE] [SECONDS]
//! ```
//!
//! FLOWS client sockets (default 16) each allocate a relay and bind a channel to one UDP echo
//! peer in the peer namespace, then send 100-byte ChannelData at RATE relayed packets per second
//! in all (default 40000; each round trip is relayed twice; 0 = as fast as one sender thread
//! goes) for SECONDS (default 5). For `fast-path = "off"` and then `"required"` it prints the
//! relayed packets per second, the whole machine's CPU time per relayed packet (/proc/stat:
//! tern, the veths' softirq work, the load generator and the echo peer together), tern's own CPU
//! time per packet, and tern's wake-ups (context switches of all its threads) per packet. The
//! tern binary is `TERN_BIN`, else target/release/tern.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tern_proto::stun::{attr, Class, Message, MessageWriter, Method};

const SECRET: &str = "server-rate-secret";
const PAYLOAD: usize = 100;
const LISTEN_PORT: u16 = 3478;

fn main() {
    if !can_run() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let flows = arg(0, 16.0) as usize;
    let rate = arg(1, 40_000.0);
    let seconds = arg(2, 5.0).clamp(1.0, 60.0);
    let binary = std::env::var("TERN_BIN").unwrap_or_else(|_| "target/release/tern".into());

    let topology = Topology::new();
    println!(
        "{flows} flows, {} relayed packets/s asked, {PAYLOAD}-byte payloads, {seconds} s each",
        if rate > 0.0 {
            rate.to_string()
        } else {
            "as many".into()
        }
    );
    println!(
        "{:<9} {:>10} {:>13} {:>13} {:>13} {:>13} {:>11}",
        "fast-path",
        "relayed/s",
        "machine/pkt",
        "kernel/pkt",
        "tern/pkt",
        "load gen/pkt",
        "wakeups/pkt"
    );
    for mode in ["off", "required"] {
        let run = Run::start(&topology, &binary, mode);
        let figures = run.measure(&topology, flows, rate, Duration::from_secs_f64(seconds));
        let per = |d: Duration| d.as_secs_f64() * 1e6 / figures.relayed.max(1) as f64;
        println!(
            "{mode:<9} {:>10.0} {:>10.2} µs {:>10.2} µs {:>10.2} µs {:>10.2} µs {:>11.4}",
            figures.relayed as f64 / seconds,
            per(figures.machine_cpu),
            per(figures.machine_kernel),
            per(figures.tern_cpu),
            per(figures.load_cpu),
            figures.wakeups as f64 / figures.relayed.max(1) as f64,
        );
    }
    println!(
        "machine: every CPU busy (/proc/stat), other work on the host included; kernel: its system,\n\
         irq and softirq time (the veths, XDP, the stack); tern: the tern process; load gen: this\n\
         process (clients and echo peer); wakeups: context switches of tern's threads"
    );
}

struct Run {
    child: Child,
    _config: TempConfig,
}

struct TempConfig(std::path::PathBuf);

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Figures {
    relayed: u64,
    machine_cpu: Duration,
    machine_kernel: Duration,
    tern_cpu: Duration,
    load_cpu: Duration,
    wakeups: u64,
}

impl Run {
    fn start(topology: &Topology, binary: &str, mode: &str) -> Run {
        let config = TempConfig(std::env::temp_dir().join(format!(
            "tern-server-rate-{}-{mode}.toml",
            std::process::id()
        )));
        std::fs::write(
            &config.0,
            format!(
                "listening-ip = \"{TERN_CLIENT_SIDE_V4}\"\nlistening-port = {LISTEN_PORT}\n\
                 relay-ip = \"{TERN_PEER_SIDE_V4}\"\nmin-port = 50000\nmax-port = 50999\n\
                 static-auth-secret = \"{SECRET}\"\nrelay-threads = 2\nno-http = true\n\
                 no-tcp = true\nlog-level = \"warn\"\nallowed-peer-ip = \"198.51.100.0/24\"\n\
                 fast-path = \"{mode}\"\n"
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &topology.tern, binary, "--config"])
            .arg(&config.0)
            .stdout(Stdio::null())
            .spawn()
            .expect("start tern");
        let run = Run {
            child,
            _config: config,
        };
        // Ready when it answers a Binding.
        let probe = Topology::socket(&topology.client, addr(CLIENT_V4, 0));
        let server = addr(TERN_CLIENT_SIDE_V4, LISTEN_PORT);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        loop {
            probe.send_to(&binding_request(), server).unwrap();
            if probe.recv_from(&mut buf).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "tern did not start");
        }
        run
    }

    fn measure(&self, topology: &Topology, flows: usize, rate: f64, run: Duration) -> Figures {
        let peer_addr = addr(PEER_V4, 5000);
        let peer = Topology::socket(&topology.peer, peer_addr);
        let stop = Arc::new(AtomicBool::new(false));
        let echo = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Relaxed) {
                    if let Ok((n, from)) = peer.recv_from(&mut buf) {
                        let _ = peer.send_to(&buf[..n], from);
                    }
                }
            })
        };
        let server = addr(TERN_CLIENT_SIDE_V4, LISTEN_PORT);
        let clients: Vec<UdpSocket> = (0..flows)
            .map(|i| {
                let socket = Topology::socket(&topology.client, addr(CLIENT_V4, 0));
                socket.connect(server).unwrap();
                bind_channel(&socket, i, peer_addr);
                socket
            })
            .collect();
        // Receivers count the echoes, one thread for all sockets (non-blocking, polled).
        let received = Arc::new(AtomicU64::new(0));
        let receiver = {
            let (stop, received) = (stop.clone(), received.clone());
            let sockets: Vec<UdpSocket> = clients.iter().map(|s| s.try_clone().unwrap()).collect();
            for socket in &sockets {
                socket.set_nonblocking(true).unwrap();
            }
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Relaxed) {
                    let mut got = 0;
                    for socket in &sockets {
                        while socket.recv(&mut buf).is_ok() {
                            got += 1;
                        }
                    }
                    received.fetch_add(got, Relaxed);
                    if got == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        };
        let mut frame = vec![0x40, 0x00, 0, PAYLOAD as u8];
        frame.resize(4 + PAYLOAD, 0x5A);
        // A second of load first: the kernel learns its next hops, the caches warm.
        send_for(&clients, &frame, rate, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(200));
        let (machine, kernel, tern, load, wakeups, received_before) = (
            machine_busy(),
            machine_kernel(),
            process_cpu(self.child.id()),
            process_cpu(std::process::id()),
            wakeups(self.child.id()),
            received.load(Relaxed),
        );
        let sent = send_for(&clients, &frame, rate, run);
        std::thread::sleep(Duration::from_millis(200));
        let figures = Figures {
            relayed: 2 * (received.load(Relaxed) - received_before),
            machine_cpu: machine_busy() - machine,
            machine_kernel: machine_kernel() - kernel,
            tern_cpu: process_cpu(self.child.id()) - tern,
            load_cpu: process_cpu(std::process::id()) - load,
            wakeups: self::wakeups(self.child.id()) - wakeups,
        };
        stop.store(true, Relaxed);
        let _ = receiver.join();
        let _ = echo.join();
        eprintln!("  sent {sent}, {} relayed", figures.relayed);
        figures
    }
}

/// Sends `frame` round-robin over the clients for `time`, paced to `rate` relayed packets per
/// second (half of them sent here: the echo is relayed too); 0 = unpaced. Returns how many.
fn send_for(clients: &[UdpSocket], frame: &[u8], rate: f64, time: Duration) -> u64 {
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < time {
        if rate > 0.0 {
            let due = (start.elapsed().as_secs_f64() * rate / 2.0) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
        }
        for client in clients {
            if client.send(frame).is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

/// Allocates on `socket` and binds channel 0x4000 to `peer` (REST credentials, the 401 dance).
fn bind_channel(socket: &UdpSocket, index: usize, peer: SocketAddr) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minted = tern_proto::auth::mint(SECRET, Some(&format!("rate{index}")), 3600, now);
    let mut nonce: Option<(String, String)> = None;
    let mut request = |method: Method, attrs: &dyn Fn(&mut MessageWriter<'_>)| loop {
        let mut buf = [0u8; 1024];
        let tid = [
            index as u8,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            9,
            method.0 as u8,
            rand_byte(),
        ];
        let mut w = MessageWriter::new(&mut buf, method, Class::Request, &tid);
        attrs(&mut w);
        if let Some((realm, nonce)) = &nonce {
            let key = tern_proto::auth::long_term_key(&minted.username, realm, &minted.password);
            w.add_bytes(attr::USERNAME, minted.username.as_bytes());
            w.add_bytes(attr::REALM, realm.as_bytes());
            w.add_bytes(attr::NONCE, nonce.as_bytes());
            w.add_message_integrity(&key);
        }
        let request = w.finish().unwrap().to_vec();
        socket.send(&request).unwrap();
        let mut answer = [0u8; 1024];
        let n = socket.recv(&mut answer).expect("an answer");
        let msg = Message::parse(&answer[..n]).unwrap();
        match msg.error_code() {
            None => return,
            Some((401 | 438, _)) => {
                let text = |typ| msg.get_str(typ).unwrap().unwrap().to_string();
                nonce = Some((text(attr::REALM), text(attr::NONCE)));
            }
            Some((code, reason)) => panic!("{method:?}: {code} {reason}"),
        }
    };
    request(Method::ALLOCATE, &|w| {
        w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    request(Method::CHANNEL_BIND, &|w| {
        w.add_u32(attr::CHANNEL_NUMBER, 0x4000 << 16);
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
}

/// A STUN Binding request (20-byte header, no attributes).
fn binding_request() -> Vec<u8> {
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    request.extend(1..=12u8);
    request
}

fn rand_byte() -> u8 {
    (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xff) as u8
}

/// The machine's CPU time in /proc/stat's columns `which` (user nice system idle iowait irq
/// softirq steal…), every CPU.
fn machine_time(which: impl Fn(usize) -> bool) -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| which(*i))
        .map(|(_, f)| f.parse::<u64>().unwrap())
        .sum();
    Duration::from_secs_f64(ticks as f64 / ticks_per_second())
}

/// Busy: all but idle and iowait.
fn machine_busy() -> Duration {
    machine_time(|i| i != 3 && i != 4)
}

/// In the kernel: system, irq, softirq.
fn machine_kernel() -> Duration {
    machine_time(|i| i == 2 || i == 5 || i == 6)
}

/// utime + stime of process `pid`.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / ticks_per_second())
}

/// Context switches of every thread of `pid`: how often it was woken (or preempted).
fn wakeups(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}
