//! tern, the server crate: configuration (`config`), sockets and workers (`net`), the HTTP
//! endpoint (`http`). The protocol itself is the sans-IO crate `tern_proto`, re-exported here
//! under its module names.

pub mod config;
pub mod credentials;
pub mod http;
pub mod lifecycle;
pub mod local;
pub mod logging;
pub mod net;

pub use tern_proto::{auth, metrics, policy, stun, turn};
