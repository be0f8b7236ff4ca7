//! Inclusive IP address ranges as coTURN and operators write them.

use ipnet::IpNet;
use std::net::IpAddr;
use std::str::FromStr;

/// An inclusive range of addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an IP address, CIDR block or a-b range: {0:?}")]
pub struct RangeParseError(pub String);

impl FromStr for IpRange {
    type Err = RangeParseError;
    /// Accepts `10.0.0.0/8`, `2001:db8::/32`, a single address, and coTURN's `a.b.c.d-e.f.g.h`
    /// (also `v6-v6`; both ends of one family, start <= end, spaces around `-` allowed).
    /// Host bits of a CIDR block are dropped: `10.1.2.3/8` is 10.0.0.0-10.255.255.255.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || RangeParseError(s.to_string());
        let text = s.trim();
        // No IPv4 or IPv6 literal contains '-', so it can only be the range separator.
        if let Some((start, end)) = text.split_once('-') {
            let start: IpAddr = start.trim().parse().map_err(|_| error())?;
            let end: IpAddr = end.trim().parse().map_err(|_| error())?;
            return Self::ordered(start, end).ok_or_else(error);
        }
        if text.contains('/') {
            let net: IpNet = text.parse().map_err(|_| error())?;
            return Ok(Self {
                start: net.network(),
                end: net.broadcast(),
            });
        }
        let ip: IpAddr = text.parse().map_err(|_| error())?;
        Ok(Self { start: ip, end: ip })
    }
}

impl IpRange {
    /// Inclusive; an address of the other family is never contained (no v4/v6 mapping here).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.start, self.end, ip) {
            (IpAddr::V4(start), IpAddr::V4(end), IpAddr::V4(ip)) => start <= ip && ip <= end,
            (IpAddr::V6(start), IpAddr::V6(end), IpAddr::V6(ip)) => start <= ip && ip <= end,
            _ => false,
        }
    }

    /// A range from `start` to `end`, if both are of one family and in order.
    fn ordered(start: IpAddr, end: IpAddr) -> Option<Self> {
        // `IpAddr`'s `Ord` puts every V4 before every V6, so the family check must come first.
        let same_family = start.is_ipv4() == end.is_ipv4();
        (same_family && start <= end).then_some(Self { start, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> IpRange {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn bounds(s: &str) -> (IpAddr, IpAddr) {
        let r = range(s);
        (r.start, r.end)
    }

    #[test]
    fn single_addresses() {
        assert_eq!(bounds("192.0.2.7"), (ip("192.0.2.7"), ip("192.0.2.7")));
        assert_eq!(
            bounds("2001:db8::1"),
            (ip("2001:db8::1"), ip("2001:db8::1"))
        );
        assert_eq!(
            bounds("::ffff:10.0.0.5"),
            (ip("::ffff:10.0.0.5"), ip("::ffff:10.0.0.5"))
        );
        assert_eq!(bounds("  10.0.0.1\t"), (ip("10.0.0.1"), ip("10.0.0.1")));
    }

    #[test]
    fn cidr_blocks() {
        assert_eq!(bounds("10.0.0.0/8"), (ip("10.0.0.0"), ip("10.255.255.255")));
        assert_eq!(bounds("0.0.0.0/0"), (ip("0.0.0.0"), ip("255.255.255.255")));
        assert_eq!(bounds("1.2.3.4/32"), (ip("1.2.3.4"), ip("1.2.3.4")));
        assert_eq!(
            bounds("2001:db8::/32"),
            (
                ip("2001:db8::"),
                ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")
            )
        );
        assert_eq!(
            bounds("::/0"),
            (ip("::"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        );
        assert_eq!(bounds("::1/128"), (ip("::1"), ip("::1")));
    }

    #[test]
    fn cidr_host_bits_are_dropped() {
        assert_eq!(range("10.1.2.3/8"), range("10.0.0.0/8"));
        assert_eq!(
            bounds("192.168.1.77/24"),
            (ip("192.168.1.0"), ip("192.168.1.255"))
        );
        assert_eq!(range("2001:db8:1:2::5/32"), range("2001:db8::/32"));
        assert_eq!(range("fe80::1234/10"), range("fe80::/10"));
    }

    #[test]
    fn dash_ranges() {
        assert_eq!(
            bounds("10.0.0.1-10.0.0.9"),
            (ip("10.0.0.1"), ip("10.0.0.9"))
        );
        assert_eq!(
            bounds("10.0.0.1 - 10.0.0.9"),
            (ip("10.0.0.1"), ip("10.0.0.9"))
        );
        assert_eq!(
            bounds(" 10.0.0.1\t-  10.0.0.9 "),
            (ip("10.0.0.1"), ip("10.0.0.9"))
        );
        assert_eq!(bounds("1.1.1.1-1.1.1.1"), (ip("1.1.1.1"), ip("1.1.1.1")));
        assert_eq!(
            bounds("2001:db8::1-2001:db8::ff"),
            (ip("2001:db8::1"), ip("2001:db8::ff"))
        );
        assert_eq!(bounds(":: - ::1"), (ip("::"), ip("::1")));
    }

    #[test]
    fn bad_inputs_are_rejected_with_the_input() {
        for bad in [
            "",
            "   ",
            "-",
            "localhost",
            "10.0.0",
            "10.0.0.256",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "/8",
            "10.0.0.0/8/8",
            "10.0.0.0/x",
            "10.0.0.9-10.0.0.1",
            "2001:db8::2-2001:db8::1",
            "10.0.0.1-",
            "-10.0.0.1",
            "10.0.0.1-10.0.0.2-10.0.0.3",
            "10.0.0.1-::1",
            "::1-10.0.0.1",
            "10.0.0.0/8-10.0.0.9",
            "fe80::1%eth0",
            "[::1]",
        ] {
            assert_eq!(
                bad.parse::<IpRange>(),
                Err(RangeParseError(bad.to_string())),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn contains_is_inclusive() {
        let r = range("10.0.0.1-10.0.0.9");
        assert!(!r.contains(ip("10.0.0.0")));
        assert!(r.contains(ip("10.0.0.1")));
        assert!(r.contains(ip("10.0.0.5")));
        assert!(r.contains(ip("10.0.0.9")));
        assert!(!r.contains(ip("10.0.0.10")));

        let r = range("2001:db8::/32");
        assert!(!r.contains(ip("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(r.contains(ip("2001:db8::")));
        assert!(r.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!r.contains(ip("2001:db9::")));
    }

    #[test]
    fn contains_never_mixes_families() {
        assert!(!range("0.0.0.0/0").contains(ip("::ffff:10.0.0.1")));
        assert!(!range("0.0.0.0/0").contains(ip("::")));
        assert!(!range("::/0").contains(ip("10.0.0.1")));
        assert!(!range("::ffff:0.0.0.0/96").contains(ip("10.0.0.1")));
        assert!(range("::ffff:0.0.0.0/96").contains(ip("::ffff:10.0.0.1")));
        // A hand-built mixed range (the fields are public) contains nothing.
        let mixed = IpRange {
            start: ip("0.0.0.0"),
            end: ip("ffff::"),
        };
        assert!(!mixed.contains(ip("10.0.0.1")));
        assert!(!mixed.contains(ip("::1")));
    }
}
