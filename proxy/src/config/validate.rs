//! Semantic checks on a config that deserialized: each problem with the key it is about.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::Ipv6Addr;
use std::time::Duration;

use toml_edit::{Document, Item};

use super::error::{ConfigError, ConfigErrorKind, FloatValue, MacPrefixProblem, NameProblem};
use super::spans::KeyPath;
use super::{
    AdminConfig, BackendConfig, BackendProtocol, BackendTransport, ClusterConfig, Config, FastpathConfig, FastpathMode,
    GroupConfig, HealthConfig, LimitsConfig, MetricsConfig, NodeConfig, RegistrationConfig, RuleConfig, SccpConfig,
    SipConfig,
};

const MAX_NODE_NAME_LEN: usize = 64;
const MAX_WORKERS: usize = 256;
/// A DNS label's limit, which also fits every bracketed IPv6 literal.
const MAX_LOCAL_NAME_LEN: usize = 63;
/// `IFNAMSIZ` less the terminating NUL.
const MAX_INTERFACE_NAME_LEN: usize = 15;
const MIN_PHONE_EXPIRES: u32 = 10;
/// One day, for both `phone_expires` and `backend_expires`.
const MAX_EXPIRES: u32 = 86_400;
const MAX_EXPIRES_JITTER: f64 = 0.5;
/// For backend and group names.
const MAX_EDGE_NAME_LEN: usize = 64;
const MAX_GROUP_BACKENDS: usize = 8;
const MAX_DEVICE_PATTERN_LEN: usize = 64;
/// Hex digits in a whole MAC address.
const MAX_MAC_PREFIX_DIGITS: usize = 12;
/// A DNS name's limit.
const MAX_DOMAIN_LEN: usize = 253;
/// A bearer token shorter than this is guessable.
const MIN_ADMIN_TOKEN_LEN: usize = 16;
const MAX_ADMIN_TOKEN_LEN: usize = 256;
/// Bounds of `cluster.lease`.
const MIN_LEASE: Duration = Duration::from_secs(1);
const MAX_LEASE: Duration = Duration::from_secs(600);
/// Upper bound of every `[limits]` cap.
const MAX_LIMIT: usize = 1_000_000;

/// A failed check and the keys it is about.
pub(super) struct Issue {
    kind: ConfigErrorKind,
    /// The keys the problem is reported on, preferred first.
    keys: Vec<KeyPath>,
}

impl Issue {
    fn new(key: KeyPath, kind: ConfigErrorKind) -> Self {
        Self { kind, keys: vec![key] }
    }

    /// The problem is reported on `fallback_key` when that key is written and the keys
    /// before it are not.
    fn or_at(mut self, fallback_key: KeyPath) -> Self {
        self.keys.push(fallback_key);
        self
    }

    /// The error, on the line where the first of its keys that is written is; if none is,
    /// where the deepest written part of the first key that has one is.
    pub(super) fn located_in(self, document: &Document<&str>) -> ConfigError {
        let locations: Vec<_> = self.keys.iter().filter_map(|key| key.location_in(document)).collect();
        let best = locations.iter().find(|location| location.exact).or(locations.first());
        ConfigError::at_offset(document.raw(), best.map(|location| location.offset), self.kind)
    }
}

/// Every failed check of `config`. `document` is the text as written: a reference to a
/// backend or group whose entry it has but `config` lacks (the entry was dropped for an
/// error already reported) is not reported.
pub(super) fn check(config: &Config, document: &Document<&str>) -> Vec<Issue> {
    let mut issues = Vec::new();
    check_node(&config.node, &mut issues);
    check_sip(&config.sip, &mut issues);
    check_sccp(&config.sccp, &config.sip, &mut issues);
    check_fastpath(&config.fastpath, &mut issues);
    check_metrics(&config.metrics, &config.sip, &mut issues);
    check_admin(config, &mut issues);
    check_registration(&config.registration, &mut issues);
    check_health(&config.health, &mut issues);
    check_limits(&config.limits, &mut issues);
    check_cluster(&config.cluster, &mut issues);
    let backend_protocols = check_backends(&config.backends, &mut issues);
    let backend_names = written_names(document, "backends");
    let is_backend = |name: &str| backend_protocols.contains_key(name) || backend_names.contains(name);
    check_groups(&config.groups, &backend_protocols, is_backend, &mut issues);
    let group_names = written_names(document, "groups");
    let is_group = |name: &str| config.groups.iter().any(|group| group.name == name) || group_names.contains(name);
    check_rules(&config.rules, is_group, &mut issues);
    let any_group = !config.groups.is_empty() || !group_names.is_empty();
    if any_group && !is_group(&config.routing.default_group) {
        let kind = ConfigErrorKind::DefaultGroupUnknown { group: config.routing.default_group.clone() };
        issues.push(Issue::new(KeyPath::field("routing", "default_group"), kind).or_at(KeyPath::entry("groups", 0)));
    }
    issues
}

/// The `name` strings of the entries of the array of tables `array` written in `document`.
fn written_names<'a>(document: &'a Document<&str>, array: &str) -> HashSet<&'a str> {
    let Some(item) = document.get(array) else {
        return HashSet::new();
    };
    let name_of = |item: Option<&'a Item>| item.and_then(Item::as_str);
    match item {
        Item::ArrayOfTables(tables) => tables.iter().filter_map(|table| name_of(table.get("name"))).collect(),
        _ => item
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|element| element.as_inline_table()?.get("name")?.as_str())
            .collect(),
    }
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
    if !node.state_dir.as_os_str().is_empty() && !node.state_dir.is_absolute() {
        let kind = ConfigErrorKind::StateDirRelative { path: node.state_dir.clone() };
        issues.push(Issue::new(KeyPath::field("node", "state_dir"), kind));
    }
    check_positive(node.shutdown_timeout, "node.shutdown_timeout", issues);
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

fn check_sccp(sccp: &SccpConfig, sip: &SipConfig, issues: &mut Vec<Issue>) {
    for (index, &addr) in sccp.listen.iter().enumerate() {
        let key = KeyPath::element("sccp", "listen", index);
        if addr.port() == 0 {
            issues.push(Issue::new(key.clone(), ConfigErrorKind::SccpListenPortZero { addr }));
        }
        if sip.listen.contains(&addr) {
            issues.push(Issue::new(key, ConfigErrorKind::SccpListenCollides { addr }));
        }
    }
    for index in repeated_indices(&sccp.listen, |addr| *addr) {
        let kind = ConfigErrorKind::SccpListenDuplicate { addr: sccp.listen[index] };
        issues.push(Issue::new(KeyPath::element("sccp", "listen", index), kind));
    }
    check_positive(sccp.register_timeout, "sccp.register_timeout", issues);
    check_positive(sccp.keepalive_interval, "sccp.keepalive_interval", issues);
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
    if !fastpath.pin_path.as_os_str().is_empty() && !fastpath.pin_path.is_absolute() {
        let kind = ConfigErrorKind::PinPathRelative { path: fastpath.pin_path.clone() };
        issues.push(Issue::new(KeyPath::field("fastpath", "pin_path"), kind));
    }
    let rate = fastpath.reply_rate_per_source as usize;
    if rate > MAX_LIMIT {
        let key = "fastpath.reply_rate_per_source";
        let kind = ConfigErrorKind::LimitOutOfRange { key, value: rate, min: 0, max: MAX_LIMIT };
        issues.push(Issue::new(KeyPath::dotted(key), kind));
    }
}

fn check_metrics(metrics: &MetricsConfig, sip: &SipConfig, issues: &mut Vec<Issue>) {
    let key = KeyPath::field("metrics", "listen");
    let addr = metrics.listen;
    if addr.port() == 0 {
        issues.push(Issue::new(key.clone(), ConfigErrorKind::MetricsListenPortZero { addr }));
    }
    if let Some(index) = sip.listen.iter().position(|&sip_addr| sip_addr == addr) {
        let kind = ConfigErrorKind::MetricsListenCollides { addr };
        issues.push(Issue::new(key, kind).or_at(KeyPath::element("sip", "listen", index)));
    }
}

fn check_admin(config: &Config, issues: &mut Vec<Issue>) {
    let AdminConfig { listen, token } = &config.admin;
    if let Some(addr) = *listen {
        let key = KeyPath::field("admin", "listen");
        if addr.port() == 0 {
            issues.push(Issue::new(key.clone(), ConfigErrorKind::AdminListenPortZero { addr }));
        }
        let collides = if addr == config.metrics.listen {
            Some("metrics.listen")
        } else if config.sip.listen.contains(&addr) {
            Some("sip.listen")
        } else if config.sccp.listen.contains(&addr) {
            Some("sccp.listen")
        } else {
            None
        };
        if let Some(other) = collides {
            issues.push(Issue::new(key, ConfigErrorKind::AdminListenCollides { addr, other }));
        }
    }
    if let Some(problem) = secret_problem(token) {
        issues.push(Issue::new(KeyPath::field("admin", "token"), ConfigErrorKind::AdminToken { problem }));
    }
}

/// What is wrong with a non-empty bearer token or shared secret: 16 to 256 printable ASCII
/// characters, no spaces (`None` for an empty one, which means none).
fn secret_problem(secret: &str) -> Option<NameProblem> {
    if secret.is_empty() {
        None
    } else if secret.len() < MIN_ADMIN_TOKEN_LEN {
        Some(NameProblem::TooShort { len: secret.len(), min: MIN_ADMIN_TOKEN_LEN })
    } else if secret.len() > MAX_ADMIN_TOKEN_LEN {
        Some(NameProblem::TooLong { len: secret.len(), max: MAX_ADMIN_TOKEN_LEN })
    } else {
        char_problem(secret, |ch| ch.is_ascii_graphic())
    }
}

fn check_cluster(cluster: &ClusterConfig, issues: &mut Vec<Issue>) {
    for (index, url) in cluster.store.iter().enumerate() {
        let reason = if !url.starts_with("redis://") {
            Some("the scheme must be redis://".to_owned())
        } else {
            redis::IntoConnectionInfo::into_connection_info(url.as_str()).err().map(|e| e.to_string())
        };
        if let Some(reason) = reason {
            let key = if cluster.store.len() == 1 {
                KeyPath::field("cluster", "store")
            } else {
                KeyPath::element("cluster", "store", index)
            };
            issues.push(Issue::new(key, ConfigErrorKind::ClusterStoreUrl { url: url.clone(), reason }));
        }
    }
    if cluster.secret.is_empty() && cluster.is_shared() {
        issues.push(
            Issue::new(KeyPath::field("cluster", "secret"), ConfigErrorKind::ClusterSecretMissing)
                .or_at(KeyPath::field("cluster", "store")),
        );
    }
    if let Some(problem) = secret_problem(&cluster.secret) {
        issues.push(Issue::new(KeyPath::field("cluster", "secret"), ConfigErrorKind::ClusterSecret { problem }));
    }
    if !(MIN_LEASE..=MAX_LEASE).contains(&cluster.lease) {
        let kind = ConfigErrorKind::ClusterLeaseOutOfRange { lease: cluster.lease };
        issues.push(Issue::new(KeyPath::field("cluster", "lease"), kind));
    }
    if let Some(addr) = cluster.advertise.filter(|a| a.port() == 0) {
        issues.push(Issue::new(
            KeyPath::field("cluster", "advertise"),
            ConfigErrorKind::ClusterAdvertisePortZero { addr },
        ));
    }
}

fn check_registration(registration: &RegistrationConfig, issues: &mut Vec<Issue>) {
    let key = |field| KeyPath::field("registration", field);
    let phone_expires = registration.phone_expires;
    if !(MIN_PHONE_EXPIRES..=MAX_EXPIRES).contains(&phone_expires) {
        let kind = ConfigErrorKind::PhoneExpiresOutOfRange {
            seconds: phone_expires,
            min: MIN_PHONE_EXPIRES,
            max: MAX_EXPIRES,
        };
        issues.push(Issue::new(key("phone_expires"), kind));
    }
    let backend_expires = registration.backend_expires;
    if backend_expires > MAX_EXPIRES {
        let kind = ConfigErrorKind::BackendExpiresTooLong { seconds: backend_expires, max: MAX_EXPIRES };
        issues.push(Issue::new(key("backend_expires"), kind));
    } else if backend_expires < phone_expires {
        let kind = ConfigErrorKind::BackendExpiresBelowPhoneExpires { backend_expires, phone_expires };
        issues.push(Issue::new(key("backend_expires"), kind).or_at(key("phone_expires")));
    }
    let jitter = registration.expires_jitter;
    if !(0.0..=MAX_EXPIRES_JITTER).contains(&jitter) {
        let kind = ConfigErrorKind::ExpiresJitterOutOfRange {
            jitter: FloatValue(jitter),
            max: FloatValue(MAX_EXPIRES_JITTER),
        };
        issues.push(Issue::new(key("expires_jitter"), kind));
    }
    check_positive(registration.transaction_timeout, "registration.transaction_timeout", issues);
}

fn check_health(health: &HealthConfig, issues: &mut Vec<Issue>) {
    let interval_is_positive = check_positive(health.interval, "health.interval", issues);
    let timeout_is_positive = check_positive(health.timeout, "health.timeout", issues);
    if interval_is_positive && timeout_is_positive && health.timeout >= health.interval {
        let kind =
            ConfigErrorKind::HealthTimeoutNotBelowInterval { timeout: health.timeout, interval: health.interval };
        issues.push(Issue::new(KeyPath::field("health", "timeout"), kind).or_at(KeyPath::field("health", "interval")));
    }
    for (count, key) in [(health.down_after, "health.down_after"), (health.up_after, "health.up_after")] {
        if count == 0 {
            issues.push(Issue::new(KeyPath::dotted(key), ConfigErrorKind::ZeroCount { key }));
        }
    }
}

fn check_limits(limits: &LimitsConfig, issues: &mut Vec<Issue>) {
    for (value, key) in [
        (limits.max_pending_registrations, "limits.max_pending_registrations"),
        (limits.max_sip_tcp_connections, "limits.max_sip_tcp_connections"),
        (limits.max_sccp_sessions, "limits.max_sccp_sessions"),
    ] {
        if !(1..=MAX_LIMIT).contains(&value) {
            let kind = ConfigErrorKind::LimitOutOfRange { key, value, min: 1, max: MAX_LIMIT };
            issues.push(Issue::new(KeyPath::dotted(key), kind));
        }
    }
}

/// Whether `duration`, the value of `key` (`section.field`), is more than zero; an issue
/// if not.
fn check_positive(duration: Duration, key: &'static str, issues: &mut Vec<Issue>) -> bool {
    if duration.is_zero() {
        issues.push(Issue::new(KeyPath::dotted(key), ConfigErrorKind::ZeroDuration { key }));
    }
    !duration.is_zero()
}

/// Checks the `[[backends]]` entries; returns the protocol of each backend by name.
fn check_backends<'a>(backends: &'a [BackendConfig], issues: &mut Vec<Issue>) -> HashMap<&'a str, BackendProtocol> {
    for (index, backend) in backends.iter().enumerate() {
        let key = |field| KeyPath::entry("backends", index).then(field);
        let name = &backend.name;
        if let Some(problem) = edge_name_problem(name) {
            issues.push(Issue::new(key("name"), ConfigErrorKind::BackendName { name: name.clone(), problem }));
        }
        if backend.address.port() == 0 {
            let kind = ConfigErrorKind::BackendPortZero { name: name.clone(), addr: backend.address };
            issues.push(Issue::new(key("address"), kind));
        }
        if backend.protocol == BackendProtocol::Sccp && backend.transport == BackendTransport::Udp {
            let kind = ConfigErrorKind::SccpOverUdp { name: name.clone() };
            issues.push(Issue::new(key("transport"), kind).or_at(key("protocol")));
        }
        if backend.max_register_rate == 0 {
            let kind = ConfigErrorKind::BackendRateZero { name: name.clone() };
            issues.push(Issue::new(key("max_register_rate"), kind));
        }
    }
    for index in repeated_indices(backends, |backend| backend.name.clone()) {
        let kind = ConfigErrorKind::BackendNameDuplicate { name: backends[index].name.clone() };
        issues.push(Issue::new(KeyPath::entry("backends", index).then("name"), kind));
    }
    let mut protocols = HashMap::new();
    for backend in backends {
        protocols.entry(backend.name.as_str()).or_insert(backend.protocol);
    }
    protocols
}

/// Checks the `[[groups]]` entries against the backends: `protocols` of those configured,
/// `is_backend` also true for those dropped for an error already reported.
fn check_groups(
    groups: &[GroupConfig],
    protocols: &HashMap<&str, BackendProtocol>,
    is_backend: impl Fn(&str) -> bool,
    issues: &mut Vec<Issue>,
) {
    for (index, group) in groups.iter().enumerate() {
        let entry = || KeyPath::entry("groups", index);
        let name = &group.name;
        if let Some(problem) = edge_name_problem(name) {
            issues.push(Issue::new(entry().then("name"), ConfigErrorKind::GroupName { name: name.clone(), problem }));
        }
        let members = &group.backends;
        if members.is_empty() {
            issues.push(Issue::new(
                entry().then("backends"),
                ConfigErrorKind::GroupBackendsEmpty { group: name.clone() },
            ));
        }
        if members.len() > MAX_GROUP_BACKENDS {
            let kind = ConfigErrorKind::GroupTooManyBackends {
                group: name.clone(),
                count: members.len(),
                max: MAX_GROUP_BACKENDS,
            };
            issues.push(Issue::new(entry().then("backends"), kind));
        }
        for (position, backend) in members.iter().enumerate() {
            if !is_backend(backend) {
                let kind = ConfigErrorKind::GroupUnknownBackend { group: name.clone(), backend: backend.clone() };
                issues.push(Issue::new(entry().then("backends").at(position), kind));
            }
        }
        for position in repeated_indices(members, Clone::clone) {
            let kind =
                ConfigErrorKind::GroupBackendDuplicate { group: name.clone(), backend: members[position].clone() };
            issues.push(Issue::new(entry().then("backends").at(position), kind));
        }
        let mut known = members
            .iter()
            .enumerate()
            .filter_map(|(position, backend)| Some((position, backend, *protocols.get(backend.as_str())?)));
        if let Some((_, _, expected)) = known.next()
            && let Some((position, backend, protocol)) = known.find(|&(_, _, protocol)| protocol != expected)
        {
            let kind = ConfigErrorKind::GroupMixedProtocols {
                group: name.clone(),
                backend: backend.clone(),
                protocol,
                expected,
            };
            issues.push(Issue::new(entry().then("backends").at(position), kind));
        }
    }
    for index in repeated_indices(groups, |group| group.name.clone()) {
        let kind = ConfigErrorKind::GroupNameDuplicate { name: groups[index].name.clone() };
        issues.push(Issue::new(KeyPath::entry("groups", index).then("name"), kind));
    }
}

/// Checks the `[[rules]]` entries; `is_group` tells the names of the groups.
fn check_rules(rules: &[RuleConfig], is_group: impl Fn(&str) -> bool, issues: &mut Vec<Issue>) {
    for (index, rule) in rules.iter().enumerate() {
        let entry = || KeyPath::entry("rules", index);
        if !is_group(&rule.group) {
            let kind = ConfigErrorKind::RuleUnknownGroup { group: rule.group.clone() };
            issues.push(Issue::new(entry().then("group"), kind));
        }
        let matchers = [("device", &rule.device), ("mac_prefix", &rule.mac_prefix), ("domain", &rule.domain)];
        let set: Vec<&'static str> =
            matchers.iter().filter(|(_, value)| value.is_some()).map(|&(key, _)| key).collect();
        match set.len() {
            0 => issues.push(Issue::new(entry(), ConfigErrorKind::RuleWithoutMatcher)),
            1 => {}
            _ => issues.push(Issue::new(entry(), ConfigErrorKind::RuleWithSeveralMatchers { keys: set })),
        }
        if let Some(pattern) = &rule.device
            && let Some(problem) = device_pattern_problem(pattern)
        {
            let kind = ConfigErrorKind::RuleDevice { pattern: pattern.clone(), problem };
            issues.push(Issue::new(entry().then("device"), kind));
        }
        if let Some(prefix) = &rule.mac_prefix
            && let Some(problem) = mac_prefix_problem(prefix)
        {
            let kind = ConfigErrorKind::RuleMacPrefix { prefix: prefix.clone(), problem };
            issues.push(Issue::new(entry().then("mac_prefix"), kind));
        }
        if let Some(domain) = &rule.domain
            && let Some(problem) = domain_problem(domain)
        {
            let kind = ConfigErrorKind::RuleDomain { domain: domain.clone(), problem };
            issues.push(Issue::new(entry().then("domain"), kind));
        }
    }
}

/// Indices of the items whose `identity` equals that of an earlier item.
fn repeated_indices<T, K: Eq + Hash>(items: &[T], identity: impl Fn(&T) -> K) -> Vec<usize> {
    let mut seen = HashSet::new();
    (0..items.len()).filter(|&index| !seen.insert(identity(&items[index]))).collect()
}

/// A backend or group name: 1 to 64 characters from `[A-Za-z0-9._-]`.
fn edge_name_problem(name: &str) -> Option<NameProblem> {
    length_problem(name, MAX_EDGE_NAME_LEN).or_else(|| char_problem(name, is_node_name_char))
}

/// A glob of printable ASCII characters; `*` and `?` are its only wildcards, so the
/// bracket, brace and escape characters of other glob dialects are refused.
fn device_pattern_problem(pattern: &str) -> Option<NameProblem> {
    let allowed = |ch: char| ch.is_ascii_graphic() && !matches!(ch, '[' | ']' | '{' | '}' | '\\');
    length_problem(pattern, MAX_DEVICE_PATTERN_LEN).or_else(|| char_problem(pattern, allowed))
}

/// 1 to 12 hex digits, with single `:`, `-` or `.` separators between them.
fn mac_prefix_problem(prefix: &str) -> Option<MacPrefixProblem> {
    if let Some(ch) = prefix.chars().find(|&ch| !ch.is_ascii_hexdigit() && !is_mac_separator(ch)) {
        return Some(MacPrefixProblem::InvalidChar { ch });
    }
    let digits = prefix.chars().filter(char::is_ascii_hexdigit).count();
    if digits == 0 {
        return Some(MacPrefixProblem::Empty);
    }
    if digits > MAX_MAC_PREFIX_DIGITS {
        return Some(MacPrefixProblem::TooManyDigits { digits, max: MAX_MAC_PREFIX_DIGITS });
    }
    let misplaced = prefix.starts_with(is_mac_separator)
        || prefix.ends_with(is_mac_separator)
        || prefix.as_bytes().windows(2).any(|pair| pair.iter().all(|&byte| is_mac_separator(char::from(byte))));
    misplaced.then_some(MacPrefixProblem::MisplacedSeparator)
}

fn is_mac_separator(ch: char) -> bool {
    matches!(ch, ':' | '-' | '.')
}

/// A host name: letters, digits, `-` and `.`, without empty labels.
fn domain_problem(domain: &str) -> Option<NameProblem> {
    length_problem(domain, MAX_DOMAIN_LEN)
        .or_else(|| char_problem(domain, is_host_char))
        .or_else(|| domain.split('.').any(str::is_empty).then_some(NameProblem::EmptyLabel))
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
