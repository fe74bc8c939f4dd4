//! `cc-relay`: the command line. Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cc_relay::{config, lifecycle};

#[derive(Parser)]
#[command(
    name = "cc-relay",
    version,
    about = "An edge relay for the Anthropic Messages API: many API keys, one endpoint"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        /// Config file. Default: ./cc-relay.yaml, then ~/.config/cc-relay/config.yaml, then
        /// the embedded default (127.0.0.1:8787, Anthropic, ANTHROPIC_API_KEY or passthrough).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take over the listeners of a running relay (then send it SIGQUIT).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Make the running relay reload its config (SIGHUP through its pid file) and report.
    Reload {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Upgrade the running relay in place to the binary now at its path (SIGUSR2): the new
    /// process takes the listeners, the old one finishes its requests and exits.
    Upgrade {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print a running relay's status: providers, circuits, each key's budget by id.
    Status {
        /// The relay's base URL. Default: from the config's `server.listen`.
        #[arg(long)]
        url: Option<String>,
        /// The relay's key (else CC_RELAY_API_KEY, else the config's `server.auth.api_key`).
        #[arg(long)]
        api_key: Option<String>,
        /// Config file to take the address and key from (as `serve` finds it).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print the status as JSON (for scripts).
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw the status live in the terminal until `q`.
        #[arg(short, long)]
        watch: bool,
        /// How often --watch polls the relay.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file; every error names its field.
    Validate(ConfigFile),
    /// Write a documented starter config.
    Init {
        /// Where to write it.
        #[arg(short, long, default_value = "cc-relay.yaml")]
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct ConfigFile {
    #[arg(short, long)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, upgrade } => match lifecycle::serve(config.as_deref(), upgrade) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Config {
            command: ConfigCommand::Validate(ConfigFile { config }),
        } => validate(&config),
        Command::Config {
            command: ConfigCommand::Init { output, force },
        } => init(&output, force),
        Command::Reload { config } => match lifecycle::send_reload(&config) {
            Ok(message) => {
                println!("{message}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Status {
            url,
            api_key,
            config,
            json,
            watch,
            interval,
        } => {
            let target = lifecycle::StatusTarget::resolve(url, api_key, config.as_deref());
            if watch {
                return match target.and_then(|t| lifecycle::watch(&t, interval)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&e),
                };
            }
            let status = target.and_then(|target| target.fetch());
            match status {
                Ok(status) if json => {
                    println!("{status}");
                    ExitCode::SUCCESS
                }
                Ok(status) => {
                    print!("{}", lifecycle::render_table(&status));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Upgrade { config } => match lifecycle::send_upgrade(&config) {
            Ok(message) => {
                println!("{message}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Version => {
            println!("cc-relay {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

fn validate(path: &Path) -> ExitCode {
    match config::load_file_with_warnings(path) {
        Ok((cfg, warnings)) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            let keys: usize = cfg.providers.iter().map(|p| p.keys.len()).sum();
            println!(
                "{}: ok ({} provider(s), {} key(s), listen {})",
                path.display(),
                cfg.providers.len(),
                keys,
                cfg.server.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid config\n{e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn init(output: &Path, force: bool) -> ExitCode {
    if output.exists() && !force {
        eprintln!(
            "error: {} exists; pass --force to overwrite it",
            output.display()
        );
        return ExitCode::FAILURE;
    }
    match std::fs::write(output, config::STARTER_CONFIG) {
        Ok(()) => {
            println!(
                "wrote {}; check it with `cc-relay config validate --config {}`",
                output.display(),
                output.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("writing {}: {e}", output.display())),
    }
}
