//! Where logs go and how they look: standard error (unless `no-stdout-log`) and `log-file`
//! (appended; `stdout` means standard output), as text or as one JSON object per line
//! (`log-format`). `RUST_LOG`, when set, overrides `log-level`.

use crate::config::{Config, ConfigError, LogFormat};
use std::sync::Mutex;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};

/// Installs the global subscriber; a `log-file` that cannot be opened is a configuration error.
pub fn init(config: &Config) -> Result<(), ConfigError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let file = match &config.log_file {
        Some(path) if path.as_os_str() == "stdout" => Some(BoxMakeWriter::new(std::io::stdout)),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|error| ConfigError::Invalid {
                    key: "log-file".to_string(),
                    value: path.display().to_string(),
                    reason: format!("cannot open: {error}"),
                })?;
            Some(BoxMakeWriter::new(Mutex::new(file)))
        }
        None => None,
    };
    let writer = match (file, config.no_stdout_log) {
        (Some(file), true) => file,
        (Some(file), false) => BoxMakeWriter::new(std::io::stderr.and(file)),
        (None, false) => BoxMakeWriter::new(std::io::stderr),
        (None, true) => BoxMakeWriter::new(std::io::sink),
    };
    // A line that cannot be written (a full disk) is dropped: reporting it on standard error,
    // tracing-subscriber's default, panics the logging thread when that fails too.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .log_internal_errors(false)
        .with_writer(writer);
    match config.log_format {
        // `message` and the event's fields at the top level, next to `timestamp` and `level`.
        LogFormat::Json => subscriber
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        // Colours only on a terminal of our own, never into a file.
        LogFormat::Text if config.log_file.is_some() => subscriber.with_ansi(false).init(),
        LogFormat::Text => subscriber.init(),
    }
    Ok(())
}
