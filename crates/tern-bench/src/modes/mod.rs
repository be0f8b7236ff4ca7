//! One file per mode.

pub mod abuse;
pub mod alloc;
pub mod binding;
pub mod forwarder;
pub mod hold;
pub mod relay;
pub mod steady;
pub mod table;
