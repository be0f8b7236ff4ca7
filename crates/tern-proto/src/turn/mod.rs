//! The TURN server state machine (RFC 8656, RFC 6062), sans-IO.
//!
//! A [`Server`] owns allocations, permissions, channels and their timers. It never touches a
//! socket or a clock: the I/O layer passes `now` and bytes in and carries out the [`Output`].
//! Each worker thread owns one `Server`; only quotas are shared between them.
//!
//! - `types`: the vocabulary shared with the I/O layer (tuples, ids, outputs, events).
//! - `server`: the state, construction, dispatch, timers; `admin`: listing and deleting.
//! - `request`: requests decoded into typed messages; `auth`: authentication and challenges.
//! - `allocate`, `requests` (Binding, Refresh, CreatePermission, ChannelBind), `rfc6062`
//!   (TCP relays), `data` (ChannelData, Send, peer datagrams).
//! - `offload`: which channels and permissions the I/O layer may relay itself (the kernel fast
//!   path), announced as events.
//! - `reply`: writing and counting responses (and rate limiting unauthenticated ones);
//!   `error_code`: the error codes; `metrics`: the counters, declared once; `log_gate`: rate
//!   limiting the log lines clients can provoke.

mod admin;
mod allocate;
mod allocation;
mod auth;
mod capacity;
mod core_config;
mod data;
mod error_code;
mod log_gate;
pub mod metrics;
mod nat_discovery;
mod offload;
mod refusal;
mod reply;
mod request;
mod requests;
mod rfc6062;
mod server;
mod timers;
mod types;

pub use allocation::{AllocationInfo, Traffic};
pub use core_config::{
    CoreConfig, ExternalIp, CHANNEL_LIFETIME, DEFAULT_ALLOCATE_LIFETIME, DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_PEERS_PER_REQUEST, DEFAULT_MAX_PERMISSIONS, DEFAULT_UNAUTHENTICATED_RATE_LIMIT,
    MAX_ALLOCATE_LIFETIME, MAX_CHANNEL_NUMBER, MAX_CHANNEL_NUMBER_RFC5766, PERMISSION_LIFETIME,
    STALE_NONCE_SECS,
};
pub use error_code::ErrorCode;
pub use log_gate::LINES_PER_SECOND as LOG_LINES_PER_SECOND;
pub use metrics::{BandwidthLimit, Counters, Direction};
pub use nat_discovery::NatDiscovery;
pub use server::Server;
pub use types::{
    AllocId, BoundRelay, ConnectionLookup, Event, Family, FiveTuple, Offload, OffloadKey,
    Offloaded, Output, PortRequest, RelayError, RelayRequest, RelayTransport, Transport,
    CONNECTION_BIND_TIMEOUT, MAX_PEER_CONNECTIONS,
};

#[cfg(test)]
mod tests;
