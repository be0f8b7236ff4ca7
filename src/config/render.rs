//! Writing a configuration back as TOML, from the key table: `tern config check` prints every
//! key with secrets redacted; `tern config convert` writes what differs from tern's defaults, with
//! what the coTURN import accepted or dropped as comments.

use super::keys::{Key, KEYS};
use super::values::REDACTED;
use super::{Config, Format, Loaded};
use std::fmt::Write;
use toml::Value;

/// The effective configuration, every key, secrets redacted.
pub fn effective_toml(config: &Config) -> String {
    let mut out = String::new();
    for key in settable().filter(|key| !key.is_table()) {
        match key.get(config) {
            Some(value) => {
                let value = if key.secret { redacted(&value) } else { value };
                let _ = writeln!(out, "{} = {value}", key.name);
            }
            None => {
                let _ = writeln!(out, "# {} is unset", key.name);
            }
        }
    }
    if let Some(Value::Table(users)) = table_key().and_then(|key| key.get(config)) {
        let _ = writeln!(out, "\n[users]");
        for name in users.keys() {
            let _ = writeln!(out, "{} = {}", bare_or_quoted(name), Value::from(REDACTED));
        }
    }
    out
}

/// `config` as a turnserver.toml that loads to the same configuration: the keys whose value
/// differs from tern's default, secrets included, and the import's notes as comments.
pub fn converted_toml(loaded: &Loaded, source: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# turnserver.toml written by `tern config convert` from {source}."
    );
    let _ = writeln!(
        out,
        "# Keys left at tern's defaults are not listed (see turnserver.toml in tern's repository \
         and README\n# \"Migrating from coTURN\"). It holds the secrets of the original: keep it \
         as private."
    );
    if loaded.format == Format::Coturn {
        let sections = [
            (
                "Dropped, with a warning at start (tern does not do this):",
                &loaded.import.warnings,
            ),
            (
                "Accepted as what tern does anyway:",
                &loaded.import.accepted,
            ),
        ];
        for (title, notes) in sections {
            if notes.is_empty() {
                continue;
            }
            let _ = writeln!(out, "#\n# {title}");
            for note in notes {
                let _ = writeln!(out, "#   {note}");
            }
        }
    }
    let _ = writeln!(out);
    let defaults = Config::default();
    for key in settable().filter(|key| !key.is_table()) {
        let value = key.get(&loaded.config);
        if value == key.get(&defaults) {
            continue;
        }
        match value {
            Some(value) => {
                let _ = writeln!(out, "# {}\n{} = {value}", key.doc(), key.name);
            }
            None => {
                let _ = writeln!(out, "# {}\n# {} is unset", key.doc(), key.name);
            }
        }
    }
    if let Some(Value::Table(users)) = table_key().and_then(|key| key.get(&loaded.config)) {
        let _ = writeln!(out, "\n[users]");
        for (name, secret) in &users {
            let _ = writeln!(out, "{} = {secret}", bare_or_quoted(name));
        }
    }
    out
}

/// The keys that set a field.
fn settable() -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(|key| key.effective)
}

fn table_key() -> Option<&'static Key> {
    KEYS.iter().find(|key| key.is_table())
}

fn redacted(value: &Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        _ => Value::from(REDACTED),
    }
}

/// A TOML key: bare when it can be, else quoted.
fn bare_or_quoted(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        name.to_string()
    } else {
        Value::from(name).to_string()
    }
}
