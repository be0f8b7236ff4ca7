//! CPU time, context switches and resident memory, read from /proc: of the server (by pid), of
//! this process (the load generator and its echo peer), and of the whole machine.
//!
//! The kernel accounts CPU time in scheduler ticks. Work done in softirq context (a packet's
//! receive path, an XDP or eBPF program) is charged to whichever task the CPU was running at the
//! time: on loopback and veth that is usually the *sender* of the packet, so a server's own
//! utime+stime misses part of the work done for it, and the generator's includes it. Only the
//! whole machine's busy time (/proc/stat) counts all of it, once.
//!
//! A process's utime+stime is exact (the scheduler's runtime, split by ticks). The machine's
//! user/system/softirq columns are tick samples, which miss much of a load made of many short
//! wake-ups between idle periods (the tick stops while a CPU idles); its idle column is exact
//! (NO_HZ idle time). So the machine's busy time is taken as CPUs × wall time − idle − iowait
//! − steal, and the softirq column only as an indication.

use std::io;

/// CPU seconds (user + system, all threads), context switches (all threads) and resident set
/// size of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub cpu_secs: f64,
    pub rss_kb: u64,
    /// Times a thread went to sleep of its own accord (each is one wake-up later).
    pub voluntary_switches: u64,
    /// Times a thread was preempted.
    pub involuntary_switches: u64,
}

fn clock_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// utime + stime in seconds from the text of a `/proc/.../stat` file.
fn stat_cpu_secs(stat: &str) -> io::Result<f64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of proc(5), so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))
    };
    Ok((tick(11)? + tick(12)?) as f64 / clock_tick())
}

fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads `/proc/<pid>/stat` (utime + stime in clock ticks), `/proc/<pid>/status` (VmRSS) and
/// every thread's context switches (`/proc/<pid>/task/*/status`).
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let cpu_secs = stat_cpu_secs(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut sample = ProcSample {
        cpu_secs,
        rss_kb: status_field(&status, "VmRSS:"),
        ..ProcSample::default()
    };
    // A thread that ends between the listing and the read is skipped.
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
            sample.voluntary_switches += status_field(&status, "voluntary_ctxt_switches:");
            sample.involuntary_switches += status_field(&status, "nonvoluntary_ctxt_switches:");
        }
    }
    Ok(sample)
}

/// Samples `pid` if one was given.
pub fn maybe(pid: Option<u32>) -> io::Result<Option<ProcSample>> {
    pid.map(sample).transpose()
}

/// CPU seconds of one thread of this process (`gettid`).
pub fn thread_cpu_secs(tid: i32) -> io::Result<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!(
        "/proc/self/task/{tid}/stat"
    ))?)
}

/// This thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// The whole machine's CPU time from /proc/stat, summed over CPUs, at one instant.
#[derive(Clone, Copy, Debug)]
pub struct MachineSample {
    pub at: std::time::Instant,
    pub cpus: usize,
    /// idle + iowait + steal: time no task of this machine ran (exact under NO_HZ).
    pub not_busy_secs: f64,
    /// The softirq column (tick samples).
    pub softirq_secs: f64,
}

impl MachineSample {
    /// CPU seconds the machine was busy between `self` and `later`.
    pub fn busy_until(&self, later: &MachineSample) -> f64 {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        (wall * self.cpus as f64 - (later.not_busy_secs - self.not_busy_secs)).max(0.0)
    }
}

pub fn machine() -> io::Result<MachineSample> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_machine(&stat, std::time::Instant::now())
}

fn parse_machine(stat: &str, at: std::time::Instant) -> io::Result<MachineSample> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| io::Error::other("no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| v.get(i).copied().unwrap_or(0) as f64 / clock_tick();
    // user nice system idle iowait irq softirq steal guest guest_nice
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Ok(MachineSample {
        at,
        cpus: cpus.max(1),
        not_busy_secs: field(3) + field(4) + field(7),
        softirq_secs: field(6),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let mine = super::sample(std::process::id()).unwrap();
        assert!(mine.rss_kb > 0);
        assert!(mine.cpu_secs >= 0.0);
        assert!(mine.voluntary_switches + mine.involuntary_switches > 0);
        assert!(super::thread_cpu_secs(super::gettid()).unwrap() >= 0.0);
    }

    #[test]
    fn machine_busy_is_wall_time_less_idle_iowait_and_steal() {
        let hz = super::clock_tick();
        let t0 = std::time::Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(1);
        let two_cpus = "cpu0 1 1 1 1 1 1 1 1 1 1\ncpu1 1 1 1 1 1 1 1 1 1 1\nintr 5\n";
        let parse =
            |cpu: &str, at| super::parse_machine(&format!("{cpu}\n{two_cpus}"), at).unwrap();
        let a = parse("cpu  100 1 20 500 7 3 9 50 0 0", t0);
        // One second later: 0.5 s more idle and 0.25 s more steal, in ticks.
        let idle = 500.0 + hz / 2.0;
        let steal = 50.0 + hz / 4.0;
        let b = parse(&format!("cpu  100 1 20 {idle} 7 3 9 {steal} 0 0"), t1);
        assert_eq!(a.cpus, 2);
        assert!(
            (a.busy_until(&b) - 1.25).abs() < 1e-9,
            "{}",
            a.busy_until(&b)
        );
        assert_eq!((a.softirq_secs * hz).round(), 9.0);
        let now = super::machine().unwrap();
        assert!(now.cpus >= 1);
    }
}
