//! The regedge command line: check-config reports every error with its line, the
//! fast-path mode decides whether an XDP failure stops the proxy or falls back, and a node
//! whose cluster store is unreachable starts anyway and says it is degraded.

use std::{process::Command, time::Duration};

use regedge_tests::{
    admin::Admin,
    netns::NetNs,
    privilege::require_root,
    process::{MetricsText, Regedge, TempDir, regedge_binary, scrape},
};

#[test]
fn check_config_reports_every_error_with_its_line() {
    let dir = TempDir::new("check-config");
    let path = dir.write(
        "bad.toml",
        "[node]\nname = \"edge 1\"\n\n[sip]\nlisten = [\"127.0.0.1:5060\"]\nlisen = 1\n\n[fastpath]\nmode = \"turbo\"\n\n[alerts]\nemail = \"ops@example.net\"\n",
    );
    let out = Command::new(regedge_binary()).arg("check-config").arg(&path).output().expect("run regedge");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let file = path.display().to_string();
    for line in [2, 6, 9, 11] {
        assert!(stderr.contains(&format!("{file}:{line}: ")), "no error for line {line}:\n{stderr}");
    }

    let good = dir.write("good.toml", "[sip]\nlisten = [\"127.0.0.1:5070\"]\nlocal_names = [\"edge.example.net\"]\n");
    let out = Command::new(regedge_binary()).arg("check-config").arg(&good).output().expect("run regedge");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_embedded_default_config_is_valid() {
    let dir = TempDir::new("default-config");
    let out = Command::new(regedge_binary()).arg("default-config").output().expect("run regedge");
    assert!(out.status.success());
    let path = dir.write("default.toml", &String::from_utf8_lossy(&out.stdout));
    let out = Command::new(regedge_binary()).arg("check-config").arg(&path).output().expect("run regedge");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn config_with_fastpath(dir: &TempDir, mode: &str) -> std::path::PathBuf {
    dir.write(
        "regedge.toml",
        &format!("[sip]\nlisten = [\"127.0.0.1:5060\"]\n\n[fastpath]\ninterfaces = [\"nosuch0\"]\nmode = \"{mode}\"\n"),
    )
}

#[test]
fn a_required_fast_path_that_cannot_attach_stops_the_proxy() {
    if !require_root("a_required_fast_path_that_cannot_attach_stops_the_proxy") {
        return;
    }
    let ns = NetNs::new("cli");
    let dir = TempDir::new("native-fails");
    let mut regedge = Regedge::start(Some(&ns), &config_with_fastpath(&dir, "native"), dir.0.join("log"));
    let status = regedge.wait_exit(Duration::from_secs(20)).expect("regedge exits");
    let log = regedge.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("nosuch0") && log.contains("native"), "the error names the interface and mode:\n{log}");
}

#[test]
fn auto_mode_falls_back_to_userspace_with_one_warning() {
    if !require_root("auto_mode_falls_back_to_userspace_with_one_warning") {
        return;
    }
    let ns = NetNs::new("cli");
    let dir = TempDir::new("auto-falls-back");
    let mut regedge = Regedge::start(Some(&ns), &config_with_fastpath(&dir, "auto"), dir.0.join("log"));
    regedge.wait_ready("127.0.0.1:9100".parse().unwrap(), Some(&ns), Duration::from_secs(20)).expect("regedge runs");
    let status = regedge.terminate(Duration::from_secs(10)).expect("exits on SIGTERM");
    let log = regedge.log();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("fast path unavailable").count(), 1, "{log}");
    assert!(log.contains("nosuch0"), "{log}");
}

/// `[cluster] store` names a server that is not there (nothing listens on that port in the
/// test's own namespace): the node starts, serves, reports `regedge_store_up 0` and says
/// on `/ready` that it is degraded without leaving the balancer's pool.
#[test]
fn a_node_whose_store_is_down_starts_and_says_it_is_degraded() {
    let test = "a_node_whose_store_is_down_starts_and_says_it_is_degraded";
    if !require_root(test) {
        return;
    }
    let ns = NetNs::new("cli");
    let dir = TempDir::new("store-down");
    let config = dir.write(
        "regedge.toml",
        &format!(
            "[node]\nstate_dir = \"\"\n[sip]\nlisten = [\"127.0.0.1:5060\"]\n[fastpath]\nmode = \"off\"\n\
             [cluster]\nstore = \"redis://127.0.0.1:6390\"\nadvertise = \"127.0.0.1:5060\"\nsecret = \"0123456789abcdef\"\n\
             [[backends]]\nname = \"cm\"\naddress = \"127.0.0.1:5080\"\n[[groups]]\nname = \"default\"\nbackends = [\"cm\"]\n"
        ),
    );
    let mut regedge = Regedge::start(Some(&ns), &config, dir.0.join("log"));
    let metrics = "127.0.0.1:9100".parse().unwrap();
    regedge.wait_ready(metrics, Some(&ns), Duration::from_secs(20)).expect("regedge runs without its store");
    let admin = Admin { ns: &ns, addr: "127.0.0.1:9101".parse().unwrap(), token: None };
    let ready = admin.get("/ready");
    eprintln!("{test}: /ready {} {}", ready.status, ready.body);
    assert_eq!(ready.status, 200, "{}", regedge.log());
    assert_eq!(ready.body["checks"]["degraded"], true, "{}", ready.body);
    assert!(ready.body["checks"]["store"].as_str().unwrap_or_default().starts_with("down"), "{}", ready.body);
    let m = MetricsText(scrape(metrics, Some(&ns)).expect("metrics"));
    assert_eq!(m.get("regedge_store_up", &[]), Some(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !regedge.log().contains("store unreachable") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = regedge.log();
    assert!(log.contains("store unreachable"), "the outage is logged:\n{log}");
    let status = regedge.terminate(Duration::from_secs(10)).expect("exits on SIGTERM");
    assert!(status.success(), "{}", regedge.log());
}
