//! What a worker counts for `/metrics`, declared once ([`CounterSet`]): the worker's `Server`
//! bumps plain `u64`s ([`Counters`]) on its own thread, and publishes them into atomics
//! ([`SharedCounters`]) a few times a second; the `/metrics` encoding reads the same table.
//! Labels are bounded sets (method, result code, reason, transport, direction), never a user.

use super::{ErrorCode, Transport};
use crate::metrics::{Label, LabelSet, MetricSet};
use crate::stun::Method;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

crate::declare_metrics! {
    /// The counters of one `Server`, with cells of type `C`.
    pub struct CounterSet<C> {
        /// Live allocations (pending ones included).
        allocations_by_transport: gauge [Transport]
            = "tern_allocations", "Live allocations, by client transport";
        allocations_created: counter
            = "tern_allocations_created", "Allocations created";
        allocations_expired: counter
            = "tern_allocations_expired", "Allocations ended because their lifetime ran out";
        allocations_deleted: counter
            = "tern_allocations_deleted",
              "Allocations ended by the client (Refresh lifetime 0), connection close or the admin API";
        /// Responses sent, counted where the reply is decided.
        requests: counter [RequestMethod, Outcome] sparse
            = "tern_requests",
              "STUN/TURN requests answered, by method and result code (200 = success)";
        auth_failures: counter [AuthReason]
            = "tern_auth_failures", "Requests that failed authentication, by reason";
        /// For RFC 6062 TCP relays, a read from a spliced connection is a packet (the I/O layer
        /// adds those; the core never sees spliced bytes).
        relayed_packets: counter [Direction]
            = "tern_relayed_packets",
              "Packets relayed, by direction: datagrams and ChannelData frames, and for RFC 6062 TCP relays reads from a spliced connection";
        relayed_bytes: counter [Direction]
            = "tern_relayed_bytes",
              "Payload bytes relayed, by direction (RFC 6062 spliced connections included)";
        peers_denied: counter
            = "tern_peers_denied", "Peer addresses refused by the peer policy";
        quota_rejections: counter
            = "tern_quota_rejections", "Allocates refused by user-quota or total-quota";
        drain_rejections: counter
            = "tern_drain_rejections", "Allocates refused because the server is draining";
        redirects: counter
            = "tern_redirects",
              "Allocates answered 300 Try Alternate (draining or at total-quota, with alternate-server)";
        /// Every refusal by a configured limit, under the key that set it.
        limit_refusals: counter [Limit]
            = "tern_limit_refusals",
              "Requests refused by a limit (486 or 508), by the configuration key that set it";
        own_address_refusals: counter
            = "tern_own_address_refusals",
              "Peers refused or datagrams dropped for being one of tern's own addresses at a port outside the relay range";
        bandwidth_dropped_packets: counter [Direction, BandwidthLimit]
            = "tern_bandwidth_dropped_packets",
              "Relayed datagrams dropped by max-bps or bps-capacity, by direction and limit (streams are paused instead: tern_bandwidth_paused)";
        bandwidth_dropped_bytes: counter [Direction, BandwidthLimit]
            = "tern_bandwidth_dropped_bytes",
              "Payload bytes dropped by max-bps or bps-capacity, by direction and limit";
        unauthenticated_dropped: counter
            = "tern_unauthenticated_dropped",
              "Unauthenticated UDP requests left unanswered: their source exceeded unauthenticated-rate-limit";
        reload_revocations: counter [Revoked]
            = "tern_reload_revocations",
              "Permissions, channels and RFC 6062 peer connections removed or closed because a reloaded configuration denies their peer";
        allocations_revoked: counter
            = "tern_allocations_revoked",
              "Allocations ended because their credential no longer verifies (its secret or user was removed)";
        log_lines_suppressed: counter [LogKind]
            = "tern_log_lines_suppressed",
              "Log lines left out by the log rate limit, by kind";
    }
}

/// What a `Server` increments: plain integers, no atomics on the packet path.
pub type Counters = CounterSet<u64>;

/// What a worker publishes its [`Counters`] into, for other threads to read.
pub type SharedCounters = CounterSet<AtomicU64>;

impl Counters {
    /// Counts a response to a `method` request.
    pub(crate) fn count_response(&mut self, method: Method, outcome: Outcome) {
        self.requests[RequestMethod::of(method).index()][outcome.index()] += 1;
    }

    /// The total of `auth_failures` over every reason.
    pub fn auth_failures_total(&self) -> u64 {
        self.auth_failures.iter().sum()
    }
}

impl SharedCounters {
    /// Stores `counters`: a worker publishing its own.
    pub fn store(&self, counters: &Counters) {
        for metric in 0..Self::METRICS.len() {
            for (cell, value) in self.cells(metric).iter().zip(counters.cells(metric)) {
                cell.store(*value, Relaxed);
            }
        }
    }

    /// Adds what changed from `before` to `now`: many servers summed into one. Wrapping, so a
    /// gauge that went down takes its share back. Only cells that moved are written.
    pub fn add_changes(&self, now: &Counters, before: &Counters) {
        for metric in 0..Self::METRICS.len() {
            let cells = self.cells(metric).iter();
            for ((cell, now), before) in cells.zip(now.cells(metric)).zip(before.cells(metric)) {
                let delta = now.wrapping_sub(*before);
                if delta != 0 {
                    cell.fetch_add(delta, Relaxed);
                }
            }
        }
    }
}

crate::label_set! {
    /// The request method a response answers (the `method` label); "other" for a request of a
    /// method we do not serve.
    pub enum RequestMethod: "method" {
        Binding = "binding",
        Allocate = "allocate",
        Refresh = "refresh",
        CreatePermission = "create_permission",
        ChannelBind = "channel_bind",
        Connect = "connect",
        ConnectionBind = "connection_bind",
        Other = "other",
    }
}

impl RequestMethod {
    pub fn of(method: Method) -> RequestMethod {
        match method {
            Method::BINDING => RequestMethod::Binding,
            Method::ALLOCATE => RequestMethod::Allocate,
            Method::REFRESH => RequestMethod::Refresh,
            Method::CREATE_PERMISSION => RequestMethod::CreatePermission,
            Method::CHANNEL_BIND => RequestMethod::ChannelBind,
            Method::CONNECT => RequestMethod::Connect,
            Method::CONNECTION_BIND => RequestMethod::ConnectionBind,
            _ => RequestMethod::Other,
        }
    }
}

/// How a request was answered (the `code` label): success ("200") or an [`ErrorCode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Error(ErrorCode),
}

const OUTCOME_VALUES: [&str; ErrorCode::ALL.len() + 1] = {
    let mut values = ["200"; ErrorCode::ALL.len() + 1];
    let mut i = 0;
    while i < ErrorCode::ALL.len() {
        values[i + 1] = ErrorCode::ALL[i].label();
        i += 1;
    }
    values
};

impl LabelSet for Outcome {
    const COUNT: usize = OUTCOME_VALUES.len();
    const LABEL: Label = Label {
        name: "code",
        values: &OUTCOME_VALUES,
    };
    fn index(self) -> usize {
        match self {
            Outcome::Success => 0,
            Outcome::Error(code) => 1 + code as usize,
        }
    }
}

crate::label_set! {
    /// Why authentication failed (the `reason` label).
    pub enum AuthReason: "reason" {
        UnknownUser = "unknown_user",
        Expired = "expired",
        TtlTooLong = "ttl_too_long",
        BadIntegrity = "bad_integrity",
        /// USERNAME, REALM or NONCE longer than RFC 8489 allows (answered 400).
        Oversized = "oversized",
    }
}

crate::label_set! {
    /// The limit that refused a request (the `limit` label): the configuration key that sets it.
    pub enum Limit: "limit" {
        MaxPermissions = "max-permissions",
        MaxPeersPerRequest = "max-peers-per-request",
        MaxChannels = "max-channels",
        MaxAllocationsPerIp = "max-allocations-per-ip",
        UserQuota = "user-quota",
        TotalQuota = "total-quota",
        /// RFC 6062 peer connections per TCP allocation (`MAX_PEER_CONNECTIONS`, not a key).
        TcpPeerConnections = "tcp-peer-connections",
    }
}

crate::label_set! {
    /// Which bandwidth limit dropped a datagram (the `limit` label).
    pub enum BandwidthLimit: "limit" {
        MaxBps = "max-bps",
        BpsCapacity = "bps-capacity",
    }
}

crate::label_set! {
    /// What a reload took away (the `kind` label).
    pub enum Revoked: "kind" {
        Permission = "permission",
        Channel = "channel",
        /// An RFC 6062 peer connection, waiting for its ConnectionBind, spliced or connecting.
        TcpPeerConnection = "tcp_peer_connection",
    }
}

crate::label_set! {
    /// The kinds of log line that are rate limited (the `kind` label).
    pub enum LogKind: "kind" {
        AuthFailure = "auth_failure",
        PeerDenied = "peer_denied",
        LimitRefusal = "limit_refusal",
    }
}

crate::label_set! {
    /// Which way relayed data went (the `direction` label).
    pub enum Direction: "direction" {
        ToPeer = "to_peer",
        ToClient = "to_client",
    }
}

impl LabelSet for Transport {
    const COUNT: usize = 3;
    const LABEL: Label = Label {
        name: "transport",
        values: &[
            Transport::Udp.as_str(),
            Transport::Tcp.as_str(),
            Transport::Tls.as_str(),
        ],
    };
    fn index(self) -> usize {
        self as usize
    }
}

/// The `method` label's values, by index.
pub const METHODS: &[&str] = RequestMethod::LABEL.values;
/// The `code` label's values, by index: "200", then every [`ErrorCode`].
pub const CODES: &[&str] = Outcome::LABEL.values;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_their_index() {
        for code in ErrorCode::ALL {
            assert_eq!(CODES[Outcome::Error(*code).index()], code.label());
        }
        assert_eq!(CODES[Outcome::Success.index()], "200");
        for transport in [Transport::Udp, Transport::Tcp, Transport::Tls] {
            assert_eq!(
                Transport::LABEL.values[transport.index()],
                transport.as_str()
            );
        }
        assert_eq!(
            METHODS,
            [
                "binding",
                "allocate",
                "refresh",
                "create_permission",
                "channel_bind",
                "connect",
                "connection_bind",
                "other"
            ]
        );
        assert_eq!(
            RequestMethod::of(Method::CONNECTION_BIND),
            RequestMethod::ConnectionBind
        );
        assert_eq!(RequestMethod::of(Method::SEND), RequestMethod::Other);
    }

    #[test]
    fn publishing_stores_and_folding_adds_changes() {
        let mut counters = Counters::default();
        counters.count_response(
            Method::CONNECT,
            Outcome::Error(ErrorCode::ConnectionAlreadyExists),
        );
        counters.allocations_by_transport[Transport::Tcp.index()] = 2;
        let published = SharedCounters::default();
        published.store(&counters);
        let connect = RequestMethod::Connect.index();
        let code446 = CODES.iter().position(|c| *c == "446").unwrap();
        assert_eq!(published.requests[connect][code446].load(Relaxed), 1);

        let summed = SharedCounters::default();
        summed.add_changes(&counters, &Counters::default());
        let before = counters;
        counters.allocations_by_transport[Transport::Tcp.index()] = 1;
        summed.add_changes(&counters, &before);
        assert_eq!(
            summed.allocations_by_transport[Transport::Tcp.index()].load(Relaxed),
            1
        );
        assert_eq!(summed.requests[connect][code446].load(Relaxed), 1);
    }
}
