//! `relay`: N allocations, each with a channel (or Send indications) to the built-in echo peer;
//! saturated or at a fixed rate. With `--raw`, the same load against `tern-bench forwarder`.

use crate::cli::RelayArgs;
use crate::client::{rest_credentials, TurnClient};
use crate::echo::Echo;
use crate::framing::{ChannelFraming, Framing, IndicationFraming, STAMP};
use crate::load::{self, LoadSpec};
use crate::modes::forwarder;
use crate::{raise_fd_limit, report, require_loopback};
use std::io;
use std::time::{Duration, Instant};

/// Every allocation binds the same channel number (channels are per allocation), in
/// RFC 8656's 0x4000–0x4FFF.
pub const CHANNEL: u16 = 0x4000;
/// Largest payload: stays under a 1500-byte MTU with any framing.
const MAX_SIZE: usize = 1400;

pub fn run(args: &RelayArgs) -> io::Result<()> {
    let common = &args.common;
    require_loopback(common.server)?;
    raise_fd_limit();
    let size = args.size.clamp(STAMP, MAX_SIZE);
    let setup_bound = Duration::from_secs(120);
    let echo = Echo::start(
        args.echo_threads,
        common.server,
        setup_bound + common.warmup() + common.duration() + Duration::from_secs(10),
    )?;
    let setup = Instant::now();
    let mut sockets = Vec::with_capacity(args.allocations);
    let mut clients = Vec::with_capacity(args.allocations);
    let mut peers = Vec::with_capacity(args.allocations);
    for i in 0..args.allocations.max(1) {
        if setup.elapsed() > setup_bound {
            return Err(io::Error::other("setting up the allocations took too long"));
        }
        let peer = echo.addrs[i % echo.addrs.len()];
        let socket = if args.raw {
            forwarder::client_setup(common.server, peer)?
        } else {
            let mut client =
                TurnClient::connect(common.server, rest_credentials(&common.secret, i))?;
            client.allocate()?;
            if args.send_indication {
                client.create_permission(peer)?;
            } else {
                client.channel_bind(CHANNEL, peer)?;
            }
            let socket = client.socket.try_clone()?;
            clients.push(client);
            socket
        };
        sockets.push(socket);
        peers.push(peer);
    }
    let setup_secs = setup.elapsed().as_secs_f64();
    let framing: Box<dyn Framing> = if args.send_indication && !args.raw {
        Box::new(IndicationFraming::new(&peers, size))
    } else {
        Box::new(ChannelFraming {
            channel: CHANNEL,
            size,
        })
    };
    let spec = LoadSpec {
        // Each packet sent is relayed twice (to the peer, and its echo back).
        rate: args.rate / 2.0,
        window: args.window.max(1),
        warmup: common.warmup(),
        duration: common.duration(),
        max_packets: args.count,
        threads: args.threads,
    };
    let outcome = load::run(
        sockets,
        framing.as_ref(),
        &spec,
        common.pid,
        Some(&echo.echoed),
    );
    echo.stop();
    release(&mut clients);
    let outcome = outcome?;
    // Relayed packets: client→peer (the echo saw them) plus peer→client (the clients got them).
    let to_peer = outcome.end.side - outcome.start.side;
    let to_client = outcome.end.received - outcome.start.received;
    let mut fields = report::base("relay", &common.tags);
    let put = |f: &mut serde_json::Map<_, _>, k: &str, v: serde_json::Value| {
        f.insert(k.to_string(), v);
    };
    put(&mut fields, "allocations", args.allocations.into());
    put(&mut fields, "size", size.into());
    put(&mut fields, "rate", args.rate.into());
    put(
        &mut fields,
        "framing",
        if args.raw {
            "raw"
        } else if args.send_indication {
            "send-indication"
        } else {
            "channel"
        }
        .into(),
    );
    put(&mut fields, "setup_s", report::round(setup_secs, 3));
    report::add_load(&mut fields, &outcome, to_peer + to_client, size);
    put(&mut fields, "to_peer", to_peer.into());
    put(&mut fields, "to_client", to_client.into());
    report::emit(fields);
    Ok(())
}

/// Deletes the allocations (Refresh with LIFETIME 0), so a later run whose client happens to get
/// the same source port does not meet a leftover allocation. Bounded to 30 s in all.
fn release(clients: &mut [TurnClient]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for client in clients {
        if Instant::now() > deadline {
            break;
        }
        if client.socket.set_nonblocking(false).is_ok() {
            let _ = client.refresh(0);
        }
    }
}
