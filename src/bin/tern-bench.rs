//! `tern-bench`: load generator and raw-forwarder baseline; see `tern::bench`.

fn main() -> std::process::ExitCode {
    tern::bench::main()
}
