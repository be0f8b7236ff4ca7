//! For the build scripts of tern's eBPF crates (`tern-xdp`, `tern-steer`): compiles one C
//! program with clang (`-target bpf`) into `$OUT_DIR`.
//!
//! Degrades instead of failing: without clang or the BPF headers (`libbpf-dev`) the crate still
//! builds, its `<cfg>` stays unset and `<ENV>` carries the reason for the loader to report at run
//! time, so `cargo run --release` works on any machine.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One program: where its source is, what to call the object, and the names its crate reads.
pub struct Program<'a> {
    /// The C source, relative to the crate (e.g. `bpf/relay.bpf.c`).
    pub source: &'a str,
    /// The object's file name in `$OUT_DIR` (e.g. `relay.bpf.o`).
    pub object: &'a str,
    /// The cfg set when it built (e.g. `tern_xdp_built`).
    pub cfg: &'a str,
    /// The environment variable that carries the reason when it did not (e.g. `TERN_XDP_NOT_BUILT`).
    pub not_built_env: &'a str,
    /// What it is, for the messages (e.g. `fast path`).
    pub what: &'a str,
}

/// Builds `program`, printing cargo's instructions; never fails the build.
pub fn build(program: &Program) {
    println!("cargo::rustc-check-cfg=cfg({})", program.cfg);
    println!("cargo::rerun-if-changed={}", program.source);
    println!("cargo::rerun-if-env-changed=CLANG");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    match compile(program, &out.join(program.object)) {
        Ok(()) => println!("cargo::rustc-cfg={}", program.cfg),
        Err(reason) => {
            println!("cargo::warning={} not built: {reason}", program.what);
            println!("cargo::rustc-env={}={reason}", program.not_built_env);
        }
    }
}

fn compile(program: &Program, object: &Path) -> Result<(), String> {
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return Err(format!("the {} is Linux-only", program.what));
    }
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // <asm/types.h> lives under the multiarch include directory on Debian.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = Command::new(&clang)
        .arg("-print-multiarch")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{arch}-linux-gnu"));
    let output = Command::new(&clang)
        .args([
            "-O2", "-g", "-mcpu=v3", "-target", "bpf", "-Wall", "-Werror",
        ])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", program.source, "-o"])
        .arg(object)
        .output()
        .map_err(|e| format!("{clang} could not run ({e}); install clang and libbpf-dev"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().find(|l| l.contains("error")).unwrap_or("");
        return Err(format!(
            "{clang} failed: {first} (install clang and libbpf-dev)"
        ));
    }
    Ok(())
}
