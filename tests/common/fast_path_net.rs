//! A client, a tern and a peer network namespace joined by veth pairs, for the kernel fast path
//! through the real tern binary (tests/fast_path.rs). Everything goes with the namespaces on
//! drop, even when a test fails (the veths and the attached program with them).
//!
//! ```text
//!  client ns                tern ns                                 peer ns
//!  c0 192.0.2.2/24  ─── t0 192.0.2.1/24      t1 198.51.100.1/24 ─── p0 198.51.100.2/24
//!     2001:db8:c::2/64      2001:db8:c::1/64    2001:db8:d::1/64        2001:db8:d::2/64
//!     192.0.2.3, 2001:db8:c::3: a peer on the clients' side (one NIC for both)
//! ```
//!
//! tern listens on t0's addresses and relays from t1's (`relay-ip`); the client namespace's
//! default route is t0, so a peer there reaches the relay addresses too. Its HTTP endpoint is on the
//! tern namespace's loopback, reached from a thread that joined it. The tern namespace does not
//! forward. The senders' veths compute whole UDP checksums (`tx off`), as packets from a wire
//! carry them, and GRO gives every veth the NAPI that frames redirected into it need.

use super::netns::{self, Netns};
use super::{http, Reply, Tern, SECRET};
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const CLIENT_V4: &str = "192.0.2.2";
pub const CLIENT_V6: &str = "2001:db8:c::2";
pub const LISTEN_V4: &str = "192.0.2.1";
pub const LISTEN_V6: &str = "2001:db8:c::1";
pub const RELAY_V4: &str = "198.51.100.1";
pub const RELAY_V6: &str = "2001:db8:d::1";
pub const PEER_V4: &str = "198.51.100.2";
pub const PEER_V6: &str = "2001:db8:d::2";
pub const NEAR_PEER_V4: &str = "192.0.2.3";
pub const NEAR_PEER_V6: &str = "2001:db8:c::3";
pub const ADMIN_KEY: &str = "fast-path-admin-key-0123456789";
/// Where tern's HTTP endpoint listens, inside the tern namespace.
const HTTP: &str = "127.0.0.1:8080";

/// Root, `ip`, `ethtool`, `setpriv` and a built fast path (clang): required under CI=true.
pub fn available() -> bool {
    let tool = |name: &str, arg: &str| Command::new(name).arg(arg).output().is_ok();
    netns::available()
        && super::tools::required(
            tool("ethtool", "--version"),
            "ethtool",
            "apt-get install ethtool",
        )
        && super::tools::required(
            tool("setpriv", "--version"),
            "setpriv",
            "apt-get install util-linux",
        )
        && super::tools::required(
            tern_xdp::built(),
            "the fast path object",
            "install clang and libbpf-dev, then rebuild",
        )
}

pub struct FastPathNet {
    pub client: Netns,
    pub tern: Netns,
    pub peer: Netns,
}

impl FastPathNet {
    pub fn new() -> FastPathNet {
        let net = FastPathNet {
            client: Netns::new(),
            tern: Netns::new(),
            peer: Netns::new(),
        };
        let link = |a: &Netns, a_dev: &str, b: &Netns, b_dev: &str| {
            netns::run(&[
                "ip",
                "link",
                "add",
                a_dev,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                b_dev,
                "netns",
                b.name(),
            ]);
        };
        link(&net.client, "c0", &net.tern, "t0");
        link(&net.tern, "t1", &net.peer, "p0");
        let addresses = [
            (
                &net.client,
                "c0",
                &[CLIENT_V4, NEAR_PEER_V4][..],
                &[CLIENT_V6, NEAR_PEER_V6][..],
            ),
            (&net.tern, "t0", &[LISTEN_V4], &[LISTEN_V6]),
            (&net.tern, "t1", &[RELAY_V4], &[RELAY_V6]),
            (&net.peer, "p0", &[PEER_V4], &[PEER_V6]),
        ];
        for (ns, dev, v4s, v6s) in addresses {
            for v4 in v4s {
                ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            }
            for v6 in v6s {
                ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            }
            ns.ip(&["link", "set", dev, "up"]);
            ns.exec(&["ethtool", "-K", dev, "tx", "off", "gro", "on"]);
        }
        // The clients' side reaches tern's relay addresses through t0 (a peer there answers
        // them); tern delivers locally, it does not forward.
        net.client
            .ip(&["route", "add", "default", "via", LISTEN_V4]);
        net.client
            .ip(&["-6", "route", "add", "default", "via", LISTEN_V6]);
        net
    }

    /// tern in the tern namespace with the base configuration below plus `extra` (a key set in
    /// both takes `extra`'s value), started through `launcher` (e.g. `setpriv …`) if given;
    /// waits until it answers a Binding from the client namespace.
    pub fn start_tern(&self, extra: &str, launcher: &[&str]) -> Tern {
        let tern = self.launch_tern(extra, launcher);
        let server = SocketAddr::new(LISTEN_V4.parse().unwrap(), tern.port);
        let logs = tern.logs.clone();
        self.client.within(move || {
            let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
            probe
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                probe.send_to(&super::binding_request(), server).unwrap();
                if probe.recv_from(&mut buf).is_ok() {
                    return;
                }
            }
            panic!(
                "tern did not answer within 10 s; logs:\n{}",
                logs.lock().unwrap().join("\n")
            );
        });
        tern
    }

    /// Like [`FastPathNet::start_tern`], without waiting.
    pub fn launch_tern(&self, extra: &str, launcher: &[&str]) -> Tern {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        // A port of its own per tern: the config file's name comes from it.
        let port = 23000
            + NEXT.fetch_add(1, Ordering::Relaxed) * 2
            + (std::process::id() % 500) as u16 * 20;
        let base = format!(
            "listening-ip = [\"{LISTEN_V4}\", \"{LISTEN_V6}\"]\nlistening-port = {port}\n\
             relay-ip = [\"{RELAY_V4}\", \"{RELAY_V6}\"]\nmin-port = 50000\nmax-port = 50999\n\
             static-auth-secret = \"{SECRET}\"\nrelay-threads = 2\nlog-level = \"debug\"\n\
             http-listen = \"{HTTP}\"\nadmin-api-keys = [\"{ADMIN_KEY}\"]\nno-tcp = true\n\
             allowed-peer-ip = [\"192.0.2.0/24\", \"198.51.100.0/24\", \"2001:db8::/32\"]\n\
             fast-path = \"required\"\n"
        );
        let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
        let overridden: Vec<String> = extra.lines().map(key).collect();
        let base: String = base
            .lines()
            .filter(|line| !overridden.contains(&key(line)))
            .map(|line| format!("{line}\n"))
            .collect();
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.tern.name()]);
        command.args(launcher);
        command.arg(env!("CARGO_BIN_EXE_tern"));
        Tern::launch(command, port, &format!("{base}{extra}\n"), None)
    }

    /// A UDP socket bound to `addr` in `ns` (it stays there wherever it is used), reads waiting
    /// at most 2 s.
    pub fn socket(ns: &Netns, addr: SocketAddr) -> UdpSocket {
        let socket = ns.within(move || UdpSocket::bind(addr).unwrap());
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket
    }

    /// An HTTP request to tern's endpoint (from inside the tern namespace); admin paths carry
    /// the admin key.
    pub fn http(&self, method: &'static str, path: &str) -> Reply {
        let url = format!("http://{HTTP}{path}");
        let key = path.starts_with("/api/v1/admin").then_some(ADMIN_KEY);
        self.tern.within(move || http(method, &url, key, None))
    }

    pub fn metrics(&self) -> String {
        self.http("GET", "/metrics").body
    }

    /// Scrapes until `ready` holds (the first worker publishes every 500 ms); the last scrape.
    pub fn metrics_until(&self, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = Metrics(self.metrics());
            if ready(&metrics) {
                return metrics;
            }
            assert!(Instant::now() < deadline, "{what}:\n{}", metrics.0);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One scrape of tern's /metrics.
pub struct Metrics(pub String);

impl Metrics {
    pub fn get(&self, series: &str) -> u64 {
        super::sample(&self.0, series)
    }

    /// Packets the kernel relayed `direction` (`to_peer`, `to_client`).
    pub fn kernel_packets(&self, direction: &str) -> u64 {
        self.get(&format!(
            "tern_fast_path_relayed_packets_total{{direction=\"{direction}\"}}"
        ))
    }

    pub fn kernel_bytes(&self, direction: &str) -> u64 {
        self.get(&format!(
            "tern_fast_path_relayed_bytes_total{{direction=\"{direction}\"}}"
        ))
    }

    /// Packets relayed `direction` in all (user space and kernel).
    pub fn packets(&self, direction: &str) -> u64 {
        self.get(&format!(
            "tern_relayed_packets_total{{direction=\"{direction}\"}}"
        ))
    }

    pub fn bytes(&self, direction: &str) -> u64 {
        self.get(&format!(
            "tern_relayed_bytes_total{{direction=\"{direction}\"}}"
        ))
    }

    /// Datagrams the fast path left to user space for `reason`
    /// (`tern_fast_path_passed_total`).
    pub fn passed(&self, reason: &str) -> u64 {
        self.get(&format!(
            "tern_fast_path_passed_total{{reason=\"{reason}\"}}"
        ))
    }

    /// Packets tern's own threads relayed `direction`: the total less the kernel's share.
    pub fn user_space_packets(&self, direction: &str) -> u64 {
        self.packets(direction) - self.kernel_packets(direction)
    }

    pub fn entries(&self) -> u64 {
        self.get("tern_fast_path_entries")
    }
}
