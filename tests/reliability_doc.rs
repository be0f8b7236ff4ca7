//! docs/RELIABILITY.md's limits table against the key table: every configuration key that sets a
//! limit has a row with its declared default, and every row names a declared key or a limit fixed
//! in the code (marked "(code)"). So a new limit cannot land undocumented, nor a default change
//! silently.

use tern::config::{Key, KEYS};

const DOC: &str = include_str!("../docs/RELIABILITY.md");

/// Whether `key` sets a limit: a cap, a rate, a timeout or a lifetime, by its name or its doc.
fn is_limit(key: &Key) -> bool {
    let name = key.name;
    name.starts_with("max-")
        || name.starts_with("min-")
        || [
            "-quota",
            "-timeout",
            "-lifetime",
            "-limit",
            "-ttl",
            "-capacity",
            "-nonce",
        ]
        .iter()
        .any(|suffix| name.ends_with(suffix))
        || key.doc().contains("0 = unlimited")
}

/// The limits table's rows: (first cell, second cell).
fn rows() -> Vec<(String, String)> {
    let section = DOC
        .split("\n## Limits\n")
        .nth(1)
        .expect("docs/RELIABILITY.md has a Limits section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|line| {
            line.starts_with("| ") && !line.starts_with("| limit ") && !line.starts_with("| ---")
        })
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            (
                cells[0].to_string(),
                cells.get(1).unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

/// The `backticked` words of a cell, in order.
fn quoted(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

#[test]
fn every_limit_key_has_a_row_with_its_default() {
    let rows = rows();
    assert!(rows.len() > 20, "the limits table was not found: {rows:?}");
    for key in KEYS.iter().filter(|key| is_limit(key)) {
        let row = rows
            .iter()
            .find(|(limits, _)| quoted(limits).contains(&key.name));
        let Some((limits, defaults)) = row else {
            panic!("docs/RELIABILITY.md: no row for the limit `{}`", key.name);
        };
        let position = quoted(limits)
            .iter()
            .position(|name| *name == key.name)
            .unwrap();
        let default = key
            .default_value()
            .expect("limits have defaults")
            .to_string();
        assert_eq!(
            quoted(defaults).get(position).copied(),
            Some(default.as_str()),
            "docs/RELIABILITY.md: `{}` defaults to `{default}`, the row says {defaults}",
            key.name
        );
    }
}

#[test]
fn every_row_names_a_key_or_a_limit_in_the_code() {
    for (limits, _) in rows() {
        if limits.contains("(code)") {
            continue;
        }
        for name in quoted(&limits) {
            assert!(
                KEYS.iter().any(|key| key.name == name),
                "docs/RELIABILITY.md lists `{name}`, which is not a declared key (mark fixed limits \"(code)\")"
            );
        }
    }
}
