//! Relay sockets, for both halves of the I/O layer: the UDP workers (mio) and the stream
//! connections (tokio) open them here and only register the std socket with their own reactor.
//! Here the relay address is chosen ([`RelayPlan`]), ports come from the pool shared by every
//! worker and connection ([`RelayPorts`]: any port, EVEN-PORT, RESERVATION-TOKEN), and a port
//! goes back through one guard, [`Leased`], whose drop closes the socket and then returns it.
//! Touched when an allocation starts or ends, never per packet.

use super::addresses::RelayPlan;
use super::common::lock;
use super::relay_ports::RelayPorts;
use crate::stun::DATA_INDICATION_MAX_PREFIX;
use crate::turn::{
    AllocId, BoundRelay, Event, Family, Offload, OffloadKey, PortRequest, RelayError, RelayRequest,
    Server, Traffic,
};
use std::io;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::warn;

/// A buffer for one datagram from a peer: the largest UDP payload, with room in front for the
/// framing toward the client (ChannelData header or Data indication) and behind for padding, as
/// `turn::Server::handle_peer` frames it in place.
pub const DATAGRAM_BUFFER: usize = DATA_INDICATION_MAX_PREFIX + 65536 + 4;

/// Where relay sockets come from: the address plan and the shared port pool. Cheap to clone.
#[derive(Clone)]
pub(super) struct RelaySockets {
    ports: Arc<Mutex<RelayPorts>>,
    plan: Arc<RelayPlan>,
}

impl RelaySockets {
    pub fn new(ports: Arc<Mutex<RelayPorts>>, plan: Arc<RelayPlan>) -> Self {
        RelaySockets { ports, plan }
    }

    /// Returns the ports of expired reservations (EVEN-PORT with R) to the pool.
    pub fn expire_reservations(&self, now: Instant) {
        lock(&self.ports).expire_reservations(now);
    }

    /// A UDP relay socket of `family` for `request`, on the port `port` asks for.
    pub fn open_udp(
        &self,
        now: Instant,
        request: &RelayRequest,
        family: Family,
        port: PortRequest,
    ) -> Result<(BoundRelay, Leased<std::net::UdpSocket>), RelayError> {
        let reached = request.tuple.server.ip();
        let ip = self
            .plan
            .ip_for(family, reached)
            .ok_or(RelayError::FamilyUnsupported)?;
        let mut opened = lock(&self.ports).open(ip, port, now);
        if let (Err(RelayError::BadReservation), PortRequest::Reserved(_)) = (&opened, port) {
            // A token names its socket, whatever its family: the pair may have been reserved
            // by an IPv6 Allocate, and a token Allocate carries no family (RFC 8656 §7.2).
            if let Some(ip) = self.plan.ip_for(other(family), reached) {
                opened = lock(&self.ports).open(ip, port, now);
            }
        }
        let opened = opened?;
        let bound = BoundRelay {
            local: opened.local,
            reservation: opened.reservation,
        };
        Ok((bound, self.lease(opened.socket, opened.port)))
    }

    /// The listening socket of a TCP allocation's relayed address (RFC 6062), on any free port.
    pub fn open_tcp(
        &self,
        request: &RelayRequest,
    ) -> Result<(BoundRelay, Leased<std::net::TcpListener>), RelayError> {
        let ip = self
            .plan
            .ip_for(request.family, request.tuple.server.ip())
            .ok_or(RelayError::FamilyUnsupported)?;
        let opened = lock(&self.ports).open_tcp(ip)?;
        let bound = BoundRelay::from(opened.local);
        Ok((bound, self.lease(opened.listener, opened.port)))
    }

    fn lease<S>(&self, socket: S, port: u16) -> Leased<S> {
        Leased {
            socket,
            _lease: PortLease {
                port,
                ports: self.ports.clone(),
            },
        }
    }
}

/// The port a dual-stack allocation's additional relay takes: an even one if the first relay
/// asked for that, never a reserved pair.
pub(super) fn additional_port(port: PortRequest) -> PortRequest {
    match port {
        PortRequest::Even { .. } => PortRequest::Even {
            reserve_next: false,
        },
        _ => PortRequest::Any,
    }
}

fn other(family: Family) -> Family {
    match family {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    }
}

/// A relay socket and the pool port it holds. Dropping it closes the socket, then gives the
/// port back (fields drop in order).
pub(super) struct Leased<S> {
    socket: S,
    _lease: PortLease,
}

impl<S> Leased<S> {
    /// Hands the socket to a reactor (`register` turns the std socket into a mio or tokio one);
    /// if that fails, the port goes back at once.
    pub fn register<T>(
        self,
        register: impl FnOnce(S) -> io::Result<T>,
    ) -> Result<Leased<T>, RelayError> {
        let Leased { socket, _lease } = self;
        match register(socket) {
            Ok(socket) => Ok(Leased { socket, _lease }),
            Err(error) => {
                warn!(%error, "cannot register relay socket");
                Err(RelayError::NoPorts)
            }
        }
    }
}

impl<S> Deref for Leased<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.socket
    }
}

impl<S> DerefMut for Leased<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.socket
    }
}

/// A port taken from the pool; returned on drop.
struct PortLease {
    port: u16,
    ports: Arc<Mutex<RelayPorts>>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        lock(&self.ports).release(self.port);
    }
}

/// What the I/O side does with the core's events.
pub(super) trait RelayOwner {
    /// The allocation ended: close its relay sockets (their ports go back with them).
    fn release(&mut self, alloc: AllocId);
    /// RFC 6062 Connect: open a TCP connection from the allocation's relayed address to `peer`.
    fn connect_peer(&mut self, alloc: AllocId, peer: SocketAddr, connection_id: u32);
    /// A reload denies the peer of an RFC 6062 peer connection: close it (see
    /// [`Event::ClosePeerConnection`]). Only stream connections have TCP allocations.
    fn close_peer_connection(&mut self, _alloc: AllocId, _connection_id: u32) {}
    /// A channel or permission the kernel fast path may relay (UDP workers with it on only).
    fn offload(&mut self, _offload: &Offload) {}
    /// It may no longer; what the kernel relayed for it meanwhile.
    fn unoffload(&mut self, _alloc: AllocId, _what: OffloadKey) -> Option<Traffic> {
        None
    }
}

/// Carries out every event `server` has pending.
pub(super) fn apply_events(server: &mut Server, owner: &mut impl RelayOwner) {
    while let Some(event) = server.poll_event() {
        match event {
            Event::Released { alloc, .. } => owner.release(alloc),
            Event::ConnectPeer {
                alloc,
                peer,
                connection_id,
            } => owner.connect_peer(alloc, peer, connection_id),
            Event::ClosePeerConnection {
                alloc,
                connection_id,
            } => owner.close_peer_connection(alloc, connection_id),
            Event::Offload(offload) => owner.offload(&offload),
            Event::Unoffload { alloc, what } => {
                if let Some(traffic) = owner.unoffload(alloc, what) {
                    server.add_offloaded_traffic(alloc, traffic);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::relay_ports::free_loopback_ports;
    use crate::turn::{FiveTuple, RelayTransport, Transport};
    use std::net::IpAddr;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn request(port: PortRequest) -> RelayRequest {
        RelayRequest {
            alloc: AllocId {
                index: 0,
                generation: 0,
            },
            tuple: FiveTuple {
                client: "127.0.0.1:40000".parse().unwrap(),
                server: "127.0.0.1:3478".parse().unwrap(),
                transport: Transport::Tcp,
            },
            family: Family::V4,
            additional: None,
            port,
            transport: RelayTransport::Udp,
        }
    }

    #[test]
    fn a_reservation_is_claimed_whatever_family_the_claim_asks_for() {
        let ports = Arc::new(Mutex::new(free_loopback_ports(4)));
        let plan = RelayPlan {
            relay_ips: vec![],
            listening_ips: vec![ip("127.0.0.1"), ip("::1")],
        };
        let sockets = RelaySockets::new(ports.clone(), Arc::new(plan));
        let now = Instant::now();
        let pair = PortRequest::Even { reserve_next: true };
        let (even, first) = sockets
            .open_udp(now, &request(pair), Family::V4, pair)
            .unwrap();
        let token = even.reservation.expect("a token");
        // The reserved pair is IPv4; the claim looks on IPv6 first, then on the other family.
        let claim = PortRequest::Reserved(token);
        let (odd, second) = sockets
            .open_udp(now, &request(claim), Family::V6, claim)
            .unwrap();
        assert_eq!(
            odd.local,
            SocketAddr::new(ip("127.0.0.1"), even.local.port() + 1)
        );
        assert_eq!(lock(&ports).free(), 2);
        // Dropping a relay closes its socket and then gives its port back.
        drop(first);
        assert_eq!(lock(&ports).free(), 3);
        assert!(std::net::UdpSocket::bind(even.local).is_ok(), "closed");
        let registered = second.register(|socket| Ok(socket.local_addr()?.port()));
        assert_eq!(*registered.unwrap(), odd.local.port());
        assert_eq!(lock(&ports).free(), 4, "the socket went with its lease");
    }

    #[test]
    fn a_failed_registration_gives_the_port_back() {
        let ports = Arc::new(Mutex::new(free_loopback_ports(2)));
        let plan = RelayPlan {
            relay_ips: vec![],
            listening_ips: vec![ip("127.0.0.1")],
        };
        let sockets = RelaySockets::new(ports.clone(), Arc::new(plan));
        let any = PortRequest::Any;
        let (_, socket) = sockets
            .open_udp(Instant::now(), &request(any), Family::V4, any)
            .unwrap();
        assert_eq!(lock(&ports).free(), 1);
        let failed = socket.register(|_| -> io::Result<()> { Err(io::ErrorKind::Other.into()) });
        assert_eq!(failed.err(), Some(RelayError::NoPorts));
        assert_eq!(lock(&ports).free(), 2);
        // No relay address of the family: 440, nothing taken.
        assert_eq!(
            sockets
                .open_udp(Instant::now(), &request(any), Family::V6, any)
                .err(),
            Some(RelayError::FamilyUnsupported)
        );
    }
}
