//! The container image as it ships: a static binary built by cargo, put in deploy/Dockerfile's
//! image (`--target prebuilt`, which pulls nothing) by podman, run with host networking on a
//! mounted coTURN turnserver.conf at coTURN's path, as user nobody, and relayed through with
//! coTURN's `turnutils_uclient`. Under CI=true a missing podman, runc or uclient fails the test;
//! elsewhere it is skipped.
//!
//! The static build is the long part (several minutes the first time; cargo keeps it in
//! target/container/ for the next run). Progress goes to standard error as it happens.

mod common;

use common::tools::{coturn_tool, required, run_uclient_against, uclient_totals};
use common::{free_port, free_tcp_port, relay_range, TempFile, SECRET};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What the Dockerfile's USER names.
const IMAGE_UID: u32 = 65534;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Progress, shown as it happens (the test harness captures `eprintln!` until the end).
fn progress(started: Instant, what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "container test [{:>4}s]: {what}",
        started.elapsed().as_secs()
    );
}

fn podman() -> Command {
    Command::new("podman")
}

/// Runs `command`; its stdout, failing the test with everything it said if it fails.
fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(output.status.success(), "{command:?}:\n{}", shown(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn shown(output: &Output) -> String {
    format!(
        "{:?}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The image and container this test made, removed however the test ends.
struct Cleanup {
    image: String,
    container: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &self.container])
            .output();
        let _ = podman().args(["rmi", "--force", &self.image]).output();
    }
}

fn container_logs(name: &str) -> String {
    podman()
        .args(["logs", name])
        .output()
        .map(|o| shown(&o))
        .unwrap_or_default()
}

/// The host's target triple (the static binary is built for it, as the Dockerfile does).
fn host_triple() -> String {
    let output = run_ok(Command::new("rustc").arg("-vV"));
    output
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// `cargo build` of a static tern, as deploy/Dockerfile's build stage does it, into
/// target/container/ (its own directory: the flags differ from the test build's).
fn build_static_binary() -> PathBuf {
    let triple = host_triple();
    let target_dir = repo().join("target/container");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "tern",
            "--bin",
            "tern",
        ])
        .args(["--target", &triple])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(repo())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "the static build failed: {status:?}");
    let binary = target_dir.join(triple).join("release/tern");
    assert!(
        !needs_interpreter(&std::fs::read(&binary).unwrap()),
        "{} is linked statically (no ELF interpreter)",
        binary.display()
    );
    binary
}

/// Whether a 64-bit little-endian ELF file asks for a dynamic loader (a PT_INTERP header).
fn needs_interpreter(elf: &[u8]) -> bool {
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "a 64-bit little-endian ELF file"
    );
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([elf[at], elf[at + 1]]));
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
    })
}

/// A coTURN configuration as coTURN's image reads it, for this test's loopback port, relay range
/// and HTTP port (coTURN's `prometheus` keys put tern's HTTP endpoint there).
fn coturn_conf(port: u16, http: u16) -> String {
    let (min, max) = relay_range();
    format!(
        "# coTURN's turnserver.conf, mounted where coTURN's image reads it\n\
         listening-ip=127.0.0.1\nlistening-port={port}\nmin-port={min}\nmax-port={max}\n\
         fingerprint\nuse-auth-secret\nstatic-auth-secret={SECRET}\nrealm=tern.test\n\
         no-cli\nno-tls\nno-dtls\nrelay-threads=2\n\
         prometheus\nprometheus-address=127.0.0.1\nprometheus-port={http}\n\
         # uclient's clients relay to each other on loopback, on RFC 5766 channel numbers.\n\
         allow-loopback-peers\nrfc5766-channel-numbers\n"
    )
}

/// Every metric family the Grafana dashboard queries.
fn dashboard_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/tern.json")).unwrap();
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("tern_"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn image_serves_a_mounted_coturn_conf_as_nobody_and_relays() {
    let tools = ["podman", "runc"]
        .iter()
        .all(|tool| Command::new(tool).arg("--version").output().is_ok());
    if !required(tools, "podman and runc", "apt-get install podman runc")
        || !coturn_tool("turnutils_uclient")
    {
        return;
    }
    let started = Instant::now();
    progress(
        started,
        "building the static binary (cargo build --release, crt-static)",
    );
    let binary = build_static_binary();

    let id = std::process::id();
    let cleanup = Cleanup {
        image: format!("localhost/tern-container-test:{id}"),
        container: format!("tern-container-test-{id}"),
    };
    progress(started, &format!("podman build {}", cleanup.image));
    let context = repo().join(format!("target/container/context-{id}"));
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(&binary, context.join("tern")).unwrap();
    // --format docker keeps the HEALTHCHECK (the OCI format has no place for it); no
    // intermediate images are kept, so removing the tagged one removes everything.
    let built = podman()
        .args([
            "build",
            "--format",
            "docker",
            "--layers=false",
            "--target",
            "prebuilt",
        ])
        .arg("--file")
        .arg(repo().join("deploy/Dockerfile"))
        .args(["--tag", &cleanup.image])
        .arg(&context)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&context);
    assert!(built.status.success(), "podman build:\n{}", shown(&built));

    let (port, http) = (free_port(), free_tcp_port());
    let conf = TempFile::new("turnserver.conf", &coturn_conf(port, http));
    progress(
        started,
        &format!(
            "podman run {} (TURN on 127.0.0.1:{port})",
            cleanup.container
        ),
    );
    // runc: crun refuses this host's hybrid cgroups. The ulimits stay within the hard limits
    // a non-root container may have (podman's defaults exceed them here).
    run_ok(
        podman()
            .args(["--runtime", "runc", "run", "--detach"])
            .args(["--name", &cleanup.container])
            .args(["--network", "host"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .arg("--volume")
            .arg(format!("{}:/etc/turnserver.conf:ro", conf.0.display()))
            .arg(&cleanup.image),
    );

    // The image's HEALTHCHECK (`tern health`, finding /etc/turnserver.conf on the image's list
    // and http-listen in it) passes once tern serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let check = podman()
            .args(["healthcheck", "run", &cleanup.container])
            .output()
            .unwrap();
        if check.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the HEALTHCHECK did not pass within 30 s: {}\ncontainer logs:\n{}",
            shown(&check),
            container_logs(&cleanup.container)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    progress(started, "healthy");
    let logs = container_logs(&cleanup.container);
    assert!(
        logs.contains("configuration file read") && logs.contains("/etc/turnserver.conf"),
        "tern read the mounted coTURN file:\n{logs}"
    );

    // Not root: the container's process, seen from the host.
    let pid = run_ok(podman().args(["inspect", "--format", "{{.State.Pid}}", &cleanup.container]));
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uids: Vec<u32> = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .expect("a Uid line")
        .split_whitespace()
        .map(|uid| uid.parse().unwrap())
        .collect();
    assert_eq!(uids, [IMAGE_UID; 4], "real, effective, saved and fs uid");

    progress(started, "relaying with turnutils_uclient -W");
    let text = run_uclient_against(
        || container_logs(&cleanup.container),
        "127.0.0.1",
        port,
        &[],
    );
    let (sent, received, lost) = uclient_totals(&text);
    assert!(sent >= 200, "4 clients x 50 messages, got {sent}:\n{text}");
    assert_eq!((received, lost), (sent, 0), "nothing lost:\n{text}");

    // /metrics on the coTURN file's prometheus port has every family the dashboard queries.
    let metrics = ureq::get(&format!("http://127.0.0.1:{http}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let sample = |line: &str| -> Option<(String, f64)> {
        let (series, value) = line.rsplit_once(' ')?;
        let name = series.split('{').next()?;
        Some((name.to_string(), value.parse().ok()?))
    };
    let samples: Vec<(String, f64)> = metrics.lines().filter_map(sample).collect();
    for metric in dashboard_metrics() {
        assert!(
            samples.iter().any(|(name, _)| *name == metric),
            "{metric} in /metrics:\n{metrics}"
        );
    }
    let created: f64 = samples
        .iter()
        .filter(|(name, _)| name == "tern_allocations_created_total")
        .map(|(_, value)| value)
        .sum();
    assert!(created >= 4.0, "uclient's allocations counted: {created}");

    // The image's STOPSIGNAL stops tern cleanly.
    run_ok(podman().args(["stop", "--time", "20", &cleanup.container]));
    let code = run_ok(podman().args([
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &cleanup.container,
    ]));
    assert_eq!(code.trim(), "0", "exit status after SIGTERM");
    progress(started, "done");
}
