//! Shared test support: runs the real `tern` binary on loopback.
#![allow(dead_code)]

pub mod certs;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const SECRET: &str = "integration-test-secret";

/// A running tern process; killed on drop.
pub struct Tern {
    child: Child,
    pub port: u16,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    _config: TempFile,
}

/// A file removed on drop.
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl TempFile {
    pub fn new(name: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("tern-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

/// A free UDP port on 127.0.0.1 (and, for good measure, TCP on the same number).
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A relay port range of its own for each test in this process, so parallel tests never
/// compete for ports (ranges start high and step by 200 per call).
pub fn relay_range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 40000 + (std::process::id() % 40) as u16 * 500 + slot * 100;
    (base, base + 99)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Tern {
    /// Starts tern on 127.0.0.1 with `extra` TOML lines added to a base config (secret, port,
    /// relay range), and waits until it answers a STUN Binding.
    pub fn start(extra: &str) -> Tern {
        let port = free_port();
        let (min, max) = relay_range();
        let toml = format!(
            "listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\n\
             static-auth-secret = \"{SECRET}\"\nrelay-threads = 2\nlog-level = \"debug\"\n{extra}\n"
        );
        Self::start_with_config(port, &toml)
    }

    pub fn start_with_config(port: u16, toml: &str) -> Tern {
        let config = TempFile::new(&format!("{port}.toml"), toml);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("--config")
            .arg(&config.0)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tern");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let tern = Tern {
            child,
            port,
            addr,
            logs,
            _config: config,
        };
        tern.wait_ready();
        tern
    }

    fn wait_ready(&self) {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let request = binding_request();
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            probe.send_to(&request, self.addr).unwrap();
            if probe.recv_from(&mut buf).is_ok() {
                return;
            }
        }
        panic!(
            "tern did not answer a Binding within 10 s; logs:\n{}",
            self.logs.lock().unwrap().join("\n")
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> PathBuf {
        self._config.0.clone()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal STUN Binding request, built by hand (20-byte header, no attributes).
pub fn binding_request() -> Vec<u8> {
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    request.extend((0..12).map(|i| i as u8 * 7 + 1));
    request
}

/// Datagrams a peer received, with their senders.
pub type Received = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// A UDP echo peer on 127.0.0.1 that answers every datagram to its sender, for `lifetime`.
pub struct EchoPeer {
    pub addr: SocketAddr,
    pub received: Received,
}

impl EchoPeer {
    pub fn start(lifetime: Duration) -> EchoPeer {
        Self::start_on("127.0.0.1:0", lifetime, true)
    }

    /// A peer that only records what reaches it.
    pub fn listen_only(bind: &str, lifetime: Duration) -> EchoPeer {
        Self::start_on(bind, lifetime, false)
    }

    fn start_on(bind: &str, lifetime: Duration, echo: bool) -> EchoPeer {
        let socket = UdpSocket::bind(bind).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let received: Received = Default::default();
        let log = received.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + lifetime;
            let mut buf = [0u8; 65536];
            while Instant::now() < deadline {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    log.lock().unwrap().push((from, buf[..n].to_vec()));
                    if echo {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
            }
        });
        EchoPeer { addr, received }
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}
