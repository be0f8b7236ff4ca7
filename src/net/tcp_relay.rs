//! TCP relays (RFC 6062) in the I/O layer: the relay's listening socket and outgoing peer
//! connections, the process-wide registry of peer connections waiting for their ConnectionBind,
//! and the splice of a bound data connection with its peer connection.
//!
//! The protocol decisions (permissions, policy, 446, who may bind) are the turn core's; this
//! module carries them out and enforces the RFC's 30 s timers (connecting to a peer, and a peer
//! connection waiting for its ConnectionBind).
//!
//! The registry is a `Mutex<HashMap>` touched when a peer connection is opened, bound or given
//! up, never per byte. After the bind, bytes go straight between the two sockets through a
//! buffer per direction: no STUN framing or parsing.

use super::common::lock;
use super::sockets;
use super::stream::{PeerConnections, Slot};
use crate::turn::CONNECTION_BIND_TIMEOUT;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tracing::debug;

/// How long a relay stops accepting after a failed accept (out of file descriptors and the
/// like), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Ties peer connections to the allocation that owns them.
#[derive(Clone, Debug)]
pub(super) struct Owner {
    /// Resolves (with an error) when the allocation's relay is dropped: every pending and
    /// spliced connection of the allocation then closes.
    pub ending: watch::Receiver<()>,
    /// Tells the control connection that a peer connection is gone (so its core forgets it).
    pub closed: mpsc::UnboundedSender<u32>,
}

/// A peer connection waiting for its ConnectionBind.
#[derive(Debug)]
pub(super) struct Pending {
    pub id: u32,
    pub username: Box<str>,
    /// The control connection's client address (its nonce is good on the data connection too).
    pub control_client: SocketAddr,
    pub peer: Option<TcpStream>,
    pub peer_addr: SocketAddr,
    pub owner: Owner,
    /// Its place under `max-connections`, kept through the splice.
    pub _slot: Slot,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Bound and spliced, timed out, or its allocation ended: either way it is over.
        let _ = self.owner.closed.send(self.id);
    }
}

/// Peer connections waiting for a ConnectionBind, by connection id, for every client connection.
#[derive(Debug, Default)]
pub(super) struct ConnectionRegistry {
    pending: Mutex<HashMap<u32, Pending>>,
}

impl ConnectionRegistry {
    /// Files a peer connection under its id until a data connection claims it, its allocation
    /// ends, or [`CONNECTION_BIND_TIMEOUT`] passes. False (and the connection is dropped) if the
    /// id is already taken by another allocation's connection.
    pub fn insert(self: &Arc<Self>, pending: Pending) -> bool {
        let id = pending.id;
        let mut ending = pending.owner.ending.clone();
        {
            let mut map = lock(&self.pending);
            if map.contains_key(&id) {
                return false;
            }
            map.insert(id, pending);
        }
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(CONNECTION_BIND_TIMEOUT) => {}
                _ = ending.changed() => {}
            }
            if let Some(registry) = registry.upgrade() {
                if let Some(expired) = registry.take(id) {
                    debug!(peer = %expired.peer_addr, connection_id = id, "peer connection closed: no ConnectionBind");
                }
            }
        });
        true
    }

    fn take(&self, id: u32) -> Option<Pending> {
        lock(&self.pending).remove(&id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.pending).len()
    }
}

impl PeerConnections for Arc<ConnectionRegistry> {
    type Claimed = Pending;

    fn pending(&self, id: u32) -> Option<(Box<str>, SocketAddr)> {
        lock(&self.pending)
            .get(&id)
            .map(|p| (p.username.clone(), p.control_client))
    }

    fn claim(&self, id: u32) -> Option<Pending> {
        self.take(id)
    }
}

/// A TCP allocation's relay, owned by its control connection: the listening socket on the
/// relayed address, the Connects in progress, and the news of closed peer connections.
pub(super) struct TcpRelay {
    pub listener: TcpListener,
    pub local: SocketAddr,
    pub connects: JoinSet<(u32, io::Result<TcpStream>, Slot)>,
    pub closed: mpsc::UnboundedReceiver<u32>,
    /// Set after a failed accept: accepting resumes when it fires.
    backoff: Option<Pin<Box<Sleep>>>,
    owner: Owner,
    /// Dropped with the relay: ends every peer connection of the allocation.
    _ending: watch::Sender<()>,
}

/// What happened on a TCP relay.
pub(super) enum RelayEvent {
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    /// A Connect's outcome, with the slot its connection holds.
    Connected(u32, io::Result<TcpStream>, Slot),
    Closed(u32),
}

impl TcpRelay {
    pub fn new(listener: TcpListener, local: SocketAddr) -> Self {
        let (ending_tx, ending) = watch::channel(());
        let (closed_tx, closed) = mpsc::unbounded_channel();
        TcpRelay {
            listener,
            local,
            connects: JoinSet::new(),
            closed,
            backoff: None,
            owner: Owner {
                ending,
                closed: closed_tx,
            },
            _ending: ending_tx,
        }
    }

    pub fn owner(&self) -> Owner {
        self.owner.clone()
    }

    /// Opens a connection from the relayed address to `peer` in `slot`, giving up after 30 s.
    pub fn connect(&mut self, peer: SocketAddr, id: u32, slot: Slot) {
        let local = self.local;
        self.connects.spawn(async move {
            let attempt = async {
                let socket = TcpSocket::from_std_stream(sockets::relay_tcp_outgoing(local)?);
                socket.connect(peer).await
            };
            let result = match tokio::time::timeout(CONNECTION_BIND_TIMEOUT, attempt).await {
                Ok(result) => result,
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            };
            (id, result, slot)
        });
    }

    /// The next thing that happens on this relay.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<RelayEvent> {
        if let Some(backoff) = &mut self.backoff {
            if backoff.as_mut().poll(cx).is_ready() {
                self.backoff = None;
            }
        }
        if self.backoff.is_none() {
            if let Poll::Ready(accepted) = self.listener.poll_accept(cx) {
                if accepted.is_err() {
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
                return Poll::Ready(RelayEvent::Accepted(accepted));
            }
        }
        while let Poll::Ready(Some(joined)) = self.connects.poll_join_next(cx) {
            if let Ok((id, result, slot)) = joined {
                return Poll::Ready(RelayEvent::Connected(id, result, slot));
            }
        }
        match self.closed.poll_recv(cx) {
            Poll::Ready(Some(id)) => Poll::Ready(RelayEvent::Closed(id)),
            _ => Poll::Pending,
        }
    }

    #[cfg(test)]
    async fn next_event(&mut self) -> RelayEvent {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }
}

/// Relays bytes between a bound data connection and its peer connection until either closes
/// (then both close) or the allocation ends. `leftover` is what the client sent after its
/// ConnectionBind, before the response reached it.
pub(super) async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    client: S,
    leftover: Vec<u8>,
    mut pending: Pending,
) {
    let Some(mut peer) = pending.peer.take() else {
        return;
    };
    let _ = peer.set_nodelay(true);
    let mut ending = pending.owner.ending.clone();
    if !leftover.is_empty() && peer.write_all(&leftover).await.is_err() {
        return;
    }
    drop(leftover);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut peer_read, mut peer_write) = peer.split();
    tokio::select! {
        _ = tokio::io::copy(&mut client_read, &mut peer_write) => {}
        _ = tokio::io::copy(&mut peer_read, &mut client_write) => {}
        _ = ending.changed() => {}
    }
    // One side closed (or failed): close the other too (RFC 6062 §5.5).
    let _ = peer_write.shutdown().await;
    let _ = client_write.shutdown().await;
    debug!(peer = %pending.peer_addr, connection_id = pending.id, "spliced connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stream::{LimitSettings, Limits};
    use crate::net::StreamStats;
    use std::time::Duration;

    fn pending(id: u32, owner: &Owner, peer: TcpStream) -> Pending {
        let unlimited = LimitSettings {
            max_connections: 0,
            max_connections_per_ip: 0,
            ipv6_prefix: 64,
            fd_ceiling: None,
        };
        let limits = Limits::new(unlimited, Arc::new(StreamStats::default()));
        Pending {
            id,
            username: "alice".into(),
            control_client: "127.0.0.1:1".parse().unwrap(),
            peer_addr: peer.peer_addr().unwrap(),
            peer: Some(peer),
            owner: owner.clone(),
            _slot: limits.slot().unwrap(),
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    fn relay() -> TcpRelay {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let local = std.local_addr().unwrap();
        TcpRelay::new(TcpListener::from_std(std).unwrap(), local)
    }

    #[tokio::test(start_paused = true)]
    async fn unbound_connections_expire_and_the_owner_hears_of_it() {
        let registry = Arc::new(ConnectionRegistry::default());
        let mut relay = relay();
        let (_far, near) = pair().await;
        assert!(registry.insert(pending(5, &relay.owner(), near)));
        let (_far2, near2) = pair().await;
        assert!(
            !registry.insert(pending(5, &relay.owner(), near2)),
            "an id is filed once"
        );
        // The refused duplicate reports itself closed.
        assert!(matches!(relay.next_event().await, RelayEvent::Closed(5)));
        assert_eq!(registry.len(), 1);
        tokio::time::sleep(CONNECTION_BIND_TIMEOUT + Duration::from_secs(1)).await;
        assert_eq!(registry.len(), 0);
        assert!(matches!(relay.next_event().await, RelayEvent::Closed(5)));
    }

    #[tokio::test]
    async fn dropping_the_relay_ends_pending_and_claims_see_the_user() {
        let registry = Arc::new(ConnectionRegistry::default());
        let relay = relay();
        let (_far, near) = pair().await;
        assert!(registry.insert(pending(9, &relay.owner(), near)));
        assert_eq!(
            registry.pending(9).map(|(user, _)| user),
            Some("alice".into())
        );
        assert!(registry.pending(10).is_none());
        drop(relay);
        for _ in 0..100 {
            if registry.len() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(registry.len(), 0);
        assert!(registry.claim(9).is_none());
    }
}
