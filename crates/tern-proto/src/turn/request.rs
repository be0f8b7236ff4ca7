//! Requests decoded into what they ask for before the logic reads them. Decoding borrows the
//! message and allocates nothing; a failure says what was wrong ([`DecodeError`]), and
//! [`DecodeError::code`] is the one place that becomes an error code.

use super::{ErrorCode, Family, PortRequest, RelayTransport};
use crate::stun::{self, attr, AttrIter, Message, TransactionId};
use std::net::SocketAddr;

/// Why a request's attributes do not make a request we can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A required attribute (this type) is absent.
    Missing(u16),
    /// An attribute (this type) does not decode, or holds a value the method does not allow.
    Malformed(u16),
    /// Attributes that exclude each other (RFC 8656 §7.2: RESERVATION-TOKEN with EVEN-PORT or
    /// an additional family, REQUESTED- with ADDITIONAL-ADDRESS-FAMILY, EVEN-PORT reserving
    /// with ADDITIONAL-ADDRESS-FAMILY; RFC 6062 §5.1: a TCP relay with the UDP-only
    /// DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN).
    Conflict,
    /// A TCP relay asked for over UDP (RFC 6062 §5.1: only stream clients get one).
    TcpOverUdp,
    /// REQUESTED-TRANSPORT names a protocol other than UDP and TCP.
    UnsupportedTransport,
    /// REQUESTED-ADDRESS-FAMILY names neither IPv4 nor IPv6.
    UnsupportedFamily,
    /// A CHANNEL-NUMBER outside 0x4000 to the configured maximum.
    ChannelOutOfRange(u16),
}

impl DecodeError {
    /// The error response a decode failure earns.
    pub fn code(self) -> ErrorCode {
        match self {
            DecodeError::UnsupportedTransport => ErrorCode::UnsupportedTransportProtocol,
            DecodeError::UnsupportedFamily => ErrorCode::AddressFamilyNotSupported,
            DecodeError::Missing(_)
            | DecodeError::Malformed(_)
            | DecodeError::Conflict
            | DecodeError::TcpOverUdp
            | DecodeError::ChannelOutOfRange(_) => ErrorCode::BadRequest,
        }
    }
}

/// Attributes whose meaning we implement (anything else comprehension-required → 420).
pub(crate) fn is_known_attribute(typ: u16) -> bool {
    matches!(
        typ,
        attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::REALM
            | attr::NONCE
            | attr::LIFETIME
            | attr::REQUESTED_TRANSPORT
            | attr::DONT_FRAGMENT
            | attr::EVEN_PORT
            | attr::RESERVATION_TOKEN
            | attr::REQUESTED_ADDRESS_FAMILY
            | attr::ADDITIONAL_ADDRESS_FAMILY
            | attr::ADDITIONAL_ADDRESS_FAMILY_LEGACY
            | attr::XOR_PEER_ADDRESS
            | attr::CHANNEL_NUMBER
            | attr::DATA
            | attr::CONNECTION_ID
    )
}

/// The XOR-PEER-ADDRESS a request must carry.
fn peer(msg: &Message<'_>) -> Result<SocketAddr, DecodeError> {
    let value = msg
        .get(attr::XOR_PEER_ADDRESS)
        .ok_or(DecodeError::Missing(attr::XOR_PEER_ADDRESS))?;
    stun::decode_xor_address(value, msg.transaction_id())
        .map_err(|_| DecodeError::Malformed(attr::XOR_PEER_ADDRESS))
}

/// A 4-byte attribute as a number.
fn u32_of(value: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(value).ok().map(u32::from_be_bytes)
}

/// A Binding request: RFC 5780's CHANGE-REQUEST flags, when the listener has a partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub change_request: u32,
}

impl Binding {
    pub fn decode(msg: &Message<'_>) -> Result<Binding, DecodeError> {
        let change_request = match msg.get(attr::CHANGE_REQUEST) {
            None => 0,
            Some(value) => u32_of(value).ok_or(DecodeError::Malformed(attr::CHANGE_REQUEST))?,
        };
        Ok(Binding { change_request })
    }
}

/// An Allocate request (RFC 8656 §7.2, RFC 6062 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Allocate {
    pub transport: RelayTransport,
    /// REQUESTED-ADDRESS-FAMILY, IPv4 when absent.
    pub family: Family,
    /// ADDITIONAL-ADDRESS-FAMILY: a second relay, of this family (IPv6).
    pub additional: Option<Family>,
    pub port: PortRequest,
    /// LIFETIME in seconds, if present and well-formed.
    pub lifetime: Option<u32>,
    pub dont_fragment: bool,
    /// The family attributes came in coTURN's draft-era numbering (0x8032), so the answer uses
    /// the matching ADDRESS-ERROR-CODE type (0x8033).
    pub legacy_family_attrs: bool,
}

impl Allocate {
    /// Checks in RFC 8656 §7.2's order (steps 3 to 9): REQUESTED-TRANSPORT; a reservation token
    /// stands alone; one of REQUESTED- and ADDITIONAL-ADDRESS-FAMILY; a known requested family;
    /// a reserved pair is single-family; the additional family can only be IPv6.
    /// `stream_client`: the request came over TCP or TLS, where a TCP relay may be had.
    pub fn decode(msg: &Message<'_>, stream_client: bool) -> Result<Allocate, DecodeError> {
        let dont_fragment = msg.get(attr::DONT_FRAGMENT).is_some();
        let even_port = msg.get(attr::EVEN_PORT);
        let token = msg.get(attr::RESERVATION_TOKEN);
        let protocol = msg
            .get(attr::REQUESTED_TRANSPORT)
            .ok_or(DecodeError::Missing(attr::REQUESTED_TRANSPORT))?
            .first();
        let transport = match protocol {
            Some(17) => RelayTransport::Udp,
            Some(6) if !stream_client => return Err(DecodeError::TcpOverUdp),
            Some(6) if dont_fragment || even_port.is_some() || token.is_some() => {
                return Err(DecodeError::Conflict)
            }
            Some(6) => RelayTransport::Tcp,
            _ => return Err(DecodeError::UnsupportedTransport),
        };
        let requested = msg.get(attr::REQUESTED_ADDRESS_FAMILY);
        let standard = msg.get(attr::ADDITIONAL_ADDRESS_FAMILY);
        let legacy = msg.get(attr::ADDITIONAL_ADDRESS_FAMILY_LEGACY);
        let legacy_family_attrs = standard.is_none() && legacy.is_some();
        let (additional, additional_type) = match standard {
            Some(value) => (Some(value), attr::ADDITIONAL_ADDRESS_FAMILY),
            None => (legacy, attr::ADDITIONAL_ADDRESS_FAMILY_LEGACY),
        };
        let port = match (even_port, token) {
            (None, None) => PortRequest::Any,
            (Some(even), None) => PortRequest::Even {
                reserve_next: even.first().is_some_and(|b| b & 0x80 != 0),
            },
            (None, Some(token)) => {
                let token = <[u8; 8]>::try_from(token)
                    .map_err(|_| DecodeError::Malformed(attr::RESERVATION_TOKEN))?;
                if additional.is_some() {
                    return Err(DecodeError::Conflict);
                }
                PortRequest::Reserved(token)
            }
            (Some(_), Some(_)) => return Err(DecodeError::Conflict),
        };
        if requested.is_some() && additional.is_some() {
            return Err(DecodeError::Conflict);
        }
        let family = match requested {
            None => Family::V4,
            Some(value) => value
                .first()
                .copied()
                .and_then(Family::from_wire)
                .ok_or(DecodeError::UnsupportedFamily)?,
        };
        let additional = match additional {
            None => None,
            Some(_) if port == (PortRequest::Even { reserve_next: true }) => {
                return Err(DecodeError::Conflict)
            }
            Some([0x02, ..]) => Some(Family::V6),
            Some(_) => return Err(DecodeError::Malformed(additional_type)),
        };
        Ok(Allocate {
            transport,
            family,
            additional,
            port,
            lifetime: msg.get_u32(attr::LIFETIME),
            dont_fragment,
            legacy_family_attrs,
        })
    }
}

/// A Refresh request (RFC 8656 §8). Nothing in it can be malformed: a LIFETIME that is not
/// 4 bytes counts as absent, and an unknown family as none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refresh {
    pub lifetime: Option<u32>,
    pub family: Option<Family>,
}

impl Refresh {
    pub fn decode(msg: &Message<'_>) -> Refresh {
        Refresh {
            lifetime: msg.get_u32(attr::LIFETIME),
            family: msg
                .get(attr::REQUESTED_ADDRESS_FAMILY)
                .and_then(|value| value.first().copied())
                .and_then(Family::from_wire),
        }
    }
}

/// A CreatePermission request (RFC 8656 §9): one or more XOR-PEER-ADDRESS, read lazily from the
/// message (no copy, no allocation).
#[derive(Clone, Debug)]
pub(crate) struct CreatePermission<'m> {
    attributes: AttrIter<'m>,
    tid: &'m TransactionId,
    count: usize,
}

impl<'m> CreatePermission<'m> {
    pub fn decode(msg: &Message<'m>) -> Result<CreatePermission<'m>, DecodeError> {
        let attributes = msg.attributes();
        let count = attributes
            .clone()
            .filter(|a| a.typ == attr::XOR_PEER_ADDRESS)
            .count();
        if count == 0 {
            return Err(DecodeError::Missing(attr::XOR_PEER_ADDRESS));
        }
        Ok(CreatePermission {
            attributes,
            tid: msg.transaction_id(),
            count,
        })
    }

    /// How many XOR-PEER-ADDRESS attributes the request carries (`max-peers-per-request`).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Each XOR-PEER-ADDRESS in order, decoded or not.
    pub fn peers(&self) -> impl Iterator<Item = Result<SocketAddr, DecodeError>> + 'm {
        let tid = self.tid;
        self.attributes
            .clone()
            .filter(|a| a.typ == attr::XOR_PEER_ADDRESS)
            .map(move |a| {
                stun::decode_xor_address(a.value, tid)
                    .map_err(|_| DecodeError::Malformed(attr::XOR_PEER_ADDRESS))
            })
    }
}

/// A ChannelBind request (RFC 8656 §11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChannelBind {
    pub number: u16,
    pub peer: SocketAddr,
}

impl ChannelBind {
    /// `max_number`: the highest channel number the configuration allows.
    pub fn decode(msg: &Message<'_>, max_number: u16) -> Result<ChannelBind, DecodeError> {
        // CHANNEL-NUMBER is the number and 2 bytes RFFU (RFC 8656 §18.1).
        let number = match msg.get(attr::CHANNEL_NUMBER) {
            Some(&[hi, lo, _, _]) => u16::from_be_bytes([hi, lo]),
            Some(_) => return Err(DecodeError::Malformed(attr::CHANNEL_NUMBER)),
            None => return Err(DecodeError::Missing(attr::CHANNEL_NUMBER)),
        };
        let peer = peer(msg)?;
        if !(0x4000..=max_number).contains(&number) {
            return Err(DecodeError::ChannelOutOfRange(number));
        }
        Ok(ChannelBind { number, peer })
    }
}

/// A Connect request (RFC 6062 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Connect {
    pub peer: SocketAddr,
}

impl Connect {
    pub fn decode(msg: &Message<'_>) -> Result<Connect, DecodeError> {
        Ok(Connect { peer: peer(msg)? })
    }
}

/// A ConnectionBind request (RFC 6062 §5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectionBind {
    pub id: u32,
}

impl ConnectionBind {
    pub fn decode(msg: &Message<'_>) -> Result<ConnectionBind, DecodeError> {
        let value = msg
            .get(attr::CONNECTION_ID)
            .ok_or(DecodeError::Missing(attr::CONNECTION_ID))?;
        let id = u32_of(value).ok_or(DecodeError::Malformed(attr::CONNECTION_ID))?;
        Ok(ConnectionBind { id })
    }
}

/// A Send indication (RFC 8656 §10.2): data for a peer. Indications get no answer, so a
/// decode failure only drops it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SendIndication<'m> {
    pub peer: SocketAddr,
    pub data: &'m [u8],
}

impl<'m> SendIndication<'m> {
    pub fn decode(msg: &Message<'m>) -> Result<SendIndication<'m>, DecodeError> {
        let peer = peer(msg)?;
        let data = msg
            .get(attr::DATA)
            .ok_or(DecodeError::Missing(attr::DATA))?;
        Ok(SendIndication { peer, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, MessageWriter, Method};

    const TID: TransactionId = [7; 12];
    const PEER: &str = "203.0.113.5:4000";

    /// What an attribute carries in a test message.
    enum Value {
        Bytes(Vec<u8>),
        /// An XOR-encoded address (XOR-PEER-ADDRESS).
        Xor(SocketAddr),
    }
    use Value::{Bytes, Xor};

    /// Builds a request with these attributes and decodes it with `decode`.
    fn with<T>(
        method: Method,
        attrs: &[(u16, Value)],
        decode: impl FnOnce(&Message<'_>) -> T,
    ) -> T {
        let mut buf = [0u8; 512];
        let mut writer = MessageWriter::new(&mut buf, method, Class::Request, &TID);
        for (typ, value) in attrs {
            match value {
                Bytes(bytes) => writer.add_bytes(*typ, bytes),
                Xor(addr) => writer.add_xor_address(*typ, *addr),
            };
        }
        let bytes = writer.finish().expect("fits").to_vec();
        decode(&Message::parse(&bytes).expect("well-formed"))
    }

    fn peer() -> SocketAddr {
        PEER.parse().unwrap()
    }

    fn transport(protocol: u8) -> (u16, Value) {
        (attr::REQUESTED_TRANSPORT, Bytes(vec![protocol, 0, 0, 0]))
    }

    fn family(typ: u16, byte: u8) -> (u16, Value) {
        (typ, Bytes(vec![byte, 0, 0, 0]))
    }

    /// What an Allocate case is: its name, attributes, whether the client is on a stream, and
    /// the code it earns.
    type Case = (&'static str, Vec<(u16, Value)>, bool, u16);

    /// The error code an Allocate with these attributes earns, `None` if it decodes.
    fn allocate_code(attrs: &[(u16, Value)], stream_client: bool) -> Option<u16> {
        with(Method::ALLOCATE, attrs, |msg| {
            Allocate::decode(msg, stream_client)
        })
        .err()
        .map(|e| e.code().code())
    }

    #[test]
    fn allocate_decodes_what_it_asks_for() {
        let allocate = with(
            Method::ALLOCATE,
            &[
                transport(17),
                family(attr::ADDITIONAL_ADDRESS_FAMILY_LEGACY, 0x02),
                (attr::EVEN_PORT, Bytes(vec![0])),
                (attr::LIFETIME, Bytes(1200u32.to_be_bytes().to_vec())),
                (attr::DONT_FRAGMENT, Bytes(vec![])),
            ],
            |msg| Allocate::decode(msg, false),
        );
        assert_eq!(
            allocate,
            Ok(Allocate {
                transport: RelayTransport::Udp,
                family: Family::V4,
                additional: Some(Family::V6),
                port: PortRequest::Even {
                    reserve_next: false
                },
                lifetime: Some(1200),
                dont_fragment: true,
                legacy_family_attrs: true,
            })
        );
        let tcp = with(Method::ALLOCATE, &[transport(6)], |msg| {
            Allocate::decode(msg, true)
        });
        assert_eq!(tcp.map(|a| a.transport), Ok(RelayTransport::Tcp));
        let reserved = with(
            Method::ALLOCATE,
            &[transport(17), (attr::RESERVATION_TOKEN, Bytes(vec![9; 8]))],
            |msg| Allocate::decode(msg, false),
        );
        assert_eq!(reserved.map(|a| a.port), Ok(PortRequest::Reserved([9; 8])));
    }

    #[test]
    fn each_malformed_allocate_earns_its_code() {
        let token = || (attr::RESERVATION_TOKEN, Bytes(vec![1; 8]));
        let even = |r: u8| (attr::EVEN_PORT, Bytes(vec![r]));
        let cases: Vec<Case> = vec![
            ("no REQUESTED-TRANSPORT", vec![], false, 400),
            ("SCTP", vec![transport(132)], false, 442),
            (
                "empty REQUESTED-TRANSPORT",
                vec![(attr::REQUESTED_TRANSPORT, Bytes(vec![]))],
                false,
                442,
            ),
            ("TCP over UDP", vec![transport(6)], false, 400),
            (
                "TCP with DONT-FRAGMENT",
                vec![transport(6), (attr::DONT_FRAGMENT, Bytes(vec![]))],
                true,
                400,
            ),
            ("TCP with EVEN-PORT", vec![transport(6), even(0)], true, 400),
            (
                "TCP with RESERVATION-TOKEN",
                vec![transport(6), token()],
                true,
                400,
            ),
            (
                "EVEN-PORT and RESERVATION-TOKEN",
                vec![transport(17), even(0), token()],
                false,
                400,
            ),
            (
                "short RESERVATION-TOKEN",
                vec![transport(17), (attr::RESERVATION_TOKEN, Bytes(vec![1; 4]))],
                false,
                400,
            ),
            (
                "RESERVATION-TOKEN with an additional family",
                vec![
                    transport(17),
                    token(),
                    family(attr::ADDITIONAL_ADDRESS_FAMILY, 2),
                ],
                false,
                400,
            ),
            (
                "requested and additional family",
                vec![
                    transport(17),
                    family(attr::REQUESTED_ADDRESS_FAMILY, 1),
                    family(attr::ADDITIONAL_ADDRESS_FAMILY, 2),
                ],
                false,
                400,
            ),
            (
                "unknown requested family",
                vec![transport(17), family(attr::REQUESTED_ADDRESS_FAMILY, 3)],
                false,
                440,
            ),
            (
                "empty requested family",
                vec![
                    transport(17),
                    (attr::REQUESTED_ADDRESS_FAMILY, Bytes(vec![])),
                ],
                false,
                440,
            ),
            (
                "EVEN-PORT reserving with an additional family",
                vec![
                    transport(17),
                    even(0x80),
                    family(attr::ADDITIONAL_ADDRESS_FAMILY, 2),
                ],
                false,
                400,
            ),
            (
                "additional family IPv4",
                vec![transport(17), family(attr::ADDITIONAL_ADDRESS_FAMILY, 1)],
                false,
                400,
            ),
            (
                "legacy additional family IPv4",
                vec![
                    transport(17),
                    family(attr::ADDITIONAL_ADDRESS_FAMILY_LEGACY, 1),
                ],
                false,
                400,
            ),
            // RFC 8656 §7.2 order: the transport is checked before the family.
            (
                "TCP over UDP with an unknown family",
                vec![transport(6), family(attr::REQUESTED_ADDRESS_FAMILY, 3)],
                false,
                400,
            ),
            (
                "SCTP with an unknown family",
                vec![transport(132), family(attr::REQUESTED_ADDRESS_FAMILY, 3)],
                false,
                442,
            ),
        ];
        for (what, attrs, stream_client, code) in cases {
            assert_eq!(allocate_code(&attrs, stream_client), Some(code), "{what}");
        }
    }

    #[test]
    fn channel_bind_needs_a_number_in_range_and_a_peer() {
        let number = |n: u16| {
            let [hi, lo] = n.to_be_bytes();
            (attr::CHANNEL_NUMBER, Bytes(vec![hi, lo, 0, 0]))
        };
        let decode = |attrs: &[(u16, Value)], max| {
            with(Method::CHANNEL_BIND, attrs, |msg| {
                ChannelBind::decode(msg, max)
            })
        };
        let peer_attr = || (attr::XOR_PEER_ADDRESS, Xor(peer()));
        assert_eq!(
            decode(&[number(0x4001), peer_attr()], 0x4FFF),
            Ok(ChannelBind {
                number: 0x4001,
                peer: peer()
            })
        );
        assert!(decode(&[number(0x7FFF), peer_attr()], 0x7FFF).is_ok());
        let failures = [
            (
                decode(&[peer_attr()], 0x4FFF),
                DecodeError::Missing(attr::CHANNEL_NUMBER),
            ),
            (
                decode(
                    &[(attr::CHANNEL_NUMBER, Bytes(vec![0x40, 0])), peer_attr()],
                    0x4FFF,
                ),
                DecodeError::Malformed(attr::CHANNEL_NUMBER),
            ),
            (
                decode(&[number(0x3FFF), peer_attr()], 0x4FFF),
                DecodeError::ChannelOutOfRange(0x3FFF),
            ),
            (
                decode(&[number(0x5000), peer_attr()], 0x4FFF),
                DecodeError::ChannelOutOfRange(0x5000),
            ),
            (
                decode(&[number(0x4000)], 0x4FFF),
                DecodeError::Missing(attr::XOR_PEER_ADDRESS),
            ),
            (
                decode(
                    &[
                        number(0x4000),
                        (attr::XOR_PEER_ADDRESS, Bytes(vec![0, 1, 2])),
                    ],
                    0x4FFF,
                ),
                DecodeError::Malformed(attr::XOR_PEER_ADDRESS),
            ),
        ];
        for (result, error) in failures {
            assert_eq!(result, Err(error));
            assert_eq!(error.code(), ErrorCode::BadRequest);
        }
    }

    #[test]
    fn create_permission_reads_its_peers_lazily_in_order() {
        let none = with(Method::CREATE_PERMISSION, &[], |msg| {
            CreatePermission::decode(msg).err()
        });
        assert_eq!(none, Some(DecodeError::Missing(attr::XOR_PEER_ADDRESS)));
        let second: SocketAddr = "[2001:db8::7]:9".parse().unwrap();
        let peers = with(
            Method::CREATE_PERMISSION,
            &[
                (attr::XOR_PEER_ADDRESS, Xor(peer())),
                (attr::LIFETIME, Bytes(vec![0; 4])),
                (attr::XOR_PEER_ADDRESS, Bytes(vec![0, 1])),
                (attr::XOR_PEER_ADDRESS, Xor(second)),
            ],
            |msg| CreatePermission::decode(msg).map(|c| c.peers().collect::<Vec<_>>()),
        );
        assert_eq!(
            peers,
            Ok(vec![
                Ok(peer()),
                Err(DecodeError::Malformed(attr::XOR_PEER_ADDRESS)),
                Ok(second)
            ])
        );
    }

    #[test]
    fn connect_connection_bind_and_send_decode_or_say_what_is_missing() {
        let connect = with(
            Method::CONNECT,
            &[(attr::XOR_PEER_ADDRESS, Xor(peer()))],
            Connect::decode,
        );
        assert_eq!(connect, Ok(Connect { peer: peer() }));
        let connect = with(Method::CONNECT, &[], Connect::decode);
        assert_eq!(connect, Err(DecodeError::Missing(attr::XOR_PEER_ADDRESS)));

        let bind = |value: Vec<u8>| {
            with(
                Method::CONNECTION_BIND,
                &[(attr::CONNECTION_ID, Bytes(value))],
                ConnectionBind::decode,
            )
        };
        assert_eq!(bind(vec![0, 0, 1, 2]), Ok(ConnectionBind { id: 0x102 }));
        assert_eq!(
            bind(vec![1, 2]),
            Err(DecodeError::Malformed(attr::CONNECTION_ID))
        );
        let missing = with(Method::CONNECTION_BIND, &[], |msg| {
            ConnectionBind::decode(msg)
        });
        assert_eq!(missing, Err(DecodeError::Missing(attr::CONNECTION_ID)));

        let send = with(
            Method::SEND,
            &[
                (attr::XOR_PEER_ADDRESS, Xor(peer())),
                (attr::DATA, Bytes(b"hi".to_vec())),
            ],
            |msg| SendIndication::decode(msg).map(|s| (s.peer, s.data.to_vec())),
        );
        assert_eq!(send, Ok((peer(), b"hi".to_vec())));
        let no_data = with(
            Method::SEND,
            &[(attr::XOR_PEER_ADDRESS, Xor(peer()))],
            |msg| SendIndication::decode(msg).err(),
        );
        assert_eq!(no_data, Some(DecodeError::Missing(attr::DATA)));
    }

    #[test]
    fn refresh_and_binding_decode() {
        let refresh = |attrs: &[(u16, Value)]| with(Method::REFRESH, attrs, Refresh::decode);
        assert_eq!(
            refresh(&[
                (attr::LIFETIME, Bytes(0u32.to_be_bytes().to_vec())),
                family(attr::REQUESTED_ADDRESS_FAMILY, 2)
            ]),
            Refresh {
                lifetime: Some(0),
                family: Some(Family::V6)
            }
        );
        // Nothing in a Refresh is an error: a short LIFETIME or an unknown family is ignored.
        assert_eq!(
            refresh(&[
                (attr::LIFETIME, Bytes(vec![0, 1])),
                family(attr::REQUESTED_ADDRESS_FAMILY, 9)
            ]),
            Refresh {
                lifetime: None,
                family: None
            }
        );

        let binding = |attrs: &[(u16, Value)]| with(Method::BINDING, attrs, Binding::decode);
        assert_eq!(binding(&[]), Ok(Binding { change_request: 0 }));
        assert_eq!(
            binding(&[(attr::CHANGE_REQUEST, Bytes(vec![0, 0, 0, 6]))]),
            Ok(Binding { change_request: 6 })
        );
        let short = binding(&[(attr::CHANGE_REQUEST, Bytes(vec![0, 6]))]);
        assert_eq!(short.map_err(DecodeError::code), Err(ErrorCode::BadRequest));
    }

    #[test]
    fn decode_errors_map_to_their_codes() {
        let cases = [
            (DecodeError::Missing(attr::LIFETIME), 400),
            (DecodeError::Malformed(attr::LIFETIME), 400),
            (DecodeError::Conflict, 400),
            (DecodeError::TcpOverUdp, 400),
            (DecodeError::ChannelOutOfRange(1), 400),
            (DecodeError::UnsupportedTransport, 442),
            (DecodeError::UnsupportedFamily, 440),
        ];
        for (error, code) in cases {
            assert_eq!(error.code().code(), code, "{error:?}");
        }
    }
}
