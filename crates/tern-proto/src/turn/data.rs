//! The data path: ChannelData and Send indications from clients, peer datagrams framed in place
//! toward them. Per packet: a lookup, the permission check and plain integer counters.

use super::metrics::{Counters, Direction};
use super::request::SendIndication;
use super::server::live;
use super::{AllocId, FiveTuple, Output, RelayTransport, Server};
use crate::stun::{self, ChannelData, CHANNEL_DATA_HEADER_LEN, DATA_INDICATION_MAX_PREFIX};
use std::net::SocketAddr;

impl Counters {
    /// One packet of `bytes` payload relayed `direction`.
    #[inline]
    fn relayed(&mut self, direction: Direction, bytes: usize) {
        self.relayed_packets[direction as usize] += 1;
        self.relayed_bytes[direction as usize] += bytes as u64;
    }
}

impl Server {
    pub(super) fn channel_data_from_client<'a>(
        &mut self,
        tuple: FiveTuple,
        input: &'a [u8],
    ) -> Output<'a> {
        let Some(frame) = ChannelData::parse(input) else {
            return Output::Nothing;
        };
        let Some(&index) = self.by_tuple.get(&tuple) else {
            return Output::Nothing;
        };
        let allocation = &mut self.allocations[index];
        let Some(channel) = allocation.channel_by_number(frame.channel) else {
            return Output::Nothing;
        };
        let peer = channel.peer;
        if !allocation.has_permission(peer.ip()) {
            return Output::Nothing;
        }
        allocation.stats.packets_to_peer += 1;
        allocation.stats.bytes_to_peer += frame.data.len() as u64;
        self.counters.relayed(Direction::ToPeer, frame.data.len());
        let alloc = AllocId {
            index,
            generation: allocation.generation,
        };
        Output::ToPeer {
            alloc,
            peer,
            data: frame.data,
        }
    }

    pub(super) fn send_indication<'a>(
        &mut self,
        tuple: FiveTuple,
        send: SendIndication<'a>,
    ) -> Output<'a> {
        let Some(&index) = self.by_tuple.get(&tuple) else {
            return Output::Nothing;
        };
        let SendIndication { peer, data } = send;
        if !self.config.policy.permits(peer.ip()) {
            self.counters.peers_denied += 1;
            return Output::Nothing;
        }
        let allocation = &mut self.allocations[index];
        if !allocation.serves(peer.ip())
            || !allocation.has_permission(peer.ip())
            || allocation.relay_transport == RelayTransport::Tcp
        {
            return Output::Nothing;
        }
        allocation.stats.packets_to_peer += 1;
        allocation.stats.bytes_to_peer += data.len() as u64;
        self.counters.relayed(Direction::ToPeer, data.len());
        Output::ToPeer {
            alloc: AllocId {
                index,
                generation: allocation.generation,
            },
            peer,
            data,
        }
    }

    /// See [`Server::handle_peer`]: ChannelData if the peer has a channel, else a Data
    /// indication, written around the payload where it stands.
    pub(super) fn peer_data_to_client<'a>(
        &mut self,
        alloc: AllocId,
        peer: SocketAddr,
        buf: &'a mut [u8],
        len: usize,
    ) -> Output<'a> {
        let Some(allocation) = live(&mut self.allocations, alloc) else {
            return Output::Nothing;
        };
        let start = DATA_INDICATION_MAX_PREFIX;
        let end = start + len;
        if end + 3 > buf.len() || !allocation.has_permission(peer.ip()) {
            return Output::Nothing;
        }
        let tuple = allocation.tuple;
        let pad = if tuple.transport.is_stream() {
            (4 - len % 4) % 4
        } else {
            0
        };
        let channel = allocation.channel_by_peer(peer).map(|c| c.number);
        allocation.stats.packets_to_client += 1;
        allocation.stats.bytes_to_client += len as u64;
        self.counters.relayed(Direction::ToClient, len);
        let frame_start = match channel {
            Some(number) => {
                let header_at = start - CHANNEL_DATA_HEADER_LEN;
                let mut header = [0u8; CHANNEL_DATA_HEADER_LEN];
                ChannelData::write_header(&mut header, number, len as u16);
                buf[header_at..start].copy_from_slice(&header);
                buf[end..end + pad].fill(0);
                header_at
            }
            None => {
                let prefix = stun::data_indication_prefix_len(&peer);
                let tid = self.random_tid();
                let written = stun::write_data_indication_prefix(
                    &mut buf[start - prefix..start],
                    &tid,
                    peer,
                    len,
                );
                if written == 0 {
                    return Output::Nothing; // too large for a STUN message: only a channel can carry it
                }
                let data_pad = (4 - len % 4) % 4;
                buf[end..end + data_pad].fill(0);
                return Output::ToClient {
                    tuple,
                    data: &buf[start - prefix..end + data_pad],
                };
            }
        };
        Output::ToClient {
            tuple,
            data: &buf[frame_start..end + pad],
        }
    }
}
