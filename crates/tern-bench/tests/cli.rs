//! The `tern-bench` binary: its modes are there, and it refuses to load anything but loopback and
//! documentation (TEST-NET) addresses, which only exist in the namespaces a run creates.
//! (Its runs against tern, coTURN and the raw forwarder are in the server crate's
//! `tests/bench_tool.rs`, which finds this binary next to `tern`; this test also makes the
//! workspace's `cargo test` build it.)

use std::process::Command;

fn tern_bench(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args(args)
        .output()
        .expect("run tern-bench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn lists_its_modes() {
    let (ok, help) = tern_bench(&["--help"]);
    assert!(ok, "{help}");
    for mode in ["relay", "binding", "alloc", "hold", "forwarder", "table"] {
        assert!(help.contains(mode), "{mode} missing from --help:\n{help}");
    }
}

#[test]
fn refuses_a_server_that_is_no_test_address() {
    // The unspecified address: neither loopback nor TEST-NET, and if the check were missing the
    // datagrams would still only reach this host.
    let (ok, text) = tern_bench(&["binding", "--server", "0.0.0.0:9", "--duration", "0.1"]);
    assert!(
        !ok,
        "tern-bench accepted a server off loopback and TEST-NET:\n{text}"
    );
    assert!(
        text.contains("neither loopback nor a documentation"),
        "{text}"
    );
}
