//! A small TURN client for setting up load: REST credentials, the 401 dance, Allocate,
//! ChannelBind, CreatePermission, Refresh. Builds and parses with tern's own STUN codec, and
//! works against any RFC 5766/8656 server (coTURN is the independent check).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tern_proto::auth::{long_term_key, LongTermKey};
use tern_proto::stun::{attr, Class, Message, MessageWriter, Method, TransactionId};

/// Credentials good for a day: longer than any run.
const CREDENTIAL_TTL: u64 = 86_400;

/// A REST username/password pair.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// `<expiry>:bench<index>` and its password, as `tern credentials` would mint them.
pub fn rest_credentials(secret: &str, index: usize) -> Credentials {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let minted =
        tern_proto::auth::mint(secret, Some(&format!("bench{index}")), CREDENTIAL_TTL, now);
    Credentials {
        username: minted.username,
        password: minted.password,
    }
}

/// What a 401 taught us: realm, nonce and the long-term key.
#[derive(Clone, Debug)]
pub struct Session {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub key: LongTermKey,
}

impl Session {
    pub fn new(creds: &Credentials, realm: &str, nonce: &str) -> Session {
        Session {
            username: creds.username.clone(),
            realm: realm.to_string(),
            nonce: nonce.to_string(),
            key: long_term_key(&creds.username, realm, &creds.password),
        }
    }
}

/// A cheap transaction-id source (xorshift), seeded per client.
pub struct TidSource(u64);

impl TidSource {
    pub fn new(seed: u64) -> TidSource {
        TidSource(seed | 1)
    }

    pub fn next_tid(&mut self) -> TransactionId {
        let mut tid = [0u8; 12];
        for chunk in tid.chunks_mut(4) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&(self.0 as u32).to_be_bytes());
        }
        tid
    }
}

/// Writes a request: `body` attributes, then USERNAME/REALM/NONCE/MESSAGE-INTEGRITY if a
/// session is given. Returns its length (0 if `buf` is too small).
pub fn write_request(
    buf: &mut [u8],
    method: Method,
    tid: &TransactionId,
    session: Option<&Session>,
    body: impl FnOnce(&mut MessageWriter<'_>),
) -> usize {
    let mut writer = MessageWriter::new(buf, method, Class::Request, tid);
    body(&mut writer);
    if let Some(session) = session {
        writer.add_bytes(attr::USERNAME, session.username.as_bytes());
        writer.add_bytes(attr::REALM, session.realm.as_bytes());
        writer.add_bytes(attr::NONCE, session.nonce.as_bytes());
        writer.add_message_integrity(&session.key);
    }
    writer.finish().map_or(0, <[u8]>::len)
}

/// An Allocate for UDP relaying.
pub fn allocate_body(w: &mut MessageWriter<'_>) {
    w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
}

/// The parts of a response a client acts on.
#[derive(Debug)]
pub enum Reply {
    Success {
        relayed: Option<SocketAddr>,
    },
    /// 401 or 438: authenticate (again) with this realm and nonce.
    Challenge {
        realm: String,
        nonce: String,
    },
    Error {
        code: u16,
        reason: String,
    },
}

/// Parses a response to transaction `tid`; `None` if it is something else.
pub fn parse_reply(bytes: &[u8], tid: &TransactionId) -> Option<Reply> {
    let msg = Message::parse(bytes).ok()?;
    if msg.transaction_id() != tid {
        return None;
    }
    match msg.class() {
        Class::Success => Some(Reply::Success {
            relayed: msg
                .get(attr::XOR_RELAYED_ADDRESS)
                .and_then(|v| tern_proto::stun::decode_xor_address(v, tid).ok()),
        }),
        Class::Error => {
            let (code, reason) = msg.error_code().unwrap_or((0, ""));
            let text = |typ| msg.get_str(typ).and_then(Result::ok).map(str::to_string);
            match (code, text(attr::REALM), text(attr::NONCE)) {
                (401 | 438, Some(realm), Some(nonce)) => Some(Reply::Challenge { realm, nonce }),
                _ => Some(Reply::Error {
                    code,
                    reason: reason.to_string(),
                }),
            }
        }
        _ => None,
    }
}

/// A blocking client on its own socket (so its own 5-tuple), connected to the server.
pub struct TurnClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    creds: Credentials,
    session: Option<Session>,
    tids: TidSource,
    buf: Vec<u8>,
}

impl TurnClient {
    pub fn connect(server: SocketAddr, creds: Credentials) -> io::Result<TurnClient> {
        super::require_test_address(server)?;
        let socket = UdpSocket::bind(super::client_bind(server))?;
        socket.connect(server)?;
        let seed = u64::from(socket.local_addr()?.port()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ rand::random::<u64>();
        Ok(TurnClient {
            socket,
            server,
            creds,
            session: None,
            tids: TidSource::new(seed),
            buf: vec![0u8; 2048],
        })
    }

    /// One request with retransmissions (100 ms doubling, 5 tries) and up to two
    /// authentication rounds (401, 438).
    fn transact(
        &mut self,
        method: Method,
        body: &dyn Fn(&mut MessageWriter<'_>),
    ) -> io::Result<Option<SocketAddr>> {
        let mut request = [0u8; 1024];
        for _ in 0..3 {
            let tid = self.tids.next_tid();
            let len = write_request(&mut request, method, &tid, self.session.as_ref(), body);
            let reply = self.exchange(&request[..len], &tid)?;
            match reply {
                Reply::Success { relayed } => return Ok(relayed),
                Reply::Challenge { realm, nonce } => {
                    self.session = Some(Session::new(&self.creds, &realm, &nonce));
                }
                Reply::Error { code, reason } => {
                    return Err(io::Error::other(format!(
                        "{method:?} refused: {code} {reason}"
                    )))
                }
            }
        }
        Err(io::Error::other(format!(
            "{method:?}: authentication failed"
        )))
    }

    fn exchange(&mut self, request: &[u8], tid: &TransactionId) -> io::Result<Reply> {
        let mut wait = Duration::from_millis(100);
        for _ in 0..5 {
            self.socket.send(request)?;
            let deadline = Instant::now() + wait;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                self.socket
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                match self.socket.recv(&mut self.buf) {
                    Ok(n) => {
                        if let Some(reply) = parse_reply(&self.buf[..n], tid) {
                            return Ok(reply);
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
            wait *= 2;
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from {}", self.server),
        ))
    }

    /// Allocates a UDP relay; returns the relayed address.
    pub fn allocate(&mut self) -> io::Result<SocketAddr> {
        self.transact(Method::ALLOCATE, &allocate_body)?
            .ok_or_else(|| io::Error::other("Allocate success without XOR-RELAYED-ADDRESS"))
    }

    pub fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> io::Result<()> {
        self.transact(Method::CHANNEL_BIND, &|w| {
            w.add_u32(attr::CHANNEL_NUMBER, u32::from(number) << 16);
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .map(drop)
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> io::Result<()> {
        self.transact(Method::CREATE_PERMISSION, &|w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .map(drop)
    }

    /// Refresh; a lifetime of 0 deletes the allocation.
    pub fn refresh(&mut self, lifetime: u32) -> io::Result<()> {
        self.transact(Method::REFRESH, &|w| {
            w.add_u32(attr::LIFETIME, lifetime);
        })
        .map(drop)
    }
}
