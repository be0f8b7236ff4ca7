//! Reading and merging the sources: defaults, the file, the environment and flags.

use super::coturn::{self, apply_coturn, Import};
use super::file::{apply_toml, Sources};
use super::shape::Input;
use super::{validate::validate, Config, ConfigError, ServeArgs};
use std::path::{Path, PathBuf};

/// What syntax errors of [`from_toml_str`] name as the path.
const INLINE_ORIGIN: &str = "<string>";

/// The config file's format, decided by its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// tern's `turnserver.toml`.
    Toml,
    /// coTURN's `turnserver.conf`.
    Coturn,
}

/// A loaded configuration, with what the coTURN import (if the file was coTURN's) decided.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub format: Format,
    pub import: Import,
    /// The config file read, if any (of several named, the first that exists).
    pub path: Option<PathBuf>,
}

/// Builds the config from (in rising precedence) defaults, the file, the environment and flags.
pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    load_all(args).map(|loaded| loaded.config)
}

/// Like [`load`], keeping the coTURN import's warnings and notes.
///
/// The environment and the flags both arrive in `args` (clap's `env`, a flag beating its
/// variable). A list given by a higher source replaces the lower one's list. Errors name where
/// the offending value came from: file and line, flag, or environment variable.
pub fn load_all(args: &ServeArgs) -> Result<Loaded, ConfigError> {
    let mut config = Config::default();
    let mut sources = Sources::new();
    let path = config_file(&args.config)?;
    let (format, mut import) = match path {
        Some(path) => {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Io {
                path: shown.clone(),
                reason: err.to_string(),
            })?;
            apply_file(&mut config, &text, &shown, &mut sources)?
        }
        None => (Format::Toml, Import::default()),
    };
    apply_args(&mut config, args, &mut sources)?;
    import.finish(&config)?;
    Ok(Loaded {
        config: checked(config, &sources)?,
        format,
        import,
        path: path.map(Path::to_path_buf),
    })
}

/// The config file to read: the only one named (a missing one is an error naming it), or the
/// first of several that exists, so one image can look where tern's and coTURN's files are
/// mounted. A candidate that exists but cannot be read is chosen, and its error shown.
fn config_file(candidates: &[PathBuf]) -> Result<Option<&Path>, ConfigError> {
    match candidates {
        [] => Ok(None),
        [only] => Ok(Some(only)),
        several => several
            .iter()
            .find(|path| {
                !matches!(std::fs::metadata(path), Err(err) if err.kind() == std::io::ErrorKind::NotFound)
            })
            .map(|path| Some(path.as_path()))
            .ok_or_else(|| ConfigError::NoConfigFile {
                candidates: several.iter().map(|p| p.display().to_string()).collect(),
            }),
    }
}

/// The file alone on top of the defaults, either format (no environment, no flags).
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    load_all(&ServeArgs {
        config: vec![path.to_path_buf()],
        ..ServeArgs::default()
    })
}

/// Parses a document of either format on top of the defaults and validates it.
pub fn from_str(text: &str) -> Result<Loaded, ConfigError> {
    let mut config = Config::default();
    let mut sources = Sources::new();
    let (format, mut import) = apply_file(&mut config, text, INLINE_ORIGIN, &mut sources)?;
    import.finish(&config)?;
    Ok(Loaded {
        config: checked(config, &sources)?,
        format,
        import,
        path: None,
    })
}

/// Parses a TOML document on top of the defaults and validates it (no environment, no flags).
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    let mut sources = Sources::new();
    apply_toml(&mut config, text, INLINE_ORIGIN, &mut sources)?;
    checked(config, &sources)
}

/// Applies a config file, TOML or coTURN's as its content says.
fn apply_file(
    config: &mut Config,
    text: &str,
    origin: &str,
    sources: &mut Sources,
) -> Result<(Format, Import), ConfigError> {
    if coturn::is_coturn(text) {
        let import = apply_coturn(config, text, origin, sources)?;
        Ok((Format::Coturn, import))
    } else {
        apply_toml(config, text, origin, sources)?;
        Ok((Format::Toml, Import::default()))
    }
}

/// Runs the cross-key checks; an error names where its key was set.
fn checked(config: Config, sources: &Sources) -> Result<Config, ConfigError> {
    match validate(&config) {
        Ok(()) => Ok(config),
        Err(err) => {
            let origin = err.key().and_then(|key| sources.get(key));
            Err(err.at(origin))
        }
    }
}

/// Applies every flag (or environment variable) that was given.
fn apply_args(
    config: &mut Config,
    args: &ServeArgs,
    sources: &mut Sources,
) -> Result<(), ConfigError> {
    for given in &args.given {
        given
            .key
            .set(config, &Input::Text(&given.values))
            .map_err(|err| err.at(Some(&given.origin)))?;
        sources.insert(given.key.name, given.origin.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{AllocationLimit, Cli, ExternalIp, Secret};
    use super::*;
    use crate::auth::StaticKey;
    use clap::Parser;
    use std::path::PathBuf;
    use std::sync::{Mutex, MutexGuard};

    /// Clap reads `TERN_*` from the process environment, which tests share across threads: every
    /// test here that parses a command line holds this lock, and env tests set variables only
    /// while holding it.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    fn env_lock() -> MutexGuard<'static, ()> {
        ENV_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes the variables again even if the test panics.
    struct EnvVars(Vec<&'static str>);

    impl EnvVars {
        fn set(vars: &[(&'static str, &str)]) -> Self {
            for (name, value) in vars {
                std::env::set_var(name, value);
            }
            EnvVars(vars.iter().map(|(name, _)| *name).collect())
        }
    }

    impl Drop for EnvVars {
        fn drop(&mut self) {
            for name in &self.0 {
                std::env::remove_var(name);
            }
        }
    }

    fn args_with_env(env: &[(&'static str, &str)], argv: &[&str]) -> ServeArgs {
        let _lock = env_lock();
        let _vars = EnvVars::set(env);
        let argv = std::iter::once("tern").chain(argv.iter().copied());
        Cli::try_parse_from(argv)
            .unwrap_or_else(|err| panic!("{err}"))
            .serve
    }

    fn args(argv: &[&str]) -> ServeArgs {
        args_with_env(&[], argv)
    }

    /// A config file in the temp directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "tern-config-test-{}-{name}.toml",
                std::process::id()
            ));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
        fn arg(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn no_sources_is_the_default() {
        assert_eq!(load(&ServeArgs::default()).unwrap(), Config::default());
        assert_eq!(load(&args(&[])).unwrap(), Config::default());
    }

    #[test]
    fn precedence_file_then_env_then_flag() {
        let file = TempFile::new(
            "precedence",
            "realm = \"from-file\"\nlistening-port = 1111\nuser-quota = 3\ntotal-quota = 9\n",
        );
        let env = [
            ("TERN_REALM", "from-env"),
            ("TERN_LISTENING_PORT", "2222"),
            ("TERN_USER_QUOTA", "4"),
        ];
        let args = args_with_env(&env, &["-c", file.arg(), "--listening-port", "3333"]);
        let config = load(&args).unwrap();
        assert_eq!(config.total_quota, 9, "file beats default");
        assert_eq!(
            config.user_quota,
            AllocationLimit::Count(4),
            "env beats file"
        );
        assert_eq!(config.realm, "from-env", "env beats file");
        assert_eq!(config.listening_port, 3333, "flag beats env");
    }

    #[test]
    fn config_path_from_env() {
        let file = TempFile::new("env-path", "realm = \"via-tern-config\"\n");
        let args = args_with_env(&[("TERN_CONFIG", file.arg())], &[]);
        assert_eq!(load(&args).unwrap().realm, "via-tern-config");
    }

    #[test]
    fn env_lists_are_comma_separated_and_replace_the_file() {
        let file = TempFile::new(
            "env-lists",
            "listening-ip = \"192.0.2.1\"\nstatic-auth-secret = \"old\"\n",
        );
        let env = [
            ("TERN_LISTENING_IP", "192.0.2.2,2001:db8::2"),
            ("TERN_STATIC_AUTH_SECRET", "new1,new2"),
            ("TERN_ALLOW_LOOPBACK_PEERS", "yes"),
        ];
        let config = load(&args_with_env(&env, &["--config", file.arg()])).unwrap();
        let expected: Vec<std::net::IpAddr> =
            vec!["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()];
        assert_eq!(config.listening_ips, expected);
        assert_eq!(
            config.static_auth_secrets,
            vec![Secret("new1".into()), Secret("new2".into())]
        );
        assert!(config.allow_loopback_peers);
    }

    #[test]
    fn stream_flags_and_env() {
        let env = [("TERN_PROXY_PROTOCOL_TRUSTED", "10.0.0.0/8,192.0.2.7")];
        let config = load(&args_with_env(
            &env,
            &[
                "--no-tcp",
                "--no-tls=false",
                "--tls-listening-port=443",
                "--cert=/c.pem",
                "--pkey=/k.pem",
                "--max-connections-per-ip=3",
                "--max-connections=100",
                "--stream-idle-timeout=5",
                "--partial-frame-timeout=2",
            ],
        ))
        .unwrap();
        assert!(config.no_tcp && !config.no_tls);
        assert_eq!(config.tls_listening_port, 443);
        assert_eq!(config.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(config.pkey, Some(PathBuf::from("/k.pem")));
        assert_eq!(config.proxy_protocol_trusted.len(), 2);
        assert_eq!(
            (config.max_connections_per_ip, config.max_connections),
            (3, 100)
        );
        assert_eq!(
            (config.stream_idle_timeout, config.partial_frame_timeout),
            (5, 2)
        );
    }

    #[test]
    fn every_scalar_flag() {
        let config = load(&args(&[
            "--listening-port=3479",
            "--min-port=40000",
            "--max-port=40100",
            "--realm=example.org",
            "--allow-loopback-peers",
            "--default-allocate-lifetime=300",
            "--max-allocate-lifetime=1200",
            "--permission-lifetime=120",
            "--channel-lifetime=240",
            "--stale-nonce=60",
            "--max-credential-ttl=3600",
            "--user-quota=5",
            "--total-quota=1000",
            "--software=tern/1",
            "--relay-threads=4",
            "--sock-buf-size=65536",
            "--log-level=debug",
            "--no-udp",
            "--use-auth-secret",
            "--lt-cred-mech",
            "--fingerprint=false",
        ]))
        .unwrap();
        let expected = Config {
            listening_port: 3479,
            min_port: 40000,
            max_port: 40100,
            realm: "example.org".into(),
            allow_loopback_peers: true,
            default_allocate_lifetime: 300,
            max_allocate_lifetime: 1200,
            permission_lifetime: 120,
            channel_lifetime: 240,
            stale_nonce: 60,
            max_credential_ttl: 3600,
            user_quota: AllocationLimit::Count(5),
            total_quota: 1000,
            software: Some("tern/1".into()),
            relay_threads: 4,
            sock_buf_size: 65536,
            log_level: "debug".into(),
            no_udp: true,
            ..Config::default()
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn repeatable_flags() {
        let config = load(&args(&[
            "--listening-ip=192.0.2.1",
            "--listening-ip=::",
            "--relay-ip=10.0.0.5",
            "--external-ip=203.0.113.7/10.0.0.5",
            "--external-ip=203.0.113.8",
            "--static-auth-secret=s1",
            "--static-auth-secret=s2",
            "--user",
            "alice:pw",
            "--users=bob:0x00112233445566778899aabbccddeeff",
            "--alternate-server=192.0.2.9:3478",
            "--alternate-server=[2001:db8::9]:3478",
            "--alt-listening-port=4000",
        ]))
        .unwrap();
        assert_eq!(config.alternate_servers.len(), 2);
        assert_eq!(config.alt_listening_port, 4000);
        let ip = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(config.listening_ips, vec![ip("192.0.2.1"), ip("::")]);
        assert_eq!(config.relay_ips, vec![ip("10.0.0.5")]);
        assert_eq!(
            config.external_ips,
            vec![
                ExternalIp {
                    public: ip("203.0.113.7"),
                    private: Some(ip("10.0.0.5"))
                },
                ExternalIp {
                    public: ip("203.0.113.8"),
                    private: None
                },
            ]
        );
        assert_eq!(
            config.static_auth_secrets,
            vec![Secret("s1".into()), Secret("s2".into())]
        );
        assert_eq!(
            config.users[0],
            ("alice".into(), StaticKey::Password("pw".into()))
        );
        assert!(matches!(config.users[1], (ref name, StaticKey::Key(_)) if name == "bob"));
    }

    #[test]
    fn range_peer_ip_flags() {
        let config = load(&args(&[
            "--denied-peer-ip=203.0.113.0/24",
            "--allowed-peer-ip=10.0.0.1-10.0.0.9,fd00::/8",
        ]))
        .unwrap();
        assert_eq!(config.denied_peer_ips.len(), 1);
        assert_eq!(config.allowed_peer_ips.len(), 2);
    }

    #[test]
    fn bool_flag_can_turn_off_the_file() {
        let file = TempFile::new("bool-off", "no-udp = true\nallow-loopback-peers = true\n");
        let config = load(&args(&[
            "-c",
            file.arg(),
            "--no-udp=false",
            "--allow-loopback-peers=no",
        ]))
        .unwrap();
        assert!(!config.no_udp && !config.allow_loopback_peers);
    }

    #[test]
    fn absent_flags_keep_the_file() {
        let file = TempFile::new(
            "keep",
            "realm = \"kept\"\nrelay-ip = \"10.0.0.5\"\nno-udp = true\n",
        );
        let config = load(&args(&["-c", file.arg()])).unwrap();
        assert_eq!(config.realm, "kept");
        assert_eq!(config.relay_ips.len(), 1);
        assert!(config.no_udp);
    }

    #[test]
    fn flags_are_validated_across_sources() {
        let file = TempFile::new("cross", "max-port = 40000\n");
        let err = load(&args(&["-c", file.arg(), "--min-port=50000"])).unwrap_err();
        assert!(
            matches!(err.inner(), ConfigError::Invalid { key, value, .. } if key == "min-port" && value == "50000"),
            "{err:?}"
        );
        let err = load(&args(&["--relay-ip=nope"])).unwrap_err();
        assert!(
            matches!(err.inner(), ConfigError::Invalid { key, value, .. } if key == "relay-ip" && value == "nope")
        );
    }

    #[test]
    fn flag_secrets_never_shown() {
        let parsed = args(&["--static-auth-secret=hunter2", "--user=alice:swordfish"]);
        let debug = format!("{parsed:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("swordfish"),
            "{debug}"
        );

        let err = load(&args(&["--user=alice:0xswordfish"]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("swordfish"), "{err}");
        let err = load(&args(&["--user=no-colon-swordfish"]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("swordfish"), "{err}");
    }

    #[test]
    fn missing_file_is_io_error_naming_path() {
        let path = std::env::temp_dir().join("tern-config-test-does-not-exist.toml");
        let args = ServeArgs {
            config: vec![path.clone()],
            ..ServeArgs::default()
        };
        match load(&args) {
            Err(ConfigError::Io { path: named, .. }) => {
                assert_eq!(named, path.display().to_string())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn of_several_config_files_the_first_that_exists_is_read() {
        let missing = std::env::temp_dir().join("tern-config-test-absent.conf");
        let second = TempFile::new("second", "realm = \"second\"\n");
        let third = TempFile::new("third", "realm = \"third\"\n");
        let list = format!("{},{},{}", missing.display(), second.arg(), third.arg());
        for args in [
            args(&["--config", &list]),
            args(&[
                "-c",
                missing.to_str().unwrap(),
                "-c",
                second.arg(),
                "-c",
                third.arg(),
            ]),
            args_with_env(&[("TERN_CONFIG", &list)], &[]),
        ] {
            let loaded = load_all(&args).unwrap();
            assert_eq!(loaded.config.realm, "second");
            assert_eq!(loaded.path.as_deref(), Some(second.0.as_path()));
        }
        // A flag replaces the environment's list.
        let args = args_with_env(&[("TERN_CONFIG", &list)], &["--config", third.arg()]);
        assert_eq!(load(&args).unwrap().realm, "third");
    }

    #[test]
    fn of_several_config_files_none_existing_names_them_all() {
        let dir = std::env::temp_dir();
        let (a, b) = (
            dir.join("tern-absent-a.toml"),
            dir.join("tern-absent-b.conf"),
        );
        let list = format!("{},{}", a.display(), b.display());
        let err = load(&args(&["--config", &list])).unwrap_err();
        assert!(
            matches!(err.inner(), ConfigError::NoConfigFile { candidates } if candidates.len() == 2),
            "{err:?}"
        );
        let shown = err.to_string();
        assert!(
            shown.contains(a.to_str().unwrap()) && shown.contains(b.to_str().unwrap()),
            "{shown}"
        );
    }

    /// A candidate that exists but cannot be read is an error, not skipped for the next one.
    #[test]
    fn of_several_config_files_an_unreadable_one_is_not_skipped() {
        let unreadable = std::env::temp_dir(); // a directory: exists, read_to_string fails
        let good = TempFile::new("after-unreadable", "realm = \"good\"\n");
        let list = format!("{},{}", unreadable.display(), good.arg());
        match load(&args(&["--config", &list])) {
            Err(ConfigError::Io { path, .. }) => assert_eq!(path, unreadable.display().to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_syntax_error_names_the_file() {
        let file = TempFile::new("syntax", "realm = \n");
        let err = load(&args(&["-c", file.arg()])).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(file.arg()) && shown.contains("line 1"),
            "{shown}"
        );
    }

    #[test]
    fn file_unknown_key() {
        let file = TempFile::new("unknown", "lisening-port = 3478\n");
        let err = load(&args(&["-c", file.arg()])).unwrap_err();
        assert!(
            matches!(err.inner(), ConfigError::UnknownKey { key, .. } if key == "lisening-port"),
            "{err:?}"
        );
    }

    #[test]
    fn flag_and_env_errors_name_the_flag_or_variable() {
        let err = load(&args(&["--min-port=70000"])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("flag --min-port: min-port: invalid value \"70000\""),
            "{err}"
        );
        let err = load(&args_with_env(&[("TERN_RELAY_IP", "nope")], &[])).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "environment variable TERN_RELAY_IP: relay-ip: invalid value \"nope\""
            ),
            "{err}"
        );
        let err = load(&args(&["--no-udp=maybe"])).unwrap_err();
        assert!(
            err.to_string().starts_with("flag --no-udp: no-udp"),
            "{err}"
        );
        // A cross-key error names the source of its key: here the flag beat the file.
        let file = TempFile::new("origin", "max-port = 40000\nmin-port = 1000\n");
        let err = load(&args(&["-c", file.arg(), "--min-port=50000"])).unwrap_err();
        assert!(err.to_string().starts_with("flag --min-port"), "{err}");
        let err = load(&args(&["-c", file.arg(), "--max-port=500"])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}:2: min-port", file.arg())),
            "{err}"
        );
    }

    #[test]
    fn switch_spellings() {
        for (flag, expected) in [
            ("--no-udp", true),
            ("--no-udp=true", true),
            ("--no-udp=yes", true),
            ("--no-udp=on", true),
            ("--no-udp=1", true),
            ("--no-udp=false", false),
            ("--no-udp=no", false),
            ("--no-udp=off", false),
            ("--no-udp=0", false),
        ] {
            assert_eq!(load(&args(&[flag])).unwrap().no_udp, expected, "{flag}");
        }
        let config = load(&args_with_env(&[("TERN_UDP_GSO", "off")], &[])).unwrap();
        assert!(!config.udp_gso);
        assert!(!load(&args(&["--udp-gso=false"])).unwrap().udp_gso);
        assert!(Config::default().udp_gso);
    }

    #[test]
    fn list_flags_are_repeatable_and_comma_separated() {
        let config = load(&args(&[
            "--listening-ip=192.0.2.1,192.0.2.2",
            "--listening-ip",
            "::",
        ]))
        .unwrap();
        assert_eq!(config.listening_ips.len(), 3);
    }

    #[test]
    fn help_is_generated_from_the_key_table() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for key in crate::config::KEYS {
            assert!(
                help.contains(&format!("--{}", key.name)),
                "--{} in help",
                key.name
            );
            assert!(help.contains(&key.env()), "{} in help", key.env());
            assert!(help.contains(key.doc()), "{} doc in help", key.name);
        }
        assert!(
            help.contains("[default: 3478]") && help.contains("[default: true]"),
            "{help}"
        );
        // Secret environment values are not shown.
        let _lock = env_lock();
        let _vars = EnvVars::set(&[("TERN_STATIC_AUTH_SECRET", "hunter2")]);
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains("hunter2"), "{help}");
    }
}
