//! Creating sockets inside another network namespace (`ip netns add NAME`): a socket stays in
//! the namespace it was made in, so a helper thread enters the namespace, makes the sockets and
//! ends; the rest of the process stays where it was.

use std::io;
use std::os::fd::AsRawFd;

/// Runs `make` inside network namespace `netns` (a name under /run/netns, or a path), or right
/// here if none is given.
pub fn within<T: Send>(
    netns: Option<&str>,
    make: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let Some(name) = netns else {
        return make();
    };
    let path = if name.contains('/') {
        name.to_string()
    } else {
        format!("/run/netns/{name}")
    };
    let file = std::fs::File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace {path}: {e}")))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on an open namespace file; it changes this thread only, which
                // ends right after `make`.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = io::Error::last_os_error();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("entering network namespace {path}: {e}"),
                    ));
                }
                make()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}
