//! Scale-out as the README describes it: three tern processes on loopback sharing one secret.
//! A credential minted by one instance allocates on every other, the credential endpoint hands
//! out all instances' URIs, and a SIGTERM on one while its clients relay drains it: they keep
//! relaying until they are done, new Allocates get 300 to the others, nothing relayed is lost.

mod common;

use common::stream_client::UdpTurn;
use common::{free_port, http, mint_from_endpoint, relay_range, EchoPeer, Tern, SECRET};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const API_KEY: &str = "scale-out-api-key-0123456789";
/// Datagrams each relaying client sends (and must get back), one every 10 ms.
const MESSAGES: usize = 300;
const CLIENTS: usize = 3;

struct Cluster {
    instances: Vec<Tern>,
}

/// Three instances: one secret, one API key, `public-uris` naming all three, each one's
/// `alternate-server` the other two, `drain-timeout` long enough for the clients to finish.
fn cluster() -> Cluster {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let uris: Vec<String> = ports
        .iter()
        .map(|port| format!("\"turn:127.0.0.1:{port}?transport=udp\""))
        .collect();
    let instances = ports
        .iter()
        .map(|&port| {
            let (min, max) = relay_range();
            let alternates: Vec<String> = ports
                .iter()
                .filter(|&&other| other != port)
                .map(|other| format!("\"127.0.0.1:{other}\""))
                .collect();
            Tern::start_with_config(
                port,
                &format!(
                    "listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\n\
                     static-auth-secret = \"{SECRET}\"\napi-keys = [\"{API_KEY}\"]\nrelay-threads = 2\n\
                     allow-loopback-peers = true\nno-tcp = true\ndrain-timeout = 120\n\
                     public-uris = [{}]\nalternate-server = [{}]\n",
                    uris.join(", "),
                    alternates.join(", ")
                ),
            )
        })
        .collect();
    Cluster { instances }
}

/// A client of `server` with a credential `minted` (username, password).
fn client(server: SocketAddr, minted: &(String, String)) -> UdpTurn {
    UdpTurn::udp("127.0.0.1:0", server, &minted.0, &minted.1)
}

#[test]
fn a_credential_from_one_instance_allocates_on_every_other() {
    let cluster = cluster();
    let (username, password, uris) = mint_from_endpoint(&cluster.instances[0], API_KEY, "alice");
    // The endpoint hands out every instance's URI.
    for tern in &cluster.instances {
        let uri = format!("turn:127.0.0.1:{}?transport=udp", tern.port);
        assert!(uris.contains(&uri), "{uri} not in {uris:?}");
    }
    let minted = (username, password);
    for tern in &cluster.instances {
        let mut turn = client(tern.addr, &minted);
        turn.allocate()
            .unwrap_or_else(|code| panic!("Allocate on {}: {code}", tern.addr));
        turn.refresh(0).unwrap();
    }
}

#[test]
fn sigterm_on_one_instance_drains_it_while_its_clients_relay() {
    let mut cluster = cluster();
    let others: Vec<SocketAddr> = cluster.instances[1..].iter().map(|t| t.addr).collect();
    let draining = &cluster.instances[0];
    let server = draining.addr;
    let (username, password, _) = mint_from_endpoint(&cluster.instances[1], API_KEY, "relayer");
    let minted = (username, password);

    // Clients on instance 0, each relaying to its own echo peer in lock-step: a datagram, its
    // echo, the next. Any datagram lost shows as a missing echo.
    let sent_some = Arc::new(Barrier::new(CLIENTS + 1));
    let echoed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let minted = minted.clone();
            let sent_some = sent_some.clone();
            let echoed = echoed.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let peer = EchoPeer::start(Duration::from_secs(120));
                let mut turn = client(server, &minted);
                turn.allocate()
                    .map_err(|code| format!("allocate: {code}"))?;
                turn.create_permission(peer.addr)
                    .map_err(|code| format!("permission: {code}"))?;
                for n in 0..MESSAGES {
                    if n == MESSAGES / 4 {
                        sent_some.wait();
                    }
                    if n == MESSAGES / 2 {
                        // Refreshing keeps working while the instance drains.
                        turn.refresh(600)
                            .map_err(|code| format!("refresh: {code}"))?;
                    }
                    let message = format!("client {i} datagram {n}");
                    turn.send(peer.addr, message.as_bytes())
                        .map_err(|e| format!("send {n}: {e}"))?;
                    let (from, data) = turn
                        .receive_data()
                        .map_err(|e| format!("client {i}: datagram {n} lost: {e}"))?;
                    if from != peer.addr || data != message.as_bytes() {
                        return Err(format!("client {i}: datagram {n} came back wrong"));
                    }
                    echoed.fetch_add(1, Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
                turn.refresh(0).map_err(|code| format!("delete: {code}"))?;
                Ok(())
            })
        })
        .collect();

    // A quarter relayed: stop instance 0.
    sent_some.wait();
    cluster.instances[0].signal("TERM");
    let draining = &cluster.instances[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while http("GET", &draining.url("/readyz"), None, None).status != 503 {
        assert!(Instant::now() < deadline, "/readyz still 200");
        std::thread::sleep(Duration::from_millis(20));
    }
    // New Allocates go to the others, and the credential works there.
    let mut newcomer = client(server, &minted);
    let alternate = match newcomer.allocate_or_redirect() {
        Err((300, Some(alternate))) => alternate,
        other => panic!("Allocate on a draining instance: {other:?}"),
    };
    assert!(
        others.contains(&alternate),
        "{alternate} is not another instance"
    );
    let mut redirected = client(alternate, &minted);
    redirected
        .allocate()
        .unwrap_or_else(|code| panic!("Allocate on {alternate}: {code}"));
    redirected.refresh(0).unwrap();
    assert!(
        cluster.instances[0].running(),
        "instance 0 stopped while its clients relay"
    );

    for client in clients {
        client.join().unwrap().unwrap();
    }
    assert_eq!(echoed.load(Relaxed), CLIENTS * MESSAGES, "nothing lost");
    // Their allocations ended: the drain is over and instance 0 exits 0.
    let status = cluster.instances[0]
        .wait_exit(Duration::from_secs(15))
        .expect("instance 0 still runs after its last allocation ended");
    assert!(status.success(), "{status:?}");
    let logs = cluster.instances[0].logs();
    assert!(logs.contains("drained"), "{logs}");
    // The others serve on.
    assert!(cluster.instances[1].running() && cluster.instances[2].running());
}
