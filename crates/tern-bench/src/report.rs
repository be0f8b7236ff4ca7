//! The one JSON line a run prints.

use serde_json::{Map, Value};

/// Prints `fields` as one JSON object on one line of stdout.
pub fn emit(fields: Map<String, Value>) {
    println!("{}", Value::Object(fields));
}

/// Rounds to `digits` decimals, so reports stay readable.
pub fn round(value: f64, digits: i32) -> Value {
    if !value.is_finite() {
        return Value::Null;
    }
    let scale = 10f64.powi(digits);
    serde_json::json!((value * scale).round() / scale)
}

/// The fields every report starts with: mode and the `--tag key=value` pairs.
pub fn base(mode: &str, tags: &[String]) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("mode".into(), Value::from(mode));
    for tag in tags {
        let (key, value) = tag.split_once('=').unwrap_or((tag.as_str(), ""));
        let value = value
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(value));
        fields.insert(key.to_string(), value);
    }
    fields
}

/// Adds the measured window of a load run: rates, loss, RTT quantiles and server CPU/RSS.
/// `counted` is how many packets the server handled in the window (relayed both ways, or
/// Binding responses).
pub fn add_load(
    fields: &mut Map<String, Value>,
    outcome: &super::load::Outcome,
    counted: u64,
    payload_bytes: usize,
) {
    let secs = outcome.window_secs().max(1e-9);
    let put = |f: &mut Map<String, Value>, k: &str, v: Value| {
        f.insert(k.to_string(), v);
    };
    put(fields, "window_s", round(secs, 3));
    put(fields, "packets", Value::from(counted));
    put(fields, "pps", round(counted as f64 / secs, 0));
    put(
        fields,
        "mbps",
        round(counted as f64 * payload_bytes as f64 * 8.0 / secs / 1e6, 2),
    );
    put(fields, "sent", Value::from(outcome.total_sent));
    put(fields, "received", Value::from(outcome.total_received));
    put(fields, "loss", round(outcome.loss(), 5));
    let us = |q: f64| round(outcome.rtt.quantile(q) as f64 / 1000.0, 1);
    put(fields, "rtt_p50_us", us(0.5));
    put(fields, "rtt_p99_us", us(0.99));
    put(fields, "rtt_p999_us", us(0.999));
    outcome.usage.report(fields, counted);
}
