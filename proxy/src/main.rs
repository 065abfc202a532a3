use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use regedge::{
    admin::client::{self, Client},
    config::Config,
};

/// regedge: registrar edge proxy for IP phones.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr: `text`, or `json` (one object per line, with every
    /// structured field).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (with the embedded default config when --config is absent). SIGHUP
    /// reloads the config file; SIGTERM and SIGINT shut down within
    /// `[node] shutdown_timeout`.
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
    /// Look at and steer a running regedge through its admin API (`[admin] listen`).
    Ctl(CtlArgs),
}

#[derive(clap::Args)]
struct CtlArgs {
    /// Address of the admin API (`[admin] listen`).
    #[arg(long, default_value = "127.0.0.1:9101")]
    admin: SocketAddr,
    /// The bearer token (`[admin] token`), when one is configured.
    #[arg(long)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(Subcommand)]
enum CtlAction {
    /// List the bindings (sorted by device), or look them up by device, AOR or flow.
    Bindings {
        /// Device key (`dev:SEP...`, `mac:...`, `aor:...`) or what follows its prefix.
        #[arg(long)]
        device: Option<String>,
        /// Address of record, e.g. `sip:1001@example.net`.
        #[arg(long)]
        aor: Option<String>,
        /// The phone's address, `ip:port` or `udp:ip:port`.
        #[arg(long)]
        flow: Option<String>,
        /// Bindings per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Bindings to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// The backends: state, health, bindings, rate limit.
    Backends,
    /// The failover groups: backends in priority order and the active one.
    Groups,
    /// Drain a backend: no new phones; its phones move at their next refresh.
    Drain { backend: String },
    /// Enable a drained backend: its group's phones come back at their next refresh.
    Enable { backend: String },
    /// Remove a device's binding (and its kernel entry) and de-register it upstream.
    Remove { device: String },
    /// Whether the node is ready (exit status 0) or not (1, with the reason).
    Ready,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Demo { duration, no_xdp } => {
            regedge::demo::main(&regedge::demo::DemoOptions { duration, xdp: !no_xdp, ..Default::default() })
        }
        Command::Run { config } => {
            let loaded = match &config {
                Some(path) => match Config::load_file(path) {
                    Ok(config) => config,
                    Err(errors) => {
                        eprintln!("{errors}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::default_embedded(),
            };
            match regedge::run::run_with(loaded, regedge::run::RunOptions { config_path: config }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match Config::load_file(&file) {
            Ok(config) => {
                for warning in config.warnings() {
                    eprintln!("{}: warning: {warning}", file.display());
                }
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
        Command::Ctl(args) => ctl(args),
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// `regedge ctl`: one request, its answer as a table (or JSON), exit status 0 when the
/// API said yes.
fn ctl(args: CtlArgs) -> ExitCode {
    let api = Client { addr: args.admin, token: args.token.clone(), timeout: Duration::from_secs(5) };
    let (answer, render): (_, fn(&serde_json::Value) -> String) = match &args.action {
        CtlAction::Bindings { device, aor, flow, limit, offset } => {
            let mut query = vec![format!("limit={limit}"), format!("offset={offset}")];
            for (key, value) in [("device", device), ("aor", aor), ("flow", flow)] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", client::encode(value)));
                }
            }
            (api.get(&format!("/bindings?{}", query.join("&"))), client::render_bindings)
        }
        CtlAction::Backends => (api.get("/backends"), client::render_backends),
        CtlAction::Groups => (api.get("/groups"), client::render_groups),
        CtlAction::Drain { backend } => {
            (api.post(&format!("/backends/{}/drain", client::encode(backend))), render_drain as fn(&_) -> _)
        }
        CtlAction::Enable { backend } => {
            (api.post(&format!("/backends/{}/enable", client::encode(backend))), render_drain)
        }
        CtlAction::Remove { device } => {
            (api.post(&format!("/bindings/{}/remove", client::encode(device))), render_removed)
        }
        CtlAction::Ready => (api.get("/ready"), render_ready),
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("regedge ctl: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer.body).unwrap_or_default());
    } else if answer.status < 400 || matches!(args.action, CtlAction::Ready) {
        print!("{}", render(&answer.body));
    }
    match answer.error() {
        None => ExitCode::SUCCESS,
        Some(error) => {
            if !args.json && !matches!(args.action, CtlAction::Ready) {
                eprintln!("regedge ctl: {} {error}", answer.status);
            }
            ExitCode::FAILURE
        }
    }
}

fn render_drain(body: &serde_json::Value) -> String {
    let field = |key: &str| body.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
    let changed = body.get("changed").and_then(serde_json::Value::as_bool) == Some(true);
    format!(
        "{}: {}{}\n",
        field("backend").unwrap_or_default(),
        field("state").unwrap_or_default(),
        if changed { "" } else { " (unchanged)" }
    )
}

fn render_removed(body: &serde_json::Value) -> String {
    let removed = body.get("removed").cloned().unwrap_or_default();
    let field = |key: &str| removed.get(key).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    format!("removed {} ({}, on {}); de-registered upstream\n", field("device"), field("aor"), field("backend"))
}

fn render_ready(body: &serde_json::Value) -> String {
    match body.get("reason").and_then(serde_json::Value::as_str) {
        Some(reason) => format!("not ready: {reason}\n"),
        None => {
            let checks = body.get("checks").and_then(serde_json::Value::as_object);
            let details: Vec<String> = checks
                .into_iter()
                .flatten()
                .map(|(key, value)| format!("{key}: {}", value.as_str().unwrap_or("")))
                .collect();
            format!("ready ({})\n", details.join(", "))
        }
    }
}
