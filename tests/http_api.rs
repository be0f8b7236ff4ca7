//! The HTTP endpoint of a running tern: credential endpoint (shapes, key check, ttl cap, minted
//! credentials allocating, rotation), `/metrics` moving while an allocation relays, health and
//! the admin API.

mod common;

use common::certs::{https, negotiated_alpn, TestCert};
use common::stream_client::{closed, read_frame, StreamTurn};
use common::webrtc::turn_client as client;
use common::{hangup, http, mint_from_endpoint, unix_now, EchoPeer, Reply, TempFile, Tern};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use webrtc_util::Conn;

const API_KEY: &str = "test-api-key-0123456789";
const ADMIN_KEY: &str = "test-admin-key-0123456789";

fn post_credentials(tern: &Tern, key: Option<&str>, body: Option<&str>) -> Reply {
    http("POST", &tern.url("/api/v1/credentials"), key, body)
}

/// Allocates with a credential the endpoint minted; true if the server granted it.
async fn allocates(server: SocketAddr, minted: &Value) -> bool {
    let username = minted["username"].as_str().unwrap();
    let password = minted["password"].as_str().unwrap();
    let client = client(server, username, password).await;
    let ok = client.allocate().await.is_ok();
    client.close().await.unwrap();
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_endpoint_shapes_key_check_and_ttl_cap() {
    let tern = Tern::start(&format!(
        "api-keys = [\"{API_KEY}\"]\nmax-credential-ttl = 600"
    ));
    // UDP and TCP are on by default; TLS is not (no certificate).
    let uri = [
        format!("turn:127.0.0.1:{}?transport=udp", tern.port),
        format!("turn:127.0.0.1:{}?transport=tcp", tern.port),
    ];

    // No body: defaults, with the ttl capped by max-credential-ttl.
    let reply = post_credentials(&tern, Some(API_KEY), None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.content_type.starts_with("application/json"));
    let minted = reply.json();
    assert_eq!(minted["ttl"], 600);
    let username = minted["username"].as_str().unwrap();
    let expiry: u64 = username
        .parse()
        .expect("no user: the username is the expiry");
    assert!(expiry.abs_diff(unix_now() + 600) <= 5);
    assert_eq!(minted["uris"], serde_json::json!(uri));
    // The browser shape carries the same credential.
    let ice = &minted["iceServers"][0];
    assert_eq!(ice["urls"], minted["uris"]);
    assert_eq!(ice["username"], minted["username"]);
    assert_eq!(ice["credential"], minted["password"]);

    // A user and a ttl; a ttl above the cap is capped.
    let minted = post_credentials(&tern, Some(API_KEY), Some(r#"{"user":"alice","ttl":60}"#));
    let minted = minted.json();
    assert_eq!(minted["ttl"], 60);
    assert!(minted["username"].as_str().unwrap().ends_with(":alice"));
    let capped = post_credentials(&tern, Some(API_KEY), Some(r#"{"ttl":1000000}"#)).json();
    assert_eq!(capped["ttl"], 600);

    // The minted credentials allocate on the running server.
    assert!(allocates(tern.addr, &minted).await);
    assert!(allocates(tern.addr, &capped).await);

    // Wrong or missing key: 401 with a JSON error, nothing echoed.
    for key in [Some("wrong-key-0123456789"), None] {
        let reply = post_credentials(&tern, key, Some(r#"{"user":"alice"}"#));
        assert_eq!(reply.status, 401);
        assert_eq!(reply.json()["error"], "invalid or missing API key");
        assert!(!reply.body.contains("wrong-key") && !reply.body.contains(API_KEY));
    }

    // Bad bodies: 400 naming the field.
    for (body, field) in [
        (r#"{"ttl":"x"}"#, "ttl"),
        (r#"{"ttl":-5}"#, "ttl"),
        (r#"{"user":42}"#, "user"),
        (r#"{"usr":"alice"}"#, "body"),
        ("not json", "body"),
    ] {
        let reply = post_credentials(&tern, Some(API_KEY), Some(body));
        assert_eq!(reply.status, 400, "{body}");
        let error = reply.json();
        assert_eq!(error["field"], field, "{body}");
        assert!(error["error"].as_str().unwrap().starts_with(field));
    }

    // The draft's GET shape.
    let url = tern.url(&format!(
        "/api/v1/credentials?service=turn&username=bob&key={API_KEY}"
    ));
    let reply = http("GET", &url, None, None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let minted = reply.json();
    assert!(minted["username"].as_str().unwrap().ends_with(":bob"));
    assert_eq!(minted["uris"], serde_json::json!(uri));
    assert!(allocates(tern.addr, &minted).await);
    let url = tern.url("/api/v1/credentials?service=turn&username=bob&key=nope");
    assert_eq!(http("GET", &url, None, None).status, 401);
    let url = tern.url(&format!("/api/v1/credentials?username=bob&key={API_KEY}"));
    let reply = http("GET", &url, None, None);
    assert_eq!(
        (reply.status, reply.json()["field"].clone()),
        (400, "service".into())
    );

    // Secrets stay out of the logs.
    let logs = tern.logs();
    assert!(!logs.contains(API_KEY) && !logs.contains(common::SECRET));
}

#[test]
fn without_api_keys_the_endpoint_refuses_and_public_uris_are_handed_out() {
    let tern = Tern::start("public-uris = [\"turn:turn.example.com:3478?transport=udp\"]");
    let reply = post_credentials(&tern, Some(API_KEY), None);
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["error"], "no api-keys configured");

    let tern = Tern::start(&format!(
        "api-keys = \"{API_KEY}\"\npublic-uris = [\"turn:turn.example.com:3478?transport=udp\", \"turns:turn.example.com:443?transport=tcp\"]"
    ));
    let minted = post_credentials(&tern, Some(API_KEY), None).json();
    assert_eq!(
        minted["uris"],
        serde_json::json!([
            "turn:turn.example.com:3478?transport=udp",
            "turns:turn.example.com:443?transport=tcp"
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_minted_right_after_a_rotation_verify() {
    let port = common::free_port();
    let (min, max) = common::relay_range();
    let base = format!(
        "listening-ip = \"127.0.0.1\"\nlistening-port = {port}\nmin-port = {min}\nmax-port = {max}\n\
         api-keys = [\"{API_KEY}\"]\nhttp-listen = \"127.0.0.1:{}\"\n",
        common::free_tcp_port()
    );
    let tern = Tern::start_with_config(
        port,
        &format!("{base}static-auth-secret = \"old-secret\"\n"),
    );
    let minted = post_credentials(&tern, Some(API_KEY), Some(r#"{"user":"rot"}"#)).json();
    let signed_with = |minted: &Value, secret: &str| {
        let username = minted["username"].as_str().unwrap();
        tern::auth::rest_password(secret, username) == minted["password"].as_str().unwrap()
    };
    assert!(signed_with(&minted, "old-secret"));
    assert!(allocates(tern.addr, &minted).await);

    // Rotate: the new secret goes first, so it signs; both verify.
    std::fs::write(
        tern.config_path(),
        format!("{base}static-auth-secret = [\"new-secret\", \"old-secret\"]\n"),
    )
    .unwrap();
    hangup(&tern);
    // The first credential signed with the new secret must allocate at once: the endpoint
    // signs with a secret only after every worker has taken it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let minted = loop {
        let minted = post_credentials(&tern, Some(API_KEY), Some(r#"{"user":"rot"}"#)).json();
        if signed_with(&minted, "new-secret") {
            break minted;
        }
        assert!(
            Instant::now() < deadline,
            "the endpoint never signed with the new secret"
        );
    };
    assert!(allocates(tern.addr, &minted).await);

    // The old secret retired: credentials it signed no longer verify, new ones do.
    std::fs::write(
        tern.config_path(),
        format!("{base}static-auth-secret = \"new-secret\"\n"),
    )
    .unwrap();
    hangup(&tern);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let old = tern::credentials::mint("old-secret", Some("rot"), 600, unix_now());
    let old = serde_json::json!({"username": old.username, "password": old.password});
    assert!(!allocates(tern.addr, &old).await);
    let minted = post_credentials(&tern, Some(API_KEY), Some(r#"{"user":"rot"}"#)).json();
    assert!(signed_with(&minted, "new-secret"));
    assert!(allocates(tern.addr, &minted).await);
    assert!(!tern.logs().contains("new-secret"));
}

/// The value of the sample `name` (with labels, as printed) in a scrape, 0 if absent.
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or(0)
}

fn scrape(tern: &Tern) -> String {
    let reply = http("GET", &tern.url("/metrics"), None, None);
    assert_eq!(reply.status, 200);
    assert!(
        reply.content_type.contains("openmetrics-text"),
        "{}",
        reply.content_type
    );
    reply.body
}

/// Scrapes until `check` holds (workers publish every 500 ms), up to 3 s.
fn scrape_until(tern: &Tern, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let metrics = scrape(tern);
        if check(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{what}; last scrape:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_while_an_allocation_relays() {
    let tern = Tern::start(&format!(
        "allow-loopback-peers = true\napi-keys = [\"{API_KEY}\"]"
    ));
    let before = scrape(&tern);
    assert_eq!(sample(&before, "tern_allocations{transport=\"udp\"}"), 0);
    let free_before = sample(&before, "tern_relay_ports_free");
    assert_eq!(free_before, 100);
    assert!(!before.contains("alice"), "no per-user labels");

    let minted = post_credentials(&tern, Some(API_KEY), Some(r#"{"user":"alice"}"#)).json();
    let echo = EchoPeer::start(Duration::from_secs(30));
    let client = client(
        tern.addr,
        minted["username"].as_str().unwrap(),
        minted["password"].as_str().unwrap(),
    )
    .await;
    let relay = client.allocate().await.expect("allocate");
    let mut buf = vec![0u8; 2048];
    for i in 0..10 {
        relay.send_to(&[i as u8; 100], echo.addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(3), relay.recv_from(&mut buf))
            .await
            .expect("echo")
            .unwrap();
    }

    // While the allocation lives (coTURN only reports at session end, #1205).
    let live = scrape_until(&tern, "allocation and traffic show while live", |m| {
        sample(m, "tern_allocations{transport=\"udp\"}") == 1
            && sample(m, "tern_relayed_packets_total{direction=\"to_peer\"}") >= 10
            && sample(m, "tern_relayed_packets_total{direction=\"to_client\"}") >= 10
    });
    assert!(sample(&live, "tern_relayed_bytes_total{direction=\"to_peer\"}") >= 1000);
    assert!(sample(&live, "tern_relayed_bytes_total{direction=\"to_client\"}") >= 1000);
    assert_eq!(sample(&live, "tern_allocations_created_total"), 1);
    assert_eq!(sample(&live, "tern_relay_ports_free"), free_before - 1);
    assert!(
        sample(
            &live,
            "tern_requests_total{method=\"allocate\",code=\"200\"}"
        ) >= 1
    );
    // The client's first Allocate is challenged.
    assert!(
        sample(
            &live,
            "tern_requests_total{method=\"allocate\",code=\"401\"}"
        ) >= 1
    );
    assert!(!live.contains("alice"), "no per-user labels");

    relay.close().await.unwrap();
    client.close().await.unwrap();
    // Closing deletes the allocation (Refresh lifetime 0).
    scrape_until(&tern, "allocation ended", |m| {
        sample(m, "tern_allocations{transport=\"udp\"}") == 0
            && sample(m, "tern_allocations_deleted_total") == 1
    });

    // An unknown credential is an auth failure with its reason.
    let stranger = serde_json::json!({"username": "nobody", "password": "x"});
    assert!(!allocates(tern.addr, &stranger).await);
    scrape_until(&tern, "auth failure counted", |m| {
        sample(m, "tern_auth_failures_total{reason=\"unknown_user\"}") >= 1
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_admin_api() {
    // Without admin keys the admin API does not exist.
    let plain = Tern::start("");
    assert_eq!(
        http(
            "GET",
            &plain.url("/api/v1/admin/allocations"),
            Some(ADMIN_KEY),
            None
        )
        .status,
        404
    );
    let healthz = http("GET", &plain.url("/healthz"), None, None);
    assert_eq!(
        (healthz.status, healthz.json()["status"].clone()),
        (200, "ok".into())
    );
    drop(plain);

    let tern = Tern::start(&format!(
        "api-keys = [\"{API_KEY}\"]\nadmin-api-keys = [\"{ADMIN_KEY}\"]"
    ));
    assert_eq!(http("GET", &tern.url("/readyz"), None, None).status, 200);
    let admin = |method: &str, path: &str| http(method, &tern.url(path), Some(ADMIN_KEY), None);

    // The API key is not an admin key.
    let reply = http(
        "GET",
        &tern.url("/api/v1/admin/allocations"),
        Some(API_KEY),
        None,
    );
    assert_eq!(reply.status, 401);

    // Two allocations of carol, one of dave.
    let mut clients = Vec::new();
    for user in ["carol", "carol", "dave"] {
        let body = format!("{{\"user\":\"{user}\"}}");
        let minted = post_credentials(&tern, Some(API_KEY), Some(&body)).json();
        let client = client(
            tern.addr,
            minted["username"].as_str().unwrap(),
            minted["password"].as_str().unwrap(),
        )
        .await;
        let relay = client.allocate().await.expect("allocate");
        clients.push((client, relay));
    }
    let list = admin("GET", "/api/v1/admin/allocations").json();
    let allocations = list["allocations"].as_array().unwrap().clone();
    assert_eq!(allocations.len(), 3, "{list}");
    for allocation in &allocations {
        assert_eq!(allocation["transport"], "udp");
        assert!(allocation["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        assert!(allocation["relay"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        assert!(allocation["age_secs"].is_u64());
        assert!(allocation["bytes_to_peer"].is_u64());
    }
    let relays: Vec<String> = clients
        .iter()
        .map(|(_, relay)| relay.local_addr().unwrap().to_string())
        .collect();
    for allocation in &allocations {
        assert!(relays.contains(&allocation["relay"].as_str().unwrap().to_string()));
    }

    // Delete dave's by id.
    let dave = allocations
        .iter()
        .find(|a| a["user"].as_str().unwrap().ends_with(":dave"))
        .unwrap();
    let path = format!("/api/v1/admin/allocations/{}", dave["id"].as_str().unwrap());
    assert_eq!(admin("DELETE", &path).json()["deleted"], 1);
    assert_eq!(admin("DELETE", &path).status, 404);
    assert_eq!(
        admin("DELETE", "/api/v1/admin/allocations/not-an-id").status,
        404
    );

    // Delete all of carol's.
    let reply = admin("DELETE", "/api/v1/admin/users/carol/allocations");
    assert_eq!(reply.json()["deleted"], 2);
    let list = admin("GET", "/api/v1/admin/allocations").json();
    assert_eq!(list["allocations"].as_array().unwrap().len(), 0, "{list}");

    // Drain: not ready, new allocations refused, existing traffic unaffected; then resume.
    let reply = http(
        "POST",
        &tern.url("/api/v1/admin/drain"),
        Some(ADMIN_KEY),
        None,
    );
    assert_eq!(reply.json()["draining"], true);
    let ready = http("GET", &tern.url("/readyz"), None, None);
    assert_eq!(
        (ready.status, ready.json()["reason"].clone()),
        (503, "draining".into())
    );
    assert_eq!(http("GET", &tern.url("/healthz"), None, None).status, 200);
    let minted = post_credentials(&tern, Some(API_KEY), Some(r#"{"user":"late"}"#)).json();
    assert!(
        !allocates(tern.addr, &minted).await,
        "draining refuses new allocations"
    );
    scrape_until(&tern, "drain shows in metrics", |m| {
        sample(m, "tern_draining") == 1
            && sample(m, "tern_requests_total{method=\"allocate\",code=\"486\"}") >= 1
    });
    assert_eq!(
        admin("DELETE", "/api/v1/admin/drain").json()["draining"],
        false
    );
    assert_eq!(http("GET", &tern.url("/readyz"), None, None).status, 200);
    assert!(allocates(tern.addr, &minted).await);

    for (client, _) in clients {
        let _ = client.close().await;
    }
    assert!(!tern.logs().contains(ADMIN_KEY));
}

#[test]
fn no_http_switches_the_endpoint_off_and_unknown_paths_are_json_404() {
    let tern = Tern::start("");
    let reply = http("GET", &tern.url("/nope"), None, None);
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (404, "not found".into())
    );
    let page = http("GET", &tern.url("/"), None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Trickle ICE") && page.body.contains(&tern.port.to_string()));

    let port = common::free_tcp_port();
    let off = Tern::start(&format!(
        "no-http = true\nhttp-listen = \"127.0.0.1:{port}\""
    ));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    drop(off);
}

/// A TCP connection to tern with a 5 s read timeout.
fn tcp_connect(addr: SocketAddr) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn tls_connect(port: u16, cert: &TestCert) -> TlsStream {
    let tcp = tcp_connect(SocketAddr::from(([127, 0, 0, 1], port)));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(cert.client_config(), name).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

#[test]
fn tcp_and_tls_allocations_show_in_metrics_and_the_admin_api() {
    let cert = TestCert::generate();
    let cert_file = TempFile::new("admin-streams-cert.pem", &cert.cert_pem);
    let key_file = TempFile::new("admin-streams-key.pem", &cert.key_pem);
    let tls_port = common::free_tcp_port();
    let tern = Tern::start(&format!(
        "allow-loopback-peers = true\napi-keys = [\"{API_KEY}\"]\nadmin-api-keys = [\"{ADMIN_KEY}\"]\n\
         tls-listening-port = {tls_port}\ncert = \"{}\"\npkey = \"{}\"",
        cert_file.0.display(),
        key_file.0.display()
    ));
    let admin = |method: &str, path: &str| http(method, &tern.url(path), Some(ADMIN_KEY), None);
    let before = scrape(&tern);
    for transport in ["tcp", "tls"] {
        let gauge = format!("tern_connections{{transport=\"{transport}\"}}");
        assert!(before.contains(&format!("{gauge} 0")), "{before}");
    }

    // The derived URIs name every listener.
    let (tcp_user, tcp_password, uris) = mint_from_endpoint(&tern, API_KEY, "streamer");
    let port = tern.port;
    assert_eq!(
        uris,
        [
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:127.0.0.1:{port}?transport=tcp"),
            format!("turns:127.0.0.1:{tls_port}?transport=tcp"),
        ]
    );

    // A TCP allocation relaying to an echo peer (Send indications out, Data indications back).
    let echo = EchoPeer::start(Duration::from_secs(30));
    let mut tcp = StreamTurn::new(tcp_connect(tern.addr), &tcp_user, &tcp_password, "tern");
    let tcp_relay = tcp.allocate().expect("TCP allocate");
    tcp.create_permission(echo.addr).unwrap();
    for i in 0..5u8 {
        tcp.send(echo.addr, &[i; 100]).unwrap();
        let frame = read_frame(&mut tcp.stream).unwrap();
        assert_eq!(frame[..2], [0x00, 0x17], "a Data indication");
    }
    // A TLS allocation of another user.
    let (tls_user, tls_password, _) = mint_from_endpoint(&tern, API_KEY, "secure");
    let mut tls = StreamTurn::new(
        tls_connect(tls_port, &cert),
        &tls_user,
        &tls_password,
        "tern",
    );
    let tls_relay = tls.allocate().expect("TLS allocate");
    // A wrong password over TCP is an authentication failure like any other.
    let mut wrong = StreamTurn::new(tcp_connect(tern.addr), &tcp_user, "wrong", "tern");
    assert_eq!(wrong.allocate(), Err(401));
    drop(wrong);

    let live = scrape_until(&tern, "stream allocations and connections show", |m| {
        sample(m, "tern_allocations{transport=\"tcp\"}") == 1
            && sample(m, "tern_allocations{transport=\"tls\"}") == 1
            && sample(m, "tern_connections{transport=\"tcp\"}") == 1
            && sample(m, "tern_connections{transport=\"tls\"}") == 1
            && sample(m, "tern_auth_failures_total{reason=\"bad_integrity\"}") >= 1
    });
    assert_eq!(sample(&live, "tern_allocations{transport=\"udp\"}"), 0);
    assert_eq!(sample(&live, "tern_allocations_created_total"), 2);
    assert!(
        sample(
            &live,
            "tern_requests_total{method=\"allocate\",code=\"200\"}"
        ) >= 2
    );
    assert!(
        sample(
            &live,
            "tern_requests_total{method=\"allocate\",code=\"401\"}"
        ) >= 3
    );
    assert!(
        sample(
            &live,
            "tern_requests_total{method=\"create_permission\",code=\"200\"}"
        ) >= 1
    );
    assert!(sample(&live, "tern_relayed_packets_total{direction=\"to_peer\"}") >= 5);
    assert!(sample(&live, "tern_relayed_packets_total{direction=\"to_client\"}") >= 5);
    assert!(sample(&live, "tern_relayed_bytes_total{direction=\"to_peer\"}") >= 500);
    assert_eq!(sample(&live, "tern_relay_ports_free"), 98);

    // The admin API lists both, with ids of their own.
    let list = admin("GET", "/api/v1/admin/allocations").json();
    let allocations = list["allocations"].as_array().unwrap().clone();
    assert_eq!(allocations.len(), 2, "{list}");
    let find = |transport: &str| {
        allocations
            .iter()
            .find(|a| a["transport"] == transport)
            .unwrap_or_else(|| panic!("no {transport} allocation: {list}"))
            .clone()
    };
    let (on_tcp, on_tls) = (find("tcp"), find("tls"));
    assert!(
        on_tcp["id"].as_str().unwrap().starts_with("tcp-"),
        "{on_tcp}"
    );
    assert!(
        on_tls["id"].as_str().unwrap().starts_with("tls-"),
        "{on_tls}"
    );
    assert_eq!(on_tcp["relay"], tcp_relay.to_string());
    assert_eq!(on_tls["relay"], tls_relay.to_string());
    assert_eq!(on_tcp["user"], tcp_user.as_str());
    assert_eq!(
        on_tcp["client"],
        tcp.stream.local_addr().unwrap().to_string()
    );
    assert!(on_tcp["bytes_to_peer"].as_u64() >= Some(500), "{on_tcp}");

    // Deleting the TCP one by id ends the allocation and closes its connection.
    let path = format!(
        "/api/v1/admin/allocations/{}",
        on_tcp["id"].as_str().unwrap()
    );
    assert_eq!(admin("DELETE", &path).json()["deleted"], 1);
    assert!(closed(&mut tcp.stream), "the TCP connection is closed");
    assert_eq!(admin("DELETE", &path).status, 404);
    assert_eq!(
        admin("DELETE", "/api/v1/admin/allocations/tcp-999-0-0").status,
        404
    );
    // The TLS one by user.
    let reply = admin("DELETE", "/api/v1/admin/users/secure/allocations");
    assert_eq!(reply.json()["deleted"], 1);
    assert!(closed(&mut tls.stream), "the TLS connection is closed");
    let list = admin("GET", "/api/v1/admin/allocations").json();
    assert_eq!(list["allocations"].as_array().unwrap().len(), 0, "{list}");
    let after = scrape_until(&tern, "stream allocations and connections gone", |m| {
        sample(m, "tern_allocations{transport=\"tcp\"}") == 0
            && sample(m, "tern_allocations{transport=\"tls\"}") == 0
            && sample(m, "tern_connections{transport=\"tcp\"}") == 0
            && sample(m, "tern_connections{transport=\"tls\"}") == 0
    });
    assert_eq!(sample(&after, "tern_allocations_deleted_total"), 2);
    assert_eq!(sample(&after, "tern_relay_ports_free"), 100);
    assert!(!tern.logs().contains(ADMIN_KEY));
}

#[test]
fn https_endpoint_uses_the_tls_certificate_and_follows_reloads() {
    let cert_a = TestCert::generate();
    let cert_b = TestCert::generate();
    let cert_file = TempFile::new("https-cert.pem", &cert_a.cert_pem);
    let key_file = TempFile::new("https-key.pem", &cert_a.key_pem);
    // HTTPS works without the TURN TLS listener (no-tls): the certificate loads for HTTPS alone.
    let tern = Tern::start(&format!(
        "http-tls = true\nno-tls = true\napi-keys = [\"{API_KEY}\"]\ncert = \"{}\"\npkey = \"{}\"",
        cert_file.0.display(),
        key_file.0.display()
    ));
    let port = tern.http.unwrap().port();

    let (status, body) = https(port, &cert_a, "GET", "/healthz", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        https(port, &cert_a, "POST", "/api/v1/credentials", Some(API_KEY)).unwrap();
    assert_eq!(status, 200, "{body}");
    let minted: Value = serde_json::from_str(&body).unwrap();
    assert!(
        !minted["uris"].to_string().contains("turns:"),
        "no-tls: no turns: URI: {minted}"
    );
    let (status, _) = https(port, &cert_a, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    // HTTP/2 when the client offers it, HTTP/1.1 otherwise.
    assert_eq!(
        negotiated_alpn(port, &cert_a, &[b"h2", b"http/1.1"]).as_deref(),
        Some(&b"h2"[..])
    );
    assert_eq!(
        negotiated_alpn(port, &cert_a, &[b"http/1.1"]).as_deref(),
        Some(&b"http/1.1"[..])
    );
    // Plain HTTP gets no answer on the HTTPS port.
    {
        use std::io::{Read, Write};
        let mut plain = tcp_connect(tern.http.unwrap());
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer);
        assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    }
    // A client trusting another CA refuses the certificate.
    assert!(https(port, &cert_b, "GET", "/healthz", None).is_err());

    // The certificate replaced on disk: HTTPS follows without a restart or signal.
    cert_b.install(&cert_file.0, &key_file.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while https(port, &cert_b, "GET", "/healthz", None).is_err() {
        assert!(
            Instant::now() < deadline,
            "HTTPS still serves the old certificate; logs:\n{}",
            tern.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(https(port, &cert_b, "GET", "/readyz", None).unwrap().0, 200);
}

// ----- the endpoint's limits, through raw sockets -----

/// A raw HTTP/1.1 connection to the endpoint.
fn http_socket(tern: &Tern) -> std::net::TcpStream {
    tcp_connect(tern.http.expect("HTTP on"))
}

/// The status line and headers of the next response (up to the blank line).
fn read_head(stream: &mut std::net::TcpStream) -> std::io::Result<String> {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// `tern_http_refused_total{reason="<reason>"}` now.
fn http_refused(tern: &Tern, reason: &str) -> u64 {
    let name = format!("tern_http_refused_total{{reason=\"{reason}\"}}");
    sample(&scrape(tern), &name)
}

#[test]
fn slow_headers_and_idle_connections_are_cut_by_the_header_timeout() {
    // Before, the plain HTTP listener had no header-read timeout: a client sending its headers
    // a byte at a time held its connection for as long as it liked.
    use std::io::Write;
    let tern = Tern::start("http-header-timeout = 2");
    let mut slow = http_socket(&tern);
    slow.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: tern\r\nX-Slow: {}",
        "a".repeat(200)
    );
    let started = Instant::now();
    let mut cut = false;
    for byte in request.bytes() {
        if slow.write_all(&[byte]).is_err() || closed(&mut slow) {
            cut = true;
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never cut");
    }
    assert!(cut, "the whole slow request was taken");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "cut early: {took:?}");

    // An idle keep-alive connection is closed after it too.
    let mut idle = http_socket(&tern);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: tern\r\n\r\n")
        .unwrap();
    assert!(read_head(&mut idle).unwrap().starts_with("HTTP/1.1 200"));
    idle.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let mut body = [0u8; 64];
    let _ = std::io::Read::read(&mut idle, &mut body); // the JSON body
    assert!(closed(&mut idle), "idle keep-alive connection left open");
    assert!(http_refused(&tern, "header_timeout") >= 2);
}

#[test]
fn connections_past_http_max_connections_are_closed_at_once() {
    // Before, the endpoint took any number of connections.
    let tern = Tern::start("http-max-connections = 3\nhttp-header-timeout = 60");
    // Three keep-alive connections, each served once and held open.
    let served = |tern: &Tern| {
        let mut stream = http_socket(tern);
        let _ = std::io::Write::write_all(&mut stream, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        let ok = read_head(&mut stream).is_ok_and(|head| head.starts_with("HTTP/1.1 200"));
        let mut body = [0u8; 15]; // {"status":"ok"}
        (ok && std::io::Read::read_exact(&mut stream, &mut body).is_ok()).then_some(stream)
    };
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while held.len() < 3 {
        // (The harness's readiness probe may still hold a slot for a moment.)
        match served(&tern) {
            Some(stream) => held.push(stream),
            None => std::thread::sleep(Duration::from_millis(100)),
        }
        assert!(Instant::now() < deadline, "3 connections not served");
    }
    let mut fourth = http_socket(&tern);
    let _ = std::io::Write::write_all(&mut fourth, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    // Closed (or reset, its request unread) without an answer.
    let head = read_head(&mut fourth);
    assert!(
        !head.as_ref().is_ok_and(|head| head.starts_with("HTTP/")),
        "a 4th connection was served: {head:?}"
    );
    // Once the others end, a fresh client is served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while served(&tern).is_none() {
        assert!(Instant::now() < deadline, "no slot came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(http_refused(&tern, "max_connections") >= 1);
}

#[test]
fn the_api_key_is_checked_before_the_body_and_bodies_are_small() {
    use std::io::Write;
    let tern = Tern::start(&format!("api-keys = [\"{API_KEY}\"]"));
    // A wrong key announcing a 2 MB body: 401 at once, before a byte of it is sent (before,
    // the endpoint read up to 2 MB and only then looked at the key), and the connection closes.
    let mut wrong = http_socket(&tern);
    wrong
        .write_all(
            b"POST /api/v1/credentials HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \
              wrong-key-0123456789\r\nContent-Type: application/json\r\n\
              Content-Length: 2000000\r\n\r\n",
        )
        .unwrap();
    let head = read_head(&mut wrong).expect("an answer without the body");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    wrong
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(closed(&mut wrong), "the body is not waited for");
    assert!(http_refused(&tern, "unauthorized") >= 1);

    // The right key with a body over 16 KiB: 413, JSON.
    let mut large = http_socket(&tern);
    let body = format!("{{\"user\":\"{}\"}}", "a".repeat(20 * 1024));
    let request = format!(
        "POST /api/v1/credentials HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    large.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut large).unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("application/json"),
        "{head}"
    );
    assert_eq!(http_refused(&tern, "body_too_large"), 1);
    // A small one still mints.
    let reply = post_credentials(&tern, Some(API_KEY), Some(r#"{"user":"alice"}"#));
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn a_request_slower_than_the_request_timeout_gets_408() {
    use std::io::Write;
    let tern = Tern::start(&format!(
        "api-keys = [\"{API_KEY}\"]\nhttp-request-timeout = 2"
    ));
    // The body trickles in a byte at a time: each arrives in time, the whole does not.
    let mut slow = http_socket(&tern);
    slow.write_all(
        format!(
            "POST /api/v1/credentials HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n\
             Content-Length: 100\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    slow.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while started.elapsed() < Duration::from_secs(10) && !head.ends_with(b"\r\n\r\n") {
        let _ = slow.write_all(b" ");
        match std::io::Read::read(&mut slow, &mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(http_refused(&tern, "request_timeout"), 1);
}
