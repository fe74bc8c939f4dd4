//! The logger: set up from `logging.*`, Pingora's secret-bearing debug output capped, and
//! Pingora's benign ERRORs demoted. `log` takes one logger for the life of the process, so the
//! installed one is a switch over an `ArcSwap`: a reload builds a new `env_logger` from the new
//! `logging.*` and swaps it in (a lock-free load per log call that passes the level filter).

use std::io::Write;
use std::sync::Arc;

use arc_swap::ArcSwap;
use once_cell::sync::Lazy;

use crate::config;

static LOGGER: Lazy<RelayLogger> =
    Lazy::new(|| RelayLogger(ArcSwap::from_pointee(env_logger::Builder::new().build())));

/// Pingora crates whose debug output includes raw request headers.
const PINGORA_MODULES: &[&str] = &[
    "pingora_core",
    "pingora_proxy",
    "pingora_pool",
    "pingora_http",
];

/// Set up `log` from `logging` (again on every reload: the new settings replace the old);
/// `RUST_LOG` overrides the level.
pub fn init_logging(logging: &config::LoggingConfig) {
    crate::admin::access_log::configure(logging);
    let built = build(logging, &std::env::var("RUST_LOG").unwrap_or_default());
    let max_level = built.filter();
    LOGGER.0.store(Arc::new(built));
    // The first call installs the switch; later calls only swapped what it points to.
    let _ = log::set_logger(&*LOGGER);
    log::set_max_level(max_level);
}

/// A log file, appended to (created when missing: after logrotate moved it away).
pub fn open_log_file(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Whether `RUST_LOG` decides the level instead of `logging.level`.
pub fn level_overridden() -> bool {
    std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty())
}

fn build(logging: &config::LoggingConfig, rust_log: &str) -> env_logger::Logger {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&logging.level);
    // Pingora's debug logs print whole upstream request headers, the injected API key
    // included: cap them at info unless RUST_LOG names a pingora module on purpose.
    if !rust_log.contains("pingora") {
        let cap = logging
            .level
            .parse::<log::LevelFilter>()
            .unwrap_or(log::LevelFilter::Info)
            .min(log::LevelFilter::Info);
        for module in PINGORA_MODULES {
            builder.filter_module(module, cap);
        }
    }
    builder.parse_filters(rust_log);
    builder.target(match logging.output.as_str() {
        "stdout" => env_logger::Target::Stdout,
        "stderr" => env_logger::Target::Stderr,
        path => match open_log_file(path) {
            Ok(file) => env_logger::Target::Pipe(Box::new(file)),
            Err(e) => {
                eprintln!("cc-relay: cannot open log file {path}: {e}; logging to stderr");
                env_logger::Target::Stderr
            }
        },
    });
    if logging.format == "json" {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.build()
}

/// Pingora messages logged at ERROR that are no error of the relay's and nothing an operator
/// can act on; they go out at DEBUG instead, so that an ERROR line under normal load means
/// something.
///
/// "failed to acquire reusable stream": with `work_stealing: false` and more than one thread,
/// a pooled upstream connection taken on one thread can still be referenced for a moment by its
/// idle watcher on another; Pingora then drops it and connects afresh, and the request goes on
/// unharmed (about 1 request in 400 under a saturating load here; never with one thread).
const BENIGN_PINGORA_ERRORS: &[(&str, &str)] = &[(
    "pingora_core::connectors",
    "failed to acquire reusable stream",
)];

/// The installed logger: whatever `init_logging` built last, behind Pingora's demotions.
struct RelayLogger(ArcSwap<env_logger::Logger>);

impl log::Log for RelayLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.0.load().enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        demote_benign(&self.0.load(), record);
    }

    fn flush(&self) {
        self.0.load().flush();
    }
}

/// Log `record` through `logger`, a benign Pingora ERROR at DEBUG.
fn demote_benign(logger: &env_logger::Logger, record: &log::Record) {
    use log::Log;
    if record.level() == log::Level::Error {
        let message = record.args().as_str();
        if BENIGN_PINGORA_ERRORS
            .iter()
            .any(|&(target, text)| record.target() == target && message == Some(text))
        {
            let demoted = log::Record::builder()
                .args(*record.args())
                .level(log::Level::Debug)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            if logger.enabled(demoted.metadata()) {
                logger.log(&demoted);
            }
            return;
        }
    }
    logger.log(record);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A pipe for env_logger that the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logger(level: &str) -> (env_logger::Logger, Captured) {
        let out = Captured::default();
        let mut builder = env_logger::Builder::new();
        builder
            .parse_filters(level)
            .target(env_logger::Target::Pipe(Box::new(out.clone())));
        (builder.build(), out)
    }

    fn emit(logger: &env_logger::Logger, target: &str, args: std::fmt::Arguments) {
        demote_benign(
            logger,
            &log::Record::builder()
                .args(args)
                .level(log::Level::Error)
                .target(target)
                .build(),
        );
    }

    fn text(out: &Captured) -> String {
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn benign_pingora_error_is_demoted_and_real_errors_stay() {
        let (quiet, out) = logger("info");
        emit(
            &quiet,
            "pingora_core::connectors",
            format_args!("failed to acquire reusable stream"),
        );
        assert_eq!(text(&out), "", "shown at ERROR under an info filter");
        emit(
            &quiet,
            "pingora_core::connectors",
            format_args!("something else broke"),
        );
        emit(
            &quiet,
            "cc_relay",
            format_args!("failed to acquire reusable stream"),
        );
        let shown = text(&out);
        assert!(shown.contains("ERROR pingora_core::connectors] something else broke"));
        assert!(shown.contains("ERROR cc_relay] failed to acquire reusable stream"));

        let (verbose, out) = logger("debug");
        emit(
            &verbose,
            "pingora_core::connectors",
            format_args!("failed to acquire reusable stream"),
        );
        assert!(text(&out).contains("DEBUG pingora_core::connectors] failed to acquire"));
    }
}
