//! Configuration errors: each names the key, the value (never a secret's) and where it came from.

use std::fmt;

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of a config file.
    File { path: String, line: usize },
    /// A command-line flag, by key name (`--<key>`).
    Flag(String),
    /// An environment variable, by its name.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{path}:{line}"),
            Origin::Flag(key) => write!(f, "flag --{key}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// `" (did you mean "x"?)"`, or nothing.
struct Suggest<'a>(&'a Option<String>);

impl fmt::Display for Suggest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, " (did you mean {name:?}?)"),
            None => Ok(()),
        }
    }
}

/// A configuration problem. Exit status 2, before anything binds.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: invalid value {value:?}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("unknown key {key:?}{}", Suggest(suggestion))]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    /// A known key written after a `[table]` header, so TOML puts it inside the table.
    #[error(
        "{key:?} is inside the [{table}] table (keys after a [table] header belong to it): \
         move it above [{table}]"
    )]
    InsideTable { key: String, table: String },
    /// A coTURN setting tern will not run with: what it would change, and what to use instead.
    #[error("{key}: {reason}")]
    Refused { key: String, reason: String },
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
    /// Several config files were named (the first that exists is read) and none exists.
    #[error("no config file: none of {} exists", candidates.join(", "))]
    NoConfigFile { candidates: Vec<String> },
    /// The file is not valid TOML; `message` has the line and column.
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    /// One of the above, with where the offending value came from.
    #[error("{origin}: {error}")]
    At {
        origin: Origin,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The error without its origin.
    pub fn inner(&self) -> &ConfigError {
        match self {
            ConfigError::At { error, .. } => error.inner(),
            other => other,
        }
    }

    /// Where the offending value came from, when known.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ConfigError::At { origin, .. } => Some(origin),
            _ => None,
        }
    }

    /// The key the error is about, if it is about one (`users.alice` counts as `users`).
    pub fn key(&self) -> Option<&str> {
        match self.inner() {
            ConfigError::Invalid { key, .. }
            | ConfigError::UnknownKey { key, .. }
            | ConfigError::InsideTable { key, .. }
            | ConfigError::Refused { key, .. } => Some(key.split('.').next().unwrap_or(key)),
            _ => None,
        }
    }

    /// Adds where the value came from, unless known already (or the error names a file).
    pub(super) fn at(self, origin: Option<&Origin>) -> Self {
        match (origin, &self) {
            (
                _,
                ConfigError::At { .. }
                | ConfigError::Io { .. }
                | ConfigError::NoConfigFile { .. }
                | ConfigError::Syntax { .. },
            ) => self,
            (Some(origin), _) => ConfigError::At {
                origin: origin.clone(),
                error: Box::new(self),
            },
            (None, _) => self,
        }
    }
}

/// The known name nearest to `name`, if one is near enough to be a typo of it.
pub(super) fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    known
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(name, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 4).clamp(1, 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.to_string())
}
