//! Semantic checks on a config that deserialized: each problem with the key it is about.

use std::collections::HashSet;
use std::hash::Hash;
use std::net::Ipv6Addr;

use toml_edit::Document;

use super::error::{ConfigError, ConfigErrorKind, NameProblem};
use super::spans::KeyPath;
use super::{Config, FastpathConfig, FastpathMode, MetricsConfig, NodeConfig, SipConfig};

const MAX_NODE_NAME_LEN: usize = 64;
const MAX_WORKERS: usize = 256;
/// A DNS label's limit, which also fits every bracketed IPv6 literal.
const MAX_LOCAL_NAME_LEN: usize = 63;
/// `IFNAMSIZ` less the terminating NUL.
const MAX_INTERFACE_NAME_LEN: usize = 15;

/// A failed check and the key it is about.
pub(super) struct Issue {
    kind: ConfigErrorKind,
    key: KeyPath,
    /// Where to report it instead when `key` is not written in the file.
    fallback_key: Option<KeyPath>,
}

impl Issue {
    fn new(key: KeyPath, kind: ConfigErrorKind) -> Self {
        Self { kind, key, fallback_key: None }
    }

    fn or_at(self, fallback_key: KeyPath) -> Self {
        Self { fallback_key: Some(fallback_key), ..self }
    }

    /// The error, on the line where its key is written in `document`.
    pub(super) fn located_in(self, document: &Document<&str>) -> ConfigError {
        let offset = self.key.offset_in(document).or_else(|| self.fallback_key?.offset_in(document));
        ConfigError::at_offset(document.raw(), offset, self.kind)
    }
}

/// Every failed check of `config`.
pub(super) fn check(config: &Config) -> Vec<Issue> {
    let mut issues = Vec::new();
    check_node(&config.node, &mut issues);
    check_sip(&config.sip, &mut issues);
    check_fastpath(&config.fastpath, &mut issues);
    check_metrics(&config.metrics, &config.sip, &mut issues);
    issues
}

fn check_node(node: &NodeConfig, issues: &mut Vec<Issue>) {
    let name_problem =
        length_problem(&node.name, MAX_NODE_NAME_LEN).or_else(|| char_problem(&node.name, is_node_name_char));
    if let Some(problem) = name_problem {
        let kind = ConfigErrorKind::NodeName { name: node.name.clone(), problem };
        issues.push(Issue::new(KeyPath::field("node", "name"), kind));
    }
    if node.workers > MAX_WORKERS {
        let kind = ConfigErrorKind::TooManyWorkers { workers: node.workers, max: MAX_WORKERS };
        issues.push(Issue::new(KeyPath::field("node", "workers"), kind));
    }
}

fn check_sip(sip: &SipConfig, issues: &mut Vec<Issue>) {
    if sip.listen.is_empty() {
        issues.push(Issue::new(KeyPath::field("sip", "listen"), ConfigErrorKind::SipListenEmpty));
    }
    for (index, &addr) in sip.listen.iter().enumerate() {
        if addr.port() == 0 {
            let kind = ConfigErrorKind::SipListenPortZero { addr };
            issues.push(Issue::new(KeyPath::element("sip", "listen", index), kind));
        }
    }
    for index in repeated_indices(&sip.listen, |addr| *addr) {
        let kind = ConfigErrorKind::SipListenDuplicate { addr: sip.listen[index] };
        issues.push(Issue::new(KeyPath::element("sip", "listen", index), kind));
    }
    for (index, name) in sip.local_names.iter().enumerate() {
        if let Some(problem) = local_name_problem(name) {
            let kind = ConfigErrorKind::LocalName { name: name.clone(), problem };
            issues.push(Issue::new(KeyPath::element("sip", "local_names", index), kind));
        }
    }
    for index in repeated_indices(&sip.local_names, |name| name.to_ascii_lowercase()) {
        let kind = ConfigErrorKind::LocalNameDuplicate { name: sip.local_names[index].clone() };
        issues.push(Issue::new(KeyPath::element("sip", "local_names", index), kind));
    }
}

fn check_fastpath(fastpath: &FastpathConfig, issues: &mut Vec<Issue>) {
    for (index, name) in fastpath.interfaces.iter().enumerate() {
        let problem =
            length_problem(name, MAX_INTERFACE_NAME_LEN).or_else(|| char_problem(name, is_interface_name_char));
        if let Some(problem) = problem {
            let kind = ConfigErrorKind::Interface { name: name.clone(), problem };
            issues.push(Issue::new(KeyPath::element("fastpath", "interfaces", index), kind));
        }
    }
    for index in repeated_indices(&fastpath.interfaces, Clone::clone) {
        let kind = ConfigErrorKind::InterfaceDuplicate { name: fastpath.interfaces[index].clone() };
        issues.push(Issue::new(KeyPath::element("fastpath", "interfaces", index), kind));
    }
    let mode_needs_interfaces = matches!(fastpath.mode, FastpathMode::Native | FastpathMode::Generic);
    if mode_needs_interfaces && fastpath.interfaces.is_empty() {
        let kind = ConfigErrorKind::InterfacesRequired { mode: fastpath.mode };
        issues.push(Issue::new(KeyPath::field("fastpath", "mode"), kind));
    }
}

fn check_metrics(metrics: &MetricsConfig, sip: &SipConfig, issues: &mut Vec<Issue>) {
    let key = KeyPath::field("metrics", "listen");
    let addr = metrics.listen;
    if addr.port() == 0 {
        issues.push(Issue::new(key, ConfigErrorKind::MetricsListenPortZero { addr }));
    }
    if let Some(index) = sip.listen.iter().position(|&sip_addr| sip_addr == addr) {
        let kind = ConfigErrorKind::MetricsListenCollides { addr };
        issues.push(Issue::new(key, kind).or_at(KeyPath::element("sip", "listen", index)));
    }
}

/// Indices of the items whose `identity` equals that of an earlier item.
fn repeated_indices<T, K: Eq + Hash>(items: &[T], identity: impl Fn(&T) -> K) -> Vec<usize> {
    let mut seen = HashSet::new();
    (0..items.len()).filter(|&index| !seen.insert(identity(&items[index]))).collect()
}

fn length_problem(name: &str, max: usize) -> Option<NameProblem> {
    match name.len() {
        0 => Some(NameProblem::Empty),
        len if len > max => Some(NameProblem::TooLong { len, max }),
        _ => None,
    }
}

fn char_problem(name: &str, allowed: impl Fn(char) -> bool) -> Option<NameProblem> {
    name.chars().find(|&ch| !allowed(ch)).map(|ch| NameProblem::InvalidChar { ch })
}

/// A host name or IPv4 address (letters, digits, `-`, `.`), or a bracketed IPv6 literal.
fn local_name_problem(name: &str) -> Option<NameProblem> {
    length_problem(name, MAX_LOCAL_NAME_LEN)
        .or_else(|| if name.starts_with('[') { ipv6_literal_problem(name) } else { char_problem(name, is_host_char) })
}

fn ipv6_literal_problem(name: &str) -> Option<NameProblem> {
    let address = name.strip_prefix('[').and_then(|rest| rest.strip_suffix(']'));
    match address.map(str::parse::<Ipv6Addr>) {
        Some(Ok(_)) => None,
        _ => Some(NameProblem::InvalidIpv6Literal),
    }
}

fn is_node_name_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')
}

fn is_host_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-')
}

fn is_interface_name_char(ch: char) -> bool {
    ch != '/' && !ch.is_whitespace()
}
