//! The open-file limit: every relay port and every TCP/TLS connection is a descriptor. tern
//! raises its soft RLIMIT_NOFILE to the hard limit at start (as servers commonly do) and says
//! so when even that is below what the port range and `max-connections` can use.

use crate::config::Config;
use rlimit::Resource;
use tracing::{info, warn};

/// Descriptors beyond relay sockets and connections: listeners (per worker and address), epoll
/// instances, wakers, the HTTP endpoint, log and certificate files.
const RESERVE: u64 = 256;

/// Raises the soft limit to the hard one; warns when the result is short of [`needed`].
pub fn raise_open_file_limit(config: &Config) {
    let (soft, hard) = match Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(error) => {
            warn!(%error, "cannot read the open-file limit (RLIMIT_NOFILE)");
            return;
        }
    };
    let mut limit = soft;
    if soft < hard {
        match Resource::NOFILE.set(hard, hard) {
            Ok(()) => {
                limit = hard;
                info!(
                    from = soft,
                    to = hard,
                    "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
                );
            }
            Err(error) => warn!(%error, soft, hard, "cannot raise the open-file limit"),
        }
    }
    let need = needed(config);
    if limit < need {
        warn!(
            limit,
            need,
            "the open-file limit is below what min-port..max-port ({} relay ports) and \
             max-connections ({}) can use: raise it (systemd LimitNOFILE=, docker --ulimit nofile=, \
             ulimit -n) or narrow the port range / lower max-connections",
            relay_ports(config),
            config.max_connections
        );
    }
}

fn relay_ports(config: &Config) -> u64 {
    u64::from(config.max_port.saturating_sub(config.min_port)) + 1
}

/// Descriptors tern can hold at its configured limits: one per relay port and per TCP/TLS
/// connection (`max-connections`, 0 = unlimited, counted as none), plus [`RESERVE`].
fn needed(config: &Config) -> u64 {
    relay_ports(config) + u64::from(config.max_connections) + RESERVE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_needs_the_whole_port_range_and_the_connections() {
        let config = Config::default();
        assert_eq!(needed(&config), 16384 + 10000 + RESERVE);
        let small = Config {
            min_port: 50000,
            max_port: 50099,
            max_connections: 0,
            ..Config::default()
        };
        assert_eq!(needed(&small), 100 + RESERVE);
    }
}
