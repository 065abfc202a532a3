//! Config errors: every problem found in one file, each with its line.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::duration::Shown;
use super::spans::line_of;
use super::{BackendProtocol, FastpathMode};

/// Every problem found in one config file, sorted by line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    /// The file the errors are about, as named in the messages.
    pub origin: String,
    /// The problems, sorted by line; those without a line come first.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub(super) fn new(origin: &str, mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|error| error.line);
        Self { origin: origin.to_owned(), errors }
    }
}

/// One `origin:line: message` per line (`origin: message` for an error without a line).
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            match error.line {
                Some(line) => write!(f, "{}:{line}: {}", self.origin, error.kind)?,
                None => write!(f, "{}: {}", self.origin, error.kind)?,
            }
        }
        Ok(())
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line the problem is on; `None` when it has no place in the text.
    pub line: Option<usize>,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

impl ConfigError {
    /// The problem `kind` at byte `offset` of `text`.
    pub(super) fn at_offset(text: &str, offset: Option<usize>, kind: ConfigErrorKind) -> Self {
        Self { line: offset.map(|offset| line_of(text, offset)), kind }
    }

    pub(super) fn io(err: &std::io::Error) -> Self {
        Self { line: None, kind: ConfigErrorKind::Io { kind: err.kind(), message: err.to_string() } }
    }

    pub(super) fn syntax(text: &str, err: &toml_edit::TomlError) -> Self {
        let kind = ConfigErrorKind::Syntax { message: err.message().to_owned() };
        Self::at_offset(text, err.span().map(|span| span.start), kind)
    }
}

/// What is wrong in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    #[error("cannot read the config file: {message}")]
    Io { kind: std::io::ErrorKind, message: String },
    /// The text is not valid TOML (toml_edit's message).
    #[error("invalid TOML: {message}")]
    Syntax { message: String },
    /// An unknown key or a value of the wrong type (toml's message).
    #[error("{message}")]
    Field { message: String },

    /// `node.name` breaks the naming rules.
    #[error("node.name {name:?} {problem}")]
    NodeName { name: String, problem: NameProblem },
    /// `node.workers` is above the maximum.
    #[error("node.workers = {workers} is more than the maximum of {max}")]
    TooManyWorkers { workers: usize, max: usize },
    /// `node.state_dir` is neither empty nor an absolute path.
    #[error("node.state_dir {path:?} is not an absolute path (write \"\" to keep no state)")]
    StateDirRelative { path: std::path::PathBuf },

    /// `sip.listen` has no address.
    #[error("sip.listen is empty; at least one address is needed")]
    SipListenEmpty,
    /// An address in `sip.listen` has port 0.
    #[error("sip.listen address {addr} has port 0")]
    SipListenPortZero { addr: SocketAddr },
    /// An address appears twice in `sip.listen`.
    #[error("sip.listen lists {addr} more than once")]
    SipListenDuplicate { addr: SocketAddr },
    /// A `sip.local_names` entry breaks the host name rules.
    #[error("sip.local_names entry {name:?} {problem}")]
    LocalName { name: String, problem: NameProblem },
    /// A name appears twice in `sip.local_names`, ignoring case.
    #[error("sip.local_names lists {name:?} more than once (case is ignored)")]
    LocalNameDuplicate { name: String },

    /// An address in `sccp.listen` has port 0.
    #[error("sccp.listen address {addr} has port 0")]
    SccpListenPortZero { addr: SocketAddr },
    /// An address appears twice in `sccp.listen`.
    #[error("sccp.listen lists {addr} more than once")]
    SccpListenDuplicate { addr: SocketAddr },
    /// An `sccp.listen` address is also in `sip.listen` (SIP listens on TCP too).
    #[error("sccp.listen address {addr} is also in sip.listen")]
    SccpListenCollides { addr: SocketAddr },

    /// A `fastpath.interfaces` entry breaks the interface name rules.
    #[error("fastpath.interfaces entry {name:?} {problem}")]
    Interface { name: String, problem: NameProblem },
    /// An interface appears twice in `fastpath.interfaces`.
    #[error("fastpath.interfaces lists {name:?} more than once")]
    InterfaceDuplicate { name: String },
    /// `fastpath.mode` asks for an attach mode but `fastpath.interfaces` is empty.
    #[error("fastpath.mode = \"{mode}\" needs at least one interface in fastpath.interfaces")]
    InterfacesRequired { mode: FastpathMode },
    /// `fastpath.pin_path` is neither empty nor an absolute path.
    #[error("fastpath.pin_path {path:?} is not an absolute path (write \"\" to pin nothing)")]
    PinPathRelative { path: std::path::PathBuf },

    /// `metrics.listen` has port 0.
    #[error("metrics.listen address {addr} has port 0")]
    MetricsListenPortZero { addr: SocketAddr },
    /// `metrics.listen` is also a `sip.listen` address.
    #[error("metrics.listen address {addr} is also in sip.listen")]
    MetricsListenCollides { addr: SocketAddr },

    /// `admin.listen` has port 0.
    #[error("admin.listen address {addr} has port 0")]
    AdminListenPortZero { addr: SocketAddr },
    /// `admin.listen` is also the address of another listener (`other`, such as
    /// `"metrics.listen"`).
    #[error("admin.listen address {addr} is also {other}")]
    AdminListenCollides { addr: SocketAddr, other: &'static str },
    /// `admin.token` breaks the token rules (the token itself is never shown).
    #[error("admin.token {problem}")]
    AdminToken { problem: NameProblem },

    /// A `cluster.store` entry is not a `redis://` URL the client accepts.
    #[error("cluster.store {url:?} is not a store URL such as \"redis://10.0.0.5:6379\": {reason}")]
    ClusterStoreUrl { url: String, reason: String },
    /// `cluster.store` is set and `cluster.secret` is empty.
    #[error("cluster.secret is required with cluster.store: every node must verify the flow tokens of the others")]
    ClusterSecretMissing,
    /// `cluster.secret` breaks the token rules (the secret itself is never shown).
    #[error("cluster.secret {problem}")]
    ClusterSecret { problem: NameProblem },
    /// `cluster.lease` is outside the allowed range.
    #[error("cluster.lease = {lease:?} is outside the allowed 1s to 10m")]
    ClusterLeaseOutOfRange { lease: std::time::Duration },
    /// `cluster.advertise` has port 0.
    #[error("cluster.advertise address {addr} has port 0")]
    ClusterAdvertisePortZero { addr: SocketAddr },

    /// `registration.phone_expires` is outside `min..=max` seconds.
    #[error("registration.phone_expires = {seconds} is outside the allowed {min} to {max} seconds")]
    PhoneExpiresOutOfRange { seconds: u32, min: u32, max: u32 },
    /// `registration.backend_expires` is shorter than `registration.phone_expires`.
    #[error(
        "registration.backend_expires = {backend_expires} is less than registration.phone_expires = {phone_expires}"
    )]
    BackendExpiresBelowPhoneExpires { backend_expires: u32, phone_expires: u32 },
    /// `registration.backend_expires` is above the maximum.
    #[error("registration.backend_expires = {seconds} is more than the maximum of {max} seconds")]
    BackendExpiresTooLong { seconds: u32, max: u32 },
    /// `registration.expires_jitter` is outside `0.0..=max` (or not a number).
    #[error("registration.expires_jitter = {jitter} is outside the allowed 0.0 to {max}")]
    ExpiresJitterOutOfRange { jitter: FloatValue, max: FloatValue },
    /// A duration that must be positive is zero; `key` is its full name, such as
    /// `"health.interval"`.
    #[error("{key} is zero; it must be more than zero")]
    ZeroDuration { key: &'static str },

    /// `health.timeout` is not shorter than `health.interval`.
    #[error("health.timeout = \"{}\" must be shorter than health.interval = \"{}\"", Shown(*timeout), Shown(*interval))]
    HealthTimeoutNotBelowInterval { timeout: Duration, interval: Duration },
    /// A count that must be at least 1 is 0; `key` is its full name, such as
    /// `"health.down_after"`.
    #[error("{key} = 0 must be at least 1")]
    ZeroCount { key: &'static str },
    /// A `[limits]` cap out of its range; `key` is its full name, such as
    /// `"limits.max_sccp_sessions"`.
    #[error("{key} = {value} is out of range: {min} to {max}")]
    LimitOutOfRange { key: &'static str, value: usize, min: usize, max: usize },

    /// `routing.default_group` names no group, though groups are configured.
    #[error("routing.default_group {group:?} is not the name of a [[groups]] entry")]
    DefaultGroupUnknown { group: String },

    /// A backend's name breaks the naming rules.
    #[error("backend name {name:?} {problem}")]
    BackendName { name: String, problem: NameProblem },
    /// Two `[[backends]]` entries have the same name (reported on the second).
    #[error("backend name {name:?} is used by an earlier [[backends]] entry")]
    BackendNameDuplicate { name: String },
    /// A backend address has port 0.
    #[error("backend {name:?} address {addr} has port 0")]
    BackendPortZero { name: String, addr: SocketAddr },
    /// A backend has `protocol = "sccp"` with `transport = "udp"`: SCCP runs over TCP only.
    #[error("backend {name:?} has protocol = \"sccp\" and transport = \"udp\"; SCCP needs transport = \"tcp\"")]
    SccpOverUdp { name: String },
    /// A backend has `max_register_rate = 0`.
    #[error("backend {name:?} max_register_rate = 0 must be at least 1")]
    BackendRateZero { name: String },

    /// A group's name breaks the naming rules.
    #[error("group name {name:?} {problem}")]
    GroupName { name: String, problem: NameProblem },
    /// Two `[[groups]]` entries have the same name (reported on the second).
    #[error("group name {name:?} is used by an earlier [[groups]] entry")]
    GroupNameDuplicate { name: String },
    /// A group lists no backend.
    #[error("group {group:?} has no backends; at least one is needed")]
    GroupBackendsEmpty { group: String },
    /// A group lists more backends than allowed.
    #[error("group {group:?} lists {count} backends; at most {max} are allowed")]
    GroupTooManyBackends { group: String, count: usize, max: usize },
    /// A group lists a name that is not that of a `[[backends]]` entry.
    #[error("group {group:?} lists {backend:?}, which is not the name of a [[backends]] entry")]
    GroupUnknownBackend { group: String, backend: String },
    /// A group lists a backend more than once (reported on the repeat).
    #[error("group {group:?} lists backend {backend:?} more than once")]
    GroupBackendDuplicate { group: String, backend: String },
    /// A group mixes protocols: `backend` speaks `protocol`, the group's first backend
    /// `expected`.
    #[error(
        "group {group:?} mixes protocols: backend {backend:?} is {protocol}, the group's first backend is {expected}"
    )]
    GroupMixedProtocols { group: String, backend: String, protocol: BackendProtocol, expected: BackendProtocol },

    /// A rule names a group that is not that of a `[[groups]]` entry.
    #[error("rule group {group:?} is not the name of a [[groups]] entry")]
    RuleUnknownGroup { group: String },
    /// A rule sets none of `device`, `mac_prefix`, `domain`.
    #[error("rule sets none of device, mac_prefix, domain; exactly one is needed")]
    RuleWithoutMatcher,
    /// A rule sets more than one of `device`, `mac_prefix`, `domain`; `keys` are those it sets.
    #[error("rule sets {}; exactly one of device, mac_prefix, domain is allowed", keys.join(" and "))]
    RuleWithSeveralMatchers { keys: Vec<&'static str> },
    /// A rule's `device` glob breaks the pattern rules.
    #[error("rule device pattern {pattern:?} {problem}")]
    RuleDevice { pattern: String, problem: NameProblem },
    /// A rule's `mac_prefix` is not a MAC address prefix.
    #[error("rule mac_prefix {prefix:?} {problem}")]
    RuleMacPrefix { prefix: String, problem: MacPrefixProblem },
    /// A rule's `domain` breaks the host name rules.
    #[error("rule domain {domain:?} {problem}")]
    RuleDomain { domain: String, problem: NameProblem },
}

/// Why a name (node, backend or group name, local name, interface name, device pattern,
/// rule domain) is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// The name is the empty string.
    #[error("is empty")]
    Empty,
    /// The name is `len` bytes long, fewer than the `min` required.
    #[error("is {len} bytes long; at least {min} are required")]
    TooShort { len: usize, min: usize },
    /// The name is `len` bytes long, more than the `max` allowed.
    #[error("is {len} bytes long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    /// The name contains `ch`, which this kind of name may not.
    #[error("contains {ch:?}, which is not allowed")]
    InvalidChar { ch: char },
    /// The name starts with `[` but is not a bracketed IPv6 address.
    #[error("is not a valid bracketed IPv6 address")]
    InvalidIpv6Literal,
    /// The host name starts or ends with `.`, or has two in a row.
    #[error("has an empty label (a leading, trailing or doubled '.')")]
    EmptyLabel,
}

/// Why a rule's `mac_prefix` is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MacPrefixProblem {
    /// The prefix has no hex digit.
    #[error("has no hex digit")]
    Empty,
    /// The prefix has `digits` hex digits, more than the `max` of a whole MAC address.
    #[error("has {digits} hex digits; at most {max} are allowed")]
    TooManyDigits { digits: usize, max: usize },
    /// The prefix contains `ch`, neither a hex digit nor a separator (`:`, `-`, `.`).
    #[error("contains {ch:?}, which is neither a hex digit nor one of ':' '-' '.'")]
    InvalidChar { ch: char },
    /// The prefix starts or ends with a separator, or has two in a row.
    #[error("starts or ends with a separator, or has two in a row")]
    MisplacedSeparator,
}

/// A floating-point value in an error, compared bit for bit so that errors can be `Eq`.
#[derive(Debug, Clone, Copy)]
pub struct FloatValue(pub f64);

impl PartialEq for FloatValue {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for FloatValue {}

impl fmt::Display for FloatValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
