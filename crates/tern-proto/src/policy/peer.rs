//! Which peer addresses a relay may talk to.
//!
//! How embedded IPv4 addresses are judged (the decisions behind [`normalize`] and
//! [`PeerPolicy::permits`]):
//! - Every IPv6 form that carries an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) is
//!   judged against the default denied set *by that IPv4 address only*, because that is the host
//!   the relay's packets finally reach (through a dual-stack socket, a NAT64 gateway or a
//!   6to4/Teredo tunnel). So a 6to4 or NAT64 address wrapping 10.0.0.1 is denied, and one wrapping
//!   8.8.8.8 is permitted, although 2002::/16 is not in the default list and 64:ff9b::/96 is.
//!   Every 64:ff9b::/96 address reduces to IPv4, so that default entry never decides a peer; it
//!   stays in [`default_denied`] for the operator's view of the list.
//! - The operator's own `allowed`/`denied` ranges are checked against both the original spelling
//!   and the IPv4 address it carries, so `denied = 2002::/16` blocks all 6to4 peers and
//!   `allowed = 2002::/16` lets them all through.
//! - An operator range written entirely as IPv4-mapped addresses (`::ffff:10.0.0.5`) also applies
//!   to the plain IPv4 address, since that is just another spelling of it.
//!
//! tern's own host ([`PeerPolicy::with_host`]): a peer that is one of the host's addresses (every
//! interface address, the listening, relay and HTTP addresses, external-ip, and all of loopback)
//! reaches whatever listens there, tern's own listeners and the operator's services on `0.0.0.0`
//! included. Such a peer is reachable only at a port of tern's relay range (relay to relay: two
//! allocations on one tern, the most common call), unless the operator opened that address
//! specifically: an `allowed-peer-ip` entry naming exactly it, or `allow-loopback-peers` for
//! loopback. A range that merely covers it (`allowed-peer-ip = 10.0.0.0/8` on a host at 10.0.0.5)
//! does not open the host's own services. Permissions are per IP (RFC 8656 §9), so the port is
//! judged where one exists: ChannelBind, Send, Connect, and each datagram from such a peer.

use super::IpRange;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The peer filter. Denied unless allowed; allow beats deny, except for the never-allowed set
/// (0.0.0.0/8 and `::`). Addresses are normalised first, so every spelling of an embedded IPv4
/// address is judged as that IPv4 address (see the module docs for operator IPv6 ranges).
#[derive(Clone, Debug)]
pub struct PeerPolicy {
    /// Operator-allowed ranges.
    allowed: RangeSet,
    /// The operator-allowed entries that name a single address: they open one of the host's own
    /// addresses at every port.
    named: RangeSet,
    /// The host's own addresses (normalised); loopback counts as own without being listed.
    own: RangeSet,
    /// tern's relay port range: the ports at which an own address stays reachable.
    relay_ports: (u16, u16),
    /// The default denied set plus the operator's; checked against the normalised address.
    denied: RangeSet,
    /// The operator's denied ranges only; checked against the original spelling of an embedded
    /// IPv4 address (so the default 64:ff9b::/96 entry does not block NAT64 to public hosts).
    operator_denied: RangeSet,
    allow_loopback: bool,
}

impl PeerPolicy {
    /// `denied` is added to [`default_denied`]; `allow_loopback` allows 127/8 and ::1.
    pub fn new(denied: &[IpRange], allowed: &[IpRange], allow_loopback: bool) -> Self {
        let defaults = default_denied();
        let named: Vec<IpRange> = allowed
            .iter()
            .filter(|range| range.start == range.end)
            .copied()
            .collect();
        Self {
            allowed: RangeSet::new(allowed),
            named: RangeSet::new(&named),
            own: RangeSet::default(),
            relay_ports: (0, u16::MAX),
            denied: RangeSet::new(defaults.iter().chain(denied)),
            operator_denied: RangeSet::new(denied),
            allow_loopback,
        }
    }

    /// Knows the host: `own` are its addresses (any spelling; loopback is always own), and
    /// `relay_ports` (`min-port`, `max-port`) the ports at which an own address stays reachable.
    pub fn with_host(mut self, own: &[IpAddr], relay_ports: (u16, u16)) -> Self {
        let own: Vec<IpRange> = own
            .iter()
            .map(|ip| {
                let ip = normalize(*ip);
                IpRange { start: ip, end: ip }
            })
            .collect();
        self.own = RangeSet::new(&own);
        self.relay_ports = relay_ports;
        self
    }

    /// Whether `peer` is one of the host's own addresses that the operator did not open: such a
    /// peer is reachable only at a relay port ([`PeerPolicy::permits_transport`]). Judged once
    /// per permission and kept with it, so the data path only compares a port.
    pub fn relay_ports_only(&self, peer: IpAddr) -> bool {
        let carried = normalize(peer);
        let own = carried.is_loopback() || self.own.contains(carried);
        if !own || (self.allow_loopback && carried.is_loopback()) {
            return false;
        }
        !(self.named.contains(carried) || self.named.contains(peer))
    }

    /// Whether `port` lies in tern's relay port range.
    pub fn is_relay_port(&self, port: u16) -> bool {
        (self.relay_ports.0..=self.relay_ports.1).contains(&port)
    }

    /// The verdict on a peer transport address (ChannelBind, Send, Connect): the address must be
    /// permitted ([`PeerPolicy::permits`]), and one of the host's own only at a relay port.
    pub fn judge(&self, peer: SocketAddr) -> Verdict {
        if !self.permits(peer.ip()) {
            Verdict::Denied
        } else if self.relay_ports_only(peer.ip()) && !self.is_relay_port(peer.port()) {
            Verdict::OwnHost
        } else {
            Verdict::Permitted
        }
    }

    /// Called per CreatePermission, ChannelBind and Send indication: no allocation, a few binary
    /// searches.
    pub fn permits(&self, peer: IpAddr) -> bool {
        self.denial(peer).is_none()
    }

    /// Why `peer` is denied, or `None` when it is permitted (the decision [`Self::permits`]
    /// takes).
    pub fn denial(&self, peer: IpAddr) -> Option<Denial> {
        let carried = normalize(peer);
        // The original spelling differs only for IPv6 forms carrying an IPv4 address.
        let embedded = carried != peer;
        if is_never_allowed(carried) {
            return Some(Denial::NeverAllowed);
        }
        if self.allowed.contains(carried) || (embedded && self.allowed.contains(peer)) {
            return None;
        }
        if carried.is_loopback() {
            return (!self.allow_loopback).then_some(Denial::Loopback);
        }
        if self.operator_denied.contains(carried)
            || (embedded && self.operator_denied.contains(peer))
        {
            return Some(Denial::Operator);
        }
        if self.denied.contains(carried) {
            return Some(Denial::SpecialPurpose);
        }
        None
    }
}

/// What the policy says of a peer transport address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Permitted,
    /// Refused by the denied ranges (or never allowed).
    Denied,
    /// One of tern's own addresses at a port outside the relay range.
    OwnHost,
}

/// Why the peer policy denies an address: what an operator reads to know which key changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// 0.0.0.0/8 or `::`: never a valid destination, whatever the configuration.
    NeverAllowed,
    /// 127.0.0.0/8 or ::1, denied unless `allow-loopback-peers`.
    Loopback,
    /// In a private, shared, link-local, documentation or other special-purpose range of the
    /// default denied list ([`default_denied`]), unless `allowed-peer-ip` lists it.
    SpecialPurpose,
    /// In the operator's `denied-peer-ip`.
    Operator,
}

/// The range of the default denied list (as written there) that holds `ip` after
/// [`normalize`], to name it in a log line.
pub fn default_denied_range(ip: IpAddr) -> Option<&'static str> {
    let carried = normalize(ip);
    DEFAULT_DENIED.iter().copied().find(|cidr| {
        cidr.parse::<IpRange>()
            .is_ok_and(|range| RangeSet::new([&range]).contains(carried))
    })
}

/// 0.0.0.0/8 ("this network") and `::` are never valid destinations, whatever the operator allows.
fn is_never_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 0,
        IpAddr::V6(v6) => v6.is_unspecified(),
    }
}

/// The secure-default denied set: IANA special-purpose, private, shared, loopback, link-local,
/// documentation, benchmarking, multicast and reserved blocks, and the cloud platforms' metadata
/// and host services (most of which already sit in one of those blocks; listed so the operator
/// sees them named).
pub fn default_denied() -> Vec<IpRange> {
    DEFAULT_DENIED
        .iter()
        .map(|s| s.parse().expect("default denied ranges are valid"))
        .collect()
}

const DEFAULT_DENIED: [&str; 33] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
    // Instance metadata (AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack, Hetzner…), in
    // 169.254/16.
    "169.254.169.254/32",
    // AWS: ECS task metadata; IPv6 instance metadata, DNS and time (in fc00::/7).
    "169.254.170.2/32",
    "fd00:ec2::/64",
    // GCP: IPv6 metadata server (in fc00::/7).
    "fd20:ce::254/128",
    // Azure: the WireServer (host agent, DNS); public address space, so listed on its own.
    "168.63.129.16/32",
    // Alibaba Cloud metadata (in 100.64/10).
    "100.100.100.200/32",
    // Oracle Cloud legacy metadata (in 192.0.0.0/24).
    "192.0.0.192/32",
    // Tencent Cloud metadata (in 169.254/16).
    "169.254.0.23/32",
];

/// Reduces an IPv6 address that carries an IPv4 address to that IPv4 address; anything else is
/// returned unchanged:
/// - IPv4-mapped `::ffff:a.b.c.d`;
/// - SIIT IPv4-translated `::ffff:0:a.b.c.d` (RFC 6145, RFC 2765);
/// - IPv4-compatible `::a.b.c.d` (deprecated), except `::` and `::1`, which stay the IPv6
///   unspecified and loopback addresses;
/// - NAT64 well-known prefix 64:ff9b::/96 and, assuming a /96 inside it, the local-use prefix
///   64:ff9b:1::/48 (RFC 8215): the last 32 bits;
/// - 6to4 2002::/16: bits 16..48;
/// - Teredo 2001::/32: the client's public address, the last 32 bits inverted.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => carried_ipv4(u128::from(v6)).map_or(ip, IpAddr::V4),
    }
}

fn carried_ipv4(bits: u128) -> Option<Ipv4Addr> {
    let last32 = bits as u32;
    let v4 = if bits >> 32 == 0xffff || bits >> 32 == 0xffff_0000 {
        last32
    } else if bits >> 32 == 0 {
        if bits <= 1 {
            return None;
        }
        last32
    } else if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 || bits >> 80 == 0x0064_ff9b_0001 {
        last32
    } else if bits >> 112 == 0x2002 {
        (bits >> 80) as u32
    } else if bits >> 96 == 0x2001_0000 {
        // Teredo: 2001:0:SSSS:SSSS:flags:port:CCCC:CCCC, S = Teredo server, C = client address
        // XOR 0xffffffff. Packets to a Teredo address go (via a Teredo relay or the host's own
        // Teredo interface) to the client's NAT-mapped address; the server address is only used
        // by the client to qualify. So the client address is the one that is judged.
        !last32
    } else {
        return None;
    };
    Some(Ipv4Addr::from(v4))
}

/// Sorted, merged, non-overlapping inclusive ranges per family, for binary search.
#[derive(Clone, Debug, Default)]
struct RangeSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl RangeSet {
    /// Mixed-family or reversed ranges (possible only by building an `IpRange` by hand) are
    /// ignored. A v6 range lying wholly within ::ffff:0:0/96 also covers its plain IPv4 addresses.
    fn new<'a>(ranges: impl IntoIterator<Item = &'a IpRange>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for range in ranges {
            match (range.start, range.end) {
                (IpAddr::V4(start), IpAddr::V4(end)) if start <= end => {
                    v4.push((u32::from(start), u32::from(end)));
                }
                (IpAddr::V6(start), IpAddr::V6(end)) if start <= end => {
                    let (start, end) = (u128::from(start), u128::from(end));
                    v6.push((start, end));
                    if start >> 32 == 0xffff && end >> 32 == 0xffff {
                        v4.push((start as u32, end as u32));
                    }
                }
                _ => {}
            }
        }
        Self {
            v4: merge(v4, |x| x.checked_add(1)),
            v6: merge(v6, |x| x.checked_add(1)),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => sorted_contains(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => sorted_contains(&self.v6, u128::from(v6)),
        }
    }
}

/// Sorts and joins overlapping or adjacent ranges; `next` is the successor (None at the maximum).
fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>, next: fn(T) -> Option<T>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 || next(last.1) == Some(start) => {
                last.1 = last.1.max(end);
            }
            _ => merged.push((start, end)),
        }
    }
    merged.shrink_to_fit();
    merged
}

/// `ranges` must be sorted and non-overlapping.
fn sorted_contains<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= x);
    after > 0 && x <= ranges[after - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ranges(list: &[&str]) -> Vec<IpRange> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn defaults() -> PeerPolicy {
        PeerPolicy::new(&[], &[], false)
    }

    fn with_loopback() -> PeerPolicy {
        PeerPolicy::new(&[], &[], true)
    }

    fn allowing(list: &[&str]) -> PeerPolicy {
        PeerPolicy::new(&[], &ranges(list), false)
    }

    fn denying(list: &[&str]) -> PeerPolicy {
        PeerPolicy::new(&ranges(list), &[], false)
    }

    // Every IPv6 spelling of an IPv4 address that `normalize` understands.
    fn mapped(a: Ipv4Addr) -> IpAddr {
        IpAddr::V6(a.to_ipv6_mapped())
    }
    fn compatible(a: Ipv4Addr) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(u128::from(u32::from(a))))
    }
    fn nat64(a: Ipv4Addr) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(
            0x64_ff9b_u128 << 96 | u128::from(u32::from(a)),
        ))
    }
    fn nat64_local(a: Ipv4Addr) -> IpAddr {
        let prefix = 0x64_ff9b_0001_u128 << 80 | 0xabcd_u128 << 64;
        IpAddr::V6(Ipv6Addr::from(prefix | u128::from(u32::from(a))))
    }
    fn six_to_four(a: Ipv4Addr) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(
            0x2002_u128 << 112 | u128::from(u32::from(a)) << 80 | 1,
        ))
    }
    fn teredo(client: Ipv4Addr) -> IpAddr {
        let server = u128::from(u32::from(v4("65.54.227.120")));
        let flags_port = 0x8000_63bf_u128;
        let obfuscated = u128::from(!u32::from(client));
        IpAddr::V6(Ipv6Addr::from(
            0x2001_0000_u128 << 96 | server << 64 | flags_port << 32 | obfuscated,
        ))
    }
    fn siit(a: Ipv4Addr) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(
            0xffff_0000_u128 << 32 | u128::from(u32::from(a)),
        ))
    }
    fn spellings(a: Ipv4Addr) -> [(&'static str, IpAddr); 8] {
        [
            ("plain", IpAddr::V4(a)),
            ("mapped", mapped(a)),
            ("siit", siit(a)),
            ("compatible", compatible(a)),
            ("nat64", nat64(a)),
            ("nat64 local-use", nat64_local(a)),
            ("6to4", six_to_four(a)),
            ("teredo", teredo(a)),
        ]
    }

    // ---- normalize ----

    #[test]
    fn normalize_literal_spellings() {
        let cases = [
            ("::ffff:10.0.0.1", "10.0.0.1"),
            ("::ffff:a00:1", "10.0.0.1"),
            ("::ffff:0:a00:1", "10.0.0.1"),
            ("::ffff:0:169.254.169.254", "169.254.169.254"),
            ("::10.0.0.1", "10.0.0.1"),
            ("::0.0.0.2", "0.0.0.2"),
            ("64:ff9b::a00:1", "10.0.0.1"),
            ("64:ff9b::8.8.8.8", "8.8.8.8"),
            ("64:ff9b:1::a00:1", "10.0.0.1"),
            ("64:ff9b:1:ffff::a9fe:a9fe", "169.254.169.254"),
            ("2002:a00:1::", "10.0.0.1"),
            ("2002:0808:0808:1234::5", "8.8.8.8"),
            // RFC 4380 / well-known example: server 65.54.227.120, client 192.0.2.45.
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1"),
        ];
        for (from, to) in cases {
            assert_eq!(normalize(ip(from)), ip(to), "{from}");
        }
    }

    #[test]
    fn normalize_generated_spellings() {
        for a in [
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "192.168.1.1",
            "8.8.8.8",
            "1.1.1.1",
        ] {
            for (form, spelled) in spellings(v4(a)) {
                assert_eq!(normalize(spelled), IpAddr::V4(v4(a)), "{form} {spelled}");
            }
        }
    }

    #[test]
    fn normalize_leaves_other_addresses_alone() {
        for s in [
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "::1",
            "2001:db8::1",
            "2606:4700:4700::1111",
            "fe80::1",
            "ff02::1",
            "fc00::1",
            "64:ff9b::1:0:0", // just past 64:ff9b::/96
            "64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff",
            "64:ff9b:2::a00:1", // past the /48 local-use prefix
            "::fffe:a00:1",     // neither mapped nor compatible
            "::1:ffff:a00:1",   // not mapped: bits 80..96 are not all ones
            "2001:1::a00:1",    // 2001::/23 but not Teredo
            "2001:db8::a00:1",
            "2003::a00:1",
            "2001:ffff::1",
        ] {
            assert_eq!(normalize(ip(s)), ip(s), "{s}");
        }
    }

    // ---- default_denied ----

    #[test]
    fn default_denied_is_exactly_the_documented_list() {
        let expected = ranges(&[
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "255.255.255.255/32",
            "::/128",
            "::1/128",
            "64:ff9b::/96",
            "100::/64",
            "2001:db8::/32",
            "fc00::/7",
            "fe80::/10",
            "fec0::/10",
            "ff00::/8",
            "169.254.169.254/32",
            "169.254.170.2/32",
            "fd00:ec2::/64",
            "fd20:ce::254/128",
            "168.63.129.16/32",
            "100.100.100.200/32",
            "192.0.0.192/32",
            "169.254.0.23/32",
        ]);
        assert_eq!(default_denied(), expected);
    }

    fn step(a: IpAddr, up: bool) -> Option<IpAddr> {
        match a {
            IpAddr::V4(a) => {
                let x = u32::from(a);
                let y = if up {
                    x.checked_add(1)
                } else {
                    x.checked_sub(1)
                };
                y.map(|y| IpAddr::V4(y.into()))
            }
            IpAddr::V6(a) => {
                let x = u128::from(a);
                let y = if up {
                    x.checked_add(1)
                } else {
                    x.checked_sub(1)
                };
                y.map(|y| IpAddr::V6(y.into()))
            }
        }
    }

    /// Each default block: its first and last address are denied; the address just below and
    /// just above is permitted unless it falls in a neighbouring denied block (`false` below).
    #[test]
    fn default_blocks_and_their_boundaries() {
        // (block, below permitted?, above permitted?); None where there is no neighbour.
        let table: [(&str, Option<bool>, Option<bool>); 26] = [
            ("0.0.0.0/8", None, Some(true)),
            ("10.0.0.0/8", Some(true), Some(true)),
            ("100.64.0.0/10", Some(true), Some(true)),
            ("127.0.0.0/8", Some(true), Some(true)),
            ("169.254.0.0/16", Some(true), Some(true)),
            ("172.16.0.0/12", Some(true), Some(true)),
            ("192.0.0.0/24", Some(true), Some(true)),
            ("192.0.2.0/24", Some(true), Some(true)),
            ("192.88.99.0/24", Some(true), Some(true)),
            ("192.168.0.0/16", Some(true), Some(true)),
            ("198.18.0.0/15", Some(true), Some(true)),
            ("198.51.100.0/24", Some(true), Some(true)),
            ("203.0.113.0/24", Some(true), Some(true)),
            ("224.0.0.0/4", Some(true), Some(false)), // 240.0.0.0 is in 240/4
            ("240.0.0.0/4", Some(false), None),       // 239.255.255.255 is in 224/4
            ("255.255.255.255/32", Some(false), None), // 255.255.255.254 is in 240/4
            ("::/128", None, Some(false)),            // ::1 is loopback
            ("::1/128", Some(false), Some(false)),    // :: never; ::2 is 0.0.0.2
            ("64:ff9b::/96", Some(true), Some(true)),
            ("100::/64", Some(true), Some(true)),
            ("2001:db8::/32", Some(true), Some(true)),
            ("fc00::/7", Some(true), Some(true)),
            ("fe80::/10", Some(true), Some(false)), // fec0:: is in fec0::/10
            ("fec0::/10", Some(false), Some(false)), // febf:.. in fe80::/10, ff00:: multicast
            ("ff00::/8", Some(false), None),        // feff:.. is in fec0::/10
            ("168.63.129.16/32", Some(true), Some(true)),
        ];
        let policy = defaults();
        for (block, below, above) in table {
            let r: IpRange = block.parse().unwrap();
            assert!(
                !policy.permits(r.start),
                "{block}: first {} denied",
                r.start
            );
            assert!(!policy.permits(r.end), "{block}: last {} denied", r.end);
            let neighbours = [(step(r.start, false), below), (step(r.end, true), above)];
            for (neighbour, expected) in neighbours {
                assert_eq!(
                    neighbour.is_some(),
                    expected.is_some(),
                    "{block}: table error"
                );
                if let (Some(n), Some(expected)) = (neighbour, expected) {
                    assert_eq!(policy.permits(n), expected, "{block}: neighbour {n}");
                }
            }
        }
    }

    #[test]
    fn default_blocks_a_few_typical_addresses() {
        let policy = defaults();
        for denied in [
            "10.1.2.3",
            "100.100.100.100",
            "127.0.0.1",
            "169.254.169.254",
            "172.20.0.1",
            "192.168.1.1",
            "192.0.0.170",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(!policy.permits(ip(denied)), "{denied} should be denied");
        }
        for permitted in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001:81c::200e",
        ] {
            assert!(
                policy.permits(ip(permitted)),
                "{permitted} should be permitted"
            );
        }
    }

    // ---- embedded IPv4 forms ----

    #[test]
    fn every_spelling_of_a_private_address_is_denied() {
        let policy = defaults();
        for a in [
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "192.168.1.1",
            "192.0.2.45",
        ] {
            for (form, spelled) in spellings(v4(a)) {
                assert!(
                    !policy.permits(spelled),
                    "{form} {spelled} ({a}) should be denied"
                );
            }
        }
    }

    #[test]
    fn every_spelling_of_a_public_address_is_permitted() {
        // Includes NAT64 although 64:ff9b::/96 is a default block: the relay really reaches
        // the public IPv4 host through the gateway (see the module docs).
        let policy = defaults();
        for a in ["8.8.8.8", "1.1.1.1", "93.184.216.34"] {
            for (form, spelled) in spellings(v4(a)) {
                assert!(
                    policy.permits(spelled),
                    "{form} {spelled} ({a}) should be permitted"
                );
            }
        }
    }

    #[test]
    fn literal_embedded_forms() {
        let policy = defaults();
        for denied in [
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:a00:1::1",
            "2002:c0a8:101::",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo client 192.0.2.45
            "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo client 10.0.0.1
        ] {
            assert!(!policy.permits(ip(denied)), "{denied} should be denied");
        }
        for permitted in [
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "64:ff9b::1.1.1.1",
            "2002:808:808::1",
            "2002:101:101::",
            // Teredo with a private *server* but public client 8.8.8.8: judged by the client.
            "2001:0:a00:1:8000:63bf:f7f7:f7f7",
        ] {
            assert!(
                policy.permits(ip(permitted)),
                "{permitted} should be permitted"
            );
        }
    }

    #[test]
    fn teredo_is_judged_by_the_client_not_the_server() {
        let policy = defaults();
        // Public server 65.54.227.120 wrapping a private client: denied.
        assert!(!policy.permits(teredo(v4("10.0.0.1"))));
        // Private server 10.0.0.1, public client 1.1.1.1 (obfuscated fefe:fefe): permitted.
        assert!(policy.permits(ip("2001:0:a00:1::fefe:fefe")));
    }

    // ---- loopback ----

    #[test]
    fn loopback_is_denied_by_default() {
        let policy = defaults();
        for a in [
            "127.0.0.1",
            "127.255.255.254",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
        ] {
            assert!(!policy.permits(ip(a)), "{a} should be denied");
        }
    }

    #[test]
    fn allow_loopback_allows_every_loopback_spelling() {
        let policy = with_loopback();
        for a in [
            "127.0.0.1",
            "127.255.255.254",
            "127.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(policy.permits(ip(a)), "{a} should be permitted");
        }
        for (form, spelled) in spellings(v4("127.0.0.1")) {
            assert!(policy.permits(spelled), "{form} {spelled}");
        }
    }

    #[test]
    fn allow_loopback_allows_nothing_else() {
        let policy = with_loopback();
        for a in [
            "126.255.255.255", // just outside, permitted by default anyway
            "128.0.0.0",
        ] {
            assert!(policy.permits(ip(a)), "{a}");
        }
        for a in [
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "169.254.169.254",
            "::",
            "::2",
            "0.0.0.0",
            "fe80::1",
        ] {
            assert!(!policy.permits(ip(a)), "{a} should stay denied");
        }
    }

    // ---- operator allowed ranges ----

    #[test]
    fn allowed_range_overrides_a_default_deny() {
        let policy = allowing(&["10.1.0.0/16"]);
        assert!(policy.permits(ip("10.1.2.3")));
        assert!(policy.permits(ip("10.1.0.0")));
        assert!(policy.permits(ip("10.1.255.255")));
        assert!(!policy.permits(ip("10.0.255.255")));
        assert!(!policy.permits(ip("10.2.0.0")));
        // Through embedded spellings.
        for (form, spelled) in spellings(v4("10.1.2.3")) {
            assert!(policy.permits(spelled), "{form} {spelled}");
        }
        for (form, spelled) in spellings(v4("10.2.0.1")) {
            assert!(!policy.permits(spelled), "{form} {spelled}");
        }
        // Other default blocks are unaffected.
        assert!(!policy.permits(ip("192.168.1.1")));
    }

    #[test]
    fn allowed_written_as_mapped_address_allows_the_ipv4_address() {
        for written in ["::ffff:10.0.0.5", "10.0.0.5"] {
            let policy = allowing(&[written]);
            assert!(policy.permits(ip("10.0.0.5")), "{written}");
            assert!(policy.permits(ip("::ffff:10.0.0.5")), "{written}");
            assert!(policy.permits(ip("::ffff:a00:5")), "{written}");
            assert!(!policy.permits(ip("10.0.0.6")), "{written}");
            assert!(!policy.permits(ip("::ffff:10.0.0.4")), "{written}");
        }
        let policy = allowing(&["::ffff:10.0.0.0/120"]);
        assert!(policy.permits(ip("10.0.0.200")));
        assert!(!policy.permits(ip("10.0.1.0")));
        let policy = allowing(&["::ffff:10.0.0.1-::ffff:10.0.0.3"]);
        assert!(policy.permits(ip("10.0.0.3")));
        assert!(!policy.permits(ip("10.0.0.4")));
    }

    #[test]
    fn allowed_ipv6_range_applies_to_the_original_spelling() {
        // The operator deliberately allows every 6to4 peer, private ones included.
        let policy = allowing(&["2002::/16"]);
        assert!(policy.permits(six_to_four(v4("10.0.0.1"))));
        assert!(!policy.permits(ip("10.0.0.1")));
        // Allowing a private IPv6 block.
        let policy = allowing(&["fd12:3456::/32"]);
        assert!(policy.permits(ip("fd12:3456::1")));
        assert!(!policy.permits(ip("fd12:3457::1")));
    }

    #[test]
    fn never_allowed_wins_over_allowed_ranges() {
        let policy = allowing(&["0.0.0.0/0", "::/0", "::ffff:0.0.0.0/96"]);
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "0.255.255.255",
            "::",
            "::ffff:0.0.0.0",
            "::ffff:0.1.2.3",
            "::0.1.2.3",
            "64:ff9b::",
            "2002::",
        ] {
            assert!(!policy.permits(ip(a)), "{a} must never be permitted");
        }
        let policy = PeerPolicy::new(&[], &ranges(&["0.0.0.0/0", "::/0"]), true);
        assert!(!policy.permits(ip("0.0.0.0")));
        assert!(!policy.permits(ip("::")));
        // Everything else is allowed by the catch-all.
        for a in [
            "10.0.0.1",
            "1.0.0.0",
            "::1",
            "::2:0:0",
            "fe80::1",
            "::ffff:192.168.1.1",
        ] {
            assert!(policy.permits(ip(a)), "{a}");
        }
    }

    // ---- operator denied ranges ----

    #[test]
    fn operator_denied_cidr_and_dash_ranges_block_public_addresses() {
        let policy = denying(&["8.8.8.0/24", "1.1.1.0 - 1.1.1.10", "2606:4700::/32"]);
        for a in [
            "8.8.8.8",
            "8.8.8.0",
            "8.8.8.255",
            "1.1.1.1",
            "1.1.1.0",
            "1.1.1.10",
            "2606:4700::1111",
        ] {
            assert!(!policy.permits(ip(a)), "{a} should be denied");
        }
        for a in [
            "8.8.4.4",
            "8.8.9.0",
            "1.1.1.11",
            "1.0.0.1",
            "2606:4701::1",
            "2001:4860::8888",
        ] {
            assert!(policy.permits(ip(a)), "{a} should be permitted");
        }
        for (form, spelled) in spellings(v4("8.8.8.8")) {
            assert!(!policy.permits(spelled), "{form} {spelled}");
        }
        for (form, spelled) in spellings(v4("1.1.1.1")) {
            assert!(!policy.permits(spelled), "{form} {spelled}");
        }
        // The defaults still apply.
        assert!(!policy.permits(ip("10.0.0.1")));
    }

    #[test]
    fn operator_denied_ipv6_range_blocks_embedded_spellings() {
        // Blocking all 6to4 and Teredo tunnels blocks their spellings of public addresses...
        let policy = denying(&["2002::/16", "2001::/32"]);
        assert!(!policy.permits(six_to_four(v4("8.8.8.8"))));
        assert!(!policy.permits(teredo(v4("8.8.8.8"))));
        // ...but not the same host reached directly or through other forms.
        assert!(policy.permits(ip("8.8.8.8")));
        assert!(policy.permits(mapped(v4("8.8.8.8"))));
        assert!(policy.permits(nat64(v4("8.8.8.8"))));
        // An operator who lists 64:ff9b::/96 themselves means to block NAT64.
        let policy = denying(&["64:ff9b::/96"]);
        assert!(!policy.permits(nat64(v4("8.8.8.8"))));
        assert!(policy.permits(ip("8.8.8.8")));
    }

    #[test]
    fn operator_denied_written_as_mapped_address_blocks_the_ipv4_address() {
        let policy = denying(&["::ffff:9.9.9.9"]);
        assert!(!policy.permits(ip("9.9.9.9")));
        assert!(!policy.permits(ip("::ffff:9.9.9.9")));
        assert!(policy.permits(ip("9.9.9.10")));
        // A wide IPv6 block does not swallow plain IPv4 peers.
        let policy = denying(&["::/0"]);
        assert!(policy.permits(ip("8.8.8.8")));
        assert!(!policy.permits(ip("2606:4700::1111")));
    }

    #[test]
    fn allow_beats_operator_deny() {
        let policy = PeerPolicy::new(&ranges(&["8.8.0.0/16"]), &ranges(&["8.8.8.8"]), false);
        assert!(policy.permits(ip("8.8.8.8")));
        assert!(policy.permits(ip("::ffff:8.8.8.8")));
        assert!(!policy.permits(ip("8.8.4.4")));
    }

    // ---- data structure ----

    #[test]
    fn range_set_merges_and_searches() {
        let set = RangeSet::new(&ranges(&[
            "10.0.0.5-10.0.0.9",
            "10.0.0.0-10.0.0.4",  // adjacent: merged
            "10.0.0.7-10.0.0.20", // overlapping: merged
            "192.168.0.0/16",
            "255.255.255.0/24",
            "255.255.255.255",
            "::/128",
            "::1",
            "ffff::/16",
        ]));
        assert_eq!(
            set.v4,
            vec![
                (u32::from(v4("10.0.0.0")), u32::from(v4("10.0.0.20"))),
                (
                    u32::from(v4("192.168.0.0")),
                    u32::from(v4("192.168.255.255"))
                ),
                (u32::from(v4("255.255.255.0")), u32::MAX),
            ]
        );
        assert_eq!(set.v6, vec![(0, 1), (0xffff_u128 << 112, u128::MAX)]);
        assert!(set.contains(ip("10.0.0.0")));
        assert!(set.contains(ip("10.0.0.20")));
        assert!(!set.contains(ip("10.0.0.21")));
        assert!(!set.contains(ip("9.255.255.255")));
        assert!(!set.contains(ip("0.0.0.0")));
        assert!(set.contains(ip("255.255.255.255")));
        assert!(set.contains(ip("::")));
        assert!(!set.contains(ip("::2")));
        assert!(set.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!RangeSet::default().contains(ip("1.2.3.4")));
    }

    #[test]
    fn range_set_ignores_hand_built_bad_ranges() {
        let bad = [
            IpRange {
                start: ip("10.0.0.9"),
                end: ip("10.0.0.1"),
            },
            IpRange {
                start: ip("10.0.0.1"),
                end: ip("::1"),
            },
        ];
        let set = RangeSet::new(&bad);
        assert!(set.v4.is_empty() && set.v6.is_empty());
    }

    // ---- the host's own addresses ----

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A host at 203.0.113.10 and 2001:db8::10 whose operator allowed the documentation ranges
    /// (so that only the own-host rule stands between a client and the host).
    fn on_host(allowed: &[&str], allow_loopback: bool) -> PeerPolicy {
        let own = [ip("203.0.113.10"), ip("2001:db8::10")];
        PeerPolicy::new(&[], &ranges(allowed), allow_loopback).with_host(&own, (49152, 65535))
    }

    #[test]
    fn own_addresses_are_reachable_at_relay_ports_only() {
        let policy = on_host(
            &["203.0.113.0/24", "2001:db8::/32", "127.0.0.0/8", "::1"],
            false,
        );
        for own in ["203.0.113.10", "2001:db8::10", "127.0.0.1", "127.3.4.5"] {
            let own = ip(own);
            assert!(policy.permits(own), "{own}: a permission may be installed");
            assert!(policy.relay_ports_only(own), "{own}");
            for port in [3478, 8080, 22, 49151] {
                let peer = SocketAddr::new(own, port);
                assert_eq!(policy.judge(peer), Verdict::OwnHost, "{peer}");
            }
            for port in [49152, 50000, 65535] {
                let peer = SocketAddr::new(own, port);
                assert_eq!(policy.judge(peer), Verdict::Permitted, "{peer}");
            }
        }
        // Every spelling of an own IPv4 address is the same host.
        for (form, spelled) in spellings(v4("203.0.113.10")) {
            if form == "plain" {
                continue;
            }
            assert!(policy.relay_ports_only(spelled), "{form} {spelled}");
            assert_eq!(
                policy.judge(SocketAddr::new(spelled, 8080)),
                Verdict::OwnHost,
                "{form} {spelled}"
            );
        }
        // A neighbour of the host is not the host.
        assert!(!policy.relay_ports_only(ip("203.0.113.11")));
        assert_eq!(policy.judge(sa("203.0.113.11:8080")), Verdict::Permitted);
        // Denied stays denied at any port.
        assert_eq!(policy.judge(sa("10.0.0.1:50000")), Verdict::Denied);
    }

    #[test]
    fn naming_an_own_address_opens_it_a_covering_range_does_not() {
        let named = on_host(&["203.0.113.10", "2001:db8::/32"], false);
        assert!(!named.relay_ports_only(ip("203.0.113.10")));
        assert_eq!(named.judge(sa("203.0.113.10:8080")), Verdict::Permitted);
        assert!(named.relay_ports_only(ip("2001:db8::10")));
        assert_eq!(named.judge(sa("[2001:db8::10]:8080")), Verdict::OwnHost);
    }

    #[test]
    fn allow_loopback_opens_loopback_at_every_port() {
        let policy = on_host(&[], true);
        assert_eq!(policy.judge(sa("127.0.0.1:8080")), Verdict::Permitted);
        assert_eq!(policy.judge(sa("[::1]:8080")), Verdict::Permitted);
        // ... but not the host's other addresses.
        assert!(policy.relay_ports_only(ip("203.0.113.10")));
    }

    #[test]
    fn without_host_knowledge_only_loopback_is_own() {
        let policy = PeerPolicy::new(&[], &ranges(&["127.0.0.0/8"]), false);
        assert!(policy.relay_ports_only(ip("127.0.0.1")));
        assert!(!policy.relay_ports_only(ip("8.8.8.8")));
        // Every port counts as a relay port when the range is unknown.
        assert_eq!(policy.judge(sa("127.0.0.1:8080")), Verdict::Permitted);
    }
}
