//! The independent UDP TURN client of these tests: webrtc-rs's `turn` client.

use super::{unix_now, SECRET};
use std::net::SocketAddr;
use std::sync::Arc;
use turn::client::{Client, ClientConfig};

/// A listening webrtc-rs TURN client for `server` with these long-term credentials.
pub async fn turn_client(server: SocketAddr, username: &str, password: &str) -> Client {
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client_on(conn, server, username, password).await
}

/// The same on `socket` (bound already, e.g. in a network namespace of the test's), with a
/// fresh REST credential for `user`.
pub async fn turn_client_on(socket: std::net::UdpSocket, server: SocketAddr, user: &str) -> Client {
    socket.set_nonblocking(true).unwrap();
    let conn = tokio::net::UdpSocket::from_std(socket).unwrap();
    let minted = tern::credentials::mint(SECRET, Some(user), 600, unix_now());
    client_on(conn, server, &minted.username, &minted.password).await
}

async fn client_on(
    conn: tokio::net::UdpSocket,
    server: SocketAddr,
    username: &str,
    password: &str,
) -> Client {
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_string(),
        password: password.to_string(),
        realm: "tern".to_string(),
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

/// The same with a fresh REST credential (10 minutes) for `user`, signed with the test secret.
pub async fn turn_client_for(server: SocketAddr, user: &str) -> Client {
    let minted = tern::credentials::mint(SECRET, Some(user), 600, unix_now());
    turn_client(server, &minted.username, &minted.password).await
}
