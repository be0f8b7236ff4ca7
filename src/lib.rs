//! tern: a TURN/STUN relay server.
//!
//! The protocol core (`stun`, `turn`, `auth`, `policy`) is sans-IO: bytes and `now` in, what to
//! send out. `net` is the only module with sockets.

pub mod auth;
pub mod bench;
pub mod config;
pub mod credentials;
pub mod http;
pub mod net;
pub mod policy;
pub mod stun;
pub mod turn;
