//! A real browser through tern: headless Chromium (Debian's `chromium` package, no download at
//! test time) runs two relay-only `RTCPeerConnection`s in one page with credentials from tern's
//! endpoint, once through tern over each client transport (UDP, TCP, TLS, checked with the
//! selected pair's `relayProtocol`), and tern's own Trickle ICE page. Under CI=true a missing Chromium fails the run;
//! elsewhere the tests are reported and skipped.
//!
//! The e2e page (`tests/browser/e2e.html`) is served by a throwaway axum server in the test,
//! which also receives the page's result as JSON on `POST /report`.

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use common::certs::TestCert;
use common::{http, mint_from_endpoint, TempFile, Tern};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;

const API_KEY: &str = "browser-test-api-key-0123";
const E2E_PAGE: &str = include_str!("browser/e2e.html");
/// Long enough for Chromium to start, gather, connect, move 1 MiB and decode video on a slow CI
/// machine; the page reports well before on a healthy run.
const REPORT_TIMEOUT: Duration = Duration::from_secs(90);

/// The Chromium binary: `TERN_CHROMIUM` or `chromium` on the PATH. `None` (skip) when missing,
/// except under CI=true, where that fails the test.
fn chromium() -> Option<PathBuf> {
    let binary = std::env::var_os("TERN_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"));
    let found = Command::new(&binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    common::tools::required(found, "chromium", "apt-get install chromium").then_some(binary)
}

/// A headless Chromium showing one URL, with a fresh profile; killed (and its profile removed)
/// on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    fn open(binary: &PathBuf, url: &str, trust: Option<&TestCert>) -> Browser {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "tern-chromium-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new(binary)
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
fn trust_flags(cert: &TestCert) -> Vec<String> {
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

/// The test's own web server: the e2e page at `/e2e.html`, reports in on `POST /report`.
struct Harness {
    base: String,
    reports: mpsc::UnboundedReceiver<Value>,
}

impl Harness {
    async fn start() -> Harness {
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Harness { base, reports }
    }

    async fn next_report(&mut self, what: &str) -> Value {
        tokio::time::timeout(REPORT_TIMEOUT, self.reports.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("{what}: no report from the browser within {REPORT_TIMEOUT:?}")
            })
            .expect("report channel")
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn start_tern() -> Tern {
    // The browser's two relay candidates talk to each other through 127.0.0.1.
    Tern::start(&format!(
        "allow-loopback-peers = true\napi-keys = [\"{API_KEY}\"]"
    ))
}

/// tern with TLS too: a throwaway CA's `localhost`/127.0.0.1 certificate, on a TLS port of its
/// own (and sniffed on the plain one).
struct TlsTern {
    tern: Tern,
    tls_port: u16,
    cert: TestCert,
    _files: (TempFile, TempFile),
}

fn start_tls_tern() -> TlsTern {
    let cert = TestCert::generate();
    let cert_file = TempFile::new("browser-cert.pem", &cert.cert_pem);
    let key_file = TempFile::new("browser-key.pem", &cert.key_pem);
    let tls_port = common::free_tcp_port();
    let tern = Tern::start(&format!(
        "allow-loopback-peers = true\napi-keys = [\"{API_KEY}\"]\ntls-listening-port = {tls_port}\n\
         cert = \"{}\"\npkey = \"{}\"",
        cert_file.0.display(),
        key_file.0.display()
    ));
    TlsTern {
        tern,
        tls_port,
        cert,
        _files: (cert_file, key_file),
    }
}

/// The TURN URLs to test the browser through, each named by the `relayProtocol` the browser
/// must report for it. The endpoint hands out `turns:` with the IP address; a browser checks the
/// certificate against the host it dialled, so the test dials `localhost` (the certificate's
/// name), as a deployment would list its host name in `public-uris`.
fn transports(tls: &TlsTern, uris: &[String]) -> Vec<(&'static str, String)> {
    let port = tls.tern.port;
    let udp = format!("turn:127.0.0.1:{port}?transport=udp");
    let tcp = format!("turn:127.0.0.1:{port}?transport=tcp");
    let turns = format!("turns:127.0.0.1:{}?transport=tcp", tls.tls_port);
    assert_eq!(uris, [udp.clone(), tcp.clone(), turns], "{uris:?}");
    vec![
        ("udp", udp),
        ("tcp", tcp),
        (
            "tls",
            format!("turns:localhost:{}?transport=tcp", tls.tls_port),
        ),
    ]
}

/// `tern_relayed_bytes_total{direction="to_peer"}` now.
fn relayed_to_peer(tern: &Tern) -> u64 {
    http("GET", &tern.url("/metrics"), None, None)
        .body
        .lines()
        .find_map(|l| l.strip_prefix("tern_relayed_bytes_total{direction=\"to_peer\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_peers_connect_through_tern_relays() {
    let Some(binary) = chromium() else { return };
    let tls = start_tls_tern();
    let tern = &tls.tern;
    let mut harness = Harness::start().await;
    let (username, password, uris) = mint_from_endpoint(tern, API_KEY, "browser");
    for (name, url) in transports(&tls, &uris) {
        let relayed_before = relayed_to_peer(tern);
        let page = format!(
            "{}/e2e.html?name={name}&url={}&username={}&credential={}",
            harness.base,
            encode(&url),
            encode(&username),
            encode(&password)
        );
        let browser = Browser::open(&binary, &page, Some(&tls.cert));
        let report = harness.next_report(name).await;
        drop(browser);
        eprintln!("{name}: {report}");
        let context = format!("{name}: {report:#}\ntern logs:\n{}", tern.logs());
        assert!(report["error"].is_null(), "{context}");
        assert!(
            report["relayCandidates"]["pc1"].as_u64() >= Some(1),
            "{context}"
        );
        assert!(
            report["relayCandidates"]["pc2"].as_u64() >= Some(1),
            "{context}"
        );
        assert_eq!(report["otherCandidates"], 0, "relay policy: {context}");
        assert_eq!(report["connected"], true, "{context}");
        assert_eq!(report["bytesReceived"], 1024 * 1024, "{context}");
        assert_eq!(report["byteExact"], true, "{context}");
        assert!(report["framesDecoded"].as_u64() > Some(0), "{context}");
        assert_eq!(report["selectedPair"]["local"], "relay", "{context}");
        assert_eq!(report["selectedPair"]["remote"], "relay", "{context}");
        // The browser reached tern over the transport under test.
        assert_eq!(
            report["selectedPair"]["localRelayProtocol"], name,
            "{context}"
        );
        // The relayed media and data went through tern: the metrics saw them (UDP workers
        // publish every 500 ms, stream connections as they go).
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let relayed = relayed_to_peer(tern) - relayed_before;
            if relayed >= 1024 * 1024 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: {relayed} bytes relayed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(!tern.logs().contains(API_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_ice_page_shows_relay_candidates() {
    let Some(binary) = chromium() else { return };
    let tern = start_tern();
    let mut harness = Harness::start().await;
    let (username, password, _) = mint_from_endpoint(&tern, API_KEY, "trickle");
    let url = format!("turn:127.0.0.1:{}?transport=udp", tern.port);
    let page = tern.url(&format!(
        "/?url={}&username={}&credential={}&auto=1&report={}",
        encode(&url),
        encode(&username),
        encode(&password),
        encode(&format!("{}/report", harness.base))
    ));
    let browser = Browser::open(&binary, &page, None);
    let report = harness.next_report("trickle ICE page").await;
    drop(browser);
    eprintln!("trickle ICE page: {report}");
    let context = format!("{report:#}\ntern logs:\n{}", tern.logs());
    assert_eq!(report["done"], true, "{context}");
    assert_eq!(report["relay"], true, "{context}");
    let candidates = report["candidates"].as_array().unwrap();
    let relay = candidates
        .iter()
        .find(|c| c["type"] == "relay")
        .unwrap_or_else(|| panic!("{context}"));
    assert_eq!(relay["address"], "127.0.0.1", "{context}");
    assert_eq!(relay["protocol"], "udp", "{context}");
    assert!(report["errors"].as_array().unwrap().is_empty(), "{context}");
}
