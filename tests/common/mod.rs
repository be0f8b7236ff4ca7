//! Shared test support: runs the real `tern` binary on loopback.
#![allow(dead_code)]

pub mod certs;
pub mod netns;
pub mod stream_client;
pub mod tools;
pub mod webrtc;

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
    /// The HTTP endpoint (`http-listen`), unless the config switched it off.
    pub http: Option<SocketAddr>,
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

/// The configuration every test tern starts from: `listening` (a TOML value), `port`, a relay
/// range of its own, the test secret, two relay threads, debug logs, then `extra`.
fn base_config(listening: &str, port: u16, extra: &str) -> String {
    let (min, max) = relay_range();
    format!(
        "listening-ip = {listening}\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\n\
         static-auth-secret = \"{SECRET}\"\nrelay-threads = 2\nlog-level = \"debug\"\n{extra}\n"
    )
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

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        Self::start_listening("\"127.0.0.1\"", extra)
    }

    /// Like [`Tern::start`], with `listening-ip` set to `listening` (a TOML value that must
    /// include 127.0.0.1, where readiness is probed), e.g. `["127.0.0.1", "::1"]`.
    pub fn start_listening(listening: &str, extra: &str) -> Tern {
        let port = free_port();
        Self::start_with_config(port, &base_config(listening, port, extra))
    }

    /// Like [`Tern::start`], in a process whose open-file limit (soft and hard) is `fd_limit`.
    pub fn start_with_fd_limit(fd_limit: u32, extra: &str) -> Tern {
        let port = free_port();
        let toml = base_config("\"127.0.0.1\"", port, extra);
        Self::spawn(port, &toml, Some(fd_limit))
    }

    pub fn start_with_config(port: u16, toml: &str) -> Tern {
        Self::spawn(port, toml, None)
    }

    fn spawn(port: u16, toml: &str, fd_limit: Option<u32>) -> Tern {
        // Each tern gets an HTTP port of its own unless the config names one (or none).
        let mut toml = toml.to_string();
        let mut http = None;
        if !toml.contains("no-http") && !toml.contains("http-listen") {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
            toml.push_str(&format!("\nhttp-listen = \"{addr}\"\n"));
            http = Some(addr);
        } else if toml.contains("no-http = true") {
            http = None;
        } else if let Some(line) = toml.lines().find(|l| l.starts_with("http-listen")) {
            http = line.split('"').nth(1).and_then(|addr| addr.parse().ok());
        }
        let config = TempFile::new(&format!("{port}.toml"), &toml);
        let tern = env!("CARGO_BIN_EXE_tern");
        let mut command = match fd_limit {
            // The shell sets the limit, then becomes tern.
            Some(limit) => {
                let mut shell = Command::new("sh");
                let script = format!("ulimit -n {limit} && exec \"$0\" \"$@\"");
                shell.args(["-c", &script, tern]);
                shell
            }
            None => Command::new(tern),
        };
        let mut child = command
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
            http,
            _config: config,
        };
        tern.wait_ready();
        tern.wait_http();
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

    /// Waits until the HTTP endpoint accepts connections (it is bound before the relay starts,
    /// so this is quick).
    fn wait_http(&self) {
        let Some(addr) = self.http else { return };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "tern's HTTP endpoint did not come up; logs:\n{}",
            self.logs()
        );
    }

    /// `http://<http-listen><path>`.
    pub fn url(&self, path: &str) -> String {
        let addr = self.http.expect("tern runs without HTTP");
        format!("http://{addr}{path}")
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

/// An HTTP answer: status, body and content type.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One blocking HTTP request (ureq); `bearer` goes in `Authorization: Bearer`. Error statuses
/// are answers, not errors.
pub fn http(method: &str, url: &str, bearer: Option<&str>, body: Option<&str>) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let auth = bearer.map(|key| format!("Bearer {key}"));
    let response = match method {
        "GET" | "DELETE" => {
            let mut request = if method == "GET" {
                agent.get(url)
            } else {
                agent.delete(url)
            };
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        }
        "POST" => {
            let mut request = agent.post(url);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            request.send(body.unwrap_or(""))
        }
        other => panic!("unsupported method {other}"),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.into_body().read_to_string().unwrap();
    Reply {
        status,
        body,
        content_type,
    }
}

/// Sends SIGHUP to tern (reload).
pub fn hangup(tern: &Tern) {
    let status = Command::new("kill")
        .args(["-HUP", &tern.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A REST credential for `user` from tern's credential endpoint, as an app backend gets it:
/// username, password and the URIs it hands out.
pub fn mint_from_endpoint(tern: &Tern, api_key: &str, user: &str) -> (String, String, Vec<String>) {
    let body = format!("{{\"user\":\"{user}\",\"ttl\":600}}");
    let reply = http(
        "POST",
        &tern.url("/api/v1/credentials"),
        Some(api_key),
        Some(&body),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let minted = reply.json();
    let text = |field: &str| minted[field].as_str().unwrap().to_string();
    let uris = minted["uris"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    (text("username"), text("password"), uris)
}
