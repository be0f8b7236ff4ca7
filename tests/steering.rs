//! UDP worker steering (`udp-worker-budget`, an SK_REUSEPORT eBPF program): new clients go to
//! the first worker under the budget, and a client with an allocation never leaves the worker
//! that holds it, however the choice for new clients changes. Independent clients (webrtc-rs
//! `turn`) allocate while the steering's choice moves from worker 0 to worker 1 and back, then all
//! of them relay. Needs root (CAP_BPF) and the clang-built program: under CI=true a missing one
//! fails the test.

mod common;

use common::{unix_now, EchoPeer, Tern, SECRET};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

/// The budget of the test server: a few hundred datagrams per second is "busy".
const BUDGET: u64 = 200;

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ci = std::env::var("CI").as_deref() == Ok("true");
    for (found, what) in [
        (root, "root (CAP_BPF)"),
        (
            tern_steer::built(),
            "the steering program (clang, libbpf-dev)",
        ),
    ] {
        if !found {
            assert!(!ci, "{what} is missing under CI=true");
            eprintln!("SKIPPED: {what} is missing");
            return false;
        }
    }
    true
}

/// A webrtc-rs TURN client on its own socket; returns it and that socket's address.
async fn client(server: SocketAddr, user: &str) -> (Client, SocketAddr) {
    let minted = tern::credentials::mint(SECRET, Some(user), 600, unix_now());
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = conn.local_addr().unwrap();
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: minted.username,
        password: minted.password,
        realm: "tern".to_string(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    (client, local)
}

/// The worker tern pinned `client` to (its JSON log line), waiting for it a few seconds.
fn pinned_worker(tern: &Tern, client: SocketAddr) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for line in tern.logs().lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            // The event's fields sit beside the timestamp and level.
            let fields = &entry;
            if fields["message"] == "client pinned to its worker"
                && fields["client"] == client.to_string()
            {
                return fields["worker"].as_u64().expect("a worker number");
            }
        }
        assert!(
            Instant::now() < deadline,
            "no pin logged for {client}; logs:\n{}",
            tern.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `count` pings to `peer` through `relay` and waits for each echo (other datagrams that
/// reach the relay are skipped).
async fn relays(relay: &impl Conn, peer: SocketAddr, name: &str, count: usize) {
    let mut buf = vec![0u8; 2048];
    for n in 0..count {
        let message = format!("{name} ping {n}");
        relay.send_to(message.as_bytes(), peer).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (len, from) = tokio::time::timeout_at(deadline, relay.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{name}: echo {n} did not come back"))
                .unwrap();
            if from == peer && &buf[..len] == message.as_bytes() {
                break;
            }
        }
    }
}

/// Reads and drops what is queued on `relay` until it has been quiet for a moment (the client
/// queues a bounded number of datagrams and drops the rest, echoes included).
async fn drain(relay: &impl Conn) {
    let mut buf = vec![0u8; 2048];
    while tokio::time::timeout(Duration::from_millis(300), relay.recv_from(&mut buf))
        .await
        .is_ok()
    {}
}

/// A peer that sends ~1 000 datagrams/s to `target` until `stop`.
fn blast(
    target: SocketAddr,
    from: UdpSocket,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for _ in 0..2 {
                let _ = from.send_to(b"load", target);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_keep_relaying_on_their_workers_while_new_ones_follow_the_budget() {
    if !can_run() {
        return;
    }
    let tern = Tern::start(&format!(
        "allow-loopback-peers = true\nrelay-threads = 2\nudp-worker-budget = {BUDGET}\n\
         unauthenticated-rate-limit = 0\nlog-format = \"json\""
    ));
    tern.wait_log("UDP worker steering on", Duration::from_secs(5));
    let echo = EchoPeer::start(Duration::from_secs(60));

    // An idle server: the first client goes to worker 0.
    let (a, a_addr) = client(tern.addr, "steer-a").await;
    let a_relay = a.allocate().await.expect("allocate a");
    assert_eq!(
        pinned_worker(&tern, a_addr),
        0,
        "an idle server's first worker"
    );
    relays(&a_relay, echo.addr, "a-first", 3).await;

    // A peer of a's loads worker 0 past the budget (through a's relay), so new clients go to
    // worker 1.
    let loader = UdpSocket::bind("127.0.0.1:0").unwrap();
    a_relay
        .send_to(b"permission", loader.local_addr().unwrap())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let blaster = blast(a_relay.local_addr().unwrap(), loader, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (b, b_addr) = client(tern.addr, "steer-b").await;
    let b_relay = b.allocate().await.expect("allocate b");
    assert_eq!(
        pinned_worker(&tern, b_addr),
        1,
        "worker 0 is over the budget"
    );
    stop.store(true, Ordering::Relaxed);
    blaster.join().unwrap();

    // The load is gone: new clients go to worker 0 again, while b stays on worker 1.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (c, c_addr) = client(tern.addr, "steer-c").await;
    let c_relay = c.allocate().await.expect("allocate c");
    assert_eq!(
        pinned_worker(&tern, c_addr),
        0,
        "worker 0 is under the budget again"
    );

    // Every client still reaches the worker holding its allocation: all relay both ways.
    drain(&a_relay).await;
    relays(&a_relay, echo.addr, "a", 10).await;
    relays(&b_relay, echo.addr, "b", 10).await;
    relays(&c_relay, echo.addr, "c", 10).await;
    for (relay, client) in [(a_relay, a), (b_relay, b), (c_relay, c)] {
        relay.close().await.unwrap();
        client.close().await.unwrap();
    }
}
