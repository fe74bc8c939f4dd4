//! The config loader on arbitrary text: YAML or TOML (the first byte picks), `${VAR}`
//! references expanded from a fixed environment. It must return a config or errors, never
//! panic, and no error may show a value from the environment (they stand for secrets).
#![no_main]

use cc_relay::config::{load_str_as_with_env, Format};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "sk-ant-fuzz-secret-0123456789";

fn env(name: &str) -> Option<String> {
    match name {
        "KEY" => Some(SECRET.to_owned()),
        "EMPTY" => Some(String::new()),
        "PORT" => Some("8787".to_owned()),
        "NESTED" => Some("${KEY}".to_owned()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if first & 1 == 0 { Format::Yaml } else { Format::Toml };
    // A file that holds the secret itself may see it quoted back (a table named after it is an
    // unknown field); the property is about what the environment supplied.
    let written = text.contains(SECRET);
    match load_str_as_with_env(text, format, &env) {
        Ok((config, warnings)) => {
            for w in &warnings {
                assert!(written || !w.contains(SECRET), "a warning shows a secret: {w}");
            }
            assert!(!format!("{config:?}").contains(SECRET), "Debug shows a secret");
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                written || !shown.contains(SECRET),
                "an error shows a secret: {shown}"
            );
        }
    }
});
