//! The data path: ChannelData and Send indications from clients, peer datagrams framed in place
//! toward them. Per packet: hash lookups, the permission check (and for one of tern's own
//! addresses a port comparison), the bandwidth buckets when limits are set, and plain integer
//! counters.

use super::metrics::{BandwidthLimit, Counters, Direction};
use super::request::SendIndication;
use super::server::live;
use super::{AllocId, FiveTuple, Output, RelayTransport, Server};
use crate::metrics::LabelSet;
use crate::stun::{self, ChannelData, CHANNEL_DATA_HEADER_LEN, DATA_INDICATION_MAX_PREFIX};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
        let policy = &self.config.policy;
        let allocation = &self.allocations[index];
        let Some(channel) = allocation.channel_by_number(frame.channel) else {
            return Output::Nothing;
        };
        let peer = channel.peer;
        if !allocation.permits(peer, |port| policy.is_relay_port(port)) {
            return Output::Nothing;
        }
        self.relay_to_peer(index, peer, frame.data)
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
        let policy = &self.config.policy;
        if !policy.permits(peer.ip()) {
            self.counters.peers_denied += 1;
            return Output::Nothing;
        }
        let allocation = &self.allocations[index];
        if !allocation.serves(peer.ip()) || allocation.relay_transport == RelayTransport::Tcp {
            return Output::Nothing;
        }
        if !allocation.permits(peer, |port| policy.is_relay_port(port)) {
            // Permitted IP, refused port: one of tern's own addresses.
            if allocation.has_permission(peer.ip()) {
                self.counters.own_address_refusals += 1;
            }
            return Output::Nothing;
        }
        self.relay_to_peer(index, peer, data)
    }

    /// Client data for `peer` that passed the permission checks: through the bandwidth limits,
    /// counted, out of the relay socket.
    fn relay_to_peer<'a>(&mut self, index: usize, peer: SocketAddr, data: &'a [u8]) -> Output<'a> {
        if !self.pass_bandwidth(index, Direction::ToPeer, data.len()) {
            return Output::Nothing;
        }
        let allocation = &mut self.allocations[index];
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
        let policy = &self.config.policy;
        let Some(allocation) = live(&mut self.allocations, alloc) else {
            return Output::Nothing;
        };
        let start = DATA_INDICATION_MAX_PREFIX;
        let end = start + len;
        if end + 3 > buf.len() {
            return Output::Nothing;
        }
        if !allocation.permits(peer, |port| policy.is_relay_port(port)) {
            // Permitted IP, refused port: one of tern's own addresses.
            if allocation.has_permission(peer.ip()) {
                self.counters.own_address_refusals += 1;
            }
            return Output::Nothing;
        }
        if !self.pass_bandwidth(alloc.index, Direction::ToClient, len) {
            return Output::Nothing;
        }
        let allocation = &mut self.allocations[alloc.index];
        let tuple = allocation.tuple;
        let pad = if tuple.transport.is_stream() {
            (4 - len % 4) % 4
        } else {
            0
        };
        let channel = allocation.channel_number_of(peer);
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

    /// Whether `bytes` of relayed data may pass `direction` for allocation `index` now, under
    /// `max-bps` and this server's part of `bps-capacity`; takes them if so, counts the drop
    /// if not. Two integer comparisons when no limit is set.
    fn pass_bandwidth(&mut self, index: usize, direction: Direction, bytes: usize) -> bool {
        let max_bps = self.config.max_bps;
        if max_bps == 0 && self.capacity.rate(self.config.bps_capacity) == 0 {
            return true;
        }
        match self.bandwidth_verdict(index, direction, bytes) {
            None => true,
            Some(limit) => {
                let (d, l) = (direction.index(), limit.index());
                self.counters.bandwidth_dropped_packets[d][l] += 1;
                self.counters.bandwidth_dropped_bytes[d][l] += bytes as u64;
                false
            }
        }
    }

    /// Takes `bytes` from both limits if both have them; otherwise the limit that has not.
    fn bandwidth_verdict(
        &mut self,
        index: usize,
        direction: Direction,
        bytes: usize,
    ) -> Option<BandwidthLimit> {
        let (now, d) = (self.now, direction.index());
        let (max_bps, capacity) = (self.config.max_bps, self.config.bps_capacity);
        let own = &mut self.allocations[index].bandwidth[d];
        if !own.has(now, max_bps, bytes) {
            return Some(BandwidthLimit::MaxBps);
        }
        if !self.capacity.has(now, capacity, d, bytes) {
            return Some(BandwidthLimit::BpsCapacity);
        }
        self.allocations[index].bandwidth[d].take(max_bps, bytes);
        self.capacity.take(capacity, d, bytes);
        None
    }

    /// How long from `now` until `bytes` of relayed data may pass `direction` for `alloc`, under
    /// `max-bps` and this server's part of `bps-capacity`: zero if they may pass now, and for
    /// an allocation that does not exist. Nothing is taken: handing the data to
    /// [`Server::handle_client`] or [`Server::handle_peer`] takes it.
    ///
    /// For a stream connection, which can stop reading instead of dropping: wait this long before
    /// handing over the next frame, and it will not be dropped. Data that does not pass through
    /// the server takes its share with [`Server::take_bandwidth`].
    pub fn bandwidth_delay(
        &mut self,
        now: Instant,
        alloc: AllocId,
        direction: Direction,
        bytes: usize,
    ) -> Duration {
        self.bandwidth_wait(now, alloc, direction, bytes)
            .map_or(Duration::ZERO, |(delay, _)| delay)
    }

    /// [`Server::bandwidth_delay`], with the limit that makes the wait (the longer one when
    /// both do); `None` when the bytes may pass now.
    pub fn bandwidth_wait(
        &mut self,
        now: Instant,
        alloc: AllocId,
        direction: Direction,
        bytes: usize,
    ) -> Option<(Duration, BandwidthLimit)> {
        let (max_bps, capacity) = (self.config.max_bps, self.config.bps_capacity);
        if max_bps == 0 && self.capacity.rate(capacity) == 0 {
            return None;
        }
        let d = direction.index();
        let allocation = live(&mut self.allocations, alloc)?;
        let own = allocation.bandwidth[d].delay(now, max_bps, bytes);
        let shared = self.capacity.delay(now, capacity, d, bytes);
        match (own, shared) {
            (own, shared) if own.is_zero() && shared.is_zero() => None,
            (own, shared) if own >= shared => Some((own, BandwidthLimit::MaxBps)),
            (_, shared) => Some((shared, BandwidthLimit::BpsCapacity)),
        }
    }

    /// Takes `bytes` of relayed data in `direction` for `alloc` if they may pass at `now`
    /// (returns zero), else returns how long until they may and takes nothing.
    pub fn take_bandwidth(
        &mut self,
        now: Instant,
        alloc: AllocId,
        direction: Direction,
        bytes: usize,
    ) -> Duration {
        let delay = self.bandwidth_delay(now, alloc, direction, bytes);
        if delay.is_zero() && live(&mut self.allocations, alloc).is_some() {
            let (max_bps, capacity) = (self.config.max_bps, self.config.bps_capacity);
            let d = direction.index();
            self.allocations[alloc.index].bandwidth[d].take(max_bps, bytes);
            self.capacity.take(capacity, d, bytes);
        }
        delay
    }

    /// The allocation on `tuple`, if any.
    pub fn allocation_on(&self, tuple: &FiveTuple) -> Option<AllocId> {
        let index = *self.by_tuple.get(tuple)?;
        let generation = self.allocations[index].generation;
        Some(AllocId { index, generation })
    }
}
