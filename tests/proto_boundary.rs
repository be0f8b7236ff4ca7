//! The protocol crate stays sans-IO: no runtime, poll or socket crate anywhere in its dependency
//! tree, and no `unsafe` in its source (its lib.rs forbids it; this checks nobody lifted that).

use std::path::Path;
use std::process::Command;

const PROTO: &str = "crates/tern-proto";
/// Crates that do I/O: a dependency on any of them means I/O crept into the core.
const IO_CRATES: [&str; 6] = ["tokio", "mio", "socket2", "async-std", "smol", "tern-udp"];

#[test]
fn protocol_crate_depends_on_no_io_crate() {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "tern-proto", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && tree.contains("tern-proto"),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            !IO_CRATES.contains(&name),
            "tern-proto depends on the I/O crate {name}:\n{tree}"
        );
    }
}

#[test]
fn protocol_crate_has_no_unsafe_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(PROTO);
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    assert!(
        lib.contains("#![forbid(unsafe_code)]"),
        "{PROTO}/src/lib.rs must forbid unsafe code"
    );
    let mut pending = vec![root.join("src")];
    let mut files = 0;
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                for (number, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    assert!(
                        !code.contains("unsafe") || line.contains("forbid(unsafe_code)"),
                        "{}:{}: unsafe in the protocol crate",
                        path.display(),
                        number + 1
                    );
                }
            }
        }
    }
    assert!(
        files > 10,
        "found only {files} source files under {PROTO}/src"
    );
}
