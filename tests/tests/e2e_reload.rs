//! End-to-end: operating regedge under load (`edge_lab`: sipp phones, regedge, two
//! Kamailio registrars).
//!
//! - SIGHUP while a fleet refreshes: a changed `max_register_rate` and an added backend
//!   (made the group's first) take effect, a broken config is rejected with its line in
//!   the log and the reload counter says so, and through it all no phone transaction
//!   fails (sipp's counts) and no binding is lost (regedge's /metrics, sampled every
//!   100 ms, and Kamailio's `ul.dump`).
//! - SIGTERM while a fleet refreshes, with XDP attached in generic mode and nothing
//!   pinned: regedge exits cleanly within `[node] shutdown_timeout`, and leaves no XDP
//!   program on the interface and, once the lab is dropped, no namespace.

use std::{
    collections::BTreeSet,
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use regedge_tests::{
    edge_lab::{EDGE_IF, EdgeConfig, EdgeLab, METRICS},
    privilege::require_peers,
    process::{MetricsText, scrape},
    sipp::{FleetOpts, user_names},
};

const PHONES: u32 = 50;

fn fleet(first_user: u32, refreshes: u32) -> FleetOpts {
    FleetOpts {
        users: PHONES,
        first_user,
        expires: 120,
        refreshes,
        refresh_interval: Duration::from_secs(1),
        rate: 200,
        timeout: Duration::from_secs(50),
        ..FleetOpts::default()
    }
}

fn reloads(lab: &EdgeLab, outcome: &str) -> u64 {
    lab.metrics().get("regedge_config_reloads_total", &[("outcome", outcome)]).unwrap_or(0)
}

fn rate_of(lab: &EdgeLab, backend: &str) -> Option<u64> {
    let backends = lab.admin().get("/backends").body;
    backends.as_array()?.iter().find(|b| b["name"] == backend)?["max_register_rate"].as_u64()
}

#[test]
fn reload_under_load_loses_nothing_and_applies_the_new_config() {
    let test = "reload_under_load_loses_nothing_and_applies_the_new_config";
    if !require_peers(test, &["sipp"]) {
        return;
    }
    let started = Instant::now();
    let only_cm1 = EdgeConfig { backends: vec![("cm1", 2000)], group: vec!["cm1"], ..EdgeConfig::default() };
    let lab = EdgeLab::start(test, &only_cm1);
    let admin = lab.admin();
    let first = 400_000;
    let phones = u64::from(PHONES);
    let sipp = lab.spawn_fleet(&fleet(first, 24));
    lab.wait_for("every phone registered on cm1", Duration::from_secs(15), || admin.bindings_on("cm1") == phones);

    // From here on regedge_bindings is sampled every 100 ms: it must never drop.
    let stop = AtomicBool::new(false);
    let (lowest, samples) = (AtomicU64::new(u64::MAX), AtomicU64::new(0));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(text) = scrape(METRICS.parse().unwrap(), Some(&lab.proxy)) {
                    let bindings = MetricsText(text).get("regedge_bindings", &[("protocol", "sip")]).unwrap_or(0);
                    lowest.fetch_min(bindings, Ordering::Relaxed);
                    samples.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });

        // 1. A new rate limit.
        let slower = EdgeConfig { backends: vec![("cm1", 1500)], ..only_cm1.clone() };
        lab.write_config(&slower);
        lab.signal(libc::SIGHUP);
        lab.wait_for("the reload counted ok", Duration::from_secs(5), || reloads(&lab, "ok") == 1);
        assert_eq!(rate_of(&lab, "cm1"), Some(1500), "max_register_rate after the reload");

        // 2. A broken config: rejected with its line, the running one kept.
        let mut broken = lab.config_text(&slower);
        broken.push_str("\n[[backends]]\nname = \"cm9\"\naddress = \"10.0.0.9:0\"\n");
        let line = broken.lines().count();
        std::fs::write(&lab.config_path, &broken).unwrap();
        lab.signal(libc::SIGHUP);
        lab.wait_for("the reload counted rejected", Duration::from_secs(5), || reloads(&lab, "rejected") == 1);
        let log = lab.log();
        let reported = format!("regedge.toml:{line}: backend \"cm9\" address 10.0.0.9:0 has port 0");
        assert!(log.contains(&reported), "{test}: the log lacks {reported:?}:\n{log}");
        assert!(log.contains("config reload rejected: the running config is kept"), "{log}");
        assert_eq!(reloads(&lab, "ok"), 1);
        assert_eq!(lab.admin().get("/ready").status, 200, "still ready");
        assert_eq!(rate_of(&lab, "cm9"), None);

        // 3. An added backend, made the group's first: every phone moves to it at its
        // next refresh, and leaves cm1.
        let with_cm2 =
            EdgeConfig { backends: vec![("cm1", 1500), ("cm2", 2000)], group: vec!["cm2", "cm1"], ..only_cm1.clone() };
        lab.write_config(&with_cm2);
        lab.signal(libc::SIGHUP);
        lab.wait_for("the second reload counted ok", Duration::from_secs(5), || reloads(&lab, "ok") == 2);
        let moved = lab.wait_for("every phone on the added cm2", Duration::from_secs(15), || {
            admin.bindings_on("cm2") == phones && admin.bindings_on("cm1") == 0
        });
        let aors = user_names(first, PHONES);
        lab.wait_for("cm2 holds every phone, cm1 none (ul.dump)", Duration::from_secs(10), || {
            lab.cm2.registered_aors().into_iter().collect::<BTreeSet<_>>() == aors && lab.cm1.contacts().is_empty()
        });
        let summary = sipp.wait();
        stop.store(true, Ordering::Relaxed);
        assert!(summary.all_ok(PHONES), "{test}: phone transactions failed: {summary:#?}\n{}", lab.log());
        assert_eq!(summary.unexpected + summary.timeouts, 0, "{summary:#?}");
        eprintln!(
            "{test}: {PHONES} phones through three reloads; moved to the added backend in {moved:?}; \
             sipp sent {} REGISTERs (+{} retransmissions); whole test {:?}",
            summary.requests_sent,
            summary.retransmissions,
            started.elapsed()
        );
    });
    let (lowest, samples) = (lowest.load(Ordering::Relaxed), samples.load(Ordering::Relaxed));
    assert!(samples > 20, "{test}: only {samples} samples of /metrics");
    assert_eq!(lowest, phones, "{test}: regedge_bindings dipped during the reloads");
    let metrics = lab.metrics();
    assert_eq!(metrics.value("regedge_bindings", &[("protocol", "sip")]), phones);
    assert_eq!(metrics.value("regedge_backend_bindings", &[("backend", "cm2")]), phones);
    for outcome in ["rejected", "rate_limited"] {
        let count = metrics.value("regedge_registrations_total", &[("protocol", "sip"), ("outcome", outcome)]);
        assert_eq!(count, 0, "{test}: {outcome} REGISTERs");
    }
}

/// `ip -d link show` of regedge's phone-side interface.
fn link_details(lab: &EdgeLab) -> String {
    let out = Command::new("ip")
        .args(["-n", &lab.proxy.name, "-d", "link", "show", "dev", EDGE_IF])
        .output()
        .expect("run ip link show");
    assert!(out.status.success(), "ip link show: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sigterm_under_load_exits_within_the_bound_and_detaches_xdp() {
    let test = "sigterm_under_load_exits_within_the_bound_and_detaches_xdp";
    if !require_peers(test, &["sipp"]) {
        return;
    }
    let bound = Duration::from_secs(3);
    let config = EdgeConfig { xdp: true, shutdown_timeout: "3s", ..EdgeConfig::default() };
    let mut lab = EdgeLab::start(test, &config);
    let attached = link_details(&lab);
    assert!(attached.contains("xdp"), "{test}: XDP is not attached to {EDGE_IF}:\n{attached}\n{}", lab.log());
    let phones = u64::from(PHONES);
    let sipp = lab.spawn_fleet(&fleet(500_000, 30));
    let admin = lab.admin();
    lab.wait_for("every phone registered", Duration::from_secs(15), || admin.bindings_on("cm1") == phones);
    std::thread::sleep(Duration::from_secs(2));
    let in_kernel = lab.metrics().get("regedge_fastpath_replies_total", &[("kind", "register")]).unwrap_or(0);
    assert!(in_kernel > 0, "{test}: no refresh answered in XDP before the SIGTERM");

    let signalled = Instant::now();
    let status = lab.regedge().terminate(bound + Duration::from_secs(5));
    let took = signalled.elapsed();
    let log = lab.log();
    let status = status.unwrap_or_else(|| panic!("{test}: regedge still runs {took:?} after SIGTERM:\n{log}"));
    assert!(status.success(), "{test}: regedge exited with {status}:\n{log}");
    assert!(took < bound, "{test}: the shutdown took {took:?}, more than node.shutdown_timeout {bound:?}:\n{log}");
    for line in ["shutting down", "XDP program detached", "regedge stopped"] {
        assert!(log.contains(line), "{test}: the log lacks {line:?}:\n{log}");
    }
    let detached = link_details(&lab);
    assert!(!detached.contains("xdp"), "{test}: an XDP program is still attached after the exit:\n{detached}");
    drop(sipp);

    let names: Vec<String> = [&lab.phones, &lab.proxy, &lab.backends].iter().map(|ns| ns.name.clone()).collect();
    drop(lab);
    let listed = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    for name in &names {
        assert!(!listed.lines().any(|l| l.split_whitespace().next() == Some(name)), "{test}: {name} left behind");
    }
    eprintln!("{test}: SIGTERM with {PHONES} phones refreshing (XDP generic): exited in {took:?}");
}

/// A free TCP or UDP port on loopback (bound, then released).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

/// A shutdown that hangs is cut at `[node] shutdown_timeout`, with a log line saying what
/// it waited for. The hang is real: a health probe of a backend that never answers runs
/// for its whole timeout, and stopping the health checks waits for it. Loopback only, no
/// privileges needed.
#[test]
fn a_shutdown_that_hangs_is_cut_at_the_bound() {
    let test = "a_shutdown_that_hangs_is_cut_at_the_bound";
    // A backend that takes every probe and answers none.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = regedge_tests::process::TempDir::new("hang");
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port(false)).parse().unwrap();
    let config = dir.write(
        "regedge.toml",
        &format!(
            "[node]\nworkers = 1\nstate_dir = \"\"\nshutdown_timeout = \"300ms\"\n[sip]\nlisten = [\"127.0.0.1:{}\"]\n\
             [fastpath]\nmode = \"off\"\n[metrics]\nlisten = \"{metrics}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
             [health]\ninterval = \"20s\"\ntimeout = \"19s\"\n\
             [[backends]]\nname = \"silent\"\naddress = \"{}\"\n[[groups]]\nname = \"default\"\nbackends = [\"silent\"]\n",
            free_port(true),
            free_port(false),
            silent.local_addr().unwrap()
        ),
    );
    let mut regedge = regedge_tests::process::Regedge::start(None, &config, dir.0.join("regedge.log"));
    regedge.wait_ready(metrics, None, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{test}: {e}"));
    // The first probe is out (it waits 19 s for an answer).
    let mut probe = [0u8; 2048];
    silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (len, _) = silent.recv_from(&mut probe).unwrap_or_else(|e| panic!("{test}: no health probe came: {e}"));
    assert!(probe[..len].starts_with(b"OPTIONS "), "{test}: not a probe");
    let signalled = Instant::now();
    let status = regedge.terminate(Duration::from_secs(10));
    let took = signalled.elapsed();
    let log = regedge.log();
    let status = status.unwrap_or_else(|| panic!("{test}: regedge still runs {took:?} after SIGTERM:\n{log}"));
    assert_eq!(status.code(), Some(1), "{test}: a cut shutdown exits with status 1:\n{log}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{test}: exited after {took:?}");
    assert!(
        log.contains("shutdown took longer than node.shutdown_timeout: exiting anyway")
            && log.contains("waiting_for=\"stopping the health checks\""),
        "{test}: the log does not say what hung:\n{log}"
    );
}

/// `--log-format json`: one JSON object per line, the structured fields apart from the
/// message; a reload's outcome is read from them. Loopback only, no privileges needed.
#[test]
fn json_logs_carry_structured_fields() {
    let test = "json_logs_carry_structured_fields";
    let dir = regedge_tests::process::TempDir::new("json-logs");
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port(false)).parse().unwrap();
    let sip = free_port(true);
    let text = |rate: u32| {
        format!(
            "[node]\nworkers = 1\nstate_dir = \"\"\n[sip]\nlisten = [\"127.0.0.1:{sip}\"]\n[fastpath]\nmode = \"off\"\n\
             [metrics]\nlisten = \"{metrics}\"\n[admin]\nlisten = \"\"\n\
             [[backends]]\nname = \"cm1\"\naddress = \"127.0.0.1:9\"\nmax_register_rate = {rate}\n\
             [[groups]]\nname = \"default\"\nbackends = [\"cm1\"]\n"
        )
    };
    let config = dir.write("regedge.toml", &text(100));
    let log = dir.0.join("regedge.log");
    let mut child = Command::new(regedge_tests::process::regedge_binary())
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn regedge");
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape(metrics, None).is_err() {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "{test}: regedge did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The config file is read again with the same port, a new rate, and a bad key on line 3.
    let reloaded = text(50);
    std::fs::write(&config, reloaded.replacen("workers = 1", "workers = 1\nworkerz = 2", 1)).unwrap();
    let logged = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains(what) {
            assert!(Instant::now() < deadline, "{test}: regedge did not log {what:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    logged("config reload rejected");
    std::fs::write(&config, &reloaded).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    logged("config reloaded");
    regedge_tests::process::stop_child(&mut child, Duration::from_secs(5));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{test}: not a JSON line ({e}): {line}")))
        .collect();
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains(message)))
            .unwrap_or_else(|| panic!("{test}: no line with {message:?} in {lines:#?}"))
    };
    let running = find("regedge running");
    assert_eq!((running["level"].as_str(), running["target"].as_str()), (Some("INFO"), Some("regedge::run")));
    assert_eq!(running["fields"]["metrics"].as_str(), Some(format!("http://{metrics}/metrics").as_str()));
    let error = find("unknown field `workerz`");
    assert_eq!((error["level"].as_str(), error["fields"]["line"].as_u64()), (Some("ERROR"), Some(3)), "{error}");
    let rejected = find("config reload rejected");
    assert_eq!(rejected["fields"]["errors"].as_u64(), Some(1));
    let reloaded = find("config reloaded");
    assert_eq!(reloaded["fields"]["changes"].as_str(), Some("max_register_rate: cm1 100 -> 50/s"), "{reloaded}");
    find("regedge stopped");
}
