//! `cc-relay`: the command line. Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cc_relay::{config, lifecycle};

// Opt-in (`--features jemalloc`): jemalloc in place of glibc's allocator. Measured (issue 15,
// lever 4, docs/BENCHMARKS.md): about a tenth less CPU per request, 5 MB more resident with
// 1,000 streams open; glibc's stays the default because memory is the tighter target.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "cc-relay",
    version,
    about = "An edge relay for the Anthropic Messages API: many API keys, one endpoint"
)]
struct Cli {
    /// Config file, before or after the command (as the Go cc-relay takes it). Default: the
    /// first of ./cc-relay.yaml, ./cc-relay.toml, ./config.yaml, ./config.toml,
    /// ~/.config/cc-relay/config.yaml and config.toml; `serve` then falls back to the embedded
    /// default (127.0.0.1:8787, Anthropic, ANTHROPIC_API_KEY or passthrough).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// The syntax of config files whose name does not say it (`.toml` is TOML, anything else
    /// YAML): yaml or toml. Applies to every config file this process reads, reloads included.
    #[arg(long, global = true, value_parser = parse_format)]
    format: Option<config::Format>,
    #[command(subcommand)]
    command: Command,
}

fn parse_format(name: &str) -> Result<config::Format, String> {
    config::Format::parse(name).ok_or_else(|| format!("{name:?}: expected yaml or toml"))
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
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
    Reload,
    /// Upgrade the running relay in place to the binary now at its path (SIGUSR2): the new
    /// process takes the listeners, the old one finishes its requests and exits.
    Upgrade,
    /// Print a running relay's status: providers, circuits, each key's budget by id.
    Status {
        /// The relay's base URL. Default: from the config's `server.listen`.
        #[arg(long)]
        url: Option<String>,
        /// The relay's key (else CC_RELAY_API_KEY, else the config's `server.auth.api_key`).
        #[arg(long)]
        api_key: Option<String>,
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
    /// Check a config file (--config, else the one `serve` would find); every error names its
    /// field.
    Validate,
    /// Write a documented starter config (TOML with --format toml or a .toml output).
    Init {
        /// Where to write it. Default: cc-relay.yaml (cc-relay.toml with --format toml).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Set Claude Code up to use the relay (its user settings' `env`).
    Cc {
        #[command(subcommand)]
        command: CcCommand,
    },
}

#[derive(Subcommand)]
enum CcCommand {
    /// Point Claude Code at the relay: ANTHROPIC_BASE_URL and the relay's key (or the Go
    /// relay's placeholder token when it needs none) in ~/.claude/settings.json (or
    /// $CLAUDE_CONFIG_DIR/settings.json). Every other setting stays as it was, byte for byte;
    /// the file is replaced atomically after a backup (settings.json.cc-relay.bak).
    Init(CcArgs),
    /// Take the relay's entries out of Claude Code's settings again.
    Remove(CcArgs),
}

#[derive(Args)]
struct CcArgs {
    /// The relay's URL. Default: from the config's `server.listen` (http://127.0.0.1:8787).
    #[arg(long, visible_alias = "proxy-url")]
    url: Option<String>,
    /// Take the relay's key from this environment variable (default: the config's
    /// `server.auth`).
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Print the change instead of making it.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(format) = cli.format {
        config::set_format_override(format);
    }
    let config = cli.config;
    match cli.command {
        Command::Serve { upgrade } => match lifecycle::serve(config.as_deref(), upgrade) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Config {
            command: ConfigCommand::Validate,
        } => match config_file(config) {
            Ok(path) => validate(&path),
            Err(e) => fail(&e),
        },
        Command::Config {
            command: ConfigCommand::Init { output, force },
        } => init(output, cli.format, force),
        Command::Config {
            command: ConfigCommand::Cc { command },
        } => {
            let (args, remove) = match command {
                CcCommand::Init(args) => (args, false),
                CcCommand::Remove(args) => (args, true),
            };
            let setup = lifecycle::ClaudeCodeSetup::resolve(
                args.url,
                args.api_key_env.as_deref(),
                config.as_deref(),
            );
            let done = setup.and_then(|s| {
                if remove {
                    s.remove(args.dry_run)
                } else {
                    s.init(args.dry_run)
                }
            });
            match done {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Reload => match config_file(config)
            .and_then(|c| lifecycle::send_reload(&c).map_err(|e| e.to_string()))
        {
            Ok(message) => {
                println!("{message}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Status {
            url,
            api_key,
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
            let target = match target {
                Ok(t) => t,
                Err(e) => return fail(&e),
            };
            if json {
                return match target.fetch() {
                    Ok(status) => {
                        println!("{status}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e),
                };
            }
            // The Go cc-relay's line first (scripts grep it; its exit status says whether the
            // relay answers), then the table when the relay lets us read it.
            let shown = target
                .url
                .split_once("://")
                .map_or(&*target.url, |(_, a)| a);
            if let Err(e) = target.health() {
                println!("✗ cc-relay is not running ({shown})");
                return fail(&e);
            }
            println!("✓ cc-relay is running ({shown})");
            match target.fetch() {
                Ok(status) => print!("\n{}", lifecycle::render_table(&status)),
                Err(e) => eprintln!("no status: {e}"),
            }
            ExitCode::SUCCESS
        }
        Command::Upgrade => match config_file(config)
            .and_then(|c| lifecycle::send_upgrade(&c).map_err(|e| e.to_string()))
        {
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

/// `--config`, else the first config file of the search path (as `serve` finds it).
fn config_file(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let paths = config::search_paths();
    paths.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
        let looked: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        format!(
            "no config file found (looked for {}); give --config",
            looked.join(", ")
        )
    })
}

/// As the Go cc-relay words it (`✓ FILE is valid`, `✗ Config validation failed: …`), with
/// what was loaded and every error on its own line.
fn validate(path: &Path) -> ExitCode {
    match config::load_file_with_warnings(path) {
        Ok((cfg, warnings)) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            let keys: usize = cfg.providers.iter().map(|p| p.keys.len()).sum();
            println!(
                "✓ {} is valid ({} provider(s), {} key(s), listen {})",
                path.display(),
                cfg.providers.len(),
                keys,
                cfg.server.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("✗ Config validation failed: {}\n{e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// `config init`: the starter in the format asked for (`--format`, else the output's
/// extension, else YAML).
fn init(output: Option<PathBuf>, format: Option<config::Format>, force: bool) -> ExitCode {
    let format = format
        .or_else(|| output.as_deref().map(config::Format::of_extension))
        .unwrap_or(config::Format::Yaml);
    let output = output.unwrap_or_else(|| match format {
        config::Format::Yaml => PathBuf::from("cc-relay.yaml"),
        config::Format::Toml => PathBuf::from("cc-relay.toml"),
    });
    if output.exists() && !force {
        eprintln!(
            "error: {} exists; pass --force to overwrite it",
            output.display()
        );
        return ExitCode::FAILURE;
    }
    match std::fs::write(&output, format.starter()) {
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
