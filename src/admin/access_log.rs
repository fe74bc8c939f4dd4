//! The access log: one line per request (proxied or answered by the relay itself), written by a
//! thread of its own. A request only formats its line and pushes it on a bounded lock-free
//! queue: it never waits on the output and never wakes the writer (a wake-up per line would be
//! a futex call per request, and a context switch on a busy machine). The writer wakes every
//! [`FLUSH_EVERY`], takes everything queued and writes it in one go. When it falls behind and
//! the queue is full, lines are dropped and counted (`cc_relay_access_log_dropped_total`).
//!
//! On when the log level lets `info` through for the `cc_relay::access` target (so `RUST_LOG`
//! and `logging.level` switch it like any log line); `logging.format` picks JSON lines or
//! `key=value` text, `logging.output` stdout, stderr or a file (reopened on SIGUSR1, for
//! logrotate: the writer opens it again before its next line). [`flush`] writes what is queued
//! before the process exits.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use once_cell::sync::{Lazy, OnceCell};

/// Lines buffered between requests and the writer.
const CAPACITY: usize = 16_384;

/// How often the writer takes what is queued: how late a line may appear.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// The `log` target that switches the access log on and off.
pub const TARGET: &str = "cc_relay::access";

/// What one access log line says.
pub struct AccessEntry<'a> {
    pub request_id: &'a str,
    /// The client's address.
    pub client: Option<String>,
    /// The client's name (`clients[].name`; `-` for `server.auth`'s key or an open relay).
    pub client_name: &'a str,
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
    queue: ArrayQueue<Vec<u8>>,
    /// The writer thread, to wake it for a [`flush`].
    thread: OnceCell<Thread>,
    /// Passes the writer has finished (a flush waits for one that started after it asked).
    passes: AtomicU64,
    /// How lines look, set from `logging.*`.
    json: AtomicBool,
    /// Where they go (`stdout`, `stderr` or a path), read by the writer thread only.
    output: ArcSwap<String>,
    /// Bumped to make the writer open its output again (a new config, SIGUSR1).
    generation: AtomicU64,
}

static WRITER: Lazy<Writer> = Lazy::new(|| {
    let spawned = std::thread::Builder::new()
        .name("cc-relay-access-log".into())
        .spawn(drain);
    let writer = Writer {
        queue: ArrayQueue::new(CAPACITY),
        thread: OnceCell::new(),
        passes: AtomicU64::new(0),
        json: AtomicBool::new(false),
        output: ArcSwap::from_pointee("stderr".to_owned()),
        generation: AtomicU64::new(0),
    };
    match spawned {
        Ok(handle) => {
            let _ = writer.thread.set(handle.thread().clone());
        }
        Err(e) => log::error!("the access log cannot start its writer: {e}"),
    }
    writer
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

/// Format `entry` and queue it for the writer; never blocks.
pub fn record(entry: &AccessEntry<'_>) {
    let mut line = if WRITER.json.load(Relaxed) {
        json_line(entry)
    } else {
        text_line(entry)
    };
    line.push(b'\n');
    if WRITER.queue.push(line).is_err() {
        super::metrics::METRICS.access_log_dropped();
    }
}

/// Write what is queued now (before the process exits); waits at most a second.
pub fn flush() {
    // Nothing was ever logged when the writer was never started.
    let Some(thread) = Lazy::get(&WRITER).and_then(|w| w.thread.get()) else {
        return;
    };
    let writer = &*WRITER;
    // A pass that starts after this call has seen every line queued before it.
    let target = writer.passes.load(Relaxed) + 2;
    let deadline = Instant::now() + Duration::from_secs(1);
    while writer.passes.load(Relaxed) < target && Instant::now() < deadline {
        thread.unpark();
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn json_line(e: &AccessEntry<'_>) -> Vec<u8> {
    // Written field by field (a serde_json::Value would allocate a map and every key).
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let mut out = Vec::with_capacity(400);
    let string = |out: &mut Vec<u8>, s: &str| {
        serde_json::to_writer(out, s).expect("a string serialises");
    };
    let _ = write!(
        out,
        "{{\"ts\":\"{}\",\"kind\":\"access\",\"request_id\":",
        humantime::format_rfc3339_millis(SystemTime::now())
    );
    string(&mut out, e.request_id);
    out.extend_from_slice(b",\"client\":");
    match &e.client {
        Some(c) => string(&mut out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"client_name\":");
    string(&mut out, e.client_name);
    out.extend_from_slice(b",\"method\":");
    string(&mut out, e.method);
    out.extend_from_slice(b",\"path\":");
    string(&mut out, e.path);
    let _ = write!(out, ",\"status\":{},\"provider\":", e.status);
    string(&mut out, e.provider);
    out.extend_from_slice(b",\"key\":");
    string(&mut out, e.key);
    let _ = write!(out, ",\"attempts\":{},\"model\":", e.attempts);
    match e.model {
        Some(m) => string(&mut out, m),
        None => out.extend_from_slice(b"null"),
    }
    let u = &e.usage;
    let _ = write!(
        out,
        ",\"input_tokens\":{},\"output_tokens\":{},\"cache_read_tokens\":{},\
         \"cache_creation_tokens\":{},\"ttfb_ms\":",
        u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens
    );
    match e.time_to_first_byte {
        Some(t) => {
            let _ = write!(out, "{}", ms(t));
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"total_ms\":{},\"bytes_sent\":{}}}",
        ms(e.total),
        e.bytes_sent
    );
    out
}

fn text_line(e: &AccessEntry<'_>) -> Vec<u8> {
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    format!(
        "[{}] access request_id={} client={} client_name={} method={} path={:?} status={} provider={} key={} \
         attempts={} model={} in={} out={} cache_read={} cache_creation={} ttfb_ms={} \
         total_ms={} bytes={}",
        humantime::format_rfc3339_millis(SystemTime::now()),
        e.request_id,
        e.client.as_deref().unwrap_or("-"),
        e.client_name,
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

/// The writer thread: every [`FLUSH_EVERY`] (or when [`flush`] wakes it), (re)open the output
/// when told to, write everything queued, flush.
fn drain() {
    let writer = Lazy::force(&WRITER);
    let mut seen = u64::MAX;
    let mut sink: Box<dyn Write> = Box::new(std::io::sink());
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        let generation = writer.generation.load(Relaxed);
        if generation != seen {
            let _ = sink.flush();
            sink = open(&writer.output.load());
            seen = generation;
        }
        while let Some(line) = writer.queue.pop() {
            let _ = sink.write_all(&line);
        }
        let _ = sink.flush();
        writer.passes.fetch_add(1, Relaxed);
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
