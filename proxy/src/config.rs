//! The regedge config file: one TOML document with a documented default for every key.
//!
//! Loading reports every problem at once, each with its file and line: syntax errors,
//! unknown keys, wrongly typed values and missing required keys (see `recovery`), then the
//! semantic checks of `validate` on whatever could be read.

mod duration;
mod error;
mod recovery;
mod spans;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml_edit::Document;

pub use error::{ConfigError, ConfigErrorKind, ConfigErrors, FloatValue, MacPrefixProblem, NameProblem};

/// The default config, every key present, commented and set to its default value.
/// Operators start from it; [`Config::default_embedded`] parses it.
pub const DEFAULT_CONFIG_TOML: &str = r#"# regedge configuration. Every key is optional; the values below are the defaults.

[node]
# Name of this node in logs and metrics: 1 to 64 characters from A-Z a-z 0-9 . _ -
name = "regedge"
# Worker threads; 0 means one per CPU. At most 256.
workers = 0
# Directory for the state that survives a restart: the registry snapshot (written
# atomically every second while bindings change, and at shutdown) and the flow-token
# key. An absolute path, created if missing; "" keeps no state (a restart forgets every
# binding and phones register again). UDP bindings only: a phone on TCP lost its
# connection with the process and registers again when it reconnects.
state_dir = "/var/lib/regedge"
# Longest a shutdown (SIGTERM or SIGINT) may take, e.g. "5s": REGISTERs that would go
# to a backend are refused (503 with Retry-After) from the signal on, the event loops
# stop, the last registry snapshot is written and the fast path is left pinned or
# detached; whatever still hangs after this long is abandoned, said in the log, and
# regedge exits anyway. More than zero.
shutdown_timeout = "5s"

[sip]
# Addresses the SIP listener binds (UDP; TCP comes with the registration edge).
# At least one, no duplicates. A wildcard address answers for every interface address.
listen = ["127.0.0.1:5060"]
# Host names and addresses that mean "this proxy" in a Request-URI, besides the listen
# addresses, e.g. ["edge.example.net", "[2001:db8::10]"]. Up to 63 bytes each.
local_names = []

[sccp]
# TCP addresses where SCCP (Skinny) phones connect as to their call manager, usually
# port 2000, e.g. ["0.0.0.0:2000"]. No duplicates, none also in sip.listen. Empty means
# no SCCP edge.
listen = []
# A connection that sends neither Register nor KeepAlive within this is closed.
register_timeout = "10s"
# Keepalive interval toward a backend whose RegisterAck gives none.
keepalive_interval = "30s"

[fastpath]
# Interfaces the XDP fast path attaches to, e.g. ["eth0"]. Empty means none.
interfaces = []
# XDP attach mode: "auto" (native where the driver has it, generic otherwise),
# "native", "generic" (both need at least one interface) or "off".
mode = "auto"
# bpffs directory where the maps and the XDP links (link-<interface>) are pinned, so
# that keepalives and refreshes of known phones are answered while regedge is stopped
# or restarting; a new start adopts them and swaps its program in atomically. A clean
# shutdown leaves them attached too (the upgrade path): remove the directory to detach.
# An absolute path. If it is not on a bpffs, regedge mounts one at /sys/fs/bpf when that
# is its parent, and refuses to start otherwise. "" pins nothing: the program detaches
# when regedge exits.
pin_path = "/sys/fs/bpf/regedge"
# Replies the kernel gives one source address per second (and in a burst: one second's
# worth). Requests beyond it go to userspace, which answers at its own pace: the fast
# path cannot be turned into a line-rate reflector toward a spoofed source. Phones
# behind one NAT address share the budget (1000 phones refreshing every 120 s with a
# keepalive every 30 s make about 42 requests per second), so leave room: e.g. 1000 on
# a node reachable from untrusted networks. 0 means no limit; at most 1000000.
reply_rate_per_source = 0

[metrics]
# Address of the Prometheus /metrics HTTP endpoint. Must differ from every sip.listen.
listen = "127.0.0.1:9100"

[admin]
# Address of the admin HTTP API (JSON): GET /live, /ready, /bindings, /backends,
# /groups; POST /backends/<name>/drain, /backends/<name>/enable,
# /bindings/<device>/remove. `regedge ctl` is its client. "" means no admin API.
# Port not 0; not metrics.listen, a sip.listen or an sccp.listen address. Anyone who
# reaches it can drain backends: keep it on loopback, or set a token.
listen = "127.0.0.1:9101"
# Bearer token every request but /live must carry ("Authorization: Bearer <token>");
# "" means none. 16 to 256 printable ASCII characters, no spaces.
token = ""

# Durations below are an integer and a unit, ms, s, m or h: "500ms", "10s", "5m", "1h".

[registration]
# Registration lifetime granted to phones, in seconds: 10 to 86400.
phone_expires = 120
# Registration lifetime asked of the backends, in seconds: phone_expires to 86400.
backend_expires = 3600
# Fraction, 0.0 to 0.5, by which each grant to a phone is randomly shortened so that
# refreshes spread out (like Kamailio's expires_range); 0.0 grants phone_expires exactly.
expires_jitter = 0.1
# A binding lapses this long after the phone's registration expires unrefreshed.
lapse_grace = "10s"
# A REGISTER forwarded to a backend without a final answer after this long counts as a
# failure of that backend. More than zero.
transaction_timeout = "4s"
# Put a Date header (RFC 3261 §20.17) in the 200 OK to a REGISTER; phones without NTP
# (many Cisco models) set their clock from it.
date_header = true

[health]
# Time between two health probes of a backend. More than zero.
interval = "2s"
# Time a probe may take before it counts as failed: more than zero, less than interval.
timeout = "1s"
# Consecutive failed probes that mark an up backend down; at least 1.
down_after = 2
# Consecutive successful probes that mark a down backend up; at least 1.
up_after = 2

[limits]
# Caps on what phones (or anyone who reaches the listeners) can make regedge hold. A
# reload changes them; what is held beyond a lowered cap is kept. Each refusal is
# counted in regedge_limit_refusals_total{limit}. Each 1 to 1000000.
# REGISTERs forwarded to a backend and not yet answered; beyond it a REGISTER that would
# be forwarded gets 503 with Retry-After.
max_pending_registrations = 10000
# SIP TCP connections from phones; beyond it a new connection is accepted and closed at
# once, with a log line.
max_sip_tcp_connections = 50000
# SCCP phone connections; beyond it a new connection is accepted and closed at once,
# with a log line.
max_sccp_sessions = 50000

[cluster]
# Several regedge nodes behind one load balancer share their bindings through Redis or
# Valkey, so that a node taking over another's phones answers them without a new
# registration upstream. store: "redis://host:port[/db]", or a list of them for a Redis
# Cluster (list every master: each is scanned for records); "" or [] means a single node
# with no store. SCCP sessions are not shared: they die with their node's TCP connections
# and the phones register again through another node.
store = ""
# The shared address phones and call managers see ("ip:port", usually the balancer's
# address, on every node's loopback with direct server return): it goes in Path,
# Record-Route and flow-token URIs, so that a new request reaches whichever node is live.
# Requests a node sends upstream keep the node's own address in their Via. "" means the
# node's own addresses.
advertise = ""
# How long a node's ownership of a binding lasts without renewal (renewed every third of
# it). A node that dies leaves its bindings to the others after this long; a phone that
# shows up at another node is taken over at once. 1s to 10m.
lease = "15s"
# The nodes' shared secret (the key of the flow tokens in Path and Record-Route, which any
# node must verify): the same on every node, 16 to 256 printable ASCII characters without
# spaces. Required with a store; "" keeps the node's own key (state_dir).
secret = ""

[routing]
# Group of the phones that no [[rules]] entry matches. Must be the name of a [[groups]]
# entry if there is any; with no group at all there is no registration edge.
default_group = "default"

# Backends, groups and rules have no default: there are none unless written.
#
# [[backends]]: a call-manager node registrations are forwarded to. Keys:
#   name               required; 1 to 64 characters from A-Z a-z 0-9 . _ -; unique
#   address            required; "ip:port" of the node, port not 0
#   protocol           "sip" (default) or "sccp"
#   transport          "udp" (default) or "tcp"; protocol "sccp" needs "tcp"
#   max_register_rate  most REGISTERs forwarded to it per second, at least 1; default 200
#   path               true (default): the node honours Path (RFC 3327), and requests
#                      for a phone come back with regedge's Path as their Route; false:
#                      regedge rewrites each REGISTER's contact to a flow-token URI at
#                      itself, and requests for the phone come back to that URI
#
# [[groups]]: backends that serve the same phones, in priority order. Keys:
#   name               required; same characters as a backend name; unique
#   backends           required; 1 to 8 backend names, no repeats, all of one protocol
#
# [[rules]]: which group a phone registers through; the first matching rule wins, and
# routing.default_group takes the rest. Keys:
#   group              required; name of a [[groups]] entry
#   and exactly one of
#   device             glob on the device name, with * (any run of characters) and
#                      ? (one character), e.g. "SEP0011*"; 1 to 64 characters
#   mac_prefix         start of the MAC address: 1 to 12 hex digits, optionally
#                      separated by : - or ., e.g. "00:11:22", "0011.22" or "001122"
#   domain             domain of the address of record, e.g. "branch.example.net"
#
# For example:
#[[backends]]
#name = "cucm-a"
#address = "192.0.2.11:5060"
#
#[[backends]]
#name = "cucm-b"
#address = "192.0.2.12:5060"
#transport = "tcp"
#
#[[groups]]
#name = "default"
#backends = ["cucm-a", "cucm-b"]
#
#[[groups]]
#name = "lab"
#backends = ["cucm-b"]
#
#[[rules]]
#group = "lab"
#device = "SEP0011*"
#
#[[rules]]
#group = "lab"
#domain = "lab.example.net"
"#;

/// Origin named in the errors of [`DEFAULT_CONFIG_TOML`].
const EMBEDDED_ORIGIN: &str = "<embedded default config>";

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`: identity and threading of this node. Default: see [`NodeConfig`].
    pub node: NodeConfig,
    /// `[sip]`: the SIP listener. Default: see [`SipConfig`].
    pub sip: SipConfig,
    /// `[sccp]`: the SCCP (Skinny) listener. Default: see [`SccpConfig`].
    pub sccp: SccpConfig,
    /// `[fastpath]`: the XDP fast path. Default: see [`FastpathConfig`].
    pub fastpath: FastpathConfig,
    /// `[metrics]`: the Prometheus endpoint. Default: see [`MetricsConfig`].
    pub metrics: MetricsConfig,
    /// `[admin]`: the admin HTTP API. Default: see [`AdminConfig`].
    pub admin: AdminConfig,
    /// `[registration]`: registration lifetimes and timeouts. Default: see
    /// [`RegistrationConfig`].
    pub registration: RegistrationConfig,
    /// `[health]`: health probing of the backends. Default: see [`HealthConfig`].
    pub health: HealthConfig,
    /// `[limits]`: caps on pending REGISTERs, connections and sessions. Default: see
    /// [`LimitsConfig`].
    pub limits: LimitsConfig,
    /// `[cluster]`: bindings shared with other nodes through a store. Default: see
    /// [`ClusterConfig`] (a single node).
    pub cluster: ClusterConfig,
    /// `[routing]`: where phones that no rule matches go. Default: see [`RoutingConfig`].
    pub routing: RoutingConfig,
    /// `[[backends]]`: the call-manager nodes registrations are forwarded to, names unique.
    /// Default: none.
    pub backends: Vec<BackendConfig>,
    /// `[[groups]]`: backends serving the same phones, names unique. No group at all means
    /// no registration edge. Default: none.
    pub groups: Vec<GroupConfig>,
    /// `[[rules]]`: which group a phone registers through, first match wins; phones that
    /// no rule matches go to `routing.default_group`. Default: none.
    pub rules: Vec<RuleConfig>,
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
    /// Directory of the state kept across restarts (registry snapshot, flow-token key):
    /// an absolute path, created if missing; empty keeps no state. Default:
    /// `"/var/lib/regedge"`.
    pub state_dir: PathBuf,
    /// Longest a shutdown may take before regedge exits anyway; more than zero. Default:
    /// `"5s"`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown_timeout: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "regedge".to_owned(),
            workers: 0,
            state_dir: PathBuf::from("/var/lib/regedge"),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// `[sccp]`: where SCCP phones connect (TCP), as they would to their call manager.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SccpConfig {
    /// TCP addresses to listen on, usually port 2000: no duplicates, no port 0, none also in
    /// `sip.listen`. Empty means no SCCP edge. Default: `[]`.
    pub listen: Vec<SocketAddr>,
    /// A new connection that sends neither Register nor KeepAlive within this is closed;
    /// more than zero. Default: `"10s"`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub register_timeout: Duration,
    /// regedge's keepalive interval toward a backend whose RegisterAck names none; more
    /// than zero. Default: `"30s"`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub keepalive_interval: Duration,
}

impl Default for SccpConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            register_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
        }
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
    /// bpffs directory where the maps and the XDP links (`link-<interface>`) are pinned,
    /// so that the kernel keeps answering while regedge is stopped and a new start adopts
    /// them (a clean shutdown keeps them too: remove the directory to detach). An absolute
    /// path; when it is not on a bpffs, one is mounted at its parent if that is exactly
    /// `/sys/fs/bpf`, otherwise starting fails. Empty: nothing is pinned and the program
    /// detaches at exit. Default: `"/sys/fs/bpf/regedge"`.
    pub pin_path: PathBuf,
    /// Replies the kernel gives one source address per second (a burst of one second's
    /// worth); beyond, its requests go to userspace (`rate_limited` in
    /// `regedge_fastpath_passed_total`). 0: no limit. At most 1000000. Default: 0.
    pub reply_rate_per_source: u32,
}

impl Default for FastpathConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: FastpathMode::default(),
            pin_path: PathBuf::from("/sys/fs/bpf/regedge"),
            reply_rate_per_source: 0,
        }
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

/// `[cluster]`: several nodes behind one balancer, bindings shared through Redis/Valkey.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Store URLs (`redis://host:port[/db]`): one server, or the masters of a Redis Cluster.
    /// Empty: a single node with no store. Default: empty.
    #[serde(deserialize_with = "one_or_many")]
    pub store: Vec<String>,
    /// The shared address in Path, Record-Route and flow-token URIs; `None` (`""`): the
    /// node's own addresses. Default: `""`.
    #[serde(deserialize_with = "optional_socket_addr")]
    pub advertise: Option<SocketAddr>,
    /// How long a node's ownership of a binding lasts unrenewed: 1s to 10m. Default: `"15s"`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lease: Duration,
    /// The nodes' shared flow-token secret; required with a store. Default: `""`.
    pub secret: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { store: Vec::new(), advertise: None, lease: Duration::from_secs(15), secret: String::new() }
    }
}

impl ClusterConfig {
    /// A store is configured: bindings are shared.
    pub fn is_shared(&self) -> bool {
        !self.store.is_empty()
    }
}

/// A string or a list of strings; `""` is none.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) if one.is_empty() => Vec::new(),
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// `[admin]`: the admin HTTP API (bindings, backends, groups; drain, enable, remove;
/// `/live` and `/ready`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin API; `""` (`None`) means none. Port not 0, not
    /// `metrics.listen`, not a `sip.listen` or `sccp.listen` address. Default:
    /// `"127.0.0.1:9101"`.
    #[serde(deserialize_with = "optional_socket_addr")]
    pub listen: Option<SocketAddr>,
    /// Bearer token every request but `/live` must carry; empty means none. 16 to 256
    /// printable ASCII characters without spaces. Default: `""`.
    pub token: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9101))), token: String::new() }
    }
}

/// `""` as `None`, else an `ip:port`.
fn optional_socket_addr<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!("{text:?} is not an address such as \"127.0.0.1:9101\" (\"\" for none)"))
    })
}

/// `[registration]`: registration lifetimes and timeouts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Registration lifetime granted to phones, in seconds: 10 to 86400. Default: 120.
    pub phone_expires: u32,
    /// Registration lifetime asked of the backends, in seconds: at least `phone_expires`,
    /// at most 86400. Default: 3600.
    pub backend_expires: u32,
    /// Fraction, 0.0 to 0.5, by which each grant to a phone is randomly shortened so that
    /// refreshes spread out (like Kamailio's `expires_range`). Default: 0.1.
    pub expires_jitter: f64,
    /// A binding lapses at the phone's expiry plus this grace. Default: `"10s"`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lapse_grace: Duration,
    /// A REGISTER forwarded to a backend without a final answer after this long is a
    /// failure of that backend; more than zero. Default: `"4s"`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub transaction_timeout: Duration,
    /// Answers to REGISTER carry a Date header. Default: true.
    pub date_header: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            phone_expires: 120,
            backend_expires: 3600,
            expires_jitter: 0.1,
            lapse_grace: Duration::from_secs(10),
            transaction_timeout: Duration::from_secs(4),
            date_header: true,
        }
    }
}

/// `[health]`: health probing of the backends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Time between two probes of a backend; more than zero. Default: `"2s"`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// Time a probe may take before it counts as failed: more than zero, less than
    /// `interval`. Default: `"1s"`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// Consecutive failed probes that mark an up backend down; at least 1. Default: 2.
    pub down_after: u32,
    /// Consecutive successful probes that mark a down backend up; at least 1. Default: 2.
    pub up_after: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { interval: Duration::from_secs(2), timeout: Duration::from_secs(1), down_after: 2, up_after: 2 }
    }
}

/// `[limits]`: caps on what peers can make regedge hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// REGISTERs forwarded and not yet answered; beyond it 503 with Retry-After. 1 to
    /// 1000000. Default: 10000.
    pub max_pending_registrations: usize,
    /// SIP TCP connections from phones; beyond it a new one is closed at once. 1 to
    /// 1000000. Default: 50000.
    pub max_sip_tcp_connections: usize,
    /// SCCP phone connections; beyond it a new one is closed at once. 1 to 1000000.
    /// Default: 50000.
    pub max_sccp_sessions: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_pending_registrations: 10_000, max_sip_tcp_connections: 50_000, max_sccp_sessions: 50_000 }
    }
}

/// `[routing]`: where phones that no rule matches go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Group of the phones that no `[[rules]]` entry matches; must be the name of a
    /// `[[groups]]` entry when there is any. Default: `"default"`.
    pub default_group: String,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self { default_group: "default".to_owned() }
    }
}

/// A `[[backends]]` entry: a call-manager node registrations are forwarded to.
/// `name` and `address` are required; there is no default backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Name in groups, logs and metrics: 1 to 64 characters from `[A-Za-z0-9._-]`, unique
    /// among backends. Required.
    pub name: String,
    /// Address of the node; port not 0. Required.
    pub address: SocketAddr,
    /// Protocol the node speaks. Default: `sip`.
    #[serde(default)]
    pub protocol: BackendProtocol,
    /// Transport to the node; `tcp` when `protocol` is `sccp`. Default: `udp`.
    #[serde(default)]
    pub transport: BackendTransport,
    /// Most REGISTERs forwarded to this node per second; at least 1. Default: 200.
    #[serde(default = "default_max_register_rate")]
    pub max_register_rate: u32,
    /// Whether the node honours Path (RFC 3327): requests to a phone then carry regedge's
    /// Path as their Route. `false`: the contact of each REGISTER is rewritten to a
    /// flow-token URI at regedge instead. Default: `true`.
    #[serde(default = "default_true")]
    pub path: bool,
}

fn default_true() -> bool {
    true
}

fn default_max_register_rate() -> u32 {
    200
}

/// The protocol a backend speaks, written in lowercase in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    /// SIP.
    #[default]
    Sip,
    /// Cisco SCCP (Skinny), over TCP only.
    Sccp,
}

impl BackendProtocol {
    /// The spelling used in the config file.
    pub fn label(self) -> &'static str {
        match self {
            Self::Sip => "sip",
            Self::Sccp => "sccp",
        }
    }
}

impl fmt::Display for BackendProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The transport to a backend, written in lowercase in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendTransport {
    /// UDP.
    #[default]
    Udp,
    /// TCP.
    Tcp,
}

impl BackendTransport {
    /// The spelling used in the config file.
    pub fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

impl fmt::Display for BackendTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A `[[groups]]` entry: backends that serve the same phones. Both keys are required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Name in rules, `routing.default_group`, logs and metrics: 1 to 64 characters from
    /// `[A-Za-z0-9._-]`, unique among groups. Required.
    pub name: String,
    /// Names of `[[backends]]` entries in priority order, first preferred: 1 to 8, no
    /// repeats, all of the same protocol. Required.
    pub backends: Vec<String>,
}

/// A `[[rules]]` entry: phones it matches register through `group`. `group` is required,
/// and exactly one of `device`, `mac_prefix`, `domain` must be set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name of a `[[groups]]` entry. Required.
    pub group: String,
    /// Glob on the device name: `*` matches any run of characters, `?` one character,
    /// everything else itself, e.g. `"SEP0011*"`. 1 to 64 printable ASCII characters, without
    /// whitespace or `[ ] { } \`. Default: unset.
    #[serde(default)]
    pub device: Option<String>,
    /// Start of the device's MAC address: 1 to 12 hex digits in either case, optionally
    /// separated by `:`, `-` or `.`, e.g. `"00:11:22"`, `"0011.22"`, `"001122"`. Default: unset.
    #[serde(default)]
    pub mac_prefix: Option<String>,
    /// Domain of the address of record, a host name (letters, digits, `-`, `.`; up to 253
    /// bytes), compared case-insensitively. Default: unset.
    #[serde(default)]
    pub domain: Option<String>,
}

/// What a rule matches, as [`RuleConfig::matcher`] gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleMatcher {
    /// A glob on the device name, as written: `*` any run of characters, `?` one character.
    Device(String),
    /// A MAC address prefix, normalized to lowercase hex digits without separators
    /// (`"00:11:2A"` becomes `"00112a"`).
    MacPrefix(String),
    /// An address-of-record domain, in lowercase.
    Domain(String),
}

impl RuleConfig {
    /// What this rule matches.
    ///
    /// # Panics
    /// If the rule does not set exactly one of `device`, `mac_prefix`, `domain`, which
    /// [`Config::from_toml`] rules out.
    pub fn matcher(&self) -> RuleMatcher {
        match (&self.device, &self.mac_prefix, &self.domain) {
            (Some(pattern), None, None) => RuleMatcher::Device(pattern.clone()),
            (None, Some(prefix), None) => RuleMatcher::MacPrefix(
                prefix.chars().filter(char::is_ascii_hexdigit).map(|digit| digit.to_ascii_lowercase()).collect(),
            ),
            (None, None, Some(domain)) => RuleMatcher::Domain(domain.to_ascii_lowercase()),
            _ => panic!("rule for group {:?} must set exactly one of device, mac_prefix, domain", self.group),
        }
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
        let recovered = recovery::deserialize_reporting_all(text, &document);
        let mut errors = recovered.errors;
        if let Some(config) = &recovered.config {
            // The config was read from the text with its offending entries blanked out, so
            // its issues are located there: a `[[table]]` entry after a blanked one keeps its
            // index. Lines are the same in both texts.
            let read = Document::parse(recovered.text.as_str()).ok();
            let issues = validate::check(config, &document);
            errors.extend(issues.into_iter().map(|issue| issue.located_in(read.as_ref().unwrap_or(&document))));
        }
        match recovered.config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors::new(origin, errors)),
        }
    }

    /// What is allowed but unwise, one sentence each (logged at start and reload, printed
    /// by `check-config`).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(listen) = self.admin.listen
            && !listen.ip().is_loopback()
            && self.admin.token.is_empty()
        {
            warnings.push(format!(
                "admin.listen {listen} is not a loopback address and admin.token is empty: whoever reaches it \
                 can drain backends and remove bindings"
            ));
        }
        if self.cluster.is_shared() && self.cluster.advertise.is_none() {
            warnings.push(
                "cluster.store is set but cluster.advertise is not: Path and Record-Route name this node's own \
                 address, so requests for its phones cannot reach another node if it dies"
                    .to_owned(),
            );
        }
        warnings
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
