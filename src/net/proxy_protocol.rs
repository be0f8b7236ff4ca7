//! PROXY protocol headers, version 1 (text) and 2 (binary), as HAProxy's `proxy-protocol.txt`
//! defines them: a load balancer in front of tern writes one at the start of each TCP connection
//! to pass on the real client address. Pure: bytes in, addresses out. Whether a header is
//! accepted at all (only from `proxy-protocol-trusted` sources) is the caller's decision.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the specification's limit).
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header accepted: 16 fixed bytes, addresses and TLVs. The specification allows
/// up to 16 + 65535; load balancers send a few hundred bytes at most, so more is refused rather
/// than buffered.
pub const V2_MAX_LEN: usize = 16 + 1024;

/// What a complete header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client the proxy serves; `None` for v2 LOCAL (the proxy's own health check), v1
    /// UNKNOWN and address families other than IPv4/IPv6: then the socket's address stands.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, on the proxy.
    pub destination: Option<SocketAddr>,
}

/// The outcome of looking at the first bytes of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Looks like a header so far; read more bytes.
    Incomplete,
    /// A complete header of `len` bytes; the connection's own data follows it.
    Complete { header: ProxyHeader, len: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// True if `first` can start a PROXY header: `P` (v1 "PROXY ") or `\r` (the v2 signature).
/// Neither can start a STUN message, ChannelData or a TLS record.
pub fn may_start_header(first: u8) -> bool {
    first == b'P' || first == V2_SIGNATURE[0]
}

/// Parses a v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

const V1_PREFIX: &[u8] = b"PROXY ";

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let prefix_len = buf.len().min(V1_PREFIX.len());
    if buf[..prefix_len] != V1_PREFIX[..prefix_len] {
        return Err(ProxyError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::Malformed("v1 line longer than 107 bytes"));
        }
        return Ok(Parsed::Incomplete);
    };
    let len = cr + 2;
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..cr])
        .map_err(|_| ProxyError::Malformed("v1 line is not ASCII"))?;
    let mut fields = line.split(' ');
    let protocol = fields.next().unwrap_or("");
    if protocol == "UNKNOWN" {
        // "the receiver must ignore anything presented before the CRLF"
        let header = ProxyHeader {
            source: None,
            destination: None,
        };
        return Ok(Parsed::Complete { header, len });
    }
    let v6 = match protocol {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ProxyError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let parts: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = parts[..] else {
        return Err(ProxyError::Malformed(
            "v1 needs 4 fields after the protocol",
        ));
    };
    let ip = |text: &str| -> Result<IpAddr, ProxyError> {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| ProxyError::Malformed("v1 address does not parse"))?;
        if ip.is_ipv6() != v6 {
            return Err(ProxyError::Malformed("v1 address of the wrong family"));
        }
        Ok(ip)
    };
    let port = |text: &str| -> Result<u16, ProxyError> {
        if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProxyError::Malformed("v1 port is not a number"));
        }
        text.parse()
            .map_err(|_| ProxyError::Malformed("v1 port out of range"))
    };
    let header = ProxyHeader {
        source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
        destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
    };
    Ok(Parsed::Complete { header, len })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] != V2_SIGNATURE[..sig_len] {
        return Err(ProxyError::NotProxy);
    }
    let [_, _, _, _, _, _, _, _, _, _, _, _, ver_cmd, family, l0, l1, ..] = *buf else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version is not 2"));
    }
    let local = match ver_cmd & 0x0F {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::Malformed("v2 command is not LOCAL or PROXY")),
    };
    let body_len = usize::from(u16::from_be_bytes([l0, l1]));
    let len = 16 + body_len;
    if len > V2_MAX_LEN {
        return Err(ProxyError::Malformed("v2 header longer than tern accepts"));
    }
    let Some(body) = buf.get(16..len) else {
        return Ok(Parsed::Incomplete);
    };
    let unspecified = ProxyHeader {
        source: None,
        destination: None,
    };
    if local {
        // The proxy speaks for itself (health checks): the addresses, if any, are ignored.
        return Ok(Parsed::Complete {
            header: unspecified,
            len,
        });
    }
    let header = match family >> 4 {
        0x1 => {
            let Some(a) = body.get(..12) else {
                return Err(ProxyError::Malformed("v2 IPv4 block shorter than 12 bytes"));
            };
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0), port(8))),
                destination: Some(SocketAddr::new(ip(4), port(10))),
            }
        }
        0x2 => {
            let Some(a) = body.get(..36) else {
                return Err(ProxyError::Malformed("v2 IPv6 block shorter than 36 bytes"));
            };
            let ip = |at: usize| {
                let octets: [u8; 16] = a[at..at + 16].try_into().unwrap_or([0; 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0), port(32))),
                destination: Some(SocketAddr::new(ip(16), port(34))),
            }
        }
        // UNSPEC or AF_UNIX: nothing usable, keep the socket's address.
        0x0 | 0x3 => unspecified,
        _ => return Err(ProxyError::Malformed("v2 address family unknown")),
    };
    Ok(Parsed::Complete { header, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn v2(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("{buf:?}: {other:?}"),
        }
    }

    #[test]
    fn v2_ipv4_proxy_with_trailing_data() {
        let mut body = vec![203, 0, 113, 9, 192, 0, 2, 1];
        body.extend_from_slice(&4242u16.to_be_bytes());
        body.extend_from_slice(&3478u16.to_be_bytes());
        let mut buf = v2(0x21, 0x11, &body);
        buf.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]); // a STUN header follows
        let (header, len) = complete(&buf);
        assert_eq!(len, 16 + 12);
        assert_eq!(header.source, Some(addr("203.0.113.9:4242")));
        assert_eq!(header.destination, Some(addr("192.0.2.1:3478")));
    }

    #[test]
    fn v2_ipv6_with_tlvs() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut body = src.octets().to_vec();
        body.extend_from_slice(&dst.octets());
        body.extend_from_slice(&5000u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // PP2_TYPE_ALPN TLV, ignored
        let buf = v2(0x21, 0x21, &body);
        let (header, len) = complete(&buf);
        assert_eq!(len, buf.len());
        assert_eq!(header.source, Some(addr("[2001:db8::1]:5000")));
        assert_eq!(header.destination, Some(addr("[2001:db8::2]:443")));
    }

    #[test]
    fn v2_local_keeps_the_socket_address() {
        let buf = v2(0x20, 0x00, &[]);
        let (header, len) = complete(&buf);
        assert_eq!(len, 16);
        assert_eq!(header.source, None);
        // LOCAL with addresses: still ignored.
        let buf = v2(0x20, 0x11, &[1; 12]);
        assert_eq!(complete(&buf).0.source, None);
    }

    #[test]
    fn v2_unspec_and_unix_families_keep_the_socket_address() {
        assert_eq!(complete(&v2(0x21, 0x00, &[])).0.source, None);
        assert_eq!(complete(&v2(0x21, 0x31, &[0; 216])).0.source, None);
    }

    #[test]
    fn v2_split_across_reads_is_incomplete_until_whole() {
        let buf = v2(0x21, 0x11, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]);
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        assert_eq!(complete(&buf).0.source, Some(addr("10.0.0.1:1")));
    }

    #[test]
    fn v2_malformed() {
        let bad_version = v2(0x11, 0x11, &[0; 12]);
        assert!(matches!(parse(&bad_version), Err(ProxyError::Malformed(_))));
        let bad_command = v2(0x22, 0x11, &[0; 12]);
        assert!(matches!(parse(&bad_command), Err(ProxyError::Malformed(_))));
        let short_v4 = v2(0x21, 0x11, &[0; 8]);
        assert!(matches!(parse(&short_v4), Err(ProxyError::Malformed(_))));
        let short_v6 = v2(0x21, 0x21, &[0; 12]);
        assert!(matches!(parse(&short_v6), Err(ProxyError::Malformed(_))));
        let bad_family = v2(0x21, 0x41, &[0; 12]);
        assert!(matches!(parse(&bad_family), Err(ProxyError::Malformed(_))));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert!(matches!(parse(&huge), Err(ProxyError::Malformed(_))));
        let mut wrong_signature = V2_SIGNATURE.to_vec();
        wrong_signature[5] = b'X';
        assert_eq!(parse(&wrong_signature), Err(ProxyError::NotProxy));
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let buf = b"PROXY TCP4 198.51.100.7 192.0.2.1 56324 3478\r\n\x00\x01";
        let (header, len) = complete(buf);
        assert_eq!(len, buf.len() - 2);
        assert_eq!(header.source, Some(addr("198.51.100.7:56324")));
        assert_eq!(header.destination, Some(addr("192.0.2.1:3478")));

        let (header, _) = complete(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n");
        assert_eq!(header.source, Some(addr("[2001:db8::7]:1")));

        let (header, len) = complete(b"PROXY UNKNOWN ffff::1 whatever\r\n");
        assert_eq!((header.source, len), (None, 32));
    }

    #[test]
    fn v1_incomplete_and_too_long() {
        let line = b"PROXY TCP4 198.51.100.7 192.0.2.1 56324 3478\r\n";
        for cut in 0..line.len() {
            assert_eq!(parse(&line[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'x');
        assert!(matches!(parse(&long), Err(ProxyError::Malformed(_))));
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3\r\n",
            b"PROXY TCP4 2001:db8::1 1.2.3.5 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 1.2.3.5 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 -1 2\r\n",
            b"PROXY TCP4  1.2.3.4 1.2.3.5 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse(b"PROXI"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NotProxy));
        assert_eq!(parse(&[0x00, 0x01]), Err(ProxyError::NotProxy));
    }

    #[test]
    fn only_p_and_cr_may_start_a_header() {
        assert!(may_start_header(b'P') && may_start_header(b'\r'));
        for first in [0x00, 0x01, 0x16, 0x40, 0x7F] {
            assert!(!may_start_header(first));
        }
    }
}
