//! `relay`: N allocations, each with a channel (or Send indications) to the built-in echo peer;
//! saturated or at a fixed rate paced per millisecond tick. With `--raw`, the same load against
//! `tern-bench forwarder`. The set-up (allocations, echo peer, framing) is shared with `steady`.

use crate::cli::{Common, FlowArgs, RelayArgs};
use crate::client::{rest_credentials, TurnClient};
use crate::echo::{Arrivals, Echo};
use crate::framing::{ChannelFraming, Framing, IndicationFraming, STAMP};
use crate::load::{self, LoadSpec};
use crate::meter::Meter;
use crate::modes::forwarder;
use crate::{raise_fd_limit, report, require_test_address};
use serde_json::{Map, Value};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Every allocation binds the same channel number (channels are per allocation), in
/// RFC 8656's 0x4000–0x4FFF.
pub const CHANNEL: u16 = 0x4000;
/// Largest payload: stays under a 1500-byte MTU with any framing.
const MAX_SIZE: usize = 1400;
/// Longest the allocations may take to set up.
const SETUP_BOUND: Duration = Duration::from_secs(120);

/// Allocations ready to carry load: one connected client socket each, toward the echo peer.
pub struct Flows {
    pub echo: Echo,
    pub sockets: Vec<UdpSocket>,
    pub framing: Box<dyn Framing>,
    pub size: usize,
    pub setup_secs: f64,
    clients: Vec<TurnClient>,
}

impl Flows {
    /// Starts the echo peer (`args.peers` sockets, else `default_peers`) and sets up
    /// `args.allocations` allocations (or raw forwarder flows).
    pub fn open(common: &Common, args: &FlowArgs, default_peers: usize) -> io::Result<Flows> {
        require_test_address(common.server)?;
        raise_fd_limit();
        let size = args.size.clamp(STAMP, MAX_SIZE);
        let peer_ip = args.peer_ip.unwrap_or(if common.server.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        });
        require_test_address(SocketAddr::new(peer_ip, 0))?;
        let echo = Echo::start(
            args.echo_threads,
            args.peers
                .unwrap_or(default_peers)
                .clamp(1, args.allocations.max(1)),
            peer_ip,
            args.peer_netns.as_deref(),
            SETUP_BOUND + common.warmup() + common.duration() + Duration::from_secs(10),
        )?;
        let setup = Instant::now();
        // The client sockets are made in the client namespace, if any; they stay there.
        let (sockets, clients, peers) = crate::netns::within(args.client_netns.as_deref(), || {
            let mut sockets = Vec::with_capacity(args.allocations);
            let mut clients = Vec::with_capacity(args.allocations);
            let mut peers = Vec::with_capacity(args.allocations);
            for i in 0..args.allocations.max(1) {
                if setup.elapsed() > SETUP_BOUND {
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
            Ok((sockets, clients, peers))
        })?;
        let framing: Box<dyn Framing> = if args.send_indication && !args.raw {
            Box::new(IndicationFraming::new(&peers, size))
        } else {
            Box::new(ChannelFraming {
                channel: CHANNEL,
                size,
            })
        };
        Ok(Flows {
            echo,
            sockets,
            framing,
            size,
            setup_secs: setup.elapsed().as_secs_f64(),
            clients,
        })
    }

    /// A meter for the server of `common`, with the echo peer's threads apart.
    pub fn meter(&self, common: &Common) -> io::Result<Meter> {
        Meter::new(common.pid, self.echo.tids.clone(), common.count_syscalls)
    }

    /// Stops the echo peer (returning what it saw arrive) and deletes the allocations
    /// (Refresh with LIFETIME 0), so a later run whose client happens to get the same source
    /// port does not meet a leftover allocation. Bounded to 30 s in all.
    pub fn close(self) -> Arrivals {
        let arrivals = self.echo.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        for mut client in self.clients {
            if Instant::now() > deadline {
                break;
            }
            if client.socket.set_nonblocking(false).is_ok() {
                let _ = client.refresh(0);
            }
        }
        arrivals
    }
}

/// The report fields every relay-type mode starts with.
pub fn describe(fields: &mut Map<String, Value>, args: &FlowArgs, flows: &Flows) {
    let mut put = |k: &str, v: Value| {
        fields.insert(k.to_string(), v);
    };
    put("allocations", args.allocations.into());
    put("size", flows.size.into());
    put(
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
    put("peers", flows.echo.addrs.len().into());
    put("setup_s", report::round(flows.setup_secs, 3));
}

pub fn run(args: &RelayArgs) -> io::Result<()> {
    let common = &args.common;
    let mut flows = Flows::open(common, &args.flows, 1)?;
    let spec = LoadSpec {
        // Each packet sent is relayed twice (to the peer, and its echo back).
        rate: args.rate / 2.0,
        window: args.window.max(1),
        warmup: common.warmup(),
        duration: common.duration(),
        max_packets: args.count,
        threads: args.threads,
    };
    let outcome = flows.meter(common).and_then(|meter| {
        load::run(
            std::mem::take(&mut flows.sockets),
            flows.framing.as_ref(),
            &spec,
            meter,
            Some(&flows.echo),
        )
    });
    let mut fields = report::base("relay", &common.tags);
    describe(&mut fields, &args.flows, &flows);
    let size = flows.size;
    let arrivals = flows.close();
    let outcome = outcome?;
    // Relayed packets: client→peer (the echo saw them) plus peer→client (the clients got them).
    let to_peer = outcome.end.side - outcome.start.side;
    let to_client = outcome.end.received - outcome.start.received;
    fields.insert("rate".into(), args.rate.into());
    report::add_load(&mut fields, &outcome, to_peer + to_client, size);
    fields.insert("to_peer".into(), to_peer.into());
    fields.insert("to_client".into(), to_client.into());
    arrivals.report(&mut fields, "echo");
    report::emit(fields);
    Ok(())
}
