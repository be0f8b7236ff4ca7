//! Which peer addresses a relay may talk to.

use super::IpRange;
use std::net::IpAddr;

/// The peer filter. Denied unless allowed; allow beats deny, except for the never-allowed set
/// (0.0.0.0/8 and `::`). Addresses are normalised first, so every spelling of an embedded IPv4
/// address is judged as that IPv4 address.
#[derive(Clone, Debug)]
pub struct PeerPolicy {}

impl PeerPolicy {
    /// `denied` is added to [`default_denied`]; `allow_loopback` allows 127/8 and ::1.
    pub fn new(denied: &[IpRange], allowed: &[IpRange], allow_loopback: bool) -> Self {
        let _ = (denied, allowed, allow_loopback);
        todo!("policy helper")
    }
    pub fn permits(&self, peer: IpAddr) -> bool {
        let _ = peer;
        todo!("policy helper")
    }
}

/// The secure-default denied set (see the README's policy section).
pub fn default_denied() -> Vec<IpRange> {
    todo!("policy helper")
}

/// Reduces IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96), 6to4 (2002::/16) and Teredo
/// (2001::/32) addresses to the IPv4 address they carry; anything else is returned unchanged.
pub fn normalize(ip: IpAddr) -> IpAddr {
    let _ = ip;
    todo!("policy helper")
}
