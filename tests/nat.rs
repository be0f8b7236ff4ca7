//! Two clients behind NATs that cannot reach each other exchange data through tern, which itself
//! sits behind a 1:1 NAT and advertises its public address (`external-ip`).
//!
//! The network is made of namespaces (removed at the end, even on failure), with TEST-NET
//! addresses only:
//!
//! ```text
//!  client A 192.0.2.10 ─ NAT A (masquerade fully-random) 203.0.113.2 ─┐
//!                                                                       wan ─ 192.0.2.2 tern
//!  client B 192.0.2.18 ─ NAT B (masquerade fully-random) 203.0.113.10 ─┘  (198.51.100.10 ⇄ 192.0.2.2)
//! ```
//!
//! NAT A and B map address-and-port-dependently (a new random port per destination) and drop
//! what was not answered to, so a direct datagram between the clients never arrives. The wan
//! namespace maps tern's public 198.51.100.10 to its private 192.0.2.2 both ways (hairpin
//! included, as cloud 1:1 NAT does). Needs root, `ip` and `nft` (Debian's iproute2, nftables).

mod common;

use common::stream_client::{reflexive_address, UdpTurn};
use common::tools::required;
use common::{unix_now, Tern, SECRET};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

const TERN_PRIVATE: &str = "192.0.2.2";
const TERN_PUBLIC: &str = "198.51.100.10";
const NAT_A_PUBLIC: &str = "203.0.113.2";
const NAT_B_PUBLIC: &str = "203.0.113.10";

/// The namespaces of one test run; removed on drop (their interfaces and nftables rules go with
/// them).
struct Network {
    prefix: String,
    made: Vec<String>,
}

impl Drop for Network {
    fn drop(&mut self) {
        for name in &self.made {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn run(program: &str, args: &[&str], input: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Network {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn ip(&self, ns: &str, args: &[&str]) {
        let ns = self.ns(ns);
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all, None);
    }

    fn nft(&self, ns: &str, rules: &str) {
        run(
            "ip",
            &["netns", "exec", &self.ns(ns), "nft", "-f", "-"],
            Some(rules),
        );
    }

    /// A veth pair between namespaces `a` and `b`, addressed and up.
    fn link(
        &mut self,
        (a, a_dev, a_addr): (&str, &str, &str),
        (b, b_dev, b_addr): (&str, &str, &str),
    ) {
        let (a_ns, b_ns) = (self.ns(a), self.ns(b));
        run(
            "ip",
            &[
                "link", "add", a_dev, "netns", &a_ns, "type", "veth", "peer", "name", b_dev,
                "netns", &b_ns,
            ],
            None,
        );
        for (ns, dev, addr) in [(a, a_dev, a_addr), (b, b_dev, b_addr)] {
            self.ip(ns, &["addr", "add", addr, "dev", dev]);
            self.ip(ns, &["link", "set", dev, "up"]);
        }
    }

    fn build() -> Network {
        let mut network = Network {
            prefix: format!("tern-nat-{}", std::process::id()),
            made: Vec::new(),
        };
        for name in ["wan", "srv", "nata", "natb", "cla", "clb"] {
            let ns = network.ns(name);
            run("ip", &["netns", "add", &ns], None);
            network.made.push(ns);
            network.ip(name, &["link", "set", "lo", "up"]);
        }
        network.link(("wan", "w0", "192.0.2.1/29"), ("srv", "s0", "192.0.2.2/29"));
        network.link(
            ("wan", "w1", "203.0.113.1/29"),
            ("nata", "n0", "203.0.113.2/29"),
        );
        network.link(
            ("wan", "w2", "203.0.113.9/29"),
            ("natb", "n0", "203.0.113.10/29"),
        );
        network.link(
            ("nata", "n1", "192.0.2.9/29"),
            ("cla", "c0", "192.0.2.10/29"),
        );
        network.link(
            ("natb", "n1", "192.0.2.17/29"),
            ("clb", "c0", "192.0.2.18/29"),
        );
        for (ns, gateway) in [
            ("srv", "192.0.2.1"),
            ("nata", "203.0.113.1"),
            ("natb", "203.0.113.9"),
            ("cla", "192.0.2.9"),
            ("clb", "192.0.2.17"),
        ] {
            network.ip(ns, &["route", "add", "default", "via", gateway]);
        }
        for ns in ["wan", "nata", "natb"] {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &network.ns(ns),
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ],
                None,
            );
        }
        // tern's 1:1 NAT, hairpin included: relay to relay goes out to the public address and back.
        network.nft(
            "wan",
            &format!(
                "table ip tern_test {{
                   chain pre {{ type nat hook prerouting priority dstnat; ip daddr {TERN_PUBLIC} dnat to {TERN_PRIVATE}; }}
                   chain post {{ type nat hook postrouting priority srcnat; ip saddr {TERN_PRIVATE} snat to {TERN_PUBLIC}; }}
                 }}"
            ),
        );
        // The clients' NATs: a new random public port per destination (address-and-port-dependent
        // mapping), and only answers come in (address-and-port-dependent filtering).
        for ns in ["nata", "natb"] {
            network.nft(
                ns,
                "table ip tern_test {
                   chain post { type nat hook postrouting priority srcnat; oifname \"n0\" masquerade fully-random; }
                   chain filter_forward { type filter hook forward priority filter; policy drop;
                     ct state established,related accept; iifname \"n1\" accept; }
                 }",
            );
        }
        network
    }

    /// A UDP socket bound to `bind` in namespace `ns` (it stays there wherever it is used).
    fn socket(&self, ns: &str, bind: &str) -> UdpSocket {
        let path = format!("/run/netns/{}", self.ns(ns));
        let bind = bind.to_string();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns with a namespace file this thread holds open; it moves only this
            // thread, which ends once the socket is made.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            UdpSocket::bind(&bind).unwrap()
        })
        .join()
        .unwrap()
    }
}

/// Root, `ip` and `nft` (required under CI=true).
fn can_build_networks() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tool = |name: &str| Command::new(name).arg("-V").output().is_ok();
    required(root, "root (network namespaces)", "run the tests as root")
        && required(tool("ip"), "ip", "apt-get install iproute2")
        && required(tool("nft"), "nft", "apt-get install nftables")
}

/// Nothing arrives on `socket` within `wait`.
fn nothing_arrives(socket: &UdpSocket, wait: Duration) -> Result<(), SocketAddr> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            return Err(from);
        }
    }
    Ok(())
}

#[test]
fn clients_behind_nats_that_cannot_reach_each_other_exchange_data_through_tern() {
    if !can_build_networks() {
        return;
    }
    let network = Network::build();
    let public: SocketAddr = format!("{TERN_PUBLIC}:3478").parse().unwrap();
    let config = format!(
        "listening-ip = \"{TERN_PRIVATE}\"\nlistening-port = 3478\nmin-port = 50000\nmax-port = 50099\n\
         static-auth-secret = \"{SECRET}\"\nrelay-threads = 2\nno-http = true\nno-tcp = true\n\
         log-level = \"debug\"\nexternal-ip = \"{TERN_PUBLIC}/{TERN_PRIVATE}\"\n\
         # Relay to relay: the peer is tern's own public address.\n\
         allowed-peer-ip = \"{TERN_PUBLIC}\"\n"
    );
    let mut command = Command::new("ip");
    command.args([
        "netns",
        "exec",
        &network.ns("srv"),
        env!("CARGO_BIN_EXE_tern"),
    ]);
    let tern = Tern::launch(command, 3478, &config, None);

    let a = network.socket("cla", "0.0.0.0:0");
    let b = network.socket("clb", "0.0.0.0:0");
    // tern answers through the NATs: each client's address as tern sees it is its NAT's.
    let deadline = Instant::now() + Duration::from_secs(10);
    let a_seen = loop {
        if let Some(seen) = reflexive_address(&a, public) {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "tern does not answer at {public}; logs:\n{}",
            tern.logs()
        );
    };
    let b_seen = reflexive_address(&b, public).expect("B's Binding");
    assert_eq!(a_seen.ip().to_string(), NAT_A_PUBLIC);
    assert_eq!(b_seen.ip().to_string(), NAT_B_PUBLIC);

    // Directly, both ways (at the same time, as a hole punch would): nothing gets through.
    for _ in 0..5 {
        a.send_to(b"direct from A", b_seen).unwrap();
        b.send_to(b"direct from B", a_seen).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        nothing_arrives(&a, Duration::from_secs(1)),
        Ok(()),
        "B reached A directly"
    );
    assert_eq!(
        nothing_arrives(&b, Duration::from_millis(100)),
        Ok(()),
        "A reached B directly"
    );

    // Through tern: each allocates, and the relayed address handed out is the public one.
    let credential = |user: &str| tern::credentials::mint(SECRET, Some(user), 600, unix_now());
    let (alice, bob) = (credential("alice"), credential("bob"));
    let mut a = UdpTurn::on_socket(a, public, &alice.username, &alice.password);
    let mut b = UdpTurn::on_socket(b, public, &bob.username, &bob.password);
    let a_relay = a.allocate().expect("A allocates");
    let b_relay = b.allocate().expect("B allocates");
    for relay in [a_relay, b_relay] {
        assert_eq!(
            relay.ip().to_string(),
            TERN_PUBLIC,
            "external-ip maps the relay address"
        );
    }
    a.create_permission(b_relay).expect("A's permission");
    b.create_permission(a_relay).expect("B's permission");
    for n in 0..50 {
        let message = format!("A to B {n}");
        a.send(b_relay, message.as_bytes()).unwrap();
        let received = b
            .receive_data()
            .unwrap_or_else(|e| panic!("{message} lost: {e}"));
        assert_eq!(received, (a_relay, message.into_bytes()));
        let message = format!("B to A {n}");
        b.send(a_relay, message.as_bytes()).unwrap();
        let received = a
            .receive_data()
            .unwrap_or_else(|e| panic!("{message} lost: {e}"));
        assert_eq!(received, (b_relay, message.into_bytes()));
    }
    let logs = tern.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("allocation created") && l.contains(&format!("{TERN_PUBLIC}:"))),
        "{logs}"
    );
    drop(tern);
    drop(network);
}
