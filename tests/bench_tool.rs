//! `tern-bench` works end to end, at a tiny bounded scale (no timing is asserted): against tern
//! in each mode, against its own raw forwarder, and against coTURN when it is installed.

mod common;

use common::{free_port, Tern, SECRET};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The `tern-bench` binary: a crate of its own, built by the workspace's `cargo test` into the
/// same directory as `tern`.
fn tern_bench() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_tern")).with_file_name("tern-bench");
    assert!(
        path.exists(),
        "{} is missing: run the workspace's `cargo test` (or `cargo build -p tern-bench`)",
        path.display()
    );
    path
}

fn bench(args: &[&str]) -> Value {
    let output = Command::new(tern_bench())
        .args(args)
        .output()
        .expect("run tern-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tern-bench {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().expect("one JSON line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn num(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {report}"))
}

/// A short, count-bounded run: ~0.5 s of load at most.
const SHORT: &[&str] = &["--duration", "0.3", "--warmup", "0.1"];

#[test]
fn relay_binding_alloc_and_hold_against_tern() {
    // One load generator on one address is every client: the limits for the open internet off.
    let tern = Tern::start(
        "allow-loopback-peers = true\nuser-quota = 0\nmax-allocations-per-ip = 0\n\
         unauthenticated-rate-limit = 0",
    );
    let server = tern.addr.to_string();
    let pid = tern.pid().to_string();
    let base = ["--server", &server, "--secret", SECRET, "--pid", &pid];
    let with = |mode: &str, extra: &[&str]| {
        let mut args = vec![mode];
        args.extend_from_slice(&base);
        args.extend_from_slice(SHORT);
        args.extend_from_slice(extra);
        bench(&args)
    };
    for extra in [
        &["--allocations", "4", "--count", "2000000"][..],
        &["--allocations", "4", "--rate", "2000", "--size", "1000"],
        &[
            "--allocations",
            "4",
            "--send-indication",
            "--count",
            "20000",
        ],
    ] {
        let report = with("relay", extra);
        assert!(num(&report, "packets") > 0.0, "{report}");
        assert!(num(&report, "to_peer") > 0.0 && num(&report, "to_client") > 0.0);
        assert!(num(&report, "rtt_p99_us") > 0.0, "{report}");
        assert!(report["server_rss_kb"].as_u64().unwrap() > 0);
        assert!(num(&report, "loss") < 0.5, "{report}");
    }
    // Steady streams: every allocation its own jittered stream toward its own peer address.
    for extra in [
        &["--allocations", "4", "--rate", "400"][..],
        &[
            "--allocations",
            "3",
            "--stream-rate",
            "50",
            "--size",
            "1000",
            "--send-indication",
        ],
    ] {
        let report = with("steady", extra);
        assert_eq!(report["mode"], "steady");
        assert!(
            num(&report, "to_peer") > 0.0 && num(&report, "to_client") > 0.0,
            "{report}"
        );
        assert!(num(&report, "echo_wakes") > 0.0, "{report}");
        assert!(num(&report, "machine_cpu_s") >= 0.0, "{report}");
        assert!(report["server_wakeups"].as_u64().is_some(), "{report}");
        assert_eq!(
            num(&report, "peers"),
            num(&report, "allocations"),
            "{report}"
        );
        assert!(num(&report, "loss") < 0.5, "{report}");
    }
    let report = with("binding", &["--clients", "2", "--count", "2000000"]);
    assert!(num(&report, "packets") > 0.0, "{report}");
    let report = with("alloc", &["--concurrency", "4", "--count", "100000"]);
    assert!(num(&report, "allocations") > 0.0, "{report}");
    assert_eq!(num(&report, "errors"), 0.0, "{report}");
    let report = with("hold", &["--allocations", "50", "--channel"]);
    assert!(num(&report, "rss_held_kb") > 0.0, "{report}");
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_udp_bound(port: u16) {
    for _ in 0..100 {
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing bound udp port {port}");
}

#[test]
fn relay_through_the_raw_forwarder() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let forwarder = Killed(
        Command::new(tern_bench())
            .args(["forwarder", "--listen", &listen, "--max-time", "30"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_udp_bound(port);
    let pid = forwarder.0.id().to_string();
    let mut args = vec!["relay", "--raw", "--server", &listen, "--pid", &pid];
    args.extend_from_slice(SHORT);
    args.extend_from_slice(&["--allocations", "4", "--count", "2000000"]);
    let report = bench(&args);
    assert!(num(&report, "packets") > 0.0, "{report}");
    assert_eq!(report["framing"], "raw");
    let mut args = vec!["steady", "--raw", "--server", &listen, "--pid", &pid];
    args.extend_from_slice(SHORT);
    args.extend_from_slice(&["--allocations", "4", "--rate", "400"]);
    let report = bench(&args);
    assert!(num(&report, "to_client") > 0.0, "{report}");
}

#[test]
fn relay_against_coturn_when_installed() {
    if Command::new("turnserver").arg("--help").output().is_err() {
        eprintln!("SKIPPED: turnserver not installed (apt-get install coturn)");
        return;
    }
    let port = free_port();
    let (min, max) = common::relay_range();
    let coturn = Killed(
        Command::new("turnserver")
            .args([
                "-n",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--no-tcp-relay",
                "--no-cli",
            ])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["-p", &port.to_string(), "--use-auth-secret"])
            .args(["--static-auth-secret", SECRET, "--realm", "coturn"])
            .args(["--allow-loopback-peers", "--relay-threads", "1"])
            .args([
                "--min-port",
                &min.to_string(),
                "--max-port",
                &max.to_string(),
            ])
            .args(["--no-stdout-log", "--log-file", "/dev/null"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_udp_bound(port);
    let server = format!("127.0.0.1:{port}");
    let pid = coturn.0.id().to_string();
    let base = ["--server", &server, "--secret", SECRET, "--pid", &pid];
    for extra in [
        &["relay", "--allocations", "4", "--count", "2000000"][..],
        &[
            "relay",
            "--allocations",
            "4",
            "--send-indication",
            "--count",
            "20000",
        ],
        &["steady", "--allocations", "3", "--rate", "300"],
    ] {
        let mut args = vec![extra[0]];
        args.extend_from_slice(&base);
        args.extend_from_slice(SHORT);
        args.extend_from_slice(&extra[1..]);
        let report = bench(&args);
        assert!(num(&report, "to_client") > 0.0, "{report}");
    }
}
