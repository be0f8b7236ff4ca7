//! Headless Chromium for the tests (Debian's `chromium` package, no download at test time): the
//! browser itself, optionally inside a network namespace, and the test's own web server that
//! serves the page under test and receives its result as JSON on `POST /report`. Under CI=true a
//! missing Chromium fails the test; elsewhere it is reported and skipped.

use super::certs::TestCert;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;

/// Long enough for Chromium to start, gather, connect, move 1 MiB and decode video on a slow CI
/// machine; the page reports well before on a healthy run.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(90);

/// The Chromium binary: `TERN_CHROMIUM` or `chromium` on the PATH. `None` (skip) when missing,
/// except under CI=true, where that fails the test.
pub fn chromium() -> Option<PathBuf> {
    let binary = std::env::var_os("TERN_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"));
    let found = Command::new(&binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    super::tools::required(found, "chromium", "apt-get install chromium").then_some(binary)
}

/// A headless Chromium showing one URL, with a fresh profile; killed (and its profile removed)
/// on drop.
pub struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    pub fn open(binary: &PathBuf, url: &str, trust: Option<&TestCert>) -> Browser {
        Self::open_in(None, binary, url, trust)
    }

    /// The same, with its network inside namespace `netns` (`ip netns exec`).
    pub fn open_in(
        netns: Option<&str>,
        binary: &PathBuf,
        url: &str,
        trust: Option<&TestCert>,
    ) -> Browser {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "tern-chromium-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
                // Fake camera, no permission prompt, autoplay without a gesture.
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                // tern listens on 127.0.0.1 in the tests; let WebRTC use loopback.
                "--allow-loopback-in-peer-connection",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(trust.map(trust_flags).unwrap_or_default())
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        Browser { child, profile }
    }
}

/// Makes Chromium accept tern's test certificate for TURN over TLS: the leaf's public key is
/// pinned with `--ignore-certificate-errors-spki-list` (it applies to WebRTC's TLS sockets too,
/// needs `--user-data-dir`, and accepts only a chain holding that key, unlike
/// `--ignore-certificate-errors`). A TLS run without it fails with 701 on every candidate.
pub fn trust_flags(cert: &TestCert) -> Vec<String> {
    vec![format!(
        "--ignore-certificate-errors-spki-list={}",
        cert.spki_pin()
    )]
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The two-peer page: relay-only RTCPeerConnections, 1 MiB over a data channel, fake video.
pub const E2E_PAGE: &str = include_str!("../browser/e2e.html");

/// The test's own web server: the e2e page at `/e2e.html`, reports in on `POST /report`.
pub struct Harness {
    pub base: String,
    reports: mpsc::UnboundedReceiver<Value>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0").unwrap()).await
    }

    /// The same on `listener` (bound already, e.g. in a network namespace of the test's).
    pub async fn start_on(listener: std::net::TcpListener) -> Harness {
        let (sender, reports) = mpsc::unbounded_channel();
        let app = Router::new()
            .route(
                "/e2e.html",
                get(|| async { axum::response::Html(E2E_PAGE) }),
            )
            .route(
                "/report",
                post(
                    |State(sender): State<mpsc::UnboundedSender<Value>>, body: Bytes| async move {
                        let report = serde_json::from_slice(&body).unwrap_or_else(
                            |_| serde_json::json!({ "unparsed": String::from_utf8_lossy(&body) }),
                        );
                        let _ = sender.send(report);
                    },
                ),
            )
            .with_state(sender);
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Harness { base, reports }
    }

    pub async fn next_report(&mut self, what: &str) -> Value {
        tokio::time::timeout(REPORT_TIMEOUT, self.reports.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("{what}: no report from the browser within {REPORT_TIMEOUT:?}")
            })
            .expect("report channel")
    }
}

pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
