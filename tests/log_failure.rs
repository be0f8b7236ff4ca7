//! A log that cannot be written (a full disk) costs log lines, never service. Found by the soak
//! (scripts/soak.sh): when the disk filled, a failed write to `log-file` made the logging layer
//! report it on standard error, which failed too and panicked, killing a relay worker (its UDP
//! socket closed, clients got "connection refused") and poisoning the log for every other thread.

mod common;

use common::{binding_request, free_port, TempFile};
use std::fs::OpenOptions;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tern::stun::{attr, Class, MessageWriter, Method};

/// Writes to /dev/full fail with ENOSPC, as on a full disk.
const FULL: &str = "/dev/full";

#[test]
fn tern_keeps_serving_when_every_log_write_fails() {
    let port = free_port();
    let config = TempFile::new(
        "log-failure.toml",
        &format!(
            "listening-ip = [\"127.0.0.1\"]\nlistening-port = {port}\nno-http = true\n\
             no-tcp = true\nrelay-threads = 2\nstatic-auth-secret = \"s\"\n\
             log-level = \"debug\"\nlog-file = \"{FULL}\"\n"
        ),
    );
    let full = || OpenOptions::new().write(true).open(FULL).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["--config", config.0.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::from(full()))
        .stderr(Stdio::from(full()))
        .spawn()
        .unwrap();
    let server = format!("127.0.0.1:{port}");
    // Many source ports, so both relay threads log (debug lines per request) and answer.
    let answered = |rounds: usize| {
        (0..rounds)
            .filter(|_| {
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                socket.send_to(&binding_request(), &server).unwrap();
                socket.recv(&mut [0u8; 512]).is_ok()
            })
            .count()
    };
    let start = Instant::now();
    while answered(1) == 0 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("tern exited ({status}) when its log could not be written");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "tern never answered"
        );
    }
    // Requests that log at info (authentication failures) from many 5-tuples.
    for n in 0..64u8 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, &[n; 12]);
        w.add_bytes(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        w.add_bytes(attr::USERNAME, b"1:nobody");
        w.add_bytes(attr::REALM, b"tern");
        w.add_bytes(attr::NONCE, b"AAAAAAAAAAAAAAAA");
        w.add_message_integrity(&[0; 16]);
        socket.send_to(w.finish().unwrap(), &server).unwrap();
    }
    assert_eq!(
        answered(32),
        32,
        "every Binding answered, from every relay thread"
    );
    assert!(child.try_wait().unwrap().is_none(), "tern still runs");
    child.kill().unwrap();
    child.wait().unwrap();
}
