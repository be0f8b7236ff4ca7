//! Command-line interface (clap). The serving flags are generated from the key table: every key
//! is a flag `--<key>` and an environment variable `TERN_<KEY>`, with its doc and default as help.
//! A flag beats its environment variable (clap does that); both beat the file (see
//! [`super::load`]). Switches take an optional value (`--no-udp`, `--no-udp=false`, `=no`);
//! repeatable keys repeat as flags and are comma-separated in flags and the environment.

use super::keys::{Key, KEYS};
use super::shape::Arity;
use super::Origin;
use clap::builder::ValueParser;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};
use std::fmt;
use std::path::PathBuf;

/// `tern [FLAGS]` serves; `tern credentials …` mints a REST credential.
#[derive(Debug, clap::Parser)]
#[command(name = "tern", version, about = "TURN/STUN relay server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a TURN REST credential and an RTCIceServer JSON object.
    Credentials(CredentialsArgs),
    /// Check a config file, or convert coTURN's turnserver.conf to turnserver.toml.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// GET the HTTP endpoint's /healthz (or URL): exit status 0 on a 2xx answer, 1 otherwise.
    /// For container health checks: the address is `http-listen` from the same config files,
    /// environment and flags the server reads.
    Health(HealthArgs),
    /// Start draining the tern on this host (POST /api/v1/admin/drain with the first of
    /// `admin-api-keys`, at `http-listen` from the same config files, environment and flags):
    /// `/readyz` answers 503 and new Allocates go to `alternate-server` (or get 486) while live
    /// allocations relay on. For a Kubernetes preStop hook: SIGTERM then stops after the drain.
    Drain(DrainArgs),
}

#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// Seconds to wait after the drain has started before exiting (so load balancers and the
    /// endpoints controller see /readyz fail before the stop signal comes).
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// An `http://` URL to GET instead, e.g. http://127.0.0.1:8080/readyz.
    pub url: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE (a turnserver.toml or coTURN's turnserver.conf) with the environment and
    /// flags, as `tern --config FILE` would, and print the effective configuration with secrets
    /// redacted. Exit status 0: valid; 2: invalid.
    Check { file: PathBuf },
    /// Print FILE (coTURN's turnserver.conf, or a turnserver.toml) as a turnserver.toml that
    /// loads to the same configuration, with comments on what was dropped and why.
    Convert { file: PathBuf },
}

/// The serving flags and environment variables that were given, in key-table order.
#[derive(Clone, Default)]
pub struct ServeArgs {
    /// `-c/--config` (`TERN_CONFIG`): the config file, or several (repeated, or comma-separated)
    /// of which the first that exists is read; none: no file.
    pub config: Vec<PathBuf>,
    pub(super) given: Vec<Given>,
}

/// One key given by a flag or its environment variable.
#[derive(Clone)]
pub(super) struct Given {
    pub key: &'static Key,
    pub values: Vec<String>,
    pub origin: Origin,
}

impl fmt::Debug for ServeArgs {
    /// Secret values never show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        map.entry(&"config", &self.config);
        for given in &self.given {
            if given.key.secret {
                map.entry(&given.key.name, &"<redacted>");
            } else {
                map.entry(&given.key.name, &given.values);
            }
        }
        map.finish()
    }
}

const CONFIG: &str = "config";

impl clap::Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let config = Arg::new(CONFIG)
            .long(CONFIG)
            .short('c')
            .env("TERN_CONFIG")
            .value_name("PATH")
            .value_parser(clap::value_parser!(PathBuf))
            .action(ArgAction::Append)
            .value_delimiter(',')
            .help(
                "Config file: a turnserver.toml, or coTURN's turnserver.conf. Several (repeated or \
                 comma-separated): the first that exists is read",
            );
        KEYS.iter()
            .fold(cmd.arg(config), |cmd, key| cmd.arg(flag(key)))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(paths) = matches.get_many::<PathBuf>(CONFIG) {
            self.config = paths.cloned().collect();
        }
        for key in KEYS {
            let Some(values) = matches.get_many::<String>(key.name) else {
                continue;
            };
            let origin = match matches.value_source(key.name) {
                Some(ValueSource::EnvVariable) => Origin::Env(key.env()),
                _ => Origin::Flag(key.name.to_string()),
            };
            self.given.retain(|given| given.key.name != key.name);
            self.given.push(Given {
                key,
                values: values.cloned().collect(),
                origin,
            });
        }
        Ok(())
    }
}

/// The flag (and environment variable) of `key`.
fn flag(key: &'static Key) -> Arg {
    let default = match key.default_value() {
        Some(value) => value.to_string(),
        None => "unset".to_string(),
    };
    let arg = Arg::new(key.name)
        .long(key.name)
        .env(key.env())
        .value_parser(ValueParser::string())
        .help(format!("{} [default: {default}]", key.doc()))
        .aliases(key.aliases.iter().copied())
        .hide_env_values(key.secret);
    match key.arity() {
        Arity::Switch => arg
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
            .action(ArgAction::Set),
        Arity::One => arg.value_name(key.value_name).action(ArgAction::Set),
        Arity::Many => arg
            .value_name(key.value_name)
            .action(ArgAction::Append)
            .value_delimiter(','),
    }
}

#[derive(Debug, clap::Args)]
pub struct CredentialsArgs {
    /// The static-auth-secret to sign with.
    #[arg(long, env = "TERN_STATIC_AUTH_SECRET", hide_env_values = true)]
    pub secret: String,
    #[arg(long)]
    pub user: Option<String>,
    /// Seconds the credential stays valid.
    #[arg(long, default_value_t = 86400)]
    pub ttl: u64,
    /// TURN/STUN URIs for the RTCIceServer object (repeatable).
    #[arg(long)]
    pub uri: Vec<String>,
}
