//! The vocabulary the state machine and the I/O layer share: who a client is, what to send,
//! what to bind, what happened. Every sibling module takes its types from here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How the client reaches us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Streams pad ChannelData to a multiple of 4 bytes (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// Client address, our address and transport: what identifies an allocation (RFC 8656 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Names an allocation; the generation tells a reused slot from the allocation that had it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocId {
    pub index: usize,
    pub generation: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Family {
        Family::of_ip(&addr.ip())
    }

    pub fn of_ip(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// 0 for IPv4, 1 for IPv6: where per-family state sits in two-element arrays.
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// The family byte of REQUESTED-ADDRESS-FAMILY and friends (RFC 8656 §18.1).
    pub(crate) fn wire(self) -> u8 {
        match self {
            Family::V4 => 0x01,
            Family::V6 => 0x02,
        }
    }

    pub(crate) fn from_wire(byte: u8) -> Option<Family> {
        match byte {
            0x01 => Some(Family::V4),
            0x02 => Some(Family::V6),
            _ => None,
        }
    }
}

/// What an allocation relays to peers: UDP datagrams (RFC 8656) or TCP connections (RFC 6062).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelayTransport {
    Udp,
    Tcp,
}

/// The I/O layer is asked to bind a relay socket (two for a dual-stack allocation), then calls
/// [`Server::relay_bound`](super::Server::relay_bound) with one result per family asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayRequest {
    pub alloc: AllocId,
    pub tuple: FiveTuple,
    /// The family of the relay the allocation needs (REQUESTED-ADDRESS-FAMILY, IPv4 by default).
    pub family: Family,
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7.2): a second relay of this family (IPv6) is
    /// wanted too. The allocation succeeds if either can be bound.
    pub additional: Option<Family>,
    /// Applies to the `family` relay; the additional one takes any port.
    pub port: PortRequest,
    /// A UDP socket, or for [`RelayTransport::Tcp`] a TCP listening socket whose port outgoing
    /// peer connections share (RFC 6062 §5.1). Only stream clients get TCP.
    pub transport: RelayTransport,
}

/// Which relay port an Allocate asks for (RFC 8656 §7.2, EVEN-PORT and RESERVATION-TOKEN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRequest {
    Any,
    /// An even port; with `reserve_next`, the next port is held for a later Allocate.
    Even {
        reserve_next: bool,
    },
    /// The port held under this token by an earlier EVEN-PORT allocation.
    Reserved([u8; 8]),
}

/// A relay socket the I/O layer bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundRelay {
    pub local: SocketAddr,
    /// Token for the reserved next port, when one was asked for.
    pub reservation: Option<[u8; 8]>,
}

impl From<SocketAddr> for BoundRelay {
    fn from(local: SocketAddr) -> Self {
        BoundRelay {
            local,
            reservation: None,
        }
    }
}

/// Why the I/O layer could not bind a relay socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayError {
    /// No relay address of the requested family (→ 440).
    FamilyUnsupported,
    /// No free port in the range (→ 508).
    NoPorts,
    /// The reservation token is unknown or expired (→ 508).
    BadReservation,
}

/// What to do after an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    Nothing,
    /// Send `data` to the client over `tuple`.
    ToClient {
        tuple: FiveTuple,
        data: &'a [u8],
    },
    /// Send `data` to `peer` from the allocation's relay socket of `peer`'s family
    /// ([`Family::of`]`(&peer)`; a dual-stack allocation has one of each).
    ToPeer {
        alloc: AllocId,
        peer: SocketAddr,
        data: &'a [u8],
    },
    /// Bind a relay socket for a new allocation.
    BindRelay(RelayRequest),
}

/// Things the I/O layer must learn about outside of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The allocation ended: close its relay sockets and return their ports.
    Released {
        alloc: AllocId,
        /// Local addresses of its relay sockets, by [`Family::index`].
        relays: [Option<SocketAddr>; 2],
    },
    /// A Connect request (RFC 6062 §5.2) passed the checks: open a TCP connection from the
    /// allocation's relayed address to `peer` (giving up after 30 s), then call
    /// [`Server::connect_result`](super::Server::connect_result) with `connection_id`.
    ConnectPeer {
        alloc: AllocId,
        peer: SocketAddr,
        connection_id: u32,
    },
    /// A reloaded configuration denies the peer of RFC 6062 peer connection `connection_id`:
    /// close it, waiting for its ConnectionBind or spliced with its data connection (then the
    /// data connection too). One still connecting is given up: report it to
    /// [`Server::connect_result`](super::Server::connect_result) as not connected, and the
    /// Connect is answered 403.
    ClosePeerConnection { alloc: AllocId, connection_id: u32 },
    /// A channel or permission became live on an allocation whose traffic may be relayed outside
    /// the server (a UDP client's UDP allocation, with no bandwidth limit configured): the I/O
    /// layer may relay it itself (the kernel fast path) until [`Event::Unoffload`] names it or
    /// [`Event::Released`] ends the allocation. Emitted only while offloading is on
    /// ([`Server::set_offload`](super::Server::set_offload)). A channel is announced only while
    /// its peer's permission lives, as only then does the server relay it.
    Offload(Offload),
    /// What [`Event::Offload`] announced ended (expiry, a reload that denies the peer or sets a
    /// bandwidth limit; for a channel, also its permission's end): its traffic must reach the
    /// server again. May name what is not (or no longer) offloaded. Whatever was relayed outside
    /// meanwhile goes to [`Server::add_offloaded_traffic`](super::Server::add_offloaded_traffic).
    Unoffload { alloc: AllocId, what: OffloadKey },
}

/// A channel or permission the I/O layer may relay itself ([`Event::Offload`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offload {
    pub alloc: AllocId,
    pub tuple: FiveTuple,
    /// The allocation's relay socket of the peer's family, as bound.
    pub relay: SocketAddr,
    /// The same as clients see it (`external-ip`), which another allocation of this server
    /// would name as its peer.
    pub advertised: SocketAddr,
    pub what: Offloaded,
    /// The peer is one of the host's own addresses: its datagrams pass only from relay-range
    /// ports (`PeerPolicy::relay_ports_only`).
    pub relay_ports_only: bool,
}

/// What is offloaded: a channel (ChannelData to one peer transport address, and that address's
/// datagrams back as ChannelData) or a permission (Send indications to any port of the peer IP,
/// and its datagrams back as Data indications).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Offloaded {
    Channel { number: u16, peer: SocketAddr },
    Permission { peer: IpAddr },
}

impl Offloaded {
    pub fn key(&self) -> OffloadKey {
        match *self {
            Offloaded::Channel { number, .. } => OffloadKey::Channel(number),
            Offloaded::Permission { peer } => OffloadKey::Permission(peer),
        }
    }
}

/// Names an allocation's channel (by number) or permission (by peer IP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OffloadKey {
    Channel(u16),
    Permission(IpAddr),
}

/// The I/O layer's registry of peer TCP connections waiting for their ConnectionBind (RFC 6062
/// §5.4). It is shared by every client connection, since the data connection is a different
/// connection from the control connection that owns the allocation.
pub trait ConnectionLookup {
    /// The username of the allocation that owns pending connection `id`, and the client address
    /// of its control connection (whose nonce the data connection may reuse).
    fn pending(&self, id: u32) -> Option<(Box<str>, SocketAddr)>;
    /// Takes pending connection `id` for this data connection; false if it is gone (bound by
    /// another data connection, timed out, or its allocation ended).
    fn claim(&mut self, id: u32) -> bool;
}

/// How long a peer TCP connection waits for its ConnectionBind, and how long a Connect may take
/// to reach the peer (RFC 6062 §5.2, §5.3: 30 s). The I/O layer enforces both.
pub const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// Peer TCP connections (pending and spliced) one TCP allocation may have at once: a Connect
/// beyond it is 508, a peer connecting beyond it is closed.
pub const MAX_PEER_CONNECTIONS: usize = 128;
