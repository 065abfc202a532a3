use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    assert_eq!(config.sip.listen, vec![addr("127.0.0.1:5060")]);
    assert!(config.sip.local_names.is_empty());
    assert!(config.fastpath.interfaces.is_empty());
    assert_eq!(config.fastpath.mode, FastpathMode::Auto);
    assert_eq!(config.fastpath.pin_path, Path::new("/sys/fs/bpf/regedge"));
    assert_eq!(config.metrics.listen, addr("127.0.0.1:9100"));
}

#[test]
fn full_file_reads_every_value() {
    let text = r#"
[node]
name = "edge-1"
workers = 4

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
        node: NodeConfig { name: "edge-1".to_owned(), workers: 4 },
        sip: SipConfig {
            listen: vec![addr("0.0.0.0:5060"), addr("[::]:5060")],
            local_names: vec!["edge.example.net".to_owned(), "192.0.2.10".to_owned(), "[2001:db8::10]".to_owned()],
        },
        fastpath: FastpathConfig {
            interfaces: vec!["eth0".to_owned(), "bond0.100".to_owned()],
            mode: FastpathMode::Native,
            pin_path: PathBuf::from("/sys/fs/bpf/edge-1"),
        },
        metrics: MetricsConfig { listen: addr("0.0.0.0:9100") },
    };
    assert_eq!(parse_ok(text), expected);
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

[health]
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
    assert!(field_message(&errors.errors[3]).contains("`health`"), "{errors}");
}

#[test]
fn errors_in_dotted_keys_inline_tables_and_table_arrays_are_all_reported() {
    let text = r#"node = { name = "x", threads = 4, workers = "many" }
sip.listen = ["127.0.0.1:5060"]
sip.bogus = 1
health.interval = "2s"
fastpath.mode = "native"
health.timeout = "1s"
[[metrics]]
listen = "127.0.0.1:9100"
"#;
    let errors = parse_err(text);
    assert_eq!(lines(&errors), vec![Some(1), Some(1), Some(3), Some(4), Some(5), Some(7)], "{errors}");
    assert_eq!(errors.errors[4].kind, ConfigErrorKind::InterfacesRequired { mode: FastpathMode::Native }, "{errors}");
}

#[test]
fn a_section_with_everything_in_it_is_reported_once() {
    let errors = parse_err("[node]\nname = \"a\"\n[health]\ninterval = \"2s\"\ntimeout = 1\n[metrics]\nport = 1\n");
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
