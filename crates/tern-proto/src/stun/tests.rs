//! Unit tests: round trips, ignored attributes, malformed input, framing helpers.

use super::*;
use std::net::SocketAddr;

const TID: TransactionId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
const KEY: &[u8] = b"correct horse";

fn v4() -> SocketAddr {
    "192.0.2.1:32853".parse().expect("v4")
}
fn v6() -> SocketAddr {
    "[2001:db8::1234:5678]:3478".parse().expect("v6")
}

/// A message carrying every attribute kind the writer knows.
fn full_message(buf: &mut [u8]) -> Option<&[u8]> {
    let mut w = MessageWriter::new(buf, Method::ALLOCATE, Class::Error, &TID);
    w.add_xor_address(attr::XOR_MAPPED_ADDRESS, v4())
        .add_xor_address(attr::XOR_RELAYED_ADDRESS, v6())
        .add_address(attr::OTHER_ADDRESS, v6())
        .add_error_code(438, "Stale Nonce")
        .add_unknown_attributes(&[0x0031, 0x0042, 0x0053])
        .add_u32(attr::LIFETIME, 600)
        .add_bytes(attr::USERNAME, b"alice")
        .add_bytes(attr::REALM, b"example.org")
        .add_message_integrity(KEY)
        .add_message_integrity_sha256(KEY)
        .add_fingerprint();
    w.finish()
}

#[test]
fn message_type_interleaves_method_and_class() {
    use header::{class_of, message_type, method_of};
    assert_eq!(message_type(Method::BINDING, Class::Request), 0x0001);
    assert_eq!(message_type(Method::BINDING, Class::Success), 0x0101);
    assert_eq!(message_type(Method::BINDING, Class::Error), 0x0111);
    assert_eq!(message_type(Method::DATA, Class::Indication), 0x0017);
    assert_eq!(message_type(Method::SEND, Class::Indication), 0x0016);
    assert_eq!(message_type(Method::ALLOCATE, Class::Error), 0x0113);
    assert_eq!(message_type(Method(0xFFF), Class::Request), 0x3EEF);
    for m in 0..0x1000u16 {
        for class in [
            Class::Request,
            Class::Indication,
            Class::Success,
            Class::Error,
        ] {
            let typ = message_type(Method(m), class);
            assert_eq!(typ & 0xC000, 0);
            assert_eq!(method_of(typ), Method(m));
            assert_eq!(class_of(typ), class);
        }
    }
}

#[test]
fn round_trip_every_attribute() {
    let mut buf = [0u8; 512];
    let bytes = full_message(&mut buf).expect("fits");
    assert_eq!(bytes.len() % 4, 0);
    assert_eq!(
        usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
        bytes.len() - HEADER_LEN
    );
    let msg = Message::parse(bytes).expect("parses");
    assert_eq!(msg.method(), Method::ALLOCATE);
    assert_eq!(msg.class(), Class::Error);
    assert_eq!(msg.transaction_id(), &TID);
    let tid = msg.transaction_id();
    let mapped = msg.get(attr::XOR_MAPPED_ADDRESS).expect("mapped");
    assert_eq!(mapped.len(), 8);
    assert_eq!(decode_xor_address(mapped, tid), Ok(v4()));
    let relayed = msg.get(attr::XOR_RELAYED_ADDRESS).expect("relayed");
    assert_eq!(decode_xor_address(relayed, tid), Ok(v6()));
    // The plain address is not XORed: its port and address bytes stand as they are.
    let other = msg.get(attr::OTHER_ADDRESS).expect("other");
    assert_eq!(&other[..4], &[0, 2, 0x0D, 0x96]);
    assert_eq!(address::decode(other, None), Ok(v6()));
    assert_eq!(msg.error_code(), Some((438, "Stale Nonce")));
    assert_eq!(
        msg.get(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x31, 0x00, 0x42, 0x00, 0x53][..])
    );
    assert_eq!(msg.get_u32(attr::LIFETIME), Some(600));
    assert_eq!(msg.get_str(attr::USERNAME), Some(Ok("alice")));
    assert_eq!(msg.get_str(attr::REALM), Some(Ok("example.org")));
    assert_eq!(msg.get_u32(attr::USERNAME), None);
    assert_eq!(msg.get(attr::NONCE), None);
    assert_eq!(msg.integrity_kind(), Some(IntegrityKind::Sha256));
    assert_eq!(
        msg.verify_integrity(KEY),
        IntegrityCheck::Valid(IntegrityKind::Sha256)
    );
    assert_eq!(msg.verify_integrity(b"wrong"), IntegrityCheck::Invalid);
    assert_eq!(msg.fingerprint_ok(), Some(true));
    let types: Vec<u16> = msg.attributes().map(|a| a.typ).collect();
    assert_eq!(
        types,
        [
            attr::XOR_MAPPED_ADDRESS,
            attr::XOR_RELAYED_ADDRESS,
            attr::OTHER_ADDRESS,
            attr::ERROR_CODE,
            attr::UNKNOWN_ATTRIBUTES,
            attr::LIFETIME,
            attr::USERNAME,
            attr::REALM,
            attr::MESSAGE_INTEGRITY,
            attr::MESSAGE_INTEGRITY_SHA256,
            attr::FINGERPRINT,
        ]
    );
    // Offsets point at each attribute's header.
    for a in msg.attributes() {
        assert_eq!(
            u16::from_be_bytes([bytes[a.offset], bytes[a.offset + 1]]),
            a.typ
        );
    }
}

#[test]
fn sha1_integrity_alone_and_the_sha1_part_of_both() {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_bytes(attr::USERNAME, b"bob")
        .add_message_integrity(KEY);
    let bytes = w.finish().expect("fits").to_vec();
    let msg = Message::parse(&bytes).expect("parses");
    assert_eq!(msg.integrity_kind(), Some(IntegrityKind::Sha1));
    assert_eq!(
        msg.verify_integrity(KEY),
        IntegrityCheck::Valid(IntegrityKind::Sha1)
    );
    assert_eq!(msg.fingerprint_ok(), None);

    // With both present SHA256 wins; cut the message after MESSAGE-INTEGRITY (fixing the
    // length) and the SHA-1 value still verifies, so it was computed before SHA256 was added.
    let mut buf = [0u8; 512];
    let full = full_message(&mut buf).expect("fits").to_vec();
    let msg = Message::parse(&full).expect("parses");
    let mi = msg
        .attributes()
        .find(|a| a.typ == attr::MESSAGE_INTEGRITY)
        .expect("MI");
    let mut cut = full[..mi.offset + 24].to_vec();
    let body = (cut.len() - HEADER_LEN) as u16;
    cut[2..4].copy_from_slice(&body.to_be_bytes());
    assert_eq!(
        Message::parse(&cut).expect("parses").verify_integrity(KEY),
        IntegrityCheck::Valid(IntegrityKind::Sha1)
    );
}

#[test]
fn no_integrity_is_missing() {
    let mut buf = [0u8; 64];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_fingerprint();
    let bytes = w.finish().expect("fits");
    let msg = Message::parse(bytes).expect("parses");
    assert_eq!(msg.verify_integrity(KEY), IntegrityCheck::Missing);
    assert_eq!(msg.integrity_kind(), None);
    assert_eq!(msg.fingerprint_ok(), Some(true));
    assert_eq!(msg.attributes().count(), 1);
}

#[test]
fn any_flipped_byte_breaks_integrity_and_fingerprint() {
    let mut buf = [0u8; 512];
    let bytes = full_message(&mut buf).expect("fits").to_vec();
    let fp_at = bytes.len() - 8;
    // Bytes 2..4 are the length: flipping them makes the message unparseable instead.
    for i in (0..fp_at).filter(|i| !(2..4).contains(i)) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        let Ok(msg) = Message::parse(&bad) else {
            continue;
        };
        assert_eq!(msg.fingerprint_ok(), Some(false), "byte {i}");
        if msg.integrity_kind() == Some(IntegrityKind::Sha256) {
            assert_eq!(
                msg.verify_integrity(KEY),
                IntegrityCheck::Invalid,
                "byte {i}"
            );
        }
    }
}

#[test]
fn truncated_sha256_integrity_verifies() {
    use hmac::Mac;
    // Build with a full tag, then rewrite the attribute to a 16-byte truncation.
    let mut buf = [0u8; 128];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_bytes(attr::USERNAME, b"carol");
    let start = w.len().expect("ok");
    w.add_bytes(attr::MESSAGE_INTEGRITY_SHA256, &[0; 16]);
    let mut bytes = w.finish().expect("fits").to_vec();
    let body = (bytes.len() - HEADER_LEN) as u16;
    let mac = integrity::hmac::<integrity::HmacSha256>(KEY, &bytes, start, body).expect("mac");
    let tag = mac.finalize().into_bytes();
    bytes[start + 4..].copy_from_slice(&tag[..16]);
    let msg = Message::parse(&bytes).expect("parses");
    assert_eq!(
        msg.verify_integrity(KEY),
        IntegrityCheck::Valid(IntegrityKind::Sha256)
    );
    // A 12-byte value is below the 16-byte minimum.
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_bytes(attr::MESSAGE_INTEGRITY_SHA256, &tag[..12]);
    let msg = Message::parse(w.finish().expect("fits")).expect("parses");
    assert_eq!(msg.verify_integrity(KEY), IntegrityCheck::Invalid);
}

#[test]
fn attributes_after_integrity_are_ignored_except_fingerprint() {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_bytes(attr::USERNAME, b"dave")
        .add_message_integrity(KEY)
        .add_bytes(attr::REALM, b"evil")
        .add_u32(attr::LIFETIME, 1)
        .add_bytes(0x0031, b"x")
        .add_fingerprint();
    let bytes = w.finish().expect("fits");
    let msg = Message::parse(bytes).expect("parses");
    let types: Vec<u16> = msg.attributes().map(|a| a.typ).collect();
    assert_eq!(
        types,
        [attr::USERNAME, attr::MESSAGE_INTEGRITY, attr::FINGERPRINT]
    );
    assert_eq!(msg.get(attr::REALM), None);
    assert_eq!(msg.get_u32(attr::LIFETIME), None);
    assert_eq!(msg.unknown_required(|_| true, &mut [0; 4]), 0);
    assert_eq!(msg.unknown_required(|t| t != 0x0031, &mut [0; 4]), 0);
    assert_eq!(
        msg.verify_integrity(KEY),
        IntegrityCheck::Valid(IntegrityKind::Sha1)
    );
    assert_eq!(msg.fingerprint_ok(), Some(true));
}

#[test]
fn integrity_order_rules() {
    let mut buf = [0u8; 256];
    // SHA256 first: a later MESSAGE-INTEGRITY is ignored.
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_message_integrity_sha256(KEY)
        .add_message_integrity(KEY);
    let msg = Message::parse(w.finish().expect("fits")).expect("parses");
    let types: Vec<u16> = msg.attributes().map(|a| a.typ).collect();
    assert_eq!(types, [attr::MESSAGE_INTEGRITY_SHA256]);
    assert_eq!(
        msg.verify_integrity(KEY),
        IntegrityCheck::Valid(IntegrityKind::Sha256)
    );

    // MESSAGE-INTEGRITY, something else, then SHA256: the SHA256 is not adjacent, so ignored.
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_message_integrity(KEY)
        .add_bytes(attr::REALM, b"r")
        .add_message_integrity_sha256(KEY);
    let msg = Message::parse(w.finish().expect("fits")).expect("parses");
    assert_eq!(msg.integrity_kind(), Some(IntegrityKind::Sha1));
    assert_eq!(msg.attributes().count(), 1);

    // A FINGERPRINT that is not last is an ordinary attribute, not a fingerprint.
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_fingerprint().add_bytes(attr::USERNAME, b"u");
    let msg = Message::parse(w.finish().expect("fits")).expect("parses");
    assert_eq!(msg.fingerprint_ok(), None);
    assert_eq!(msg.attributes().count(), 2);
}

#[test]
fn unknown_required_lists_each_unknown_once() {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, &TID);
    w.add_bytes(0x0031, b"")
        .add_bytes(attr::USERNAME, b"u")
        .add_bytes(0x7FFF, b"a")
        .add_bytes(0x0031, b"b")
        .add_bytes(0x8031, b"optional")
        .add_bytes(0x0042, b"")
        .add_message_integrity(KEY);
    let msg = Message::parse(w.finish().expect("fits")).expect("parses");
    let known = |t: u16| t == attr::USERNAME;
    let mut out = [0u16; 8];
    let n = msg.unknown_required(known, &mut out);
    assert_eq!(&out[..n], &[0x0031, 0x7FFF, 0x0042]);
    let mut small = [0u16; 2];
    assert_eq!(msg.unknown_required(known, &mut small), 2);
    assert_eq!(small, [0x0031, 0x7FFF]);
    assert_eq!(msg.unknown_required(known, &mut []), 0);
}

#[test]
fn error_code_rejects_garbage() {
    let mut buf = [0u8; 64];
    type Case<'a> = (&'a [u8], Option<(u16, &'a str)>);
    let cases: [Case; 6] = [
        (&[0, 0, 4, 1, b'o', b'k'], Some((401, "ok"))),
        (&[0, 0, 6, 99], Some((699, ""))),
        (&[0, 0, 4, 100], None),
        (&[0, 0, 2, 0], None),
        (&[0, 0, 4], None),
        (&[0, 0, 4, 1, 0xFF, 0xFE], None),
    ];
    for (value, expected) in cases {
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Error, &TID);
        w.add_bytes(attr::ERROR_CODE, value);
        let msg = Message::parse(w.finish().expect("fits")).expect("parses");
        assert_eq!(msg.error_code(), expected, "{value:?}");
    }
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Error, &TID);
    w.add_error_code(300, "Try Alternate");
    let bytes = w.finish().expect("fits");
    assert_eq!(&bytes[24..28], &[0, 0, 3, 0]);
}

#[test]
fn get_str_reports_bad_utf8() {
    let mut buf = [0u8; 64];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_bytes(attr::USERNAME, &[0xC3, 0x28]);
    let msg = Message::parse(w.finish().expect("fits")).expect("parses");
    assert_eq!(
        msg.get_str(attr::USERNAME),
        Some(Err(ParseError::BadAttribute))
    );
    assert_eq!(msg.get_str(attr::REALM), None);
}

#[test]
fn xor_address_rejects_bad_family_and_length() {
    let tid = &TID;
    for value in [
        &[][..],
        &[0, 1, 0, 0, 1, 2, 3][..],
        &[0, 1, 0, 0, 1, 2, 3, 4, 5][..],
        &[0, 2, 0, 0, 1, 2, 3, 4][..],
        &[0, 3, 0, 0, 1, 2, 3, 4][..],
        &[0; 20][..],
    ] {
        assert_eq!(
            decode_xor_address(value, tid),
            Err(ParseError::BadAttribute)
        );
    }
}

/// A valid small message with integrity and fingerprint, for the malformed-input tests.
fn sample() -> Vec<u8> {
    let mut buf = [0u8; 128];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_bytes(attr::USERNAME, b"eve")
        .add_message_integrity(KEY)
        .add_fingerprint();
    w.finish().expect("fits").to_vec()
}

#[test]
fn malformed_headers() {
    let good = sample();
    assert_eq!(Message::parse(&[]).unwrap_err(), ParseError::TooShort);
    assert_eq!(
        Message::parse(&good[..19]).unwrap_err(),
        ParseError::TooShort
    );

    let mut bad = good.clone();
    bad[0] |= 0x80;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::NotStun);

    let mut bad = good.clone();
    bad[5] ^= 1;
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadCookie);

    let mut bad = good.clone();
    bad[3] += 2; // not a multiple of 4
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadLength);

    let mut bad = good.clone();
    bad[3] += 4; // claims more than the buffer holds
    assert_eq!(Message::parse(&bad).unwrap_err(), ParseError::BadLength);

    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 4]); // buffer longer than the length field
    assert_eq!(Message::parse(&longer).unwrap_err(), ParseError::BadLength);

    // Every strict prefix fails (its length field no longer matches) without panicking.
    for n in 0..good.len() {
        assert!(Message::parse(&good[..n]).is_err(), "prefix {n}");
    }
    assert!(Message::parse(&good).is_ok());
}

#[test]
fn malformed_attributes() {
    let good = sample();
    // USERNAME length past the end of the message.
    let mut bad = good.clone();
    bad[23] = 0xF0;
    assert_eq!(
        Message::parse(&bad).unwrap_err(),
        ParseError::TruncatedAttribute
    );
    // A length whose padding would run past the end.
    let mut hdr = [0u8; 28];
    let mut w = MessageWriter::new(&mut hdr, Method::BINDING, Class::Request, &TID);
    w.add_bytes(attr::USERNAME, b"abcd");
    let mut bytes = w.finish().expect("fits").to_vec();
    bytes[23] = 5; // value 5 bytes needs 8 with padding; only 4 remain
    assert_eq!(
        Message::parse(&bytes).unwrap_err(),
        ParseError::TruncatedAttribute
    );
    // A lone partial attribute header: 4 bytes is fine (empty value), and a header-only
    // message with no attributes parses.
    let mut empty = [0u8; 20];
    let w = MessageWriter::new(&mut empty, Method::BINDING, Class::Request, &TID);
    let msg = Message::parse(w.finish().expect("fits")).expect("parses");
    assert_eq!(msg.attributes().count(), 0);
    assert_eq!(msg.verify_integrity(KEY), IntegrityCheck::Missing);
}

/// xorshift64*: deterministic, dependency-free randomness for the no-panic loops.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Calls every reader on `bytes`; must never panic.
fn exercise(bytes: &[u8]) {
    if let Ok(msg) = Message::parse(bytes) {
        let _ = (
            msg.method(),
            msg.class(),
            msg.transaction_id(),
            msg.as_bytes(),
        );
        for a in msg.attributes() {
            let _ = decode_xor_address(a.value, msg.transaction_id());
            let _ = (msg.get(a.typ), msg.get_u32(a.typ), msg.get_str(a.typ));
        }
        let _ = (msg.error_code(), msg.integrity_kind(), msg.fingerprint_ok());
        let _ = msg.verify_integrity(KEY);
        let _ = msg.unknown_required(|t| t < 0x20, &mut [0; 4]);
    }
    let _ = ChannelData::parse(bytes);
    let _ = (
        frame_len(bytes, true),
        frame_len(bytes, false),
        frame_kind(bytes),
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut buf = [0u8; 128];
    for _ in 0..100_000 {
        let len = (rng.next() % 128) as usize;
        for b in buf.iter_mut().take(len) {
            *b = rng.next() as u8;
        }
        exercise(&buf[..len]);
    }
}

#[test]
fn random_bytes_with_valid_header_never_panic() {
    // Random bodies behind a correct header reach the attribute walk far more often.
    let mut rng = Rng(42);
    let mut buf = [0u8; 128];
    let mut parsed = 0;
    for _ in 0..100_000 {
        let body = (rng.next() % 27) as usize * 4;
        for b in buf.iter_mut().take(HEADER_LEN + body) {
            *b = rng.next() as u8;
        }
        // Short attribute lengths so some messages frame correctly.
        for i in (HEADER_LEN..HEADER_LEN + body).step_by(4) {
            if rng.next() % 2 == 0 {
                buf[i] = 0;
                buf[i + 2] = 0;
                buf[i + 3] &= 0x0F;
            }
        }
        buf[0] &= 0x3F;
        buf[2..4].copy_from_slice(&(body as u16).to_be_bytes());
        buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        parsed += usize::from(Message::parse(&buf[..HEADER_LEN + body]).is_ok());
        exercise(&buf[..HEADER_LEN + body]);
    }
    assert!(parsed > 1000, "only {parsed} parsed");
}

#[test]
fn mutated_valid_messages_never_panic() {
    let mut buf = [0u8; 512];
    let good = full_message(&mut buf).expect("fits").to_vec();
    let mut rng = Rng(7);
    for _ in 0..20_000 {
        let mut bad = good.clone();
        for _ in 0..1 + rng.next() % 4 {
            let i = (rng.next() as usize) % bad.len();
            bad[i] = rng.next() as u8;
        }
        exercise(&bad);
    }
}

#[test]
fn writer_overflow_returns_none() {
    for size in 0..20 {
        let mut buf = vec![0u8; size];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
        w.add_u32(attr::LIFETIME, 1).add_fingerprint();
        assert_eq!(w.len(), None);
        assert!(w.finish().is_none(), "size {size}");
    }
    let mut buf = [0u8; 20];
    let w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    assert_eq!(w.len(), Some(20));
    assert_eq!(w.finish().map(<[u8]>::len), Some(20));

    // Every size smaller than the full message overflows; the exact size fits.
    let mut big = [0u8; 512];
    let full_len = full_message(&mut big).expect("fits").len();
    for size in 0..full_len {
        let mut buf = vec![0u8; size];
        assert!(full_message(&mut buf).is_none(), "size {size}");
    }
    let mut exact = vec![0u8; full_len];
    assert!(full_message(&mut exact).is_some());

    // A value too long for the 16-bit length field overflows rather than wrapping.
    let mut huge = vec![0u8; 70_000];
    let mut w = MessageWriter::new(&mut huge, Method::BINDING, Class::Request, &TID);
    w.add_bytes(attr::DATA, &[0u8; 65_536]);
    assert!(w.finish().is_none());
    // Once overflowed, later small attributes do not resurrect the writer.
    let mut buf = [0u8; 32];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_bytes(attr::DATA, &[0u8; 16])
        .add_u32(attr::LIFETIME, 1);
    assert!(w.finish().is_none());
}

#[test]
fn writer_pads_with_zeros() {
    let mut buf = [0xAAu8; 64];
    let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &TID);
    w.add_bytes(attr::SOFTWARE, b"abcde");
    let bytes = w.finish().expect("fits");
    assert_eq!(bytes.len(), 32);
    assert_eq!(
        &bytes[20..],
        &[0x80, 0x22, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]
    );
    assert_eq!(&bytes[0..4], &[0x00, 0x01, 0x00, 0x0C]);
}

#[test]
fn channel_data_parse_and_write() {
    let mut frame = [0u8; 12];
    ChannelData::write_header((&mut frame[..4]).try_into().expect("4"), 0x4001, 5);
    frame[4..9].copy_from_slice(b"hello");
    assert_eq!(&frame[..4], &[0x40, 0x01, 0x00, 0x05]);
    let cd = ChannelData::parse(&frame[..9]).expect("exact");
    assert_eq!((cd.channel, cd.data), (0x4001, &b"hello"[..]));
    // Trailing padding is ignored; a short buffer is refused.
    assert_eq!(ChannelData::parse(&frame), Some(cd));
    assert_eq!(ChannelData::parse(&frame[..8]), None);
    assert_eq!(ChannelData::parse(&frame[..3]), None);
    assert_eq!(ChannelData::parse(&[]), None);
    // Channel number range.
    assert!(ChannelData::parse(&[0x40, 0x00, 0, 0]).is_some());
    assert!(ChannelData::parse(&[0x4F, 0xFF, 0, 0]).is_some());
    assert!(ChannelData::parse(&[0x3F, 0xFF, 0, 0]).is_none());
    assert!(
        ChannelData::parse(&[0x7F, 0xFF, 0, 0]).is_some(),
        "RFC 5766 range frames"
    );
    assert!(ChannelData::parse(&[0x80, 0x00, 0, 0]).is_none());
    assert!(ChannelData::parse(&[0x00, 0x01, 0, 0]).is_none());
}

#[test]
fn frame_len_cases() {
    assert_eq!(frame_len(&[], false), None);
    assert_eq!(frame_len(&[0x00, 0x01, 0x00], false), None);
    assert_eq!(frame_len(&[0x00, 0x01, 0x00, 0x58], false), Some(108));
    assert_eq!(
        frame_len(&[0x03, 0xFF, 0xFF, 0xFC], true),
        Some(20 + 0xFFFC)
    );
    assert_eq!(frame_len(&[0x40, 0x01, 0x00, 0x05], false), Some(9));
    assert_eq!(frame_len(&[0x40, 0x01, 0x00, 0x05], true), Some(12));
    assert_eq!(frame_len(&[0x4F, 0xFF, 0x00, 0x08], true), Some(12));
    assert_eq!(
        frame_len(&[0x4F, 0xFF, 0xFF, 0xFF], true),
        Some(4 + 0x10000)
    );
    assert_eq!(frame_len(&[0x40, 0x01, 0x00, 0x00], true), Some(4));
    assert_eq!(frame_len(&[0x80, 0x01, 0x00, 0x05], false), None);
    assert_eq!(frame_len(&[0x16, 0x03, 0x01, 0x00], false), None);
    assert_eq!(frame_len(&sample(), false), Some(sample().len()));
}

#[test]
fn data_indication_prefix_round_trip() {
    for (peer, prefix_len) in [(v4(), 36), (v6(), 48)] {
        assert_eq!(data_indication_prefix_len(&peer), prefix_len);
        assert!(prefix_len <= DATA_INDICATION_MAX_PREFIX);
        for payload_len in [0usize, 1, 3, 4, 5, 100] {
            let payload: Vec<u8> = (0..payload_len).map(|i| i as u8 ^ 0x5A).collect();
            let mut packet = [0xEEu8; DATA_INDICATION_MAX_PREFIX + 104];
            let total =
                write_data_indication_prefix(&mut packet[..prefix_len], &TID, peer, payload_len);
            let padded_len = payload_len.div_ceil(4) * 4;
            assert_eq!(total, prefix_len + padded_len);
            packet[prefix_len..prefix_len + payload_len].copy_from_slice(&payload);
            packet[prefix_len + payload_len..total].fill(0);
            let msg = Message::parse(&packet[..total]).expect("parses");
            assert_eq!(msg.method(), Method::DATA);
            assert_eq!(msg.class(), Class::Indication);
            assert_eq!(msg.transaction_id(), &TID);
            let addr = msg.get(attr::XOR_PEER_ADDRESS).expect("peer");
            assert_eq!(decode_xor_address(addr, &TID), Ok(peer));
            assert_eq!(msg.get(attr::DATA), Some(&payload[..]));
            assert_eq!(msg.attributes().count(), 2);
        }
    }
    // Misuse writes nothing and reports 0.
    let mut short = [0u8; 30];
    assert_eq!(write_data_indication_prefix(&mut short, &TID, v4(), 4), 0);
    assert_eq!(short, [0u8; 30]);
    let mut buf = [0u8; 48];
    assert_eq!(
        write_data_indication_prefix(&mut buf, &TID, v6(), 65_535),
        0
    );
    // The body (28 + padded payload) must fit the 16-bit length field.
    assert_eq!(
        write_data_indication_prefix(&mut buf, &TID, v6(), 65_504),
        48 + 65_504
    );
    assert_eq!(
        write_data_indication_prefix(&mut buf, &TID, v6(), 65_505),
        0
    );
}
