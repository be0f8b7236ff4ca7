//! The built-in UDP echo peer: every datagram goes back to its sender, in batches
//! (recvmmsg/sendmmsg), on 127.0.0.1 or ::1. Bounded in time; stops when asked.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tern_udp::{RecvBatch, SendBatch, BATCH};

/// Largest datagram echoed.
const SLOT: usize = 2048;

pub struct Echo {
    pub addrs: Vec<SocketAddr>,
    /// Datagrams echoed so far, all threads.
    pub echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    /// Starts `threads` echo sockets on the loopback address of `family_of`'s family.
    pub fn start(threads: usize, family_of: SocketAddr, lifetime: Duration) -> io::Result<Echo> {
        let bind = if family_of.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let echoed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(family_of),
                socket2::Type::DGRAM,
                None,
            )?;
            // Deep buffers: the echo must not be where packets are lost.
            force_buffers(&socket, 8 << 20);
            socket.bind(&bind.parse::<SocketAddr>().expect("literal").into())?;
            let socket: UdpSocket = socket.into();
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            addrs.push(socket.local_addr()?);
            let (echoed, stop) = (echoed.clone(), stop.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("echo-{i}"))
                    .spawn(move || serve(socket, &echoed, &stop, lifetime))?,
            );
        }
        Ok(Echo {
            addrs,
            echoed,
            stop,
            threads: handles,
        })
    }

    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn serve(socket: UdpSocket, echoed: &AtomicU64, stop: &AtomicBool, lifetime: Duration) {
    let deadline = Instant::now() + lifetime;
    let fd = socket.as_raw_fd();
    let mut batch = RecvBatch::new(SLOT);
    while !stop.load(Relaxed) && Instant::now() < deadline {
        let count = match batch.recv(fd, 0, SLOT, BATCH) {
            Ok(0) => {
                wait_readable(fd, 50);
                continue;
            }
            Ok(count) => count,
            Err(_) => continue,
        };
        let (slots, meta) = batch.split();
        let mut out = SendBatch::new();
        for (i, slot) in slots.take(count).enumerate() {
            let (name, len) = meta.raw_source(i);
            out.push_raw(&slot[..meta.len[i]], name, len);
        }
        out.flush(fd);
        echoed.fetch_add(count as u64, Relaxed);
    }
}

/// Blocks until `fd` is readable or `millis` pass.
pub fn wait_readable(fd: std::os::fd::RawFd, millis: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, millis) };
}

/// SO_RCVBUF/SO_SNDBUF past `net.core.rmem_max` where allowed (SO_*BUFFORCE needs
/// CAP_NET_ADMIN), else as large as the limit lets.
fn force_buffers(socket: &socket2::Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: setsockopt with a pointer to a c_int and its size.
        let forced = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                force,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !forced {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    plain,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
    }
}
