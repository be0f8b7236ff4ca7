//! The kernel maps' keys and values, laid out exactly as in `bpf/relay.bpf.c`.
//!
//! Addresses are 16 bytes (IPv4 as `::ffff:a.b.c.d`) and ports and channel numbers are in network
//! order, as the program reads them off the wire; `slot` is host order.

use std::net::{IpAddr, SocketAddr};

/// Names of the maps in the object.
pub const FROM_CLIENT: &str = "from_client";
pub const FROM_PEER: &str = "from_peer";
pub const COUNTERS: &str = "counters";
pub const TOTALS: &str = "totals";
pub const OUTCOMES: &str = "outcomes";
pub const HOPS: &str = "hops";
pub const INTERFACES: &str = "interfaces";

/// Globals of the program, set at load.
pub const RELAY_PORT_MIN: &str = "relay_port_min";
pub const RELAY_PORT_MAX: &str = "relay_port_max";

/// `interfaces` flags.
pub const INTERFACE_NATIVE: u32 = 1;
pub const INTERFACE_TX_BY_REDIRECT: u32 = 2;

/// `ToClient::flags`: the peer is one of tern's own addresses, relay-range ports only.
pub const TO_CLIENT_RELAY_PORTS_ONLY: u16 = 1;

/// An address as the program stores it.
pub fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Key of `from_client`: a datagram from a client to tern's listener carrying ChannelData on
/// `channel` (`peer_ip` zero) or a Send indication to `peer_ip` (`channel` zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub client_ip: [u8; 16],
    pub server_ip: [u8; 16],
    pub peer_ip: [u8; 16],
    pub client_port: [u8; 2],
    pub server_port: [u8; 2],
    pub channel: [u8; 2],
    pub pad: u16,
}

/// Value of `from_client`: where the payload goes, and from where. `loop_relay_ip` and
/// `loop_self_ip` are set when the peer is another allocation's relay address on this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToPeer {
    pub relay_ip: [u8; 16],
    pub peer_ip: [u8; 16],
    pub loop_relay_ip: [u8; 16],
    pub loop_self_ip: [u8; 16],
    pub relay_port: [u8; 2],
    pub peer_port: [u8; 2],
    pub slot: u32,
}

/// Key of `from_peer`: a datagram from a peer to a relay address; `peer_port` zero for a
/// permission (any port of the peer).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub relay_ip: [u8; 16],
    pub peer_ip: [u8; 16],
    pub relay_port: [u8; 2],
    pub peer_port: [u8; 2],
}

/// Value of `from_peer`: the client to frame the datagram for; `channel` zero for a Data
/// indication.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToClient {
    pub client_ip: [u8; 16],
    pub server_ip: [u8; 16],
    pub client_port: [u8; 2],
    pub server_port: [u8; 2],
    pub channel: [u8; 2],
    pub flags: u16,
    pub slot: u32,
}

/// One per-CPU value of `counters`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawCounters {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

impl ClientKey {
    pub fn new(
        client: SocketAddr,
        server: SocketAddr,
        channel: u16,
        peer_ip: Option<IpAddr>,
    ) -> Self {
        Self {
            client_ip: ip_bytes(client.ip()),
            server_ip: ip_bytes(server.ip()),
            peer_ip: peer_ip.map(ip_bytes).unwrap_or_default(),
            client_port: client.port().to_be_bytes(),
            server_port: server.port().to_be_bytes(),
            channel: channel.to_be_bytes(),
            pad: 0,
        }
    }
}

impl PeerKey {
    pub fn new(relay: SocketAddr, peer_ip: IpAddr, peer_port: u16) -> Self {
        Self {
            relay_ip: ip_bytes(relay.ip()),
            peer_ip: ip_bytes(peer_ip),
            relay_port: relay.port().to_be_bytes(),
            peer_port: peer_port.to_be_bytes(),
        }
    }
}

mod pod {
    // SAFETY: plain `repr(C)` structs of integers and byte arrays with no implicit padding (their
    // sizes are asserted below), so every byte pattern is valid and none is uninitialised.
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::ToPeer {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::ToClient {}
    unsafe impl aya::Pod for super::RawCounters {}
}

// The C layouts' sizes; a mismatch would make the kernel reject every map operation.
const _: () = assert!(std::mem::size_of::<ClientKey>() == 56);
const _: () = assert!(std::mem::size_of::<ToPeer>() == 72);
const _: () = assert!(std::mem::size_of::<PeerKey>() == 36);
const _: () = assert!(std::mem::size_of::<ToClient>() == 44);
const _: () = assert!(std::mem::size_of::<RawCounters>() == 32);
