//! Refusals an operator changes with a configuration key, explained in the log: the first of each
//! kind in the process at info, with the reason and the key that changes it; the later ones at
//! debug (`/metrics` counts them all). Every such message lives here, so they read alike and
//! any log rate limiting covers them together.

use crate::policy::{default_denied_range, Denial};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tracing::{debug, info};

/// The kinds explained once each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    ChannelNumber,
    PeerNeverAllowed,
    PeerLoopback,
    PeerSpecialPurpose,
    PeerOperator,
}

impl Kind {
    const COUNT: usize = 5;

    fn index(self) -> usize {
        self as usize
    }
}

/// Which kinds have been explained.
struct Explained([AtomicBool; Kind::COUNT]);

impl Explained {
    const fn new() -> Explained {
        Explained([const { AtomicBool::new(false) }; Kind::COUNT])
    }

    /// True the first time only.
    fn first(&self, kind: Kind) -> bool {
        !self.0[kind.index()].swap(true, Relaxed)
    }
}

static EXPLAINED: Explained = Explained::new();

/// True the first time `kind` is refused in this process.
fn first(kind: Kind) -> bool {
    EXPLAINED.first(kind)
}

/// A ChannelBind whose CHANNEL-NUMBER is outside 0x4000..=`max` (the configured highest).
pub(super) fn channel_number(client: SocketAddr, number: u16, max: u16) {
    let fixable = max < super::MAX_CHANNEL_NUMBER_RFC5766
        && (max + 1..=super::MAX_CHANNEL_NUMBER_RFC5766).contains(&number);
    if fixable && first(Kind::ChannelNumber) {
        info!(%client, "{}", channel_number_text(number));
    } else {
        debug!(%client, number = format_args!("{number:#06x}"), "channel number refused");
    }
}

fn channel_number_text(number: u16) -> String {
    format!(
        "channel number {number:#06x} refused: RFC 8656 allows 0x4000-0x4FFF; \
         set allow-rfc5766-channel-numbers = true for RFC 5766 clients (coTURN's turnutils_uclient)"
    )
}

/// A peer address the policy denies (CreatePermission, ChannelBind, Connect).
pub(super) fn peer(client: SocketAddr, peer: IpAddr, denial: Denial) {
    let kind = match denial {
        Denial::NeverAllowed => Kind::PeerNeverAllowed,
        Denial::Loopback => Kind::PeerLoopback,
        Denial::SpecialPurpose => Kind::PeerSpecialPurpose,
        Denial::Operator => Kind::PeerOperator,
    };
    if first(kind) {
        info!(%client, "{}", peer_text(peer, denial));
    } else {
        debug!(%client, %peer, reason = ?denial, "peer denied by policy");
    }
}

fn peer_text(peer: IpAddr, denial: Denial) -> String {
    match denial {
        Denial::NeverAllowed => {
            format!("peer denied by policy: {peer} is never a valid destination")
        }
        Denial::Loopback => format!(
            "peer denied by policy: {peer} is loopback; set allow-loopback-peers = true for local tests"
        ),
        Denial::SpecialPurpose => {
            let range = default_denied_range(peer)
                .map(|range| format!(" ({range})"))
                .unwrap_or_default();
            format!(
                "peer denied by policy: {peer} is in a private or special-purpose range{range}, \
                 denied by default; list it in allowed-peer-ip to relay there"
            )
        }
        Denial::Operator => format!(
            "peer denied by policy: {peer} is in denied-peer-ip; remove it there or list it in allowed-peer-ip"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_name_the_reason_and_the_key_that_changes_it() {
        assert_eq!(
            channel_number_text(0x5a3c),
            "channel number 0x5a3c refused: RFC 8656 allows 0x4000-0x4FFF; set \
             allow-rfc5766-channel-numbers = true for RFC 5766 clients (coTURN's turnutils_uclient)"
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            peer_text(ip("127.0.0.1"), Denial::Loopback),
            "peer denied by policy: 127.0.0.1 is loopback; set allow-loopback-peers = true for local tests"
        );
        let private = peer_text(ip("192.168.1.5"), Denial::SpecialPurpose);
        assert!(
            private.contains("192.168.0.0/16") && private.contains("allowed-peer-ip"),
            "{private}"
        );
        assert!(peer_text(ip("198.51.100.1"), Denial::Operator).contains("denied-peer-ip"));
    }

    #[test]
    fn the_policy_gives_the_reason_it_denies() {
        use crate::policy::PeerPolicy;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let range = |s: &str| s.parse().unwrap();
        let policy = PeerPolicy::new(&[range("8.8.8.0/24")], &[range("10.1.0.0/16")], false);
        assert_eq!(policy.denial(ip("127.0.0.1")), Some(Denial::Loopback));
        assert_eq!(policy.denial(ip("::1")), Some(Denial::Loopback));
        assert_eq!(policy.denial(ip("0.0.0.1")), Some(Denial::NeverAllowed));
        assert_eq!(policy.denial(ip("10.2.0.1")), Some(Denial::SpecialPurpose));
        assert_eq!(
            policy.denial(ip("::ffff:10.2.0.1")),
            Some(Denial::SpecialPurpose)
        );
        assert_eq!(policy.denial(ip("8.8.8.8")), Some(Denial::Operator));
        assert_eq!(policy.denial(ip("10.1.2.3")), None, "allowed-peer-ip");
        assert_eq!(policy.denial(ip("1.1.1.1")), None);
        let loopback = PeerPolicy::new(&[], &[], true);
        assert_eq!(loopback.denial(ip("127.0.0.2")), None);
    }

    #[test]
    fn each_kind_is_explained_once() {
        let explained = Explained::new();
        assert!(explained.first(Kind::PeerOperator));
        assert!(!explained.first(Kind::PeerOperator));
        assert!(explained.first(Kind::ChannelNumber), "kinds are apart");
        assert!(!explained.first(Kind::ChannelNumber));
    }
}
