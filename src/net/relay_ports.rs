//! Relay sockets and their ports, shared by all workers: the free-port pool plus RFC 8656
//! reservations (EVEN-PORT with R bit: the odd port of an RTP/RTCP pair is held, bound, for a
//! later Allocate carrying the token, which may arrive on any worker). Locked when an allocation
//! starts or ends, and by each UDP worker's housekeeping tick to expire reservations.

use super::port_pool::PortPool;
use super::sockets;
use crate::turn::{PortRequest, RelayError};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long a reserved port waits for its Allocate (RFC 8656 §7.2 suggests about 30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Tries before giving up on finding a bindable port (some may be taken by other programs).
const BIND_ATTEMPTS: usize = 64;

struct Reservation {
    token: [u8; 8],
    socket: UdpSocket,
    port: u16,
    expires: Instant,
}

/// A bound relay socket and what it took from the pool.
pub struct OpenedRelay {
    pub socket: UdpSocket,
    pub local: SocketAddr,
    pub port: u16,
    pub reservation: Option<[u8; 8]>,
}

/// A bound TCP relay listener (RFC 6062) and the port it took from the pool.
pub struct OpenedTcpRelay {
    pub listener: std::net::TcpListener,
    pub local: SocketAddr,
    pub port: u16,
}

pub struct RelayPorts {
    pool: PortPool,
    reservations: Vec<Reservation>,
    buffer_size: usize,
}

impl RelayPorts {
    pub fn new(pool: PortPool, buffer_size: usize) -> Self {
        RelayPorts {
            pool,
            reservations: Vec::new(),
            buffer_size,
        }
    }

    pub fn free(&self) -> usize {
        self.pool.free()
    }

    pub fn release(&mut self, port: u16) {
        self.pool.give_back(port);
    }

    /// Binds a relay socket on `ip` as the request asks.
    pub fn open(
        &mut self,
        ip: IpAddr,
        request: PortRequest,
        now: Instant,
    ) -> Result<OpenedRelay, RelayError> {
        self.expire_reservations(now);
        match request {
            PortRequest::Reserved(token) => self.claim(ip, token),
            PortRequest::Any => self.bind_from_pool(ip, |pool| pool.take(false)),
            PortRequest::Even {
                reserve_next: false,
            } => self.bind_from_pool(ip, |pool| pool.take(true)),
            PortRequest::Even { reserve_next: true } => self.bind_pair(ip, now),
        }
    }

    /// Binds a TCP relay listener on `ip`, on any free port of the pool.
    pub fn open_tcp(&mut self, ip: IpAddr) -> Result<OpenedTcpRelay, RelayError> {
        for _ in 0..BIND_ATTEMPTS {
            let port = self.pool.take(false).ok_or(RelayError::NoPorts)?;
            let local = SocketAddr::new(ip, port);
            match sockets::relay_tcp_listener(local) {
                Ok(listener) => {
                    return Ok(OpenedTcpRelay {
                        listener,
                        local,
                        port,
                    })
                }
                Err(error) => {
                    debug!(%error, port, "TCP relay port not bindable");
                    self.pool.give_back(port);
                }
            }
        }
        warn!(%ip, "no bindable TCP relay port after {BIND_ATTEMPTS} attempts");
        Err(RelayError::NoPorts)
    }

    fn bind_from_pool(
        &mut self,
        ip: IpAddr,
        mut take: impl FnMut(&mut PortPool) -> Option<u16>,
    ) -> Result<OpenedRelay, RelayError> {
        for _ in 0..BIND_ATTEMPTS {
            let port = take(&mut self.pool).ok_or(RelayError::NoPorts)?;
            match self.bind(ip, port) {
                Some(socket) => return Ok(opened(socket, ip, port, None)),
                None => self.pool.give_back(port),
            }
        }
        warn!(%ip, "no bindable relay port after {BIND_ATTEMPTS} attempts");
        Err(RelayError::NoPorts)
    }

    fn bind_pair(&mut self, ip: IpAddr, now: Instant) -> Result<OpenedRelay, RelayError> {
        for _ in 0..BIND_ATTEMPTS {
            let (even, odd) = self.pool.take_pair().ok_or(RelayError::NoPorts)?;
            let (Some(socket), Some(reserved)) = (self.bind(ip, even), self.bind(ip, odd)) else {
                self.pool.give_back(even);
                self.pool.give_back(odd);
                continue;
            };
            let token = rand::random::<[u8; 8]>();
            let expires = now + RESERVATION_LIFETIME;
            self.reservations.push(Reservation {
                token,
                socket: reserved,
                port: odd,
                expires,
            });
            return Ok(opened(socket, ip, even, Some(token)));
        }
        Err(RelayError::NoPorts)
    }

    fn claim(&mut self, ip: IpAddr, token: [u8; 8]) -> Result<OpenedRelay, RelayError> {
        let position = self
            .reservations
            .iter()
            .position(|r| r.token == token && r.socket.local_addr().is_ok_and(|a| a.ip() == ip))
            .ok_or(RelayError::BadReservation)?;
        let reservation = self.reservations.swap_remove(position);
        Ok(opened(reservation.socket, ip, reservation.port, None))
    }

    /// Closes the reservations whose time is up and returns their ports to the pool. Runs before
    /// every `open`, and on the UDP workers' housekeeping tick, so an idle server does not keep
    /// reserved ports (and their sockets) past their lifetime.
    pub fn expire_reservations(&mut self, now: Instant) {
        let pool = &mut self.pool;
        self.reservations.retain(|reservation| {
            let live = reservation.expires > now;
            if !live {
                pool.give_back(reservation.port);
            }
            live
        });
    }

    fn bind(&self, ip: IpAddr, port: u16) -> Option<UdpSocket> {
        match sockets::relay_udp(SocketAddr::new(ip, port), self.buffer_size) {
            Ok(socket) => Some(socket),
            Err(error) => {
                debug!(%error, port, "relay port not bindable"); // taken by another program
                None
            }
        }
    }
}

fn opened(socket: UdpSocket, ip: IpAddr, port: u16, reservation: Option<[u8; 8]>) -> OpenedRelay {
    OpenedRelay {
        socket,
        local: SocketAddr::new(ip, port),
        port,
        reservation,
    }
}

/// A pool over `len` consecutive loopback ports that are free right now, starting even. Searched
/// below the ephemeral range and the integration tests' relay ranges (40000+), and from a
/// different place for each call, so parallel tests and servers don't collide with it.
#[cfg(test)]
pub(super) fn free_loopback_ports(len: u16) -> RelayPorts {
    use std::sync::atomic::{AtomicU16, Ordering};
    static CALLS: AtomicU16 = AtomicU16::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let mut base = 20_000 + (std::process::id() % 500) as u16 * 16 + call * 8;
    loop {
        let free = (base..base + len).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if free {
            return RelayPorts::new(PortPool::new(base, base + len - 1), 0);
        }
        base = if base > 29_000 { 20_000 } else { base + 16 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn reservation_holds_the_odd_port_for_its_token() {
        let mut relay_ports = free_loopback_ports(4);
        let now = Instant::now();
        let first = relay_ports
            .open(LOOPBACK, PortRequest::Even { reserve_next: true }, now)
            .unwrap();
        assert_eq!(first.port % 2, 0);
        let token = first.reservation.expect("a token");
        assert!(
            std::net::UdpSocket::bind((LOOPBACK, first.port + 1)).is_err(),
            "the reserved port is held bound"
        );
        assert!(matches!(
            relay_ports.open(LOOPBACK, PortRequest::Reserved([0; 8]), now),
            Err(RelayError::BadReservation)
        ));
        let second = relay_ports
            .open(LOOPBACK, PortRequest::Reserved(token), now)
            .unwrap();
        assert_eq!(second.port, first.port + 1);
        assert!(
            matches!(
                relay_ports.open(LOOPBACK, PortRequest::Reserved(token), now),
                Err(RelayError::BadReservation)
            ),
            "a token works once"
        );
    }

    #[test]
    fn unclaimed_reservation_expires_and_its_port_returns() {
        let mut relay_ports = free_loopback_ports(2);
        let now = Instant::now();
        let first = relay_ports
            .open(LOOPBACK, PortRequest::Even { reserve_next: true }, now)
            .unwrap();
        assert_eq!(relay_ports.free(), 0);
        let later = now + RESERVATION_LIFETIME + Duration::from_secs(1);
        let token = first.reservation.unwrap();
        assert!(relay_ports
            .open(LOOPBACK, PortRequest::Reserved(token), later)
            .is_err());
        assert_eq!(relay_ports.free(), 1, "the odd port is back in the pool");
    }

    /// Found by the soak (scripts/soak.sh): reservations expired only when another relay was
    /// opened, so an idle server kept reserved ports and their sockets past their lifetime.
    #[test]
    fn expired_reservation_returns_without_another_allocation() {
        let mut relay_ports = free_loopback_ports(2);
        let now = Instant::now();
        let first = relay_ports
            .open(LOOPBACK, PortRequest::Even { reserve_next: true }, now)
            .unwrap();
        drop(first.socket);
        relay_ports.expire_reservations(now + RESERVATION_LIFETIME - Duration::from_secs(1));
        assert!(
            std::net::UdpSocket::bind((LOOPBACK, first.port + 1)).is_err(),
            "held until its time is up"
        );
        relay_ports.expire_reservations(now + RESERVATION_LIFETIME);
        assert_eq!(relay_ports.free(), 1, "the odd port is back in the pool");
        assert!(
            std::net::UdpSocket::bind((LOOPBACK, first.port + 1)).is_ok(),
            "and its socket is closed"
        );
    }
}
