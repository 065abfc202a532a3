//! Config errors: every problem found in one file, each with its line.

use std::fmt;
use std::net::SocketAddr;

use super::FastpathMode;
use super::spans::line_of;

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

    /// A `fastpath.interfaces` entry breaks the interface name rules.
    #[error("fastpath.interfaces entry {name:?} {problem}")]
    Interface { name: String, problem: NameProblem },
    /// An interface appears twice in `fastpath.interfaces`.
    #[error("fastpath.interfaces lists {name:?} more than once")]
    InterfaceDuplicate { name: String },
    /// `fastpath.mode` asks for an attach mode but `fastpath.interfaces` is empty.
    #[error("fastpath.mode = \"{mode}\" needs at least one interface in fastpath.interfaces")]
    InterfacesRequired { mode: FastpathMode },

    /// `metrics.listen` has port 0.
    #[error("metrics.listen address {addr} has port 0")]
    MetricsListenPortZero { addr: SocketAddr },
    /// `metrics.listen` is also a `sip.listen` address.
    #[error("metrics.listen address {addr} is also in sip.listen")]
    MetricsListenCollides { addr: SocketAddr },
}

/// Why a name (node name, local name, interface name) is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// The name is the empty string.
    #[error("is empty")]
    Empty,
    /// The name is `len` bytes long, more than the `max` allowed.
    #[error("is {len} bytes long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    /// The name contains `ch`, which this kind of name may not.
    #[error("contains {ch:?}, which is not allowed")]
    InvalidChar { ch: char },
    /// The name starts with `[` but is not a bracketed IPv6 address.
    #[error("is not a valid bracketed IPv6 address")]
    InvalidIpv6Literal,
}
