//! RFC 5780 NAT behaviour discovery: which other listening address and port a Binding answer
//! can come from.
//!
//! With two listening addresses of a family, tern listens on `listening-port` and
//! `alt-listening-port` on both, and each address is paired with another of its family. A
//! Binding over UDP then carries OTHER-ADDRESS (the partner address and the other port) and
//! RESPONSE-ORIGIN, and honours CHANGE-REQUEST by answering from the partner address and/or the
//! other port. Loopback addresses pair only with loopback ones, so `0.0.0.0` on a host with one
//! public address does not pair it with 127.0.0.1.

use std::net::{IpAddr, SocketAddr};

/// CHANGE-REQUEST flags (RFC 5780 §7.2).
pub const CHANGE_IP: u32 = 0x4;
pub const CHANGE_PORT: u32 = 0x2;

/// The listener pairs; empty (the default) when no family has two addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatDiscovery {
    /// Each paired listening address with its partner.
    partners: Vec<(IpAddr, IpAddr)>,
    port: u16,
    alt_port: u16,
}

impl NatDiscovery {
    /// Pairs the concrete `listening_ips` (per family, loopback with loopback): the first with
    /// the second, the third with the fourth, and an odd one out with the first of its group.
    pub fn new(listening_ips: &[IpAddr], port: u16, alt_port: u16) -> NatDiscovery {
        let mut partners = Vec::new();
        for v4 in [true, false] {
            for loopback in [true, false] {
                let mut group: Vec<IpAddr> = listening_ips
                    .iter()
                    .copied()
                    .filter(|ip| ip.is_ipv4() == v4 && ip.is_loopback() == loopback)
                    .collect();
                group.sort();
                group.dedup();
                if group.len() < 2 {
                    continue;
                }
                for pair in group.chunks(2) {
                    match *pair {
                        [a, b] => partners.extend([(a, b), (b, a)]),
                        [odd] => partners.push((odd, group[0])),
                        _ => {}
                    }
                }
            }
        }
        NatDiscovery {
            partners,
            port,
            alt_port,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.partners.is_empty()
    }

    /// The extra listeners NAT discovery needs: `alt-listening-port` on every paired address.
    pub fn alternate_listeners(&self) -> Vec<SocketAddr> {
        self.partners
            .iter()
            .map(|(ip, _)| SocketAddr::new(*ip, self.alt_port))
            .collect()
    }

    fn partner(&self, ip: IpAddr) -> Option<IpAddr> {
        self.partners
            .iter()
            .find(|(own, _)| *own == ip)
            .map(|(_, other)| *other)
    }

    fn other_port(&self, port: u16) -> Option<u16> {
        match port {
            p if p == self.port => Some(self.alt_port),
            p if p == self.alt_port => Some(self.port),
            _ => None,
        }
    }

    /// OTHER-ADDRESS for a request received on `local`: the partner address with the other
    /// port. `None` if `local` takes no part in NAT discovery.
    pub fn other_address(&self, local: SocketAddr) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.partner(local.ip())?,
            self.other_port(local.port())?,
        ))
    }

    /// Where to answer from, for a request received on `local` with CHANGE-REQUEST `flags`.
    pub fn answer_from(&self, local: SocketAddr, flags: u32) -> Option<SocketAddr> {
        let mut from = local;
        if flags & CHANGE_IP != 0 {
            from.set_ip(self.partner(local.ip())?);
        }
        if flags & CHANGE_PORT != 0 {
            from.set_port(self.other_port(local.port())?);
        }
        Some(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_address_per_family_means_no_discovery() {
        let nat = NatDiscovery::new(&[ip("192.0.2.1"), ip("2001:db8::1")], 3478, 3479);
        assert!(nat.is_empty());
        assert_eq!(nat.other_address(sa("192.0.2.1:3478")), None);
        // Loopback does not pair with a routable address.
        let nat = NatDiscovery::new(&[ip("127.0.0.1"), ip("192.0.2.1")], 3478, 3479);
        assert!(nat.is_empty());
    }

    #[test]
    fn two_addresses_pair_up_with_the_other_port() {
        let nat = NatDiscovery::new(&[ip("192.0.2.2"), ip("192.0.2.1")], 3478, 3479);
        assert_eq!(
            nat.other_address(sa("192.0.2.1:3478")),
            Some(sa("192.0.2.2:3479"))
        );
        assert_eq!(
            nat.other_address(sa("192.0.2.2:3479")),
            Some(sa("192.0.2.1:3478"))
        );
        assert_eq!(
            nat.answer_from(sa("192.0.2.1:3478"), CHANGE_IP | CHANGE_PORT),
            Some(sa("192.0.2.2:3479"))
        );
        assert_eq!(
            nat.answer_from(sa("192.0.2.1:3478"), CHANGE_PORT),
            Some(sa("192.0.2.1:3479"))
        );
        assert_eq!(
            nat.answer_from(sa("192.0.2.1:3478"), 0),
            Some(sa("192.0.2.1:3478"))
        );
        let mut listeners = nat.alternate_listeners();
        listeners.sort();
        assert_eq!(listeners, vec![sa("192.0.2.1:3479"), sa("192.0.2.2:3479")]);
    }

    #[test]
    fn an_odd_address_pairs_with_the_first() {
        let nat = NatDiscovery::new(&[ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")], 1, 2);
        assert_eq!(nat.other_address(sa("10.0.0.3:1")), Some(sa("10.0.0.1:2")));
        assert_eq!(nat.other_address(sa("10.0.0.1:1")), Some(sa("10.0.0.2:2")));
    }
}
