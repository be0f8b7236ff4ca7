//! A minimal TURN client over a byte stream (TCP or TLS): long-term credentials, Allocate,
//! CreatePermission, Send indications. Enough to put an allocation on a stream connection.

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

/// A connected UDP socket as a byte stream, so [`StreamTurn`] speaks TURN over UDP too: each
/// write is a datagram, and reads take the datagrams in turn.
pub struct DatagramStream {
    socket: std::net::UdpSocket,
    datagram: Vec<u8>,
    at: usize,
}

impl DatagramStream {
    pub fn connect(server: SocketAddr) -> io::Result<DatagramStream> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(DatagramStream {
            socket,
            datagram: Vec::new(),
            at: 0,
        })
    }
}

impl Read for DatagramStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.datagram.len() {
            self.datagram.resize(65536, 0);
            let n = self.socket.recv(&mut self.datagram)?;
            self.datagram.truncate(n);
            self.at = 0;
        }
        let n = buf.len().min(self.datagram.len() - self.at);
        buf[..n].copy_from_slice(&self.datagram[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for DatagramStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.send(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
            self.next_tid = self.next_tid.wrapping_add(1);
            let tid = [self.next_tid; 12];
            let mut buf = [0u8; 512];
            let mut w = MessageWriter::new(&mut buf, method, Class::Request, &tid);
            attrs(&mut w);
            if !self.nonce.is_empty() {
                w.add_bytes(attr::USERNAME, self.username.as_bytes());
                w.add_bytes(attr::REALM, self.realm.as_bytes());
                w.add_bytes(attr::NONCE, &self.nonce);
                w.add_message_integrity(&self.key);
            }
            let request = w.finish().unwrap().to_vec();
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
