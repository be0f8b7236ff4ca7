//! Arbitrary bytes through every STUN and ChannelData reader: none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_proto::stun::{decode_xor_address, frame_kind, frame_len, ChannelData, Message};

const KEY: &[u8] = b"fuzz key";

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::parse(data) {
        let _ = (msg.method(), msg.class(), msg.as_bytes());
        let tid = msg.transaction_id();
        for attr in msg.attributes() {
            let _ = decode_xor_address(attr.value, tid);
            let _ = msg.get(attr.typ);
            let _ = msg.get_u32(attr.typ);
            let _ = msg.get_str(attr.typ);
        }
        let _ = msg.error_code();
        let _ = msg.integrity_kind();
        let _ = msg.verify_integrity(KEY);
        let _ = msg.fingerprint_ok();
        let _ = msg.unknown_required(|t| t < 0x0020, &mut [0u16; 8]);
    }
    let _ = ChannelData::parse(data);
    let _ = frame_kind(data);
    let _ = frame_len(data, false);
    let _ = frame_len(data, true);
});
