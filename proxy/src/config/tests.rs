use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const ORIGIN: &str = "regedge.toml";

fn parse_ok(text: &str) -> Config {
    Config::from_toml(text, ORIGIN).unwrap_or_else(|errors| panic!("expected a valid config, got:\n{errors}"))
}

fn parse_err(text: &str) -> ConfigErrors {
    match Config::from_toml(text, ORIGIN) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(errors) => errors,
    }
}

fn lines(errors: &ConfigErrors) -> Vec<Option<usize>> {
    errors.errors.iter().map(|error| error.line).collect()
}

fn field_message(error: &ConfigError) -> &str {
    match &error.kind {
        ConfigErrorKind::Field { message } => message,
        other => panic!("expected a field error, got {other:?}"),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap_or_else(|err| panic!("bad test address {text:?}: {err}"))
}

#[test]
fn default_is_the_embedded_text_and_the_empty_file() {
    assert_eq!(Config::default_embedded(), Config::default());
    assert_eq!(parse_ok(""), Config::default());
}

#[test]
fn defaults_are_the_documented_ones() {
    let config = Config::default();
    assert_eq!(config.node.name, "regedge");
    assert_eq!(config.node.workers, 0);
    assert_eq!(config.node.state_dir, Path::new("/var/lib/regedge"));
    assert_eq!(config.sip.listen, vec![addr("127.0.0.1:5060")]);
    assert!(config.sip.local_names.is_empty());
    assert!(config.fastpath.interfaces.is_empty());
    assert_eq!(config.fastpath.mode, FastpathMode::Auto);
    assert_eq!(config.fastpath.pin_path, Path::new("/sys/fs/bpf/regedge"));
    assert_eq!(config.metrics.listen, addr("127.0.0.1:9100"));
    assert_eq!(config.registration.phone_expires, 120);
    assert_eq!(config.registration.backend_expires, 3600);
    assert_eq!(config.registration.expires_jitter, 0.1);
    assert_eq!(config.registration.lapse_grace, Duration::from_secs(10));
    assert!(config.registration.date_header);
    assert_eq!(config.registration.transaction_timeout, Duration::from_secs(4));
    assert_eq!(config.health.interval, Duration::from_secs(2));
    assert_eq!(config.health.timeout, Duration::from_secs(1));
    assert_eq!((config.health.down_after, config.health.up_after), (2, 2));
    assert_eq!(config.routing.default_group, "default");
    assert!(config.backends.is_empty() && config.groups.is_empty() && config.rules.is_empty());
}

#[test]
fn full_file_reads_every_value() {
    let text = r#"
[node]
name = "edge-1"
workers = 4
state_dir = "/srv/regedge"

[sip]
listen = ["0.0.0.0:5060", "[::]:5060"]
local_names = ["edge.example.net", "192.0.2.10", "[2001:db8::10]"]

[fastpath]
interfaces = ["eth0", "bond0.100"]
mode = "native"
pin_path = "/sys/fs/bpf/edge-1"

[metrics]
listen = "0.0.0.0:9100"
"#;
    let expected = Config {
        node: NodeConfig {
            name: "edge-1".to_owned(),
            workers: 4,
            state_dir: PathBuf::from("/srv/regedge"),
            ..NodeConfig::default()
        },
        sip: SipConfig {
            listen: vec![addr("0.0.0.0:5060"), addr("[::]:5060")],
            local_names: vec!["edge.example.net".to_owned(), "192.0.2.10".to_owned(), "[2001:db8::10]".to_owned()],
        },
        fastpath: FastpathConfig {
            interfaces: vec!["eth0".to_owned(), "bond0.100".to_owned()],
            mode: FastpathMode::Native,
            pin_path: PathBuf::from("/sys/fs/bpf/edge-1"),
            ..FastpathConfig::default()
        },
        metrics: MetricsConfig { listen: addr("0.0.0.0:9100") },
        ..Config::default()
    };
    assert_eq!(parse_ok(text), expected);
}

#[test]
fn state_dir_and_pin_path_are_absolute_or_empty() {
    let config = parse_ok("[node]\nstate_dir = \"\"\n[fastpath]\npin_path = \"\"\n");
    assert_eq!(config.node.state_dir, Path::new(""));
    assert_eq!(config.fastpath.pin_path, Path::new(""));
    let errors = parse_err("[node]\nstate_dir = \"state\"\n[fastpath]\npin_path = \"bpf/regedge\"\n");
    let kinds: Vec<_> = errors.errors.iter().map(|e| (e.line, e.kind.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (Some(2), ConfigErrorKind::StateDirRelative { path: PathBuf::from("state") }),
            (Some(4), ConfigErrorKind::PinPathRelative { path: PathBuf::from("bpf/regedge") }),
        ]
    );
}

#[test]
fn every_mode_is_read_in_lowercase() {
    for mode in [FastpathMode::Auto, FastpathMode::Native, FastpathMode::Generic, FastpathMode::Off] {
        let text = format!("[fastpath]\ninterfaces = [\"eth0\"]\nmode = \"{mode}\"\n");
        assert_eq!(parse_ok(&text).fastpath.mode, mode, "mode {mode}");
    }
}

#[test]
fn unknown_keys_wrong_types_and_failed_checks_are_all_reported_in_one_call() {
    let too_long = "a".repeat(64);
    let text = format!(
        r#"# line 1
[sip]
colour = "blue"
local_names = ["{too_long}"]
[fastpath]
mode = "turbo"
interfaces = ["eth0"]

[alerts]
interval = "2s"
"#
    );
    let errors = parse_err(&text);
    assert_eq!(lines(&errors), vec![Some(3), Some(4), Some(6), Some(9)], "{errors}");
    assert!(field_message(&errors.errors[0]).contains("`colour`"), "{errors}");
    assert_eq!(
        errors.errors[1].kind,
        ConfigErrorKind::LocalName { name: too_long, problem: NameProblem::TooLong { len: 64, max: 63 } }
    );
    assert!(field_message(&errors.errors[2]).contains("`turbo`"), "{errors}");
    assert!(field_message(&errors.errors[3]).contains("`alerts`"), "{errors}");
}

#[test]
fn errors_in_dotted_keys_inline_tables_and_table_arrays_are_all_reported() {
    let text = r#"node = { name = "x", threads = 4, workers = "many" }
sip.listen = ["127.0.0.1:5060"]
sip.bogus = 1
alerts.interval = "2s"
fastpath.mode = "native"
alerts.timeout = "1s"
[[metrics]]
listen = "127.0.0.1:9100"
"#;
    let errors = parse_err(text);
    assert_eq!(lines(&errors), vec![Some(1), Some(1), Some(3), Some(4), Some(5), Some(7)], "{errors}");
    assert_eq!(errors.errors[4].kind, ConfigErrorKind::InterfacesRequired { mode: FastpathMode::Native }, "{errors}");
}

#[test]
fn a_section_with_everything_in_it_is_reported_once() {
    let errors = parse_err("[node]\nname = \"a\"\n[alerts]\ninterval = \"2s\"\ntimeout = 1\n[metrics]\nport = 1\n");
    assert_eq!(lines(&errors), vec![Some(3), Some(7)], "{errors}");
}

#[test]
fn every_semantic_check_reports_its_value_on_its_line() {
    let text = r#"[node]
name = "edge 1"
workers = 1000
[sip]
listen = [
  "127.0.0.1:5060",
  "127.0.0.1:0",
  "127.0.0.1:5060",
]
local_names = ["", "a_b", "[2001:db8::zz]", "Edge.example.net", "edge.EXAMPLE.net"]
[fastpath]
interfaces = ["", "eth/0", "averyveryverylongname", "eth0", "eth0"]
[metrics]
listen = "127.0.0.1:5060"
"#;
    use ConfigErrorKind as K;
    let name_problem = |name: &str, problem| K::LocalName { name: name.to_owned(), problem };
    let interface_problem = |name: &str, problem| K::Interface { name: name.to_owned(), problem };
    let expected = vec![
        (2, K::NodeName { name: "edge 1".to_owned(), problem: NameProblem::InvalidChar { ch: ' ' } }),
        (3, K::TooManyWorkers { workers: 1000, max: 256 }),
        (7, K::SipListenPortZero { addr: addr("127.0.0.1:0") }),
        (8, K::SipListenDuplicate { addr: addr("127.0.0.1:5060") }),
        (10, name_problem("", NameProblem::Empty)),
        (10, name_problem("a_b", NameProblem::InvalidChar { ch: '_' })),
        (10, name_problem("[2001:db8::zz]", NameProblem::InvalidIpv6Literal)),
        (10, K::LocalNameDuplicate { name: "edge.EXAMPLE.net".to_owned() }),
        (12, interface_problem("", NameProblem::Empty)),
        (12, interface_problem("eth/0", NameProblem::InvalidChar { ch: '/' })),
        (12, interface_problem("averyveryverylongname", NameProblem::TooLong { len: 21, max: 15 })),
        (12, K::InterfaceDuplicate { name: "eth0".to_owned() }),
        (14, K::MetricsListenCollides { addr: addr("127.0.0.1:5060") }),
    ];
    let errors = parse_err(text);
    let found: Vec<_> = errors.errors.iter().map(|error| (error.line.unwrap_or(0), error.kind.clone())).collect();
    assert_eq!(found, expected, "{errors}");
}

#[test]
fn empty_sip_listen_and_zero_metrics_port_are_reported() {
    let errors = parse_err("[sip]\nlisten = []\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let kinds: Vec<_> = errors.errors.iter().map(|error| (error.line, error.kind.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (Some(2), ConfigErrorKind::SipListenEmpty),
            (Some(4), ConfigErrorKind::MetricsListenPortZero { addr: addr("127.0.0.1:0") }),
        ]
    );
}

#[test]
fn a_metrics_address_taken_by_sip_is_reported_on_whichever_is_written() {
    let collision = ConfigErrorKind::MetricsListenCollides { addr: addr("127.0.0.1:9100") };
    let errors = parse_err("[sip]\nlisten = [\"127.0.0.1:5060\", \"127.0.0.1:9100\"]\n");
    assert_eq!(errors.errors, vec![ConfigError { line: Some(2), kind: collision }]);
    let errors = parse_err("[node]\nworkers = 2\n[metrics]\nlisten = \"127.0.0.1:5060\"\n");
    assert_eq!(lines(&errors), vec![Some(4)], "{errors}");
}

#[test]
fn a_syntax_error_is_reported_alone_with_its_line() {
    let errors = parse_err("[node]\nname = \"a\"\nworkers = = 3\n[health]\n");
    assert_eq!(lines(&errors), vec![Some(3)], "{errors}");
    assert!(matches!(errors.errors[0].kind, ConfigErrorKind::Syntax { .. }), "{errors}");
}

#[test]
fn display_prefixes_each_error_with_file_and_line() {
    let errors = parse_err("[sip]\nlisten = [\"127.0.0.1:5060\"]\ncolour = 1\n[node]\nworkers = 300\n");
    let shown = errors.to_string();
    let shown_lines: Vec<&str> = shown.lines().collect();
    assert_eq!(shown_lines.len(), 2, "{shown}");
    assert!(shown_lines[0].starts_with("regedge.toml:3: unknown field `colour`"), "{shown}");
    assert_eq!(shown_lines[1], "regedge.toml:5: node.workers = 300 is more than the maximum of 256");
}

#[test]
fn load_file_reports_an_unreadable_file_without_a_line() {
    let path = Path::new("/nonexistent/regedge-config-test.toml");
    let errors = Config::load_file(path).expect_err("a missing file must not load");
    assert_eq!(errors.origin, path.display().to_string());
    assert!(
        matches!(
            &errors.errors[..],
            [ConfigError { line: None, kind: ConfigErrorKind::Io { kind: std::io::ErrorKind::NotFound, .. } }]
        ),
        "{errors}"
    );
    assert!(errors.to_string().starts_with("/nonexistent/regedge-config-test.toml: cannot read"), "{errors}");
}

// The registration edge: [registration], [health], [routing], [[backends]], [[groups]],
// [[rules]].

/// The non-field errors of `errors`, with their lines (0 for none).
fn checks(errors: &ConfigErrors) -> Vec<(usize, ConfigErrorKind)> {
    errors
        .errors
        .iter()
        .filter(|error| !matches!(error.kind, ConfigErrorKind::Field { .. }))
        .map(|error| (error.line.unwrap_or(0), error.kind.clone()))
        .collect()
}

/// The field errors of `errors`, with their lines (0 for none).
fn field_errors(errors: &ConfigErrors) -> Vec<(usize, &str)> {
    errors
        .errors
        .iter()
        .filter_map(|error| match &error.kind {
            ConfigErrorKind::Field { message } => Some((error.line.unwrap_or(0), message.as_str())),
            _ => None,
        })
        .collect()
}

fn backend(name: &str, address: &str) -> BackendConfig {
    BackendConfig {
        name: name.to_owned(),
        address: addr(address),
        protocol: BackendProtocol::Sip,
        transport: BackendTransport::Udp,
        max_register_rate: 200,
        path: true,
    }
}

fn rule(group: &str) -> RuleConfig {
    RuleConfig { group: group.to_owned(), device: None, mac_prefix: None, domain: None }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|&item| item.to_owned()).collect()
}

#[test]
fn full_edge_config_reads_every_value() {
    let text = r#"
[registration]
phone_expires = 300
backend_expires = 1800
expires_jitter = 0.25
lapse_grace = "1500ms"
transaction_timeout = "8s"
date_header = false

[health]
interval = "1m"
timeout = "500ms"
down_after = 3
up_after = 1

[routing]
default_group = "main"

[[backends]]
name = "cucm-a"
address = "192.0.2.11:5060"

[[backends]]
name = "cucm_b.2"
address = "[2001:db8::12]:5080"
protocol = "sip"
transport = "tcp"
max_register_rate = 50

[[groups]]
name = "main"
backends = ["cucm_b.2", "cucm-a"]

[[rules]]
group = "main"
mac_prefix = "00:1A-2b.3"

[[rules]]
group = "main"
domain = "Branch.Example.NET"
"#;
    let expected = Config {
        registration: RegistrationConfig {
            phone_expires: 300,
            backend_expires: 1800,
            expires_jitter: 0.25,
            lapse_grace: Duration::from_millis(1500),
            transaction_timeout: Duration::from_secs(8),
            date_header: false,
        },
        health: HealthConfig {
            interval: Duration::from_secs(60),
            timeout: Duration::from_millis(500),
            down_after: 3,
            up_after: 1,
        },
        routing: RoutingConfig { default_group: "main".to_owned() },
        backends: vec![
            backend("cucm-a", "192.0.2.11:5060"),
            BackendConfig {
                transport: BackendTransport::Tcp,
                max_register_rate: 50,
                path: true,
                ..backend("cucm_b.2", "[2001:db8::12]:5080")
            },
        ],
        groups: vec![GroupConfig { name: "main".to_owned(), backends: strings(&["cucm_b.2", "cucm-a"]) }],
        rules: vec![
            RuleConfig { mac_prefix: Some("00:1A-2b.3".to_owned()), ..rule("main") },
            RuleConfig { domain: Some("Branch.Example.NET".to_owned()), ..rule("main") },
        ],
        ..Config::default()
    };
    let config = parse_ok(text);
    assert_eq!(config, expected);
    let matchers: Vec<_> = config.rules.iter().map(RuleConfig::matcher).collect();
    assert_eq!(
        matchers,
        vec![RuleMatcher::MacPrefix("001a2b3".to_owned()), RuleMatcher::Domain("branch.example.net".to_owned())]
    );
}

#[test]
fn matchers_are_normalized_and_protocols_and_transports_read_in_lowercase() {
    let device = RuleConfig { device: Some("SEP0011*".to_owned()), ..rule("g") };
    assert_eq!(device.matcher(), RuleMatcher::Device("SEP0011*".to_owned()));
    let cisco = RuleConfig { mac_prefix: Some("0011.22AB.C".to_owned()), ..rule("g") };
    assert_eq!(cisco.matcher(), RuleMatcher::MacPrefix("001122abc".to_owned()));
    for protocol in [BackendProtocol::Sip, BackendProtocol::Sccp] {
        for transport in [BackendTransport::Udp, BackendTransport::Tcp] {
            if (protocol, transport) == (BackendProtocol::Sccp, BackendTransport::Udp) {
                continue;
            }
            let text = format!(
                "[[backends]]\nname = \"b\"\naddress = \"192.0.2.1:2000\"\nprotocol = \"{protocol}\"\ntransport = \"{transport}\"\n"
            );
            let config = parse_ok(&text);
            assert_eq!((config.backends[0].protocol, config.backends[0].transport), (protocol, transport));
        }
    }
}

#[test]
#[should_panic(expected = "exactly one of device, mac_prefix, domain")]
fn matcher_of_a_rule_without_one_panics() {
    rule("g").matcher();
}

#[test]
fn the_commented_examples_of_the_default_config_are_valid() {
    // Example lines are commented without a space ("#name = ..."), explanations with one.
    let uncommented: String = DEFAULT_CONFIG_TOML
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with(' ') => rest,
            _ => line,
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    let config = parse_ok(&uncommented);
    let backend_names: Vec<_> = config.backends.iter().map(|backend| backend.name.as_str()).collect();
    assert_eq!(backend_names, ["cucm-a", "cucm-b"]);
    assert_eq!(config.groups.len(), 2);
    assert_eq!(config.rules.len(), 2);
    let defaults = Config::default();
    assert_eq!(
        (config.registration, config.health, config.routing),
        (defaults.registration, defaults.health, defaults.routing)
    );
}

#[test]
fn every_error_of_the_edge_sections_is_reported_in_one_call_on_its_line() {
    let text = r#"[registration]
phone_expires = 5
backend_expires = 90000
expires_jitter = 0.75
lapse_grace = "10 s"
transaction_timeout = "0ms"
[health]
interval = "1s"
timeout = "1s"
down_after = 0
up_after = 0
[routing]
default_group = "nowhere"
[[backends]]
name = "cucm a"
address = "192.0.2.1:0"
protocol = "sccp"
max_register_rate = 0
[[backends]]
name = "cucm-b"
address = "192.0.2.2:2000"
protocol = "sccp"
transport = "tcp"
[[backends]]
name = "cucm-b"
address = "192.0.2.3:5060"
colour = "red"
[[backends]]
name = "sip-1"
address = "192.0.2.4:5060"
[[groups]]
name = "main"
backends = ["cucm a", "cucm-b", "ghost", "sip-1", "cucm a"]
[[groups]]
name = "main"
backends = []
[[groups]]
name = ""
backends = ["sip-1"]
[[rules]]
group = "main"
[[rules]]
group = "nope"
device = "SEP[01]*"
domain = "Example.COM"
[[rules]]
group = "main"
mac_prefix = "00:11:22:33:44:55:66"
[[rules]]
group = "main"
mac_prefix = "00::11"
[[rules]]
group = "main"
domain = "a..b"
[[rules]]
group = "main"
mac_prefix = "0g"
[[rules]]
group = "main"
device = ""
[[rules]]
group = "main"
domain = "edge_1.example"
[[rules]]
group = "main"
mac_prefix = ":"
"#;
    use ConfigErrorKind as K;
    let main = || "main".to_owned();
    let expected = vec![
        (2, K::PhoneExpiresOutOfRange { seconds: 5, min: 10, max: 86400 }),
        (3, K::BackendExpiresTooLong { seconds: 90000, max: 86400 }),
        (4, K::ExpiresJitterOutOfRange { jitter: FloatValue(0.75), max: FloatValue(0.5) }),
        (6, K::ZeroDuration { key: "registration.transaction_timeout" }),
        (9, K::HealthTimeoutNotBelowInterval { timeout: Duration::from_secs(1), interval: Duration::from_secs(1) }),
        (10, K::ZeroCount { key: "health.down_after" }),
        (11, K::ZeroCount { key: "health.up_after" }),
        (13, K::DefaultGroupUnknown { group: "nowhere".to_owned() }),
        (15, K::BackendName { name: "cucm a".to_owned(), problem: NameProblem::InvalidChar { ch: ' ' } }),
        (16, K::BackendPortZero { name: "cucm a".to_owned(), addr: addr("192.0.2.1:0") }),
        (17, K::SccpOverUdp { name: "cucm a".to_owned() }),
        (18, K::BackendRateZero { name: "cucm a".to_owned() }),
        (25, K::BackendNameDuplicate { name: "cucm-b".to_owned() }),
        (33, K::GroupUnknownBackend { group: main(), backend: "ghost".to_owned() }),
        (33, K::GroupBackendDuplicate { group: main(), backend: "cucm a".to_owned() }),
        (
            33,
            K::GroupMixedProtocols {
                group: main(),
                backend: "sip-1".to_owned(),
                protocol: BackendProtocol::Sip,
                expected: BackendProtocol::Sccp,
            },
        ),
        (35, K::GroupNameDuplicate { name: main() }),
        (36, K::GroupBackendsEmpty { group: main() }),
        (38, K::GroupName { name: String::new(), problem: NameProblem::Empty }),
        (40, K::RuleWithoutMatcher),
        (42, K::RuleWithSeveralMatchers { keys: vec!["device", "domain"] }),
        (43, K::RuleUnknownGroup { group: "nope".to_owned() }),
        (44, K::RuleDevice { pattern: "SEP[01]*".to_owned(), problem: NameProblem::InvalidChar { ch: '[' } }),
        (
            48,
            K::RuleMacPrefix {
                prefix: "00:11:22:33:44:55:66".to_owned(),
                problem: MacPrefixProblem::TooManyDigits { digits: 14, max: 12 },
            },
        ),
        (51, K::RuleMacPrefix { prefix: "00::11".to_owned(), problem: MacPrefixProblem::MisplacedSeparator }),
        (54, K::RuleDomain { domain: "a..b".to_owned(), problem: NameProblem::EmptyLabel }),
        (57, K::RuleMacPrefix { prefix: "0g".to_owned(), problem: MacPrefixProblem::InvalidChar { ch: 'g' } }),
        (60, K::RuleDevice { pattern: String::new(), problem: NameProblem::Empty }),
        (63, K::RuleDomain { domain: "edge_1.example".to_owned(), problem: NameProblem::InvalidChar { ch: '_' } }),
        (66, K::RuleMacPrefix { prefix: ":".to_owned(), problem: MacPrefixProblem::Empty }),
    ];
    let errors = parse_err(text);
    assert_eq!(checks(&errors), expected, "{errors}");
    let fields = field_errors(&errors);
    assert_eq!(fields.iter().map(|&(line, _)| line).collect::<Vec<_>>(), vec![5, 27], "{errors}");
    assert!(fields[0].1.contains(r#"invalid duration "10 s""#), "{errors}");
    assert!(fields[1].1.contains("unknown field `colour`"), "{errors}");
}

#[test]
fn a_group_of_more_than_eight_backends_is_reported() {
    let mut text = String::new();
    for index in 1..=9 {
        text += &format!("[[backends]]\nname = \"b{index}\"\naddress = \"192.0.2.{index}:5060\"\n");
    }
    text += "[[groups]]\nname = \"default\"\nbackends = [\"b1\", \"b2\", \"b3\", \"b4\", \"b5\", \"b6\", \"b7\", \"b8\", \"b9\"]\n";
    let errors = parse_err(&text);
    let kind = ConfigErrorKind::GroupTooManyBackends { group: "default".to_owned(), count: 9, max: 8 };
    assert_eq!(checks(&errors), vec![(30, kind)], "{errors}");
}

#[test]
fn checks_on_unwritten_keys_are_reported_where_the_related_key_is_written() {
    let text = r#"[[backends]]
name = "sip-1"
address = "192.0.2.1:5060"
[[backends]]
name = "sccp-1"
address = "192.0.2.2:2000"
protocol = "sccp"
[[groups]]
name = "main"
backends = [
  "sip-1",
  "sccp-1",
]
[registration]
phone_expires = 7200
[health]
interval = "1s"
"#;
    use ConfigErrorKind as K;
    let errors = parse_err(text);
    let expected = vec![
        // transport is not written: on protocol.
        (7, K::SccpOverUdp { name: "sccp-1".to_owned() }),
        // routing.default_group is not written: on the first [[groups]] header.
        (8, K::DefaultGroupUnknown { group: "default".to_owned() }),
        (
            12,
            K::GroupMixedProtocols {
                group: "main".to_owned(),
                backend: "sccp-1".to_owned(),
                protocol: BackendProtocol::Sccp,
                expected: BackendProtocol::Sip,
            },
        ),
        // backend_expires (3600) is not written: on phone_expires.
        (15, K::BackendExpiresBelowPhoneExpires { backend_expires: 3600, phone_expires: 7200 }),
        // timeout (1s) is not written: on interval.
        (17, K::HealthTimeoutNotBelowInterval { timeout: Duration::from_secs(1), interval: Duration::from_secs(1) }),
    ];
    assert_eq!(checks(&errors), expected, "{errors}");
}

#[test]
fn no_group_needs_no_default_group_and_a_group_gives_an_edge() {
    let backends = "[[backends]]\nname = \"b\"\naddress = \"192.0.2.1:5060\"\n";
    assert!(parse_ok(backends).groups.is_empty());
    let config = parse_ok(&format!("{backends}[[groups]]\nname = \"default\"\nbackends = [\"b\"]\n"));
    assert_eq!(config.groups, vec![GroupConfig { name: "default".to_owned(), backends: strings(&["b"]) }]);
}

#[test]
fn missing_required_fields_are_reported_on_the_table_header_with_the_other_errors() {
    let text = r#"[[backends]]
name = "a"

[[backends]]
address = "192.0.2.2:5060"
[[backends]]
name = "c"
address = "192.0.2.3:5060"
max_register_rate = 0
[[groups]]
name = "g"
[[groups]]
backends = ["a", "c"]
[[groups]]
name = "h"
backends = ["a", "c", "zz"]
[[rules]]
device = "SEP*"
[[rules]]
group = "g"
domain = "x"
[routing]
default_group = "h"
[node]
workers = 1000
"#;
    let errors = parse_err(text);
    let fields = field_errors(&errors);
    let expected_fields = [
        (1, "missing field `address`"),
        (4, "missing field `name`"),
        (10, "missing field `backends`"),
        (12, "missing field `name`"),
        (17, "missing field `group`"),
    ];
    assert_eq!(fields, expected_fields, "{errors}");
    // Backend "a" and group "g" are dropped, but references to them are not reported:
    // their entries are, already.
    let expected_checks = vec![
        (9, ConfigErrorKind::BackendRateZero { name: "c".to_owned() }),
        (16, ConfigErrorKind::GroupUnknownBackend { group: "h".to_owned(), backend: "zz".to_owned() }),
        (25, ConfigErrorKind::TooManyWorkers { workers: 1000, max: 256 }),
    ];
    assert_eq!(checks(&errors), expected_checks, "{errors}");
    assert_eq!(lines(&errors), vec![Some(1), Some(4), Some(9), Some(10), Some(12), Some(16), Some(17), Some(25)]);
}

#[test]
fn a_bad_required_value_is_reported_once() {
    let text = r#"[[backends]]
name = "a"
address = "nowhere"
[[backends]]
name = "b"
address = "192.0.2.2:0"
[[groups]]
name = "default"
backends = "a"
[[groups]]
name = "other"
backends = ["a", "b"]
[[rules]]
group = "default"
domain = "example.net"
"#;
    let errors = parse_err(text);
    let fields = field_errors(&errors);
    assert_eq!(fields.iter().map(|&(line, _)| line).collect::<Vec<_>>(), vec![3, 9], "{errors}");
    assert!(fields[0].1.contains("address"), "{errors}");
    let port_zero = ConfigErrorKind::BackendPortZero { name: "b".to_owned(), addr: addr("192.0.2.2:0") };
    assert_eq!(checks(&errors), vec![(6, port_zero)], "{errors}");
}

#[test]
fn errors_in_arrays_of_inline_tables_are_all_reported() {
    let text = r#"backends = [
  { name = "a", address = "192.0.2.1:5060" },
  { name = "b" },
  { name = "c", address = "192.0.2.3:0", colour = 1 },
]
groups = [{ name = "default", backends = ["a", "b", "c", "d"] }]
rules = [{ group = "default", device = "SEP*" }, { device = "x" }, { group = "nope", device = "y" }]
"#;
    let errors = parse_err(text);
    let fields = field_errors(&errors);
    assert_eq!(fields.iter().map(|&(line, _)| line).collect::<Vec<_>>(), vec![3, 4, 7], "{errors}");
    assert!(fields[0].1.contains("missing field `address`"), "{errors}");
    assert!(fields[1].1.contains("unknown field `colour`"), "{errors}");
    assert!(fields[2].1.contains("missing field `group`"), "{errors}");
    let expected = vec![
        (4, ConfigErrorKind::BackendPortZero { name: "c".to_owned(), addr: addr("192.0.2.3:0") }),
        (6, ConfigErrorKind::GroupUnknownBackend { group: "default".to_owned(), backend: "d".to_owned() }),
        (7, ConfigErrorKind::RuleUnknownGroup { group: "nope".to_owned() }),
    ];
    assert_eq!(checks(&errors), expected, "{errors}");
}

#[test]
fn durations_take_an_integer_and_a_unit() {
    let text = r#"[registration]
lapse_grace = "0s"
transaction_timeout = "250ms"
[health]
interval = "1h"
timeout = "3m"
"#;
    let config = parse_ok(text);
    assert_eq!(config.registration.lapse_grace, Duration::ZERO);
    assert_eq!(config.registration.transaction_timeout, Duration::from_millis(250));
    assert_eq!(config.health.interval, Duration::from_secs(3600));
    assert_eq!(config.health.timeout, Duration::from_secs(180));
}

#[test]
fn bad_durations_are_each_reported_on_their_line() {
    let text = r#"[registration]
lapse_grace = 10
transaction_timeout = "4 s"
[health]
interval = "2sec"
timeout = "1.5s"
"#;
    let errors = parse_err(text);
    let fields = field_errors(&errors);
    assert_eq!(fields.iter().map(|&(line, _)| line).collect::<Vec<_>>(), vec![2, 3, 5, 6], "{errors}");
    assert!(fields[0].1.contains("invalid type: integer `10`, expected a duration"), "{errors}");
    assert!(fields[1].1.contains(r#"invalid duration "4 s": the unit is not one of ms, s, m, h"#), "{errors}");
    assert!(fields[2].1.contains(r#"invalid duration "2sec""#), "{errors}");
    assert!(fields[3].1.contains(r#"invalid duration "1.5s""#), "{errors}");
    assert!(fields[3].1.contains(r#"such as "500ms", "2s" or "1m""#), "{errors}");
}

#[test]
fn duration_parsing_and_display() {
    use super::duration::{DurationProblem as P, Shown, parse};
    assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse("02s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse(""), Err(P::NoNumber));
    assert_eq!(parse("s"), Err(P::NoNumber));
    assert_eq!(parse("-1s"), Err(P::NoNumber));
    assert_eq!(parse(" 1s"), Err(P::NoNumber));
    assert_eq!(parse("10"), Err(P::NoUnit));
    assert_eq!(parse("1S"), Err(P::UnknownUnit));
    assert_eq!(parse("1d"), Err(P::UnknownUnit));
    assert_eq!(parse("1s "), Err(P::UnknownUnit));
    assert_eq!(parse("1m30s"), Err(P::UnknownUnit));
    assert_eq!(parse("18446744073709551616ms"), Err(P::TooLarge));
    assert_eq!(parse("18446744073709551615h"), Err(P::TooLarge));
    let shown = |duration| Shown(duration).to_string();
    assert_eq!(shown(Duration::ZERO), "0s");
    assert_eq!(shown(Duration::from_millis(1500)), "1500ms");
    assert_eq!(shown(Duration::from_secs(90)), "90s");
    assert_eq!(shown(Duration::from_secs(120)), "2m");
    assert_eq!(shown(Duration::from_secs(7200)), "2h");
    assert_eq!(shown(Duration::from_micros(1500)), "1.5ms");
}

#[test]
fn edge_errors_read_well() {
    let text = "[health]\ninterval = \"1500ms\"\ntimeout = \"2s\"\n[registration]\nexpires_jitter = -0.5\n";
    let shown = parse_err(text).to_string();
    let expected = [
        r#"regedge.toml:3: health.timeout = "2s" must be shorter than health.interval = "1500ms""#,
        "regedge.toml:5: registration.expires_jitter = -0.5 is outside the allowed 0.0 to 0.5",
    ];
    assert_eq!(shown.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn sccp_listen_is_checked_against_itself_and_sip() {
    let text = "[sip]\nlisten = [\"127.0.0.1:5060\"]\n[sccp]\nlisten = [\"0.0.0.0:2000\", \"127.0.0.1:5060\", \"0.0.0.0:2000\", \"0.0.0.0:0\"]\nregister_timeout = \"0s\"\n";
    let shown = parse_err(text).to_string();
    for expected in [
        "regedge.toml:4: sccp.listen address 127.0.0.1:5060 is also in sip.listen",
        "regedge.toml:4: sccp.listen lists 0.0.0.0:2000 more than once",
        "regedge.toml:4: sccp.listen address 0.0.0.0:0 has port 0",
        "regedge.toml:5: sccp.register_timeout",
    ] {
        assert!(shown.contains(expected), "{expected:?} missing from:\n{shown}");
    }
    let config = Config::from_toml("[sccp]\nlisten = [\"10.0.0.1:2000\"]\n", "regedge.toml").unwrap();
    assert_eq!(config.sccp.listen, vec!["10.0.0.1:2000".parse::<std::net::SocketAddr>().unwrap()]);
    assert_eq!(config.sccp.register_timeout, Duration::from_secs(10));
}

#[test]
fn admin_api_and_shutdown_bound_have_documented_defaults() {
    let config = Config::default();
    assert_eq!(config.admin.listen, Some(addr("127.0.0.1:9101")));
    assert!(config.admin.token.is_empty());
    assert_eq!(config.node.shutdown_timeout, Duration::from_secs(5));
    assert!(config.warnings().is_empty());
    let off = parse_ok("[admin]\nlisten = \"\"\n[node]\nshutdown_timeout = \"500ms\"\n");
    assert_eq!(off.admin.listen, None);
    assert_eq!(off.node.shutdown_timeout, Duration::from_millis(500));
}

#[test]
fn admin_errors_are_reported_on_their_lines() {
    let text = "[node]\nshutdown_timeout = \"0s\"\n[metrics]\nlisten = \"127.0.0.1:9100\"\n[admin]\n\
                listen = \"127.0.0.1:9100\"\ntoken = \"short\"\n";
    let errors = parse_err(text);
    let kinds: Vec<_> = errors.errors.iter().map(|e| (e.line, e.kind.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (Some(2), ConfigErrorKind::ZeroDuration { key: "node.shutdown_timeout" }),
            (Some(6), ConfigErrorKind::AdminListenCollides { addr: addr("127.0.0.1:9100"), other: "metrics.listen" }),
            (Some(7), ConfigErrorKind::AdminToken { problem: NameProblem::TooShort { len: 5, min: 16 } }),
        ]
    );
    assert_eq!(
        errors.to_string().lines().nth(2),
        Some("regedge.toml:7: admin.token is 5 bytes long; at least 16 are required")
    );
    let bad = parse_err("[admin]\nlisten = \"localhost\"\n");
    assert_eq!(lines(&bad), [Some(2)]);
    assert!(field_message(&bad.errors[0]).contains("\"localhost\" is not an address"), "{bad}");
    let bad = parse_err("[admin]\ntoken = \"a token with spaces in it\"\n");
    assert_eq!(bad.errors[0].kind, ConfigErrorKind::AdminToken { problem: NameProblem::InvalidChar { ch: ' ' } });
}

#[test]
fn an_admin_api_off_loopback_without_a_token_is_a_warning() {
    let open = parse_ok("[admin]\nlisten = \"0.0.0.0:9101\"\n");
    let warnings = open.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].starts_with("admin.listen 0.0.0.0:9101 is not a loopback address"), "{warnings:?}");
    let guarded = parse_ok("[admin]\nlisten = \"0.0.0.0:9101\"\ntoken = \"0123456789abcdef0123\"\n");
    assert!(guarded.warnings().is_empty());
}

#[test]
fn limits_out_of_range_are_reported_with_their_line() {
    let text = "[limits]\nmax_pending_registrations = 0\nmax_sip_tcp_connections = 2000000\nmax_sccp_sessions = 7\n";
    let errors = Config::from_toml(text, "limits.toml").expect_err("caps out of range");
    let shown = errors.to_string();
    assert_eq!(errors.errors.len(), 2, "{shown}");
    assert!(shown.contains("limits.toml:2") && shown.contains("limits.max_pending_registrations = 0"), "{shown}");
    assert!(shown.contains("limits.toml:3") && shown.contains("limits.max_sip_tcp_connections = 2000000"), "{shown}");
    let ok = Config::from_toml("[limits]\nmax_sccp_sessions = 7\n", "limits.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.limits, LimitsConfig { max_sccp_sessions: 7, ..LimitsConfig::default() });
}

#[test]
fn reply_rate_per_source_is_bounded() {
    assert_eq!(Config::default().fastpath.reply_rate_per_source, 0, "no limit unless configured");
    let ok = parse_ok("[fastpath]\nreply_rate_per_source = 1000\n");
    assert_eq!(ok.fastpath.reply_rate_per_source, 1000);
    let errors = parse_err("[fastpath]\nmode = \"off\"\nreply_rate_per_source = 2000000\n");
    let shown = errors.to_string();
    assert!(shown.contains("regedge.toml:3") && shown.contains("fastpath.reply_rate_per_source = 2000000"), "{shown}");
}

#[test]
fn cluster_has_documented_defaults_and_reads_one_or_many_store_urls() {
    let single = Config::default();
    assert!(!single.cluster.is_shared());
    assert_eq!((single.cluster.advertise, single.cluster.lease), (None, Duration::from_secs(15)));
    let shared = parse_ok(
        "[cluster]\nstore = \"redis://10.0.0.5:6379/2\"\nadvertise = \"10.0.0.100:5060\"\nlease = \"6s\"\n\
         secret = \"0123456789abcdef\"\n",
    );
    assert_eq!(shared.cluster.store, ["redis://10.0.0.5:6379/2"]);
    assert_eq!(shared.cluster.advertise, Some(addr("10.0.0.100:5060")));
    assert_eq!(shared.cluster.lease, Duration::from_secs(6));
    assert!(shared.warnings().is_empty());
    let as_list = parse_ok("[cluster]\nstore = [\"redis://10.0.0.5:6379\"]\nsecret = \"0123456789abcdef\"\n");
    assert_eq!(as_list.cluster.store, ["redis://10.0.0.5:6379"]);
    let warnings = as_list.warnings();
    assert!(
        warnings.iter().any(|w| w.starts_with("cluster.store is set but cluster.advertise is not")),
        "{warnings:?}"
    );
    assert!(!parse_ok("[cluster]\nstore = \"\"\n").cluster.is_shared());
}

#[test]
fn cluster_errors_are_reported_on_their_lines() {
    let text = "[cluster]\nstore = \"http://10.0.0.5:6379\"\nlease = \"500ms\"\nadvertise = \"10.0.0.100:0\"\n";
    let errors = parse_err(text);
    let kinds: Vec<_> = errors.errors.iter().map(|e| (e.line, e.kind.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (
                Some(2),
                ConfigErrorKind::ClusterStoreUrl {
                    url: "http://10.0.0.5:6379".into(),
                    reason: "the scheme must be redis://".into()
                }
            ),
            (Some(2), ConfigErrorKind::ClusterSecretMissing),
            (Some(3), ConfigErrorKind::ClusterLeaseOutOfRange { lease: Duration::from_millis(500) }),
            (Some(4), ConfigErrorKind::ClusterAdvertisePortZero { addr: addr("10.0.0.100:0") }),
        ]
    );
    let short = parse_err("[cluster]\nstore = \"redis://10.0.0.5\"\nsecret = \"short\"\n");
    assert_eq!(short.errors[0].line, Some(3));
    assert_eq!(
        short.errors[0].kind,
        ConfigErrorKind::ClusterSecret { problem: NameProblem::TooShort { len: 5, min: 16 } }
    );
    let several = parse_ok(
        "[cluster]\nstore = [\"redis://10.0.0.5:7000\", \"redis://10.0.0.6:7000\", \"redis://10.0.0.7:7000\"]\n\
         secret = \"0123456789abcdef\"\n",
    );
    assert_eq!(several.cluster.store.len(), 3, "a Redis Cluster: every master listed");
}
