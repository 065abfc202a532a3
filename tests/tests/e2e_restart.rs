//! End-to-end: regedge crashes (SIGKILL) while a fleet of phones keeps refreshing, and
//! nothing is lost. The XDP program, its maps and its link are pinned on a bpffs of the
//! test's own; the registry snapshot goes to the test's state directory.
//!
//! Namespaces as in e2e_registration: phones (sipp) —veth— proxy (regedge, XDP in generic
//! mode on its phone-side veth) —veth— backend (Kamailio). While regedge is dead, only the
//! kernel can answer: the phones see no failure, the pinned counters move, Kamailio sees
//! nothing. Started again with the same config, regedge adopts the pinned program and
//! maps, restores its registry from the snapshot and re-registers nobody upstream.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use regedge_common::ReplyKind;
use regedge_tests::{
    kamailio::{Kamailio, KamailioOpts},
    netns::NetNs,
    pinned::{self, BpfFs},
    privilege::require_peers,
    process::{Regedge, TempDir, metric, scrape},
    sipp::{FleetOpts, Sipp, user_names},
};

const METRICS: &str = "127.0.0.1:9100";
const SIP_PORT: u16 = 5060;
const PHONE_IF: &str = "rgrph0";
const EDGE_IF: &str = "rgrpp0";

/// Drop order: regedge, the backend, the bpffs (unpins: the program detaches), the scratch
/// dir, then the namespaces.
struct Lab {
    regedge: Option<Regedge>,
    cm1: Kamailio,
    bpffs: BpfFs,
    dir: TempDir,
    phones: NetNs,
    proxy: NetNs,
    _backends: NetNs,
    config: PathBuf,
    phone_ip: Ipv4Addr,
    edge: SocketAddr,
}

impl Lab {
    fn start(test: &str) -> Self {
        let phone_ip = Ipv4Addr::new(10, 214, 0, 2);
        let edge_ip = Ipv4Addr::new(10, 214, 0, 1);
        let edge_backend_side = Ipv4Addr::new(10, 215, 0, 1);
        let cm1_ip = Ipv4Addr::new(10, 215, 0, 11);

        let phones = NetNs::new("phones");
        let proxy = NetNs::new("edge");
        let backends = NetNs::new("cms");
        phones.link(PHONE_IF, &phone_ip.to_string(), &proxy, EDGE_IF, &edge_ip.to_string(), 24);
        proxy.link("rgrpb0", &edge_backend_side.to_string(), &backends, "rgrbk0", &cm1_ip.to_string(), 24);
        backends.route("10.214.0.0/24", &edge_backend_side.to_string());

        let cm1 = Kamailio::start(&backends, cm1_ip, KamailioOpts { children: 2, ..KamailioOpts::default() });
        let dir = TempDir::new(test);
        let bpffs = BpfFs::mount(&dir.0.join("bpf"));
        let edge = SocketAddr::new(edge_ip.into(), SIP_PORT);
        let config = dir.write(
            "regedge.toml",
            &format!(
                "[node]\nname = \"restart\"\nworkers = 2\nstate_dir = \"{}\"\n\n[sip]\nlisten = [\"{edge}\"]\n\n\
                 [fastpath]\ninterfaces = [\"{EDGE_IF}\"]\nmode = \"generic\"\npin_path = \"{}\"\n\n\
                 [registration]\nphone_expires = 30\nbackend_expires = 600\nexpires_jitter = 0.1\n\n\
                 [health]\ninterval = \"1s\"\ntimeout = \"500ms\"\ndown_after = 2\nup_after = 2\n\n\
                 [metrics]\nlisten = \"{METRICS}\"\n\n[routing]\ndefault_group = \"default\"\n\n\
                 [[backends]]\nname = \"cm1\"\naddress = \"{}\"\nmax_register_rate = 2000\n\n\
                 [[groups]]\nname = \"default\"\nbackends = [\"cm1\"]\n",
                dir.0.join("state").display(),
                bpffs.dir.join("regedge").display(),
                cm1.sip_addr(),
            ),
        );
        let mut lab =
            Self { regedge: None, cm1, bpffs, dir, phones, proxy, _backends: backends, config, phone_ip, edge };
        lab.start_regedge(test, "first");
        lab
    }

    /// Starts regedge with the lab's config; returns how long until /metrics answered.
    fn start_regedge(&mut self, test: &str, run: &str) -> Duration {
        let started = Instant::now();
        let log = self.dir.0.join(format!("regedge-{run}.log"));
        let mut regedge = Regedge::start(Some(&self.proxy), &self.config, log);
        if let Err(err) = regedge.wait_ready(METRICS.parse().unwrap(), Some(&self.proxy), Duration::from_secs(20)) {
            panic!("{test}: regedge ({run} run): {err}");
        }
        self.regedge = Some(regedge);
        started.elapsed()
    }

    fn pin_dir(&self) -> PathBuf {
        self.bpffs.dir.join("regedge")
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.0.join("state").join("registry.json")
    }

    fn metrics(&self) -> String {
        scrape(METRICS.parse().unwrap(), Some(&self.proxy)).expect("scrape /metrics")
    }

    fn log(&self) -> String {
        let text = self.regedge.as_ref().map(Regedge::log).unwrap_or_default();
        let skip = text.chars().count().saturating_sub(4000);
        text.chars().skip(skip).collect()
    }

    /// Refreshes the kernel answered so far (pinned `REPLIES`, kind `register`).
    fn kernel_refreshes(&self) -> u64 {
        pinned::replies(&self.pin_dir(), ReplyKind::Register).expect("read the pinned REPLIES map")
    }
}

/// A label-less sample (`regedge_fastpath_bindings 50`).
fn plain(text: &str, name: &str) -> Option<u64> {
    let prefix = format!("{name} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse::<f64>().ok()).map(|v| v as u64)
}

fn registrations(text: &str, outcome: &str) -> u64 {
    let prefix = format!("regedge_registrations_total{{protocol=\"sip\",outcome=\"{outcome}\"}} ");
    let alt = format!("regedge_registrations_total{{outcome=\"{outcome}\",protocol=\"sip\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).or_else(|| l.strip_prefix(&alt)))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Polls `check` every 100 ms until it holds or `timeout` passes; how long it took.
fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Devices in the snapshot file (one `"device":` per binding).
fn snapshot_bindings(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.matches("\"device\":").count())
}

#[test]
fn kernel_answers_while_regedge_is_down_and_a_restart_loses_nothing() {
    let test = "kernel_answers_while_regedge_is_down_and_a_restart_loses_nothing";
    if !require_peers(test, &["sipp"]) {
        return;
    }
    let started = Instant::now();
    let count = 50;
    let first_user = 500_000;
    let users = u64::from(count);
    let mut lab = Lab::start(test);
    let opts = FleetOpts {
        users: count,
        first_user,
        expires: 120,
        refreshes: 16,
        refresh_interval: Duration::from_secs(1),
        rate: 100,
        timeout: Duration::from_secs(40),
        ..FleetOpts::default()
    };
    let fleet = Sipp::spawn_fleet(&lab.phones, IpAddr::V4(lab.phone_ip), lab.edge, &opts);

    // Everyone registered at cm1, mirrored into the kernel, and in a snapshot.
    let want = user_names(first_user, count);
    let registered = wait_for(Duration::from_secs(10), || {
        let aors: std::collections::BTreeSet<String> = lab.cm1.registered_aors().into_iter().collect();
        want.is_subset(&aors)
    });
    assert!(registered.is_some(), "{test}: phones not all registered at cm1 within 10 s\n{}", lab.log());
    let mirrored = wait_for(Duration::from_secs(5), || {
        plain(&lab.metrics(), "regedge_fastpath_bindings") == Some(users)
            && pinned::binding_entries(&lab.pin_dir()).is_some_and(|e| e.len() == count as usize)
    });
    assert!(mirrored.is_some(), "{test}: the kernel mirror does not hold {count} bindings:\n{}", lab.metrics());
    let snapshot = wait_for(Duration::from_secs(5), || snapshot_bindings(&lab.snapshot_path()) == count as usize);
    assert!(snapshot.is_some(), "{test}: no snapshot with {count} bindings at {}", lab.snapshot_path().display());
    // The kernel answers refreshes before the crash too.
    let absorbing = wait_for(Duration::from_secs(5), || lab.kernel_refreshes() >= users);
    assert!(absorbing.is_some(), "{test}: the kernel answered {} refreshes\n{}", lab.kernel_refreshes(), lab.log());
    let before = lab.metrics();
    let registers_before = lab.cm1.stat("core:rcv_requests_register");
    let accepted_before = lab.cm1.stat("registrar:accepted_regs");
    let forwarded_before = registrations(&before, "forwarded");

    // Crash.
    let killed_at = Instant::now();
    let kernel_at_kill = lab.kernel_refreshes();
    let status = lab.regedge.as_mut().expect("regedge").kill();
    assert!(status.is_some(), "{test}: regedge survived SIGKILL");
    assert!(lab.pin_dir().join(format!("link-{EDGE_IF}")).exists(), "{test}: no pinned link after the crash");
    std::thread::sleep(Duration::from_secs(4));
    let kernel_while_down = lab.kernel_refreshes() - kernel_at_kill;
    let registers_while_down = lab.cm1.stat("core:rcv_requests_register") - registers_before;
    assert!(
        kernel_while_down >= 3 * users,
        "{test}: the kernel answered {kernel_while_down} refreshes in 4 s without regedge (want >= {})",
        3 * users
    );
    assert_eq!(registers_while_down, 0, "{test}: REGISTERs reached cm1 while regedge was down");

    // Restart with the same config.
    let crashed_log = lab.log();
    let down_for = killed_at.elapsed();
    let ready_after = lab.start_regedge(test, "second");
    let restart_log = lab.log();
    assert!(restart_log.contains("adopted the pinned XDP link"), "{test}: link not adopted:\n{restart_log}");
    let after = lab.metrics();
    assert_eq!(
        metric(&after, "regedge_fastpath_attached", "mode", "generic"),
        Some(1),
        "{test}: the adopted link's mode (asked of the kernel):\n{after}"
    );
    let bindings_after = metric(&after, "regedge_bindings", "protocol", "sip");
    assert_eq!(bindings_after, Some(users), "{test}: regedge_bindings after the restart:\n{restart_log}");
    let entries = pinned::binding_entries(&lab.pin_dir()).map(|e| e.len());
    assert_eq!(entries, Some(count as usize), "{test}: kernel entries after the restart");

    // Refreshes keep being answered in the kernel, and nothing goes upstream.
    let kernel_at_restart = lab.kernel_refreshes();
    std::thread::sleep(Duration::from_secs(3));
    let kernel_after_restart = lab.kernel_refreshes() - kernel_at_restart;
    assert!(
        kernel_after_restart >= 2 * users,
        "{test}: the kernel answered {kernel_after_restart} refreshes in 3 s after the restart\n{}",
        lab.log()
    );
    let summary = fleet.wait();
    let end = lab.metrics();
    let registers_after = lab.cm1.stat("core:rcv_requests_register");
    let accepted_after = lab.cm1.stat("registrar:accepted_regs");
    let total_kernel = lab.kernel_refreshes();
    eprintln!(
        "{test}: {count} phones; kernel answered {kernel_at_kill} refreshes before the kill, {kernel_while_down} \
         in the {down_for:?} regedge was down, {kernel_after_restart} in the 3 s after the restart ({total_kernel} \
         in all); regedge ready {ready_after:?} after start; cm1 REGISTERs {registers_before} before, \
         {registers_after} at the end (accepted {accepted_before} -> {accepted_after}); forwarded by regedge: \
         {forwarded_before} before, {} after the restart; sipp: {} sent, {} retransmissions, {} failed in {:?} \
         (whole test {:?})",
        registrations(&end, "forwarded"),
        summary.requests_sent,
        summary.retransmissions,
        summary.failed,
        summary.elapsed,
        started.elapsed()
    );
    assert!(
        summary.all_ok(count),
        "{test}: phones saw failures across the crash: {summary:#?}\nfirst run:\n{crashed_log}\nsecond run:\n{}",
        lab.log()
    );
    assert_eq!(registers_after, registers_before, "{test}: cm1 received REGISTERs after the crash");
    assert_eq!(accepted_after, accepted_before, "{test}: cm1 accepted registrations after the crash");
    assert_eq!(registrations(&end, "forwarded"), 0, "{test}: the restarted regedge forwarded REGISTERs");
    assert_eq!(metric(&end, "regedge_bindings", "protocol", "sip"), Some(users), "{test}: bindings at the end");
    let aors: std::collections::BTreeSet<String> = lab.cm1.registered_aors().into_iter().collect();
    assert!(want.is_subset(&aors), "{test}: cm1 lost phones");

    // A clean stop (the upgrade path) keeps the link and the maps, and writes a last
    // snapshot; the next start adopts them again.
    let status = lab.regedge.as_mut().expect("regedge").terminate(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{test}: SIGTERM exit {status:?}\n{}", lab.log());
    assert!(lab.log().contains("XDP program left attached"), "{test}:\n{}", lab.log());
    assert!(lab.pin_dir().join(format!("link-{EDGE_IF}")).exists(), "{test}: SIGTERM removed the pinned link");
    assert_eq!(snapshot_bindings(&lab.snapshot_path()), count as usize, "{test}: last snapshot");
    lab.start_regedge(test, "third");
    assert!(lab.log().contains("adopted the pinned XDP link"), "{test}:\n{}", lab.log());
    assert_eq!(metric(&lab.metrics(), "regedge_bindings", "protocol", "sip"), Some(users), "{test}: third run");

    // A pinned link in another mode than the config now asks for is replaced, not adopted.
    lab.regedge.as_mut().expect("regedge").terminate(Duration::from_secs(5));
    let native = std::fs::read_to_string(&lab.config).unwrap().replace("mode = \"generic\"", "mode = \"native\"");
    std::fs::write(&lab.config, native).unwrap();
    lab.start_regedge(test, "fourth");
    let log = lab.log();
    assert!(log.contains("runs in generic mode, the config asks for native"), "{test}:\n{log}");
    let metrics = lab.metrics();
    assert_eq!(metric(&metrics, "regedge_fastpath_attached", "mode", "native"), Some(1), "{test}:\n{metrics}\n{log}");
    assert_eq!(metric(&metrics, "regedge_bindings", "protocol", "sip"), Some(users), "{test}: fourth run");
}
