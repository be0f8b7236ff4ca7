//! Command-line interface (clap).

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
}

/// Flags for serving; each overrides the same-named key of the config file.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Path of a turnserver.toml.
    #[arg(long, short = 'c', env = "TERN_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CredentialsArgs {
    /// The static-auth-secret to sign with.
    #[arg(long, env = "TERN_STATIC_AUTH_SECRET")]
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
