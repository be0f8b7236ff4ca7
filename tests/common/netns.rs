//! A network namespace of a test's own, for addresses loopback alone does not offer (several
//! IPv6 sources from documentation prefixes). Made by `ip netns add`, removed on drop; code runs
//! inside it on a thread that joined it, and the sockets it makes (and processes it starts) stay
//! there. Needs root and `ip` (iproute2): under CI=true their absence fails the test.

use super::tools::required;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns {
    name: String,
}

/// Whether this process can make namespaces: root and `ip`.
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok();
    required(root, "root", "run the tests as root (CI does)")
        && required(ip, "ip", "apt-get install iproute2")
}

pub fn run(args: &[&str]) {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Netns {
    /// A namespace whose loopback is up.
    pub fn new() -> Netns {
        Self::with_loopback_addresses(&[])
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <this> args…`, failing the test if it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Runs `args…` inside the namespace (`ip netns exec`), failing the test if it fails.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// A namespace whose loopback is up and carries `addresses` (IPv6, each a /128).
    pub fn with_loopback_addresses(addresses: &[&str]) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tern{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let netns = Netns { name }; // removed on drop from here on
        run(&["ip", "-n", &netns.name, "link", "set", "lo", "up"]);
        for address in addresses {
            let cidr = format!("{address}/128");
            run(&[
                "ip",
                "-n",
                &netns.name,
                "addr",
                "add",
                &cidr,
                "dev",
                "lo",
                "nodad",
            ]);
        }
        netns
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap();
            // SAFETY: setns on an open namespace file; it moves only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
