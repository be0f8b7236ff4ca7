//! What a measured window costs, and whom: the server process (utime+stime, wake-ups), the whole
//! machine (/proc/stat, softirq included), this process (the load generator and its echo peer),
//! and, when asked, the server's system calls by kind (tracepoint counters).

use crate::proc_stats::{self, MachineSample, ProcSample};
use crate::report::round;
use crate::syscalls::SyscallCounters;
use serde_json::{Map, Value};
use std::io;
use std::time::Instant;

/// Everything read at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    pub server: Option<ProcSample>,
    pub machine: MachineSample,
    /// This process: load threads and echo peer together.
    pub generator: ProcSample,
    /// The echo peer's threads alone.
    pub echo_cpu_secs: f64,
}

/// Samples around a window; owns the syscall counters while they run.
pub struct Meter {
    pid: Option<u32>,
    echo_tids: Vec<i32>,
    counters: Option<SyscallCounters>,
}

/// The two ends of a window, and the server's syscall counts in between if counted.
#[derive(Debug)]
pub struct Usage {
    pub start: Sample,
    pub end: Sample,
    pub syscalls: Option<Vec<(&'static str, u64)>>,
}

impl Meter {
    /// `count_syscalls` opens tracepoint counters on the server's threads now (before the
    /// window, so opening them is not measured); they run only inside the window.
    pub fn new(pid: Option<u32>, echo_tids: Vec<i32>, count_syscalls: bool) -> io::Result<Meter> {
        let counters = match (pid, count_syscalls) {
            (Some(pid), true) => Some(SyscallCounters::open(pid)?),
            (None, true) => {
                return Err(io::Error::other(
                    "--count-syscalls needs --pid of the server",
                ))
            }
            _ => None,
        };
        Ok(Meter {
            pid,
            echo_tids,
            counters,
        })
    }

    pub fn sample(&self) -> io::Result<Sample> {
        let mut echo_cpu_secs = 0.0;
        for &tid in &self.echo_tids {
            echo_cpu_secs += proc_stats::thread_cpu_secs(tid).unwrap_or(0.0);
        }
        Ok(Sample {
            at: Instant::now(),
            server: proc_stats::maybe(self.pid)?,
            machine: proc_stats::machine()?,
            generator: proc_stats::sample(std::process::id())?,
            echo_cpu_secs,
        })
    }

    /// Samples and starts the counters.
    pub fn start(&mut self) -> io::Result<Sample> {
        let sample = self.sample()?;
        if let Some(counters) = &mut self.counters {
            counters.enable()?;
        }
        Ok(sample)
    }

    /// Samples and stops the counters.
    pub fn stop(&mut self, start: Sample) -> io::Result<Usage> {
        let end = self.sample()?;
        let syscalls = self.counters.take().map(|c| c.finish()).transpose()?;
        Ok(Usage {
            start,
            end,
            syscalls,
        })
    }
}

impl Usage {
    pub fn window_secs(&self) -> f64 {
        self.end.at.duration_since(self.start.at).as_secs_f64()
    }

    /// Adds the cost fields for `counted` packets (relayed both ways, or Binding responses).
    /// `*_s_per_million` are CPU seconds per million packets.
    pub fn report(&self, fields: &mut Map<String, Value>, counted: u64) {
        let secs = self.window_secs().max(1e-9);
        let million = counted as f64 / 1e6;
        let per_million = |cpu: f64| {
            if counted > 0 {
                round(cpu / million, 3)
            } else {
                Value::Null
            }
        };
        let per_packet = |n: f64, digits| {
            if counted > 0 {
                round(n / counted as f64, digits)
            } else {
                Value::Null
            }
        };
        let mut put = |k: &str, v: Value| {
            fields.insert(k.to_string(), v);
        };
        let machine = self.start.machine.busy_until(&self.end.machine);
        let softirq = self.end.machine.softirq_secs - self.start.machine.softirq_secs;
        let generator = self.end.generator.cpu_secs - self.start.generator.cpu_secs;
        let echo = self.end.echo_cpu_secs - self.start.echo_cpu_secs;
        if let (Some(s0), Some(s1)) = (self.start.server, self.end.server) {
            let cpu = s1.cpu_secs - s0.cpu_secs;
            put("server_cpu_s", round(cpu, 3));
            put("server_cpu_util", round(cpu / secs, 3));
            put("cpu_s_per_million", per_million(cpu));
            if counted > 0 && cpu > 0.0 {
                put("per_cpu_s", round(counted as f64 / cpu, 0));
            }
            put("server_rss_kb", Value::from(s1.rss_kb));
            let woke = s1.voluntary_switches.saturating_sub(s0.voluntary_switches);
            let preempted = s1
                .involuntary_switches
                .saturating_sub(s0.involuntary_switches);
            put("server_wakeups", Value::from(woke));
            put("server_wakeups_per_pkt", per_packet(woke as f64, 3));
            put("server_preempted_per_pkt", per_packet(preempted as f64, 3));
            // Everything the relay path costs, whoever the kernel charged it to: on loopback and
            // veth every packet is sent by the server or by this process, so softirq work lands
            // in one of the two. Unlike the machine's figure, it ignores unrelated load.
            put(
                "server_and_generator_cpu_s_per_million",
                per_million(cpu + generator),
            );
            put(
                "other_cpu_s_per_million",
                per_million(machine - cpu - generator),
            );
        }
        put("machine_cpu_s", round(machine, 3));
        put("machine_cpu_util", round(machine / secs, 3));
        put("machine_cpu_s_per_million", per_million(machine));
        put("softirq_cpu_s_per_million", per_million(softirq));
        put("generator_cpu_s_per_million", per_million(generator));
        put("echo_cpu_s_per_million", per_million(echo));
        if let Some(counts) = &self.syscalls {
            let mut mix = Map::new();
            for &(name, n) in counts {
                match name {
                    "syscalls" => put("syscalls_per_pkt", per_packet(n as f64, 3)),
                    "sched_switch" => put("sched_switch_per_pkt", per_packet(n as f64, 3)),
                    _ if n > 0 => {
                        mix.insert(name.to_string(), per_packet(n as f64, 3));
                    }
                    _ => {}
                }
            }
            put("syscall_mix_per_pkt", Value::Object(mix));
        }
    }
}
