//! The README's set-up commands, run as written on a fresh clone of this repository: the first
//! (`cargo run --release`) must start tern on its embedded default, answer a STUN Binding on
//! 127.0.0.1:3478 and print a `curl` line; that line, run as printed, must mint a credential that
//! allocates. So the first command can never silently break again. And the local try-out
//! ("Relay between two local clients") typed into a shell as written relays with nothing lost.

mod common;

use common::tools::{coturn_tool, required, uclient_totals};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};
use webrtc_util::conn::Conn;

/// The commands of the README's first `sh` block, without their comments.
fn setup_commands(readme: &str) -> Vec<String> {
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has no ```sh block");
    block
        .lines()
        .map(|line| line.split(" #").next().unwrap_or("").trim().to_string())
        .filter(|line| !line.is_empty())
        .collect()
}

#[test]
fn readme_opens_with_exactly_the_two_setup_commands() {
    let readme = include_str!("../README.md");
    assert_eq!(
        setup_commands(readme),
        ["cargo run --release", "cargo test"],
        "README.md must open with exactly the run command and the test command"
    );
}

/// The process group of a command started with `sh -c`, killed (all of it) on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// A fresh clone of the committed tree (what CI and a newcomer get), in a temporary directory.
fn fresh_clone() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = Command::new("git").arg("--version").output().is_ok();
    if !required(
        git && repo.join(".git").exists(),
        "git and a git checkout",
        "apt-get install git; run from a clone",
    ) {
        return None;
    }
    let clone = std::env::temp_dir().join(format!("tern-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&clone);
    let status = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(repo)
        .arg(&clone)
        .status()
        .expect("run git clone");
    assert!(status.success(), "git clone of {} failed", repo.display());
    Some(clone)
}

/// The README's commands serve on the default ports (UDP 3478, HTTP 8080): one test at a time.
static DEFAULT_PORTS: Mutex<()> = Mutex::new(());

fn default_ports_free() {
    for (what, taken) in [
        ("UDP 3478", UdpSocket::bind("0.0.0.0:3478").is_err()),
        (
            "TCP 8080",
            std::net::TcpListener::bind("127.0.0.1:8080").is_err(),
        ),
    ] {
        assert!(
            !taken,
            "{what} is in use: the README's commands need it free"
        );
    }
}

/// Whether tern answers a STUN Binding on 127.0.0.1:3478 (within a second or so).
fn answers_binding() -> bool {
    let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 512];
    (0..5).any(|_| {
        probe.send_to(&common::binding_request(), server).unwrap();
        matches!(probe.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[..2] == [0x01, 0x01])
    })
}

#[test]
fn readme_first_command_serves_and_its_printed_curl_mints_a_working_credential() {
    let curl = Command::new("curl").arg("--version").output().is_ok();
    if !required(curl, "curl", "apt-get install curl") {
        return;
    }
    let _ports = DEFAULT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(clone) = fresh_clone() else { return };
    let commands = setup_commands(&std::fs::read_to_string(clone.join("README.md")).unwrap());
    // The embedded default listens on 3478 (UDP and TCP) and serves HTTP on 127.0.0.1:8080.
    default_ports_free();
    // Built with this checkout's target directory, so dependencies are not built twice.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&commands[0])
        .current_dir(&clone)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().expect("spawn the README's first command");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let group = Group(child);
    let (lines, banner) = mpsc::channel::<String>();
    let log = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = errors.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
        drop(log);
    });
    let output_so_far = || errors.lock().unwrap().join("\n");

    // A release build from scratch takes minutes on a small machine.
    let deadline = Instant::now() + Duration::from_secs(1500);
    let mut curl_line = None;
    while curl_line.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match banner.recv_timeout(left) {
            Ok(line) if line.trim_start().starts_with("curl ") => curl_line = Some(line),
            Ok(_) => {}
            Err(_) => panic!(
                "`{}` printed no curl line; stderr:\n{}",
                commands[0],
                output_so_far()
            ),
        }
    }
    let curl_line = curl_line.unwrap();

    // It answers a STUN Binding on the default port.
    let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 512];
    let answered = (0..50).any(|_| {
        probe.send_to(&common::binding_request(), server).unwrap();
        matches!(probe.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[..2] == [0x01, 0x01])
    });
    assert!(
        answered,
        "no Binding success response; stderr:\n{}",
        output_so_far()
    );

    // The printed curl line, run as printed, mints a credential...
    let minted = Command::new("sh")
        .arg("-c")
        .arg(curl_line.trim())
        .output()
        .expect("run curl");
    let body = String::from_utf8_lossy(&minted.stdout).to_string();
    assert!(minted.status.success(), "{curl_line}: {body}");
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{curl_line} answered {body}: {e}"));
    let username = json["username"].as_str().expect("username").to_string();
    let password = json["password"].as_str().expect("password").to_string();

    // ... that allocates on the running server.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = common::webrtc::turn_client(server, &username, &password).await;
        let relay = tokio::time::timeout(Duration::from_secs(10), client.allocate())
            .await
            .expect("Allocate timed out")
            .expect("Allocate with the minted credential");
        assert_ne!(relay.local_addr().unwrap().port(), 0);
        client.close().await.unwrap();
    });
    drop(group);
    let _ = std::fs::remove_dir_all(&clone);
}

/// The `sh` blocks of the README's "Relay between two local clients": the start (secret, API
/// key, tern in the background) and what follows once tern serves.
fn tryout_blocks(readme: &str) -> (String, String) {
    let section = readme
        .split("### Relay between two local clients")
        .nth(1)
        .expect("README has a \"Relay between two local clients\" section");
    let section = section.split("\n## ").next().unwrap();
    let blocks: Vec<String> = section
        .split("```sh\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().to_string())
        .collect();
    assert_eq!(
        blocks.len(),
        2,
        "the try-out has a start block and a then block"
    );
    (blocks[0].clone(), blocks[1].clone())
}

/// The try-out typed into one shell as a newcomer would: the start block, then (once tern
/// answers) the second block. uclient relays with nothing lost, the endpoint and the
/// credentials subcommand mint, and `kill %1` stops tern.
#[test]
fn readme_tryout_relays_between_two_local_clients_as_written() {
    let curl = Command::new("curl").arg("--version").output().is_ok();
    if !required(curl, "curl", "apt-get install curl") || !coturn_tool("turnutils_uclient") {
        return;
    }
    let _ports = DEFAULT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(clone) = fresh_clone() else { return };
    let (start, then) = tryout_blocks(&std::fs::read_to_string(clone.join("README.md")).unwrap());
    default_ports_free();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let mut command = Command::new("bash");
    command
        .current_dir(&clone)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUST_LOG")
        .env_remove("SECRET")
        .env_remove("API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().expect("spawn bash");
    let mut stdin = child.stdin.take().unwrap();
    let output = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
    }
    let mut group = Group(child);
    let output_so_far = || output.lock().unwrap().join("\n");

    use std::io::Write;
    stdin.write_all(start.as_bytes()).unwrap();
    // A release build from scratch takes minutes on a small machine.
    let deadline = Instant::now() + Duration::from_secs(1500);
    while !answers_binding() {
        assert!(
            Instant::now() < deadline,
            "the try-out's tern does not serve; output:\n{}",
            output_so_far()
        );
        assert!(
            group.0.try_wait().unwrap().is_none(),
            "the shell ended; output:\n{}",
            output_so_far()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    stdin.write_all(then.as_bytes()).unwrap();
    stdin.write_all(b"exit\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while group.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the try-out did not finish; output:\n{}",
            output_so_far()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The readers see the end of the output once every process of the group closed it.
    std::thread::sleep(Duration::from_millis(500));
    let text = output_so_far();

    let (sent, received, lost) = uclient_totals(&text);
    assert!(sent >= 200, "two clients x 100 messages:\n{text}");
    assert_eq!((received, lost), (sent, 0), "nothing lost:\n{text}");
    // curl's answer has no newline at its end: the next output follows on the same line.
    let minted = text.match_indices('{').find_map(|(at, _)| {
        let json: serde_json::Value = serde_json::Deserializer::from_str(&text[at..])
            .into_iter()
            .next()?
            .ok()?;
        (json["username"].is_string() && json["password"].is_string()).then_some(json)
    });
    assert!(minted.is_some(), "curl minted nothing:\n{text}");
    assert!(
        text.contains("username: ") && text.lines().any(|l| l.starts_with("password: ")),
        "the credentials subcommand printed no credential:\n{text}"
    );
    // `kill %1` stopped tern: the ports are free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind("0.0.0.0:3478").is_err() {
        assert!(
            Instant::now() < deadline,
            "tern still runs after kill %1:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(group);
    let _ = std::fs::remove_dir_all(&clone);
}
