//! `turnserver.toml` through the public loader (`config::from_toml_str`): arbitrary text with a
//! secret planted in it (right or wrongly written). No panic; what the loader shows (the error,
//! or `tern config check`'s effective configuration) never carries the secret; a configuration
//! that loads yields its core configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::config::{effective_toml, from_toml_str, restart_keys_changed, Config};
use tern_fuzz::secrets;

fuzz_target!(|data: &[u8]| {
    secrets::check(data, &secrets::TOML, |text| match from_toml_str(text) {
        Ok(config) => {
            let _ = config.core();
            let _ = restart_keys_changed(&config, &Config::default());
            vec![effective_toml(&config), format!("{config:?}")]
        }
        Err(error) => vec![error.to_string(), format!("{error:?}")],
    });
});
