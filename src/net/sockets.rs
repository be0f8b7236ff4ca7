//! Creating the UDP sockets: listeners (one per worker, SO_REUSEPORT) and relays; and the TCP
//! sockets of RFC 6062 relays.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// A non-blocking UDP listener that shares its address with the other workers' listeners; the
/// kernel hashes each client 5-tuple to one of them, so a client always meets the same worker.
pub fn reuseport_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    Ok(bound(addr, Type::DGRAM, Protocol::UDP, share_address)?.into())
}

/// A non-blocking relay socket on `addr`; `buffer` > 0 sets SO_RCVBUF/SO_SNDBUF.
pub fn relay_udp(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    let socket = bound(addr, Type::DGRAM, Protocol::UDP, |socket| {
        if buffer > 0 {
            socket.set_recv_buffer_size(buffer)?;
            socket.set_send_buffer_size(buffer)?;
        }
        Ok(())
    })?;
    Ok(socket.into())
}

/// The listening socket of a TCP relay (RFC 6062) on `addr`. SO_REUSEADDR and SO_REUSEPORT, so
/// that connections to peers can be opened from the same address and port
/// ([`relay_tcp_outgoing`]) while it listens.
pub fn relay_tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = bound(addr, Type::STREAM, Protocol::TCP, share_address)?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// A socket bound to a TCP relay's address, to connect to a peer from it.
pub fn relay_tcp_outgoing(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    Ok(bound(addr, Type::STREAM, Protocol::TCP, share_address)?.into())
}

/// A non-blocking socket bound to `addr` after `configure`. IPv6 sockets are v6-only, so each
/// family has sockets of its own and peers are never IPv4-mapped.
fn bound(
    addr: SocketAddr,
    kind: Type,
    protocol: Protocol,
    configure: impl FnOnce(&Socket) -> io::Result<()>,
) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    configure(&socket)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// SO_REUSEADDR + SO_REUSEPORT: several sockets on one address (workers, a TCP relay's
/// listener and its outgoing connections).
fn share_address(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)
}
