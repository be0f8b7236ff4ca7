//! `table`: the benchmark tables from the JSON reports of a `scripts/bench.sh` run. Each report
//! carries `scenario` and `server` tags; each cell is the median over runs with its min–max.
//!
//! Servers (the `server` tag): `tern` (default relay-threads), `tern-1w` (relay-threads = 1),
//! `coturn` (Debian's 4.6.1), `coturn17` (4.17.1 with `--udp-gso`), `coturn17-mux` (4.17.1 with
//! `--udp-gso --multiplex-peer`, non-standard: one relay port shared by all allocations of a
//! thread), `raw` (`tern-bench forwarder`) and `tern-xdp` (tern with `fast-path = "required"`,
//! only through network namespaces: XDP never serves loopback).

use crate::cli::TableArgs;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io;

/// Servers as they are named in the tables, in column order.
const SERVERS: &[(&str, &str)] = &[
    ("tern", "tern"),
    ("tern-1w", "tern 1 worker"),
    ("tern-xdp", "tern fast path (XDP)"),
    ("coturn", "coTURN 4.6.1"),
    ("coturn17", "coTURN 4.17.1 udp-gso"),
    ("coturn17-mux", "coTURN 4.17.1 udp-gso multiplex-peer*"),
    ("raw", "raw forwarder"),
    ("raw-c100", "raw forwarder + 100 µs coalescing (prototype)"),
    ("raw-c250", "raw forwarder + 250 µs coalescing (prototype)"),
];

fn server_name(tag: &str) -> &str {
    SERVERS
        .iter()
        .find(|(t, _)| *t == tag)
        .map_or(tag, |(_, name)| name)
}

/// The steady-load scenarios: (scenario tag, label).
const STEADY: &[(&str, &str)] = &[
    ("steady-100a-100b", "100 allocs, 100 B"),
    ("steady-1000a-100b", "1000 allocs, 100 B"),
    ("steady-100a-1000b", "100 allocs, 1000 B"),
    ("steady-1000a-1000b", "1000 allocs, 1000 B"),
];

/// The steady-load targets: field, baseline server, bound on tern / baseline, what it is.
const STEADY_TARGETS: &[(&str, &str, f64, &str)] = &[
    ("cpu_s_per_million", "raw", 1.15, "server CPU"),
    ("cpu_s_per_million", "coturn", 0.7, "server CPU"),
    ("machine_cpu_s_per_million", "coturn17", 0.85, "machine CPU"),
    // The same bound on what the relay path costs, unaffected by unrelated load on the machine.
    (
        "server_and_generator_cpu_s_per_million",
        "coturn17",
        0.85,
        "server + generator CPU",
    ),
];

/// The fast path's steady-load targets: field, baseline server, bound on tern-xdp / baseline.
/// `tern` as the baseline is tern's own user-space path in the same run.
const FAST_PATH_TARGETS: &[(&str, &str, f64, &str)] = &[
    ("machine_cpu_s_per_million", "coturn", 0.55, "machine CPU"),
    (
        "machine_cpu_s_per_million",
        "coturn17-mux",
        0.8,
        "machine CPU",
    ),
    ("machine_cpu_s_per_million", "raw", 1.0, "machine CPU"),
    ("cpu_s_per_million", "tern", 0.2, "tern's own CPU"),
];

/// Wake-ups of tern per relayed packet while the kernel relays: "≪ 0.01".
const FAST_PATH_MAX_WAKEUPS: f64 = 0.01;

/// How a row of the other table is judged.
#[derive(Clone, Copy)]
enum Target {
    /// tern / raw forwarder at most this.
    VsRawAtMost(f64),
    /// tern / coTURN 4.6.1 at least this.
    VsCoturnAtLeast(f64),
    /// tern / coTURN 4.6.1 at most this.
    VsCoturnAtMost(f64),
    /// tern's own value at least this.
    AtLeast(f64),
    /// tern's own value at most this.
    AtMost(f64),
    None,
}

struct Row {
    scenario: &'static str,
    field: &'static str,
    label: &'static str,
    /// Which tern: `tern` (default workers) or `tern-1w`.
    tern: &'static str,
    target: Target,
}

const ROWS: &[Row] = &[
    Row {
        scenario: "sat-100",
        field: "cpu_s_per_million",
        label: "server CPU s / M relayed pkts, saturated, 100 B, 100 allocs, 1 worker",
        tern: "tern-1w",
        target: Target::VsRawAtMost(1.15),
    },
    Row {
        scenario: "sat-1000",
        field: "cpu_s_per_million",
        label: "server CPU s / M relayed pkts, saturated, 1000 B, 100 allocs, 1 worker",
        tern: "tern-1w",
        target: Target::VsRawAtMost(1.15),
    },
    Row {
        scenario: "sat-100",
        field: "pps",
        label: "relayed pkt/s, saturated, 100 B, 1 worker",
        tern: "tern-1w",
        target: Target::None,
    },
    Row {
        scenario: "sat-100-2w",
        field: "pps",
        label: "relayed pkt/s, saturated, 100 B, 2 workers",
        tern: "tern",
        target: Target::None,
    },
    Row {
        scenario: "tick-20k-100",
        field: "cpu_s_per_million",
        label: "server CPU s / M relayed pkts, 20 k pkt/s in 1 ms bursts, 100 B, 100 allocs",
        tern: "tern",
        target: Target::None,
    },
    Row {
        scenario: "tick-20k-100",
        field: "machine_cpu_s_per_million",
        label: "machine CPU s / M relayed pkts, 20 k pkt/s in 1 ms bursts, 100 B, 100 allocs",
        tern: "tern",
        target: Target::None,
    },
    Row {
        scenario: "binding",
        field: "per_cpu_s",
        label: "Binding responses per CPU-second, 1 worker",
        tern: "tern-1w",
        target: Target::VsCoturnAtLeast(2.0),
    },
    Row {
        scenario: "alloc",
        field: "allocs_per_s",
        label: "authenticated allocations/s, 1 worker",
        tern: "tern-1w",
        target: Target::AtLeast(20_000.0),
    },
    Row {
        scenario: "alloc",
        field: "allocs_per_cpu_s",
        label: "authenticated allocations per CPU-second, 1 worker",
        tern: "tern-1w",
        target: Target::None,
    },
    Row {
        scenario: "hold-1k",
        field: "rss_per_alloc_bytes",
        label: "RSS bytes per idle allocation, 1 k allocs",
        tern: "tern-1w",
        target: Target::AtMost(4096.0),
    },
    Row {
        scenario: "hold-5k",
        field: "rss_per_alloc_bytes",
        label: "RSS bytes per idle allocation, 5 k allocs",
        tern: "tern-1w",
        target: Target::AtMost(4096.0),
    },
    Row {
        scenario: "steady-100a-100b",
        field: "rtt_p99_us",
        label: "RTT p99 µs, steady 20 k pkt/s, 100 B, 100 allocs",
        tern: "tern",
        target: Target::VsCoturnAtMost(1.0),
    },
];

/// The per-packet syscall columns: (report field, column name). `epoll_wait` and
/// `epoll_pwait` are one column (libevent and mio pick different ones).
const SYSCALL_COLUMNS: &[(&[&str], &str)] = &[
    (&["syscall_mix_per_pkt.recvmmsg"], "recvmmsg"),
    (
        &[
            "syscall_mix_per_pkt.recvmsg",
            "syscall_mix_per_pkt.recvfrom",
        ],
        "recvmsg/recvfrom",
    ),
    (&["syscall_mix_per_pkt.sendmmsg"], "sendmmsg"),
    (
        &["syscall_mix_per_pkt.sendmsg", "syscall_mix_per_pkt.sendto"],
        "sendmsg/sendto",
    ),
    (
        &[
            "syscall_mix_per_pkt.epoll_wait",
            "syscall_mix_per_pkt.epoll_pwait",
            "syscall_mix_per_pkt.epoll_pwait2",
        ],
        "epoll_wait",
    ),
    (&["syscall_mix_per_pkt.epoll_ctl"], "epoll_ctl"),
    (
        &[
            "syscall_mix_per_pkt.futex",
            "syscall_mix_per_pkt.read",
            "syscall_mix_per_pkt.write",
            "syscall_mix_per_pkt.poll",
            "syscall_mix_per_pkt.clock_gettime",
            "syscall_mix_per_pkt.io_uring_enter",
        ],
        "futex/read/write/other",
    ),
];

#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    runs: usize,
}

fn stat(mut values: Vec<f64>) -> Option<Stat> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: values[0],
        max: values[n - 1],
        runs: n,
    })
}

fn number(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1000.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn cell(stat: Option<Stat>) -> String {
    match stat {
        Some(s) if s.runs > 1 => {
            format!("{} ({}–{})", number(s.median), number(s.min), number(s.max))
        }
        Some(s) => number(s.median),
        None => "–".into(),
    }
}

fn ratio(a: Option<Stat>, b: Option<Stat>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b.median != 0.0).then(|| a.median / b.median)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}×"))
}

fn met(judged: Option<bool>) -> &'static str {
    match judged {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "–",
    }
}

/// Every numeric field of every report, by (scenario, server, field); nested objects are
/// flattened to `outer.inner`.
struct Reports(BTreeMap<(String, String, String), Vec<f64>>);

impl Reports {
    fn parse(input: &str) -> Reports {
        let mut values: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
        for line in input.lines().filter(|l| l.trim_start().starts_with('{')) {
            let Ok(Value::Object(report)) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let text = |k: &str| {
                report
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let (scenario, server) = (text("scenario"), text("server"));
            let mut add = |field: String, v: f64| {
                values
                    .entry((scenario.clone(), server.clone(), field))
                    .or_default()
                    .push(v);
            };
            for (field, value) in &report {
                match value {
                    Value::Object(inner) => {
                        for (k, v) in inner {
                            if let Some(v) = v.as_f64() {
                                add(format!("{field}.{k}"), v);
                            }
                        }
                    }
                    v => {
                        if let Some(v) = v.as_f64() {
                            add(field.clone(), v);
                        }
                    }
                }
            }
        }
        Reports(values)
    }

    fn get(&self, scenario: &str, server: &str, field: &str) -> Option<Stat> {
        self.0
            .get(&(scenario.to_string(), server.to_string(), field.to_string()))
            .cloned()
            .and_then(stat)
    }

    /// The sum of several fields' medians (absent ones count 0), if any is present.
    fn sum(&self, scenario: &str, server: &str, fields: &[&str]) -> Option<f64> {
        let found: Vec<f64> = fields
            .iter()
            .filter_map(|f| self.get(scenario, server, f).map(|s| s.median))
            .collect();
        (!found.is_empty()).then(|| found.iter().sum())
    }

    fn has_server(&self, scenario: &str, server: &str) -> bool {
        self.0
            .keys()
            .any(|(sc, sv, _)| sc == scenario && sv == server)
    }
}

fn steady_targets(reports: &Reports, out: &mut String) {
    out.push_str(
        "| steady load, 20 k relayed pkt/s | tern | baseline | tern/baseline | target | met |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for (scenario, label) in STEADY {
        for &(field, baseline, bound, what) in STEADY_TARGETS {
            let tern = reports.get(scenario, "tern", field);
            let base = reports.get(scenario, baseline, field);
            if tern.is_none() && base.is_none() {
                continue;
            }
            let r = ratio(tern, base);
            out.push_str(&format!(
                "| {what} s / M relayed pkts, {label} | {} | {}: {} | {} | ≤ {bound} | {} |\n",
                cell(tern),
                server_name(baseline),
                cell(base),
                fmt_ratio(r),
                met(r.map(|r| r <= bound)),
            ));
        }
    }
}

/// The fast path against every other server of the same run (steady: machine CPU below each,
/// its own CPU against tern's user space, wake-ups; saturated: packets/s against coTURN
/// 4.17.1's best and RTT p99 below every other server).
fn fast_path_targets(reports: &Reports, out: &mut String) {
    let xdp = "tern-xdp";
    if !STEADY
        .iter()
        .chain(&[("sat-100", ""), ("sat-1000", "")])
        .any(|(scenario, _)| reports.has_server(scenario, xdp))
    {
        return;
    }
    out.push_str(
        "\n**Kernel fast path: targets** (tern with `fast-path = \"required\"`, same run)\n\n",
    );
    out.push_str("| scenario | fast path | baseline | fast path/baseline | target | met |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- |\n");
    let mut row = |what: String,
                   ours: Option<Stat>,
                   name: String,
                   base: Option<Stat>,
                   target: String,
                   judged: Option<bool>,
                   r: Option<f64>| {
        out.push_str(&format!(
            "| {what} | {} | {name}: {} | {} | {target} | {} |\n",
            cell(ours),
            cell(base),
            fmt_ratio(r),
            met(judged),
        ));
    };
    for (scenario, label) in STEADY {
        if !reports.has_server(scenario, xdp) {
            continue;
        }
        for &(field, baseline, bound, what) in FAST_PATH_TARGETS {
            let ours = reports.get(scenario, xdp, field);
            let base = reports.get(scenario, baseline, field);
            let r = ratio(ours, base);
            let target = if bound == 1.0 {
                "< 1".to_string()
            } else {
                format!("≤ {bound}")
            };
            let judged = r.map(|r| if bound == 1.0 { r < 1.0 } else { r <= bound });
            row(
                format!("{what} s / M, {label}"),
                ours,
                server_name(baseline).into(),
                base,
                target,
                judged,
                r,
            );
        }
        // Below every other row of the scenario.
        let field = "machine_cpu_s_per_million";
        let ours = reports.get(scenario, xdp, field);
        if let Some((lowest, name)) = lowest_other(reports, scenario, field) {
            let r = ratio(ours, Some(lowest));
            row(
                format!("machine CPU s / M, {label}, against the lowest other"),
                ours,
                name.into(),
                Some(lowest),
                "< 1".into(),
                r.map(|r| r < 1.0),
                r,
            );
        }
        let wakeups = reports.get(scenario, xdp, "server_wakeups_per_pkt");
        row(
            format!("tern wake-ups / relayed pkt, {label}"),
            wakeups,
            "–".into(),
            None,
            format!("≤ {FAST_PATH_MAX_WAKEUPS}"),
            wakeups.map(|w| w.median <= FAST_PATH_MAX_WAKEUPS),
            None,
        );
    }
    for (scenario, label) in [
        ("sat-100", "saturated, 100 B"),
        ("sat-1000", "saturated, 1000 B"),
    ] {
        if !reports.has_server(scenario, xdp) {
            continue;
        }
        let ours = reports.get(scenario, xdp, "pps");
        let best17 = ["coturn17", "coturn17-mux"]
            .iter()
            .filter_map(|server| {
                reports
                    .get(scenario, server, "pps")
                    .map(|s| (s, server_name(server)))
            })
            .max_by(|a, b| a.0.median.total_cmp(&b.0.median));
        if let Some((best, name)) = best17 {
            let r = ratio(ours, Some(best));
            row(
                format!("relayed pkt/s, {label}"),
                ours,
                name.into(),
                Some(best),
                "≥ 2".into(),
                r.map(|r| r >= 2.0),
                r,
            );
        }
        let ours = reports.get(scenario, xdp, "rtt_p99_us");
        if let Some((lowest, name)) = lowest_other(reports, scenario, "rtt_p99_us") {
            let r = ratio(ours, Some(lowest));
            row(
                format!("RTT p99 µs, {label}, against the lowest other"),
                ours,
                name.into(),
                Some(lowest),
                "< 1".into(),
                r.map(|r| r < 1.0),
                r,
            );
        }
    }
}

/// The lowest `field` of the scenario among the servers other than the fast path (and the
/// prototypes), with the server's name.
fn lowest_other(reports: &Reports, scenario: &str, field: &str) -> Option<(Stat, &'static str)> {
    SERVERS
        .iter()
        .filter(|(server, _)| *server != "tern-xdp" && !server.starts_with("raw-c"))
        .filter_map(|(server, name)| reports.get(scenario, server, field).map(|s| (s, *name)))
        .min_by(|a, b| a.0.median.total_cmp(&b.0.median))
}

/// Saturated rows of every server that ran them (packets/s, server and machine CPU, RTT).
fn saturated_detail(reports: &Reports, out: &mut String) {
    let scenarios = [
        ("sat-100", "saturated, 100 B"),
        ("sat-1000", "saturated, 1000 B"),
    ];
    if !scenarios
        .iter()
        .any(|(s, _)| reports.has_server(s, "tern-xdp"))
    {
        return;
    }
    out.push_str("\n| scenario | server | relayed pkt/s | server CPU s/M | machine CPU s/M | RTT p50 / p99 µs | loss |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for (scenario, label) in scenarios {
        for (server, name) in SERVERS {
            if !reports.has_server(scenario, server) {
                continue;
            }
            let g = |f: &str| reports.get(scenario, server, f);
            let median = |f: &str| g(f).map_or("–".into(), |s| format!("{:.0}", s.median));
            out.push_str(&format!(
                "| {label} | {name} | {} | {} | {} | {} / {} | {} |\n",
                cell(g("pps")),
                cell(g("cpu_s_per_million")),
                cell(g("machine_cpu_s_per_million")),
                median("rtt_p50_us"),
                median("rtt_p99_us"),
                g("loss").map_or("–".into(), |s| format!("{:.3} %", s.median * 100.0)),
            ));
        }
    }
}

fn steady_detail(reports: &Reports, out: &mut String) {
    out.push_str(
        "| scenario | server | server CPU s/M | machine CPU s/M | server + generator s/M | \
         generator s/M | other s/M | server wake-ups / pkt | loss | RTT p50 / p99 µs | \
         datagrams per echo wake-up |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (scenario, label) in STEADY {
        for (server, name) in SERVERS {
            if !reports.has_server(scenario, server) {
                continue;
            }
            let g = |f: &str| reports.get(scenario, server, f);
            let median = |f: &str, digits: usize| {
                g(f).map_or("–".into(), |s| format!("{:.*}", digits, s.median))
            };
            out.push_str(&format!(
                "| {label} | {name} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
                cell(g("cpu_s_per_million")),
                cell(g("machine_cpu_s_per_million")),
                cell(g("server_and_generator_cpu_s_per_million")),
                median("generator_cpu_s_per_million", 2),
                median("other_cpu_s_per_million", 2),
                median("server_wakeups_per_pkt", 2),
                g("loss").map_or("–".into(), |s| format!("{:.3} %", s.median * 100.0)),
                median("rtt_p50_us", 0),
                median("rtt_p99_us", 0),
                median("echo_per_wake", 2),
            ));
        }
    }
}

fn syscall_table(reports: &Reports, out: &mut String) {
    let scenarios: Vec<(String, &str)> = STEADY
        .iter()
        .map(|(s, label)| (format!("{s}-sys"), *label))
        .filter(|(s, _)| {
            SERVERS
                .iter()
                .any(|(server, _)| reports.has_server(s, server))
        })
        .collect();
    if scenarios.is_empty() {
        return;
    }
    out.push_str("\n| scenario | server | syscalls / pkt | context switches / pkt |");
    for (_, name) in SYSCALL_COLUMNS {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str("\n| --- | --- | --- | --- |");
    out.push_str(&" --- |".repeat(SYSCALL_COLUMNS.len()));
    out.push('\n');
    for (scenario, label) in &scenarios {
        for (server, name) in SERVERS {
            if !reports.has_server(scenario, server) {
                continue;
            }
            let g = |f: &str| {
                reports
                    .get(scenario, server, f)
                    .map_or("–".into(), |s| format!("{:.2}", s.median))
            };
            out.push_str(&format!(
                "| {label} | {name} | {} | {} |",
                g("syscalls_per_pkt"),
                g("sched_switch_per_pkt"),
            ));
            for (fields, _) in SYSCALL_COLUMNS {
                let v = reports.sum(scenario, server, fields);
                out.push_str(&format!(
                    " {} |",
                    v.map_or("–".into(), |v| format!("{v:.2}"))
                ));
            }
            out.push('\n');
        }
    }
}

fn other_rows(reports: &Reports, out: &mut String) {
    out.push_str(
        "| metric | tern | coTURN 4.6.1 | coTURN 4.17.1 udp-gso | raw forwarder | tern/coTURN 4.6.1 | \
         tern/coTURN 4.17.1 | tern/raw | target | met |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for row in ROWS {
        let tern = reports.get(row.scenario, row.tern, row.field);
        let coturn = reports.get(row.scenario, "coturn", row.field);
        let coturn17 = reports.get(row.scenario, "coturn17", row.field);
        let raw = reports.get(row.scenario, "raw", row.field);
        if [tern, coturn, coturn17, raw].iter().all(Option::is_none) {
            continue;
        }
        let vs_coturn = ratio(tern, coturn);
        let vs_raw = ratio(tern, raw);
        let (target, judged) = match row.target {
            Target::VsRawAtMost(x) => (format!("tern/raw ≤ {x}"), vs_raw.map(|r| r <= x)),
            Target::VsCoturnAtLeast(x) => (
                format!("tern/coTURN 4.6.1 ≥ {x}"),
                vs_coturn.map(|r| r >= x),
            ),
            Target::VsCoturnAtMost(x) => (
                format!("tern/coTURN 4.6.1 ≤ {x}"),
                vs_coturn.map(|r| r <= x),
            ),
            Target::AtLeast(x) => (format!("≥ {}", number(x)), tern.map(|s| s.median >= x)),
            Target::AtMost(x) => (format!("≤ {}", number(x)), tern.map(|s| s.median <= x)),
            Target::None => ("–".into(), None),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.label,
            cell(tern),
            cell(coturn),
            cell(coturn17),
            cell(raw),
            fmt_ratio(vs_coturn),
            fmt_ratio(ratio(tern, coturn17)),
            fmt_ratio(vs_raw),
            target,
            met(judged)
        ));
    }
    let scaling = |tern: &str, server: &str| {
        fmt_ratio(ratio(
            reports.get("sat-100-2w", server, "pps"),
            reports.get("sat-100", tern, "pps"),
        ))
    };
    out.push_str(&format!(
        "\nSaturated packets/s from 1 to 2 workers: tern {}, coTURN 4.6.1 {} (relay-threads 1 → 2).\n",
        scaling("tern-1w", "tern"),
        scaling("coturn", "coturn")
    ));
}

/// Builds the markdown tables from JSON lines.
pub fn render(input: &str) -> String {
    let reports = Reports::parse(input);
    let mut out = String::new();
    out.push_str("**Steady load: targets** (tern at its default relay-threads)\n\n");
    steady_targets(&reports, &mut out);
    fast_path_targets(&reports, &mut out);
    out.push_str("\n**Steady load: every server** (CPU per million relayed packets; generator = tern-bench's clients and echo peer; other = the rest of the machine)\n\n");
    steady_detail(&reports, &mut out);
    syscall_table(&reports, &mut out);
    out.push_str("\n**Saturated, bursts, Binding, allocations, memory**\n\n");
    other_rows(&reports, &mut out);
    saturated_detail(&reports, &mut out);
    out.push_str("\n\\* non-standard: one relay port per thread shared by all its allocations.\n");
    out
}

pub fn run(args: &TableArgs) -> io::Result<()> {
    let input = std::fs::read_to_string(&args.input)?;
    print!("{}", render(&input));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn medians_ratios_and_targets() {
        let input = [
            r#"{"scenario":"sat-100","server":"tern-1w","cpu_s_per_million":4.0}"#,
            r#"{"scenario":"sat-100","server":"tern-1w","cpu_s_per_million":5.0}"#,
            r#"{"scenario":"sat-100","server":"tern-1w","cpu_s_per_million":4.4}"#,
            r#"{"scenario":"sat-100","server":"raw","cpu_s_per_million":4.0}"#,
            r#"{"scenario":"sat-100","server":"coturn","cpu_s_per_million":6.0}"#,
        ]
        .join("\n");
        let table = super::render(&input);
        let row = table
            .lines()
            .find(|l| l.contains("saturated, 100 B, 100 allocs"))
            .unwrap();
        assert!(row.contains("4.40 (4.00–5.00)"), "{row}");
        assert!(
            row.contains("0.73×") && row.contains("1.10×") && row.ends_with("yes |"),
            "{row}"
        );
    }

    #[test]
    fn steady_targets_name_their_baselines() {
        let input = [
            r#"{"scenario":"steady-100a-100b","server":"tern","cpu_s_per_million":8.0,"machine_cpu_s_per_million":18.0}"#,
            r#"{"scenario":"steady-100a-100b","server":"raw","cpu_s_per_million":7.0,"machine_cpu_s_per_million":16.0}"#,
            r#"{"scenario":"steady-100a-100b","server":"coturn","cpu_s_per_million":12.0,"machine_cpu_s_per_million":22.0}"#,
            r#"{"scenario":"steady-100a-100b","server":"coturn17","cpu_s_per_million":12.5,"machine_cpu_s_per_million":24.0}"#,
            r#"{"scenario":"steady-100a-100b-sys","server":"tern","syscalls_per_pkt":2.5,"syscall_mix_per_pkt":{"epoll_wait":0.6,"epoll_pwait":0.1,"recvmmsg":0.9}}"#,
        ]
        .join("\n");
        let table = super::render(&input);
        let line = |needle: &str| {
            table
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{table}"))
        };
        assert!(line("raw forwarder: 7.00").contains("1.14×"));
        assert!(line("raw forwarder: 7.00").ends_with("yes |"));
        assert!(line("coTURN 4.6.1: 12.0").contains("0.67×"));
        assert!(line("coTURN 4.17.1 udp-gso: 24.0").contains("0.75×"));
        // epoll_wait and epoll_pwait add up in one column.
        assert!(line("| 100 allocs, 100 B | tern | 2.50 |").contains("| 0.70 |"));
        assert!(
            !table.contains("Kernel fast path"),
            "no fast-path rows without them"
        );
    }

    #[test]
    fn fast_path_rows_judge_against_every_other_server() {
        let input = [
            r#"{"scenario":"steady-100a-100b","server":"tern","cpu_s_per_million":8.0,"machine_cpu_s_per_million":18.0}"#,
            r#"{"scenario":"steady-100a-100b","server":"tern-xdp","cpu_s_per_million":1.0,"machine_cpu_s_per_million":9.0,"server_wakeups_per_pkt":0.002}"#,
            r#"{"scenario":"steady-100a-100b","server":"raw","cpu_s_per_million":7.0,"machine_cpu_s_per_million":16.0}"#,
            r#"{"scenario":"steady-100a-100b","server":"coturn","cpu_s_per_million":12.0,"machine_cpu_s_per_million":20.0}"#,
            r#"{"scenario":"steady-100a-100b","server":"coturn17-mux","cpu_s_per_million":6.0,"machine_cpu_s_per_million":10.0}"#,
            r#"{"scenario":"sat-100","server":"tern-xdp","pps":300000.0,"rtt_p99_us":900.0}"#,
            r#"{"scenario":"sat-100","server":"coturn17","pps":100000.0,"rtt_p99_us":800.0}"#,
            r#"{"scenario":"sat-100","server":"coturn17-mux","pps":120000.0,"rtt_p99_us":1200.0}"#,
        ]
        .join("\n");
        let table = super::render(&input);
        let line = |needle: &str| {
            table
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{table}"))
        };
        // 9 / 20 and 9 / 10: the first within 0.55, the second not within 0.8.
        assert!(line("coTURN 4.6.1: 20.0").contains("0.45×"));
        assert!(line("coTURN 4.6.1: 20.0").ends_with("yes |"));
        assert!(line("multiplex-peer*: 10.0").ends_with("**no** |"));
        assert!(line("against the lowest other").contains("0.90×"));
        assert!(line("tern's own CPU").contains("0.12×"));
        assert!(line("wake-ups").ends_with("yes |"));
        // Packets/s against 4.17.1's best (multiplex-peer here), RTT against the lowest.
        assert!(line("relayed pkt/s, saturated, 100 B |").contains("2.50×"));
        assert!(line("RTT p99 µs, saturated, 100 B").ends_with("**no** |"));
    }
}
