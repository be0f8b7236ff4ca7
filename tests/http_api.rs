//! The HTTP endpoint of a running tern: credential endpoint (shapes, key check, ttl cap, minted
//! credentials allocating, rotation), `/metrics` moving while an allocation relays, health and
//! the admin API.

mod common;

use common::{hangup, http, unix_now, EchoPeer, Reply, Tern};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

const API_KEY: &str = "test-api-key-0123456789";
const ADMIN_KEY: &str = "test-admin-key-0123456789";

fn post_credentials(tern: &Tern, key: Option<&str>, body: Option<&str>) -> Reply {
    http("POST", &tern.url("/api/v1/credentials"), key, body)
}

async fn client(server: SocketAddr, username: &str, password: &str) -> Client {
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.into(),
        password: password.into(),
        realm: "tern".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("client");
    client.listen().await.expect("listen");
    client
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
