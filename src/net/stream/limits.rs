//! What a new TCP/TLS connection or RFC 6062 peer connection must get past before it is served:
//!
//! - `max-connections`: client and peer connections together, each holding a [`Slot`] until it
//!   closes;
//! - `max-connections-per-ip`: client connections per address, IPv6 addresses grouped by their
//!   `connection-ipv6-prefix` (a /64 is usually one subscriber);
//! - the descriptor reserve (`fd-reserve-percent`): the top of the open-file limit is kept for
//!   UDP allocations and the HTTP endpoint, so that running short of descriptors refuses TCP
//!   first.
//!
//! The reserve needs no count of open files: the kernel hands out the lowest free descriptor, so
//! a new socket numbered at or above the ceiling means that every one below it is taken. Stream
//! and peer connections never keep such a socket, so the descriptors above the ceiling stay free
//! for the rest of the process.

use crate::metrics::LabelSet;
use crate::net::common::lock;
use crate::net::stats::{StreamRefusal, StreamStats};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// At most one info line about refused connections per this interval (each one is at debug).
const REFUSAL_REPORT_EVERY: Duration = Duration::from_secs(10);

/// The limits' settings.
#[derive(Clone, Copy, Debug)]
pub struct LimitSettings {
    /// 0 = unlimited.
    pub max_connections: usize,
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// IPv6 clients count per prefix of this length (0..=128).
    pub ipv6_prefix: u8,
    /// Descriptors at and above this number are kept for the rest of the process.
    pub fd_ceiling: Option<RawFd>,
}

/// The first descriptor kept for UDP and HTTP: `percent` of the soft open-file limit off its top
/// (`None` without a reserve or a limit).
pub fn fd_ceiling(soft_limit: u64, percent: u32) -> Option<RawFd> {
    if percent == 0 || soft_limit == 0 {
        return None;
    }
    let limit = soft_limit.min(RawFd::MAX as u64);
    let reserve = (limit * u64::from(percent.min(100))).div_ceil(100);
    RawFd::try_from(limit - reserve).ok()
}

/// The process's soft open-file limit, if it can be read.
pub fn open_file_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// The key `max-connections-per-ip` counts under: the address, or for IPv6 its prefix (an
/// IPv4-mapped address counts as the IPv4 address).
pub fn address_group(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

/// The limits every stream connection and peer connection shares.
pub(in crate::net) struct Limits {
    settings: LimitSettings,
    stats: Arc<StreamStats>,
    /// Open client connections per address group (only groups under a per-IP limit).
    per_group: Mutex<HashMap<IpAddr, usize>>,
    refusals: RefusalLog,
}

/// A connection's place under `max-connections` (and `max-connections-per-ip`), given back on
/// drop.
pub(in crate::net) struct Slot {
    limits: Arc<Limits>,
    group: Option<IpAddr>,
}

/// What kind of connection a refusal turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::net) enum Refused {
    Client,
    /// An RFC 6062 peer connection (in from a peer, or out by Connect).
    Peer,
}

impl Limits {
    pub fn new(settings: LimitSettings, stats: Arc<StreamStats>) -> Arc<Limits> {
        Arc::new(Limits {
            settings,
            stats,
            per_group: Mutex::new(HashMap::new()),
            refusals: RefusalLog::default(),
        })
    }

    /// Whether `socket` may be kept: it is below the descriptor ceiling.
    pub fn fd_allowed(&self, socket: &impl AsRawFd) -> Result<(), StreamRefusal> {
        match self.settings.fd_ceiling {
            Some(ceiling) if socket.as_raw_fd() >= ceiling => Err(StreamRefusal::FdReserve),
            _ => Ok(()),
        }
    }

    /// A slot under `max-connections`, for a connection whose socket comes later (Connect).
    pub fn slot(self: &Arc<Self>) -> Result<Slot, StreamRefusal> {
        let max = self.settings.max_connections as u64;
        let open = self.stats.connections.fetch_add(1, Relaxed);
        let slot = Slot {
            limits: self.clone(),
            group: None,
        };
        // Over the limit: dropping the slot takes the count back.
        match max == 0 || open < max {
            true => Ok(slot),
            false => Err(StreamRefusal::MaxConnections),
        }
    }

    /// A slot for a connection on `socket`: below the descriptor ceiling and `max-connections`.
    pub fn admit(self: &Arc<Self>, socket: &impl AsRawFd) -> Result<Slot, StreamRefusal> {
        self.fd_allowed(socket)?;
        self.slot()
    }

    /// Counts the connection's slot against `max-connections-per-ip` for client `ip`.
    pub fn admit_ip(&self, slot: &mut Slot, ip: IpAddr) -> Result<(), StreamRefusal> {
        let max = self.settings.max_connections_per_ip;
        if max == 0 {
            return Ok(());
        }
        let group = address_group(ip, self.settings.ipv6_prefix);
        let mut per_group = lock(&self.per_group);
        let open = per_group.entry(group).or_insert(0);
        if *open >= max {
            if *open == 0 {
                per_group.remove(&group);
            }
            return Err(StreamRefusal::MaxConnectionsPerIp);
        }
        *open += 1;
        slot.group = Some(group);
        Ok(())
    }

    /// Counts and logs a refusal (one info line per interval, each at debug).
    pub fn refused(&self, kind: Refused, peer: SocketAddr, reason: StreamRefusal) {
        let counter = match kind {
            Refused::Client => &self.stats.refused,
            Refused::Peer => &self.stats.tcp_peer_refused,
        };
        counter[reason.index()].fetch_add(1, Relaxed);
        let limit = match reason {
            StreamRefusal::MaxConnections => "max-connections",
            StreamRefusal::MaxConnectionsPerIp => "max-connections-per-ip",
            StreamRefusal::FdReserve => "fd-reserve-percent",
        };
        debug!(%peer, ?kind, limit, "connection refused");
        self.refusals.note(limit);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("group", &self.group).finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.stats.connections.fetch_sub(1, Relaxed);
        if let Some(group) = self.group {
            let mut per_group = lock(&self.limits.per_group);
            if let Some(open) = per_group.get_mut(&group) {
                *open -= 1;
                if *open == 0 {
                    per_group.remove(&group);
                }
            }
        }
    }
}

/// Rate-limits the info line about refused connections, so a flood does not flood the log.
#[derive(Default)]
struct RefusalLog {
    since_report: AtomicU64,
    last_report: Mutex<Option<Instant>>,
}

impl RefusalLog {
    fn note(&self, reason: &'static str) {
        self.since_report.fetch_add(1, Relaxed);
        let Ok(mut last) = self.last_report.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= REFUSAL_REPORT_EVERY) {
            *last = Some(now);
            let refused = self.since_report.swap(0, Relaxed);
            info!(
                refused,
                reason, "connections refused by connection limits (reported at most every 10 s)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let group = |text, prefix| address_group(ip(text), prefix);
        assert_eq!(group("2001:db8:1:2:3:4:5:6", 64), ip("2001:db8:1:2::"));
        assert_eq!(group("2001:db8:1:2:ffff::1", 64), ip("2001:db8:1:2::"));
        assert_ne!(group("2001:db8:1:3::1", 64), group("2001:db8:1:2::1", 64));
        assert_eq!(group("2001:db8:1:2:3:4:5:6", 48), ip("2001:db8:1::"));
        assert_eq!(
            group("2001:db8:1:2:3:4:5:6", 128),
            ip("2001:db8:1:2:3:4:5:6")
        );
        assert_eq!(group("2001:db8:1:2:3:4:5:6", 0), ip("::"));
        assert_eq!(group("2001:db8::7", 127), ip("2001:db8::6"));
        // IPv4, and IPv4 written as IPv6, count per address.
        assert_eq!(group("192.0.2.7", 64), ip("192.0.2.7"));
        assert_eq!(group("::ffff:192.0.2.7", 64), ip("192.0.2.7"));
    }

    #[test]
    fn the_ceiling_keeps_a_share_of_the_limit() {
        assert_eq!(fd_ceiling(1024, 25), Some(768));
        assert_eq!(fd_ceiling(1000, 10), Some(900));
        assert_eq!(fd_ceiling(1001, 10), Some(900), "the reserve rounds up");
        assert_eq!(fd_ceiling(1024, 0), None);
        assert_eq!(
            fd_ceiling(u64::MAX, 25),
            Some(RawFd::MAX - RawFd::MAX / 4 - 1)
        );
    }

    fn limits(max: usize, per_ip: usize, ceiling: Option<RawFd>) -> Arc<Limits> {
        let settings = LimitSettings {
            max_connections: max,
            max_connections_per_ip: per_ip,
            ipv6_prefix: 64,
            fd_ceiling: ceiling,
        };
        Limits::new(settings, Arc::new(StreamStats::default()))
    }

    #[test]
    fn slots_count_against_the_total_and_per_prefix() {
        let limits = limits(3, 2, None);
        let mut a = limits.slot().unwrap();
        let mut b = limits.slot().unwrap();
        limits.admit_ip(&mut a, ip("2001:db8::1")).unwrap();
        limits.admit_ip(&mut b, ip("2001:db8::2")).unwrap();
        let mut c = limits.slot().unwrap();
        assert_eq!(
            limits.admit_ip(&mut c, ip("2001:db8::3")),
            Err(StreamRefusal::MaxConnectionsPerIp),
            "a third in the same /64"
        );
        limits.admit_ip(&mut c, ip("2001:db8:0:1::3")).unwrap();
        assert_eq!(limits.slot().err(), Some(StreamRefusal::MaxConnections));
        assert_eq!(limits.stats.connections.load(Relaxed), 3);
        drop(a);
        let mut d = limits.slot().unwrap();
        limits.admit_ip(&mut d, ip("2001:db8::4")).unwrap();
        drop((b, c, d));
        assert_eq!(limits.stats.connections.load(Relaxed), 0);
        assert!(lock(&limits.per_group).is_empty());
    }

    #[test]
    fn sockets_above_the_ceiling_are_refused() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = socket.as_raw_fd();
        assert!(limits(0, 0, Some(fd + 1)).admit(&socket).is_ok());
        assert!(limits(0, 0, None).admit(&socket).is_ok());
        let tight = limits(0, 0, Some(fd));
        assert_eq!(tight.admit(&socket).err(), Some(StreamRefusal::FdReserve));
        assert_eq!(tight.stats.connections.load(Relaxed), 0, "nothing taken");
        tight.refused(
            Refused::Peer,
            "192.0.2.1:1".parse().unwrap(),
            StreamRefusal::FdReserve,
        );
        assert_eq!(
            tight.stats.tcp_peer_refused[StreamRefusal::FdReserve as usize].load(Relaxed),
            1
        );
    }
}
