//! Which concrete addresses to listen and relay on.

use crate::turn::Family;
use std::io;
use std::net::IpAddr;

/// Expands `0.0.0.0` / `::` into every local address of that family (as coTURN does), so each
/// listener knows the address clients reach it on, and relays can bind to that same address.
/// IPv6 link-local addresses are skipped (they need a scope and cannot serve as relays).
pub fn expand_listening_ips(configured: &[IpAddr]) -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let needs_interfaces = configured.iter().any(IpAddr::is_unspecified);
    let interfaces = if needs_interfaces {
        if_addrs::get_if_addrs()?
    } else {
        Vec::new()
    };
    for ip in configured {
        if ip.is_unspecified() {
            let family_matches = |candidate: &IpAddr| candidate.is_ipv4() == ip.is_ipv4();
            let link_local_v6 = |candidate: &IpAddr| match candidate {
                IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
                IpAddr::V4(_) => false,
            };
            out.extend(
                interfaces
                    .iter()
                    .map(|i| i.ip())
                    .filter(|c| family_matches(c) && !link_local_v6(c)),
            );
        } else {
            out.push(*ip);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Every address of the host's interfaces (link-local ones included): the peer policy refuses
/// them as peers except at relay ports. Read at start and on every reload; if the interfaces
/// cannot be read, the configured addresses (and loopback) are all the policy knows, and a
/// warning says so.
pub fn host_addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces.iter().map(|i| i.ip()).collect(),
        Err(error) => {
            tracing::warn!(%error, "cannot list the host's interface addresses; the peer policy knows only the configured ones");
            Vec::new()
        }
    }
}

/// Chooses the address a relay socket binds to.
#[derive(Clone, Debug)]
pub struct RelayPlan {
    /// `relay-ip` as configured; empty = use the address the client reached.
    pub relay_ips: Vec<IpAddr>,
    /// Every concrete listening address.
    pub listening_ips: Vec<IpAddr>,
}

impl RelayPlan {
    pub fn ip_for(&self, family: Family, reached: IpAddr) -> Option<IpAddr> {
        let of_family = |ip: &&IpAddr| (family == Family::V4) == ip.is_ipv4();
        if !self.relay_ips.is_empty() {
            return self.relay_ips.iter().find(of_family).copied();
        }
        if (family == Family::V4) == reached.is_ipv4() {
            return Some(reached);
        }
        // The other family (REQUESTED- or ADDITIONAL-ADDRESS-FAMILY): a listening address of
        // it, loopback only for a client that reached us on loopback (`::` expands to ::1 too,
        // and it sorts first), as a remote client's peers could never reach a loopback relay.
        let mut candidates = self.listening_ips.iter().filter(of_family);
        if !reached.is_loopback() {
            return candidates.find(|ip| !ip.is_loopback()).copied();
        }
        let loopback = candidates.clone().find(|ip| ip.is_loopback());
        loopback.or_else(|| candidates.next()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_ip_follows_config_then_reached_address() {
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        let plan = RelayPlan {
            relay_ips: vec![],
            listening_ips: vec![v4, v6],
        };
        assert_eq!(plan.ip_for(Family::V4, v4), Some(v4));
        assert_eq!(plan.ip_for(Family::V6, v4), Some(v6));
        let configured: IpAddr = "192.0.2.99".parse().unwrap();
        let plan = RelayPlan {
            relay_ips: vec![configured],
            listening_ips: vec![v4],
        };
        assert_eq!(plan.ip_for(Family::V4, v4), Some(configured));
        assert_eq!(plan.ip_for(Family::V6, v4), None);
    }

    #[test]
    fn other_family_relay_prefers_the_reached_scope() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let plan = RelayPlan {
            relay_ips: vec![],
            listening_ips: vec![
                ip("127.0.0.1"),
                ip("192.0.2.10"),
                ip("::1"),
                ip("2001:db8::10"),
            ],
        };
        assert_eq!(
            plan.ip_for(Family::V6, ip("192.0.2.10")),
            Some(ip("2001:db8::10"))
        );
        assert_eq!(plan.ip_for(Family::V6, ip("127.0.0.1")), Some(ip("::1")));
        assert_eq!(
            plan.ip_for(Family::V4, ip("2001:db8::10")),
            Some(ip("192.0.2.10"))
        );
        let only_loopback = RelayPlan {
            relay_ips: vec![],
            listening_ips: vec![ip("192.0.2.10"), ip("::1")],
        };
        assert_eq!(only_loopback.ip_for(Family::V6, ip("192.0.2.10")), None);
    }

    #[test]
    fn host_addresses_include_loopback() {
        let host = host_addresses();
        assert!(host.contains(&"127.0.0.1".parse().unwrap()), "{host:?}");
    }

    #[test]
    fn explicit_addresses_are_kept_and_wildcard_expands() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(expand_listening_ips(&[lo]).unwrap(), vec![lo]);
        let all = expand_listening_ips(&["0.0.0.0".parse().unwrap()]).unwrap();
        assert!(all.contains(&lo), "loopback is a local address: {all:?}");
        assert!(all.iter().all(IpAddr::is_ipv4));
    }
}
