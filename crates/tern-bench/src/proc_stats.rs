//! A server's CPU time and resident memory, read from /proc.

use std::io;

/// CPU seconds (user + system, all threads) and resident set size of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub cpu_secs: f64,
    pub rss_kb: u64,
}

/// Reads `/proc/<pid>/stat` (utime + stime in clock ticks) and `/proc/<pid>/status` (VmRSS).
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
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
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_secs = (tick(11)? + tick(12)?) as f64 / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(ProcSample { cpu_secs, rss_kb })
}

/// Samples `pid` if one was given.
pub fn maybe(pid: Option<u32>) -> io::Result<Option<ProcSample>> {
    pid.map(sample).transpose()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let mine = super::sample(std::process::id()).unwrap();
        assert!(mine.rss_kb > 0);
        assert!(mine.cpu_secs >= 0.0);
    }
}
