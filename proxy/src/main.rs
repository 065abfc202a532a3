use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use regedge::config::Config;

/// regedge: registrar edge proxy for IP phones.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (with the embedded default config when --config is absent).
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a config file and report every error with its line.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Print the embedded default config, every key documented.
    DefaultConfig,
    /// Run the whole system for a while: regedge, simulated call servers (SIP and SCCP,
    /// primaries killed and brought back midway) and phones, with a live view and a summary.
    Demo {
        /// How long the demo runs, e.g. 20s or 2m (at least 15s).
        #[arg(long, default_value = "60s", value_parser = regedge::demo::parse_duration)]
        duration: std::time::Duration,
        /// Everything on loopback, in userspace, even as root (no namespaces, no XDP).
        #[arg(long)]
        no_xdp: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Demo { duration, no_xdp } => {
            regedge::demo::main(&regedge::demo::DemoOptions { duration, xdp: !no_xdp, ..Default::default() })
        }
        Command::Run { config } => {
            let config = match config {
                Some(path) => match Config::load_file(&path) {
                    Ok(config) => config,
                    Err(errors) => {
                        eprintln!("{errors}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::default_embedded(),
            };
            match regedge::run::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match Config::load_file(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::DefaultConfig => {
            print!("{}", regedge::config::DEFAULT_CONFIG_TOML);
            ExitCode::SUCCESS
        }
    }
}
