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
        let phone_path = opts
            .phone_relay
            .then(|| Impairment::start(&phones, SocketAddr::new(phone_ip.into(), 5070), phone_ip.into(), edge));
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
fn backend_fault_fails_over<T>(
    test: &str,
    fault: Fault,
    first_user: u32,
    others: u64,
    at_fault: impl FnOnce(&Lab) -> T,
) -> (Lab, T) {
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
    nothing_lost(test, &lab, &summary, &want, others, &captured);
    assert!(dips.is_empty(), "{test}: regedge_bindings fell below {users} (ms into the test, bindings): {dips:?}");
    eprintln!("{test}: whole test {:?}", started.elapsed());
    (lab, extra)
}

/// What holds once a fault test's fleet is done: every phone succeeded, regedge holds
/// every binding at cm2 and cm2 every contact, and no de-registration went to cm2.
fn nothing_lost(
    test: &str,
    lab: &Lab,
    summary: &FleetSummary,
    want: &BTreeSet<String>,
    others: u64,
    captured: &Captured,
) {
    let m = lab.metrics();
    let count = want.len() as u64;
    assert!(
        summary.all_ok(count as u32),
        "{test}: {} of {count} phones failed: {summary:#?}\n{}\n{}",
        summary.failed,
        outcomes(&m),
        lab.log()
    );
    assert_eq!(bindings(&m), count + others, "{test}: regedge_bindings: {}", outcomes(&m));
    assert_eq!(backend_bindings(&m, "cm2"), count + others, "{test}");
    assert!(aors(&lab.cm2).is_superset(want), "{test}: cm2's ul.dump lacks {:?}", want.difference(&aors(&lab.cm2)));
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
    let (lab, ()) = backend_fault_fails_over(test, Fault::Blackhole, 610_000, 0, |_| ());
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
    let (lab, late) =
        backend_fault_fails_over(test, Fault::Delay(Duration::from_secs(2)), 620_000, u64::from(late_count), |lab| {
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

/// Flips cm1's path between `bad` (blackholed) and passing, `cycles` times, sampling
/// regedge's view of cm1 every 100 ms; returns the samples (ms since the start, cm1 up).
fn flap(lab: &Lab, bad: Duration, good: Duration, cycles: u32) -> Vec<(u128, u64)> {
    let started = Instant::now();
    let mut samples = Vec::new();
    for _ in 0..cycles {
        for (fault, how_long) in [(Fault::Blackhole, bad), (Fault::None, good)] {
            lab.cm1_path.set(fault);
            let until = Instant::now() + how_long;
            while Instant::now() < until {
                samples.push((started.elapsed().as_millis(), backend_up(&lab.metrics(), "cm1")));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    samples
}

/// How many times the up/down state changes in `samples`.
fn transitions(samples: &[(u128, u64)]) -> usize {
    samples.windows(2).filter(|w| w[0].1 != w[1].1).count()
}

/// cm1 flaps. Outages shorter than a probe interval (one failed probe at most) never mark
/// it down (`down_after = 2`): nobody moves. Then long outages with short recoveries (one
/// good probe at most, `up_after = 2`): it is marked down once and stays down, and the
/// phones move to cm2 once — no ping-pong. When it is steady again the phones fall back.
#[test]
fn flapping_backend_moves_phones_no_more_than_the_thresholds_allow() {
    let test = "flapping_backend_moves_phones_no_more_than_the_thresholds_allow";
    if !require_peers(test, &["sipp", "tshark"]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let count = 100;
    let users = u64::from(count);
    let lab = Lab::start(test, LabOpts::default());
    let capture = lab.capture_upstream("upstream");
    let (fleet, want) = registered_fleet(&lab, test, count, 630_000, 34);
    let forwarded_before = registrations(&lab.metrics(), "forwarded");

    // Short outages: 600 ms bad, 2.4 s good.
    let short = flap(&lab, Duration::from_millis(600), Duration::from_millis(2400), 3);
    let m = lab.metrics();
    assert!(short.iter().all(|(_, up)| *up == 1), "{test}: cm1 marked down by sub-interval outages: {short:?}");
    assert_eq!(m.value("regedge_failovers_total", &[("group", "default")]), 0, "{test}: {}", outcomes(&m));
    assert_eq!(backend_bindings(&m, "cm1"), users, "{test}: phones left cm1 during short outages");
    eprintln!("{test}: 3 outages of 600 ms: cm1 stayed up in {} samples, no failover", short.len());

    // Long outages, short recoveries: 2.6 s bad, 600 ms good.
    let long = flap(&lab, Duration::from_millis(2600), Duration::from_millis(600), 3);
    let m = lab.metrics();
    let flips = transitions(&long);
    assert_eq!(flips, 1, "{test}: cm1 went down once and stayed down, or it ping-ponged: {long:?}");
    assert_eq!(backend_bindings(&m, "cm2"), users, "{test}: phones not all at cm2: {}", outcomes(&m));
    let failovers = m.value("regedge_failovers_total", &[("group", "default")]);
    assert_eq!(failovers, users, "{test}: each phone moves once: {}", outcomes(&m));
    let forwarded_long = registrations(&m, "forwarded") - forwarded_before;
    assert_eq!(forwarded_long, users, "{test}: one full registration per phone (the move): {}", outcomes(&m));
    eprintln!(
        "{test}: 3 outages of 2.6 s with 600 ms recoveries: cm1 changed state {flips} time(s), failovers {failovers}"
    );

    // Steady again: up after `up_after` probes, phones back at their next refresh.
    lab.cm1_path.set(Fault::None);
    let steady_at = Instant::now();
    let back = wait_for(Duration::from_secs(10), || backend_bindings(&lab.metrics(), "cm1") == users)
        .unwrap_or_else(|| panic!("{test}: phones not back at cm1 10 s after it steadied\n{}", lab.log()));
    let fallback_bound = INTERVAL * UP_AFTER + REFRESH;
    eprintln!(
        "{test}: fallback: every phone back at cm1 {back:?} after cm1 steadied (bound {fallback_bound:?} + slack)"
    );
    assert!(back <= fallback_bound + SLACK, "{test}: fallback took {back:?}");
    let mut fleet = fleet;
    while !fleet.is_done() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let summary = fleet.wait();
    let captured = capture.finish();
    let m = lab.metrics();
    assert!(summary.all_ok(count), "{test}: {summary:#?}\n{}\n{}", outcomes(&m), lab.log());
    assert_eq!(bindings(&m), users, "{test}");
    assert_eq!(aors(&lab.cm1), want, "{test}: cm1's ul.dump after the fallback");
    // Leaving cm2 on the way back de-registers there, once per phone; nothing reached cm1.
    let deregs = deregistrations(&captured);
    let to_cm1 = deregs.iter().filter(|(dst, _)| *dst == lab.backend_ip("cm1").to_string()).count();
    assert_eq!(to_cm1, 0, "{test}: de-registrations sent to cm1: {deregs:?}");
    assert!(deregs.len() as u64 <= users, "{test}: {} de-registrations for {users} phones", deregs.len());
    eprintln!(
        "{test}: fleet {} REGISTERs (+{} retransmissions, 0 failed); regedge {}; de-registrations at cm2 on the \
         way back {} (fallback {:?} after steady); whole test {:?}",
        summary.requests_sent,
        summary.retransmissions,
        outcomes(&m),
        deregs.len(),
        steady_at.elapsed(),
        started.elapsed()
    );
}

/// 5 % of the datagrams between the phones and regedge are lost, both ways (a seeded relay
/// in the phones' namespace): sipp retransmits, every phone stays registered, cm1 sees
/// each phone's first REGISTER only (plus retransmissions of it) and no de-registration.
#[test]
fn five_percent_loss_between_phones_and_regedge_loses_no_phone() {
    let test = "five_percent_loss_between_phones_and_regedge_loses_no_phone";
    if !require_peers(test, &["sipp", "tshark"]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let count = 200;
    let users = u64::from(count);
    let lab = Lab::start(test, LabOpts { phone_relay: true, ..LabOpts::default() });
    let path = lab.phone_path.as_ref().expect("phone relay");
    path.set(Fault::Loss(0.05));
    let capture = lab.capture_upstream("upstream");
    let opts = FleetOpts {
        users: count,
        first_user: 640_000,
        expires: 120,
        refreshes: 10,
        refresh_interval: REFRESH,
        rate: 400,
        timeout: Duration::from_secs(50),
        ..FleetOpts::default()
    };
    let summary = lab.spawn_fleet(&opts).wait();
    let captured = capture.finish();
    let m = lab.metrics();
    let (to_edge, lost_to_edge) = path.counts(TO_TARGET);
    let (to_phones, lost_to_phones) = path.counts(TO_CLIENT);
    eprintln!(
        "{test}: {count} phones, 5 % loss: phones → regedge {lost_to_edge} lost / {} sent, regedge → phones \
         {lost_to_phones} lost / {}; sipp {} REGISTERs, {} retransmissions, {} failed in {:?}; regedge {}",
        to_edge + lost_to_edge,
        to_phones + lost_to_phones,
        summary.requests_sent,
        summary.retransmissions,
        summary.failed,
        summary.elapsed,
        outcomes(&m)
    );
    assert!(summary.all_ok(count), "{test}: {summary:#?}\n{}", lab.log());
    assert!(lost_to_edge > 0 && lost_to_phones > 0, "{test}: the relay lost nothing");
    assert!(summary.retransmissions > 0, "{test}: sipp never retransmitted");
    assert_eq!(bindings(&m), users, "{test}: regedge_bindings");
    assert_eq!(aors(&lab.cm1), user_names(640_000, count), "{test}: cm1's ul.dump");
    let cm1_registers = lab.cm1.stat("core:rcv_requests_register");
    assert!(
        cm1_registers >= users && cm1_registers <= users + summary.retransmissions,
        "{test}: cm1 received {cm1_registers} REGISTERs for {users} phones"
    );
    let deregs = deregistrations(&captured);
    assert!(deregs.is_empty(), "{test}: de-registrations went upstream: {deregs:?}");
    eprintln!("{test}: cm1 received {cm1_registers} REGISTERs; whole test {:?}", started.elapsed());
}

/// regedge is SIGKILLed while 300 phones refresh every second (userspace only: no fast
/// path answers meanwhile, e2e_restart covers that) and started again: it restores its
/// bindings from the snapshot, the phones' retransmissions get answered, nobody is
/// registered again upstream and nothing is de-registered.
#[test]
fn regedge_sigkilled_under_load_restarts_from_its_snapshot() {
    let test = "regedge_sigkilled_under_load_restarts_from_its_snapshot";
    if !require_peers(test, &["sipp", "tshark"]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let count = 300;
    let users = u64::from(count);
    let mut lab = Lab::start(test, LabOpts { state_dir: true, ..LabOpts::default() });
    let capture = lab.capture_upstream("upstream");
    let (fleet, want) = registered_fleet(&lab, test, count, 650_000, 20);
    // Let a snapshot with every binding be written (every second while bindings change).
    std::thread::sleep(Duration::from_millis(2500));
    let before = lab.metrics();
    assert_eq!(bindings(&before), users, "{test}");
    let cm1_before = lab.cm1.stat("core:rcv_requests_register");

    let killed_at = Instant::now();
    let status = lab.regedge.as_mut().expect("regedge").kill();
    assert!(status.is_some(), "{test}: regedge did not die on SIGKILL");
    std::thread::sleep(Duration::from_secs(1));
    let ready = lab.start_regedge(test);
    let restored = bindings(&lab.metrics());
    let down_for = killed_at.elapsed();
    assert_eq!(restored, users, "{test}: bindings restored from the snapshot\n{}", lab.log());
    let summary = fleet.wait();
    let captured = capture.finish();
    let m = lab.metrics();
    let cm1_after = lab.cm1.stat("core:rcv_requests_register");
    eprintln!(
        "{test}: regedge down {down_for:?} (ready {ready:?} after the restart began), {restored} bindings restored; \
         sipp {} REGISTERs, {} retransmissions, {} failed in {:?}; after the restart regedge {}; cm1 received \
         {} REGISTERs after the kill; whole test {:?}",
        summary.requests_sent,
        summary.retransmissions,
        summary.failed,
        summary.elapsed,
        outcomes(&m),
        cm1_after - cm1_before,
        started.elapsed()
    );
    assert!(summary.all_ok(count), "{test}: phones failed across the restart: {summary:#?}\n{}", lab.log());
    assert!(summary.retransmissions > 0, "{test}: no retransmission: was regedge really down?");
    assert_eq!(registrations(&m, "forwarded"), 0, "{test}: phones registered again upstream: {}", outcomes(&m));
    assert_eq!(cm1_after, cm1_before, "{test}: REGISTERs reached cm1 after the restart");
    assert_eq!(bindings(&m), users, "{test}");
    assert_eq!(aors(&lab.cm1), want, "{test}: cm1's ul.dump");
    let deregs = deregistrations(&captured);
    assert!(deregs.is_empty(), "{test}: de-registrations went upstream: {deregs:?}");
}
