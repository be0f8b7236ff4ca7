//! Writes the seed corpora under `fuzz/corpus/<target>/`: real protocol samples for the byte
//! targets (RFC 5769 vectors, an Allocate captured from coTURN's turnutils_uclient, PROXY
//! headers as HAProxy's specification writes them, the repository's turnserver.toml and
//! Debian's turnserver.conf), and for the structured targets scripts of choices that walk the
//! protocol's main paths, so the fuzzer starts from an allocation with a permission, a channel
//! and traffic rather than having to find one.
//!
//! `cargo run --example seeds` (from `fuzz/`); seeds carry a file extension, libFuzzer's own
//! finds (SHA-1 names) do not, which is how `.gitignore` tells them apart.

use std::fs;
use std::path::{Path, PathBuf};
use tern_fuzz::Script;

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| (c as char).to_digit(16).unwrap() as u8)
        .collect();
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

/// RFC 5769 §2.1 Sample Request.
const RFC5769_REQUEST: &str = "
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";

/// RFC 5769 §2.3 Sample IPv6 Response.
const RFC5769_IPV6_RESPONSE: &str = "
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c";

/// RFC 5769 §2.4 Sample Request with Long-Term Authentication.
const RFC5769_LONG_TERM: &str = "
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

/// The first Allocate of `turnutils_uclient -u alice -w secret -e 127.0.0.1 127.0.0.1` (coTURN
/// 4.6), captured on loopback: REQUESTED-TRANSPORT, LIFETIME, EVEN-PORT (R),
/// REQUESTED-ADDRESS-FAMILY, FINGERPRINT.
const UCLIENT_ALLOCATE: &str = "000300282112a4426df1bd4a25df88a2e717e02a00190004110000\
    00000d00040000030900180001800000000017000401000000802800049883de65";

/// TURN request methods as `tern_fuzz::proto::METHODS` orders them.
const ALLOCATE: u8 = 0;
const REFRESH: u8 = 1;
const CREATE_PERMISSION: u8 = 2;
const CHANNEL_BIND: u8 = 3;
const CONNECT: u8 = 4;
const BINDING: u8 = 5;
/// Credential bytes (`proto::read_signer`).
const REST_A: u8 = 0;
const STATIC: u8 = 16;
const WRONG_PASSWORD: u8 = 24;
const UNSIGNED: u8 = 7;

/// Attribute scripts (`proto::write_attributes`): kind byte, then its arguments.
fn udp_transport(s: &mut Script) {
    s.byte(0).byte(0);
}
fn tcp_transport(s: &mut Script) {
    s.byte(0).byte(2);
}
fn peer(s: &mut Script, index: u8) {
    s.byte(2).byte(index);
}
fn channel(s: &mut Script) {
    s.byte(4).byte(0);
}
fn lifetime_zero(s: &mut Script) {
    s.byte(1).byte(0);
}
fn connection_id(s: &mut Script) {
    s.byte(11).byte(0);
}

/// One `turn_server` request step: client, method, signer, fresh nonce, SHA-1, no FINGERPRINT.
fn turn_request(s: &mut Script, client: u8, method: u8, signer: u8, attrs: &[fn(&mut Script)]) {
    s.byte(0).byte(client).byte(method).byte(2).byte(1);
    s.byte(signer).byte(0).byte(1).byte(1).byte(0);
    s.byte(attrs.len() as u8);
    for attr in attrs {
        attr(s);
    }
}

fn turn_request_peer(s: &mut Script, client: u8, method: u8, peers: &[u8]) {
    s.byte(0).byte(client).byte(method).byte(2).byte(1);
    s.byte(REST_A).byte(0).byte(1).byte(1).byte(0);
    let channel_attr = u8::from(method == CHANNEL_BIND);
    s.byte(peers.len() as u8 + channel_attr);
    if method == CHANNEL_BIND {
        channel(s);
    }
    for &index in peers {
        peer(s, index);
    }
}

fn turn_channel_data(s: &mut Script, client: u8, payload: &[u8]) {
    s.byte(4).byte(client).byte(0).long_bytes(payload).byte(1);
}

fn turn_peer_datagram(s: &mut Script, peer: u8, payload: &[u8]) {
    s.byte(6).byte(0).byte(peer).long_bytes(payload);
}

fn turn_advance_secs(s: &mut Script, secs: u8) {
    s.byte(7).byte(1).byte(secs);
}

fn turn_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();

    // Policy 1 (198.51.100.0/24 allowed): allocate, permission, channel, data both ways, a Send
    // indication, time, a reload to a policy that denies the peer, data again, Refresh 0.
    let mut s = Script::default();
    s.byte(1);
    turn_request(&mut s, 0, ALLOCATE, REST_A, &[udp_transport]);
    turn_request_peer(&mut s, 0, CREATE_PERMISSION, &[0]);
    turn_request_peer(&mut s, 0, CHANNEL_BIND, &[0]);
    turn_channel_data(&mut s, 0, b"ping");
    turn_peer_datagram(&mut s, 0, b"pong");
    s.byte(3).byte(0).byte(1).long_bytes(b"abc").byte(1).byte(0);
    s.byte(3).byte(0).byte(0).long_bytes(b"abc").byte(1).byte(0);
    turn_advance_secs(&mut s, 200);
    turn_channel_data(&mut s, 0, b"ping");
    s.byte(8).byte(0).byte(0);
    turn_channel_data(&mut s, 0, b"ping");
    turn_peer_datagram(&mut s, 0, b"pong");
    turn_advance_secs(&mut s, 1);
    turn_channel_data(&mut s, 0, b"ping");
    turn_request(&mut s, 0, REFRESH, REST_A, &[lifetime_zero]);
    seeds.push(("udp-allocation-reload.script", s.bytes));

    // Unauthenticated traffic from several sources, wrong credentials, Binding, then a good
    // allocation from the same address (per-source answer limits, limits variant 2).
    let mut s = Script::default();
    s.byte(24 + 1);
    for client in 0..3 {
        for _ in 0..4 {
            turn_request(&mut s, client, ALLOCATE, UNSIGNED, &[udp_transport]);
        }
        turn_request(&mut s, client, BINDING, UNSIGNED, &[]);
        turn_request(&mut s, client, ALLOCATE, WRONG_PASSWORD, &[udp_transport]);
    }
    turn_request(&mut s, 0, ALLOCATE, STATIC, &[udp_transport]);
    turn_advance_secs(&mut s, 2);
    turn_request(&mut s, 1, ALLOCATE, STATIC, &[udp_transport]);
    seeds.push(("unauthenticated.script", s.bytes));

    // RFC 6062 over TCP: a TCP allocation, Connect, the connection opens, a ConnectionBind from
    // the TLS client with the same user, a peer connecting in.
    let mut s = Script::default();
    s.byte(1);
    turn_request(&mut s, 3, ALLOCATE, REST_A, &[tcp_transport]);
    s.byte(0).byte(3).byte(CONNECT).byte(2).byte(1);
    s.byte(REST_A).byte(0).byte(1).byte(1).byte(0).byte(1);
    peer(&mut s, 0);
    s.byte(12).byte(0).byte(0).byte(1);
    s.byte(14)
        .byte(4)
        .byte(1)
        .byte(REST_A)
        .byte(0)
        .byte(0)
        .byte(1);
    connection_id(&mut s);
    s.byte(13).byte(0).byte(1);
    seeds.push(("tcp-relay-rfc6062.script", s.bytes));

    // Limits variant 1 (2 permissions, 2 channels, 2 peers per request, small quotas):
    // allocations from three 5-tuples, then more permissions than allowed.
    let mut s = Script::default();
    s.byte(12 + 1);
    for client in 0..3 {
        turn_request(&mut s, client, ALLOCATE, REST_A, &[udp_transport]);
    }
    turn_request_peer(&mut s, 0, CREATE_PERMISSION, &[0, 1]);
    turn_request_peer(&mut s, 0, CREATE_PERMISSION, &[2]);
    turn_request_peer(&mut s, 0, CREATE_PERMISSION, &[0, 1, 2, 15]);
    s.byte(10).byte(1).byte(0);
    seeds.push(("limits.script", s.bytes));

    // A dual-stack allocation with EVEN-PORT (R) from the IPv6 client, its relay bound late.
    let mut s = Script::default();
    s.byte(1);
    turn_request(
        &mut s,
        2,
        ALLOCATE,
        REST_A,
        &[
            udp_transport,
            |s| {
                s.byte(8).byte(1).byte(1);
            },
            |s| {
                s.byte(6).byte(0x80);
            },
        ],
    );
    s.byte(11).byte(0).byte(0);
    turn_request_peer(&mut s, 2, CREATE_PERMISSION, &[8, 9]);
    turn_advance_secs(&mut s, 255);
    s.byte(7).byte(3);
    seeds.push(("dual-stack.script", s.bytes));
    seeds
}

/// One `stream_connection` step that sends a request: method, signer, fresh nonce, SHA-1, no
/// FINGERPRINT, attributes, then the read size (all at once) and, for an Allocate, "bind now".
fn stream_request(s: &mut Script, method: u8, attrs: &[fn(&mut Script)]) {
    s.byte(0)
        .byte(2)
        .byte(method)
        .byte(REST_A)
        .byte(0)
        .byte(1)
        .byte(0);
    s.byte(attrs.len() as u8);
    for attr in attrs {
        attr(s);
    }
    s.byte(0);
    if method == ALLOCATE {
        s.byte(1);
    }
}

fn stream_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    // A trusted proxy's v1 header, then a TURN session over TCP: allocate, permission, channel,
    // ChannelData in 16-byte reads, the client reading, a peer datagram, time.
    let mut s = Script::default();
    s.byte(1);
    s.byte(0).byte(0).byte(0).byte(0).byte(0);
    stream_request(&mut s, ALLOCATE, &[udp_transport]);
    stream_request(&mut s, CREATE_PERMISSION, &[|s| peer(s, 0)]);
    stream_request(&mut s, CHANNEL_BIND, &[channel, |s| peer(s, 0)]);
    s.byte(0)
        .byte(5)
        .byte(0)
        .long_bytes(b"hello peer")
        .byte(1)
        .byte(1);
    s.byte(5).byte(255);
    s.byte(7).byte(0).long_bytes(b"hello client");
    s.byte(6).byte(1).byte(5);
    s.byte(6).byte(2);
    seeds.push(("proxy-v1-session.script", s.bytes));

    // A v2 header with a TLV, on a listener that also takes TLS: STUN after it.
    let mut s = Script::default();
    s.byte(1 | 2);
    s.byte(0)
        .byte(0)
        .byte(1)
        .byte(2)
        .byte(1)
        .bytes(&[0x04, 0x00, 0x01, 0x00])
        .byte(0);
    stream_request(&mut s, BINDING, &[]);
    s.byte(5).byte(255);
    seeds.push(("proxy-v2-binding.script", s.bytes));

    // TLS first bytes; the handshake completes; then a slowloris half frame and time.
    let mut s = Script::default();
    s.byte(2);
    s.byte(0).byte(1).byte(0);
    s.byte(11).byte(1);
    s.byte(0)
        .byte(6)
        .long_bytes(&[0x00, 0x03, 0x00, 0x40, 0x21, 0x12])
        .byte(0);
    s.byte(6).byte(1).byte(5);
    seeds.push(("tls-slowloris.script", s.bytes));

    // A TCP relay (RFC 6062): allocate with TCP, Connect, its result, a peer connecting in.
    let mut s = Script::default();
    s.byte(0);
    stream_request(&mut s, ALLOCATE, &[tcp_transport]);
    stream_request(&mut s, CONNECT, &[|s| peer(s, 0)]);
    s.byte(9).byte(0).byte(1).byte(1);
    s.byte(8).byte(0).byte(1);
    stream_request(&mut s, 6, &[connection_id]);
    seeds.push(("tcp-relay.script", s.bytes));

    // A client that never reads while a peer floods.
    let mut s = Script::default();
    s.byte(0);
    stream_request(&mut s, ALLOCATE, &[udp_transport]);
    stream_request(&mut s, CREATE_PERMISSION, &[|s| peer(s, 0)]);
    for _ in 0..40 {
        s.byte(7).byte(0).long_bytes(&[0x55; 4000]);
    }
    s.byte(6).byte(1).byte(11);
    seeds.push(("stalled-reader.script", s.bytes));
    seeds
}

/// A config seed: no secret template chosen beyond the first, at line 0, then the text.
fn config_seed(text: &[u8]) -> Vec<u8> {
    let mut seed = vec![0, 0, 0];
    seed.extend_from_slice(text);
    seed
}

fn write(root: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = root.join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().unwrap();
    let corpus = fuzz.join("corpus");

    for (name, vector) in [
        ("rfc5769-request.bin", RFC5769_REQUEST),
        ("rfc5769-ipv6-response.bin", RFC5769_IPV6_RESPONSE),
        ("rfc5769-long-term.bin", RFC5769_LONG_TERM),
        ("uclient-allocate.bin", UCLIENT_ALLOCATE),
    ] {
        write(&corpus, "stun_parse", name, &hex(vector));
    }
    write(
        &corpus,
        "stun_parse",
        "channel-data.bin",
        &[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0],
    );

    let mut v2 = tern::net::proxy_protocol::V2_SIGNATURE.to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0x00, 0x0c, 203, 0, 113, 50, 192, 0, 2, 1, 0x04, 0xd2, 0x0d, 0x96,
    ]);
    let mut v2_local = tern::net::proxy_protocol::V2_SIGNATURE.to_vec();
    v2_local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    for (name, header) in [
        (
            "v1-tcp4.bin",
            b"PROXY TCP4 203.0.113.50 192.0.2.1 1234 3478\r\n".to_vec(),
        ),
        (
            "v1-tcp6.bin",
            b"PROXY TCP6 2001:db8::50 2001:db8::1 1234 3478\r\n".to_vec(),
        ),
        (
            "v1-unknown.bin",
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec(),
        ),
        ("v2-tcp4.bin", v2),
        ("v2-local.bin", v2_local),
    ] {
        write(&corpus, "proxy_header", name, &header);
    }

    let toml = fs::read(repo.join("turnserver.toml")).unwrap();
    write(
        &corpus,
        "config_toml",
        "turnserver.toml",
        &config_seed(&toml),
    );
    write(
        &corpus,
        "config_toml",
        "users.toml",
        &config_seed(b"realm = \"example.org\"\nmax-bps = 100000\n\n[users]\nalice = \"pw\"\n"),
    );
    for name in ["debian-turnserver.conf", "hardened-turnserver.conf"] {
        let conf = fs::read(repo.join("tests/fixtures/coturn").join(name)).unwrap();
        write(&corpus, "config_coturn", name, &config_seed(&conf));
    }

    for (name, seed) in turn_seeds() {
        write(&corpus, "turn_server", name, &seed);
    }
    for (name, seed) in stream_seeds() {
        write(&corpus, "stream_connection", name, &seed);
    }
    println!("seeds written under {}", corpus.display());
}
