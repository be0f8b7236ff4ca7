//! Known-answer tests: RFC 5769 test vectors and RFC 8489 Appendix B.1.

use md5::{Digest, Md5};
use sha2::Sha256;
use std::net::SocketAddr;
use tern::stun::{attr, decode_xor_address, Class, IntegrityCheck, IntegrityKind, Message, Method};

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| (c as char).to_digit(16).expect("hex digit") as u8)
        .collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.1 Sample Request.
const SAMPLE_REQUEST: &str = "
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";

/// RFC 5769 §2.2 Sample IPv4 Response.
const SAMPLE_IPV4_RESPONSE: &str = "
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96";

/// RFC 5769 §2.3 Sample IPv6 Response.
const SAMPLE_IPV6_RESPONSE: &str = "
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c";

/// RFC 5769 §2.4 Sample Request with Long-Term Authentication.
const SAMPLE_LONG_TERM: &str = "
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

/// RFC 8489 Appendix B.1 as corrected in the RFC 8489 errata. The vector as first published
/// is broken (its length field and HMAC do not match its contents, and its nonce lacks the
/// security-feature cookie); the corrected one adds PASSWORD-ALGORITHM = SHA-256 (0x0002),
/// so the long-term key is SHA-256("<user>:<realm>:<password>") rather than MD5.
const RFC8489_B1_CORRECTED: &str = "
    00 01 00 90 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 1e 00 20 4a 3c f3 8f ef 69 92 bd a9 52 c6 78 04 17 da 0f
                24 81 94 15 56 9e 60 b2 05 c4 6e 41 40 7f 17 04
    00 15 00 29 6f 62 4d 61 74 4a 6f 73 32 41 41 41 43 66 2f 2f
                34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39
                46 53 54 76 79 36 34 73 41 00 00 00
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 1d 00 04 00 02 00 00
    00 1c 00 20 b5 c7 bf 00 5b 6c 52 a2 1c 51 c5 e8 92 f8 19 24
                13 62 96 cb 92 7c 43 14 93 09 27 8c c6 51 8e 65";

const MATRIX_USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";

fn md5_key(user: &str, realm: &str, password: &str) -> [u8; 16] {
    Md5::digest(format!("{user}:{realm}:{password}")).into()
}

#[test]
fn rfc5769_sample_request() {
    let bytes = hex(SAMPLE_REQUEST);
    let msg = Message::parse(&bytes).expect("parses");
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(msg.class(), Class::Request);
    assert_eq!(msg.transaction_id(), &bytes[8..20]);
    assert_eq!(msg.get_str(attr::SOFTWARE), Some(Ok("STUN test client")));
    assert_eq!(msg.get_str(attr::USERNAME), Some(Ok("evtj:h6vY")));
    assert_eq!(msg.get_u32(0x0024), Some(0x6e00_01ff)); // PRIORITY
    assert_eq!(msg.integrity_kind(), Some(IntegrityKind::Sha1));
    assert_eq!(
        msg.verify_integrity(SHORT_TERM_PASSWORD),
        IntegrityCheck::Valid(IntegrityKind::Sha1)
    );
    assert_eq!(msg.verify_integrity(b"wrong"), IntegrityCheck::Invalid);
    assert_eq!(msg.fingerprint_ok(), Some(true));
    let types: Vec<u16> = msg.attributes().map(|a| a.typ).collect();
    assert_eq!(
        types,
        [
            attr::SOFTWARE,
            0x0024,
            0x8029,
            attr::USERNAME,
            attr::MESSAGE_INTEGRITY,
            attr::FINGERPRINT
        ]
    );
}

fn check_response(vector: &str, expected: &str) {
    let bytes = hex(vector);
    let msg = Message::parse(&bytes).expect("parses");
    assert_eq!(msg.method(), Method::BINDING);
    assert_eq!(msg.class(), Class::Success);
    assert_eq!(msg.get_str(attr::SOFTWARE), Some(Ok("test vector")));
    let value = msg
        .get(attr::XOR_MAPPED_ADDRESS)
        .expect("XOR-MAPPED-ADDRESS");
    let addr = decode_xor_address(value, msg.transaction_id()).expect("decodes");
    assert_eq!(addr, expected.parse::<SocketAddr>().expect("address"));
    assert_eq!(
        msg.verify_integrity(SHORT_TERM_PASSWORD),
        IntegrityCheck::Valid(IntegrityKind::Sha1)
    );
    assert_eq!(msg.fingerprint_ok(), Some(true));
}

#[test]
fn rfc5769_ipv4_response() {
    check_response(SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853");
}

#[test]
fn rfc5769_ipv6_response() {
    check_response(
        SAMPLE_IPV6_RESPONSE,
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
    );
}

#[test]
fn rfc5769_long_term_request() {
    let bytes = hex(SAMPLE_LONG_TERM);
    let msg = Message::parse(&bytes).expect("parses");
    assert_eq!(msg.get_str(attr::USERNAME), Some(Ok(MATRIX_USER)));
    assert_eq!(msg.get_str(attr::REALM), Some(Ok("example.org")));
    assert_eq!(
        msg.get_str(attr::NONCE),
        Some(Ok("f//499k954d6OL34oL9FSTvy64sA"))
    );
    assert_eq!(msg.fingerprint_ok(), None);
    // RFC 5769 errata: the password "The<U+00AD>M<U+00AA>tr<U+2168>" is used after SASLprep,
    // i.e. "TheMatrIX".
    let key = md5_key(MATRIX_USER, "example.org", "TheMatrIX");
    assert_eq!(
        msg.verify_integrity(&key),
        IntegrityCheck::Valid(IntegrityKind::Sha1)
    );
    let wrong = md5_key(MATRIX_USER, "example.org", "TheMatrix");
    assert_eq!(msg.verify_integrity(&wrong), IntegrityCheck::Invalid);
}

#[test]
fn rfc8489_b1_sha256_request_corrected() {
    let bytes = hex(RFC8489_B1_CORRECTED);
    let msg = Message::parse(&bytes).expect("parses");
    assert_eq!(msg.integrity_kind(), Some(IntegrityKind::Sha256));
    // USERHASH = SHA-256(username ":" realm) (RFC 8489 §14.4).
    let userhash = Sha256::digest(format!("{MATRIX_USER}:example.org"));
    assert_eq!(msg.get(attr::USERHASH), Some(&userhash[..]));
    assert_eq!(
        msg.get_str(attr::NONCE),
        Some(Ok("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"))
    );
    assert_eq!(msg.get_u32(attr::PASSWORD_ALGORITHM), Some(0x0002_0000));
    let key = Sha256::digest(format!("{MATRIX_USER}:example.org:TheMatrIX"));
    assert_eq!(
        msg.verify_integrity(&key),
        IntegrityCheck::Valid(IntegrityKind::Sha256)
    );
    let md5 = md5_key(MATRIX_USER, "example.org", "TheMatrIX");
    assert_eq!(msg.verify_integrity(&md5), IntegrityCheck::Invalid);
}
