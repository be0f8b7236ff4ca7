//! The TURN server state machine (RFC 8656), sans-IO.
