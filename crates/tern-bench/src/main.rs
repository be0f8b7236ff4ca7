//! `tern-bench`: a load generator for TURN servers (tern, coTURN, anything with REST
//! credentials) and a raw UDP forwarder to compare against. Loopback only; every run is bounded
//! in time and in packets, and reports one JSON line.

mod cli;
mod client;
mod echo;
mod framing;
mod histogram;
mod load;
mod modes;
mod proc_stats;
mod report;

use std::net::SocketAddr;

/// Runs the command line; returns the process exit code.
fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = cli::Cli::parse();
    let result = match cli.mode {
        cli::Mode::Relay(args) => modes::relay::run(&args),
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

/// Refuses anything but loopback: this tool floods, and must never flood a real network.
pub fn require_loopback(addr: SocketAddr) -> std::io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{addr} is not a loopback address; tern-bench only sends to 127.0.0.0/8 or ::1"
        )))
    }
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
