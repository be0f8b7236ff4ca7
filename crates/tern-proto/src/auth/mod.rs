//! Long-term credentials: TURN REST (ephemeral) credentials with several secrets, static users,
//! and stateless nonces.

mod credentials;
mod nonce;

pub use credentials::{
    long_term_key, mint, rest_password, AuthError, Authenticator, KeySet, LongTermKey, Minted,
    StaticKey,
};
pub use nonce::{Nonce, NonceCheck, NonceMint};
