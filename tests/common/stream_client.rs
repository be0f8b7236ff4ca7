//! A minimal TURN client over a byte stream (TCP or TLS, or UDP through [`Datagrams`]):
//! long-term credentials, Allocate, CreatePermission, ChannelBind, Send indications.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::net::TcpStream;
use std::time::Duration;
use tern::stun::{self, attr, Class, Message, MessageWriter, Method};

/// Reads one whole frame (STUN or padded ChannelData) from a stream.
pub fn read_frame(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut frame = vec![0u8; 4];
    stream.read_exact(&mut frame)?;
    let len = stun::frame_len(&frame, true)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{frame:?}")))?;
    frame.resize(len, 0);
    stream.read_exact(&mut frame[4..])?;
    Ok(frame)
}

/// True once the other end has closed `stream` (EOF or an error) before its read timeout.
pub fn closed(stream: &mut impl Read) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// True if the other end closes `stream` within `limit`.
pub fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    closed(stream)
}

pub struct StreamTurn<S> {
    pub stream: S,
    username: String,
    key: [u8; 16],
    realm: String,
    nonce: Vec<u8>,
    next_tid: u8,
}

impl<S: Read + Write> StreamTurn<S> {
    pub fn new(stream: S, username: &str, password: &str, realm: &str) -> Self {
        use md5::Digest;
        let key: [u8; 16] = md5::Md5::digest(format!("{username}:{realm}:{password}")).into();
        StreamTurn {
            stream,
            username: username.to_string(),
            key,
            realm: realm.to_string(),
            nonce: Vec::new(),
            next_tid: 0x10,
        }
    }

    /// The bytes of an authenticated request with the nonce learned so far (no round trip),
    /// for a client that writes many back to back.
    pub fn signed(&mut self, method: Method, attrs: impl Fn(&mut MessageWriter<'_>)) -> Vec<u8> {
        self.next_tid = self.next_tid.wrapping_add(1);
        let tid = [self.next_tid; 12];
        let mut buf = [0u8; 512];
        let mut w = MessageWriter::new(&mut buf, method, Class::Request, &tid);
        attrs(&mut w);
        w.add_bytes(attr::USERNAME, self.username.as_bytes());
        w.add_bytes(attr::REALM, self.realm.as_bytes());
        w.add_bytes(attr::NONCE, &self.nonce);
        w.add_message_integrity(&self.key);
        w.finish().unwrap().to_vec()
    }

    /// Sends an authenticated request, learning the nonce from a 401/438 first; the final
    /// response, success or error.
    pub fn exchange(
        &mut self,
        method: Method,
        attrs: impl Fn(&mut MessageWriter<'_>),
    ) -> io::Result<Vec<u8>> {
        let mut response = Vec::new();
        for _ in 0..2 {
            let (tid, request) = self.build(method, &attrs);
            self.stream.write_all(&request)?;
            response = read_frame(&mut self.stream)?;
            let msg = Message::parse(&response).unwrap();
            assert_eq!(msg.transaction_id(), &tid);
            match msg.error_code() {
                Some((401 | 438, _)) => self.nonce = msg.get(attr::NONCE).unwrap().to_vec(),
                _ => break,
            }
        }
        Ok(response)
    }

    /// A request with `attrs` (up to 64 KiB of them), signed with the credentials once a nonce
    /// is known; its transaction id and bytes.
    pub fn build(
        &mut self,
        method: Method,
        attrs: impl Fn(&mut MessageWriter<'_>),
    ) -> ([u8; 12], Vec<u8>) {
        self.next_tid = self.next_tid.wrapping_add(1);
        let tid = [self.next_tid; 12];
        let mut buf = vec![0u8; 65536];
        let mut w = MessageWriter::new(&mut buf, method, Class::Request, &tid);
        attrs(&mut w);
        if !self.nonce.is_empty() {
            w.add_bytes(attr::USERNAME, self.username.as_bytes());
            w.add_bytes(attr::REALM, self.realm.as_bytes());
            w.add_bytes(attr::NONCE, &self.nonce);
            w.add_message_integrity(&self.key);
        }
        (tid, w.finish().unwrap().to_vec())
    }

    /// Sends an authenticated request; the success response, or the error code (0 when the
    /// connection failed).
    pub fn request(
        &mut self,
        method: Method,
        attrs: impl Fn(&mut MessageWriter<'_>),
    ) -> Result<Vec<u8>, u16> {
        let response = self.exchange(method, attrs).map_err(|_| 0u16)?;
        let msg = Message::parse(&response).unwrap();
        match (msg.class(), msg.error_code()) {
            (Class::Success, _) => Ok(response),
            (_, code) => Err(code.map_or(0, |(c, _)| c)),
        }
    }

    /// A client on another connection with the same credentials and (first) this one's nonce:
    /// an RFC 6062 data connection.
    pub fn sharing_session<T: Read + Write>(&self, stream: T) -> StreamTurn<T> {
        StreamTurn {
            stream,
            username: self.username.clone(),
            key: self.key,
            realm: self.realm.clone(),
            nonce: self.nonce.clone(),
            next_tid: 0x80,
        }
    }

    /// Binds `channel` to `peer`.
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), u16> {
        self.request(Method::CHANNEL_BIND, |w| {
            w.add_u32(attr::CHANNEL_NUMBER, u32::from(channel) << 16);
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .map(drop)
    }

    /// Allocates a UDP relay; its address.
    pub fn allocate(&mut self) -> Result<SocketAddr, u16> {
        let response = self.request(Method::ALLOCATE, |w| {
            w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })?;
        let msg = Message::parse(&response).unwrap();
        Ok(stun::decode_xor_address(
            msg.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
            msg.transaction_id(),
        )
        .unwrap())
    }

    /// Allocates a UDP relay of `family` (REQUESTED-ADDRESS-FAMILY: 1 IPv4, 2 IPv6); its address.
    pub fn allocate_family(&mut self, family: u8) -> Result<SocketAddr, u16> {
        let response = self.request(Method::ALLOCATE, |w| {
            w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            w.add_bytes(attr::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0]);
        })?;
        let msg = Message::parse(&response).unwrap();
        Ok(stun::decode_xor_address(
            msg.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
            msg.transaction_id(),
        )
        .unwrap())
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Result<(), u16> {
        self.request(Method::CREATE_PERMISSION, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .map(|_| ())
    }

    /// A Send indication with `data` for `peer`.
    pub fn send(&mut self, peer: SocketAddr, data: &[u8]) -> io::Result<()> {
        self.next_tid = self.next_tid.wrapping_add(1);
        let tid = [self.next_tid; 12];
        let mut buf = [0u8; 2048];
        let mut w = MessageWriter::new(&mut buf, Method::SEND, Class::Indication, &tid);
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        w.add_bytes(attr::DATA, data);
        let indication = w.finish().unwrap().to_vec();
        self.stream.write_all(&indication)
    }
}

/// A connected UDP socket read and written like a stream: each write is one datagram, and reads
/// take the bytes of one datagram after another, so [`StreamTurn`] speaks TURN over UDP (STUN
/// messages are whole multiples of 4 bytes, which `read_frame` expects).
pub struct Datagrams {
    pub socket: std::net::UdpSocket,
    pending: Vec<u8>,
    at: usize,
}

impl Datagrams {
    /// A socket on `local` (e.g. "127.0.0.1:0") connected to `server`.
    pub fn connect(local: &str, server: SocketAddr) -> Datagrams {
        let socket = std::net::UdpSocket::bind(local).unwrap();
        socket.connect(server).unwrap();
        Datagrams::new(socket)
    }

    /// `socket`, already connected to the server; reads wait at most 5 s.
    pub fn new(socket: std::net::UdpSocket) -> Datagrams {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Datagrams {
            socket,
            pending: Vec::new(),
            at: 0,
        }
    }

    pub fn socket(&self) -> &std::net::UdpSocket {
        &self.socket
    }
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.pending.len() {
            self.pending.resize(65536, 0);
            let len = self.socket.recv(&mut self.pending)?;
            self.pending.truncate(len);
            self.at = 0;
        }
        let len = buf.len().min(self.pending.len() - self.at);
        buf[..len].copy_from_slice(&self.pending[self.at..self.at + len]);
        self.at += len;
        Ok(len)
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.send(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TURN client over UDP from `local` to `server`, with REST credentials for `user`.
pub fn udp_client(local: &str, server: SocketAddr, user: &str) -> StreamTurn<Datagrams> {
    let minted = tern::credentials::mint(super::SECRET, Some(user), 3600, super::unix_now());
    let socket = Datagrams::connect(local, server);
    StreamTurn::new(socket, &minted.username, &minted.password, "tern")
}

/// A TURN client over TCP to `server`, with REST credentials for `user`.
pub fn tcp_client(server: SocketAddr, user: &str) -> StreamTurn<TcpStream> {
    let minted = tern::credentials::mint(super::SECRET, Some(user), 3600, super::unix_now());
    let stream = TcpStream::connect(server).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    StreamTurn::new(stream, &minted.username, &minted.password, "tern")
}

/// A TURN client over UDP.
pub type UdpTurn = StreamTurn<Datagrams>;

impl UdpTurn {
    /// A client on a new socket bound to `bind` (e.g. "127.0.0.1:0") and connected to `server`.
    pub fn udp(bind: &str, server: SocketAddr, username: &str, password: &str) -> UdpTurn {
        let socket = std::net::UdpSocket::bind(bind).unwrap();
        Self::on_socket(socket, server, username, password)
    }

    /// A client on `socket` (already bound), connected to `server`.
    pub fn on_socket(
        socket: std::net::UdpSocket,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> UdpTurn {
        socket.connect(server).unwrap();
        StreamTurn::new(Datagrams::new(socket), username, password, "tern")
    }
}

impl<S: Read + Write> StreamTurn<S> {
    /// An Allocate (UDP relay) that may be redirected: `Ok(relayed address)`, or the error code
    /// and the ALTERNATE-SERVER it carried.
    pub fn allocate_or_redirect(&mut self) -> Result<SocketAddr, (u16, Option<SocketAddr>)> {
        let response = self
            .exchange(Method::ALLOCATE, |w| {
                w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            })
            .map_err(|_| (0, None))?;
        let msg = Message::parse(&response).unwrap();
        match msg.error_code() {
            None => Ok(stun::decode_xor_address(
                msg.get(attr::XOR_RELAYED_ADDRESS).unwrap(),
                msg.transaction_id(),
            )
            .unwrap()),
            Some((code, _)) => {
                let alternate = msg
                    .get(attr::ALTERNATE_SERVER)
                    .map(|value| stun::decode_address(value).unwrap());
                Err((code, alternate))
            }
        }
    }

    /// A Refresh asking for `lifetime` seconds (0 deletes the allocation).
    pub fn refresh(&mut self, lifetime: u32) -> Result<(), u16> {
        self.request(Method::REFRESH, |w| {
            w.add_u32(attr::LIFETIME, lifetime);
        })
        .map(drop)
    }

    /// The next Data indication: the peer and the data.
    pub fn receive_data(&mut self) -> io::Result<(SocketAddr, Vec<u8>)> {
        loop {
            let frame = read_frame(&mut self.stream)?;
            let Ok(msg) = Message::parse(&frame) else {
                continue;
            };
            if msg.class() != Class::Indication || msg.method() != Method::DATA {
                continue;
            }
            let peer = stun::decode_xor_address(
                msg.get(attr::XOR_PEER_ADDRESS).unwrap(),
                msg.transaction_id(),
            )
            .unwrap();
            return Ok((peer, msg.get(attr::DATA).unwrap_or_default().to_vec()));
        }
    }
}

impl UdpTurn {
    /// ChannelData on `channel`, unpadded (as UDP clients send it).
    pub fn send_channel_data(&mut self, channel: u16, data: &[u8]) -> io::Result<()> {
        let mut frame = channel.to_be_bytes().to_vec();
        frame.extend_from_slice(&(data.len() as u16).to_be_bytes());
        frame.extend_from_slice(data);
        self.stream.socket.send(&frame).map(drop)
    }

    /// The next ChannelData datagram: its channel and data (other datagrams are skipped).
    pub fn receive_channel_data(&mut self) -> io::Result<(u16, Vec<u8>)> {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = self.stream.socket.recv(&mut buf)?;
            if n >= 4 && (0x40..0x80).contains(&buf[0]) {
                let channel = u16::from_be_bytes([buf[0], buf[1]]);
                let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
                assert!(4 + len <= n, "ChannelData length {len} in {n} bytes");
                return Ok((channel, buf[4..4 + len].to_vec()));
            }
        }
    }
}

/// A STUN Binding from `socket` to `server`: the XOR-MAPPED-ADDRESS (the socket's address as
/// the server sees it), or `None` without an answer within 2 s.
pub fn reflexive_address(socket: &std::net::UdpSocket, server: SocketAddr) -> Option<SocketAddr> {
    let tid = [0x5a; 12];
    let mut buf = [0u8; 64];
    let request = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, &tid)
        .finish()
        .unwrap()
        .to_vec();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut answer = [0u8; 512];
    for _ in 0..10 {
        socket.send_to(&request, server).ok()?;
        if let Ok((n, from)) = socket.recv_from(&mut answer) {
            let msg = Message::parse(&answer[..n]).ok()?;
            if from == server && msg.class() == Class::Success {
                let value = msg.get(attr::XOR_MAPPED_ADDRESS)?;
                return stun::decode_xor_address(value, msg.transaction_id()).ok();
            }
        }
    }
    None
}
