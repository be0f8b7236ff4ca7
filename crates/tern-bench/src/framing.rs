//! What a load packet looks like on the wire for each protocol, and how its sequence number
//! and send time are found again in the reply. The payload starts with `seq` and the send time
//! in nanoseconds (both u64, big-endian), then zeros up to the requested size.

use std::net::SocketAddr;
use tern_proto::stun::{attr, Message, MessageWriter, Method, TransactionId};

/// Bytes of the payload used for sequence number and timestamp.
pub const STAMP: usize = 16;

pub trait Framing: Sync {
    /// Writes one packet of flow `flow` into `buf`; returns its length.
    fn write(&self, flow: usize, buf: &mut [u8], seq: u64, sent_ns: u64) -> usize;
    /// `(seq, sent_ns)` of a reply, if it is one.
    fn read(&self, buf: &[u8]) -> Option<(u64, u64)>;
    /// Largest packet written.
    fn max_len(&self) -> usize;
}

fn stamp(buf: &mut [u8], seq: u64, sent_ns: u64) {
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..16].copy_from_slice(&sent_ns.to_be_bytes());
}

fn unstamp(buf: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(buf.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(buf.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// ChannelData (also the raw forwarder's 4-byte header): channel number, length, payload.
pub struct ChannelFraming {
    pub channel: u16,
    pub size: usize,
}

impl Framing for ChannelFraming {
    fn write(&self, _flow: usize, buf: &mut [u8], seq: u64, sent_ns: u64) -> usize {
        buf[..2].copy_from_slice(&self.channel.to_be_bytes());
        buf[2..4].copy_from_slice(&(self.size as u16).to_be_bytes());
        stamp(&mut buf[4..], seq, sent_ns);
        buf[4 + STAMP..4 + self.size].fill(0);
        4 + self.size
    }

    fn read(&self, buf: &[u8]) -> Option<(u64, u64)> {
        match buf.first() {
            Some(0x40..=0x7F) => unstamp(buf.get(4..)?),
            _ => None,
        }
    }

    fn max_len(&self) -> usize {
        4 + self.size + 3
    }
}

/// Send indications up (XOR-PEER-ADDRESS + DATA), Data indications down.
pub struct IndicationFraming {
    /// Per flow: the message up to the payload, made once.
    prefixes: Vec<Vec<u8>>,
    size: usize,
}

impl IndicationFraming {
    pub fn new(peers: &[SocketAddr], size: usize) -> IndicationFraming {
        let padded = size.div_ceil(4) * 4;
        let prefixes = peers
            .iter()
            .enumerate()
            .map(|(i, peer)| {
                let mut tid: TransactionId = [0x5A; 12];
                tid[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let mut buf = vec![0u8; 64 + padded];
                let mut w = MessageWriter::new(
                    &mut buf,
                    Method::SEND,
                    tern_proto::stun::Class::Indication,
                    &tid,
                );
                w.add_xor_address(attr::XOR_PEER_ADDRESS, *peer);
                w.add_bytes(attr::DATA, &vec![0u8; size]);
                let len = w.finish().map_or(0, <[u8]>::len);
                buf.truncate(len - padded);
                buf
            })
            .collect();
        IndicationFraming { prefixes, size }
    }
}

impl Framing for IndicationFraming {
    fn write(&self, flow: usize, buf: &mut [u8], seq: u64, sent_ns: u64) -> usize {
        let prefix = &self.prefixes[flow];
        let padded = self.size.div_ceil(4) * 4;
        buf[..prefix.len()].copy_from_slice(prefix);
        let at = prefix.len();
        stamp(&mut buf[at..], seq, sent_ns);
        buf[at + STAMP..at + padded].fill(0);
        at + padded
    }

    fn read(&self, buf: &[u8]) -> Option<(u64, u64)> {
        let msg = Message::parse(buf).ok()?;
        unstamp(msg.get(attr::DATA)?)
    }

    fn max_len(&self) -> usize {
        self.prefixes.iter().map(Vec::len).max().unwrap_or(0) + self.size + 3
    }
}

/// STUN Binding requests; the transaction id carries the send time and sequence number.
pub struct BindingFraming;

impl Framing for BindingFraming {
    fn write(&self, _flow: usize, buf: &mut [u8], seq: u64, sent_ns: u64) -> usize {
        buf[..8].copy_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]);
        buf[8..16].copy_from_slice(&sent_ns.to_be_bytes());
        buf[16..20].copy_from_slice(&(seq as u32).to_be_bytes());
        20
    }

    fn read(&self, buf: &[u8]) -> Option<(u64, u64)> {
        if buf.len() < 20 || buf[0] != 0x01 || buf[1] != 0x01 {
            return None;
        }
        let sent = u64::from_be_bytes(buf[8..16].try_into().ok()?);
        let seq = u32::from_be_bytes(buf[16..20].try_into().ok()?);
        Some((u64::from(seq), sent))
    }

    fn max_len(&self) -> usize {
        20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_packets_round_trip() {
        let f = ChannelFraming {
            channel: 0x4001,
            size: 100,
        };
        let mut buf = [0u8; 200];
        assert_eq!(f.write(0, &mut buf, 7, 99), 104);
        assert_eq!(f.read(&buf[..104]), Some((7, 99)));
        assert_eq!(
            tern_proto::stun::ChannelData::parse(&buf[..104])
                .unwrap()
                .data
                .len(),
            100
        );
    }

    #[test]
    fn send_indications_parse_as_stun() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let f = IndicationFraming::new(&[peer], 100);
        let mut buf = [0u8; 400];
        let n = f.write(0, &mut buf, 3, 4);
        let msg = Message::parse(&buf[..n]).unwrap();
        assert_eq!(msg.method(), Method::SEND);
        assert_eq!(msg.get(attr::DATA).unwrap().len(), 100);
        assert_eq!(f.read(&buf[..n]), Some((3, 4)));
    }

    #[test]
    fn binding_requests_parse_as_stun() {
        let mut buf = [0u8; 20];
        BindingFraming.write(0, &mut buf, 5, 6);
        assert_eq!(Message::parse(&buf).unwrap().method(), Method::BINDING);
    }
}
