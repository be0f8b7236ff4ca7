//! `alloc`: allocation churn. Each of `concurrency` clients loops: Allocate without credentials
//! (401 with realm and nonce, as every real client meets first), Allocate with MESSAGE-INTEGRITY,
//! then Refresh with LIFETIME 0 to delete it; the next cycle starts from a new socket. Reports authenticated allocations per second and
//! the server's CPU per allocation.

use crate::cli::AllocArgs;
use crate::client::{
    allocate_body, parse_reply, rest_credentials, write_request, Credentials, Reply, Session,
    TidSource,
};
use crate::{proc_stats, report};
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tern_proto::stun::{attr, Method, TransactionId};

const RETRANSMIT: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Challenge,
    Allocate,
    Delete,
}

struct Client {
    socket: mio::net::UdpSocket,
    creds: Credentials,
    session: Option<Session>,
    step: Step,
    tid: TransactionId,
    request: [u8; 512],
    len: usize,
    sent_at: Instant,
}

impl Client {
    fn send(&mut self, step: Step, tids: &mut TidSource) {
        self.step = step;
        self.tid = tids.next_tid();
        let session = match step {
            Step::Challenge => None,
            Step::Allocate | Step::Delete => self.session.as_ref(),
        };
        self.len = match step {
            Step::Challenge | Step::Allocate => write_request(
                &mut self.request,
                Method::ALLOCATE,
                &self.tid,
                session,
                allocate_body,
            ),
            Step::Delete => write_request(
                &mut self.request,
                Method::REFRESH,
                &self.tid,
                session,
                |w| {
                    w.add_u32(attr::LIFETIME, 0);
                },
            ),
        };
        self.resend();
    }

    fn resend(&mut self) {
        let _ = self.socket.send(&self.request[..self.len]);
        self.sent_at = Instant::now();
    }

    /// A new cycle comes from a new socket (a new 5-tuple), as a new client would: servers may
    /// keep a deleted allocation's 5-tuple around for a while (coTURN answers 437 meanwhile).
    /// IPv4 cycles through source addresses in 127.0.0.0/8, so recycled ephemeral ports do not
    /// land on a 5-tuple the server still remembers.
    fn renew(
        &mut self,
        poll: &Poll,
        token: Token,
        bind: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<()> {
        let _ = poll.registry().deregister(&mut self.socket);
        let mut socket = mio::net::UdpSocket::bind(bind)?;
        socket.connect(server)?;
        poll.registry()
            .register(&mut socket, token, Interest::READABLE)?;
        self.socket = socket;
        Ok(())
    }

    /// Learns the realm and nonce of a challenge; the key is derived only when they change.
    fn learn(&mut self, realm: &str, nonce: &str) {
        match &mut self.session {
            Some(session) if session.realm == realm => session.nonce = nonce.to_string(),
            _ => self.session = Some(Session::new(&self.creds, realm, nonce)),
        }
    }
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Challenge => "challenge",
            Step::Allocate => "allocate",
            Step::Delete => "delete",
        }
    }
}

#[derive(Default)]
struct Counts {
    /// Errors by step and code, e.g. `allocate-437`.
    by_code: std::collections::BTreeMap<String, u64>,
    allocated: u64,
    errors: u64,
    retransmits: u64,
}

/// The source address of cycle `n`: 127.x.y.z for IPv4 (all loopback), `bind` for IPv6.
fn source(bind: SocketAddr, n: u64) -> SocketAddr {
    match bind {
        SocketAddr::V4(_) => {
            let host = n % (250 * 256 * 256);
            let ip = std::net::Ipv4Addr::new(
                127,
                (host / (250 * 256)) as u8,
                (host / 250 % 256) as u8,
                (host % 250 + 2) as u8,
            );
            SocketAddr::new(ip.into(), 0)
        }
        SocketAddr::V6(_) => bind,
    }
}

pub fn run(args: &AllocArgs) -> io::Result<()> {
    let common = &args.common;
    // Cycles source addresses through 127.0.0.0/8: loopback servers only.
    if !common.server.ip().is_loopback() {
        return Err(io::Error::other("alloc drives loopback servers only"));
    }
    crate::raise_fd_limit();
    let bind: SocketAddr = if common.server.is_ipv4() {
        "127.0.0.1:0".parse().expect("literal")
    } else {
        "[::1]:0".parse().expect("literal")
    };
    let mut poll = Poll::new()?;
    let mut clients = Vec::new();
    let mut tids = TidSource::new(rand::random());
    for i in 0..args.concurrency.max(1) {
        let mut socket = mio::net::UdpSocket::bind(bind)?;
        socket.connect(common.server)?;
        poll.registry()
            .register(&mut socket, Token(i), Interest::READABLE)?;
        clients.push(Client {
            socket,
            creds: rest_credentials(&common.secret, i),
            session: None,
            step: Step::Challenge,
            tid: [0; 12],
            request: [0; 512],
            len: 0,
            sent_at: Instant::now(),
        });
    }
    for client in &mut clients {
        client.send(Step::Challenge, &mut tids);
    }
    let mut counts = Counts::default();
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let begin = Instant::now();
    let measure_at = begin + common.warmup();
    let end_at = measure_at + common.duration();
    let mut start: Option<(Instant, u64, Option<proc_stats::ProcSample>)> = None;
    let mut last_retransmit_check = Instant::now();
    let mut cycles: u64 = 0;
    loop {
        let now = Instant::now();
        if start.is_none() && now >= measure_at {
            start = Some((now, counts.allocated, proc_stats::maybe(common.pid)?));
        }
        if now >= end_at || (args.count > 0 && counts.allocated >= args.count) {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(10)))?;
        for event in events.iter() {
            let token = event.token();
            let Some(client) = clients.get_mut(token.0) else {
                continue;
            };
            while let Ok(n) = client.socket.recv(&mut buf) {
                let Some(reply) = parse_reply(&buf[..n], &client.tid) else {
                    continue;
                };
                let next = match (client.step, reply) {
                    (Step::Challenge, Reply::Challenge { realm, nonce }) => {
                        client.learn(&realm, &nonce);
                        Step::Allocate
                    }
                    (Step::Allocate, Reply::Success { .. }) => {
                        counts.allocated += 1;
                        Step::Delete
                    }
                    (Step::Delete, Reply::Success { .. }) => Step::Challenge,
                    // Stale nonce: the same step again with the fresh one.
                    (step, Reply::Challenge { realm, nonce }) => {
                        client.learn(&realm, &nonce);
                        step
                    }
                    (Step::Challenge, Reply::Success { .. }) => {
                        counts.errors += 1; // allocated without credentials?!
                        Step::Delete
                    }
                    (step, Reply::Error { code, .. }) => {
                        counts.errors += 1;
                        *counts
                            .by_code
                            .entry(format!("{}-{code}", step.name()))
                            .or_default() += 1;
                        Step::Challenge
                    }
                };
                if next == Step::Challenge {
                    cycles += 1;
                    client.renew(&poll, token, source(bind, cycles), common.server)?;
                }
                client.send(next, &mut tids);
                if next == Step::Challenge {
                    break; // the old socket's remaining datagrams are of no interest
                }
            }
        }
        if last_retransmit_check.elapsed() >= RETRANSMIT / 5 {
            last_retransmit_check = Instant::now();
            for client in &mut clients {
                if client.sent_at.elapsed() >= RETRANSMIT {
                    counts.retransmits += 1;
                    client.resend();
                }
            }
        }
    }
    let end = (
        Instant::now(),
        counts.allocated,
        proc_stats::maybe(common.pid)?,
    );
    let (t0, a0, p0) = start.unwrap_or(end);
    let secs = end.0.duration_since(t0).as_secs_f64().max(1e-9);
    let allocated = end.1 - a0;
    let mut fields = report::base("alloc", &common.tags);
    let put = |f: &mut serde_json::Map<_, _>, k: &str, v: serde_json::Value| {
        f.insert(k.to_string(), v);
    };
    put(&mut fields, "concurrency", args.concurrency.into());
    put(&mut fields, "window_s", report::round(secs, 3));
    put(&mut fields, "allocations", allocated.into());
    put(
        &mut fields,
        "allocs_per_s",
        report::round(allocated as f64 / secs, 0),
    );
    put(&mut fields, "errors", counts.errors.into());
    put(&mut fields, "retransmits", counts.retransmits.into());
    if !counts.by_code.is_empty() {
        put(
            &mut fields,
            "error_codes",
            serde_json::json!(counts.by_code),
        );
    }
    if let (Some(p0), Some(p1)) = (p0, end.2) {
        let cpu = p1.cpu_secs - p0.cpu_secs;
        put(&mut fields, "server_cpu_s", report::round(cpu, 3));
        put(&mut fields, "server_cpu_util", report::round(cpu / secs, 3));
        if cpu > 0.0 {
            put(
                &mut fields,
                "allocs_per_cpu_s",
                report::round(allocated as f64 / cpu, 0),
            );
        }
        put(&mut fields, "server_rss_kb", p1.rss_kb.into());
    }
    report::emit(fields);
    Ok(())
}
