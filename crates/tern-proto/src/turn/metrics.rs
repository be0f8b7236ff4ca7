//! Fixed-size tallies for metrics: requests by method and result code, authentication failures
//! by reason, live allocations by transport. Plain integers in arrays, bounded label sets, no
//! allocation; the worker publishes them into atomics a few times a second.

use super::Transport;

/// Request methods counted (the `method` label), by index.
pub const METHODS: [&str; 6] = [
    "binding",
    "allocate",
    "refresh",
    "create_permission",
    "channel_bind",
    "other",
];

/// Result codes counted (the `code` label), by index; 200 is success, anything unlisted "other".
pub const CODES: [&str; 15] = [
    "200", "300", "400", "401", "403", "420", "437", "438", "440", "441", "442", "443", "486",
    "508", "other",
];

/// Authentication failure reasons (the `reason` label), by index.
pub const AUTH_REASONS: [&str; 4] = ["unknown_user", "expired", "ttl_too_long", "bad_integrity"];

/// Transports (the `transport` label), by index; see [`transport_index`].
pub const TRANSPORTS: [&str; 3] = ["udp", "tcp", "tls"];

pub fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

/// Index of an authentication failure reason in [`AUTH_REASONS`].
pub(crate) mod auth_reason {
    pub const UNKNOWN_USER: usize = 0;
    pub const EXPIRED: usize = 1;
    pub const TTL_TOO_LONG: usize = 2;
    pub const BAD_INTEGRITY: usize = 3;
}

/// Responses sent, by request method and result code.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestCounts {
    pub counts: [[u64; CODES.len()]; METHODS.len()],
}

impl RequestCounts {
    /// Tallies a response we wrote (a well-formed STUN message): its method, and its result code
    /// from the ERROR-CODE attribute for an error response. Indications are not counted.
    pub fn record(&mut self, response: &[u8]) {
        if response.len() < 20 {
            return;
        }
        let typ = u16::from_be_bytes([response[0], response[1]]);
        let class = ((typ & 0x0100) >> 7) | ((typ & 0x0010) >> 4);
        let method = ((typ & 0x3E00) >> 2) | ((typ & 0x00E0) >> 1) | (typ & 0x000F);
        let method = match method {
            0x001 => 0,
            0x003 => 1,
            0x004 => 2,
            0x008 => 3,
            0x009 => 4,
            _ => 5,
        };
        let code = match class {
            0b10 => 0,
            0b11 => code_index(error_code(response)),
            _ => return,
        };
        self.counts[method][code] += 1;
    }
}

fn code_index(code: Option<u16>) -> usize {
    const VALUES: [u16; 14] = [
        200, 300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 508,
    ];
    code.and_then(|code| VALUES.iter().position(|v| *v == code))
        .unwrap_or(CODES.len() - 1)
}

/// The ERROR-CODE (0x0009) of a response, if present.
fn error_code(message: &[u8]) -> Option<u16> {
    let mut at = 20;
    while at + 4 <= message.len() {
        let typ = u16::from_be_bytes([message[at], message[at + 1]]);
        let len = usize::from(u16::from_be_bytes([message[at + 2], message[at + 3]]));
        let value = message.get(at + 4..at + 4 + len)?;
        if typ == 0x0009 && len >= 4 {
            return Some(u16::from(value[2] & 0x07) * 100 + u16::from(value[3]));
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_success_and_error_responses() {
        let mut counts = RequestCounts::default();
        // Binding success response: type 0x0101.
        let mut binding = vec![0x01, 0x01, 0, 0];
        binding.extend([0u8; 16]);
        counts.record(&binding);
        // Allocate error response (0x0113) with ERROR-CODE 401.
        let mut allocate = vec![0x01, 0x13, 0, 8];
        allocate.extend([0u8; 16]);
        allocate.extend([0x00, 0x09, 0x00, 0x04, 0, 0, 4, 1]);
        counts.record(&allocate);
        // An indication is not counted.
        let mut indication = vec![0x00, 0x17, 0, 0];
        indication.extend([0u8; 16]);
        counts.record(&indication);
        assert_eq!(counts.counts[0][0], 1);
        assert_eq!(counts.counts[1][3], 1);
        assert_eq!(counts.counts.iter().flatten().sum::<u64>(), 2);
    }
}
