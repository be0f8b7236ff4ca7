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
//!
//! IPv4 and IPv6 on either side, cross family included (an IPv4 client with an IPv6 relay address
//! and peer). Everything else passes to user space unchanged (`XDP_PASS`): STUN requests, unknown
//! clients, channels and peers, IPv4 options and fragments, IPv6 extension headers, GRO/GSO
//! aggregates, Send indications whose DATA does not follow XOR-PEER-ADDRESS within the first 128
//! bytes or that trail more than 15 bytes after it, ChannelData with more than 3 bytes of padding,
//! IPv4 datagrams without a UDP checksum bound for IPv6 (which would need a full checksum), and
//! anything the kernel's FIB cannot route right now (no neighbour entry yet, MTU exceeded, a peer
//! on tern's own addresses): user space relays those as it always does.
//!
//! User space stays the authority. It installs an entry ([`FastPath::install_channel`],
//! [`FastPath::install_permission`]) only for a live allocation with a live channel or permission,
//! and removes it ([`FastPath::remove`]) when either ends, on deletion, on a reload that now
//! denies the peer and on drain; from then on the traffic reaches user space again, which applies
//! its rules. Allocations with a bandwidth cap are not meant to be installed (the kernel path does
//! not enforce caps). Quotas and metrics come from per-entry counters ([`FastPath::counters`],
//! and the final ones from [`FastPath::remove`]).
//!
//! # Maps
//!
//! Every address is stored as 16 bytes (IPv4 as `::ffff:a.b.c.d`), so two hash maps serve all
//! family combinations:
//!
//! - `from_client`: (client address and port, tern's listening address and port, channel or
//!   peer IP) → (relay address and port, peer address and port, counter slot). A channel entry has
//!   the channel and no peer IP; a permission entry the peer IP and no channel, the port coming
//!   from the Send indication's XOR-PEER-ADDRESS.
//! - `from_peer`: (relay address and port, peer address and port) → (client 5-tuple, channel,
//!   counter slot). A channel entry has the peer port; a permission entry port 0 (any port) and
//!   channel 0, meaning "Data indication". The exact key is looked up first, so a channel wins.
//! - `counters`: per-CPU array of packets and payload bytes per direction, indexed by the slot
//!   user space allocates per entry; summed over CPUs when read. The payload is what the peer
//!   receives or sent (the DATA value, the ChannelData data), as user space counts it.
//! - `outcomes`: per-CPU counts of why packets were or were not relayed ([`Outcomes`]).
//!
//! Map sizes come from the capacity given at attach time; one entry takes one slot and one
//! element of each hash map, and [`InstallError::Full`] says so when none is left.
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
//! The next hop comes from the kernel FIB (`bpf_fib_lookup`): `XDP_TX` when it leaves by the
//! interface it came in on, `XDP_REDIRECT` to the other interface otherwise. That helper refuses
//! to work unless the ingress interface forwards, so attaching checks
//! `net.ipv4.conf.<if>.forwarding` and `net.ipv6.conf.<if>.forwarding` and reports
//! [`Unavailable::ForwardingDisabled`]. Senders' checksums must be complete: packets from the wire
//! always are; veth peers in tests need transmit checksum offload off.
//!
//! # Attach modes
//!
//! [`Mode`] is the server's `fast-path` setting. The program attaches natively (in the driver)
//! where it can and generically (`xdpgeneric`, on the socket buffer) elsewhere, such as `lo`;
//! [`FastPath::attached`] tells which. `XDP_REDIRECT` to a veth needs its peer to run NAPI (GRO
//! on, or an XDP program). Dropping the [`FastPath`] detaches it. Loading needs CAP_BPF and
//! CAP_NET_ADMIN (or root); without them, or on a kernel older than 5.18 (`bpf_xdp_load_bytes`),
//! `auto` falls back to user space with one warning line.
//!
//! When clang or the BPF headers were missing at build time, the crate still builds and every
//! attach reports [`Unavailable::NotBuilt`].
//!
//! # Not (yet) here
//!
//! - A TC (`clsact`) variant for interfaces where XDP cannot attach: generic XDP attaches
//!   everywhere this was tried, `lo` included, but locally sent packets on `lo` carry partial
//!   checksums (CHECKSUM_PARTIAL), which the incremental update cannot start from; traffic over
//!   `lo` is therefore not a target of this path and is untested.
//! - Relaying between two allocations of the same tern (peer address = one of tern's relay
//!   addresses): the FIB reports a local route and the packet goes to user space.
//! - Bandwidth caps: allocations with a cap are meant to stay in user space.
//! - Open: out of the interface it came in on (`XDP_TX`: client and peer behind the same
//!   interface, the usual single-NIC host) is untested. A first veth test saw the rewritten frame
//!   reach the far veth and be dropped before IP (IPv6 always, IPv4 intermittently); not yet
//!   understood, so it is not claimed to work. Across interfaces (`XDP_REDIRECT`) is tested.
//!
//! # Cost
//!
//! `examples/forward_rate.rs` measures it roughly in the test topology. On the 2-core development
//! machine (shared, loaded): the XDP program ran about 400 ns per relayed ChannelData packet
//! (kernel BPF statistics, FIB lookup included, ~2.5 Mpps per core for the program alone), against
//! about 6.5 µs of CPU per packet for a user-space recv/send relay thread (~0.15 Mpps per core);
//! the veth and softirq work both share is in neither figure.

mod fast_path;
mod maps;

pub use fast_path::{built, AttachMode, FastPath};

use std::net::{IpAddr, SocketAddr};

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
    #[error("{sysctl} is 0: the kernel's FIB lookup for the fast path needs it set to 1")]
    ForwardingDisabled { sysctl: String },
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
    /// The FIB had no route or neighbour for the rewritten packet (or it would exceed the MTU).
    pub no_route: u64,
    /// An IPv4 datagram without checksum that would leave over IPv6.
    pub no_checksum: u64,
    /// The driver refused to move the packet's head or tail.
    pub adjust_failed: u64,
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
