//! The access log: one line per request (proxied or answered by the relay itself), written by a
//! thread of its own. A request only formats its line and hands it over with `try_send` on a
//! bounded channel: it never waits on the output. When the writer falls behind and the channel
//! is full, lines are dropped and counted (`cc_relay_access_log_dropped_total`).
//!
//! On when the log level lets `info` through for the `cc_relay::access` target (so `RUST_LOG`
//! and `logging.level` switch it like any log line); `logging.format` picks JSON lines or
//! `key=value` text, `logging.output` stdout, stderr or a file (reopened on SIGUSR1, for
//! logrotate: the writer opens it again before its next line).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use once_cell::sync::Lazy;

/// Lines buffered between requests and the writer.
const CAPACITY: usize = 16_384;

/// The `log` target that switches the access log on and off.
pub const TARGET: &str = "cc_relay::access";

/// What one access log line says.
pub struct AccessEntry<'a> {
    pub request_id: &'a str,
    pub client: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub provider: &'a str,
    pub key: &'a str,
    pub attempts: u32,
    pub model: Option<&'a str>,
    pub usage: crate::usage::Usage,
    pub time_to_first_byte: Option<Duration>,
    pub total: Duration,
    pub bytes_sent: usize,
}

struct Writer {
    sender: SyncSender<Vec<u8>>,
    /// How lines look, set from `logging.*`.
    json: AtomicBool,
    /// Where they go (`stdout`, `stderr` or a path), read by the writer thread only.
    output: ArcSwap<String>,
    /// Bumped to make the writer open its output again (a new config, SIGUSR1).
    generation: AtomicU64,
}

static WRITER: Lazy<Writer> = Lazy::new(|| {
    let (sender, receiver) = sync_channel(CAPACITY);
    let spawned = std::thread::Builder::new()
        .name("cc-relay-access-log".into())
        .spawn(move || drain(receiver));
    if let Err(e) = spawned {
        log::error!("the access log cannot start its writer: {e}");
    }
    Writer {
        sender,
        json: AtomicBool::new(false),
        output: ArcSwap::from_pointee("stderr".to_owned()),
        generation: AtomicU64::new(0),
    }
});

/// Set the format and the output from `logging.*` (at start, every reload and SIGUSR1: the
/// output is opened again).
pub fn configure(logging: &crate::config::LoggingConfig) {
    WRITER.json.store(logging.format == "json", Relaxed);
    WRITER.output.store(Arc::new(logging.output.clone()));
    WRITER.generation.fetch_add(1, Relaxed);
}

/// Whether access lines are wanted now.
pub fn enabled() -> bool {
    log::log_enabled!(target: TARGET, log::Level::Info)
}

/// Format `entry` and hand it to the writer; never blocks.
pub fn record(entry: &AccessEntry<'_>) {
    let mut line = if WRITER.json.load(Relaxed) {
        json_line(entry)
    } else {
        text_line(entry)
    };
    line.push(b'\n');
    match WRITER.sender.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            super::metrics::METRICS.access_log_dropped();
        }
    }
}

fn json_line(e: &AccessEntry<'_>) -> Vec<u8> {
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let v = serde_json::json!({
        "ts": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "kind": "access",
        "request_id": e.request_id,
        "client": e.client,
        "method": e.method,
        "path": e.path,
        "status": e.status,
        "provider": e.provider,
        "key": e.key,
        "attempts": e.attempts,
        "model": e.model,
        "input_tokens": e.usage.input_tokens,
        "output_tokens": e.usage.output_tokens,
        "cache_read_tokens": e.usage.cache_read_input_tokens,
        "cache_creation_tokens": e.usage.cache_creation_input_tokens,
        "ttfb_ms": e.time_to_first_byte.map(ms),
        "total_ms": ms(e.total),
        "bytes_sent": e.bytes_sent,
    });
    serde_json::to_vec(&v).expect("a JSON value serialises")
}

fn text_line(e: &AccessEntry<'_>) -> Vec<u8> {
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    format!(
        "[{}] access request_id={} client={} method={} path={:?} status={} provider={} key={} \
         attempts={} model={} in={} out={} cache_read={} cache_creation={} ttfb_ms={} \
         total_ms={} bytes={}",
        humantime::format_rfc3339_millis(SystemTime::now()),
        e.request_id,
        e.client.as_deref().unwrap_or("-"),
        e.method,
        e.path,
        e.status,
        e.provider,
        e.key,
        e.attempts,
        e.model.map_or_else(|| "-".to_owned(), |m| format!("{m:?}")),
        e.usage.input_tokens,
        e.usage.output_tokens,
        e.usage.cache_read_input_tokens,
        e.usage.cache_creation_input_tokens,
        e.time_to_first_byte.map_or_else(|| "-".to_owned(), ms),
        ms(e.total),
        e.bytes_sent,
    )
    .into_bytes()
}

/// The writer thread: (re)open the output when told to, write what arrives, flush when
/// nothing more is waiting.
fn drain(receiver: Receiver<Vec<u8>>) {
    let mut seen = u64::MAX;
    let mut sink: Box<dyn Write> = Box::new(std::io::sink());
    while let Ok(line) = receiver.recv() {
        let generation = WRITER.generation.load(Relaxed);
        if generation != seen {
            let _ = sink.flush();
            sink = open(&WRITER.output.load());
            seen = generation;
        }
        let mut next = Some(line);
        while let Some(line) = next.take() {
            let _ = sink.write_all(&line);
            next = receiver.try_recv().ok();
        }
        let _ = sink.flush();
    }
}

fn open(output: &str) -> Box<dyn Write> {
    match output {
        "stdout" => Box::new(std::io::BufWriter::new(std::io::stdout())),
        "stderr" => Box::new(std::io::BufWriter::new(std::io::stderr())),
        path => match crate::lifecycle::open_log_file(path) {
            Ok(file) => Box::new(std::io::BufWriter::new(file)),
            Err(e) => {
                log::error!("access log: cannot open {path}: {e}; writing to stderr");
                Box::new(std::io::BufWriter::new(std::io::stderr()))
            }
        },
    }
}
