//! The binary as an operator meets it: config errors, the credentials subcommand, reloads.

mod common;

use common::webrtc::turn_client as client;
use common::{free_port, relay_range, unix_now, TempFile, Tern, SECRET};
use std::process::Command;
use std::time::Duration;

fn tern() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tern"));
    command.env_remove("RUST_LOG");
    command
}

#[test]
fn bad_config_value_names_key_and_value_and_exits_before_binding() {
    let port = free_port();
    let config = TempFile::new("bad-value.toml", &format!("listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = 60000\nmax-port = 50000\n"));
    let output = tern().arg("--config").arg(&config.0).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("min-port") && stderr.contains("60000"),
        "{stderr}"
    );
    // The file and the line the key is on.
    let at = format!(
        "{}:3: min-port: invalid value \"60000\"",
        config.0.display()
    );
    assert!(stderr.contains(&at), "{stderr}");
    // Nothing was bound: the port is still free.
    std::net::UdpSocket::bind(("127.0.0.1", port)).expect("port still free");
}

#[test]
fn unknown_key_and_bad_address_are_named() {
    let config = TempFile::new("typo.toml", "listening-prot = 3478\n");
    let output = tern().arg("--config").arg(&config.0).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "tern: configuration error: {}:1: unknown key \"listening-prot\" (did you mean \"listening-port\"?)",
        config.0.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    let config = TempFile::new("bad-ip.toml", "denied-peer-ip = [\"10.0.0.0/33\"]\n");
    let output = tern().arg("--config").arg(&config.0).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("denied-peer-ip") && stderr.contains("10.0.0.0/33"),
        "{stderr}"
    );
}

/// Runs tern expecting a configuration error: exit status 2 within 20 s (killed and failed if it
/// starts serving instead); its stderr.
fn config_error(command: &mut Command) -> String {
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tern started instead of refusing its configuration");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn key_after_the_users_table_is_refused_not_taken_as_a_user() {
    let port = free_port();
    let config = TempFile::new(
        "after-users.toml",
        &format!(
            "listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nno-http = true\n\n[users]\nalice = \"pw\"\nrealm = \"x\"\n"
        ),
    );
    let stderr = config_error(tern().arg("--config").arg(&config.0));
    let expected = format!(
        "{}:7: \"realm\" is inside the [users] table (keys after a [table] header belong to it): move it above [users]",
        config.0.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    std::net::UdpSocket::bind(("127.0.0.1", port)).expect("port still free");
}

#[test]
fn flag_and_environment_errors_name_the_flag_or_variable() {
    let port = free_port().to_string();
    let base = [
        "--listening-ip=127.0.0.1",
        "--no-http",
        "--listening-port",
        &port,
    ];
    let stderr = config_error(tern().args(base).arg("--min-port=70000"));
    assert!(
        stderr.contains(
            "flag --min-port: min-port: invalid value \"70000\": expected an integer in 0..=65535"
        ),
        "{stderr}"
    );
    let stderr = config_error(tern().args(base).env("TERN_RELAY_IP", "eth0"));
    assert!(
        stderr.contains("environment variable TERN_RELAY_IP: relay-ip: invalid value \"eth0\""),
        "{stderr}"
    );
    let stderr = config_error(tern().args(base).arg("--no-udp=maybe"));
    assert!(
        stderr.contains("flag --no-udp: no-udp: invalid value \"maybe\""),
        "{stderr}"
    );
}

/// `udp-gso = false` (formerly the hidden TERN_NO_GSO) is a key: tern runs and answers without GSO.
#[test]
fn udp_gso_off_still_serves() {
    let tern = Tern::start("udp-gso = false");
    let minted = tern::credentials::mint(SECRET, Some("gso"), 600, unix_now());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = client(tern.addr, &minted.username, &minted.password).await;
        client
            .allocate()
            .await
            .expect("allocation with udp-gso off");
        client.close().await.unwrap();
    });
}

#[test]
fn secret_is_never_echoed_in_a_config_error() {
    let config = TempFile::new("bad-secret.toml", "static-auth-secret = 42\n");
    let output = tern().arg("--config").arg(&config.0).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("static-auth-secret"));
}

#[test]
fn credentials_subcommand_prints_a_working_rest_credential() {
    let output = tern()
        .args([
            "credentials",
            "--secret",
            SECRET,
            "--user",
            "alice",
            "--ttl",
            "600",
            "--uri",
            "turn:127.0.0.1:3478",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} in {stdout}"))
            .to_string()
    };
    let username = field("username:");
    let password = field("password:");
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry.abs_diff(unix_now() + 600) <= 5);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(json["username"], username.as_str());
    assert_eq!(json["credential"], password.as_str());
    assert_eq!(json["urls"][0], "turn:127.0.0.1:3478");

    // And the server accepts it.
    let tern = Tern::start("");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = client(tern.addr, &username, &password).await;
        client
            .allocate()
            .await
            .expect("allocation with the printed credential");
        client.close().await.unwrap();
    });
}

async fn can_allocate(server: std::net::SocketAddr, secret: &str) -> bool {
    let minted = tern::credentials::mint(secret, Some("rotation"), 600, unix_now());
    let client = client(server, &minted.username, &minted.password).await;
    let ok = client.allocate().await.is_ok();
    client.close().await.unwrap();
    ok
}

#[test]
fn sighup_rotates_secrets_and_a_bad_file_keeps_the_running_config() {
    let port = free_port();
    let (min, max) = relay_range();
    let base = format!("listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\nlog-level = \"info\"\n");
    let tern = Tern::start_with_config(
        port,
        &format!("{base}static-auth-secret = \"old-secret\"\n"),
    );
    let config_path = tern.config_path();
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &tern.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(700));
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert!(runtime.block_on(can_allocate(tern.addr, "old-secret")));
    assert!(!runtime.block_on(can_allocate(tern.addr, "new-secret")));

    // Rotation: both secrets verify during the overlap.
    std::fs::write(
        &config_path,
        format!("{base}static-auth-secret = [\"new-secret\", \"old-secret\"]\n"),
    )
    .unwrap();
    hangup();
    assert!(runtime.block_on(can_allocate(tern.addr, "new-secret")));
    assert!(runtime.block_on(can_allocate(tern.addr, "old-secret")));

    // A broken file is refused and the running config stays.
    std::fs::write(&config_path, "this is = not [valid toml").unwrap();
    hangup();
    assert!(runtime.block_on(can_allocate(tern.addr, "new-secret")));
    assert!(tern.logs().contains("reload refused"), "{}", tern.logs());
    assert!(
        !tern.logs().contains("new-secret"),
        "secrets stay out of logs"
    );

    // A restart-only key that changed is named; it keeps its running value.
    std::fs::write(
        &config_path,
        format!("{base}relay-threads = 3\nstatic-auth-secret = \"new-secret\"\n"),
    )
    .unwrap();
    hangup();
    let logs = tern.logs();
    let warned = logs
        .lines()
        .any(|line| line.contains("only on restart") && line.contains("relay-threads"));
    assert!(warned, "{logs}");
    assert!(runtime.block_on(can_allocate(tern.addr, "new-secret")));
}

/// log-file, no-stdout-log and pidfile (coTURN's names): logs go only to the file, the pid file
/// holds the pid while tern runs and is removed when it stops.
#[test]
fn log_file_no_stdout_log_and_pidfile() {
    let log = TempFile::new("log-file.log", "");
    let pid = TempFile::new("tern.pid", "");
    std::fs::remove_file(&pid.0).unwrap();
    let tern = Tern::start(&format!(
        "log-file = \"{}\"\nno-stdout-log = true\npidfile = \"{}\"\n",
        log.0.display(),
        pid.0.display()
    ));
    let written = std::fs::read_to_string(&pid.0).unwrap();
    assert_eq!(written.trim(), tern.pid().to_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log.0)
        .unwrap()
        .contains("tern started")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing logged to the file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!tern.logs().contains("tern started"), "{}", tern.logs());
    let status = Command::new("kill")
        .args(["-TERM", &tern.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    while pid.0.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "pidfile not removed at exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unwritable_log_file_is_a_configuration_error() {
    let port = free_port().to_string();
    let stderr = config_error(tern().args([
        "--listening-ip=127.0.0.1",
        "--no-http",
        "--listening-port",
        &port,
        "--log-file=/nonexistent-dir/tern.log",
    ]));
    assert!(
        stderr.contains("log-file: invalid value \"/nonexistent-dir/tern.log\": cannot open"),
        "{stderr}"
    );
}
