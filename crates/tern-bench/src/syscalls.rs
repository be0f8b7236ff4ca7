//! System calls and context switches of a server over the measured window, counted with kernel
//! tracepoints (`perf stat -e raw_syscalls:sys_enter,sched:sched_switch,syscalls:sys_enter_* -p
//! PID`, done in-process with `perf_event_open`, one counter per thread and event).
//!
//! Enabling a syscall tracepoint sends every system call on the machine through the kernel's
//! tracing slow path while it is on (roughly 0.1–0.3 µs each), so a run that counts is slightly
//! slower than one that does not: `scripts/bench.sh` takes CPU figures from runs without
//! counting and the counts from runs of their own.

use perf_event::events::Tracepoint;
use perf_event::{Builder, Counter, Group};
use std::io;

/// The tracepoints counted: the report's name, the tracefs event.
const EVENTS: &[(&str, &str)] = &[
    ("syscalls", "raw_syscalls/sys_enter"),
    ("sched_switch", "sched/sched_switch"),
    ("recvmmsg", "syscalls/sys_enter_recvmmsg"),
    ("recvmsg", "syscalls/sys_enter_recvmsg"),
    ("recvfrom", "syscalls/sys_enter_recvfrom"),
    ("sendmmsg", "syscalls/sys_enter_sendmmsg"),
    ("sendmsg", "syscalls/sys_enter_sendmsg"),
    ("sendto", "syscalls/sys_enter_sendto"),
    ("epoll_wait", "syscalls/sys_enter_epoll_wait"),
    ("epoll_pwait", "syscalls/sys_enter_epoll_pwait"),
    ("epoll_pwait2", "syscalls/sys_enter_epoll_pwait2"),
    ("epoll_ctl", "syscalls/sys_enter_epoll_ctl"),
    ("poll", "syscalls/sys_enter_poll"),
    ("futex", "syscalls/sys_enter_futex"),
    ("read", "syscalls/sys_enter_read"),
    ("write", "syscalls/sys_enter_write"),
    ("clock_gettime", "syscalls/sys_enter_clock_gettime"),
    ("clock_nanosleep", "syscalls/sys_enter_clock_nanosleep"),
    ("io_uring_enter", "syscalls/sys_enter_io_uring_enter"),
];

const TRACEFS: &[&str] = &[
    "/sys/kernel/tracing/events",
    "/sys/kernel/debug/tracing/events",
];

fn tracepoint_id(event: &str) -> Option<u64> {
    TRACEFS.iter().find_map(|root| {
        std::fs::read_to_string(format!("{root}/{event}/id"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// One group of counters per thread a process has when they are opened (a server's workers
/// exist by the time the load starts; threads started later are not counted). A group is
/// switched on and off with one call, so all its events cover the same span.
pub struct SyscallCounters {
    /// The events this kernel has: report name, tracepoint id.
    events: Vec<(&'static str, u64)>,
    /// Per thread: the group and its counters, in the order of `events`.
    threads: Vec<(Group, Vec<Counter>)>,
}

impl SyscallCounters {
    /// Opens disabled counters on each thread of `pid`. Fails if tracefs or `perf_event_open`
    /// is not available (needs root or `perf_event_paranoid` ≤ -1 for kernel tracepoints).
    pub fn open(pid: u32) -> io::Result<SyscallCounters> {
        let mut events = Vec::new();
        for &(name, event) in EVENTS {
            match tracepoint_id(event) {
                Some(id) => events.push((name, id)),
                None if name == "syscalls" => {
                    return Err(io::Error::other(
                        "no tracefs (/sys/kernel/tracing): cannot count system calls",
                    ))
                }
                // An event this kernel lacks (e.g. epoll_pwait2 before 5.11) is left out.
                None => {}
            }
        }
        let mut threads = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            match open_thread(tid, &events) {
                Ok(group) => threads.push(group),
                // The thread ended meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("perf_event_open on thread {tid}: {e}"),
                    ))
                }
            }
        }
        Ok(SyscallCounters { events, threads })
    }

    pub fn enable(&mut self) -> io::Result<()> {
        for (group, _) in &mut self.threads {
            group.enable()?;
        }
        Ok(())
    }

    /// Stops counting and returns each event's total over all threads.
    pub fn finish(mut self) -> io::Result<Vec<(&'static str, u64)>> {
        for (group, _) in &mut self.threads {
            group.disable()?;
        }
        let mut totals: Vec<(&'static str, u64)> =
            self.events.iter().map(|&(name, _)| (name, 0)).collect();
        for (group, counters) in &mut self.threads {
            let data = group.read()?;
            for (total, counter) in totals.iter_mut().zip(counters.iter()) {
                total.1 += data.get(counter).map_or(0, |entry| entry.value());
            }
        }
        Ok(totals)
    }
}

fn open_thread(tid: libc::pid_t, events: &[(&str, u64)]) -> io::Result<(Group, Vec<Counter>)> {
    let mut group = Group::builder()
        .observe_pid(tid)
        .any_cpu()
        .enabled(false)
        .build_group()?;
    let mut counters = Vec::new();
    for &(_, id) in events {
        let counter = Builder::new(Tracepoint::with_id(id))
            .observe_pid(tid)
            .any_cpu()
            .include_kernel()
            // Members are on; the disabled leader gates them all.
            .enabled(true)
            .build_with_group(&mut group)?;
        counters.push(counter);
    }
    Ok((group, counters))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts this very process's system calls (needs root and tracefs; required under CI).
    #[test]
    fn counts_own_syscalls_where_permitted() {
        let mut counters = match SyscallCounters::open(std::process::id()) {
            Ok(counters) => counters,
            // CI runs as root with tracefs: there it must work.
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIPPED: cannot count system calls here: {e}");
                return;
            }
            Err(e) => panic!("cannot count system calls: {e}"),
        };
        counters.enable().unwrap();
        for _ in 0..50 {
            let _ = std::fs::metadata("/proc/self/stat");
        }
        let totals = counters.finish().unwrap();
        let syscalls = totals.iter().find(|(n, _)| *n == "syscalls").unwrap().1;
        assert!(syscalls >= 50, "{totals:?}");
    }
}
