//! Reading and validating the configuration.

use super::{Config, ServeArgs};

/// A configuration problem, naming the key and the offending value (never a secret's value).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: invalid value {value:?}: {reason}")]
    Invalid { key: String, value: String, reason: String },
    #[error("unknown key {key:?}")]
    UnknownKey { key: String },
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
}

/// Builds the config from (in rising precedence) defaults, the file, the environment and flags.
pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    let _ = args;
    todo!("config helper")
}
