//! Parsing single values (addresses, ranges, user keys) shared by the file and the flags.

use super::{AllocationLimit, ConfigError, ExternalIp, LogFormat};
use crate::auth::StaticKey;
use crate::policy::IpRange;
use std::net::{IpAddr, SocketAddr};

/// What an error shows instead of a secret.
pub(super) const REDACTED: &str = "<redacted>";

pub(super) fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A switch given as text: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0` (any case); empty
/// (a bare flag or coTURN line) means true.
pub(super) fn boolean(key: &str, text: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(invalid(
            key,
            text,
            "expected true or false (or yes/no, on/off, 1/0)",
        )),
    }
}

/// Any text, as it is.
pub(super) fn text(_key: &str, text: &str) -> Result<String, ConfigError> {
    Ok(text.to_string())
}

pub(super) fn path(_key: &str, text: &str) -> Result<std::path::PathBuf, ConfigError> {
    Ok(text.into())
}

pub(super) fn log_format(key: &str, text: &str) -> Result<LogFormat, ConfigError> {
    match text.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(invalid(key, text, "expected \"text\" or \"json\"")),
    }
}

pub(super) fn fast_path(key: &str, text: &str) -> Result<tern_xdp::Mode, ConfigError> {
    text.trim()
        .parse()
        .map_err(|_| invalid(key, text, "expected \"auto\", \"off\" or \"required\""))
}

/// A network interface name, as `ip link` shows it.
pub(super) fn interface(key: &str, text: &str) -> Result<String, ConfigError> {
    let name = text.trim();
    let valid = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
    match valid {
        true => Ok(name.to_string()),
        false => Err(invalid(
            key,
            text,
            "not an interface name (1 to 15 characters, no '/', ':' or spaces)",
        )),
    }
}

pub(super) fn ip(key: &str, text: &str) -> Result<IpAddr, ConfigError> {
    text.trim()
        .parse()
        .map_err(|_| invalid(key, text, "not an IP address"))
}

pub(super) fn socket_addr(key: &str, text: &str) -> Result<std::net::SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        invalid(
            key,
            text,
            "not an address:port (e.g. 127.0.0.1:8080 or [::1]:8080)",
        )
    })
}

pub(super) fn range(key: &str, text: &str) -> Result<IpRange, ConfigError> {
    text.trim().parse().map_err(|_| {
        invalid(
            key,
            text,
            "not an IP address, CIDR block or coTURN a.b.c.d-e.f.g.h range",
        )
    })
}

/// An allocation limit: `N` (0 = no limit) or `N%` of the relay ports (1 to 100).
pub(super) fn allocation_limit(key: &str, text: &str) -> Result<AllocationLimit, ConfigError> {
    let trimmed = text.trim();
    let bad = || {
        invalid(
            key,
            text,
            "expected a number of allocations (0 = no limit) or a share of the relay ports, 1% to 100%",
        )
    };
    match trimmed.strip_suffix('%') {
        Some(percent) => match percent.trim().parse::<u8>() {
            Ok(percent @ 1..=100) => Ok(AllocationLimit::PercentOfPorts(percent)),
            _ => Err(bad()),
        },
        None => trimmed
            .parse::<u32>()
            .map(AllocationLimit::Count)
            .map_err(|_| bad()),
    }
}

/// `alternate-server`: `ip:port`, `[v6]:port`, or a bare address meaning port 3478.
pub(super) fn server_address(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 3478))
        .map_err(|_| invalid(key, text, "expected IP:PORT or [IPv6]:PORT"))
}

/// `PUBLIC` or `PUBLIC/PRIVATE`, both of one family.
pub(super) fn external_ip(key: &str, text: &str) -> Result<ExternalIp, ConfigError> {
    let bad = |reason: &str| invalid(key, text, reason);
    let (public, private) = match text.trim().split_once('/') {
        None => (text.trim(), None),
        Some((public, private)) => (public, Some(private)),
    };
    let public: IpAddr = public
        .trim()
        .parse()
        .map_err(|_| bad("expected PUBLIC-IP or PUBLIC-IP/PRIVATE-IP"))?;
    let private: Option<IpAddr> = match private {
        None => None,
        Some(private) => Some(
            private
                .trim()
                .parse()
                .map_err(|_| bad("expected PUBLIC-IP or PUBLIC-IP/PRIVATE-IP"))?,
        ),
    };
    if private.is_some_and(|private| private.is_ipv4() != public.is_ipv4()) {
        return Err(bad(
            "public and private addresses must be of the same family",
        ));
    }
    Ok(ExternalIp { public, private })
}

/// A static user's secret: `0x` + 32 hex digits is coTURN's precomputed MD5 key, anything else a
/// password. Errors are reported under `users.<name>` and never show the secret.
pub(super) fn static_key(user: &str, text: &str) -> Result<StaticKey, ConfigError> {
    let Some(hex) = text.strip_prefix("0x") else {
        return Ok(StaticKey::Password(text.to_string()));
    };
    let bad = || {
        let reason = "a 0x key must be exactly 32 hex digits";
        invalid(&format!("users.{user}"), REDACTED, reason)
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut key = [0u8; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(StaticKey::Key(key))
}

/// A static user's secret as the file writes it (the inverse of [`static_key`]).
pub(super) fn render_key(key: &StaticKey) -> String {
    match key {
        StaticKey::Password(password) => password.clone(),
        StaticKey::Key(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// A user given as a flag or environment value: `NAME:PASSWORD` or `NAME:0x<hex>`.
pub(super) fn user_entry(text: &str) -> Result<(String, StaticKey), ConfigError> {
    let Some((name, secret)) = text.split_once(':') else {
        return Err(invalid(
            "users",
            REDACTED,
            "expected NAME:PASSWORD or NAME:0x<32 hex digits>",
        ));
    };
    Ok((name.to_string(), static_key(name, secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ip_public_only() {
        let parsed = external_ip("external-ip", "203.0.113.7").unwrap();
        assert_eq!(
            parsed,
            ExternalIp {
                public: "203.0.113.7".parse().unwrap(),
                private: None
            }
        );
    }

    #[test]
    fn external_ip_public_and_private() {
        let parsed = external_ip("external-ip", "203.0.113.7/10.0.0.5").unwrap();
        assert_eq!(
            parsed,
            ExternalIp {
                public: "203.0.113.7".parse().unwrap(),
                private: Some("10.0.0.5".parse().unwrap())
            }
        );
        let v6 = external_ip("external-ip", "2001:db8::1/fd00::1").unwrap();
        assert_eq!(v6.private, Some("fd00::1".parse().unwrap()));
    }

    #[test]
    fn external_ip_rejects_garbage_and_mixed_families() {
        for text in [
            "",
            "nope",
            "1.2.3.4/",
            "/1.2.3.4",
            "1.2.3.4/x",
            "1.2.3.4/fd00::1",
        ] {
            let err = external_ip("external-ip", text).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key, value, .. } if key == "external-ip" && value == text),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn static_key_forms() {
        assert_eq!(
            static_key("alice", "pw").unwrap(),
            StaticKey::Password("pw".into())
        );
        let key = static_key("bob", "0x00112233445566778899aabbccddeeff").unwrap();
        let expected = [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        assert_eq!(key, StaticKey::Key(expected));
        assert_eq!(
            static_key("bob", "0xAABBCCDDEEFF00112233445566778899").unwrap(),
            StaticKey::Key([
                0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                0x88, 0x99
            ])
        );
    }

    #[test]
    fn static_key_bad_hex_is_redacted() {
        for text in [
            "0x1234",
            "0x00112233445566778899aabbccddeeffaa",
            "0xzz112233445566778899aabbccddeeff",
        ] {
            let err = static_key("bob", text).unwrap_err();
            let shown = err.to_string();
            assert!(
                shown.contains("users.bob") && shown.contains(REDACTED),
                "{shown}"
            );
            assert!(!shown.contains(&text[2..]), "{shown}");
        }
    }

    #[test]
    fn user_entry_forms() {
        assert_eq!(
            user_entry("alice:pa:ss").unwrap(),
            ("alice".to_string(), StaticKey::Password("pa:ss".into()))
        );
        let err = user_entry("alice-no-colon-secret").unwrap_err().to_string();
        assert!(
            err.contains("users") && !err.contains("no-colon-secret"),
            "{err}"
        );
    }
}
