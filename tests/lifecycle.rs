//! The process lifecycle as an operator and a service manager meet it: SIGTERM with and without
//! `drain-timeout`, a second signal, systemd's notify messages, JSON logs, the open-file limit.

mod common;

use common::stream_client::UdpTurn;
use common::{free_port, http, relay_range, unix_now, EchoPeer, Tern, SECRET};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// A UDP TURN client of `tern` with a fresh credential for `user`.
fn client(tern: &Tern, user: &str) -> UdpTurn {
    let minted = tern::credentials::mint(SECRET, Some(user), 600, unix_now());
    UdpTurn::udp("127.0.0.1:0", tern.addr, &minted.username, &minted.password)
}

/// An allocation relaying to an echo peer: the client and the peer.
fn relaying(tern: &Tern, user: &str) -> (UdpTurn, EchoPeer) {
    let peer = EchoPeer::start(Duration::from_secs(120));
    let mut turn = client(tern, user);
    turn.allocate().expect("allocate");
    turn.create_permission(peer.addr).expect("permission");
    assert_relays(&mut turn, peer.addr, "before the stop");
    (turn, peer)
}

/// One datagram to the peer and its echo back, through the allocation.
fn assert_relays(turn: &mut UdpTurn, peer: SocketAddr, when: &str) {
    let message = format!("ping {when} {}", unix_now());
    turn.send(peer, message.as_bytes()).unwrap();
    let (from, data) = turn
        .receive_data()
        .unwrap_or_else(|e| panic!("no echo {when}: {e}"));
    assert_eq!((from, data), (peer, message.into_bytes()), "{when}");
}

fn readyz(tern: &Tern) -> u16 {
    http("GET", &tern.url("/readyz"), None, None).status
}

fn wait_unready(tern: &Tern) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(tern) != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz stays 200 while draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_without_drain_timeout_exits_0_at_once() {
    let mut tern = Tern::start("allow-loopback-peers = true");
    // A live allocation does not hold the stop up.
    let (_turn, _peer) = relaying(&tern, "live");
    tern.signal("TERM");
    let status = tern
        .wait_exit(Duration::from_secs(10))
        .expect("tern still runs 10 s after SIGTERM with drain-timeout 0");
    assert!(status.success(), "{status:?}\n{}", tern.logs());
    assert!(!tern.logs().contains("draining"), "{}", tern.logs());
}

/// SIGTERM with drain-timeout and alternate-server: /readyz 503, a new Allocate gets 300 to the
/// alternate, the live allocation relays and refreshes; tern exits 0 once it is deleted.
#[test]
fn sigterm_drains_until_the_last_allocation_ends() {
    let alternate: SocketAddr = "127.0.0.1:3999".parse().unwrap();
    let mut tern = Tern::start(&format!(
        "allow-loopback-peers = true\ndrain-timeout = 120\nalternate-server = \"{alternate}\""
    ));
    let (mut turn, peer) = relaying(&tern, "live");
    assert_eq!(readyz(&tern), 200);
    tern.signal("TERM");
    wait_unready(&tern);
    tern.wait_log("draining", Duration::from_secs(5));

    let mut late = client(&tern, "late");
    assert_eq!(late.allocate_or_redirect(), Err((300, Some(alternate))));
    assert_relays(&mut turn, peer.addr, "while draining");
    turn.refresh(600).expect("refresh while draining");
    assert_relays(&mut turn, peer.addr, "after the refresh");
    std::thread::sleep(Duration::from_secs(1));
    assert!(tern.running(), "stopped with an allocation live");

    // The last allocation ends: tern stops.
    turn.refresh(0).expect("delete");
    let status = tern
        .wait_exit(Duration::from_secs(15))
        .expect("tern still runs after its last allocation ended");
    assert!(status.success(), "{status:?}\n{}", tern.logs());
    assert!(tern.logs().contains("drained"), "{}", tern.logs());
}

/// Without alternate-server a new Allocate gets 486; at drain-timeout tern exits 0 even though
/// an allocation is still live.
#[test]
fn drain_ends_at_the_timeout() {
    let mut tern = Tern::start("allow-loopback-peers = true\ndrain-timeout = 3");
    let (mut turn, peer) = relaying(&tern, "live");
    tern.signal("TERM");
    wait_unready(&tern);
    assert_eq!(
        client(&tern, "late").allocate_or_redirect(),
        Err((486, None))
    );
    assert_relays(&mut turn, peer.addr, "while draining");
    assert!(tern.running(), "stopped before drain-timeout");
    let status = tern
        .wait_exit(Duration::from_secs(30))
        .expect("tern still runs well after drain-timeout");
    assert!(status.success(), "{status:?}\n{}", tern.logs());
    assert!(
        tern.logs().contains("drain-timeout passed"),
        "{}",
        tern.logs()
    );
}

/// While draining, a second SIGTERM or SIGINT stops at once.
#[test]
fn a_second_signal_stops_at_once() {
    for (first, second) in [("TERM", "TERM"), ("INT", "TERM"), ("TERM", "INT")] {
        let mut tern = Tern::start("allow-loopback-peers = true\ndrain-timeout = 600");
        let (_turn, _peer) = relaying(&tern, "live");
        tern.signal(first);
        tern.wait_log("draining", Duration::from_secs(10));
        assert!(tern.running());
        tern.signal(second);
        let status = tern
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("SIG{first} then SIG{second}: still draining"));
        assert!(status.success(), "{status:?}\n{}", tern.logs());
        assert!(
            tern.logs().contains("second stop signal"),
            "{}",
            tern.logs()
        );
    }
}

/// What systemd sees on NOTIFY_SOCKET: READY=1 once serving, watchdog pings (WATCHDOG_USEC),
/// RELOADING=1 with MONOTONIC_USEC then READY=1 around SIGHUP, STOPPING=1 on SIGTERM.
#[test]
fn sd_notify_messages_in_order() {
    let path = std::env::temp_dir().join(format!("tern-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    let _socket_file = common::TempFile(path.clone());
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut command = Tern::command();
    command
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "1000000");
    let port = free_port();
    let (min, max) = relay_range();
    let mut tern = Tern::start_command(
        command,
        port,
        &format!(
            "listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\n\
             static-auth-secret = \"{SECRET}\"\nrelay-threads = 2\n"
        ),
    );
    let mut messages: Vec<String> = Vec::new();
    let receive_until = |messages: &mut Vec<String>, done: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 4096];
        while !done(messages) {
            assert!(Instant::now() < deadline, "so far: {messages:?}");
            if let Ok(n) = socket.recv(&mut buf) {
                messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    let count = |messages: &[String], state: &str| {
        messages
            .iter()
            .filter(|m| m.lines().any(|l| l == state))
            .count()
    };
    // Pinged every half second while the workers run.
    receive_until(&mut messages, &|m| count(m, "WATCHDOG=1") >= 3);
    tern.signal("HUP");
    receive_until(&mut messages, &|m| count(m, "READY=1") >= 2);
    tern.signal("TERM");
    receive_until(&mut messages, &|m| count(m, "STOPPING=1") >= 1);
    let status = tern.wait_exit(Duration::from_secs(10)).expect("stops");
    assert!(status.success());

    let states: Vec<&str> = messages
        .iter()
        .filter(|m| *m != "WATCHDOG=1\n")
        .map(|m| m.lines().next().unwrap())
        .collect();
    assert_eq!(
        states,
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{messages:?}"
    );
    let reloading = messages
        .iter()
        .find(|m| m.starts_with("RELOADING=1"))
        .unwrap();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("RELOADING=1 carries MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(usec > 0);
    // The first message is READY=1: nothing was announced before the listeners were bound.
    assert!(messages[0].starts_with("READY=1"), "{messages:?}");
}

/// Without NOTIFY_SOCKET the notify calls are no-ops: tern runs and stops as usual (the other
/// tests here run that way too); with a socket nobody listens on, it still serves.
#[test]
fn a_dead_notify_socket_does_not_stop_tern() {
    let path = std::env::temp_dir().join(format!("tern-no-notify-{}.sock", std::process::id()));
    let mut command = Tern::command();
    command.env("NOTIFY_SOCKET", &path);
    let port = free_port();
    let (min, max) = relay_range();
    let mut tern = Tern::start_command(
        command,
        port,
        &format!(
            "listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\n\
             static-auth-secret = \"{SECRET}\"\n"
        ),
    );
    tern.wait_log("cannot notify the service manager", Duration::from_secs(5));
    tern.signal("TERM");
    assert!(tern.wait_exit(Duration::from_secs(10)).unwrap().success());
}

/// log-format = "json": every line on standard error and in log-file is a JSON object with
/// level and message, including refusals, and none carries the secret.
#[test]
fn json_logs_are_one_object_per_line_without_secrets() {
    let log = common::TempFile::new("json.log", "");
    let mut tern = Tern::start(&format!(
        "log-format = \"json\"\nlog-file = \"{}\"",
        log.0.display()
    ));
    // Some events: an authentication failure, a peer refused by policy, an allocation.
    let wrong = tern::credentials::mint("not-the-secret", Some("mallory"), 600, unix_now());
    let mut mallory = UdpTurn::udp("127.0.0.1:0", tern.addr, &wrong.username, &wrong.password);
    assert_eq!(mallory.allocate(), Err(401));
    let mut turn = client(&tern, "alice");
    turn.allocate().unwrap();
    assert_eq!(
        turn.create_permission("127.0.0.1:9".parse().unwrap()),
        Err(403)
    );
    tern.wait_log("peer denied by policy", Duration::from_secs(5));
    tern.signal("TERM");
    assert!(tern.wait_exit(Duration::from_secs(10)).unwrap().success());

    let file = std::fs::read_to_string(&log.0).unwrap();
    let stderr = tern.logs();
    for (source, text) in [("standard error", &stderr), ("log-file", &file)] {
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 5, "{source}: {text}");
        for line in &lines {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{source}: not JSON ({e}): {line}"));
            let object = value.as_object().unwrap_or_else(|| panic!("{line}"));
            assert!(object["level"].is_string(), "{source}: {line}");
            assert!(object["message"].is_string(), "{source}: {line}");
            assert!(!line.contains(SECRET), "{source}: a secret in {line}");
        }
        for message in [
            "tern started",
            "authentication failed",
            "peer denied by policy",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(message)),
                "{source}: no {message:?}: {text}"
            );
        }
    }
}

/// tern raises its soft open-file limit to the hard one, and says when that is short of what
/// the port range and max-connections can use.
#[test]
fn open_file_limit_is_raised_to_the_hard_limit() {
    let mut command = Command::new("prlimit");
    command.args(["--nofile=256:4096", "--", env!("CARGO_BIN_EXE_tern")]);
    let port = free_port();
    let (min, max) = relay_range();
    let tern = Tern::start_command(
        command,
        port,
        &format!(
            "listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\n\
             static-auth-secret = \"{SECRET}\"\nmax-connections = 10000\n"
        ),
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", tern.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
    let logs = tern.logs();
    assert!(logs.contains("raised the open-file limit"), "{logs}");
    // 10000 connections and 100 ports need more than 4096 descriptors: named, with the keys.
    let warning = logs
        .lines()
        .find(|l| l.contains("open-file limit is below"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(
        warning.contains("max-connections") && warning.contains("min-port..max-port"),
        "{warning}"
    );
}
