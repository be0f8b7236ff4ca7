//! What the container image's entry relies on: `tern health [URL]`, its HEALTHCHECK (exit 0 on
//! a 2xx answer, 1 otherwise, with the address taken from the same config files, environment and
//! flags the server reads), `tern drain` (the Kubernetes preStop hook), and a list of config
//! files of which the first that exists is read.

mod common;

use common::{free_port, free_tcp_port, relay_range, TempFile, Tern, SECRET};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn health(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("health")
        .args(args)
        .env_remove("TERN_CONFIG")
        .env_remove("TERN_HTTP_LISTEN")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn shown(output: &Output) -> String {
    format!(
        "{:?}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// tern's config listens on every address; `tern health`, reading that config through a list
/// whose first file does not exist (as the image's TERN_CONFIG), checks the loopback address.
#[test]
fn follows_the_servers_config_to_healthz() {
    let port = free_tcp_port();
    let tern = Tern::start(&format!("http-listen = \"0.0.0.0:{port}\""));
    let missing = std::env::temp_dir().join("tern-health-absent.toml");
    let list = format!("{},{}", missing.display(), tern.config_path().display());
    let output = health(&[("TERN_CONFIG", &list)], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", shown(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{port}/healthz: 200")),
        "{stdout}"
    );
}

/// A non-2xx answer is unhealthy: /readyz while tern drains.
#[test]
fn a_503_is_unhealthy() {
    let admin = "health-test-admin-key";
    let tern = Tern::start(&format!("admin-api-keys = [\"{admin}\"]"));
    let readyz = tern.url("/readyz");
    let output = health(&[], &[&readyz]);
    assert_eq!(output.status.code(), Some(0), "{}", shown(&output));
    ureq::post(&tern.url("/api/v1/admin/drain"))
        .header("Authorization", &format!("Bearer {admin}"))
        .send_empty()
        .unwrap();
    let output = health(&[], &[&readyz]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("503"),
        "{}",
        shown(&output)
    );
}

#[test]
fn nothing_listening_is_unhealthy() {
    let url = format!("http://127.0.0.1:{}/healthz", free_tcp_port());
    let output = health(&[], &["--timeout", "2", &url]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
}

/// With no HTTP endpoint there is nothing to check: unhealthy, saying why (never 2, which
/// Docker reserves).
#[test]
fn no_http_is_unhealthy_and_says_why() {
    let output = health(&[("TERN_NO_HTTP", "true")], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no-http"),
        "{}",
        shown(&output)
    );
    // A config that does not load is unhealthy too, and named.
    let output = health(
        &[("TERN_CONFIG", "/nonexistent/a.toml,/nonexistent/b.conf")],
        &[],
    );
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("/nonexistent/b.conf"),
        "{}",
        shown(&output)
    );
}

/// Of several config files, the one read at start is the one SIGHUP reloads, even if a file
/// earlier in the list appears later.
#[test]
fn reload_reads_the_file_chosen_at_start() {
    let (port, http) = (free_port(), free_tcp_port());
    let (min, max) = relay_range();
    let config = |api_key: &str| {
        format!(
            "listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = {min}\n\
             max-port = {max}\nstatic-auth-secret = \"{SECRET}\"\n\
             http-listen = \"127.0.0.1:{http}\"\napi-keys = [\"{api_key}\"]\n"
        )
    };
    let first = std::env::temp_dir().join(format!("tern-test-{}-first.toml", std::process::id()));
    let _ = std::fs::remove_file(&first);
    let second = TempFile::new("second.toml", &config("key-at-start-0000"));
    let list = format!("{},{}", first.display(), second.0.display());
    let child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .env("TERN_CONFIG", &list)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let mint = |key: &str| {
        ureq::post(&format!("http://127.0.0.1:{http}/api/v1/credentials"))
            .header("Authorization", &format!("Bearer {key}"))
            .send_empty()
            .map(|response| response.status().as_u16())
            .unwrap_or_else(|error| match error {
                ureq::Error::StatusCode(code) => code,
                other => panic!("{other}"),
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "tern did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mint("key-at-start-0000"), 200);

    // Now the first path exists too, and the second file changes its key.
    std::fs::write(&first, config("key-of-first-0000")).unwrap();
    std::fs::write(&second.0, config("key-after-reload")).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while mint("key-after-reload") != 200 {
        assert!(
            Instant::now() < deadline,
            "the reload did not read the second file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mint("key-of-first-0000"), 401, "the first file is not read");
    let _ = std::fs::remove_file(&first);
}

fn drain(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("drain")
        .args(args)
        .env_remove("TERN_CONFIG")
        .env_remove("TERN_ADMIN_API_KEYS")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `tern drain`, reading the server's own config (its admin key and http-listen), starts the
/// drain: /readyz fails and a new Allocate is refused while the allocation made before relays
/// on; it waits `--wait` seconds before returning.
#[test]
fn drain_starts_draining_the_server_it_finds_in_the_config() {
    let tern = Tern::start("admin-api-keys = [\"drain-test-admin-key\"]");
    let mut before = common::stream_client::udp_client("127.0.0.1:0", tern.addr, "before");
    before
        .allocate_or_redirect()
        .expect("allocate before the drain");
    let config = tern.config_path().display().to_string();
    let started = Instant::now();
    let output = drain(&[("TERN_CONFIG", &config)], &["--wait", "1"]);
    assert_eq!(output.status.code(), Some(0), "{}", shown(&output));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "--wait 1 returned early"
    );
    assert_eq!(health(&[], &[&tern.url("/readyz")]).status.code(), Some(1));
    let mut after = common::stream_client::udp_client("127.0.0.1:0", tern.addr, "after");
    assert_eq!(
        after.allocate_or_redirect().map_err(|(code, _)| code),
        Err(486)
    );
    before
        .refresh(600)
        .expect("the allocation made before still refreshes");
}

/// Without an admin key the admin API is off: `tern drain` fails and says why.
#[test]
fn drain_without_an_admin_key_fails_and_says_why() {
    let tern = Tern::start("");
    let config = tern.config_path().display().to_string();
    let output = drain(&[("TERN_CONFIG", &config)], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("admin-api-keys"),
        "{}",
        shown(&output)
    );
    assert_eq!(health(&[], &[&tern.url("/readyz")]).status.code(), Some(0));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
