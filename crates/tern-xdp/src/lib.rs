//! tern's kernel fast path: an XDP program that relays TURN traffic between a client and a peer
//! without waking user space, and the loader the server drives it with.
//!
//! # What is offloaded
//!
//! | arriving at tern | leaves as | needs |
//! | --- | --- | --- |
//! | ChannelData from a client to a listener | UDP from the relay address to the peer | a channel |
//! | Send indication from a client to a listener | UDP from the relay address to the peer | a permission |
//! | UDP from a peer to a relay address | ChannelData to the client | a channel to that peer address |
//! | UDP from a peer to a relay address | Data indication to the client | a permission for that peer IP |
//! | ChannelData or Send for another allocation's relay address | ChannelData or Data indication to that allocation's client | the other allocation's channel or permission for this one |
//!
//! IPv4 and IPv6 on either side, cross family included (an IPv4 client with an IPv6 relay address
//! and peer). The last row is two allocations of this tern talking (two browsers on one TURN
//! server, the most common call): the datagram never leaves the host, as it would not through
//! user space either, and behind a 1:1 NAT each side sees the other's advertised address
//! ([`Loopback`]). Everything else passes to user space unchanged (`XDP_PASS`): STUN requests,
//! unknown clients, channels and peers, IPv4 options and fragments, IPv6 extension headers,
//! GRO/GSO aggregates, Send indications whose DATA does not follow XOR-PEER-ADDRESS within the
//! first 128 bytes or that trail more than 15 bytes after it, ChannelData with more than 3 bytes
//! of padding, IPv4 datagrams without a UDP checksum bound for IPv6 (which would need a full
//! checksum), datagrams with a partial checksum (sent from this host through a veth with checksum
//! offload, below), datagrams that would exceed the egress MTU, and datagrams to an address nothing
//! has come from yet (next hops are learned, below): user space relays those as it always does.
//!
//! User space stays the authority. It installs an entry ([`FastPath::install`] and the
//! shorthands [`FastPath::install_channel`], [`FastPath::install_permission`]) only for a live
//! allocation with a live channel or permission, and removes it ([`FastPath::remove`]) when either
//! ends, on deletion, on a reload that now denies the peer and on drain; from then on the traffic
//! reaches user space again, which applies its rules. Allocations with a bandwidth cap are not
//! meant to be installed (the kernel path does not enforce caps). The allocation's traffic comes
//! from per-entry counters ([`FastPath::counters`], and the final ones from [`FastPath::remove`]);
//! the server's metrics from one global cell ([`FastPath::totals`]).
//!
//! # Maps
//!
//! Every address is stored as 16 bytes (IPv4 as `::ffff:a.b.c.d`), so two hash maps serve all
//! family combinations:
//!
//! - `from_client`: (client address and port, tern's listening address and port, channel or
//!   peer IP) → (relay address and port, peer address and port, counter slot, and for a peer that
//!   is another allocation's relay address, that address as bound here and this relay address as
//!   the other sees it). A channel entry has the channel and no peer IP; a permission entry the
//!   peer IP and no channel, the port coming from the Send indication's XOR-PEER-ADDRESS.
//! - `from_peer`: (relay address and port, peer address and port) → (client 5-tuple, channel,
//!   counter slot, flags). A channel entry has the peer port; a permission entry port 0 (any port)
//!   and channel 0, meaning "Data indication". The exact key is looked up first, so a channel
//!   wins. A permission for one of tern's own addresses passes only relay-range ports.
//! - `counters`: per-CPU array of packets and payload bytes per direction, indexed by the slot
//!   user space allocates per entry; summed over CPUs when read. The payload is what the peer
//!   receives or sent (the DATA value, the ChannelData data), as user space counts it. `totals`:
//!   the same summed over entries, one cell.
//! - `hops`: LRU hash of next hops by address (below); `interfaces`: the attached interfaces and
//!   how to send out of them; `outcomes`: per-CPU counts of why packets were or were not relayed
//!   ([`Outcomes`]).
//!
//! Map sizes come from the capacity given at attach time; one entry takes one slot and one
//! element of each hash map, and [`InstallError::Full`] says so when none is left.
//!
//! # Next hops: learned, not looked up
//!
//! Where a rewritten datagram goes on the wire is learned from the traffic: when a packet for an
//! installed entry arrives from an address (the client, the peer), the program remembers the
//! interface it came in on and its Ethernet addresses swapped (the neighbour that delivered it,
//! the host itself or its router, and our address on that link), writing only when that changes.
//! A datagram to an address nothing has come from yet goes to user space, which relays it through
//! the kernel stack; the answer teaches the hop, and the rest of the flow stays in the kernel. ICE
//! always answers, so this costs the first packet of each direction.
//!
//! This is the reverse path, as relays behind a single gateway use it. The alternative, the
//! kernel's FIB (`bpf_fib_lookup`), works only on interfaces with IP forwarding on
//! (`net.ipv4.conf.<if>.forwarding`, `net.ipv6.conf.<if>.forwarding`), which turns the host into a
//! router and, for IPv6, stops it accepting router advertisements: a TURN server is not a router,
//! so the fast path needs no sysctl. Where routes are asymmetric (policy routing that sends the
//! answer out of another interface than the request came in by), the learned hop is the way the
//! request came; hosts like that can set `fast-path = "off"`. Only packets matching an installed
//! entry teach hops, so a stranger cannot point one elsewhere without spoofing a permitted peer on
//! the local link, where ARP spoofing would do as much.
//!
//! Leaving: out of another interface by `bpf_redirect`; back out of the interface it came in on by
//! `XDP_TX` (client and peer behind the same interface: the usual single-NIC host), except on a
//! natively attached veth, where `XDP_TX` wakes the other end only if that end runs an XDP program
//! of its own (until then, the frames wait in its ring: IPv6 never arrived, IPv4 one wake-up late),
//! so the program redirects the frame to the interface itself, which always wakes the other end.
//! Frames a native veth sends still need NAPI on the other end (GRO on, or an XDP program), which
//! is why veth runs the program generically unless told otherwise ([`AttachPolicy::Native`]): on
//! the socket buffer, `XDP_TX` and redirects go out through the veth's own transmit path, which
//! needs nothing of the other end, at about the same cost in the tests' topology. A natively
//! attached interface redirects only to another native one.
//!
//! # Rewriting and checksums
//!
//! The payload never moves. The program saves what it needs from the old headers, moves the
//! packet head by the difference between the old and new header lengths (`bpf_xdp_adjust_head`)
//! and the tail by the difference in trailing bytes (ChannelData padding, attributes after DATA,
//! Ethernet minimum-frame padding, a Data indication's padding, zeroed by the kernel), then writes
//! Ethernet, IP, UDP and the TURN framing fresh. The IPv4 header checksum is computed over its 20
//! bytes. The UDP checksum is updated incrementally (RFC 1624) from the received one: remove the
//! old pseudo header, UDP header and removed TURN bytes, add the new ones. Every prefix added or
//! removed is a multiple of 4 bytes, so the payload keeps its 16-bit alignment and its share of
//! the sum. A received IPv4 datagram without checksum (0) stays without one when it leaves over
//! IPv4 and goes to user space when it would leave over IPv6, where the checksum is mandatory. The
//! Data indication's transaction ID comes from the kernel's PRNG.
//!
//! The incremental update needs the received checksum to be complete. Packets from the wire
//! always carry a complete one, but a process on the same host sending through a veth (another
//! namespace, a container on the same bridge) hands over a partial one (CHECKSUM_PARTIAL: only the
//! pseudo header's folded sum, for a NIC that never comes) unless that veth's transmit checksum
//! offload is off (`ethtool -K <veth> tx off`, as the tests and benchmarks set). XDP sees no
//! socket-buffer metadata, so the program recognises the value itself: a checksum equal to the
//! folded pseudo-header sum goes to user space, where the stack knows what it is
//! ([`Outcomes::partial_checksum`]). One complete checksum in 65536 matches by chance and is
//! relayed by user space instead: no harm done.
//!
//! # Attach modes
//!
//! [`Mode`] is the server's `fast-path` setting. The program attaches natively (in the driver)
//! where it can and generically (`xdpgeneric`, on the socket buffer) elsewhere and on veth
//! ([`AttachPolicy`]); [`FastPath::attached`] tells which. Dropping
//! the [`FastPath`] detaches it; the attachment is a BPF link, so it also goes when the process
//! dies. Loading needs CAP_BPF and CAP_NET_ADMIN (or root); without them, or on a kernel older
//! than 5.18 (`bpf_xdp_load_bytes`), `auto` falls back to user space with one warning line.
//!
//! Loopback is refused ([`Unavailable::Loopback`]), and no TC (`clsact`) variant stands in for
//! it: XDP sees only what arrives from a network, locally sent packets carry partial checksums
//! the incremental update cannot start from, and a relay whose clients and peers all sit on the
//! same host gains nothing from skipping one copy. Generic XDP attaches to every other kind of
//! interface, so there is no interface left for TC to serve.
//!
//! When clang or the BPF headers were missing at build time, the crate still builds and every
//! attach reports [`Unavailable::NotBuilt`].
//!
//! # Not here
//!
//! - Bandwidth caps: allocations with a cap stay in user space.
//! - TCP and TLS clients, RFC 6062 (TCP relays): the program handles UDP only.
//!
//! # Cost
//!
//! Two examples measure it roughly in the test topology (root; both a few seconds of bounded
//! load between namespaces):
//!
//! - `cargo run --release -p tern-xdp --example forward_rate`: the XDP program's own run time per
//!   relayed ChannelData packet (kernel BPF statistics) against the CPU time of a bare user-space
//!   recv/send relay thread. On the 2-core development machine (shared, loaded): about 0.2 to
//!   0.4 µs per packet for the program (next-hop lookup included, 2.5 to 5 Mpps per core for the
//!   program alone) against about 5.9 µs for the relay thread (~0.17 Mpps per core); the veth and
//!   softirq work both share is in neither figure.
//! - `cargo build --release && cargo run --release -p tern-xdp --example server_rate -- 16 40000 5`:
//!   the real tern binary with `fast-path = "off"` and `"required"`, 16 flows of 100-byte
//!   ChannelData echoed by a peer. At 40 000 relayed packets/s, tern's own CPU went from 7.7 µs
//!   per packet to nothing measurable, and its wake-ups (context switches of its threads) from
//!   0.18 per packet to 0.0001 (the 500 ms housekeeping tick). Unpaced (`16 0 5`), user space
//!   relayed 26 000 packets/s of 100 000 sent, the kernel path 90 000 (the single-threaded load
//!   generator's limit). The machine-wide CPU figures it also prints meant little on that machine,
//!   busy with other builds; `scripts/bench.sh` makes the comparison that counts.

mod fast_path;
mod maps;

pub use fast_path::{built, is_ethernet, is_loopback, AttachMode, FastPath};

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

/// The `fast-path` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Use the kernel path when it can be loaded; otherwise relay in user space (one warning).
    #[default]
    Auto,
    /// Relay in user space only.
    Off,
    /// Fail to start without the kernel path.
    Required,
}

impl Mode {
    /// The setting as written: `auto`, `off` or `required`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Off => "off",
            Mode::Required => "required",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Mode::Auto),
            "off" => Ok(Mode::Off),
            "required" => Ok(Mode::Required),
            other => Err(format!(
                "fast-path = {other:?}: expected \"auto\", \"off\" or \"required\""
            )),
        }
    }
}

/// Why the fast path is not running.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("fast path not built: {0}")]
    NotBuilt(&'static str),
    #[error("not permitted to load BPF programs (needs CAP_BPF and CAP_NET_ADMIN): {0}")]
    NotPermitted(String),
    #[error("the kernel refused the fast path program: {0}")]
    Load(String),
    #[error("cannot attach to {interface}: {reason}")]
    Attach { interface: String, reason: String },
    #[error("{0} is a loopback interface, which the fast path does not serve (XDP sees only packets that arrive from a network, and locally sent ones carry partial checksums)")]
    Loopback(String),
    #[error("no interface to attach to")]
    NoInterface,
}

impl Unavailable {
    fn from_load_error(error: &(dyn std::error::Error + 'static)) -> Self {
        let text = error_chain(error);
        let mut source = Some(error);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
                    && !text.contains("verifier")
                {
                    return Unavailable::NotPermitted(text);
                }
            }
            source = e.source();
        }
        Unavailable::Load(text)
    }
}

/// Why an entry could not be installed or read.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the fast path holds its capacity of {capacity} entries")]
    Full { capacity: usize },
    #[error("relay address {relay} and peer {peer} are of different families")]
    FamilyMismatch { relay: SocketAddr, peer: IpAddr },
    #[error("channel number {0:#06x} is outside 0x4000..=0x4fff")]
    BadChannel(u16),
    #[error("that channel is installed for another peer")]
    Conflict,
    #[error("no such entry")]
    UnknownEntry,
    #[error("kernel map operation failed: {0}")]
    Kernel(String),
}

impl InstallError {
    fn kernel(error: impl std::error::Error + 'static) -> Self {
        let text = error_chain(&error);
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.raw_os_error() == Some(libc::E2BIG) {
                    // The caller knows the capacity and fills it in.
                    return InstallError::Full { capacity: 0 };
                }
            }
            source = e.source();
        }
        InstallError::Kernel(text)
    }
}

/// The client side of an allocation over UDP: the client's address as tern sees it, and tern's
/// listening address it sends to (as on the wire at this host: behind a 1:1 NAT, the private one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// What to attach and how big to make the maps.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Interfaces to attach to (by name): those tern's clients and peers reach it through.
    pub interfaces: Vec<String>,
    /// Entries (channels plus permissions) the maps hold; one more is [`InstallError::Full`].
    pub capacity: u32,
    /// The relay port range (`min-port..=max-port`): a permission for one of tern's own
    /// addresses passes only datagrams from these ports, as user space's does.
    pub relay_ports: RangeInclusive<u16>,
    /// Natively or generically; see [`AttachPolicy`].
    pub attach: AttachPolicy,
}

/// Where the program runs on each interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachPolicy {
    /// In the driver where it can, except on veth, which runs it generically: natively, frames
    /// the program sends into a veth arrive only if the other end has GRO on or an XDP program of
    /// its own, which this end can neither see nor set; generically, they take the stack's way.
    #[default]
    Auto,
    /// In the driver wherever it can, veth included (their other ends have GRO on or a program).
    Native,
    /// On the socket buffer (`xdpgeneric`) everywhere.
    Generic,
}

/// One channel or permission to relay in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tuple: ClientTuple,
    /// The allocation's relay address of the peer's family, as its socket is bound here.
    pub relay: SocketAddr,
    pub kind: EntryKind,
    /// The peer is one of tern's own addresses: datagrams from it pass only from relay-range
    /// ports ([`Settings::relay_ports`]).
    pub relay_ports_only: bool,
    /// The peer is another allocation's relay address on this host: its client gets the data
    /// straight from the kernel, if that allocation has a channel or permission for this one.
    pub loopback: Option<Loopback>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// ChannelData on `number` to `peer`, and `peer`'s datagrams back as ChannelData.
    Channel { number: u16, peer: SocketAddr },
    /// Send indications to any port of `peer`, and its datagrams back as Data indications
    /// (unless a channel to that port exists, which then wins).
    Permission { peer: IpAddr },
}

impl EntryKind {
    pub fn peer_ip(&self) -> IpAddr {
        match self {
            EntryKind::Channel { peer, .. } => peer.ip(),
            EntryKind::Permission { peer } => *peer,
        }
    }
}

/// The peer is another allocation's relay address on this tern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loopback {
    /// The peer's address as its relay socket is bound here (behind a 1:1 NAT, the private
    /// address the peer's advertised public one maps to).
    pub peer_relay_ip: IpAddr,
    /// This entry's relay address as the other allocation sees it (its advertised address).
    pub self_ip: IpAddr,
}

/// One installed channel or permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryId {
    slot: u32,
    generation: u32,
}

/// What the kernel relayed for one entry, summed over CPUs. Bytes are payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

/// Packets seen by the program since attach, by what became of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Rewritten and sent on by the kernel.
    pub relayed: u64,
    /// Not UDP over IP, or no entry matched: user space's traffic.
    pub not_ours: u64,
    /// A shape the program leaves to user space (options, fragments, odd lengths).
    pub unsupported: u64,
    /// Nothing has come from the destination yet, so no next hop is known.
    pub no_hop: u64,
    /// The rewritten packet would exceed the egress interface's MTU.
    pub too_big: u64,
    /// An IPv4 datagram without checksum that would leave over IPv6.
    pub no_checksum: u64,
    /// The driver refused to move the packet's head or tail.
    pub adjust_failed: u64,
    /// Sent on this host with transmit checksum offload (a veth from another namespace or a
    /// container): its UDP checksum covers only the pseudo header.
    pub partial_checksum: u64,
}

/// `error: source: source...`, for one log line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
