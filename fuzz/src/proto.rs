//! The TURN vocabulary of the structured targets: who talks (clients, peers), with which
//! credentials, and requests built from fuzzer choices. Every address is made up (documentation
//! ranges and a few special ones the peer policy must refuse); nothing here opens a socket.

use crate::Input;
use std::net::SocketAddr;
use tern_proto::auth::{long_term_key, mint, LongTermKey, NonceMint, StaticKey};
use tern_proto::stun::{attr, Class, MessageWriter, Method};

pub const REALM: &str = "tern";
pub const SECRET_A: &str = "fuzz-secret-a";
pub const SECRET_B: &str = "fuzz-secret-b";
pub const STATIC_USER: &str = "carol";
pub const STATIC_PASSWORD: &str = "carol-password";
/// Wall-clock seconds at the start of every run.
pub const UNIX_START: u64 = 1_700_000_000;
/// REST credentials last this long (under the default `max-credential-ttl`).
pub const CREDENTIAL_TTL: u64 = 43_200;
pub const NONCE_KEY: [u8; 32] = [7; 32];
/// The host's own address: listeners and relays.
pub const SERVER_V4: &str = "192.0.2.1:3478";
pub const SERVER_V6: &str = "[2001:db8::1]:3478";
pub const RELAY_PORTS: (u16, u16) = (49152, 65535);

/// Peers a request or a datagram names: ones the policies permit or deny in turn, the host's own
/// address at a relay port and outside it, loopback, private, mapped and NAT64 spellings.
pub const PEERS: &[&str] = &[
    "198.51.100.9:7000",
    "198.51.100.10:7001",
    "203.0.113.5:8000",
    "192.0.2.1:50010",
    "192.0.2.1:22",
    "127.0.0.1:9000",
    "10.0.0.1:80",
    "0.0.0.0:80",
    "[2001:db8::9]:7000",
    "[::ffff:198.51.100.9]:7000",
    "[64:ff9b::c633:6409]:7000",
    "[::1]:9000",
    "100.64.0.1:3478",
    "169.254.169.254:80",
    "[fe80::1]:7000",
    "198.51.100.255:65535",
];

pub fn peer(index: usize) -> SocketAddr {
    PEERS[index % PEERS.len()].parse().unwrap()
}

pub fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// The credentials a client can sign with. Only the first three are ever good (while the
/// configuration holds their secret or user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    RestA,
    RestB,
    Static,
    WrongPassword,
    UnknownUser,
    /// A REST credential that expired before the request.
    Expired,
    /// A REST credential that lasts longer than `max-credential-ttl` allows.
    TooLong,
}

pub const CREDENTIALS: &[Credential] = &[
    Credential::RestA,
    Credential::RestB,
    Credential::Static,
    Credential::WrongPassword,
    Credential::UnknownUser,
    Credential::Expired,
    Credential::TooLong,
];

/// A username and the key it signs with.
#[derive(Clone, Debug)]
pub struct Signer {
    pub username: String,
    pub key: LongTermKey,
    /// Whether the key is the right one for the username (under a configuration that knows it).
    pub genuine: bool,
}

/// The REST credentials of a run, minted once at its start (as a client holds one).
pub struct Credentials {
    rest_a: Signer,
    rest_b: Signer,
}

impl Default for Credentials {
    fn default() -> Self {
        let signer = |secret: &str, user: &str| {
            let minted = mint(secret, Some(user), CREDENTIAL_TTL, UNIX_START);
            Signer {
                key: long_term_key(&minted.username, REALM, &minted.password),
                username: minted.username,
                genuine: true,
            }
        };
        Credentials {
            rest_a: signer(SECRET_A, "alice"),
            rest_b: signer(SECRET_B, "bob"),
        }
    }
}

impl Credentials {
    /// The signer for `credential` at wall-clock time `now_unix`.
    pub fn signer(&self, credential: Credential, now_unix: u64) -> Signer {
        let rest = |ttl: u64, issued: u64, genuine| {
            let minted = mint(SECRET_A, Some("dave"), ttl, issued);
            Signer {
                key: long_term_key(&minted.username, REALM, &minted.password),
                username: minted.username,
                genuine,
            }
        };
        match credential {
            Credential::RestA => self.rest_a.clone(),
            Credential::RestB => self.rest_b.clone(),
            Credential::Static => Signer {
                username: STATIC_USER.into(),
                key: long_term_key(STATIC_USER, REALM, STATIC_PASSWORD),
                genuine: true,
            },
            Credential::WrongPassword => Signer {
                username: STATIC_USER.into(),
                key: long_term_key(STATIC_USER, REALM, "not-the-password"),
                genuine: false,
            },
            Credential::UnknownUser => Signer {
                username: "mallory".into(),
                key: long_term_key("mallory", REALM, "guess"),
                genuine: false,
            },
            Credential::Expired => rest(60, now_unix.saturating_sub(120), false),
            Credential::TooLong => rest(10 * 86_400, now_unix, false),
        }
    }
}

/// The static users every configuration of the targets may hold.
pub fn static_users() -> Vec<(String, StaticKey)> {
    vec![(
        STATIC_USER.into(),
        StaticKey::Password(STATIC_PASSWORD.into()),
    )]
}

pub const METHODS: &[Method] = &[
    Method::ALLOCATE,
    Method::REFRESH,
    Method::CREATE_PERMISSION,
    Method::CHANNEL_BIND,
    Method::CONNECT,
    Method::BINDING,
    Method::CONNECTION_BIND,
    Method::SEND,
];

/// How a request is signed.
pub struct Signing<'s> {
    pub signer: Option<&'s Signer>,
    pub nonce: Vec<u8>,
    pub realm: &'s [u8],
    pub sha256: bool,
    pub fingerprint: bool,
}

/// Reads the signing choices for a request from `client` at `now_unix`: a credential (or none),
/// a nonce (fresh, stale, garbage), the integrity kind and a FINGERPRINT. Returns the signer.
pub fn read_signer(
    input: &mut Input<'_>,
    credentials: &Credentials,
    now_unix: u64,
) -> Option<Signer> {
    let choice = input.byte();
    // One in eight unsigned.
    if choice % 8 == 7 {
        return None;
    }
    let credential = CREDENTIALS[usize::from(choice / 8) % CREDENTIALS.len()];
    Some(credentials.signer(credential, now_unix))
}

/// Reads the nonce choice: fresh for `client`, stale, garbage or none.
pub fn read_nonce(
    input: &mut Input<'_>,
    mint: &NonceMint,
    client: SocketAddr,
    now_unix: u64,
) -> Vec<u8> {
    match input.byte() % 8 {
        0..=4 => mint.issue(client, now_unix).as_str().as_bytes().to_vec(),
        5 => mint
            .issue(client, now_unix.saturating_sub(100_000))
            .as_str()
            .as_bytes()
            .to_vec(),
        6 => input.bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// Writes the request attributes the input chooses (at most 6); `connection_ids` are ids the
/// server handed out, which CONNECTION-ID picks from.
pub fn write_attributes(input: &mut Input<'_>, w: &mut MessageWriter<'_>, connection_ids: &[u32]) {
    let count = input.byte() % 7;
    for _ in 0..count {
        match input.byte() % 15 {
            0 => {
                let protocol = *input.choose(&[17u8, 17, 6, 0]);
                w.add_bytes(attr::REQUESTED_TRANSPORT, &[protocol, 0, 0, 0]);
            }
            1 => {
                let lifetime = match input.byte() % 5 {
                    0 => 0,
                    1 => 60,
                    2 => 600,
                    3 => 3600,
                    _ => input.u32(),
                };
                w.add_u32(attr::LIFETIME, lifetime);
            }
            2 | 3 => {
                let peer = peer(input.pick(PEERS.len()));
                w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
            }
            4 => {
                let number = match input.byte() % 4 {
                    0 => 0x4000,
                    1 => 0x4001,
                    2 => 0x4FFF,
                    _ => input.u16(),
                };
                let value = [(number >> 8) as u8, number as u8, 0, 0];
                w.add_bytes(attr::CHANNEL_NUMBER, &value);
            }
            5 => {
                let data = input.bytes();
                w.add_bytes(attr::DATA, data);
            }
            6 => {
                let flags = input.byte();
                w.add_bytes(attr::EVEN_PORT, &[flags]);
            }
            7 => {
                let token = input.u32().to_be_bytes();
                w.add_bytes(attr::RESERVATION_TOKEN, &[token, token].concat());
            }
            8 | 9 => {
                let typ = *input.choose(&[
                    attr::REQUESTED_ADDRESS_FAMILY,
                    attr::ADDITIONAL_ADDRESS_FAMILY,
                    attr::ADDITIONAL_ADDRESS_FAMILY_LEGACY,
                ]);
                let family = *input.choose(&[1u8, 2, 3]);
                w.add_bytes(typ, &[family, 0, 0, 0]);
            }
            10 => {
                w.add_bytes(attr::DONT_FRAGMENT, &[]);
            }
            11 => {
                let id = match connection_ids {
                    [] => input.u32(),
                    ids => ids[input.pick(ids.len())],
                };
                w.add_u32(attr::CONNECTION_ID, id);
            }
            12 => {
                // Oversized text fields.
                let typ =
                    *input.choose(&[attr::USERNAME, attr::REALM, attr::NONCE, attr::SOFTWARE]);
                let len = usize::from(input.u16() % 800);
                w.add_bytes(typ, &vec![b'x'; len]);
            }
            _ => {
                let typ = input.u16();
                let value = input.bytes();
                w.add_bytes(typ, value);
            }
        }
    }
}

/// A STUN message: `method` and `class`, the chosen attributes, then USERNAME, REALM, NONCE and
/// integrity as `signing` says. `None` if it does not fit 64 KiB.
pub fn build_message(
    input: &mut Input<'_>,
    method: Method,
    class: Class,
    tid: [u8; 12],
    signing: &Signing<'_>,
    connection_ids: &[u32],
) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_535];
    let mut w = MessageWriter::new(&mut buf, method, class, &tid);
    write_attributes(input, &mut w, connection_ids);
    if let Some(signer) = signing.signer {
        w.add_bytes(attr::USERNAME, signer.username.as_bytes());
        w.add_bytes(attr::REALM, signing.realm);
        w.add_bytes(attr::NONCE, &signing.nonce);
        if signing.sha256 {
            w.add_message_integrity_sha256(&signer.key);
        } else {
            w.add_message_integrity(&signer.key);
        }
    }
    if signing.fingerprint {
        w.add_fingerprint();
    }
    w.finish().map(<[u8]>::to_vec)
}

/// A ChannelData frame: a channel number (mostly bound-looking ones), a payload, and for streams
/// the padding.
pub fn channel_data(input: &mut Input<'_>, padded: bool) -> Vec<u8> {
    let number = match input.byte() % 4 {
        0 => 0x4000,
        1 => 0x4001,
        2 => 0x4FFF,
        _ => input.u16(),
    };
    let payload = input.long_bytes(1500);
    // Sometimes a length that lies.
    let len = if input.byte().is_multiple_of(8) {
        input.u16()
    } else {
        payload.len() as u16
    };
    let mut frame = Vec::with_capacity(4 + payload.len() + 3);
    frame.extend_from_slice(&number.to_be_bytes());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    if padded {
        frame.resize(frame.len().next_multiple_of(4), 0);
    }
    frame
}
