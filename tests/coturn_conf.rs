//! tern started on coTURN's own `turnserver.conf` files, unchanged but for the loopback address,
//! port and relay range each test appends, and driven by coTURN's `turnutils_uclient` with REST
//! credentials (`-W`). Under CI=true a missing uclient fails the test; elsewhere it is skipped.

mod common;

use common::tools::{coturn_tool, run_uclient, uclient_totals};
use common::{free_port, relay_range, EchoPeer, TempFile, Tern, SECRET};
use std::process::{Command, Stdio};
use std::time::Duration;

const DEBIAN: &str = include_str!("fixtures/coturn/debian-turnserver.conf");
const HARDENED: &str = include_str!("fixtures/coturn/hardened-turnserver.conf");

fn tern() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tern"));
    command.env_remove("RUST_LOG");
    command
}

/// tern on `conf` plus coTURN lines for this test's loopback address, port and relay range
/// (later lines win in coTURN, so these replace the file's own), then `extra`.
fn start_conf(conf: &str, extra: &str) -> Tern {
    let port = free_port();
    let (min, max) = relay_range();
    let text = format!(
        "{conf}\n# Added by the test.\nlistening-ip=127.0.0.1\nlistening-port={port}\n\
         min-port={min}\nmax-port={max}\nrelay-threads=2\n{extra}\n"
    );
    Tern::start_with_config(port, &text)
}

fn assert_all_came_back(text: &str) {
    let (sent, received, lost) = uclient_totals(text);
    assert!(sent >= 200, "4 clients x 50 messages, got {sent}:\n{text}");
    assert_eq!(received, sent, "everything sent came back:\n{text}");
    assert_eq!(lost, 0, "{text}");
}

/// Debian's /etc/turnserver.conf (coturn 4.6), with a listening port and a secret added.
#[test]
fn debian_turnserver_conf_serves_binding_and_rest_allocations() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    // uclient's clients relay to each other on loopback, with RFC 5766 channel numbers.
    let tern = start_conf(DEBIAN, "allow-loopback-peers\nrfc5766-channel-numbers\n");
    assert_all_came_back(&run_uclient(&tern, "127.0.0.1", tern.port, &[]));
    // Its switches: syslog warns once; the other three are tern's behaviour (RFC 5780 is off
    // unless rfc5780 is set, as in coTURN 4.17).
    let logs = tern.logs();
    let warned = logs.matches("syslog: ignored").count();
    assert_eq!(warned, 1, "syslog:\n{logs}");
    for accepted in [
        "no-rfc5780",
        "no-stun-backward-compatibility",
        "response-origin-only-with-rfc5780",
    ] {
        assert!(!logs.contains(accepted), "{accepted}:\n{logs}");
    }
}

/// uclient against an echo peer (not its own clients): `-e peer -r port -c` (no RTCP pair).
fn uclient_to_peer(tern: &Tern, peer: std::net::SocketAddr) -> std::process::Output {
    Command::new("timeout")
        .arg("60")
        .arg("turnutils_uclient")
        .args(["-W", SECRET, "-u", "uclient", "-n", "20", "-m", "2", "-c"])
        .args(["-p", &tern.port.to_string()])
        .args(["-e", &peer.ip().to_string(), "-r", &peer.port().to_string()])
        .arg("127.0.0.1")
        .output()
        .unwrap()
}

/// A hardened configuration: use-auth-secret, denied-peer-ip ranges, external-ip, UDP only.
#[test]
fn hardened_turnserver_conf_relays_to_allowed_peers_only() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let peer = EchoPeer::start(Duration::from_secs(60));
    // The echo peer is on loopback, which the file denies: allow it alone, as an operator would.
    let tern = start_conf(
        HARDENED,
        "allowed-peer-ip=127.0.0.1\nrfc5766-channel-numbers\nverbose\n",
    );
    let output = uclient_to_peer(&tern, peer.addr);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}\n{}", tern.logs());
    let (sent, received, lost) = uclient_totals(&text);
    assert!(sent >= 40, "{text}");
    assert_eq!((received, lost), (sent, 0), "{text}");
    let logs = tern.logs();
    // external-ip: the relayed address handed out is the public one.
    assert!(
        logs.contains("allocation created") && logs.contains("203.0.113.7:"),
        "{logs}"
    );
    // denied-peer-ip 127.0.0.0-127.255.255.255: another loopback peer is refused.
    let denied = uclient_to_peer(&tern, "127.0.0.2:9".parse().unwrap());
    assert!(!denied.status.success());
    assert!(
        tern.logs().contains("peer denied by policy") && tern.logs().contains("127.0.0.2"),
        "{}",
        tern.logs()
    );
    // Warned about: server-name (oAuth only); no-tcp-relay is honoured (no-tcp, no-tls).
    assert!(logs.contains("server-name: ignored"), "{logs}");
    assert!(!logs.contains("no-tcp-relay"), "{logs}");
}

/// Every line form and value form coTURN reads, repeated keys, a static user, a warned key.
#[test]
fn hand_written_conf_every_form() {
    if !coturn_tool("turnutils_uclient") {
        return;
    }
    let conf = "\
# comment lines and blank lines

   # an indented comment
--realm=\"example.org\"
lt-cred-mech
use-auth-secret
static-auth-secret old-secret
static-auth-secret=\"integration-test-secret\"
user=alice:alice-password
user bob:0x00112233445566778899aabbccddeeff
allow-loopback-peers=yes
rfc5766-channel-numbers = on
no-tls=1
no-udp=off
stale-nonce
channel-lifetime 600
no-cli
cli-password=not-shown
";
    let tern = start_conf(conf, "");
    // REST credentials signed with the second (repeated) secret.
    assert_all_came_back(&run_uclient(&tern, "127.0.0.1", tern.port, &[]));
    // The static user, long-term credentials.
    let output = Command::new("timeout")
        .arg("60")
        .arg("turnutils_uclient")
        .args([
            "-u",
            "alice",
            "-w",
            "alice-password",
            "-n",
            "20",
            "-m",
            "2",
            "-y",
        ])
        .args(["-p", &tern.port.to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    let (sent, received, _) = uclient_totals(&text);
    assert!(sent > 0 && received == sent, "{text}");
    let logs = tern.logs();
    assert!(logs.contains("cli-password: ignored"), "{logs}");
    assert!(
        !logs.contains("not-shown"),
        "the value of a warned key stays out of logs"
    );
}

/// Runs tern expecting a configuration error (exit 2); its stderr. Fails if tern starts.
fn refused(conf: &str) -> (String, TempFile, u16) {
    let port = free_port();
    let file = TempFile::new(
        &format!("refused-{port}.conf"),
        &format!("listening-ip=127.0.0.1\nlistening-port={port}\nno-http\n{conf}"),
    );
    let mut child = tern()
        .arg("-c")
        .arg(&file.0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tern started on:\n{conf}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{conf}");
    std::net::UdpSocket::bind(("127.0.0.1", port)).expect("nothing was bound");
    (
        String::from_utf8_lossy(&output.stderr).into_owned(),
        file,
        port,
    )
}

#[test]
fn refused_unknown_and_missing_cert_stop_before_binding() {
    let (stderr, file, _) = refused("static-auth-secret=s\nno-auth\n");
    let expected = format!(
        "tern: configuration error: {}:5: no-auth: tern never relays for unauthenticated clients",
        file.0.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    let (stderr, file, _) = refused("static-auth-secret=s\nlistening-prot=3478\n");
    let expected = format!(
        "{}:5: unknown key \"listening-prot\" (did you mean \"listening-port\"?)",
        file.0.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    let (stderr, _, _) =
        refused("use-auth-secret\nredis-userdb=\"ip=127.0.0.1 password=hunter2\"\n");
    assert!(
        stderr.contains("redis-userdb: tern reads no user database"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let missing = std::env::temp_dir().join("tern-test-no-such-cert.pem");
    let (stderr, _, _) = refused(&format!(
        "static-auth-secret=s\ncert={}\npkey=/nonexistent/key.pem\n",
        missing.display()
    ));
    assert!(
        stderr.contains("cert") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
}

fn run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let output = tern().args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `tern config check` and `tern config convert` through the binary: the converted file checks
/// to the same effective configuration as the original.
#[test]
fn config_check_and_convert_commands() {
    for (name, conf) in [("debian", DEBIAN), ("hardened", HARDENED)] {
        let original = TempFile::new(&format!("{name}-turnserver.conf"), conf);
        let (code, effective, stderr) =
            run(&["config".as_ref(), "check".as_ref(), original.0.as_os_str()]);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(
            stderr.contains("valid (coTURN turnserver.conf)"),
            "{stderr}"
        );
        assert!(
            effective.contains("static-auth-secret = [\"<redacted>\"]")
                && !effective.contains(SECRET),
            "{effective}"
        );

        let (code, converted, stderr) = run(&[
            "config".as_ref(),
            "convert".as_ref(),
            original.0.as_os_str(),
        ]);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(
            converted.contains(SECRET),
            "convert keeps the secret:\n{converted}"
        );
        let toml = TempFile::new(&format!("{name}-converted.toml"), &converted);
        let (code, reconverted, stderr) =
            run(&["config".as_ref(), "check".as_ref(), toml.0.as_os_str()]);
        assert_eq!(code, Some(0), "{stderr}\n{converted}");
        assert!(stderr.contains("valid (turnserver.toml)"), "{stderr}");
        assert_eq!(reconverted, effective, "{converted}");
    }
    let hardened = TempFile::new("hardened-dropped.conf", HARDENED);
    let (_, converted, _) = run(&[
        "config".as_ref(),
        "convert".as_ref(),
        hardened.0.as_os_str(),
    ]);
    assert!(converted.contains("server-name: ignored"), "{converted}");
    assert!(converted.contains("denied-peer-ip = ["), "{converted}");

    let bad = TempFile::new("bad-check.conf", "realm=x\nno-auth\n");
    let (code, stdout, stderr) = run(&["config".as_ref(), "check".as_ref(), bad.0.as_os_str()]);
    assert_eq!(code, Some(2));
    assert!(
        stdout.is_empty() && stderr.contains(":2: no-auth:"),
        "{stderr}"
    );
}
