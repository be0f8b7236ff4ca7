//! `hold`: N allocations held idle, then the server's RSS per allocation; then all are deleted
//! and RSS is read again (does memory come back, or get reused).

use crate::cli::HoldArgs;
use crate::client::{rest_credentials, TurnClient};
use crate::echo::Echo;
use crate::modes::relay::CHANNEL;
use crate::proc_stats;
use crate::{raise_fd_limit, report, require_test_address};
use std::io;
use std::time::{Duration, Instant};

/// Time for the server to settle before RSS is read.
const SETTLE: Duration = Duration::from_millis(500);
/// Longest the allocations may take to set up.
const SETUP_BOUND: Duration = Duration::from_secs(180);

pub fn run(args: &HoldArgs) -> io::Result<()> {
    let common = &args.common;
    require_test_address(common.server)?;
    raise_fd_limit();
    let pid = common
        .pid
        .ok_or_else(|| io::Error::other("hold needs --pid to read the server's RSS"))?;
    let loopback: std::net::IpAddr = if common.server.is_ipv4() {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        std::net::Ipv6Addr::LOCALHOST.into()
    };
    let echo = Echo::start(1, 1, loopback, None, SETUP_BOUND + Duration::from_secs(60))?;
    let peer = echo.addrs[0];
    // Warm the server with one full allocation cycle so lazily created state is not counted.
    let mut warm = TurnClient::connect(common.server, rest_credentials(&common.secret, 0))?;
    warm.allocate()?;
    warm.refresh(0)?;
    std::thread::sleep(SETTLE);
    let before = proc_stats::sample(pid)?;
    let setup = Instant::now();
    let mut clients = Vec::with_capacity(args.allocations);
    for i in 0..args.allocations {
        if setup.elapsed() > SETUP_BOUND {
            return Err(io::Error::other("setting up the allocations took too long"));
        }
        let mut client =
            TurnClient::connect(common.server, rest_credentials(&common.secret, i + 1))?;
        client.allocate()?;
        if args.channel {
            client.channel_bind(CHANNEL, peer)?;
        }
        clients.push(client);
    }
    let setup_secs = setup.elapsed().as_secs_f64();
    std::thread::sleep(SETTLE);
    let held = proc_stats::sample(pid)?;
    for client in &mut clients {
        let _ = client.refresh(0);
    }
    drop(clients);
    std::thread::sleep(SETTLE * 2);
    let after = proc_stats::sample(pid)?;
    echo.stop();
    let n = args.allocations.max(1) as f64;
    let mut fields = report::base("hold", &common.tags);
    let put = |f: &mut serde_json::Map<_, _>, k: &str, v: serde_json::Value| {
        f.insert(k.to_string(), v);
    };
    put(&mut fields, "allocations", args.allocations.into());
    put(&mut fields, "channel", args.channel.into());
    put(&mut fields, "setup_s", report::round(setup_secs, 3));
    put(&mut fields, "rss_before_kb", before.rss_kb.into());
    put(&mut fields, "rss_held_kb", held.rss_kb.into());
    put(&mut fields, "rss_after_release_kb", after.rss_kb.into());
    put(
        &mut fields,
        "rss_per_alloc_bytes",
        report::round(
            held.rss_kb.saturating_sub(before.rss_kb) as f64 * 1024.0 / n,
            0,
        ),
    );
    put(
        &mut fields,
        "setup_cpu_s",
        report::round(held.cpu_secs - before.cpu_secs, 3),
    );
    report::emit(fields);
    Ok(())
}
