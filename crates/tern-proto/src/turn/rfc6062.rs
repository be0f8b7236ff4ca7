//! TURN over TCP relays (RFC 6062): Connect and its deferred answer, peers connecting in
//! (ConnectionAttempt), ConnectionBind on a data connection, and peer connections ending.

use super::allocation::{PeerConnection, PendingConnect, Permission};
use super::metrics::{Limit, Outcome};
use super::reply::{Answer, Seal};
use super::request::{self, is_known_attribute};
use super::server::live;
use super::{
    AllocId, ConnectionLookup, ErrorCode, Event, FiveTuple, Output, RelayTransport, Server,
    MAX_PEER_CONNECTIONS,
};
use crate::stun::{attr, Class, Message, MessageWriter, Method};
use std::net::SocketAddr;
use std::time::Instant;
use tracing::{debug, info};

impl Server {
    /// RFC 6062 §5.2: check the peer, refuse a second connection to it (446), then ask the I/O
    /// layer to connect; the response waits for [`Server::connect_result`].
    pub(super) fn connect<'a>(
        &mut self,
        now: Instant,
        index: usize,
        connect: request::Connect,
        answer: &Answer<'_>,
        out: &'a mut [u8],
    ) -> Output<'a> {
        if self.allocations[index].relay_transport != RelayTransport::Tcp {
            return self.reply_error(out, answer, ErrorCode::BadRequest);
        }
        let peer = connect.peer;
        if let Some(code) = self.check_peer(index, peer) {
            return self.reply_error(out, answer, code);
        }
        let connections = &self.allocations[index].peer_connections;
        if connections.iter().any(|c| c.peer == peer) {
            return self.reply_error(out, answer, ErrorCode::ConnectionAlreadyExists);
        }
        if connections.len() >= MAX_PEER_CONNECTIONS {
            return self.refuse_by_limit(out, answer, Limit::TcpPeerConnections);
        }
        let Some(id) = self.next_connection_id(index) else {
            return self.reply_error(out, answer, ErrorCode::InsufficientCapacity);
        };
        let allocation = &self.allocations[index];
        let max = self.config.max_permissions as usize;
        if !allocation.has_permission(peer.ip()) && max != 0 && allocation.permissions.len() >= max
        {
            return self.refuse_by_limit(out, answer, Limit::MaxPermissions);
        }
        let expires = now + self.config.permission_lifetime;
        let relay_ports_only = self.config.policy.relay_ports_only(peer.ip());
        let allocation = &mut self.allocations[index];
        // The peer may connect back to the relayed address: Connect installs the permission.
        allocation.install_permission(
            peer.ip(),
            Permission {
                expires,
                relay_ports_only,
            },
        );
        allocation.peer_connections.push(PeerConnection {
            id,
            peer,
            connect: Some(PendingConnect {
                tid: answer.tid,
                sha256: answer.seal.sha256,
                fingerprint: answer.seal.fingerprint,
                revoked: false,
            }),
        });
        let alloc = AllocId {
            index,
            generation: allocation.generation,
        };
        self.reschedule(index, expires);
        self.events.push_back(Event::ConnectPeer {
            alloc,
            peer,
            connection_id: id,
        });
        Output::Nothing
    }

    /// Answers the Connect request behind [`Event::ConnectPeer`] once the I/O layer has opened
    /// the peer connection (`connected`) or given up on it (447; 403 if a reload denied the peer
    /// meanwhile, see [`Event::ClosePeerConnection`]). On success the connection waits for its
    /// ConnectionBind under `connection_id`; otherwise it is forgotten.
    pub fn connect_result<'a>(
        &mut self,
        alloc: AllocId,
        connection_id: u32,
        connected: bool,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let Some(allocation) = live(&mut self.allocations, alloc) else {
            return Output::Nothing;
        };
        let Some(position) = allocation
            .peer_connections
            .iter()
            .position(|c| c.id == connection_id)
        else {
            return Output::Nothing;
        };
        let Some(pending) = allocation.peer_connections[position].connect.take() else {
            return Output::Nothing;
        };
        let peer = allocation.peer_connections[position].peer;
        if !connected || pending.revoked {
            allocation.peer_connections.swap_remove(position);
        }
        let key = allocation.key;
        let answer = Answer {
            tuple: allocation.tuple,
            method: Method::CONNECT,
            tid: pending.tid,
            seal: Seal {
                key: Some(&key),
                sha256: pending.sha256,
                fingerprint: pending.fingerprint,
            },
        };
        if pending.revoked {
            debug!(client = %answer.tuple.client, %peer, "connect given up: a reload denies the peer");
            self.reply_error(out, &answer, ErrorCode::Forbidden)
        } else if connected {
            debug!(client = %answer.tuple.client, %peer, connection_id, "peer connection opened");
            self.respond(out, &answer, Outcome::Success, |w| {
                w.add_u32(attr::CONNECTION_ID, connection_id);
            })
        } else {
            debug!(client = %answer.tuple.client, %peer, "peer connection failed");
            self.reply_error(out, &answer, ErrorCode::ConnectionTimeoutOrFailure)
        }
    }

    /// A peer connection of `alloc` is gone (never bound in time, or one side of the spliced pair
    /// closed): a new Connect to that peer may proceed.
    pub fn connection_closed(&mut self, alloc: AllocId, connection_id: u32) {
        if let Some(allocation) = live(&mut self.allocations, alloc) {
            allocation
                .peer_connections
                .retain(|c| c.id != connection_id);
        }
    }

    /// A peer connected to the relayed address of TCP allocation `alloc` (RFC 6062 §5.3). With
    /// a permission for its IP (and the peer policy allowing it) the connection gets an id and
    /// the client a ConnectionAttempt indication, written into `out`; otherwise `None`, and the
    /// I/O layer closes the peer connection.
    pub fn connection_attempt<'a>(
        &mut self,
        alloc: AllocId,
        peer: SocketAddr,
        out: &'a mut [u8],
    ) -> Option<(u32, &'a [u8])> {
        let policy = &self.config.policy;
        let allocation = live(&mut self.allocations, alloc)?;
        if allocation.relay_transport != RelayTransport::Tcp
            || !allocation.has_permission(peer.ip())
            || allocation.peer_connections.len() >= MAX_PEER_CONNECTIONS
        {
            return None;
        }
        if !allocation.permits(peer, |port| policy.is_relay_port(port)) {
            self.counters.own_address_refusals += 1;
            return None;
        }
        if !policy.permits(peer.ip()) {
            self.counters.peers_denied += 1;
            return None;
        }
        let id = self.next_connection_id(alloc.index)?;
        let allocation = &mut self.allocations[alloc.index];
        allocation.peer_connections.push(PeerConnection {
            id,
            peer,
            connect: None,
        });
        debug!(client = %allocation.tuple.client, %peer, connection_id = id, "peer connection accepted");
        let tid = self.random_tid();
        let mut writer =
            MessageWriter::new(out, Method::CONNECTION_ATTEMPT, Class::Indication, &tid);
        writer.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        writer.add_u32(attr::CONNECTION_ID, id);
        writer.add_fingerprint();
        writer.finish().map(|data| (id, data))
    }

    /// The username an allocation authenticated with (the data connections of a TCP allocation
    /// must use the same).
    pub fn allocation_username(&self, alloc: AllocId) -> Option<&str> {
        self.allocations
            .get(alloc.index)
            .filter(|a| a.generation == alloc.generation)
            .map(|a| &*a.username)
    }

    /// A ConnectionBind request (RFC 6062 §5.4) on a client connection: authenticated with the
    /// same user as the allocation that owns the connection id, on a stream connection that has
    /// no allocation. On success the response is the last STUN message on this connection:
    /// the I/O layer has claimed the peer connection from `lookup` and splices the two.
    pub fn connection_bind<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        input: &'a [u8],
        lookup: &mut dyn ConnectionLookup,
        out: &'a mut [u8],
    ) -> Output<'a> {
        let Ok(msg) = Message::parse(input) else {
            return Output::Nothing;
        };
        if msg.fingerprint_ok() == Some(false)
            || msg.class() != Class::Request
            || msg.method() != Method::CONNECTION_BIND
        {
            return Output::Nothing;
        }
        self.connection_bind_request(now, tuple, &msg, lookup, out)
    }

    fn connection_bind_request<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
        lookup: &mut dyn ConnectionLookup,
        out: &'a mut [u8],
    ) -> Output<'a> {
        // Decoded before authenticating: the connection id names the control connection whose
        // nonce this data connection may carry. A bad one is answered after authentication.
        let bind = request::ConnectionBind::decode(msg);
        let pending = bind.ok().and_then(|bind| lookup.pending(bind.id));
        let control_client = pending.as_ref().map(|(_, client)| *client);
        let authed = match self.authenticate(now, tuple, msg, None, control_client) {
            Ok(authed) => authed,
            Err(challenge) => return self.reply_challenge(now, out, tuple, msg, challenge),
        };
        let key = authed.key;
        let answer = Answer::to(msg, tuple, Seal::answering(msg, &key, authed.kind));
        let mut unknown = [0u16; 8];
        let count = msg.unknown_required(is_known_attribute, &mut unknown);
        if count > 0 {
            return self.reply_unknown(out, &answer, &unknown[..count]);
        }
        let id = match bind {
            Ok(bind) => bind.id,
            Err(error) => return self.reply_malformed(out, &answer, error),
        };
        // A data connection carries nothing but its peer's bytes: not over UDP, not on a
        // connection that has an allocation (RFC 6062 §5.4).
        let Some((username, _)) = pending else {
            debug!(client = %tuple.client, "connection bind refused: unknown connection id");
            return self.reply_error(out, &answer, ErrorCode::BadRequest);
        };
        if !tuple.transport.is_stream() || self.by_tuple.contains_key(&tuple) {
            return self.reply_error(out, &answer, ErrorCode::BadRequest);
        }
        if *username != *authed.username {
            info!(client = %tuple.client, user = authed.username, "connection bind refused: not the allocation's user");
            return self.reply_error(out, &answer, ErrorCode::WrongCredentials);
        }
        if !lookup.claim(id) {
            return self.reply_error(out, &answer, ErrorCode::BadRequest);
        }
        debug!(client = %tuple.client, connection_id = id, "connection bound");
        self.reply_success(out, &answer)
    }

    /// A fresh non-zero connection id, unique within the allocation (the I/O layer's registry
    /// refuses the rare collision with another allocation's).
    fn next_connection_id(&mut self, index: usize) -> Option<u32> {
        for _ in 0..8 {
            let tid = self.random_tid();
            let id = u32::from_be_bytes([tid[0], tid[1], tid[2], tid[3]]);
            let taken = self.allocations[index]
                .peer_connections
                .iter()
                .any(|c| c.id == id);
            if id != 0 && !taken {
                return Some(id);
            }
        }
        None
    }
}
