//! `cc-relay-mock`: the mock Anthropic upstream as a process, for `make demo` and load tests.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use cc_relay_mock::{KeyLimits, MockConfig, MockUpstream};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

/// A mock Anthropic Messages API upstream.
#[derive(Parser, Debug)]
#[command(name = "cc-relay-mock", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: SocketAddr,
    /// Delay before response headers.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Text deltas per streamed response.
    #[arg(long, default_value_t = 5)]
    events: usize,
    /// Pause before each text delta.
    #[arg(long, default_value_t = 0)]
    event_interval_ms: u64,
    /// Output tokens reported per response.
    #[arg(long, default_value_t = 12)]
    output_tokens: u64,
    /// Default requests-per-minute limit per key (0 = none).
    #[arg(long, default_value_t = 0)]
    rpm: u64,
    /// Default input-tokens-per-minute limit per key (0 = none).
    #[arg(long, default_value_t = 0)]
    itpm: u64,
    /// Default output-tokens-per-minute limit per key (0 = none).
    #[arg(long, default_value_t = 0)]
    otpm: u64,
    /// Record every request in memory (off by default so memory stays flat under load).
    #[arg(long)]
    record: bool,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Act as Microsoft Foundry's Anthropic endpoint (API under /anthropic, Azure-shaped
    /// errors) accepting this key; repeat for more.
    #[arg(long = "foundry-key")]
    foundry_keys: Vec<String>,
    /// Reset every connection (RST) when its Nth request arrives, without answering it.
    #[arg(long)]
    reset_connection_on_request: Option<usize>,
    /// Never answer a request that arrives on a connection idle longer than this (a middlebox
    /// that silently forgot the connection).
    #[arg(long)]
    black_hole_after_idle_ms: Option<u64>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cc-relay-mock: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let cfg = MockConfig {
        latency: Duration::from_millis(args.latency_ms),
        stream_events: args.events,
        event_interval: Duration::from_millis(args.event_interval_ms),
        output_tokens: args.output_tokens,
        record: args.record,
        default_limits: KeyLimits {
            rpm: args.rpm,
            itpm: args.itpm,
            otpm: args.otpm,
        },
        foundry_keys: (!args.foundry_keys.is_empty()).then_some(args.foundry_keys),
        vertex: None,
        bedrock: None,
        reset_connection_on_request: args.reset_connection_on_request,
        black_hole_after_idle: args.black_hole_after_idle_ms.map(Duration::from_millis),
    };
    // Install handlers before announcing readiness: a script may signal as soon as it reads
    // the line, and the default disposition would kill us uncleanly.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mock = MockUpstream::start_on(args.listen, cfg).await?;
    // Tests and scripts wait for this exact line (Rust's stdout is line-buffered, so it is
    // flushed even into a pipe).
    println!("cc-relay-mock listening on {}", mock.base_url());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    mock.shutdown();
    Ok(())
}
