//! A real browser through tern: headless Chromium (Debian's `chromium` package, no download at
//! test time) runs two relay-only `RTCPeerConnection`s in one page with credentials from tern's
//! endpoint, once through tern over each client transport (UDP, TCP, TLS, checked with the
//! selected pair's `relayProtocol`), and tern's own Trickle ICE page. Under CI=true a missing Chromium fails the run;
//! elsewhere the tests are reported and skipped.
//!
//! The e2e page (`tests/browser/e2e.html`) is served by a throwaway axum server in the test,
//! which also receives the page's result as JSON on `POST /report`.

mod common;

use common::certs::TestCert;
use common::chromium::{chromium, encode, Browser, Harness};
use common::{http, mint_from_endpoint, TempFile, Tern};
use std::time::Duration;

const API_KEY: &str = "browser-test-api-key-0123";

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
