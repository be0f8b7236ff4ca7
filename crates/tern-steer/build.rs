//! Builds `bpf/steer.bpf.c` with clang (`-target bpf`) into `$OUT_DIR/steer.bpf.o`.
//!
//! Degrades instead of failing: without clang or the BPF headers (`libbpf-dev`) the crate still
//! builds, the `tern_steer_built` cfg stays unset and the loader reports "steering not built" with
//! the reason at run time, so `cargo run --release` works on any machine.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/steer.bpf.c";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tern_steer_built)");
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=CLANG");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("steer.bpf.o");
    match build(&object) {
        Ok(()) => println!("cargo::rustc-cfg=tern_steer_built"),
        Err(reason) => {
            println!("cargo::warning=steering not built: {reason}");
            println!("cargo::rustc-env=TERN_STEER_NOT_BUILT={reason}");
        }
    }
}

fn build(object: &std::path::Path) -> Result<(), String> {
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return Err("steering is Linux-only".into());
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
        .args(["-c", SOURCE, "-o"])
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
