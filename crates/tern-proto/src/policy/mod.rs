//! Peer-address policy, quotas and rate limits: pure functions over configuration and the state
//! their owner keeps.

pub mod bandwidth;
mod peer;
mod quota;
mod range;
mod source_limit;

pub use bandwidth::{ByteBucket, CapacityPool, SharedByteBucket};
pub use peer::{default_denied, default_denied_range, normalize, Denial, PeerPolicy, Verdict};
pub use quota::{address_key, QuotaError, QuotaLimits, Quotas};
pub use range::{IpRange, RangeParseError};
pub use source_limit::SourceLimiter;
