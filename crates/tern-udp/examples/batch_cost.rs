//! CPU per single-datagram send and receive on loopback: this crate's `SendBatch`/`RecvBatch`
//! against the way they worked before (a one-message `sendmmsg` with 32 zeroed headers; 32
//! zeroed receive headers per `recvmmsg`), in alternating rounds, as thread CPU time (so other
//! load on the machine stretches the wall clock, not the figures).
//!
//!   cargo run --release -p tern-udp --example batch_cost [ROUNDS] [DATAGRAMS]

use std::mem::{size_of, zeroed};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Duration;
use tern_udp::{to_raw, RecvBatch, SendBatch, BATCH};

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The former `SendBatch::flush` of one datagram: 32 zeroed `mmsghdr`, 32 zeroed addresses.
fn old_send(fd: i32, data: &[u8], to: &std::net::SocketAddr) {
    // SAFETY: zeroed C structs; pointers to locals alive for the call.
    unsafe {
        let mut iov: [libc::iovec; BATCH] = zeroed();
        let mut name: [libc::sockaddr_storage; BATCH] = zeroed();
        let len = to_raw(to, &mut name[0]);
        iov[0] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut msgs: [libc::mmsghdr; BATCH] = zeroed();
        msgs[0].msg_hdr.msg_name = (&mut name[0] as *mut libc::sockaddr_storage).cast();
        msgs[0].msg_hdr.msg_namelen = len;
        msgs[0].msg_hdr.msg_iov = &mut iov[0];
        msgs[0].msg_hdr.msg_iovlen = 1;
        libc::sendmmsg(fd, msgs.as_mut_ptr(), 1, libc::MSG_DONTWAIT);
    }
}

/// The former `RecvBatch::recv`: 32 `iovec` and 32 `mmsghdr` zeroed and filled per call.
fn old_recv(fd: i32, data: &mut [u8], stride: usize) -> isize {
    // SAFETY: as the former code: zeroed headers pointing into `data` and locals.
    unsafe {
        let mut iov: [libc::iovec; BATCH] = zeroed();
        let mut msgs: [libc::mmsghdr; BATCH] = zeroed();
        let mut names: [libc::sockaddr_storage; BATCH] = zeroed();
        for i in 0..BATCH {
            iov[i] = libc::iovec {
                iov_base: data.as_mut_ptr().add(i * stride).cast(),
                iov_len: stride,
            };
            msgs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            BATCH as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        ) as isize
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = b.local_addr().unwrap();
    let payload = [7u8; 100];
    let mut batch = RecvBatch::new(2048);
    let mut raw = vec![0u8; 2048 * BATCH];
    let (mut old_ns, mut new_ns) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let old = round % 2 == 0;
        let (mut send, mut recv) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..count {
            let t = thread_cpu();
            if old {
                old_send(a.as_raw_fd(), &payload, &to);
            } else {
                let mut out = SendBatch::new();
                out.push(&payload, Some(&to));
                out.flush(a.as_raw_fd());
            }
            let u = thread_cpu();
            let got = if old {
                old_recv(b.as_raw_fd(), &mut raw, 2048)
            } else {
                batch.recv(b.as_raw_fd(), 0, 2048, BATCH).unwrap() as isize
            };
            assert_eq!(got, 1);
            send += u - t;
            recv += thread_cpu() - u;
        }
        let per = |d: Duration| d.as_nanos() as f64 / count as f64;
        let cell = (per(send), per(recv));
        if old {
            old_ns.push(cell)
        } else {
            new_ns.push(cell)
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (name, cells) in [("before", &old_ns), ("now", &new_ns)] {
        let mut send: Vec<f64> = cells.iter().map(|c| c.0).collect();
        let mut recv: Vec<f64> = cells.iter().map(|c| c.1).collect();
        println!(
            "{name}: send {:.0} ns, receive {:.0} ns per datagram (medians of {rounds} rounds of {count}; ranges {:.0}–{:.0}, {:.0}–{:.0})",
            median(&mut send),
            median(&mut recv),
            send[0],
            send[send.len() - 1],
            recv[0],
            recv[recv.len() - 1]
        );
    }
}
