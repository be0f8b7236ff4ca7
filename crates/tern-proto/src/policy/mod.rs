//! Peer-address policy and quotas: pure functions over configuration.

mod peer;
mod quota;
mod range;

pub use peer::{default_denied, default_denied_range, normalize, Denial, PeerPolicy};
pub use quota::{QuotaError, Quotas};
pub use range::{IpRange, RangeParseError};
