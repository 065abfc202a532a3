//! The regedge config file: one TOML document with a documented default for every key.
//!
//! Loading reports every problem at once, each with its file and line: syntax errors,
//! unknown keys and wrongly typed values (see `recovery`), then the semantic checks of
//! `validate` on whatever could be read.

mod error;
mod recovery;
mod spans;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml_edit::Document;

pub use error::{ConfigError, ConfigErrorKind, ConfigErrors, NameProblem};

/// The default config, every key present, commented and set to its default value.
/// Operators start from it; [`Config::default_embedded`] parses it.
pub const DEFAULT_CONFIG_TOML: &str = r#"# regedge configuration. Every key is optional; the values below are the defaults.

[node]
# Name of this node in logs and metrics: 1 to 64 characters from A-Z a-z 0-9 . _ -
name = "regedge"
# Worker threads; 0 means one per CPU. At most 256.
workers = 0

[sip]
# Addresses the SIP listener binds (UDP; TCP comes with the registration edge).
# At least one, no duplicates. A wildcard address answers for every interface address.
listen = ["127.0.0.1:5060"]
# Host names and addresses that mean "this proxy" in a Request-URI, besides the listen
# addresses, e.g. ["edge.example.net", "[2001:db8::10]"]. Up to 63 bytes each.
local_names = []

[fastpath]
# Interfaces the XDP fast path attaches to, e.g. ["eth0"]. Empty means none.
interfaces = []
# XDP attach mode: "auto" (native where the driver has it, generic otherwise),
# "native", "generic" (both need at least one interface) or "off".
mode = "auto"
# bpffs directory for pinned maps and programs (accepted, not used yet).
pin_path = "/sys/fs/bpf/regedge"

[metrics]
# Address of the Prometheus /metrics HTTP endpoint. Must differ from every sip.listen.
listen = "127.0.0.1:9100"
"#;

/// Origin named in the errors of [`DEFAULT_CONFIG_TOML`].
const EMBEDDED_ORIGIN: &str = "<embedded default config>";

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`: identity and threading of this node. Default: see [`NodeConfig`].
    pub node: NodeConfig,
    /// `[sip]`: the SIP listener. Default: see [`SipConfig`].
    pub sip: SipConfig,
    /// `[fastpath]`: the XDP fast path. Default: see [`FastpathConfig`].
    pub fastpath: FastpathConfig,
    /// `[metrics]`: the Prometheus endpoint. Default: see [`MetricsConfig`].
    pub metrics: MetricsConfig,
}

/// `[node]`: identity and threading of this node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node in logs and metrics: 1 to 64 characters from `[A-Za-z0-9._-]`.
    /// Default: `"regedge"`.
    pub name: String,
    /// Number of worker threads, at most 256; 0 means one per CPU. Default: 0.
    pub workers: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { name: "regedge".to_owned(), workers: 0 }
    }
}

/// `[sip]`: the SIP listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// Addresses to listen on (UDP): at least one, no duplicates, no port 0.
    /// Default: `["127.0.0.1:5060"]`.
    pub listen: Vec<SocketAddr>,
    /// Host names and addresses that mean "this proxy" in a Request-URI, besides the listen
    /// addresses:
    /// each 1 to 63 bytes of letters, digits, `-` and `.`, or a bracketed IPv6 literal such
    /// as `"[2001:db8::1]"`; no duplicates (compared case-insensitively). Default: `[]`.
    pub local_names: Vec<String>,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self { listen: vec![SocketAddr::from(([127, 0, 0, 1], 5060))], local_names: Vec::new() }
    }
}

/// `[fastpath]`: the XDP fast path that answers keepalives and refreshes in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastpathConfig {
    /// Network interfaces to attach to: each 1 to 15 bytes, without `/` or whitespace, no
    /// duplicates. Empty means the fast path is attached nowhere. Default: `[]`.
    pub interfaces: Vec<String>,
    /// How to attach the XDP program; `native` and `generic` need at least one interface.
    /// Default: `auto`.
    pub mode: FastpathMode,
    /// bpffs directory where maps and programs are pinned (accepted, not used yet).
    /// Default: `"/sys/fs/bpf/regedge"`.
    pub pin_path: PathBuf,
}

impl Default for FastpathConfig {
    fn default() -> Self {
        Self { interfaces: Vec::new(), mode: FastpathMode::default(), pin_path: PathBuf::from("/sys/fs/bpf/regedge") }
    }
}

/// How the XDP program is attached, written in lowercase in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FastpathMode {
    /// Native (driver) mode where the driver supports it, generic mode otherwise.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
    /// No fast path: everything is handled in userspace.
    Off,
}

impl FastpathMode {
    /// The spelling used in the config file.
    pub fn label(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for FastpathMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the `/metrics` HTTP endpoint: port not 0, not one of `sip.listen`.
    /// Default: `"127.0.0.1:9100"`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9100)) }
    }
}

impl Config {
    /// Reads and checks the config file at `path`; errors name it as their origin.
    pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, &origin),
            Err(err) => Err(ConfigErrors::new(&origin, vec![ConfigError::io(&err)])),
        }
    }

    /// Parses and checks config text; `origin` is the file name used in error messages.
    /// A syntax error is reported alone; otherwise every unknown key, wrongly typed value
    /// and failed check is reported, sorted by line.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        let document =
            Document::parse(text).map_err(|err| ConfigErrors::new(origin, vec![ConfigError::syntax(text, &err)]))?;
        let recovered = recovery::deserialize_reporting_all(text);
        let mut errors = recovered.errors;
        if let Some(config) = &recovered.config {
            let issues = validate::check(config);
            errors.extend(issues.into_iter().map(|issue| issue.located_in(&document)));
        }
        match recovered.config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors::new(origin, errors)),
        }
    }

    /// The config of [`DEFAULT_CONFIG_TOML`].
    ///
    /// # Panics
    /// If the embedded text is invalid, which a unit test rules out.
    pub fn default_embedded() -> Config {
        Self::from_toml(DEFAULT_CONFIG_TOML, EMBEDDED_ORIGIN)
            .unwrap_or_else(|errors| panic!("the embedded default config is invalid:\n{errors}"))
    }
}

#[cfg(test)]
mod tests;
