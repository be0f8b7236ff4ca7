//! `forwarder`: the physical limit a relay is measured against. No STUN, no authentication,
//! no permissions: a single thread that, for each client flow, opens one relay socket, strips
//! a 4-byte header (ChannelData-shaped) toward the peer and adds it back toward the client,
//! with recvmmsg/sendmmsg in batches of 32. A flow starts with a setup datagram
//! `FF FF 00 06 <IPv4 peer> <port>` (IPv4 peers only), which is echoed back as the answer.

use crate::cli::ForwarderArgs;
use crate::require_test_address;
use mio::{Events, Interest, Poll, Token};
use rustc_hash::FxHashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tern_udp::{deepen_receive_buffer, RecvBatch, SendBatch, BATCH};

const LISTENER: Token = Token(usize::MAX);
const SLOT: usize = 2048;
const HEADER: usize = 4;
const SETUP_LEN: usize = 10;

struct Flow {
    relay: mio::net::UdpSocket,
    client: SocketAddr,
    peer: SocketAddr,
}

fn setup_packet(peer: SocketAddrV4) -> [u8; SETUP_LEN] {
    let mut packet = [0xFF, 0xFF, 0x00, 0x06, 0, 0, 0, 0, 0, 0];
    packet[4..8].copy_from_slice(&peer.ip().octets());
    packet[8..10].copy_from_slice(&peer.port().to_be_bytes());
    packet
}

fn parse_setup(packet: &[u8]) -> Option<SocketAddr> {
    match packet {
        [0xFF, 0xFF, 0x00, 0x06, a, b, c, d, p0, p1] => Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(*a, *b, *c, *d),
            u16::from_be_bytes([*p0, *p1]),
        ))),
        _ => None,
    }
}

/// Client side: opens a flow through the forwarder toward `peer`; returns the connected socket.
pub fn client_setup(forwarder: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let SocketAddr::V4(peer) = peer else {
        return Err(io::Error::other(
            "the raw forwarder relays to IPv4 peers only",
        ));
    };
    let socket = UdpSocket::bind(crate::client_bind(forwarder))?;
    socket.connect(forwarder)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let packet = setup_packet(peer);
    let mut buf = [0u8; 64];
    for _ in 0..10 {
        socket.send(&packet)?;
        if let Ok(n) = socket.recv(&mut buf) {
            if buf[..n] == packet {
                return Ok(socket);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer from the forwarder at {forwarder}"),
    ))
}

pub fn run(args: &ForwarderArgs) -> io::Result<()> {
    require_test_address(args.listen)?;
    crate::raise_fd_limit();
    let deadline = Instant::now() + Duration::from_secs_f64(args.max_time.clamp(1.0, 3600.0));
    let mut poll = Poll::new()?;
    let listener = std::net::UdpSocket::bind(args.listen)?;
    listener.set_nonblocking(true)?;
    // The same deep listener buffer as tern's workers, so neither drops what the other keeps.
    deepen_receive_buffer(&listener, 4 << 20);
    let mut listener = mio::net::UdpSocket::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let listen_fd = listener.as_raw_fd();
    let mut flows: Vec<Flow> = Vec::new();
    let mut by_client: FxHashMap<SocketAddr, usize> = FxHashMap::default();
    let mut rx = RecvBatch::new(SLOT);
    let mut events = Events::with_capacity(1024);
    if args.coalesce_us > 0 {
        // SAFETY: prctl with an integer argument; this thread's timer slack only (the default
        // 50 µs would stretch every coalescing sleep).
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    }
    eprintln!("forwarder listening on {}", args.listen);
    while Instant::now() < deadline {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(200))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut handled = false;
        for event in events.iter() {
            handled = true;
            if event.token() == LISTENER {
                loop {
                    let count = rx.recv(listen_fd, 0, SLOT, BATCH).unwrap_or(0);
                    for i in 0..count {
                        let Some(client) = rx.meta.source(i) else {
                            continue;
                        };
                        let packet = &rx.data[i * SLOT..i * SLOT + rx.meta.len[i]];
                        match (by_client.get(&client).copied(), parse_setup(packet)) {
                            (Some(index), None) if packet.len() >= HEADER => {
                                let flow = &flows[index];
                                let _ = flow.relay.send_to(&packet[HEADER..], flow.peer);
                            }
                            // A repeated setup (the answer was lost): answer again.
                            (Some(_), Some(_)) => {
                                let _ = listener.send_to(packet, client);
                            }
                            (None, Some(peer)) => {
                                let mut relay = mio::net::UdpSocket::bind(SocketAddr::new(
                                    args.listen.ip(),
                                    0,
                                ))?;
                                let token = Token(flows.len());
                                poll.registry()
                                    .register(&mut relay, token, Interest::READABLE)?;
                                by_client.insert(client, flows.len());
                                flows.push(Flow {
                                    relay,
                                    client,
                                    peer,
                                });
                                let _ = listener.send_to(packet, client);
                            }
                            _ => {}
                        }
                    }
                    if count < BATCH {
                        break;
                    }
                }
            } else if let Some(flow) = flows.get(event.token().0) {
                let fd = flow.relay.as_raw_fd();
                loop {
                    let count = rx.recv(fd, HEADER, SLOT - HEADER, BATCH).unwrap_or(0);
                    let (slots, meta) = rx.split();
                    let mut out = SendBatch::new();
                    for (i, slot) in slots.take(count).enumerate() {
                        let len = meta.len[i];
                        slot[0..2].copy_from_slice(&0x4000u16.to_be_bytes());
                        slot[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                        out.push(&slot[..HEADER + len], Some(&flow.client));
                    }
                    out.flush(listen_fd);
                    if count < BATCH {
                        break;
                    }
                }
            }
        }
        if handled && args.coalesce_us > 0 {
            std::thread::sleep(Duration::from_micros(args.coalesce_us));
        }
    }
    Ok(())
}
