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
    /// cm1's `max_register_rate` (0: 2000).
    cm1_rate: u32,
    /// Sections added to regedge's config (e.g. `[limits]`, `[sccp]`); `{EDGE_IP}` stands
    /// for regedge's phone-side address.
    extra: String,
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
                 {}\n\
                 [[backends]]\nname = \"cm1\"\naddress = \"{cm1_front}\"\nmax_register_rate = {}\n\n\
                 [[backends]]\nname = \"cm2\"\naddress = \"{}\"\nmax_register_rate = 2000\n\n\
                 [[groups]]\nname = \"default\"\nbackends = [\"cm1\", \"cm2\"]\n",
                INTERVAL.as_millis(),
                PROBE_TIMEOUT.as_millis(),
                opts.extra.replace("{EDGE_IP}", &edge_ip.to_string()),
                if opts.cm1_rate == 0 { 2000 } else { opts.cm1_rate },
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

/// Sends `total` REGISTERs of distinct phones (`flood<first>`...) from `socket` to `edge`
/// at `flood_rate` per second; the answers, and (pending registrations, VmRSS) sampled
/// every 100 ms until 2 s after the flood.
fn flood(
    lab: &Lab,
    socket: &std::net::UdpSocket,
    edge: SocketAddr,
    first: u64,
    total: u64,
    flood_rate: u64,
    pid: u32,
) -> (FloodAnswers, Vec<(u64, u64)>) {
    let phone_ip = lab.phone_ip;
    let port = socket.local_addr().unwrap().port();
    let seconds = total / flood_rate;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut answers = FloodAnswers::default();
            let mut buf = vec![0u8; 4096];
            let mut quiet_since = Instant::now();
            while quiet_since.elapsed() < Duration::from_secs(6) {
                let Ok(n) = socket.recv(&mut buf) else { continue };
                quiet_since = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.starts_with("SIP/2.0 200 ") {
                    answers.ok += 1;
                } else if text.starts_with("SIP/2.0 503 ") {
                    if !text.contains("\r\nRetry-After: ") {
                        answers.without_retry_after += 1;
                    }
                    if text.starts_with("SIP/2.0 503 Registration Rate Limited") {
                        answers.rate_limited += 1;
                    } else if text.starts_with("SIP/2.0 503 Too Many Pending Registrations") {
                        answers.pending_full += 1;
                    } else {
                        answers.other_503 += 1;
                    }
                } else {
                    answers.other += 1;
                }
            }
            answers
        });
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            let until = Instant::now() + Duration::from_secs(seconds + 2);
            while Instant::now() < until {
                let m = lab.metrics();
                samples.push((m.value("regedge_pending_registrations", &[]), rss_kib(pid)));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        let flood_started = Instant::now();
        for i in first..first + total {
            let request = format!(
                "REGISTER sip:{ip} SIP/2.0\r\nVia: SIP/2.0/UDP {phone_ip}:{port};branch=z9hG4bK-flood{i};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:flood{i}@{ip}>;tag=f{i}\r\nTo: <sip:flood{i}@{ip}>\r\n\
                 Call-ID: flood-{i}@{phone_ip}\r\nCSeq: 1 REGISTER\r\nContact: <sip:flood{i}@{phone_ip}:{port}>\r\n\
                 Expires: 120\r\nContent-Length: 0\r\n\r\n",
                ip = edge.ip()
            );
            let _ = socket.send_to(request.as_bytes(), edge);
            // Paced: request i leaves at i / flood_rate seconds.
            let due = Duration::from_micros((i - first) * 1_000_000 / flood_rate);
            if let Some(wait) = due.checked_sub(flood_started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        (reader.join().expect("reader"), sampler.join().expect("sampler"))
    })
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// What came back for a flood of REGISTERs.
#[derive(Debug, Default)]
struct FloodAnswers {
    ok: u64,
    rate_limited: u64,
    pending_full: u64,
    other_503: u64,
    without_retry_after: u64,
    other: u64,
}

/// REGISTERs at 10x cm1's `max_register_rate` (2,000/s against 200/s, for 2 s), cm1
/// answering 300 ms late, `max_pending_registrations = 40`: regedge forwards what the rate
/// and the cap allow and answers the rest 503 with Retry-After; pending transactions stay
/// at the cap, memory stays bounded, regedge stays up and a phone registers normally after.
#[test]
fn register_flood_at_ten_times_the_backend_limit_is_refused_with_retry_after() {
    let test = "register_flood_at_ten_times_the_backend_limit_is_refused_with_retry_after";
    if !require_peers(test, &["sipp"]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let (rate, flood_rate, seconds, cap) = (200u64, 2000u64, 2u64, 40u64);
    let extra = format!("[limits]\nmax_pending_registrations = {cap}\n");
    let mut lab = Lab::start(test, LabOpts { cm1_rate: rate as u32, extra, ..LabOpts::default() });
    let pid = lab.regedge.as_ref().expect("regedge").pid();
    let rss_before = rss_kib(pid);
    let edge = SocketAddr::new(Ipv4Addr::from(u32::from(lab.phone_ip) - 1).into(), SIP_PORT);
    let phone_ip = lab.phone_ip;
    let socket = lab.phones.run(|| std::net::UdpSocket::bind(SocketAddr::new(phone_ip.into(), 0))).expect("bind");
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let total = flood_rate * seconds;
    let mut max_rss = 0;
    // Phase 1: cm1 answers at once; the rate limit refuses what is beyond 200/s.
    // Phase 2: cm1 answers 300 ms late; the pending cap (40) bites before the rate limit.
    for (phase, delay) in [(1u64, Duration::ZERO), (2, Duration::from_millis(300))] {
        lab.cm1_path.set(if delay.is_zero() { Fault::None } else { Fault::Delay(delay) });
        let before = lab.metrics();
        let refused_before = before.value("regedge_limit_refusals_total", &[("limit", "pending_registrations")]);
        let (answers, samples) = flood(&lab, &socket, edge, phase * 1_000_000, total, flood_rate, pid);
        let regedge = lab.regedge.as_mut().expect("regedge");
        assert!(regedge.is_running(), "{test}: regedge died under the flood\n{}", regedge.log());
        let m = lab.metrics();
        let refused = m.value("regedge_limit_refusals_total", &[("limit", "pending_registrations")]) - refused_before;
        let max_pending = samples.iter().map(|(p, _)| *p).max().unwrap_or(0);
        max_rss = max_rss.max(samples.iter().map(|(_, r)| *r).max().unwrap_or(0));
        let answered = answers.ok + answers.rate_limited + answers.pending_full + answers.other_503 + answers.other;
        eprintln!(
            "{test}: phase {phase} (cm1 answers {delay:?} late): {total} REGISTERs at {flood_rate}/s for {seconds} s \
             against max_register_rate {rate}/s: {answers:?} ({answered} answered); pending refusals {refused}, \
             pending at most {max_pending} (cap {cap}); VmRSS {rss_before} KiB before, at most {max_rss} KiB"
        );
        assert_eq!(answers.without_retry_after, 0, "{test}: 503 without Retry-After: {answers:?}");
        assert_eq!(answers.other + answers.other_503, 0, "{test}: answers other than 200 and 503: {answers:?}");
        assert!(answered * 100 >= total * 99, "{test}: {answered} of {total} REGISTERs answered");
        assert!(
            answers.rate_limited + answers.pending_full >= total * 3 / 4,
            "{test}: at 10x the limit, most REGISTERs are refused: {answers:?}"
        );
        // The token bucket holds one second of tokens, plus the flood's length, plus 250 ms slack.
        let most = rate * (seconds + 1) + rate / 4;
        assert!(answers.ok <= most, "{test}: more forwarded than max_register_rate allows (most {most}): {answers:?}");
        assert!(max_pending <= cap, "{test}: {max_pending} pending REGISTERs, cap {cap}");
        assert_eq!(refused, answers.pending_full, "{test}: pending refusals counted");
        if phase == 1 {
            assert!(answers.rate_limited >= total / 2, "{test}: the rate limit did not bite: {answers:?}");
        } else {
            assert!(answers.pending_full >= total / 2, "{test}: the pending cap did not bite: {answers:?}");
        }
    }
    assert!(max_rss < rss_before + 32 * 1024, "{test}: VmRSS grew from {rss_before} to {max_rss} KiB");
    // Afterwards a fleet registers and refreshes as usual.
    lab.cm1_path.set(Fault::None);
    std::thread::sleep(Duration::from_secs(1));
    let opts = FleetOpts {
        users: 20,
        first_user: 660_000,
        refreshes: 2,
        refresh_interval: REFRESH,
        rate: 20,
        timeout: Duration::from_secs(20),
        ..FleetOpts::default()
    };
    let summary = lab.spawn_fleet(&opts).wait();
    assert!(summary.all_ok(20), "{test}: phones after the flood: {summary:#?}\n{}", lab.log());
    eprintln!("{test}: 20 phones registered normally after the flood; whole test {:?}", started.elapsed());
}

/// An SCCP connection flood: 400 connections against `max_sccp_sessions = 100`. The first
/// 100 are held (slow senders: a byte of a Register every 200 ms), the rest are accepted
/// and closed at once and counted; the slow senders are closed at `register_timeout`
/// (2 s), which frees their slots for new connections; memory stays bounded.
#[test]
fn sccp_connection_flood_and_slow_senders_stay_bounded() {
    let test = "sccp_connection_flood_and_slow_senders_stay_bounded";
    if !require_peers(test, &["sipp"]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let (cap, flood) = (100usize, 400usize);
    let extra = format!(
        "[limits]\nmax_sccp_sessions = {cap}\n\n[sccp]\nlisten = [\"{{EDGE_IP}}:2000\"]\nregister_timeout = \"2s\"\n"
    );
    let lab = Lab::start(test, LabOpts { extra, ..LabOpts::default() });
    let pid = lab.regedge.as_ref().expect("regedge").pid();
    let rss_before = rss_kib(pid);
    let edge = SocketAddr::new(Ipv4Addr::from(u32::from(lab.phone_ip) - 1).into(), 2000);
    let sessions = |m: &MetricsText| -> u64 {
        ["awaiting_register", "standby", "registering", "registered"]
            .iter()
            .map(|s| m.value("regedge_sccp_sessions", &[("state", s)]))
            .sum()
    };
    let mut streams: Vec<std::net::TcpStream> = lab.phones.run(|| {
        (0..flood)
            .map(|_| {
                let s = std::net::TcpStream::connect_timeout(&edge, Duration::from_secs(2)).expect("connect");
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect()
    });
    let connected_at = Instant::now();
    // Which connections regedge closed at once: a read sees the end (or a reset).
    std::thread::sleep(Duration::from_millis(500));
    let is_closed = |s: &mut std::net::TcpStream| {
        use std::io::Read;
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    };
    let closed_at_once = streams.iter_mut().filter_map(|s| is_closed(s).then_some(())).count();
    let m = lab.metrics();
    let held = sessions(&m);
    let refused = m.value("regedge_limit_refusals_total", &[("limit", "sccp_sessions")]);
    eprintln!(
        "{test}: {flood} connections against max_sccp_sessions {cap}: {held} sessions held, {closed_at_once} closed \
         at once, {refused} refusals counted"
    );
    assert_eq!(held, cap as u64, "{test}: sessions held\n{}", lab.log());
    assert_eq!(closed_at_once, flood - cap, "{test}: connections closed at once");
    assert_eq!(refused, (flood - cap) as u64, "{test}: regedge_limit_refusals_total{{limit=\"sccp_sessions\"}}");
    // The held ones send a Register one byte every 200 ms: never done before register_timeout.
    let mut open: Vec<std::net::TcpStream> =
        streams.into_iter().filter_map(|mut s| (!is_closed(&mut s)).then_some(s)).collect();
    let mut max_rss = 0;
    let mut max_held = 0;
    let register_header = [0x40u8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    for byte in register_header.iter().cycle().take(12) {
        use std::io::Write;
        for s in &mut open {
            let _ = s.write_all(&[*byte]);
        }
        let m = lab.metrics();
        max_held = max_held.max(sessions(&m));
        max_rss = max_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(200));
        if connected_at.elapsed() > Duration::from_millis(3500) {
            break;
        }
    }
    let all_closed = wait_for(Duration::from_secs(3), || sessions(&lab.metrics()) == 0);
    let m = lab.metrics();
    let timed_out = m.value("regedge_sccp_sessions_closed_total", &[("reason", "register_timeout")]);
    eprintln!(
        "{test}: slow senders: at most {max_held} sessions held; closed for register_timeout: {timed_out}, all gone \
         {all_closed:?} later; VmRSS {rss_before} KiB before, at most {max_rss} KiB"
    );
    assert!(max_held <= cap as u64, "{test}: {max_held} sessions held, cap {cap}");
    assert!(all_closed.is_some(), "{test}: slow senders still held {:?} after connecting", connected_at.elapsed());
    assert_eq!(timed_out, cap as u64, "{test}: slow senders closed at register_timeout");
    assert!(max_rss < rss_before + 32 * 1024, "{test}: VmRSS grew from {rss_before} to {max_rss} KiB");
    // The slots are free again.
    let fresh =
        lab.phones.run(|| std::net::TcpStream::connect_timeout(&edge, Duration::from_secs(2))).expect("connect");
    let again = wait_for(Duration::from_secs(2), || sessions(&lab.metrics()) == 1);
    assert!(again.is_some(), "{test}: a new connection is not held once the flood is gone");
    drop(fresh);
    drop(open);
    let regedge_alive =
        lab.regedge.as_ref().map(|r| r.pid()).is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
    assert!(regedge_alive, "{test}: regedge died");
    eprintln!("{test}: a new connection is held again; whole test {:?}", started.elapsed());
}

/// `[limits] max_sip_tcp_connections = 5`: of 8 TCP connections to the SIP port, 5 are
/// held and 3 accepted and closed at once (counted); closing held ones frees their slots.
#[test]
fn sip_tcp_connections_beyond_the_cap_are_closed_at_once() {
    let test = "sip_tcp_connections_beyond_the_cap_are_closed_at_once";
    if !require_peers(test, &[]) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let extra = "[limits]\nmax_sip_tcp_connections = 5\n".to_owned();
    let lab = Lab::start(test, LabOpts { extra, ..LabOpts::default() });
    let edge = SocketAddr::new(Ipv4Addr::from(u32::from(lab.phone_ip) - 1).into(), SIP_PORT);
    let connect = || {
        lab.phones.run(|| {
            let s = std::net::TcpStream::connect_timeout(&edge, Duration::from_secs(2)).expect("connect");
            s.set_nonblocking(true).unwrap();
            s
        })
    };
    let is_closed = |s: &mut std::net::TcpStream| {
        use std::io::Read;
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock),
        }
    };
    let mut streams: Vec<_> = (0..8).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let closed: Vec<bool> = streams.iter_mut().map(is_closed).collect();
    let m = lab.metrics();
    let refused = m.value("regedge_limit_refusals_total", &[("limit", "sip_tcp_connections")]);
    let open = m.value("regedge_sip_tcp_connections", &[]);
    eprintln!("{test}: 8 connections, cap 5: closed at once {closed:?}; open {open}, refusals {refused}");
    assert_eq!(closed.iter().filter(|c| **c).count(), 3, "{test}: {closed:?}");
    assert_eq!((open, refused), (5, 3), "{test}: open connections and refusals\n{}", lab.log());
    // Two held ones close: two new ones are held.
    let mut held: Vec<_> = streams.into_iter().zip(&closed).filter(|(_, c)| !**c).map(|(s, _)| s).collect();
    held.truncate(3);
    let freed = wait_for(Duration::from_secs(2), || lab.metrics().value("regedge_sip_tcp_connections", &[]) == 3);
    assert!(freed.is_some(), "{test}: closed connections still counted");
    let mut more: Vec<_> = (0..2).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(more.iter_mut().all(|s| !is_closed(s)), "{test}: a freed slot was not reused");
    let m = lab.metrics();
    assert_eq!(m.value("regedge_sip_tcp_connections", &[]), 5, "{test}");
    assert_eq!(m.value("regedge_limit_refusals_total", &[("limit", "sip_tcp_connections")]), 3, "{test}");
}
