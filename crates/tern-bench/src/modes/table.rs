//! `table`: the benchmark table from the JSON reports of a `scripts/bench.sh` run. Each report
//! carries `scenario` and `server` tags; each cell is the median over runs with its min–max.

use crate::cli::TableArgs;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io;

/// How a row's target is judged.
#[derive(Clone, Copy)]
enum Target {
    /// tern / raw forwarder at most this.
    VsRawAtMost(f64),
    /// tern / coTURN at least this.
    VsCoturnAtLeast(f64),
    /// tern / coTURN at most this.
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
    target: Target,
}

const ROWS: &[Row] = &[
    Row {
        scenario: "relay-sat-100",
        field: "cpu_s_per_million",
        label: "CPU s / M relayed pkts, saturated, 100 B, 100 allocs",
        target: Target::VsRawAtMost(1.15),
    },
    Row {
        scenario: "relay-sat-1000",
        field: "cpu_s_per_million",
        label: "CPU s / M relayed pkts, saturated, 1000 B, 100 allocs",
        target: Target::VsRawAtMost(1.15),
    },
    Row {
        scenario: "relay-20k-100",
        field: "cpu_s_per_million",
        label: "CPU s / M relayed pkts, 20 k pkt/s, 100 B, 100 allocs",
        target: Target::VsRawAtMost(1.15),
    },
    Row {
        scenario: "relay-20k-1000",
        field: "cpu_s_per_million",
        label: "CPU s / M relayed pkts, 20 k pkt/s, 100 B, 1000 allocs",
        target: Target::VsRawAtMost(1.15),
    },
    Row {
        scenario: "relay-20k-1000b",
        field: "cpu_s_per_million",
        label: "CPU s / M relayed pkts, 20 k pkt/s, 1000 B, 100 allocs",
        target: Target::VsRawAtMost(1.15),
    },
    Row {
        scenario: "relay-sat-100",
        field: "pps",
        label: "relayed pkt/s, saturated, 100 B, 1 worker",
        target: Target::None,
    },
    Row {
        scenario: "relay-sat-100-2w",
        field: "pps",
        label: "relayed pkt/s, saturated, 100 B, 2 workers",
        target: Target::None,
    },
    Row {
        scenario: "binding",
        field: "per_cpu_s",
        label: "Binding responses per CPU-second",
        target: Target::VsCoturnAtLeast(2.0),
    },
    Row {
        scenario: "alloc",
        field: "allocs_per_s",
        label: "authenticated allocations/s (1 worker)",
        target: Target::AtLeast(20_000.0),
    },
    Row {
        scenario: "alloc",
        field: "allocs_per_cpu_s",
        label: "authenticated allocations per CPU-second",
        target: Target::None,
    },
    Row {
        scenario: "hold-1k",
        field: "rss_per_alloc_bytes",
        label: "RSS bytes per idle allocation, 1 k allocs",
        target: Target::AtMost(4096.0),
    },
    Row {
        scenario: "hold-5k",
        field: "rss_per_alloc_bytes",
        label: "RSS bytes per idle allocation, 5 k allocs",
        target: Target::AtMost(4096.0),
    },
    Row {
        scenario: "relay-20k-100",
        field: "rtt_p99_us",
        label: "RTT p99 µs at 20 k pkt/s (100 B, 100 allocs)",
        target: Target::VsCoturnAtMost(1.0),
    },
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

/// Builds the markdown table from JSON lines.
pub fn render(input: &str) -> String {
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
        for (field, value) in &report {
            if let Some(v) = value.as_f64() {
                values
                    .entry((text("scenario"), text("server"), field.clone()))
                    .or_default()
                    .push(v);
            }
        }
    }
    let get = |scenario: &str, server: &str, field: &str| {
        values
            .get(&(scenario.to_string(), server.to_string(), field.to_string()))
            .cloned()
            .and_then(stat)
    };
    let mut out = String::new();
    out.push_str(
        "| metric | tern | coTURN | raw forwarder | tern/coTURN | tern/raw | target | met |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for row in ROWS {
        let tern = get(row.scenario, "tern", row.field);
        let coturn = get(row.scenario, "coturn", row.field);
        let raw = get(row.scenario, "raw", row.field);
        let vs_coturn = ratio(tern, coturn);
        let vs_raw = ratio(tern, raw);
        let fmt_ratio = |r: Option<f64>| r.map_or("–".into(), |r| format!("{r:.2}×"));
        let (target, met) = match row.target {
            Target::VsRawAtMost(x) => (format!("tern/raw ≤ {x}"), vs_raw.map(|r| r <= x)),
            Target::VsCoturnAtLeast(x) => (format!("tern/coTURN ≥ {x}"), vs_coturn.map(|r| r >= x)),
            Target::VsCoturnAtMost(x) => (format!("tern/coTURN ≤ {x}"), vs_coturn.map(|r| r <= x)),
            Target::AtLeast(x) => (format!("≥ {}", number(x)), tern.map(|s| s.median >= x)),
            Target::AtMost(x) => (format!("≤ {}", number(x)), tern.map(|s| s.median <= x)),
            Target::None => ("–".into(), None),
        };
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.label,
            cell(tern),
            cell(coturn),
            cell(raw),
            fmt_ratio(vs_coturn),
            fmt_ratio(vs_raw),
            target,
            met
        ));
    }
    let scaling = |server: &str| {
        ratio(
            get("relay-sat-100-2w", server, "pps"),
            get("relay-sat-100", server, "pps"),
        )
        .map_or("–".into(), |r| format!("{r:.2}×"))
    };
    out.push_str(&format!(
        "\nSaturated packets/s from 1 to 2 workers: tern {}, coTURN {} (relay-threads 1 → 2).\n",
        scaling("tern"),
        scaling("coturn")
    ));
    let loss = |server: &str| {
        get("relay-20k-100", server, "loss")
            .map_or("–".into(), |s| format!("{:.3} %", s.median * 100.0))
    };
    out.push_str(&format!(
        "Loss at 20 k pkt/s (median): tern {}, coTURN {}, raw {}.\n",
        loss("tern"),
        loss("coturn"),
        loss("raw")
    ));
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
            r#"{"scenario":"relay-sat-100","server":"tern","cpu_s_per_million":4.0}"#,
            r#"{"scenario":"relay-sat-100","server":"tern","cpu_s_per_million":5.0}"#,
            r#"{"scenario":"relay-sat-100","server":"tern","cpu_s_per_million":4.4}"#,
            r#"{"scenario":"relay-sat-100","server":"raw","cpu_s_per_million":4.0}"#,
            r#"{"scenario":"relay-sat-100","server":"coturn","cpu_s_per_million":6.0}"#,
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
}
