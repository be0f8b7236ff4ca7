//! A three-namespace topology for the fast path tests, made and removed by each test:
//!
//! ```text
//!  client ns              tern ns                         peer ns
//!  c0 192.0.2.2  ---- t0 192.0.2.1     t1 198.51.100.1 ---- p0 198.51.100.2
//!     2001:db8:c::2      2001:db8:c::1    2001:db8:d::1        2001:db8:d::2
//!     192.0.2.3 (a peer behind the client side's interface: the single-NIC case)
//!     2001:db8:c::3
//! ```
//!
//! The program attaches to t0 and t1 in the tern namespace, which does not forward (IP forwarding
//! stays off, as on any host that is not a router); UDP sockets in the tern namespace stand in for
//! tern's listener and relay sockets, so a test also sees what reaches user space.
//! The rule for missing tools is the server's (tests/common/tools.rs): under CI=true a missing
//! one fails the test; elsewhere the test says SKIPPED and passes.

#![allow(dead_code)]

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const CLIENT_V4: &str = "192.0.2.2";
pub const TERN_CLIENT_SIDE_V4: &str = "192.0.2.1";
pub const TERN_PEER_SIDE_V4: &str = "198.51.100.1";
pub const PEER_V4: &str = "198.51.100.2";
pub const CLIENT_V6: &str = "2001:db8:c::2";
pub const TERN_CLIENT_SIDE_V6: &str = "2001:db8:c::1";
pub const TERN_PEER_SIDE_V6: &str = "2001:db8:d::1";
pub const PEER_V6: &str = "2001:db8:d::2";
/// A peer on the client side: reached through the same interface as the client.
pub const NEAR_PEER_V4: &str = "192.0.2.3";
pub const NEAR_PEER_V6: &str = "2001:db8:c::3";

const MAC_C0: &str = "02:00:00:00:0c:00";
const MAC_T0: &str = "02:00:00:00:0a:00";
const MAC_T1: &str = "02:00:00:00:0a:01";
const MAC_P0: &str = "02:00:00:00:0d:00";

/// `found`, after applying the rule: panics under CI=true when it is false.
pub fn required(found: bool, what: &str, how: &str) -> bool {
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} is missing under CI=true: {how} (scripts/install-test-deps.sh installs the tools)"
        );
        eprintln!("SKIPPED: {what} is missing ({how})");
    }
    found
}

/// Whether this process can run the namespace tests: root, `ip`, `ethtool`, and the program built.
pub fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    required(root, "root", "run the tests as root (CI does)")
        && required(
            tern_xdp::built(),
            "the fast path object",
            "install clang and libbpf-dev, then rebuild",
        )
        && required(tool("ip"), "ip", "apt-get install iproute2")
        && required(tool("ethtool"), "ethtool", "apt-get install ethtool")
}

fn tool(program: &str) -> bool {
    Command::new(program).arg("-V").output().is_ok()
        || Command::new(program).arg("--version").output().is_ok()
}

fn run(args: &[&str]) {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The three namespaces; dropping removes them (and with them the veths and attached programs).
pub struct Topology {
    pub client: String,
    pub tern: String,
    pub peer: String,
}

impl Topology {
    /// Makes the namespaces and links.
    pub fn new() -> Topology {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "txdp{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let topology = Topology {
            client: format!("{tag}-c"),
            tern: format!("{tag}-t"),
            peer: format!("{tag}-p"),
        };
        // Built under the guard: a failing step still removes what exists.
        for ns in [&topology.client, &topology.tern, &topology.peer] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (c, t, p) = (&topology.client, &topology.tern, &topology.peer);
        run(&[
            "ip", "-n", t, "link", "add", "t0", "address", MAC_T0, "type", "veth", "peer", "name",
            "c0", "address", MAC_C0, "netns", c,
        ]);
        run(&[
            "ip", "-n", t, "link", "add", "t1", "address", MAC_T1, "type", "veth", "peer", "name",
            "p0", "address", MAC_P0, "netns", p,
        ]);
        let links = [
            (c, "c0", CLIENT_V4, CLIENT_V6),
            (t, "t0", TERN_CLIENT_SIDE_V4, TERN_CLIENT_SIDE_V6),
            (t, "t1", TERN_PEER_SIDE_V4, TERN_PEER_SIDE_V6),
            (p, "p0", PEER_V4, PEER_V6),
        ];
        for (ns, dev, v4, v6) in links {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                dev,
            ]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            // Senders fill in the whole UDP checksum (as packets from the wire have it), and
            // GRO gives each veth NAPI, which frames redirected into it need.
            run(&[
                "ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "gro", "on",
            ]);
        }
        for (ip, prefix) in [(NEAR_PEER_V4, 24), (NEAR_PEER_V6, 64)] {
            run(&[
                "ip",
                "-n",
                c,
                "addr",
                "add",
                &format!("{ip}/{prefix}"),
                "dev",
                "c0",
                "nodad",
            ]);
        }
        // Neighbours known from the start, so user space's first datagrams do not wait on
        // address resolution.
        let neighbours = [
            (t, "t0", CLIENT_V4, MAC_C0),
            (t, "t0", CLIENT_V6, MAC_C0),
            (t, "t0", NEAR_PEER_V4, MAC_C0),
            (t, "t0", NEAR_PEER_V6, MAC_C0),
            (t, "t1", PEER_V4, MAC_P0),
            (t, "t1", PEER_V6, MAC_P0),
            (c, "c0", TERN_CLIENT_SIDE_V4, MAC_T0),
            (c, "c0", TERN_CLIENT_SIDE_V6, MAC_T0),
            (p, "p0", TERN_PEER_SIDE_V4, MAC_T1),
            (p, "p0", TERN_PEER_SIDE_V6, MAC_T1),
        ];
        for (ns, dev, ip, mac) in neighbours {
            run(&[
                "ip",
                "-n",
                ns,
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        topology
    }

    /// Runs `f` on a thread inside namespace `ns`; sockets it makes stay in that namespace.
    pub fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap();
            // SAFETY: setns on an open namespace file; it affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    /// A UDP socket bound to `addr` in namespace `ns`, with a short read timeout.
    pub fn socket(ns: &str, addr: SocketAddr) -> UdpSocket {
        Topology::within(ns, move || {
            let socket = UdpSocket::bind(addr).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            socket
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client, &self.tern, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

/// The next datagram on `socket` and its source, or `None` after the read timeout.
pub fn recv(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    use std::io::ErrorKind;
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Asserts nothing more arrives on `socket` within its read timeout.
pub fn assert_silent(socket: &UdpSocket, what: &str) {
    if let Some((data, from)) = recv(socket) {
        panic!(
            "{what}: unexpected {} bytes from {from}: {data:02x?}",
            data.len()
        );
    }
}
