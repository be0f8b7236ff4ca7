//! tern's protocol core, sans-IO: the STUN codec (`stun`), the TURN state machine (`turn`),
//! credentials and nonces (`auth`), and the peer-address policy and quotas (`policy`).
//!
//! Nothing here opens a socket, spawns a task or reads a clock: the caller passes `now` and
//! bytes in and carries out what comes back. The server crate (`tern`) does the I/O.
#![forbid(unsafe_code)]

pub mod auth;
pub mod policy;
pub mod stun;
pub mod turn;
