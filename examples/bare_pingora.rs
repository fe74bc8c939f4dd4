//! A bare Pingora HTTP proxy: every request goes to one upstream, with no relay logic at all
//! (no config, no key pool, no header rewriting, no body parsing, no usage accounting).
//!
//! It exists as the floor for `scripts/load.sh` (target `pingora`) and
//! `scripts/load_profile.py --target pingora`: what any Pingora proxy costs on this machine, in
//! CPU, memory and instructions per request, before the relay adds anything. The relay's cost
//! above this line is ours; the cost below it is Pingora's.
//!
//! For the comparison to be fair the server is built with the relay's own settings
//! (`cc_relay::lifecycle::runtime_conf`, `worker_services` and `client_listener`): one
//! single-threaded service per thread on one socket, each with its own upstream pool, and a listener without Pingora's 64 KiB per-connection read
//! buffer. Logging is
//! set up like the relay's at level `warn` (`RUST_LOG` overrides it).
//!
//! usage: `bare_pingora LISTEN UPSTREAM THREADS`, e.g.
//! `target/release/examples/bare_pingora 127.0.0.1:9000 127.0.0.1:9001 2`
//! (build: `cargo build --release --example bare_pingora`).

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::RunArgs;

const USAGE: &str = "usage: bare_pingora LISTEN UPSTREAM THREADS
  LISTEN    address to listen on, e.g. 127.0.0.1:9000
  UPSTREAM  plain-HTTP upstream every request is proxied to, e.g. 127.0.0.1:9001
  THREADS   worker threads (one single-threaded runtime each, no work stealing), >= 1";

/// Proxies every request to one upstream address.
struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let [listen, upstream, threads] = args else {
        return Err(format!("expected 3 arguments, got {}", args.len()));
    };
    let listen = listen
        .parse()
        .map_err(|e| format!("LISTEN {listen:?}: {e}"))?;
    let upstream = upstream
        .parse()
        .map_err(|e| format!("UPSTREAM {upstream:?}: {e}"))?;
    let threads = match threads.parse::<usize>() {
        Ok(n) if n >= 1 => n,
        _ => return Err(format!("THREADS {threads:?}: not a whole number >= 1")),
    };
    Ok(Args {
        listen,
        upstream,
        threads,
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare_pingora: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    env_logger::Builder::new()
        .parse_filters("warn")
        .parse_filters(&std::env::var("RUST_LOG").unwrap_or_default())
        .init();

    // The relay's runtime and listener settings (`cc_relay::lifecycle`); the short grace
    // periods are those scripts/load.sh gives the relay, so SIGTERM stops this process within a
    // couple of seconds (Pingora's default grace period is 5 minutes).
    let conf = ServerConf {
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..cc_relay::lifecycle::runtime_conf(args.threads)
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    // One single-threaded service per thread on one socket, as the relay runs.
    let workers = cc_relay::lifecycle::worker_services(
        "bare pingora",
        args.threads,
        || {
            pingora::proxy::http_proxy(
                &server.configuration,
                Bare {
                    upstream: args.upstream,
                },
            )
        },
        || cc_relay::lifecycle::client_listener(args.listen),
    );
    for worker in workers {
        server.add_service(worker);
    }
    server.run(RunArgs::default());
    ExitCode::SUCCESS
}
