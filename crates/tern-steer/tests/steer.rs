//! The steering program on real sockets: two listener sockets (two "workers") in one
//! SO_REUSEPORT group on loopback, clients from their own sockets. Needs root (CAP_BPF) and the
//! clang-built program: under CI=true a missing one fails the test; elsewhere it says SKIPPED.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;
use tern_steer::Steering;

fn required(found: bool, what: &str) -> bool {
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} is missing under CI=true"
        );
        eprintln!("SKIPPED: {what} is missing");
    }
    found
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    required(root, "root (CAP_BPF)")
        && required(
            tern_steer::built(),
            "the steering program (clang, libbpf-dev)",
        )
}

fn reuseport(addr: SocketAddr) -> UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket.into()
}

/// Which of `workers` receives a datagram `client` sends to `server` (each datagram must land
/// on exactly one).
fn lands_on(client: &UdpSocket, server: SocketAddr, workers: &[UdpSocket]) -> usize {
    client.send_to(b"hello", server).unwrap();
    let mut buf = [0u8; 16];
    let mut found = None;
    // On loopback the datagram is queued on its socket by the time send_to returns.
    for (i, worker) in workers.iter().enumerate() {
        worker.set_nonblocking(true).unwrap();
        if let Ok((_, from)) = worker.recv_from(&mut buf) {
            assert_eq!(from, client.local_addr().unwrap());
            assert!(found.is_none(), "one datagram, two sockets");
            found = Some(i);
        }
    }
    found.expect("the datagram reached a worker")
}

#[test]
fn pinned_clients_stay_with_their_worker_while_new_ones_follow_the_budget() {
    if !can_run() {
        return;
    }
    let first = reuseport("127.0.0.1:0".parse().unwrap());
    let server = first.local_addr().unwrap();
    let workers = vec![first, reuseport(server)];
    let fds = vec![workers[0].as_raw_fd(), workers[1].as_raw_fd()];
    let steering = Steering::attach(&[fds], 100, 1024).expect("attach the program");
    let client = || UdpSocket::bind("127.0.0.1:0").unwrap();

    // Light load: every new client goes to worker 0.
    let (a, b) = (client(), client());
    for _ in 0..3 {
        assert_eq!(lands_on(&a, server, &workers), 0);
        assert_eq!(lands_on(&b, server, &workers), 0);
    }
    // a's allocation lives on worker 0, b's on worker 1 (as if b had allocated there earlier).
    steering.pin(a.local_addr().unwrap(), server, 0).unwrap();
    steering.pin(b.local_addr().unwrap(), server, 1).unwrap();
    assert_eq!(steering.owner(b.local_addr().unwrap(), server), Some(1));
    assert_eq!(
        lands_on(&b, server, &workers),
        1,
        "a pinned client goes to its owner"
    );

    // Worker 0 goes over the budget: new clients go to worker 1, pinned ones stay put.
    steering.publish_load(0, 500).unwrap();
    let c = client();
    for _ in 0..3 {
        assert_eq!(lands_on(&c, server, &workers), 1);
        assert_eq!(lands_on(&a, server, &workers), 0);
        assert_eq!(lands_on(&b, server, &workers), 1);
    }

    // Both over the budget: the kernel's hash picks for new clients; pinned ones stay put.
    steering.publish_load(1, 500).unwrap();
    for _ in 0..8 {
        let d = client();
        lands_on(&d, server, &workers);
    }
    assert_eq!(lands_on(&a, server, &workers), 0);
    assert_eq!(lands_on(&b, server, &workers), 1);

    // Load gone, b's allocation ended: b is a new client again and goes to worker 0; a stays.
    steering.publish_load(0, 0).unwrap();
    steering.publish_load(1, 0).unwrap();
    steering.unpin(b.local_addr().unwrap(), server);
    assert_eq!(steering.owner(b.local_addr().unwrap(), server), None);
    for _ in 0..3 {
        assert_eq!(lands_on(&b, server, &workers), 0);
        assert_eq!(lands_on(&a, server, &workers), 0);
        assert_eq!(lands_on(&c, server, &workers), 0);
    }
}
