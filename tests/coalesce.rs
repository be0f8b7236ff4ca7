//! Wake-up coalescing (`udp-coalesce-us`) must not slow down what it cannot batch: a lone request
//! to an idle server, or one client waiting for each answer before its next request. Run with the
//! longest pause allowed (20 ms), so a pause taken where it should not be shows plainly against
//! loopback round trips of a fraction of a millisecond.

mod common;

use common::{binding_request, Tern};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const PAUSE: Duration = Duration::from_millis(20);

/// Round trip of one Binding request on `socket` (connected to tern).
fn binding_rtt(socket: &UdpSocket) -> Duration {
    let request = binding_request();
    let mut buf = [0u8; 512];
    let sent = Instant::now();
    socket.send(&request).unwrap();
    let len = socket.recv(&mut buf).expect("Binding answered");
    assert!(len >= 20 && buf[0..2] == [0x01, 0x01], "a Binding success");
    sent.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
fn coalescing_adds_no_delay_at_idle_or_to_a_request_response_loop() {
    let tern = Tern::start(
        "udp-coalesce-us = 20000\nrelay-threads = 1\nunauthenticated-rate-limit = 0\nlog-level = \"warn\"",
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(tern.addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    // Lone requests to an idle server, 30 ms apart.
    let idle: Vec<Duration> = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(30));
            binding_rtt(&socket)
        })
        .collect();
    // One client, each request sent when the previous answer arrives: ten thousand requests a
    // second or so, which a rate test alone would take for load worth pausing for. A pause
    // collects nothing but the next request, so pausing must back off.
    let looped: Vec<Duration> = (0..3000).map(|_| binding_rtt(&socket)).collect();
    let delayed = looped.iter().filter(|rtt| **rtt >= PAUSE * 3 / 4).count();

    let (idle, looped_median) = (median(idle), median(looped));
    // Pausing after every wake-up would put both medians at about 20 ms.
    assert!(idle < PAUSE / 2, "idle Binding median RTT {idle:?}");
    assert!(
        looped_median < PAUSE / 2,
        "request-response median RTT {looped_median:?}"
    );
    assert!(
        delayed < 300,
        "{delayed} of 3000 requests waited for a pause"
    );
}
