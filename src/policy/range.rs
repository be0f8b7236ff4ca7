//! Inclusive IP address ranges as coTURN and operators write them.

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
    /// Accepts `10.0.0.0/8`, `2001:db8::/32`, a single address, and coTURN's `a.b.c.d-e.f.g.h`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let _ = s;
        todo!("policy helper")
    }
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let _ = ip;
        todo!("policy helper")
    }
}
