//! TURN over UDP through real sockets, driven by an independent client (webrtc-rs `turn`).

mod common;

use common::webrtc::{turn_client as client_with, turn_client_for as client_for};
use common::{unix_now, EchoPeer, Tern, SECRET};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webrtc_util::Conn;

/// Forwards datagrams between one client and tern, counting which framing each carries, so a
/// test can prove the channel path was really used.
struct Tap {
    addr: SocketAddr,
    send_indications: Arc<AtomicUsize>,
    channel_data_up: Arc<AtomicUsize>,
    data_indications: Arc<AtomicUsize>,
    channel_data_down: Arc<AtomicUsize>,
    refreshes: Arc<AtomicUsize>,
}

fn stun_type(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 20 && frame[0] < 0x40).then(|| u16::from_be_bytes([frame[0], frame[1]]))
}

impl Tap {
    fn start(server: SocketAddr, lifetime: Duration) -> Tap {
        let client_side = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server_side = UdpSocket::bind("127.0.0.1:0").unwrap();
        client_side
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        server_side
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let tap = Tap {
            addr: client_side.local_addr().unwrap(),
            send_indications: Default::default(),
            channel_data_up: Default::default(),
            data_indications: Default::default(),
            channel_data_down: Default::default(),
            refreshes: Default::default(),
        };
        let client_addr = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let (up_send, up_chan, refreshes) = (
            tap.send_indications.clone(),
            tap.channel_data_up.clone(),
            tap.refreshes.clone(),
        );
        let (up_in, up_out, seen) = (
            client_side.try_clone().unwrap(),
            server_side.try_clone().unwrap(),
            client_addr.clone(),
        );
        let deadline = Instant::now() + lifetime;
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while Instant::now() < deadline {
                if let Ok((n, from)) = up_in.recv_from(&mut buf) {
                    *seen.lock().unwrap() = Some(from);
                    match (buf[0], stun_type(&buf[..n])) {
                        (0x40..=0x7F, _) => up_chan.fetch_add(1, Relaxed),
                        (_, Some(0x0016)) => up_send.fetch_add(1, Relaxed),
                        (_, Some(0x0004)) => refreshes.fetch_add(1, Relaxed),
                        _ => 0,
                    };
                    let _ = up_out.send_to(&buf[..n], server);
                }
            }
        });
        let (down_data, down_chan) = (tap.data_indications.clone(), tap.channel_data_down.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while Instant::now() < deadline {
                if let Ok((n, _)) = server_side.recv_from(&mut buf) {
                    match (buf[0], stun_type(&buf[..n])) {
                        (0x40..=0x7F, _) => down_chan.fetch_add(1, Relaxed),
                        (_, Some(0x0017)) => down_data.fetch_add(1, Relaxed),
                        _ => 0,
                    };
                    if let Some(client) = *client_addr.lock().unwrap() {
                        let _ = client_side.send_to(&buf[..n], client);
                    }
                }
            }
        });
        tap
    }
}

/// Sends `count` pings through the relay to the echo peer and checks each comes back.
async fn ping(relay: &impl Conn, peer: SocketAddr, count: usize, gap: Duration) {
    let mut buf = vec![0u8; 2048];
    for i in 0..count {
        let message = format!("ping {i} {}", "x".repeat(i * 37 % 300));
        relay
            .send_to(message.as_bytes(), peer)
            .await
            .expect("send through relay");
        let (n, from) = tokio::time::timeout(Duration::from_secs(3), relay.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("echo {i} did not come back"))
            .expect("recv");
        assert_eq!(from, peer);
        assert_eq!(&buf[..n], message.as_bytes());
        tokio::time::sleep(gap).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_through_send_indications_and_a_channel() {
    let tern = Tern::start("allow-loopback-peers = true");
    let echo = EchoPeer::start(Duration::from_secs(30));
    let tap = Tap::start(tern.addr, Duration::from_secs(30));
    let client = client_for(tap.addr, "alice").await;
    let relay = client.allocate().await.expect("allocate");
    let relay_addr = relay.local_addr().unwrap();
    assert_eq!(relay_addr.ip().to_string(), "127.0.0.1");

    ping(&relay, echo.addr, 20, Duration::from_millis(30)).await;

    let from_relay = echo
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|(from, _)| *from == relay_addr)
        .count();
    assert_eq!(
        from_relay, 20,
        "the peer saw every ping from the relayed address"
    );
    assert!(
        tap.send_indications.load(Relaxed) >= 1,
        "first packet goes as a Send indication"
    );
    assert!(
        tap.channel_data_up.load(Relaxed) >= 1,
        "later packets use the channel"
    );
    assert!(
        tap.channel_data_down.load(Relaxed) >= 1,
        "replies come back as ChannelData"
    );
    assert_eq!(
        tap.channel_data_down.load(Relaxed) + tap.data_indications.load(Relaxed),
        20
    );
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_reports_the_mapped_address() {
    let tern = Tern::start("");
    let client = client_for(tern.addr, "bob").await;
    let mapped = client.send_binding_request().await.expect("binding");
    assert_eq!(mapped.ip().to_string(), "127.0.0.1");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_keeps_a_short_lived_allocation_relaying() {
    // A 2-second lifetime: the allocation dies within 2 s unless Refresh works.
    let tern = Tern::start(
        "allow-loopback-peers = true\ndefault-allocate-lifetime = 2\nmax-allocate-lifetime = 2",
    );
    let echo = EchoPeer::start(Duration::from_secs(30));
    let tap = Tap::start(tern.addr, Duration::from_secs(30));
    let client = client_for(tap.addr, "carol").await;
    let relay = client.allocate().await.expect("allocate");
    ping(&relay, echo.addr, 10, Duration::from_millis(500)).await;
    assert!(
        tap.refreshes.load(Relaxed) >= 3,
        "client refreshed every second: {}",
        tap.refreshes.load(Relaxed)
    );
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_allocation_closes_the_relay_port() {
    let tern = Tern::start("allow-loopback-peers = true");
    let echo = EchoPeer::start(Duration::from_secs(30));
    let client = client_for(tern.addr, "dave").await;
    let relay = client.allocate().await.expect("allocate");
    let relay_addr = relay.local_addr().unwrap();
    ping(&relay, echo.addr, 2, Duration::ZERO).await;

    relay.close().await.expect("refresh with lifetime 0");
    // With the relay socket closed, a datagram to it draws ICMP port unreachable.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.connect(relay_addr).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut refused = false;
    while Instant::now() < deadline && !refused {
        let _ = probe.send(b"anyone?");
        refused = matches!(probe.recv(&mut [0u8; 16]), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
    }
    assert!(refused, "relay port {relay_addr} still open after delete");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_peer_gets_403_and_receives_nothing() {
    let tern = Tern::start(""); // secure defaults: loopback peers denied
    let peer = EchoPeer::listen_only("127.0.0.1:0", Duration::from_secs(10));
    let client = client_for(tern.addr, "eve").await;
    let relay = client.allocate().await.expect("allocate");
    let error = relay
        .send_to(b"let me in", peer.addr)
        .await
        .expect_err("CreatePermission must fail");
    assert!(
        error.to_string().contains("403"),
        "expected 403 Forbidden, got: {error}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(peer.count(), 0, "no datagram may reach a denied peer");
    assert!(
        tern.logs().contains("peer denied by policy"),
        "an operator can grep the refusal"
    );
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_cannot_allocate() {
    let tern = Tern::start("");
    let minted = tern::credentials::mint("another-secret", Some("mallory"), 600, unix_now());
    let client = client_with(tern.addr, &minted.username, &minted.password).await;
    assert!(client.allocate().await.is_err());
    let logs = tern.logs();
    assert!(
        logs.contains("authentication failed"),
        "auth failure logged"
    );
    assert!(
        !logs.contains(SECRET) && !logs.contains(&minted.password),
        "no secret in logs"
    );
    client.close().await.unwrap();
}
