//! The PROXY protocol v1/v2 parser (`net::proxy_protocol::parse`) on arbitrary first bytes of a
//! connection. No panic, and the answers agree with each other as bytes arrive: a complete
//! header lies within the buffer, within the protocol's size limits, and reads the same alone or
//! with more bytes behind it; an incomplete one is incomplete at every shorter cut; an error
//! stays an error whatever follows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::net::proxy_protocol::{may_start_header, parse, Parsed, V1_MAX_LEN, V2_MAX_LEN};

fuzz_target!(|data: &[u8]| {
    let result = parse(data);
    let mut longer = data.to_vec();
    longer.extend_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, b'\r', b'\n']);
    match result {
        Ok(Parsed::Complete { len, .. }) => {
            assert!(len <= data.len(), "a header longer than the buffer");
            let limit = if data[0] == b'P' {
                V1_MAX_LEN
            } else {
                V2_MAX_LEN
            };
            assert!(len <= limit, "a {len}-byte header past the limit");
            assert_eq!(
                parse(&data[..len]),
                result,
                "the header alone reads differently"
            );
            assert_eq!(parse(&longer), result, "bytes after the header changed it");
        }
        Ok(Parsed::Incomplete) => {
            assert!(
                data.len() < V2_MAX_LEN,
                "incomplete past the longest header"
            );
            for cut in 0..data.len() {
                assert_eq!(parse(&data[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
            }
        }
        Err(_) => {
            assert!(
                parse(&longer).is_err(),
                "more bytes turned an error into a header"
            );
        }
    }
    if let Some(&first) = data.first() {
        if !may_start_header(first) {
            assert!(
                result.is_err(),
                "a header that may_start_header says cannot start"
            );
        }
    }
});
