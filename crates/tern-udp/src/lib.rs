//! Batched UDP I/O for Linux: `recvmmsg` into a slab of fixed-size slots, `sendmmsg` of borrowed
//! slices, and UDP GSO sends. One system call moves up to [`BATCH`] datagrams. Used by tern's UDP
//! workers and by `tern-bench`; the only crate of the workspace with `unsafe` FFI to the socket API.

use std::io;
use std::marker::PhantomData;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call (what a raw forwarder would use; more gains little on loopback).
pub const BATCH: usize = 32;

/// Where a batch's datagrams came from, and how long each is.
pub struct RecvMeta {
    pub len: [usize; BATCH],
    name: [libc::sockaddr_storage; BATCH],
    name_len: [libc::socklen_t; BATCH],
}

impl RecvMeta {
    /// The sender of datagram `i`.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        from_raw(&self.name[i], self.name_len[i])
    }

    /// The raw sender of datagram `i`, to answer it without a conversion.
    pub fn raw_source(&self, i: usize) -> (&libc::sockaddr_storage, libc::socklen_t) {
        (&self.name[i], self.name_len[i])
    }
}

/// `BATCH` receive slots of `stride` bytes each; datagram `i` lands at `slot(i)[offset..]`.
pub struct RecvBatch {
    pub data: Box<[u8]>,
    pub stride: usize,
    pub meta: Box<RecvMeta>,
    /// The kernel's view of the slots, built once: a receive rewrites only what it changes
    /// (not 2.5 KB of headers per call).
    headers: Box<RecvHeaders>,
    /// The `(offset, limit)` the iovecs in `headers` describe.
    layout: Option<(usize, usize)>,
}

struct RecvHeaders {
    iov: [libc::iovec; BATCH],
    msgs: [libc::mmsghdr; BATCH],
}

// SAFETY: the raw pointers inside `headers` point into `data`, `meta` and `headers` itself, heap
// allocations owned by the same `RecvBatch` that do not move when it moves; they are only
// dereferenced (by the kernel) inside `recv(&mut self)`.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(stride: usize) -> RecvBatch {
        let mut batch = RecvBatch {
            data: vec![0u8; stride * BATCH].into_boxed_slice(),
            stride,
            // SAFETY: all-zero is a valid value of these plain C structs and integers.
            meta: Box::new(unsafe { zeroed() }),
            headers: Box::new(unsafe { zeroed() }),
            layout: None,
        };
        let headers = &mut *batch.headers;
        for (i, msg) in headers.msgs.iter_mut().enumerate() {
            let hdr = &mut msg.msg_hdr;
            hdr.msg_name = (&mut batch.meta.name[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_iov = &mut headers.iov[i];
            hdr.msg_iovlen = 1;
        }
        batch
    }

    /// Receives up to `max` (≤ BATCH) datagrams without blocking, each at `offset` in its slot
    /// and at most `limit` bytes long (`limit` ≤ `stride - offset`). `Ok(0)` when none is queued.
    pub fn recv(
        &mut self,
        fd: RawFd,
        offset: usize,
        limit: usize,
        max: usize,
    ) -> io::Result<usize> {
        let max = max.min(BATCH);
        let limit = limit.min(self.stride - offset);
        let headers = &mut *self.headers;
        if self.layout != Some((offset, limit)) {
            self.layout = Some((offset, limit));
            let base = self.data.as_mut_ptr();
            for (i, iov) in headers.iov.iter_mut().enumerate() {
                // SAFETY: slot `i` starts at `i * stride` inside `data`, and offset + limit ≤ stride.
                iov.iov_base = unsafe { base.add(i * self.stride + offset) }.cast();
                iov.iov_len = limit;
            }
        }
        for msg in &mut headers.msgs[..max] {
            // The kernel shortens it to the address it wrote.
            msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: every header points at a slot of `data` and a name of `meta` (see `new`),
        // both alive and exclusively borrowed for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.msgs.as_mut_ptr(),
                max as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(error),
            };
        }
        let n = n as usize;
        for (i, msg) in headers.msgs.iter().enumerate().take(n) {
            self.meta.len[i] = msg.msg_len as usize;
            self.meta.name_len[i] = msg.msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// Splits into the slots (each `stride` bytes) and the metadata, so slots can be borrowed
    /// independently while the metadata is read.
    pub fn split(&mut self) -> (std::slice::ChunksMut<'_, u8>, &RecvMeta) {
        (self.data.chunks_mut(self.stride), &self.meta)
    }
}

/// Up to `BATCH` outgoing datagrams borrowed from the caller, sent with one `sendmmsg` (one
/// datagram: `sendto`). Entries past `count` stay uninitialised: a batch costs nothing to make.
pub struct SendBatch<'a> {
    iov: [MaybeUninit<libc::iovec>; BATCH],
    name: [MaybeUninit<libc::sockaddr_storage>; BATCH],
    name_len: [libc::socklen_t; BATCH],
    count: usize,
    _data: PhantomData<&'a [u8]>,
}

impl<'a> Default for SendBatch<'a> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> SendBatch<'a> {
    pub fn new() -> SendBatch<'a> {
        SendBatch {
            iov: [const { MaybeUninit::uninit() }; BATCH],
            name: [const { MaybeUninit::uninit() }; BATCH],
            name_len: [0; BATCH],
            count: 0,
            _data: PhantomData,
        }
    }

    /// Moves `other`'s datagrams to the end of this batch (as many as fit; the caller keeps both
    /// within `BATCH`).
    pub fn append(&mut self, other: &mut SendBatch<'a>) {
        let take = other.count.min(BATCH - self.count);
        for i in 0..take {
            self.iov[self.count] = other.iov[i];
            self.name[self.count] = other.name[i];
            self.name_len[self.count] = other.name_len[i];
            self.count += 1;
        }
        other.count = 0;
    }

    /// Forgets what is queued (it was sent another way).
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Queues `data` for `dest` (`None`: the socket is connected). The caller flushes when full.
    pub fn push(&mut self, data: &'a [u8], dest: Option<&SocketAddr>) {
        debug_assert!(self.count < BATCH);
        let i = self.count;
        self.iov[i].write(libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        });
        self.name_len[i] = match dest {
            // SAFETY: all-zero is a valid sockaddr_storage.
            Some(dest) => to_raw(dest, self.name[i].write(unsafe { zeroed() })),
            None => 0,
        };
        self.count += 1;
    }

    /// Queues `data` for a raw address (as a receive reported it).
    pub fn push_raw(
        &mut self,
        data: &'a [u8],
        name: &libc::sockaddr_storage,
        name_len: libc::socklen_t,
    ) {
        debug_assert!(self.count < BATCH);
        let i = self.count;
        self.iov[i].write(libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        });
        self.name[i].write(*name);
        self.name_len[i] = name_len;
        self.count += 1;
    }

    /// Sends everything queued; returns how many the kernel took. A datagram the kernel refuses
    /// (full buffer, unreachable) is dropped, as UDP would.
    pub fn flush(&mut self, fd: RawFd) -> usize {
        let count = std::mem::take(&mut self.count);
        if count == 1 {
            return self.send_one(fd);
        }
        let mut msgs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
        for (i, msg) in msgs.iter_mut().enumerate().take(count) {
            // SAFETY: all-zero is a valid mmsghdr; entries below `count` are initialised, and
            // the pointers refer to `self` and to the borrowed data, which outlives `'a`, for
            // the duration of the calls.
            let hdr = &mut msg.write(unsafe { zeroed() }).msg_hdr;
            if self.name_len[i] > 0 {
                hdr.msg_name = self.name[i].as_mut_ptr().cast();
                hdr.msg_namelen = self.name_len[i];
            }
            hdr.msg_iov = self.iov[i].as_mut_ptr();
            hdr.msg_iovlen = 1;
        }
        let msgs = msgs.as_mut_ptr().cast::<libc::mmsghdr>();
        let mut sent = 0;
        let mut at = 0;
        while at < count {
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs.add(at),
                    (count - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let error = io::Error::last_os_error();
                if n == 0 || error.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                at += 1; // this datagram failed; skip it and carry on with the rest
                continue;
            }
            sent += n as usize;
            at += n as usize;
        }
        sent
    }

    /// The one queued datagram, with `sendto`: no message vector to copy in and walk.
    fn send_one(&mut self, fd: RawFd) -> usize {
        // SAFETY: entry 0 is initialised (count was 1); the data outlives `'a`.
        let (iov, name) = unsafe { (self.iov[0].assume_init(), self.name[0].as_ptr()) };
        let (name, name_len) = match self.name_len[0] {
            0 => (std::ptr::null(), 0),
            len => (name.cast::<libc::sockaddr>(), len),
        };
        // SAFETY: iov describes borrowed data alive for the call; name is null or initialised.
        let n = unsafe {
            libc::sendto(
                fd,
                iov.iov_base,
                iov.iov_len,
                libc::MSG_DONTWAIT,
                name,
                name_len,
            )
        };
        usize::from(n >= 0)
    }
}

/// Sets SO_RCVBUF to `bytes`; where `net.core.rmem_max` caps it lower and the process may
/// (CAP_NET_ADMIN), SO_RCVBUFFORCE. Best effort: a listener works with any buffer.
pub fn deepen_receive_buffer(socket: &std::net::UdpSocket, bytes: usize) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(socket);
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: setsockopt with a pointer to a c_int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    set(libc::SO_RCVBUF);
    let granted = socket2::SockRef::from(socket)
        .recv_buffer_size()
        .unwrap_or(0);
    // The kernel reports twice the value set (bookkeeping overhead included).
    if granted < bytes {
        set(libc::SO_RCVBUFFORCE);
    }
}

/// Linux `SOL_UDP` / `UDP_SEGMENT` (not exported by libc for every target).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// Largest UDP GSO send: one IP datagram's worth of payload, at most 64 segments.
pub const GSO_MAX_BYTES: usize = 65_000;
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Sends `data` to `dest` as datagrams of `segment` bytes each (the last may be shorter) with
/// one `sendmsg` and UDP generic segmentation offload: the stack is walked once for the batch.
/// An error (a kernel without UDP GSO says EIO or EINVAL) sends nothing.
pub fn send_gso(fd: RawFd, data: &[u8], segment: u16, dest: &SocketAddr) -> io::Result<usize> {
    // SAFETY: zeroed C structs are valid; every pointer refers to locals or `data`, alive for
    // the call; the control buffer is sized and aligned for one cmsghdr carrying a u16.
    unsafe {
        let mut name: libc::sockaddr_storage = zeroed();
        let name_len = to_raw(dest, &mut name);
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut control = [0u64; 4];
        let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = name_len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
        let sent = libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT);
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Converts a socket address to its C form; returns the length used.
pub fn to_raw(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Converts a C socket address (as a receive filled it in) to a `SocketAddr`.
pub fn from_raw(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn gso_send_arrives_as_separate_datagrams() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let data: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        match send_gso(a.as_raw_fd(), &data, 100, &b.local_addr().unwrap()) {
            Ok(n) => assert_eq!(n, 250),
            Err(e) => {
                eprintln!("SKIPPED: no UDP GSO here ({e})");
                return;
            }
        }
        let mut buf = [0u8; 512];
        let lens: Vec<usize> = (0..3).map(|_| b.recv(&mut buf).unwrap()).collect();
        assert_eq!(lens, [100, 100, 50]);
        assert_eq!(&buf[..50], &data[200..]);
    }

    #[test]
    fn a_single_datagram_leaves_with_sendto_and_arrives_whole() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut out = SendBatch::new();
        out.push(b"one datagram", Some(&b.local_addr().unwrap()));
        assert_eq!(out.flush(a.as_raw_fd()), 1);
        // Connected: no address.
        a.connect(b.local_addr().unwrap()).unwrap();
        out.push(b"connected", None);
        assert_eq!(out.flush(a.as_raw_fd()), 1);
        let mut batch = RecvBatch::new(64);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(batch.recv(b.as_raw_fd(), 0, 64, BATCH).unwrap(), 2);
        assert_eq!(&batch.data[..12], b"one datagram");
        assert_eq!(&batch.data[64..64 + 9], b"connected");
        assert_eq!(batch.meta.source(1), Some(a.local_addr().unwrap()));
    }

    #[test]
    fn receives_with_changing_offsets_reuse_the_headers_correctly() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let mut batch = RecvBatch::new(128);
        for (offset, limit) in [(0, 128), (36, 88), (0, 128), (4, 8)] {
            a.send_to(&[offset as u8; 20], to).unwrap();
            a.send_to(&[offset as u8 + 1; 20], to).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert_eq!(batch.recv(b.as_raw_fd(), offset, limit, BATCH).unwrap(), 2);
            let expect = 20.min(limit);
            assert_eq!(batch.meta.len[0], expect, "truncated to the limit");
            assert_eq!(batch.meta.len[1], expect);
            assert_eq!(batch.data[offset], offset as u8);
            assert_eq!(batch.data[128 + offset], offset as u8 + 1);
            assert_eq!(batch.meta.source(1), Some(a.local_addr().unwrap()));
        }
    }

    #[test]
    fn raw_addresses_round_trip() {
        for text in ["127.0.0.1:3478", "[::1]:49152", "[fe80::1%2]:1"] {
            let addr: SocketAddr = text.parse().unwrap();
            let mut raw = unsafe { zeroed() };
            let len = to_raw(&addr, &mut raw);
            assert_eq!(from_raw(&raw, len), Some(addr));
        }
    }

    #[test]
    fn batch_moves_datagrams_both_ways() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        let mut out = SendBatch::new();
        for p in &payloads {
            out.push(p, Some(&to));
        }
        assert_eq!(out.flush(a.as_raw_fd()), 5);
        let mut batch = RecvBatch::new(128);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(batch.recv(b.as_raw_fd(), 4, 124, BATCH).unwrap(), 5);
        assert_eq!(batch.meta.source(0), Some(a.local_addr().unwrap()));
        assert_eq!(batch.meta.len[4], 14);
        assert_eq!(&batch.data[4 * 128 + 4..4 * 128 + 18], &payloads[4][..]);
    }
}
