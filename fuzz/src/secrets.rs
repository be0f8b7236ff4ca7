//! The config targets' secret check: a document with a secret planted in one of the places a
//! secret can be written (right or wrong), loaded twice with two different secrets of the same
//! shape. Whatever the loader says (an error, the coTURN import's notes, the effective
//! configuration `tern config check` prints) must not carry the secret: a message that carries
//! the first secret in the first load and the second in the second took it from the input.

use crate::Input;

/// Where and how the secret is written, `{S}` standing for it.
pub struct Plant {
    pub templates: &'static [&'static str],
}

pub const TOML: Plant = Plant {
    templates: &[
        "static-auth-secret = \"{S}\"",
        "static-auth-secret = [\"{S}\", 5]",
        "static-auth-secret = {S}",
        "static-auth-secret = \"{S}",
        "static-auth-secret = \"\"\"{S}",
        "static-auth-secret = [\"{S}\", \"{S}\"]",
        "api-keys = [\"{S}\"]",
        "api-keys = \"{S}\"",
        "admin-api-keys = [\"{S}\", \"short\"]",
        "users = [\"alice:{S}\"]",
        "users = [\"{S}\"]",
        "users = \"alice:{S}\"",
        "[users]\nalice = \"{S}\"",
        "[users]\nalice = {S}",
        "[users]\nalice = [\"{S}\"]",
        "[users]\nalice = \"0x{S}\"",
    ],
};

pub const COTURN: Plant = Plant {
    templates: &[
        "static-auth-secret={S}",
        "static-auth-secret=\"{S}\"",
        "static-auth-secret {S}",
        "--static-auth-secret={S}",
        "user=alice:{S}",
        "user={S}",
        "user=alice:0x{S}",
        "user=\"alice:{S}\"",
        "pkey-pwd={S}",
        "cli-password={S}",
        "psql-userdb=\"host=localhost dbname=turn user=turn password={S}\"",
        "redis-userdb=\"ip=127.0.0.1 dbname=2 password={S}\"",
        "mysql-userdb=\"host=localhost password={S}\"",
        "mongo-userdb=\"mongodb://turn:{S}@localhost/turn\"",
        "static-auth-secret={S} trailing",
        "user=alice:{S}\nuser=alice:{S}",
    ],
};

/// A secret of letters and digits from `raw`, at least 12 characters, and its twin: the same
/// shape (each character moved one place within its class), so both load alike.
pub fn secrets(raw: &[u8]) -> (String, String) {
    let alphabet = |b: u8| match b % 3 {
        0 => b'a' + (b / 3) % 26,
        1 => b'A' + (b / 3) % 26,
        _ => b'0' + (b / 3) % 10,
    };
    let mut first: Vec<u8> = raw.iter().take(40).map(|&b| alphabet(b)).collect();
    while first.len() < 12 {
        first.push(b'q');
    }
    let twin = first
        .iter()
        .map(|&c| match c {
            b'z' => b'a',
            b'Z' => b'A',
            b'9' => b'0',
            c => c + 1,
        })
        .collect();
    (
        String::from_utf8(first).unwrap(),
        String::from_utf8(twin).unwrap(),
    )
}

/// The document: `text` with the planted line inserted at a line boundary the input picks.
pub fn document(plant: &Plant, template: usize, at: u8, secret: &str, text: &str) -> String {
    let line = plant.templates[template % plant.templates.len()].replace("{S}", secret);
    let lines: Vec<&str> = text.split('\n').collect();
    let at = usize::from(at) % (lines.len() + 1);
    let mut out = String::new();
    for (i, part) in lines.iter().enumerate() {
        if i == at {
            out.push_str(&line);
            out.push('\n');
        }
        out.push_str(part);
        out.push('\n');
    }
    if at == lines.len() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Loads `text` with a planted secret and its twin through `load`, which returns what the loader
/// showed; panics if both showings carry their own secret.
pub fn check(data: &[u8], plant: &Plant, load: impl Fn(&str) -> Vec<String>) {
    let mut input = Input::new(data);
    let template = usize::from(input.byte());
    let at = input.byte();
    let (first, twin) = secrets(input.bytes());
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    if text.contains(&first) || text.contains(&twin) {
        return; // the secret is in the text as well: nothing to tell apart
    }
    let shown = load(&document(plant, template, at, &first, &text));
    let shown_twin = load(&document(plant, template, at, &twin, &text));
    for (message, message_twin) in shown.iter().zip(&shown_twin) {
        assert!(
            !(message.contains(&first) && message_twin.contains(&twin)),
            "a secret reached what the loader shows: {message}"
        );
    }
}
