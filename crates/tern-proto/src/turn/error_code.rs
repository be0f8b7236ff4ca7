//! STUN/TURN error codes (the ERROR-CODE attribute) and the reason phrases we send: one
//! declaration, from which the wire number, the phrase and the `code` metric label derive.

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $reason:literal; )*) => {
        /// An error response's code. Only the writer sees the number ([`ErrorCode::code`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in declaration (and label) order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The number on the wire (class × 100 + number).
            pub const fn code(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The reason phrase the RFC gives it.
            pub const fn reason(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $reason,)*
                }
            }

            /// The code as a metric label value, e.g. `"438"`.
            pub const fn label(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => stringify!($code),)*
                }
            }

            /// The code with this number, if we know it.
            pub fn from_code(code: u16) -> Option<ErrorCode> {
                ErrorCode::ALL.iter().copied().find(|c| c.code() == code)
            }
        }
    };
}

// Numeric order. RFC 8489 §14.8 defines 300, 400, 401, 420, 438 and 500; RFC 8656 §19 the
// allocation codes; RFC 6062 §6.3 446 and 447.
error_codes! {
    TryAlternate = 300, "Try Alternate";
    BadRequest = 400, "Bad Request";
    Unauthorized = 401, "Unauthorized";
    Forbidden = 403, "Forbidden";
    UnknownAttribute = 420, "Unknown Attribute";
    AllocationMismatch = 437, "Allocation Mismatch";
    StaleNonce = 438, "Stale Nonce";
    AddressFamilyNotSupported = 440, "Address Family not Supported";
    WrongCredentials = 441, "Wrong Credentials";
    UnsupportedTransportProtocol = 442, "Unsupported Transport Protocol";
    PeerAddressFamilyMismatch = 443, "Peer Address Family Mismatch";
    ConnectionAlreadyExists = 446, "Connection Already Exists";
    ConnectionTimeoutOrFailure = 447, "Connection Timeout or Failure";
    AllocationQuotaReached = 486, "Allocation Quota Reached";
    /// Declared for completeness; tern does not send it.
    ServerError = 500, "Server Error";
    InsufficientCapacity = 508, "Insufficient Capacity";
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn codes_carry_the_rfc_reason_phrases() {
        let expected = [
            (300, "Try Alternate"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (420, "Unknown Attribute"),
            (437, "Allocation Mismatch"),
            (438, "Stale Nonce"),
            (440, "Address Family not Supported"),
            (441, "Wrong Credentials"),
            (442, "Unsupported Transport Protocol"),
            (443, "Peer Address Family Mismatch"),
            (446, "Connection Already Exists"),
            (447, "Connection Timeout or Failure"),
            (486, "Allocation Quota Reached"),
            (500, "Server Error"),
            (508, "Insufficient Capacity"),
        ];
        assert_eq!(ErrorCode::ALL.len(), expected.len());
        for (number, phrase) in expected {
            let code = ErrorCode::from_code(number).expect("declared");
            assert_eq!(code.code(), number);
            assert_eq!(code.reason(), phrase, "{number}");
            assert_eq!(code.label(), number.to_string());
        }
        assert_eq!(ErrorCode::from_code(499), None);
    }
}
