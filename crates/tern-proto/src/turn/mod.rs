//! The TURN server state machine (RFC 8656), sans-IO.
//!
//! A [`Server`] owns allocations, permissions, channels and their timers. It never touches a
//! socket or a clock: the I/O layer passes `now` and bytes in and carries out the [`Output`].
//! Each worker thread owns one `Server`; only quotas are shared between them.

mod allocation;
mod core_config;
mod errors;
pub mod metrics;
mod nat_discovery;
mod server;
mod timers;

pub use allocation::AllocationInfo;
pub use core_config::{
    CoreConfig, ExternalIp, CHANNEL_LIFETIME, DEFAULT_ALLOCATE_LIFETIME, MAX_ALLOCATE_LIFETIME,
    MAX_CHANNEL_NUMBER, MAX_CHANNEL_NUMBER_RFC5766, PERMISSION_LIFETIME, STALE_NONCE_SECS,
};
pub use nat_discovery::NatDiscovery;
pub use server::{
    AllocId, BoundRelay, ConnectionLookup, Counters, Event, Family, FiveTuple, Output, PortRequest,
    RelayError, RelayRequest, RelayTransport, Server, Transport, CONNECTION_BIND_TIMEOUT,
    MAX_PEER_CONNECTIONS,
};

#[cfg(test)]
mod tests;
