//! The access log: one line per request (proxied or answered by the relay itself), written by a
//! thread of its own. A request only formats its line and hands it over with `try_send` on a
//! bounded channel: it never waits on the output. When the writer falls behind and the channel
//! is full, lines are dropped and counted (`cc_relay_access_log_dropped_total`).
//!
//! On when the log level lets `info` through for the `cc_relay::access` target (so `RUST_LOG`
//! and `logging.level` switch it like any log line); `logging.format` picks JSON lines or
//! `key=value` text, `logging.output` stdout or stderr.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
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
    /// How lines look and where they go, set from `logging.*`.
    json: AtomicBool,
    stdout: AtomicBool,
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
        stdout: AtomicBool::new(false),
    }
});

/// Set the format (`json`) and output (`stdout`) from `logging.*`; also at every reload.
pub fn configure(logging: &crate::config::LoggingConfig) {
    WRITER.json.store(logging.format == "json", Relaxed);
    WRITER.stdout.store(logging.output == "stdout", Relaxed);
}

/// Whether access lines are wanted now.
pub fn enabled() -> bool {
    log::log_enabled!(target: TARGET, log::Level::Info)
}

/// Format `entry` and hand it to the writer; never blocks.
pub fn record(entry: &AccessEntry<'_>) {
    let (json, stdout) = (WRITER.json.load(Relaxed), WRITER.stdout.load(Relaxed));
    let mut line = if json {
        json_line(entry)
    } else {
        text_line(entry)
    };
    line.push(b'\n');
    // The first byte says where the line goes.
    line.insert(0, u8::from(stdout));
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

/// The writer thread: write what arrives, flush when nothing more is waiting.
fn drain(receiver: Receiver<Vec<u8>>) {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut err = std::io::BufWriter::new(std::io::stderr());
    while let Ok(line) = receiver.recv() {
        let mut next = Some(line);
        while let Some(line) = next.take() {
            let (to_stdout, text) = line
                .split_first()
                .map_or((false, &[][..]), |(f, t)| (*f == 1, t));
            let _ = if to_stdout {
                out.write_all(text)
            } else {
                err.write_all(text)
            };
            next = receiver.try_recv().ok();
        }
        let _ = out.flush();
        let _ = err.flush();
    }
}
