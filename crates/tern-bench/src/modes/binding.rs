//! `binding`: STUN Binding requests from many sockets, saturated or at a rate.

use crate::cli::BindingArgs;
use crate::framing::BindingFraming;
use crate::load::{self, LoadSpec};
use crate::{report, require_test_address};
use std::io;
use std::net::UdpSocket;

pub fn run(args: &BindingArgs) -> io::Result<()> {
    let common = &args.common;
    require_test_address(common.server)?;
    let bind = crate::client_bind(common.server);
    let mut sockets = Vec::new();
    for _ in 0..args.clients.max(1) {
        let socket = UdpSocket::bind(bind)?;
        socket.connect(common.server)?;
        sockets.push(socket);
    }
    let spec = LoadSpec {
        rate: args.rate,
        window: args.window.max(1),
        warmup: common.warmup(),
        duration: common.duration(),
        max_packets: args.count,
        threads: args.threads,
    };
    let meter = crate::meter::Meter::new(common.pid, Vec::new(), common.count_syscalls)?;
    let outcome = load::run(sockets, &BindingFraming, &spec, meter, None)?;
    let responses = outcome.end.received - outcome.start.received;
    let mut fields = report::base("binding", &common.tags);
    fields.insert("clients".into(), args.clients.into());
    fields.insert("rate".into(), args.rate.into());
    report::add_load(&mut fields, &outcome, responses, 20);
    report::emit(fields);
    Ok(())
}
