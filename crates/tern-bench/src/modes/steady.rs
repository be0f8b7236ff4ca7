//! `steady`: many allocations, each an independent stream at its own jittered rate (see
//! `crate::steady`), against the server of `--server`; with `--raw`, against the forwarder.
//! Reports, per million relayed packets, the server process's CPU, the whole machine's, this
//! generator's and its echo peer's, the server's wake-ups (and system calls with
//! `--count-syscalls`), and how the packets arrived (per wake-up, at the echo peer and back at
//! the clients) to show they came spread out.

use crate::cli::SteadyArgs;
use crate::modes::relay::{describe, Flows};
use crate::report::{self, round};
use crate::steady::{self, SteadySpec};
use std::io;

pub fn run(args: &SteadyArgs) -> io::Result<()> {
    let common = &args.common;
    let allocations = args.flows.allocations.max(1) as f64;
    // Each packet a client sends is relayed twice: to the peer and, echoed, back.
    let per_flow_rate = args.stream_rate.unwrap_or(args.rate / 2.0 / allocations);
    let mut flows = Flows::open(common, &args.flows, args.flows.allocations)?;
    let spec = SteadySpec {
        per_flow_rate,
        jitter: args.jitter,
        seed: args.seed,
        warmup: common.warmup(),
        duration: common.duration(),
        max_packets: args.count,
    };
    let outcome = flows.meter(common).and_then(|meter| {
        steady::run(
            std::mem::take(&mut flows.sockets),
            flows.framing.as_ref(),
            &spec,
            meter,
            &flows.echo,
        )
    });
    let mut fields = report::base("steady", &common.tags);
    describe(&mut fields, &args.flows, &flows);
    let size = flows.size;
    let echo_arrivals = flows.close();
    let steady = outcome?;
    let outcome = &steady.outcome;
    let to_peer = outcome.end.side - outcome.start.side;
    let to_client = outcome.end.received - outcome.start.received;
    let mut put = |k: &str, v: serde_json::Value| {
        fields.insert(k.to_string(), v);
    };
    put("rate", round(per_flow_rate * 2.0 * allocations, 0));
    put("stream_rate", round(per_flow_rate, 3));
    put("jitter", round(args.jitter, 3));
    let late = |q: f64| round(steady.sender.lateness.quantile(q) as f64 / 1000.0, 1);
    put("send_late_p50_us", late(0.5));
    put("send_late_p99_us", late(0.99));
    put("send_skipped", steady.sender.skipped.into());
    put("send_refused", steady.sender.refused.into());
    report::add_load(&mut fields, outcome, to_peer + to_client, size);
    fields.insert("to_peer".into(), to_peer.into());
    fields.insert("to_client".into(), to_client.into());
    echo_arrivals.report(&mut fields, "echo");
    steady.client_arrivals.report(&mut fields, "client");
    report::emit(fields);
    Ok(())
}
