//! Several UDP workers (SO_REUSEPORT): every client's packets must reach the worker that owns
//! its allocation. 16 independent clients (webrtc-rs `turn`) from distinct source ports allocate
//! and relay at once through tern with 2 workers; a client whose datagrams landed on the wrong
//! worker would get 437 Allocation Mismatch or lose its relayed packets.

mod common;

use common::webrtc::turn_client_for as client;
use common::{EchoPeer, Tern};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use webrtc_util::Conn;

const CLIENTS: usize = 16;
const PINGS: usize = 25;

/// Allocates, then sends `PINGS` datagrams through the relay (the first as a Send indication,
/// the rest on a channel) and checks every echo comes back; returns the relayed address.
async fn allocate_and_relay(server: SocketAddr, peer: SocketAddr, i: usize) -> SocketAddr {
    let client = client(server, &format!("worker-test-{i}")).await;
    let relay = client.allocate().await.expect("allocate");
    let relayed = relay.local_addr().unwrap();
    let mut buf = vec![0u8; 2048];
    for n in 0..PINGS {
        let message = format!("client {i} ping {n}");
        relay.send_to(message.as_bytes(), peer).await.unwrap();
        let (len, from) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("client {i}: echo {n} did not come back"))
            .unwrap();
        assert_eq!(from, peer);
        assert_eq!(&buf[..len], message.as_bytes(), "client {i}");
    }
    relay.close().await.unwrap();
    client.close().await.unwrap();
    relayed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_each_reach_the_worker_that_owns_their_allocation() {
    // The common configuration runs `relay-threads = 2`.
    let tern = Tern::start("allow-loopback-peers = true");
    let echo = EchoPeer::start(Duration::from_secs(60));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(allocate_and_relay(tern.addr, echo.addr, i)))
        .collect();
    let mut relays = HashSet::new();
    for task in tasks {
        relays.insert(task.await.expect("client task"));
    }
    assert_eq!(relays.len(), CLIENTS, "every allocation got its own relay");
    let seen: HashSet<SocketAddr> = echo
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(from, _)| *from)
        .collect();
    assert_eq!(seen, relays, "the peer heard from every relay");
    assert_eq!(echo.count(), CLIENTS * PINGS);
    assert!(
        without_ansi(&tern.logs()).contains("workers=2"),
        "tern ran 2 workers:\n{}",
        tern.logs()
    );
}

/// Log text without terminal colour escapes (`ESC [ ... m`).
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
