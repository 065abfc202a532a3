//! Operating regedge: what ships in proxy/packaging/ holds together with the binary, and
//! `regedge demo` tells its story.
//!
//! - The Grafana dashboard parses, and every metric it queries — with every label value it
//!   selects and every label it groups by — exists in the /metrics of a running regedge
//!   (XDP attached in a namespace, SIP and SCCP backends, so that every series is there).
//! - The example config passes `check-config` and writes out every key of the default config.
//! - The systemd unit grants exactly the capabilities its comment and the README document.
//! - The .deb metadata names files that exist.
//! - `regedge demo --duration 20s` runs to completion and its summary shows registrations on
//!   both backends of each group, a failover and a fallback (SIP and SCCP).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read as _,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use regedge_tests::{
    netns::NetNs,
    privilege::{require_program, require_root},
    process::{Regedge, TempDir, regedge_binary, scrape, workspace_root},
};

fn packaging(file: &str) -> PathBuf {
    workspace_root().join("proxy/packaging").join(file)
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Grafana dashboard
// ---------------------------------------------------------------------------------------

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(&packaging("grafana-dashboard.json"))).expect("grafana-dashboard.json is not JSON")
}

/// Every PromQL expression of the dashboard: panel targets (rows' nested panels too) and
/// template variable queries.
fn expressions(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// A metric selector in an expression: the name and its label matchers (label, op, value).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// The `regedge_*` selectors of a PromQL expression.
fn selectors(expr: &str) -> Vec<Selector> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("regedge_") {
        let start = i + at;
        let preceded = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        i = end;
        if preceded {
            continue;
        }
        let mut matchers = Vec::new();
        if bytes.get(end) == Some(&b'{') {
            let close = expr[end..].find('}').map(|c| end + c).unwrap_or_else(|| panic!("unclosed {{ in {expr}"));
            for part in split_matchers(&expr[end + 1..close]) {
                let op_at = part.find(['=', '!']).unwrap_or_else(|| panic!("matcher without operator: {part}"));
                let (label, rest) = part.split_at(op_at);
                let op_len =
                    if rest.starts_with("=~") || rest.starts_with("!=") || rest.starts_with("!~") { 2 } else { 1 };
                let value = rest[op_len..].trim().trim_matches('"');
                matchers.push((label.trim().to_owned(), rest[..op_len].to_owned(), value.to_owned()));
            }
            i = close + 1;
        }
        out.push(Selector { name: expr[start..end].to_owned(), matchers });
    }
    out
}

/// `a="x",b=~"y|z"` split at the commas outside quotes.
fn split_matchers(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut from) = (false, 0);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[from..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

/// The labels of `by (...)` and `without (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in ["by (", "by(", "without ("] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            rest = &rest[at + keyword.len()..];
            let close = rest.find(')').expect("closed by clause");
            out.extend(rest[..close].split(',').map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()));
        }
    }
    out
}

/// Sample name → label sets, from a /metrics text.
fn samples(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or(rest);
                let labels = split_matchers(body)
                    .into_iter()
                    .filter_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        out.entry(name.to_owned()).or_default().push(labels);
    }
    out
}

#[test]
fn dashboard_parses_and_its_panels_query_regedge() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "regedge-overview");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "duplicate panel id: {panel}");
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("title");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panel_without_targets(title));
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            let found = selectors(expr);
            assert!(!found.is_empty(), "{title}: {expr} queries no regedge metric");
            queried.extend(found.into_iter().map(|s| s.name));
        }
    }
    // The metrics an operator looks for first.
    for name in [
        "regedge_registrations_total",
        "regedge_fastpath_replies_total",
        "regedge_userspace_replies_total",
        "regedge_fastpath_passed_total",
        "regedge_backend_up",
        "regedge_backend_bindings",
        "regedge_failovers_total",
        "regedge_sccp_sessions",
        "regedge_backend_response_seconds_bucket",
        "regedge_sip_tcp_connections",
        "regedge_fastpath_mirror_errors_total",
    ] {
        assert!(queried.contains(name), "the dashboard does not chart {name}; it charts {queried:?}");
    }
}

fn panel_without_targets(title: &str) -> &'static Vec<serde_json::Value> {
    panic!("{title}: no targets")
}

/// The config of a regedge with every kind of series: XDP attached (kernel counters and the
/// binding mirror), SIP backends on UDP and TCP, an SCCP edge and backend.
fn full_config(metrics: SocketAddr) -> String {
    format!(
        "[node]\nstate_dir = \"\"\n\n[sip]\nlisten = [\"10.77.0.1:5060\"]\n\n[sccp]\nlisten = [\"10.77.0.1:2000\"]\n\n\
         [fastpath]\ninterfaces = [\"pkg-e\"]\nmode = \"generic\"\npin_path = \"\"\n\n[metrics]\nlisten = \"{metrics}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:9101\"\n\n\
         [[backends]]\nname = \"cm1\"\naddress = \"10.77.0.2:5061\"\n\n\
         [[backends]]\nname = \"cm2\"\naddress = \"10.77.0.2:5062\"\ntransport = \"tcp\"\n\n\
         [[backends]]\nname = \"sk1\"\naddress = \"10.77.0.2:2001\"\nprotocol = \"sccp\"\ntransport = \"tcp\"\n\n\
         [[groups]]\nname = \"default\"\nbackends = [\"cm1\", \"cm2\"]\n\n\
         [[groups]]\nname = \"skinny\"\nbackends = [\"sk1\"]\n\n\
         [[rules]]\ngroup = \"skinny\"\ndevice = \"SEP*\"\n"
    )
}

#[test]
fn every_metric_the_dashboard_queries_exists_in_metrics() {
    let test = "every_metric_the_dashboard_queries_exists_in_metrics";
    if !require_root(test) || !require_program(test, "ip") {
        return;
    }
    let edge = NetNs::new("pkg-edge");
    let peer = NetNs::new("pkg-peer");
    edge.link("pkg-e", "10.77.0.1", &peer, "pkg-p", "10.77.0.2", 24);
    let dir = TempDir::new("packaging-metrics");
    let metrics: SocketAddr = "127.0.0.1:9100".parse().unwrap();
    let config = dir.write("regedge.toml", &full_config(metrics));
    let mut regedge = Regedge::start(Some(&edge), &config, dir.0.join("regedge.log"));
    regedge.wait_ready(metrics, Some(&edge), Duration::from_secs(20)).unwrap_or_else(|e| panic!("{test}: {e}"));
    let text = scrape(metrics, Some(&edge)).expect("scrape /metrics");
    let exposed = samples(&text);
    assert!(
        exposed
            .get("regedge_fastpath_attached")
            .is_some_and(|s| s.iter().any(|l| l.get("mode").map(String::as_str) == Some("generic"))),
        "{test}: XDP is not attached, the kernel series are missing:\n{}",
        regedge.log()
    );

    let mut problems = Vec::new();
    let mut checked = 0;
    for expr in expressions(&dashboard()) {
        let found = selectors(&expr);
        let mut labels_here = BTreeSet::new();
        for selector in &found {
            checked += 1;
            let Some(series) = exposed.get(&selector.name) else {
                problems.push(format!("{}: not in /metrics (in {expr})", selector.name));
                continue;
            };
            labels_here.extend(series.iter().flat_map(|l| l.keys().cloned()));
            for (label, op, value) in &selector.matchers {
                // Labels Prometheus adds (instance, job) and template variables are not regedge's.
                if value.contains('$') || label == "instance" || label == "job" {
                    continue;
                }
                let wanted: Vec<&str> = match op.as_str() {
                    "=" => vec![value.as_str()],
                    "=~" => value.split('|').collect(),
                    _ => continue,
                };
                for want in wanted {
                    if !series.iter().any(|l| l.get(label).map(String::as_str) == Some(want)) {
                        problems.push(format!("{}{{{label}=\"{want}\"}}: no such series (in {expr})", selector.name));
                    }
                }
            }
        }
        for label in grouping_labels(&expr) {
            if !labels_here.contains(&label) && label != "instance" && label != "job" {
                problems.push(format!("grouping by {label}, which no metric of the query has (in {expr})"));
            }
        }
    }
    assert!(checked > 30, "{test}: only {checked} selectors found in the dashboard");
    assert!(
        problems.is_empty(),
        "{test}: the dashboard queries what /metrics lacks:\n{}\n\n/metrics:\n{text}",
        problems.join("\n")
    );
}

#[test]
fn selectors_and_grouping_are_read_from_promql() {
    let expr = "histogram_quantile(0.95, sum by (le) (rate(regedge_backend_response_seconds_bucket{instance=~\"$instance\"}[5m]))) \
                / sum(rate(regedge_registrations_total{outcome=~\"absorbed|forwarded\",protocol=\"sip\"}[5m])) + x_regedge_other";
    let found = selectors(expr);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].name, "regedge_backend_response_seconds_bucket");
    assert_eq!(found[1].matchers[0], ("outcome".into(), "=~".into(), "absorbed|forwarded".into()));
    assert_eq!(found[1].matchers[1], ("protocol".into(), "=".into(), "sip".into()));
    assert_eq!(grouping_labels(expr), ["le"]);
    let parsed = samples("# TYPE a counter\na_total{kind=\"stun\",x=\"1\"} 3\nb 1\n");
    assert_eq!(parsed["a_total"][0]["kind"], "stun");
    assert!(parsed["b"][0].is_empty());
}

// ---------------------------------------------------------------------------------------
// Example config
// ---------------------------------------------------------------------------------------

/// (section, key) of every `key = value` line outside comments; `[[x]]` sections keep
/// their name.
fn keys(toml: &str) -> Vec<(String, String, usize)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (n, line) in toml.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
        } else if !line.starts_with('#')
            && let Some((key, _)) = line.split_once('=')
        {
            out.push((section.clone(), key.trim().to_owned(), n));
        }
    }
    out
}

#[test]
fn example_config_passes_check_config_and_writes_out_every_key() {
    let example = packaging("regedge.example.toml");
    let out = Command::new(regedge_binary()).arg("check-config").arg(&example).output().expect("run regedge");
    assert!(out.status.success(), "check-config rejects the example:\n{}", String::from_utf8_lossy(&out.stderr));

    let default = Command::new(regedge_binary()).arg("default-config").output().expect("run regedge");
    let default = String::from_utf8_lossy(&default.stdout).into_owned();
    let text = read(&example);
    let written: BTreeSet<(String, String)> = keys(&text).into_iter().map(|(s, k, _)| (s, k)).collect();
    let missing: Vec<_> =
        keys(&default).into_iter().filter(|(s, k, _)| !written.contains(&(s.clone(), k.clone()))).collect();
    assert!(missing.is_empty(), "the example leaves out keys of the default config: {missing:?}");
    // The keys the default config documents in comments for [[backends]], [[groups]], [[rules]].
    for (section, key) in [
        ("backends", "name"),
        ("backends", "address"),
        ("backends", "protocol"),
        ("backends", "transport"),
        ("backends", "max_register_rate"),
        ("groups", "name"),
        ("groups", "backends"),
        ("rules", "group"),
        ("rules", "device"),
        ("rules", "mac_prefix"),
        ("rules", "domain"),
    ] {
        assert!(written.contains(&(section.into(), key.into())), "the example has no [[{section}]] {key}");
    }
    // Every key of a [section] is commented: a comment line since the previous key.
    let lines: Vec<&str> = text.lines().collect();
    let mut previous = 0;
    for (section, key, n) in keys(&text) {
        if !section.is_empty() && !matches!(section.as_str(), "backends" | "groups" | "rules") {
            assert!(
                lines[previous..n].iter().any(|l| l.trim_start().starts_with('#')),
                "[{section}] {key} (line {}) has no comment",
                n + 1
            );
        }
        previous = n + 1;
    }
}

// ---------------------------------------------------------------------------------------
// systemd unit and .deb
// ---------------------------------------------------------------------------------------

/// The capabilities the unit grants, and why (the README and the unit's comment say so).
const CAPABILITIES: [&str; 4] = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_PERFMON"];

fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(|v| v.trim().to_owned()).collect()
}

#[test]
fn unit_grants_exactly_the_documented_capabilities() {
    let path = packaging("regedge.service");
    let unit = read(&path);
    let documented: BTreeSet<&str> = CAPABILITIES.into_iter().collect();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let values = unit_values(&unit, key);
        assert_eq!(values.len(), 1, "{key} appears {} times", values.len());
        let granted: BTreeSet<&str> = values[0].split_whitespace().collect();
        assert_eq!(granted, documented, "{key}");
    }
    let comment: String = unit.lines().filter(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n");
    for cap in CAPABILITIES {
        assert!(comment.contains(&format!("#   {cap}")), "the unit's comment does not say why it needs {cap}");
    }
    assert!(
        comment.contains("CAP_SYS_RESOURCE      NOT needed"),
        "the unit's comment does not record CAP_SYS_RESOURCE"
    );
    let readme = read(&workspace_root().join("README.md"));
    let packaging_section = readme.split("### Packaging").nth(1).expect("README has a Packaging section");
    for cap in CAPABILITIES {
        assert!(packaging_section.contains(cap), "README's Packaging section does not list {cap}");
    }

    assert_eq!(unit_values(&unit, "ExecStart"), ["/usr/bin/regedge run --config /etc/regedge/regedge.toml"]);
    assert!(unit_values(&unit, "ExecReload").contains(&"/bin/kill -HUP $MAINPID".to_owned()));
    assert_eq!(unit_values(&unit, "User"), ["regedge"]);
    assert_eq!(unit_values(&unit, "StateDirectory"), ["regedge"]);
    assert_eq!(unit_values(&unit, "ProtectSystem"), ["strict"]);
    assert!(!unit_values(&unit, "LimitNOFILE").is_empty());

    // systemd's own check, with the binary where the unit says it is.
    if require_program("unit_grants_exactly_the_documented_capabilities", "systemd-analyze") {
        let dir = TempDir::new("unit");
        let binary = regedge_binary().to_str().expect("utf-8 path").to_owned();
        let copy = dir.write("regedge.service", &unit.replace("/usr/bin/regedge", &binary));
        let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().expect("run systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("regedge.service:"), "systemd-analyze verify:\n{stderr}");
    }
}

#[test]
fn deb_metadata_names_files_that_exist() {
    let manifest = read(&workspace_root().join("proxy/Cargo.toml"));
    let deb = manifest.split("[package.metadata.deb]").nth(1).expect("proxy/Cargo.toml has [package.metadata.deb]");
    assert!(
        deb.contains("\"etc/regedge/regedge.toml\""),
        "the example config is not installed as /etc/regedge/regedge.toml"
    );
    assert!(deb.contains("conf-files = [\"/etc/regedge/regedge.toml\"]"), "the config is not a conffile");
    assert!(
        deb.contains("unit-name = \"regedge\"") && deb.contains("unit-scripts = \"packaging/\""),
        "no systemd unit"
    );
    let proxy = workspace_root().join("proxy");
    let mut sources = 0;
    for line in deb.lines().filter(|l| l.trim_start().starts_with("[\"")) {
        let source = line.trim_start().trim_start_matches("[\"").split('"').next().expect("asset source");
        if source.starts_with("target/") {
            continue;
        }
        sources += 1;
        assert!(proxy.join(source).is_file(), "asset {source} does not exist");
    }
    assert!(sources >= 3, "only {sources} packaged files");
    for script in ["postinst", "postrm"] {
        let text = read(&proxy.join("packaging/debian").join(script));
        assert!(text.contains("#DEBHELPER#"), "{script} lacks #DEBHELPER#");
    }
    assert!(read(&proxy.join("packaging/debian/postinst")).contains("adduser --system --group"), "no system user");
    assert!(proxy.join("packaging/regedge.service").is_file());
}

// ---------------------------------------------------------------------------------------
// regedge demo
// ---------------------------------------------------------------------------------------

/// `name=value` pairs of the summary line starting with `key:`.
fn summary_line(summary: &str, key: &str) -> BTreeMap<String, u64> {
    let line = summary
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:` line in the summary:\n{summary}"));
    line.split_whitespace()
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.split('/').next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn demo_runs_to_completion_with_a_failover_and_a_fallback() {
    let test = "demo_runs_to_completion_with_a_failover_and_a_fallback";
    // Built (when it is not yet) before the clock starts.
    let binary = regedge_binary();
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["demo", "--duration", "20s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run regedge demo");
    let (mut stdout, mut stderr) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(45) {
            // SAFETY: signalling our own child by its PID; the demo cleans up on SIGTERM.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
            panic!("{test}: the demo did not end within 45 s:\n{}", reader.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (reader.join().unwrap_or_default(), errors.join().unwrap_or_default());
    assert!(status.success(), "{test}: demo exited with {status}\nstdout:\n{out}\nstderr:\n{err}");
    let summary =
        out.split("== regedge demo summary ==").nth(1).unwrap_or_else(|| panic!("{test}: no summary:\n{out}"));

    let peaks = summary_line(summary, "peak registrations");
    for backend in ["sip-a", "sip-b", "skinny-a", "skinny-b"] {
        assert!(peaks.get(backend).copied().unwrap_or(0) > 0, "{test}: no registration on {backend}:\n{summary}");
    }
    for key in ["failovers", "fallbacks"] {
        let counts = summary_line(summary, key);
        for protocol in ["sip", "sccp"] {
            assert!(counts.get(protocol).copied().unwrap_or(0) >= 1, "{test}: no {protocol} in `{key}`:\n{summary}");
        }
    }
    let registers = summary_line(summary, "registers");
    assert!(registers["forwarded"] > 0 && registers["absorbed"] > 0, "{test}: {summary}");
    let phones = summary_line(summary, "phones registered at end");
    assert!(phones.values().all(|&n| n > 0), "{test}: phones not registered at the end:\n{summary}");
    // As root the demo runs the proxy with XDP in namespaces of its own: the kernel answers,
    // and the namespaces are gone afterwards.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && summary.contains("fastpath: XDP") {
        let answers = summary_line(summary, "answers");
        assert!(answers["kernel"] > 0, "{test}: XDP attached but nothing answered in the kernel:\n{summary}");
        let absorbed = summary_line(summary, "absorbed");
        assert!(absorbed["kernel"] > 0, "{test}: no REGISTER refresh answered in XDP:\n{summary}");
        let netns = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
        let leftover = format!("rgdemo-{}-", child.id());
        assert!(!String::from_utf8_lossy(&netns.stdout).contains(&leftover), "{test}: the demo left its namespaces");
    }
    assert!(started.elapsed() < Duration::from_secs(40), "{test}: took {:?}", started.elapsed());
}
