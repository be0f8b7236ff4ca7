//! Shared test support: runs the real `tern` binary on loopback.
#![allow(dead_code)]

pub mod certs;
pub mod chromium;
pub mod fast_path_net;
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

/// A port below the kernel's ephemeral range (32768 and up), picked per process and call, that
/// is free right now for `bind`: a port from `bind(:0)` is an ephemeral one, which another test's
/// outgoing connection can take between this check and tern's own bind.
fn unused_port(bind: impl Fn(u16) -> bool) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 12_000) as u16;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000);
        if bind(port) {
            return port;
        }
    }
}

/// A free UDP port on 127.0.0.1 (and TCP on the same number, for listeners on both).
pub fn free_port() -> u16 {
    unused_port(|port| {
        UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    })
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    unused_port(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
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
    /// include 127.0.0.1, where readiness is probed), e.g. `["127.0.0.1", "::1"]`. A key of the
    /// base config that `extra` sets too (`relay-threads`, `log-level`…) takes `extra`'s value.
    pub fn start_listening(listening: &str, extra: &str) -> Tern {
        let port = free_port();
        let (min, max) = relay_range();
        let base = format!(
            "listening-ip = {listening}\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\n\
             static-auth-secret = \"{SECRET}\"\nrelay-threads = 2\nlog-level = \"debug\"\n"
        );
        let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
        let overridden: Vec<String> = extra.lines().map(key).collect();
        let base: String = base
            .lines()
            .filter(|line| !overridden.contains(&key(line)))
            .map(|line| format!("{line}\n"))
            .collect();
        Self::start_with_config(port, &format!("{base}{extra}\n"))
    }

    /// Like [`Tern::start`], in a process whose open-file limit (soft and hard) is `fd_limit`.
    pub fn start_with_fd_limit(fd_limit: u32, extra: &str) -> Tern {
        let port = free_port();
        let (min, max) = relay_range();
        let toml = format!(
            "listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\n\
             static-auth-secret = \"{SECRET}\"\nrelay-threads = 2\nlog-level = \"debug\"\n{extra}\n"
        );
        // The shell sets the limit, then becomes tern.
        let mut shell = Command::new("sh");
        let script = format!("ulimit -n {fd_limit} && exec \"$0\" \"$@\"");
        shell.args(["-c", &script, env!("CARGO_BIN_EXE_tern")]);
        Self::start_command(shell, port, &toml)
    }

    pub fn start_with_config(port: u16, toml: &str) -> Tern {
        Self::start_command(Self::command(), port, toml)
    }

    /// The tern binary as a command, to add environment variables to or to run through a
    /// launcher.
    pub fn command() -> Command {
        Command::new(env!("CARGO_BIN_EXE_tern"))
    }

    /// [`Tern::start_with_config`] with `command` (e.g. [`Tern::command`] with environment
    /// variables, or a launcher such as `prlimit … tern`).
    pub fn start_command(command: Command, port: u16, toml: &str) -> Tern {
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
        let tern = Self::launch(command, port, &toml, http);
        tern.wait_ready();
        tern.wait_http();
        tern
    }

    /// Spawns `command` (tern, or a launcher that runs it: `prlimit … tern`, `ip netns exec …
    /// tern`) with `--config` and the config `toml`; does not wait for it to serve. `http` is
    /// where its HTTP endpoint listens, if anywhere.
    pub fn launch(mut command: Command, port: u16, toml: &str, http: Option<SocketAddr>) -> Tern {
        let config = TempFile::new(&format!("{port}.toml"), toml);
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
        Tern {
            child,
            port,
            addr,
            logs,
            http,
            _config: config,
        }
    }

    /// Waits until tern answers a Binding on 127.0.0.1 (panics after 10 s).
    pub fn wait_ready(&self) {
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
    pub fn wait_http(&self) {
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

    /// Sends `signal` (`TERM`, `INT`, `HUP`, …) to tern.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Tern's exit status if it exits within `limit`; `None` if it is still running then.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether tern is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `limit` for a log line containing `text`; the logs so far.
    pub fn wait_log(&self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let logs = self.logs();
            if logs.contains(text) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {text:?} within {limit:?}; logs:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
        Self::on_socket(UdpSocket::bind(bind).unwrap(), lifetime, echo)
    }

    /// A peer on `socket` (bound already, e.g. in a network namespace of the test's), echoing or
    /// only recording.
    pub fn on_socket(socket: UdpSocket, lifetime: Duration, echo: bool) -> EchoPeer {
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

/// tern's /metrics text.
pub fn scrape(tern: &Tern) -> String {
    http("GET", &tern.url("/metrics"), None, None).body
}

/// The value of one series (`name{labels}` as exposed, or a bare name) in Prometheus text; 0
/// when absent (sparse series are left out until they move).
pub fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse::<f64>().unwrap() as u64)
}

/// Scrapes until `ready` holds (workers publish their counters every 500 ms); the last scrape.
pub fn scrape_until(tern: &Tern, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(tern);
        if ready(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{what}:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until tern's log has `count` lines containing `text`.
pub fn wait_for_log(tern: &Tern, text: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tern.logs().matches(text).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            tern.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rewrites tern's configuration file with `edit` and reloads it (SIGHUP), waiting until the
/// reload is logged.
pub fn reload_with(tern: &Tern, edit: impl FnOnce(String) -> String) {
    let path = tern.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
    let before = tern.logs().matches("configuration reloaded").count();
    hangup(tern);
    wait_for_log(tern, "configuration reloaded", before + 1);
}

/// The resident set size of process `pid`, in KiB (VmRSS in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}
