//! coTURN's `turnserver.conf` (and anything else) through the public loader
//! (`config::from_str`, which tells the formats apart by content): arbitrary text with a secret
//! planted in one of the places coTURN keeps one (`static-auth-secret`, `user`, `pkey-pwd`,
//! `cli-password`, database connection strings). No panic; what the loader shows (the error, the
//! import's warnings and notes, the effective configuration) never carries the secret; a
//! configuration that loads converts to TOML that loads to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::config::{converted_toml, effective_toml, from_str, from_toml_str, Format};
use tern_fuzz::secrets;

fuzz_target!(|data: &[u8]| {
    secrets::check(data, &secrets::COTURN, |text| match from_str(text) {
        Ok(loaded) => {
            let _ = loaded.config.core();
            if loaded.format == Format::Coturn {
                // `tern config convert` writes the secrets on purpose: checked for round trip,
                // not shown.
                let converted = converted_toml(&loaded, "fuzz.conf");
                let again = from_toml_str(&converted)
                    .unwrap_or_else(|e| panic!("converted TOML does not load: {e}\n{converted}"));
                assert_eq!(again, loaded.config, "conversion changed the configuration");
            }
            let mut shown = vec![
                effective_toml(&loaded.config),
                format!("{:?}", loaded.config),
            ];
            shown.extend(loaded.import.warnings.iter().map(|note| note.to_string()));
            shown.extend(loaded.import.accepted.iter().map(|note| note.to_string()));
            shown
        }
        Err(error) => vec![error.to_string(), format!("{error:?}")],
    });
});
