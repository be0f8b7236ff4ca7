//! `abuse`: what broken and hostile clients do, all at once, for `--duration` seconds (the soak's
//! adversary, `scripts/soak.sh`). Loopback only; every loop is bounded by the deadline and paced.
//!
//! - malformed datagrams from eight source addresses (127.0.0.2-9): random bytes, truncated STUN,
//!   ChannelData on unbound channels and with lying lengths, requests with an oversized USERNAME
//!   and a forged MESSAGE-INTEGRITY, unauthenticated Allocates and Bindings (the
//!   unauthenticated rate limit's flood);
//! - permission and channel floods: an authenticated allocation binds channels (each with its
//!   permission) to more peers than `max-channels`/`max-permissions` allow, then is deleted;
//! - idle TCP connections that never send (`stream-idle-timeout` closes them; they reconnect);
//! - TCP garbage: PROXY headers from an untrusted source, bytes that are neither STUN nor TLS,
//!   half a STUN header left hanging (`partial-frame-timeout`);
//! - a TCP client that allocates, lets a peer flood its relay and never reads (the write-stall
//!   deadline cuts it).
//!
//! Reports what it sent and how many refusals and closes it saw, as one JSON line.

use crate::cli::AbuseArgs;
use crate::client::{rest_credentials, write_request, Credentials, Reply, Session, TurnClient};
use crate::{raise_fd_limit, report, require_test_address};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tern_proto::stun::{attr, Message, MessageWriter, Method};

/// What the abusers counted.
#[derive(Default)]
struct Tally {
    datagrams: AtomicU64,
    answers: AtomicU64,
    refusals: AtomicU64,
    allocations: AtomicU64,
    tcp_connections: AtomicU64,
    closed_by_server: AtomicU64,
    stalled_cut: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

/// xorshift: cheap bytes that need not be good.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for byte in buf {
            *byte = self.next() as u8;
        }
    }
}

pub fn run(args: &AbuseArgs) -> io::Result<()> {
    let common = &args.common;
    require_test_address(common.server)?;
    raise_fd_limit();
    let deadline = Instant::now() + common.duration();
    let tally = Arc::new(Tally::default());
    let server = common.server;
    let secret = common.secret.clone();
    let mut workers = Vec::new();
    let spawn = |workers: &mut Vec<thread::JoinHandle<()>>, f: Box<dyn FnOnce() + Send>| {
        workers.push(thread::spawn(f));
    };
    {
        let (tally, rate) = (tally.clone(), args.rate);
        spawn(
            &mut workers,
            Box::new(move || garbage(server, rate, deadline, &tally)),
        );
    }
    {
        let (tally, secret) = (tally.clone(), secret.clone());
        spawn(
            &mut workers,
            Box::new(move || permission_flood(server, &secret, deadline, &tally)),
        );
    }
    {
        let (tally, count) = (tally.clone(), args.idle_connections);
        spawn(
            &mut workers,
            Box::new(move || idle_tcp(server, count, deadline, &tally)),
        );
    }
    {
        let tally = tally.clone();
        spawn(
            &mut workers,
            Box::new(move || tcp_garbage(server, deadline, &tally)),
        );
    }
    {
        let (tally, secret) = (tally.clone(), secret.clone());
        spawn(
            &mut workers,
            Box::new(move || never_reads(server, &secret, deadline, &tally)),
        );
    }
    for worker in workers {
        let _ = worker.join();
    }
    let mut fields = report::base("abuse", &common.tags);
    for (name, counter) in [
        ("datagrams", &tally.datagrams),
        ("answers", &tally.answers),
        ("refusals", &tally.refusals),
        ("allocations", &tally.allocations),
        ("tcp_connections", &tally.tcp_connections),
        ("closed_by_server", &tally.closed_by_server),
        ("stalled_cut", &tally.stalled_cut),
    ] {
        fields.insert(name.into(), counter.load(Relaxed).into());
    }
    report::emit(fields);
    Ok(())
}

/// Malformed and unauthenticated datagrams from eight source addresses, `rate` a second.
fn garbage(server: SocketAddr, rate: f64, deadline: Instant, tally: &Tally) {
    let sockets: Vec<UdpSocket> = (2..=9)
        .filter_map(|host| UdpSocket::bind(("127.0.0.".to_string() + &host.to_string(), 0)).ok())
        .collect();
    for socket in &sockets {
        let _ = socket.set_nonblocking(true);
    }
    if sockets.is_empty() {
        return;
    }
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let mut buf = vec![0u8; 2048];
    let mut answer = [0u8; 2048];
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now();
    let mut sent: u64 = 0;
    while Instant::now() < deadline {
        let socket = &sockets[(sent as usize) % sockets.len()];
        let len = malformed(&mut noise, sent, &mut buf);
        if socket.send_to(&buf[..len], server).is_ok() {
            add(&tally.datagrams, 1);
        }
        sent += 1;
        for socket in &sockets {
            while socket.recv(&mut answer).is_ok() {
                add(&tally.answers, 1);
            }
        }
        let due = start + interval.mul_f64(sent as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
}

/// The `n`th malformed datagram into `buf`; its length.
fn malformed(noise: &mut Noise, n: u64, buf: &mut [u8]) -> usize {
    let mut tid = [0u8; 12];
    noise.fill(&mut tid);
    match n % 6 {
        0 => {
            let len = 1 + (noise.next() % 200) as usize;
            noise.fill(&mut buf[..len]);
            len
        }
        1 => {
            // A Binding header that promises 100 bytes and brings 8.
            let mut w =
                MessageWriter::new(buf, Method::BINDING, tern_proto::stun::Class::Request, &tid);
            w.add_bytes(attr::SOFTWARE, b"truncated");
            let len = w.finish().map_or(0, <[u8]>::len);
            buf[2..4].copy_from_slice(&100u16.to_be_bytes());
            len.min(28)
        }
        2 => {
            // ChannelData on a channel nobody bound, its length field lying half the time.
            let channel = 0x4000 + (noise.next() % 0x1000) as u16;
            let payload = (noise.next() % 300) as usize;
            let claimed = if n % 4 == 2 {
                payload as u16 + 17
            } else {
                payload as u16
            };
            buf[..2].copy_from_slice(&channel.to_be_bytes());
            buf[2..4].copy_from_slice(&claimed.to_be_bytes());
            noise.fill(&mut buf[4..4 + payload]);
            4 + payload
        }
        3 => {
            // Credentials that cannot verify, with a USERNAME past RFC 8489's 509 bytes.
            let session = Session {
                username: "u".repeat(600),
                realm: "tern".into(),
                nonce: "AAAAAAAAAAAAAAAA".into(),
                key: [0; 16],
            };
            write_request(buf, Method::ALLOCATE, &tid, Some(&session), |w| {
                w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            })
        }
        4 => write_request(buf, Method::ALLOCATE, &tid, None, |w| {
            w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
        _ => write_request(buf, Method::BINDING, &tid, None, |_| {}),
    }
}

/// Allocations that bind more channels than allowed, then go; a few a second.
fn permission_flood(server: SocketAddr, secret: &str, deadline: Instant, tally: &Tally) {
    let mut round = 0usize;
    while Instant::now() < deadline {
        round += 1;
        let Ok(mut client) = TurnClient::connect(server, rest_credentials(secret, 10_000 + round))
        else {
            return;
        };
        if client.allocate().is_err() {
            thread::sleep(Duration::from_millis(200));
            continue;
        }
        add(&tally.allocations, 1);
        for i in 0..80u16 {
            if Instant::now() >= deadline {
                break;
            }
            let peer = SocketAddr::from(([127, 0, 1, (i % 250) as u8 + 1], 9000 + i));
            if client.channel_bind(0x4000 + i, peer).is_err() {
                add(&tally.refusals, 1);
            }
        }
        let _ = client.refresh(0);
        thread::sleep(Duration::from_millis(250));
    }
}

/// `count` TCP connections that never send; the server's idle timeout closes them.
fn idle_tcp(server: SocketAddr, count: usize, deadline: Instant, tally: &Tally) {
    let mut open: Vec<TcpStream> = Vec::new();
    let mut byte = [0u8; 64];
    while Instant::now() < deadline {
        open.retain_mut(|stream| match stream.read(&mut byte) {
            Ok(0) => {
                add(&tally.closed_by_server, 1);
                false
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => true,
            _ => false,
        });
        while open.len() < count {
            match TcpStream::connect_timeout(&server, Duration::from_secs(2)) {
                Ok(stream) => {
                    let _ = stream.set_nonblocking(true);
                    add(&tally.tcp_connections, 1);
                    open.push(stream);
                }
                Err(_) => break,
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Connections that open with what tern must refuse, or stop half way through a frame.
fn tcp_garbage(server: SocketAddr, deadline: Instant, tally: &Tally) {
    let openings: [&[u8]; 5] = [
        b"PROXY TCP4 203.0.113.9 192.0.2.1 4000 3478\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xcb\x00\x71\x09\xc0\x00\x02\x01\x0f\xa0\x0d\x96",
        b"GET / HTTP/1.1\r\nHost: tern\r\n\r\n",
        b"\xc0\xff\xee\x00\x00\x00\x00\x00",
        // Half a STUN header: the partial-frame timeout's case.
        b"\x00\x01\x00\x08\x21\x12\xa4\x42\x00\x00",
    ];
    let mut hanging: Vec<(TcpStream, Instant)> = Vec::new();
    let mut n = 0usize;
    let mut byte = [0u8; 64];
    while Instant::now() < deadline {
        hanging.retain_mut(|(stream, since)| match stream.read(&mut byte) {
            Ok(0) => {
                add(&tally.closed_by_server, 1);
                false
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                since.elapsed() < Duration::from_secs(30)
            }
            _ => false,
        });
        let opening = openings[n % openings.len()];
        n += 1;
        if hanging.len() < 32 {
            if let Ok(mut stream) = TcpStream::connect_timeout(&server, Duration::from_secs(2)) {
                add(&tally.tcp_connections, 1);
                let _ = stream.write_all(opening);
                let _ = stream.set_nonblocking(true);
                hanging.push((stream, Instant::now()));
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A TURN-over-TCP client that never reads while a peer floods its relay; reconnects after the
/// server cuts it (or after 40 s).
fn never_reads(server: SocketAddr, secret: &str, deadline: Instant, tally: &Tally) {
    let mut round = 0usize;
    while Instant::now() + Duration::from_secs(5) < deadline {
        round += 1;
        let creds = rest_credentials(secret, 20_000 + round);
        match stalled_session(server, &creds, deadline, tally) {
            Ok(true) => add(&tally.stalled_cut, 1),
            Ok(false) => {}
            Err(_) => thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// One session; whether the server cut it.
fn stalled_session(
    server: SocketAddr,
    creds: &Credentials,
    deadline: Instant,
    tally: &Tally,
) -> io::Result<bool> {
    let peer = UdpSocket::bind("127.0.0.1:0")?;
    let peer_addr = peer.local_addr()?;
    // Connected, so the ICMP port unreachable of a released relay comes back as an error.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    // A small receive buffer, so the server's queue fills soon after the client stops reading.
    socket.set_recv_buffer_size(16 * 1024)?;
    socket.connect_timeout(&server.into(), Duration::from_secs(2))?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    add(&tally.tcp_connections, 1);
    let mut tids = crate::client::TidSource::new(0x5eed ^ peer_addr.port() as u64);
    let mut session: Option<Session> = None;
    let mut relayed = None;
    for _ in 0..3 {
        let tid = tids.next_tid();
        let mut buf = [0u8; 1024];
        let len = write_request(&mut buf, Method::ALLOCATE, &tid, session.as_ref(), |w| {
            w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        stream.write_all(&buf[..len])?;
        match crate::client::parse_reply(&read_frame(&mut stream)?, &tid) {
            Some(Reply::Success { relayed: r }) => {
                relayed = r;
                break;
            }
            Some(Reply::Challenge { realm, nonce }) => {
                session = Some(Session::new(creds, &realm, &nonce));
            }
            _ => return Ok(false),
        }
    }
    let (Some(relayed), Some(session)) = (relayed, session) else {
        return Ok(false);
    };
    add(&tally.allocations, 1);
    let tid = tids.next_tid();
    let mut buf = [0u8; 1024];
    let len = write_request(
        &mut buf,
        Method::CREATE_PERMISSION,
        &tid,
        Some(&session),
        |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
        },
    );
    stream.write_all(&buf[..len])?;
    let reply = read_frame(&mut stream)?;
    if Message::parse(&reply).map(|m| m.class()) != Ok(tern_proto::stun::Class::Success) {
        return Ok(false);
    }
    // From here on the client never reads. The peer floods (about 2 MB/s) until the server
    // cuts the client, as a closed relay then answers with ICMP port unreachable.
    stream.set_nonblocking(true)?;
    peer.connect(relayed)?;
    let payload = [0x5Au8; 1000];
    let until = (Instant::now() + Duration::from_secs(40)).min(deadline);
    let mut refused = 0;
    while Instant::now() < until {
        for _ in 0..20 {
            if let Err(e) = peer.send(&payload) {
                if e.kind() == ErrorKind::ConnectionRefused {
                    refused += 1;
                }
            }
        }
        if refused > 3 {
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(false)
}

/// One STUN message off a TCP stream.
fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 20];
    stream.read_exact(&mut header)?;
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut frame = header.to_vec();
    frame.resize(20 + len, 0);
    stream.read_exact(&mut frame[20..])?;
    Ok(frame)
}
