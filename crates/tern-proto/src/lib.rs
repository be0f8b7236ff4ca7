//! tern's protocol core, sans-IO: the STUN codec (`stun`), the TURN state machine (`turn`),
//! credentials and nonces (`auth`), the peer-address policy and quotas (`policy`), and the
//! metric declarations the server crate publishes and encodes (`metrics`).
//!
//! Nothing here opens a socket, spawns a task or reads a clock: the caller passes `now` and
//! bytes in and carries out what comes back. The server crate (`tern`) does the I/O.
#![forbid(unsafe_code)]

pub mod auth;
pub mod metrics;
pub mod policy;
pub mod stun;
pub mod turn;
