//! `tern-bench`: a load generator for TURN servers (tern, coTURN, anything with REST
//! credentials) and a raw UDP forwarder to compare against. Loopback or documentation (TEST-NET)
//! addresses only, as used inside test network namespaces; every run is bounded in time and in
//! packets, and reports one JSON line.

mod cli;
mod client;
mod echo;
mod framing;
mod histogram;
mod load;
mod meter;
mod modes;
mod netns;
mod proc_stats;
mod report;
mod steady;
mod syscalls;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Runs the command line; returns the process exit code.
fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = cli::Cli::parse();
    let result = match cli.mode {
        cli::Mode::Relay(args) => modes::relay::run(&args),
        cli::Mode::Steady(args) => modes::steady::run(&args),
        cli::Mode::Binding(args) => modes::binding::run(&args),
        cli::Mode::Alloc(args) => modes::alloc::run(&args),
        cli::Mode::Hold(args) => modes::hold::run(&args),
        cli::Mode::Forwarder(args) => modes::forwarder::run(&args),
        cli::Mode::Abuse(args) => modes::abuse::run(&args),
        cli::Mode::Table(args) => modes::table::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tern-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Refuses anything but loopback and the documentation ranges (192.0.2.0/24, 198.51.100.0/24,
/// 203.0.113.0/24, 2001:db8::/32), which are never routed and which the benchmark's network
/// namespaces use: this tool floods, and must never flood a real network.
pub fn require_test_address(addr: SocketAddr) -> std::io::Result<()> {
    if is_test_address(addr.ip()) {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{addr} is neither loopback nor a documentation (TEST-NET) address; tern-bench only \
             sends to 127.0.0.0/8, ::1, 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 or 2001:db8::/32"
        )))
    }
}

fn is_test_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback() || matches!((a, b, c), (192, 0, 2) | (198, 51, 100) | (203, 0, 113))
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.segments()[..2] == [0x2001, 0x0db8],
    }
}

/// Where a client socket toward `server` binds: loopback for a loopback server (so the source is
/// loopback too), else any address of the family (inside a test namespace, its only one).
pub fn client_bind(server: SocketAddr) -> SocketAddr {
    let ip: IpAddr = match (server.is_ipv4(), server.ip().is_loopback()) {
        (true, true) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv4Addr::UNSPECIFIED.into(),
        (false, true) => Ipv6Addr::LOCALHOST.into(),
        (false, false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, 0)
}

/// Raises the open-file limit to its hard maximum (thousands of client sockets).
pub fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_and_documentation_addresses_are_targets() {
        for ok in [
            "127.0.0.1:1",
            "[::1]:1",
            "192.0.2.9:1",
            "198.51.100.1:1",
            "203.0.113.5:1",
            "[2001:db8::1]:1",
        ] {
            assert!(
                super::require_test_address(ok.parse().unwrap()).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "10.0.0.1:1",
            "192.0.3.1:1",
            "8.8.8.8:53",
            "[2001:db9::1]:1",
            "0.0.0.0:1",
        ] {
            assert!(
                super::require_test_address(bad.parse().unwrap()).is_err(),
                "{bad}"
            );
        }
    }
}
