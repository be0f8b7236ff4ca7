//! Configuration: `turnserver.toml` + CLI flags + environment, validated into one typed
//! [`Config`] before anything binds.

mod cli;
pub mod coturn;
mod error;
mod file;
mod keys;
mod load;
mod render;
mod shape;
mod validate;
mod values;

pub use cli::{Cli, Command, ConfigCommand, CredentialsArgs, HealthArgs, ServeArgs};
pub use error::{ConfigError, Origin};
pub use keys::{find as find_key, restart_keys_changed, Config, Key, Reload, KEYS};
pub use load::{from_str, from_toml_str, load, load_all, load_file, Format, Loaded};
pub use render::{converted_toml, effective_toml};
pub use shape::Arity;

use crate::auth::Authenticator;
use crate::policy::PeerPolicy;
use crate::turn::CoreConfig;
pub use crate::turn::ExternalIp;
use std::fmt;

/// A REST secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Config {
    /// The slice of this configuration the TURN core reads (swapped in whole on reload).
    pub fn core(&self) -> CoreConfig {
        let secrets: Vec<String> = self
            .static_auth_secrets
            .iter()
            .map(|s| s.0.clone())
            .collect();
        let auth = Authenticator::new(&self.realm, &secrets, &self.users, self.max_credential_ttl);
        let policy = PeerPolicy::new(
            &self.denied_peer_ips,
            &self.allowed_peer_ips,
            self.allow_loopback_peers,
        );
        let secs = |secs: u32| std::time::Duration::from_secs(secs.into());
        CoreConfig {
            default_lifetime: secs(self.default_allocate_lifetime),
            max_lifetime: secs(self.max_allocate_lifetime),
            permission_lifetime: secs(self.permission_lifetime),
            channel_lifetime: secs(self.channel_lifetime),
            stale_nonce_secs: self.stale_nonce.into(),
            max_channel_number: if self.allow_rfc5766_channel_numbers {
                crate::turn::MAX_CHANNEL_NUMBER_RFC5766
            } else {
                crate::turn::MAX_CHANNEL_NUMBER
            },
            user_quota: self.user_quota,
            total_quota: self.total_quota,
            software: self.software.clone().filter(|s| !s.is_empty()),
            external_ips: self.external_ips.clone(),
            alternate_servers: self.alternate_servers.clone(),
            ..CoreConfig::new(auth, policy)
        }
    }

    /// The effective `alt-listening-port`: as configured, or `listening-port` + 1.
    pub fn alt_listening_port(&self) -> u16 {
        match self.alt_listening_port {
            0 => self.listening_port.wrapping_add(1),
            port => port,
        }
    }
}
