//! End-to-end fault tests: a backend blackholed, slow or flapping, 5 % loss between the
//! phones and regedge, regedge SIGKILLed under load. Each asserts that no binding is lost
//! (regedge's `regedge_bindings` and the registrars' `ul.dump`), that no de-registration
//! reaches a backend that should keep its phones (a tshark capture on the backends' side),
//! and that phones fail over within the configured detection bound.
//!
//! Namespaces as in e2e_registration: phones (sipp) —veth— proxy (regedge) —veth— backends
//! (Kamailio cm1 and cm2). The kernels these tests run on have no `sch_netem` (so no
//! `tc ... netem`): faults are made by a relay ([`Impairment`]) on the path — cm1 is
//! configured in regedge at the relay's address in the backends' namespace, and the loss
//! test puts one in the phones' namespace between sipp and regedge. The backend killed
//! outright is e2e_registration's `phones_fail_over_and_fall_back`, SIGHUP under load is
//! e2e_reload's, and a restart with the pinned fast path answering meanwhile is
//! e2e_restart's; the restart here is userspace only, under load, from the snapshot.
//!
//! The tests of this file run one at a time: each measures failover times.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use regedge_tests::{
    impair::{Fault, Impairment, TO_CLIENT, TO_TARGET},
    kamailio::{Kamailio, KamailioOpts},
    netns::NetNs,
    privilege::require_peers,
    process::{MetricsText, Regedge, TempDir, scrape},
    sipp::{FleetOpts, FleetSummary, Sipp, user_names},
    tshark::{Capture, Captured},
};

const METRICS: &str = "127.0.0.1:9100";
const SIP_PORT: u16 = 5060;
/// `[health]` of every lab: a probe every second that may take 500 ms, two failures mark
/// a backend down, two successes up.
const INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const DOWN_AFTER: u32 = 2;
const UP_AFTER: u32 = 2;
/// How often the phones refresh.
const REFRESH: Duration = Duration::from_secs(1);
/// Scheduling and measurement slack on top of a configured bound: metrics are polled every
/// 50 ms, and sipp, two Kamailio and regedge share two cores.
const SLACK: Duration = Duration::from_millis(1000);

static SERIAL: Mutex<()> = Mutex::new(());
static SUBNET: AtomicU32 = AtomicU32::new(0);

/// A backend that fails is marked down within this: the fault may begin right after a
/// probe passed; the next `DOWN_AFTER` probes each time out.
fn detection_bound() -> Duration {
    INTERVAL * DOWN_AFTER + PROBE_TIMEOUT
}

#[derive(Default)]
struct LabOpts {
    /// `[node] state_dir` in the test's scratch dir (else "": no snapshot).
    state_dir: bool,
    /// A relay between sipp and regedge, in the phones' namespace.
    phone_relay: bool,
}

/// Drop order: regedge, the relays, the registrars, the scratch dir, the namespaces.
struct Lab {
    regedge: Option<Regedge>,
    phone_path: Option<Impairment>,
    cm1_path: Impairment,
    cm1: Kamailio,
    cm2: Kamailio,
    dir: TempDir,
    phones: NetNs,
    proxy: NetNs,
    backends: NetNs,
    config: std::path::PathBuf,
    phone_ip: Ipv4Addr,
    edge_backend_side: Ipv4Addr,
    cm1_ip: Ipv4Addr,
    cm2_ip: Ipv4Addr,
    /// Where regedge reaches cm1 (the relay).
    cm1_front: SocketAddr,
    /// Where the phones send: regedge, or the relay in front of it.
    target: SocketAddr,
}

impl Lab {
    fn start(test: &str, opts: LabOpts) -> Self {
        let n = (SUBNET.fetch_add(1, Ordering::Relaxed) % 250) as u8;
        let phone_ip = Ipv4Addr::new(10, 226, n, 2);
        let edge_ip = Ipv4Addr::new(10, 226, n, 1);
        let edge_backend_side = Ipv4Addr::new(10, 227, n, 1);
        let cm1_ip = Ipv4Addr::new(10, 227, n, 11);
        let cm2_ip = Ipv4Addr::new(10, 227, n, 12);
        let relay_ip = Ipv4Addr::new(10, 227, n, 13);
        let phones = NetNs::new("phones");
        let proxy = NetNs::new("edge");
        let backends = NetNs::new("cms");
        phones.link("rgfph0", &phone_ip.to_string(), &proxy, "rgfpp0", &edge_ip.to_string(), 24);
        proxy.link("rgfpb0", &edge_backend_side.to_string(), &backends, "rgfbk0", &cm1_ip.to_string(), 24);
        for ip in [cm2_ip, relay_ip] {
            backends.ip(&["addr", "add", &format!("{ip}/24"), "dev", "rgfbk0"]);
        }
        backends.route(&format!("10.226.{n}.0/24"), &edge_backend_side.to_string());
        let kopts = KamailioOpts { children: 2, ..KamailioOpts::default() };
        let cm1 = Kamailio::start(&backends, cm1_ip, kopts.clone());
        let cm2 = Kamailio::start(&backends, cm2_ip, kopts);
        let cm1_front = SocketAddr::new(relay_ip.into(), SIP_PORT);
        let cm1_path = Impairment::start(&backends, cm1_front, relay_ip.into(), cm1.sip_addr());
        let edge = SocketAddr::new(edge_ip.into(), SIP_PORT);
        let phone_path = opts.phone_relay.then(|| {
            Impairment::start(&phones, SocketAddr::new(phone_ip.into(), 5070), phone_ip.into(), edge)
        });
        let target = phone_path.as_ref().map_or(edge, |p| p.front);
        let dir = TempDir::new(test);
        let state_dir = if opts.state_dir { dir.0.join("state").display().to_string() } else { String::new() };
        let config = dir.write(
            "regedge.toml",
            &format!(
                "[node]\nname = \"faults\"\nworkers = 2\nstate_dir = \"{state_dir}\"\n\n[sip]\nlisten = [\"{edge}\"]\n\n\
                 [fastpath]\nmode = \"off\"\n\n\
                 [registration]\nphone_expires = 30\nbackend_expires = 600\nexpires_jitter = 0.1\n\
                 transaction_timeout = \"4s\"\n\n\
                 [health]\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\ndown_after = {DOWN_AFTER}\nup_after = {UP_AFTER}\n\n\
                 [metrics]\nlisten = \"{METRICS}\"\n\n[admin]\nlisten = \"\"\n\n[routing]\ndefault_group = \"default\"\n\n\
                 [[backends]]\nname = \"cm1\"\naddress = \"{cm1_front}\"\nmax_register_rate = 2000\n\n\
                 [[backends]]\nname = \"cm2\"\naddress = \"{}\"\nmax_register_rate = 2000\n\n\
                 [[groups]]\nname = \"default\"\nbackends = [\"cm1\", \"cm2\"]\n",
                INTERVAL.as_millis(),
                PROBE_TIMEOUT.as_millis(),
                cm2.sip_addr()
            ),
        );
        let mut lab = Self {
            regedge: None,
            phone_path,
            cm1_path,
            cm1,
            cm2,
            dir,
            phones,
            proxy,
            backends,
            config,
            phone_ip,
            edge_backend_side,
            cm1_ip,
            cm2_ip,
            cm1_front,
            target,
        };
        lab.start_regedge(test);
        lab
    }

    fn start_regedge(&mut self, test: &str) -> Duration {
        let started = Instant::now();
        let log = self.dir.0.join(format!("regedge-{}.log", started.elapsed().as_nanos() % 1000));
        let mut regedge = Regedge::start(Some(&self.proxy), &self.config, log);
        if let Err(err) = regedge.wait_ready(METRICS.parse().unwrap(), Some(&self.proxy), Duration::from_secs(20)) {
            panic!("{test}: {err}");
        }
        self.regedge = Some(regedge);
        started.elapsed()
    }

    fn metrics(&self) -> MetricsText {
        MetricsText(scrape(METRICS.parse().unwrap(), Some(&self.proxy)).expect("scrape /metrics"))
    }

    fn log(&self) -> String {
        let log = self.regedge.as_ref().map(Regedge::log).unwrap_or_default();
        let skip = log.chars().count().saturating_sub(4000);
        log.chars().skip(skip).collect()
    }

    fn spawn_fleet(&self, opts: &FleetOpts) -> Sipp {
        Sipp::spawn_fleet(&self.phones, IpAddr::V4(self.phone_ip), self.target, opts)
    }

    /// A capture of SIP on the backends' side of regedge (what regedge sends upstream).
    fn capture_upstream(&self, name: &str) -> Capture {
        let file = self.dir.0.join(format!("{name}.pcapng"));
        Capture::start(&self.backends, "rgfbk0", SIP_PORT, file, self.cm1_ip.into(), self.edge_backend_side.into())
    }

    fn backend_ip(&self, backend: &str) -> IpAddr {
        match backend {
            "cm1" => self.cm1_front.ip(),
            "cm2" => self.cm2_ip.into(),
            other => panic!("no backend {other}"),
        }
    }
}

fn bindings(m: &MetricsText) -> u64 {
    m.value("regedge_bindings", &[("protocol", "sip")])
}

fn backend_bindings(m: &MetricsText, backend: &str) -> u64 {
    m.value("regedge_backend_bindings", &[("backend", backend)])
}

fn backend_up(m: &MetricsText, backend: &str) -> u64 {
    m.value("regedge_backend_up", &[("backend", backend)])
}

fn registrations(m: &MetricsText, outcome: &str) -> u64 {
    m.value("regedge_registrations_total", &[("protocol", "sip"), ("outcome", outcome)])
}

fn outcomes(m: &MetricsText) -> String {
    ["forwarded", "absorbed", "rejected", "rate_limited", "retransmission"]
        .iter()
        .map(|o| format!("{o}={}", registrations(m, o)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn aors(kamailio: &Kamailio) -> BTreeSet<String> {
    kamailio.registered_aors().into_iter().collect()
}

/// Polls `check` every 50 ms until it holds; how long that took, or `None` after `timeout`.
fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Some(started.elapsed());
        }
        if started.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The de-registrations (Expires 0, or a contact with `expires=0`) in `captured`, by
/// destination address.
fn deregistrations(captured: &Captured) -> Vec<(String, String)> {
    captured
        .read("sip.Method == \"REGISTER\"", &["ip.dst", "sip.Expires", "sip.Contact", "sip.Call-ID"])
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let expires = fields.get(1).copied().unwrap_or("");
            let contact = fields.get(2).copied().unwrap_or("");
            let zero = expires.trim() == "0" || contact.contains("expires=0");
            zero.then(|| (fields[0].to_owned(), fields.get(3).copied().unwrap_or("").to_owned()))
        })
        .collect()
}

/// Registers `count` phones at cm1 through regedge, refreshing every second `refreshes`
/// times, and waits until cm1 holds them all.
fn registered_fleet(lab: &Lab, test: &str, count: u32, first_user: u32, refreshes: u32) -> (Sipp, BTreeSet<String>) {
    let opts = FleetOpts {
        users: count,
        first_user,
        expires: 120,
        refreshes,
        refresh_interval: REFRESH,
        rate: 400,
        timeout: Duration::from_secs(60),
        ..FleetOpts::default()
    };
    let fleet = lab.spawn_fleet(&opts);
    let want = user_names(first_user, count);
    let took = wait_for(Duration::from_secs(10), || aors(&lab.cm1) == want).unwrap_or_else(|| {
        panic!("{test}: phones not all registered at cm1 within 10 s: {}\n{}", outcomes(&lab.metrics()), lab.log())
    });
    eprintln!("{test}: {count} phones registered at cm1 (seen {took:?} after the fleet started)");
    (fleet, want)
}

/// cm1 gets `fault` while 100 phones refresh: regedge marks it down within the detection
/// bound and the phones move to cm2 at their next refresh; nobody fails, nothing is
/// de-registered at cm2, and cm2 ends up with every phone. `at_fault` runs right after the
/// fault is set (and may start more phones); what it returns is handed back.
fn backend_fault_fails_over<T>(test: &str, fault: Fault, first_user: u32, at_fault: impl FnOnce(&Lab) -> T) -> (Lab, T) {
    let count = 100;
    let started = Instant::now();
    let lab = Lab::start(test, LabOpts::default());
    let capture = lab.capture_upstream("upstream");
    let (fleet, want) = registered_fleet(&lab, test, count, first_user, 22);
    let users = u64::from(count);

    let faulted_at = Instant::now();
    lab.cm1_path.set(fault);
    let extra = at_fault(&lab);
    let down = wait_for(Duration::from_secs(10), || backend_up(&lab.metrics(), "cm1") == 0)
        .unwrap_or_else(|| panic!("{test}: cm1 not marked down 10 s after {fault:?}\n{}", lab.log()));
    let moved = wait_for(Duration::from_secs(10), || backend_bindings(&lab.metrics(), "cm2") >= users)
        .map(|_| faulted_at.elapsed())
        .unwrap_or_else(|| {
            let m = lab.metrics();
            panic!(
                "{test}: regedge holds {} of {count} phones at cm2 10 s after {fault:?}: {}\n{}",
                backend_bindings(&m, "cm2"),
                outcomes(&m),
                lab.log()
            )
        });
    let at_cm2 = wait_for(Duration::from_secs(3), || aors(&lab.cm2).is_superset(&want));
    let bound = detection_bound();
    eprintln!(
        "{test}: {fault:?}: cm1 marked down {down:?} after the fault (bound {bound:?}); {count} phones bound at cm2 \
         in regedge {moved:?} after it (bound {:?} + {SLACK:?} slack); cm2's ul.dump complete {:?} later",
        bound + REFRESH,
        at_cm2
    );
    assert!(at_cm2.is_some(), "{test}: cm2 does not hold every phone: {:?}", want.difference(&aors(&lab.cm2)));
    assert!(down <= bound + SLACK, "{test}: cm1 marked down {down:?} after the fault; bound {bound:?} (+{SLACK:?})");
    assert!(
        moved <= bound + REFRESH + SLACK,
        "{test}: phones moved {moved:?} after the fault; bound {:?} (+{SLACK:?})",
        bound + REFRESH
    );
    // regedge's count never dips while the phones move (sampled until the fleet is done).
    let mut dips = Vec::new();
    let mut fleet = fleet;
    while !fleet.is_done() {
        let held = bindings(&lab.metrics());
        if held < users {
            dips.push((started.elapsed().as_millis(), held));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let summary = fleet.wait();
    let captured = capture.finish();
    nothing_lost(test, &lab, &summary, &want, &captured);
    assert!(dips.is_empty(), "{test}: regedge_bindings fell below {users} (ms into the test, bindings): {dips:?}");
    eprintln!("{test}: whole test {:?}", started.elapsed());
    (lab, extra)
}

/// What holds once a fault test's fleet is done: every phone succeeded, regedge holds
/// every binding at cm2 and cm2 every contact, and no de-registration went to cm2.
fn nothing_lost(test: &str, lab: &Lab, summary: &FleetSummary, want: &BTreeSet<String>, captured: &Captured) {
    let m = lab.metrics();
    let count = want.len() as u64;
    assert!(
        summary.all_ok(count as u32),
        "{test}: {} of {count} phones failed: {summary:#?}\n{}\n{}",
        summary.failed,
        outcomes(&m),
        lab.log()
    );
    assert_eq!(bindings(&m), count, "{test}: regedge_bindings: {}", outcomes(&m));
    assert_eq!(backend_bindings(&m, "cm2"), count, "{test}");
    assert_eq!(&aors(&lab.cm2), want, "{test}: cm2's ul.dump");
    let deregs = deregistrations(captured);
    let to_cm2: Vec<_> = deregs.iter().filter(|(dst, _)| *dst == lab.backend_ip("cm2").to_string()).collect();
    assert!(to_cm2.is_empty(), "{test}: de-registrations sent to cm2, which should keep its phones: {to_cm2:?}");
    eprintln!(
        "{test}: fleet {} REGISTERs (+{} retransmissions, {} failed) in {:?}; regedge {}; de-registrations upstream: \
         {} (to cm1: {}), to cm2: 0",
        summary.requests_sent,
        summary.retransmissions,
        summary.failed,
        summary.elapsed,
        outcomes(&m),
        deregs.len(),
        deregs.len() - to_cm2.len()
    );
}

/// cm1 blackholed (nothing it sends arrives): probes time out, phones move to cm2.
#[test]
fn blackholed_backend_fails_over_within_the_detection_bound() {
    let test = "blackholed_backend_fails_over_within_the_detection_bound";
    if !require_peers(test, &["sipp", "tshark"]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (lab, ()) = backend_fault_fails_over(test, Fault::Blackhole, 610_000, |_| ());
    let dropped = lab.cm1_path.counts(TO_TARGET).1 + lab.cm1_path.counts(TO_CLIENT).1;
    assert!(dropped > 0, "{test}: the blackhole dropped nothing");
    eprintln!("{test}: the blackhole dropped {dropped} datagrams to and from cm1");
}

/// cm1 answers 2 s late: its probes (500 ms timeout) fail, so it is marked down and the
/// phones move to cm2 as for a dead backend. REGISTERs it gets meanwhile are answered
/// within `transaction_timeout` (4 s), so they are not lost: 20 new phones that start as
/// the delay begins are registered (at cm1, late, or at cm2) and none times out.
#[test]
fn slow_backend_fails_over_and_late_answers_are_not_lost() {
    let test = "slow_backend_fails_over_and_late_answers_are_not_lost";
    if !require_peers(test, &["sipp", "tshark"]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let late_count = 20;
    let late_first = 621_000;
    let (lab, late) = backend_fault_fails_over(test, Fault::Delay(Duration::from_secs(2)), 620_000, |lab| {
        lab.spawn_fleet(&FleetOpts {
            users: late_count,
            first_user: late_first,
            expires: 120,
            refreshes: 8,
            refresh_interval: REFRESH,
            rate: 100,
            local_port: 5062,
            timeout: Duration::from_secs(40),
            ..FleetOpts::default()
        })
    });
    let summary = late.wait();
    let m = lab.metrics();
    assert!(
        summary.all_ok(late_count),
        "{test}: phones that registered while cm1 was slow failed: {summary:#?}\n{}\n{}",
        outcomes(&m),
        lab.log()
    );
    let timeouts = m.value("regedge_backend_timeouts_total", &[]);
    assert_eq!(timeouts, 0, "{test}: answers 2 s late counted as timeouts (transaction_timeout 4 s)");
    let late_aors = user_names(late_first, late_count);
    assert!(aors(&lab.cm2).is_superset(&late_aors), "{test}: the late phones are not all at cm2");
    assert_eq!(bindings(&m), 100 + u64::from(late_count), "{test}");
    let (passed, _) = lab.cm1_path.counts(TO_CLIENT);
    eprintln!(
        "{test}: {late_count} phones started at the fault: {} REGISTERs, {} retransmissions, 0 failed; \
         {passed} answers from cm1 delivered 2 s late; backend timeouts 0",
        summary.requests_sent, summary.retransmissions
    );
}
