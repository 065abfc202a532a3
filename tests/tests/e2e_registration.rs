//! End-to-end: regedge as a registration edge between a fleet of phones and two real
//! Kamailio registrars. Three namespaces: phones —veth— proxy (regedge) —veth— backends
//! (Kamailio cm1 and cm2 on two addresses of one subnet). regedge listens on its
//! phone-side address only and forwards to the backends from that socket, so the backends'
//! namespace routes the phone-side subnet back through regedge's backend-side address.
//!
//! Checked from both sides: what the phones saw (sipp's counts, baresip's log), what the
//! registrars hold (`ul.dump`, Kamailio's own counters) and what regedge says (/metrics).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use regedge_tests::{
    baresip::Baresip,
    kamailio::{Binding, Kamailio, KamailioOpts},
    netns::NetNs,
    privilege::{require_peers, require_program},
    process::{MetricsText, Regedge, TempDir, scrape},
    sipp::{FleetOpts, FleetSummary, Sipp, Transport, user_names},
    tshark::Capture,
};

const METRICS: &str = "127.0.0.1:9100";
const SIP_PORT: u16 = 5060;

/// Picks the subnets of one test: phones 10.212.<n>.0/24, backends 10.213.<n>.0/24.
static SUBNET: AtomicU32 = AtomicU32::new(0);

/// The three namespaces, both registrars and regedge. Drop order: regedge, the
/// registrars, the scratch dir, then the namespaces.
struct Lab {
    regedge: Regedge,
    cm1: Kamailio,
    cm2: Kamailio,
    dir: TempDir,
    phones: NetNs,
    proxy: NetNs,
    _backends: NetNs,
    /// The phones' address.
    phone_ip: Ipv4Addr,
    /// regedge's SIP address (phone side), UDP and TCP.
    edge: SocketAddr,
}

/// Where regedge answers UDP refreshes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answers {
    /// In its event loops (`[fastpath] mode = "off"`).
    Userspace,
    /// In the XDP program, attached in generic mode to regedge's phone-side veth.
    Kernel,
}

impl Lab {
    fn start(test: &str) -> Self {
        Self::start_with(test, Answers::Userspace)
    }

    fn start_with(test: &str, answers: Answers) -> Self {
        let n = (SUBNET.fetch_add(1, Ordering::Relaxed) % 250) as u8;
        let phone_ip = Ipv4Addr::new(10, 212, n, 2);
        let edge_ip = Ipv4Addr::new(10, 212, n, 1);
        let edge_backend_side = Ipv4Addr::new(10, 213, n, 1);
        let cm1_ip = Ipv4Addr::new(10, 213, n, 11);
        let cm2_ip = Ipv4Addr::new(10, 213, n, 12);

        let phones = NetNs::new("phones");
        let proxy = NetNs::new("edge");
        let backends = NetNs::new("cms");
        phones.link("rgph0", &phone_ip.to_string(), &proxy, "rgpp0", &edge_ip.to_string(), 24);
        proxy.link("rgpb0", &edge_backend_side.to_string(), &backends, "rgbk0", &cm1_ip.to_string(), 24);
        backends.ip(&["addr", "add", &format!("{cm2_ip}/24"), "dev", "rgbk0"]);
        // regedge forwards from its phone-side socket: answers come back through it.
        backends.route(&format!("10.212.{n}.0/24"), &edge_backend_side.to_string());

        let opts = KamailioOpts { children: 2, ..KamailioOpts::default() };
        let cm1 = Kamailio::start(&backends, cm1_ip, opts.clone());
        let cm2 = Kamailio::start(&backends, cm2_ip, opts);

        let dir = TempDir::new(test);
        let edge = SocketAddr::new(edge_ip.into(), SIP_PORT);
        // Nothing is pinned: the program goes with the process (restarts are e2e_restart's).
        let fastpath = match answers {
            Answers::Userspace => "[fastpath]\nmode = \"off\"\n\n".to_owned(),
            Answers::Kernel => {
                "[fastpath]\ninterfaces = [\"rgpp0\"]\nmode = \"generic\"\npin_path = \"\"\n\n".to_owned()
            }
        };
        let config = dir.write(
            "regedge.toml",
            &format!(
                "[node]\nname = \"e2e\"\nworkers = 2\nstate_dir = \"\"\n\n[sip]\nlisten = [\"{edge}\"]\n\n{fastpath}\
                 [registration]\nphone_expires = 30\nbackend_expires = 600\nexpires_jitter = 0.1\n\n\
                 [health]\ninterval = \"1s\"\ntimeout = \"500ms\"\ndown_after = 2\nup_after = 2\n\n\
                 [metrics]\nlisten = \"{METRICS}\"\n\n[routing]\ndefault_group = \"default\"\n\n\
                 [[backends]]\nname = \"cm1\"\naddress = \"{}\"\nmax_register_rate = 2000\n\n\
                 [[backends]]\nname = \"cm2\"\naddress = \"{}\"\nmax_register_rate = 2000\n\n\
                 [[groups]]\nname = \"default\"\nbackends = [\"cm1\", \"cm2\"]\n",
                cm1.sip_addr(),
                cm2.sip_addr()
            ),
        );
        let mut regedge = Regedge::start(Some(&proxy), &config, dir.0.join("regedge.log"));
        if let Err(err) = regedge.wait_ready(METRICS.parse().unwrap(), Some(&proxy), Duration::from_secs(20)) {
            panic!("{test}: {err}");
        }
        Self { regedge, cm1, cm2, dir, phones, proxy, _backends: backends, phone_ip, edge }
    }

    fn metrics(&self) -> Metrics {
        Metrics(MetricsText(scrape(METRICS.parse().unwrap(), Some(&self.proxy)).expect("scrape /metrics")))
    }

    /// The end of regedge's log, for assertion messages.
    fn regedge_log(&self) -> String {
        tail(&self.regedge.log(), 4000)
    }

    fn fleet(&self, opts: &FleetOpts) -> FleetSummary {
        Sipp::register_fleet(&self.phones, IpAddr::V4(self.phone_ip), self.edge, opts)
    }

    fn spawn_fleet(&self, opts: &FleetOpts) -> Sipp {
        Sipp::spawn_fleet(&self.phones, IpAddr::V4(self.phone_ip), self.edge, opts)
    }

    /// The Path a backend stores for a phone registered through regedge names regedge's
    /// phone-side address (the one regedge forwards from), loose-routing, outbound.
    fn path_names_regedge(&self, binding: &Binding) -> bool {
        binding.path.as_deref().is_some_and(|p| {
            p.starts_with("<sip:") && p.contains(&format!("@{};lr;ob>", self.edge)) && !p.contains(',')
        })
    }
}

/// Root and the programs the test runs (SKIPPED without them, a failure under CI).
/// A /metrics text.
struct Metrics(MetricsText);

impl Metrics {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.0.get(name, labels)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0.value(name, labels)
    }

    /// `regedge_registrations_total{protocol="sip",outcome=...}`.
    fn registrations(&self, outcome: &str) -> u64 {
        self.value("regedge_registrations_total", &[("protocol", "sip"), ("outcome", outcome)])
    }

    fn bindings(&self) -> u64 {
        self.value("regedge_bindings", &[("protocol", "sip")])
    }

    fn backend_up(&self, backend: &str) -> u64 {
        self.value("regedge_backend_up", &[("backend", backend)])
    }

    fn backend_bindings(&self, backend: &str) -> u64 {
        self.value("regedge_backend_bindings", &[("backend", backend)])
    }

    fn failovers(&self) -> u64 {
        self.value("regedge_failovers_total", &[("group", "default")])
    }

    /// Every registration outcome, for messages.
    fn outcomes(&self) -> String {
        ["forwarded", "absorbed", "rejected", "challenged", "rate_limited", "backup_probe"]
            .iter()
            .map(|o| format!("{o}={}", self.registrations(o)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn tail(text: &str, chars: usize) -> String {
    let skip = text.chars().count().saturating_sub(chars);
    text.chars().skip(skip).collect()
}

/// The AORs registered at `kamailio` (`ul.dump`).
fn aors(kamailio: &Kamailio) -> BTreeSet<String> {
    kamailio.registered_aors().into_iter().collect()
}

/// Polls `kamailio` until it holds every AOR of `want`; how long that took, or the AORs
/// still missing when `timeout` passed.
fn wait_all_registered(kamailio: &Kamailio, want: &BTreeSet<String>, timeout: Duration) -> Result<Duration, usize> {
    let started = Instant::now();
    loop {
        let missing = want.difference(&aors(kamailio)).count();
        if missing == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(missing);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A fleet registers through regedge and refreshes three times: the backend sees only
/// the first REGISTER of each phone (with regedge's Path); regedge answers the refreshes,
/// in its event loops or (`Answers::Kernel`, UDP) in the XDP program, where tshark on the
/// phones' side must decode every answer.
fn registrations_are_throttled(
    test: &str,
    transport: Transport,
    count: u32,
    first_user: u32,
    rate: u32,
    answers: Answers,
) {
    if !require_peers(test, &["sipp"]) || (answers == Answers::Kernel && !require_program(test, "tshark")) {
        return;
    }
    let started = Instant::now();
    let lab = Lab::start_with(test, answers);
    let capture = (answers == Answers::Kernel).then(|| {
        let file = lab.dir.0.join("phones.pcapng");
        Capture::start(&lab.phones, "rgph0", SIP_PORT, file, IpAddr::V4(lab.phone_ip), lab.edge.ip())
    });
    if transport == Transport::Tcp {
        // Say plainly why the fleet cannot run rather than leave it to sipp's errors.
        let edge = lab.edge;
        let connected = lab.phones.run(|| TcpStream::connect_timeout(&edge, Duration::from_secs(2)));
        if let Err(err) = connected {
            panic!("{test}: regedge does not accept TCP on {edge} ([sip] listen): {err}\n{}", lab.regedge_log());
        }
    }
    let opts = FleetOpts {
        users: count,
        first_user,
        transport,
        expires: 120,
        refreshes: 3,
        refresh_interval: Duration::from_secs(2),
        rate,
        timeout: Duration::from_secs(60),
        ..FleetOpts::default()
    };
    let summary = lab.fleet(&opts);
    let metrics = lab.metrics();
    assert!(
        summary.all_ok(count),
        "{test}: sipp fleet of {count} through regedge did not succeed: {summary:#?}\nregedge: {}\n{}",
        metrics.outcomes(),
        lab.regedge_log()
    );
    let users = u64::from(count);
    assert_eq!(summary.requests_sent, 4 * users, "a REGISTER and three refreshes per phone: {summary:#?}");

    // The registrar's view: every phone once, reached through regedge.
    let contacts = lab.cm1.contacts();
    let seen: BTreeSet<String> = contacts.iter().map(|b| b.aor.clone()).collect();
    assert_eq!(seen, user_names(first_user, count), "{test}: AORs registered at cm1");
    assert_eq!(contacts.len(), count as usize, "{test}: one contact per phone at cm1");
    for b in &contacts {
        assert!(lab.path_names_regedge(b), "{test}: binding without regedge's Path (edge {}): {b:?}", lab.edge);
        assert!(b.expires > 300 && b.expires <= 600, "{test}: cm1 did not get backend_expires: {b:?}");
        assert_eq!(
            b.contact,
            format!("sip:{}@{}:5060;transport={}", b.aor, lab.phone_ip, transport.as_str().to_uppercase()),
            "{test}"
        );
    }
    assert_eq!(aors(&lab.cm2), BTreeSet::new(), "{test}: cm2 got registrations while cm1 was up");
    let cm1_registers = lab.cm1.stat("core:rcv_requests_register");
    let cm2_registers = lab.cm2.stat("core:rcv_requests_register");
    let phone_registers = summary.requests_sent + summary.retransmissions;
    assert!(
        cm1_registers >= users && cm1_registers * 10 <= users * 11,
        "{test}: cm1 received {cm1_registers} REGISTERs for {users} phones that sent {phone_registers}"
    );
    assert_eq!(cm2_registers, 0, "{test}: REGISTERs at cm2");
    assert_eq!(lab.cm1.stat("registrar:rejected_regs"), 0, "{test}");

    // regedge's view: refreshes answered in userspace ("absorbed") or in the kernel.
    let forwarded = metrics.registrations("forwarded");
    let in_kernel = metrics.get("regedge_fastpath_replies_total", &[("kind", "register")]).unwrap_or(0);
    let absorbed = metrics.registrations("absorbed") + in_kernel;
    let outcomes = format!("{} kernel={in_kernel}", metrics.outcomes());
    assert!(forwarded >= users && forwarded * 10 <= users * 11, "{test}: {outcomes}");
    assert!(absorbed >= 3 * users && absorbed <= 3 * users + summary.retransmissions, "{test}: {outcomes}");
    match answers {
        Answers::Kernel => {
            assert!(in_kernel + summary.retransmissions >= 3 * users, "{test}: refreshes answered in XDP: {outcomes}");
            assert_eq!(metrics.value("regedge_fastpath_bindings", &[]), users, "{test}: kernel mirror entries");
        }
        Answers::Userspace => assert_eq!(in_kernel, 0, "{test}: {outcomes}"),
    }
    if let Some(capture) = capture {
        let captured = capture.finish();
        let malformed = captured.malformed();
        assert!(malformed.trim().is_empty(), "{test}: tshark reports malformed packets:\n{malformed}");
        let ok = captured.read("sip.Status-Line == \"SIP/2.0 200 OK\"", &["sip.Call-ID"]).lines().count() as u64;
        assert!(ok >= 4 * users, "{test}: tshark decoded {ok} 200 OK for {users} phones");
    }
    assert!(
        forwarded + absorbed >= summary.requests_sent && forwarded + absorbed <= phone_registers,
        "{test}: every REGISTER the phones sent is forwarded or absorbed: {outcomes}, phones sent {phone_registers}"
    );
    for outcome in ["rejected", "rate_limited", "challenged"] {
        assert_eq!(metrics.registrations(outcome), 0, "{test}: {outcomes}");
    }
    assert_eq!(metrics.bindings(), users, "{test}: regedge_bindings");
    assert_eq!(metrics.backend_bindings("cm1"), users, "{test}");
    assert_eq!(metrics.backend_bindings("cm2"), 0, "{test}");
    assert_eq!(metrics.backend_up("cm1"), 1, "{test}");
    assert_eq!(metrics.failovers(), 0, "{test}");
    eprintln!(
        "{test}: {count} phones over {}: phones sent {} REGISTERs (+{} retransmissions) in {:?}; \
         cm1 received {cm1_registers}, cm2 {cm2_registers}; regedge {outcomes}, bindings {}; \
         cm1 holds {} contacts (whole test {:?})",
        transport.as_str(),
        summary.requests_sent,
        summary.retransmissions,
        summary.elapsed,
        metrics.bindings(),
        contacts.len(),
        started.elapsed()
    );
}

#[test]
fn registrations_are_throttled_over_udp() {
    let test = "registrations_are_throttled_over_udp";
    registrations_are_throttled(test, Transport::Udp, 1000, 100_000, 500, Answers::Userspace);
}

/// The same over UDP with XDP attached: the refreshes are answered in the kernel.
#[test]
fn udp_refreshes_are_answered_in_the_kernel() {
    let test = "udp_refreshes_are_answered_in_the_kernel";
    registrations_are_throttled(test, Transport::Udp, 1000, 300_000, 500, Answers::Kernel);
}

/// Needs regedge's TCP listener on the `[sip] listen` addresses (the TCP transport).
#[test]
fn registrations_over_tcp() {
    registrations_are_throttled("registrations_over_tcp", Transport::Tcp, 1000, 200_000, 500, Answers::Userspace);
}

/// cm1 crashes while phones keep refreshing every second: each phone's next REGISTER
/// after regedge marks cm1 down goes to cm2 as a full registration; when cm1 is back and
/// up, the next one goes back to cm1. sipp retransmits over UDP and regedge answers
/// refreshes itself until it marks cm1 down, so no phone sees a failure.
#[test]
fn phones_fail_over_and_fall_back() {
    let test = "phones_fail_over_and_fall_back";
    if !require_peers(test, &["sipp"]) {
        return;
    }
    let started = Instant::now();
    let count = 300;
    let first_user = 300_000;
    let want = user_names(first_user, count);
    let mut lab = Lab::start(test);
    let opts = FleetOpts {
        users: count,
        first_user,
        expires: 120,
        refreshes: 25,
        refresh_interval: Duration::from_secs(1),
        rate: 300,
        timeout: Duration::from_secs(60),
        ..FleetOpts::default()
    };
    let fleet = lab.spawn_fleet(&opts);

    let took = wait_all_registered(&lab.cm1, &want, Duration::from_secs(10)).unwrap_or_else(|missing| {
        panic!(
            "{test}: {missing} phones not registered at cm1 after 10 s; {}\n{}",
            lab.metrics().outcomes(),
            lab.regedge_log()
        )
    });
    eprintln!("{test}: all {count} phones registered at cm1 {took:?} after the first check");

    // A crash of cm1's whole process group.
    let killed_at = Instant::now();
    let cm1_pid = lab.cm1.pid();
    lab.cm1.kill();
    assert!(!lab.cm1.is_running(), "{test}: cm1 (pid {cm1_pid}) survived kill()");
    let failover = wait_all_registered(&lab.cm2, &want, Duration::from_secs(10)).unwrap_or_else(|missing| {
        panic!(
            "{test}: {missing} phones not registered at cm2 10 s after cm1 was killed; {}, cm1 up {}\n{}",
            lab.metrics().outcomes(),
            lab.metrics().backend_up("cm1"),
            lab.regedge_log()
        )
    });
    let failover_total = killed_at.elapsed();
    let metrics = lab.metrics();
    assert_eq!(metrics.backend_up("cm1"), 0, "{test}: regedge still reports cm1 up");
    assert_eq!(metrics.backend_up("cm2"), 1, "{test}");
    assert_eq!(metrics.backend_bindings("cm2"), u64::from(count), "{test}");
    let failovers = metrics.failovers();
    assert!(failovers >= u64::from(count), "{test}: regedge_failovers_total {failovers} < {count}");
    let cm2_contacts = lab.cm2.contacts();
    assert_eq!(cm2_contacts.len(), count as usize, "{test}: one contact per phone at cm2");
    assert!(cm2_contacts.iter().all(|b| lab.path_names_regedge(b)), "{test}: cm2 binding without regedge's Path");
    eprintln!(
        "{test}: failover: all {count} phones at cm2 {failover_total:?} after the kill (last check {failover:?}); \
         failovers_total {failovers}; {}",
        metrics.outcomes()
    );

    // cm1 comes back with an empty location table.
    let restarted_at = Instant::now();
    lab.cm1.restart();
    let ready = restarted_at.elapsed();
    let fallback = wait_all_registered(&lab.cm1, &want, Duration::from_secs(10)).unwrap_or_else(|missing| {
        panic!(
            "{test}: {missing} phones not back at cm1 10 s after it restarted; {}, cm1 up {}\n{}",
            lab.metrics().outcomes(),
            lab.metrics().backend_up("cm1"),
            lab.regedge_log()
        )
    });
    let fallback_total = restarted_at.elapsed();
    // regedge's own view from then on: every phone bound at cm1, none at cm2, while the
    // phones keep refreshing. Sampled for 1.5 s after 200 ms for answers in flight.
    std::thread::sleep(Duration::from_millis(200));
    let mut samples = Vec::new();
    let watch_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < watch_until {
        let m = lab.metrics();
        samples.push((
            restarted_at.elapsed().as_millis(),
            m.bindings(),
            m.backend_bindings("cm1"),
            m.backend_bindings("cm2"),
            m.registrations("forwarded"),
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = lab.metrics();
    assert_eq!(metrics.backend_up("cm1"), 1, "{test}");
    assert!(lab.cm1.contacts().iter().all(|b| lab.path_names_regedge(b)), "{test}: cm1 binding without Path");
    let fallback_outcomes = metrics.outcomes();
    eprintln!(
        "{test}: fallback: cm1 ready {ready:?} after restart(), all {count} phones back at cm1 {fallback_total:?} \
         after restart() began (last check {fallback:?}); {fallback_outcomes}"
    );

    let summary = fleet.wait();
    let metrics = lab.metrics();
    let cm1_registers = lab.cm1.stat("core:rcv_requests_register");
    let cm2_registers = lab.cm2.stat("core:rcv_requests_register");
    let cm2_left = aors(&lab.cm2).len();
    eprintln!(
        "{test}: fleet: {} REGISTERs (+{} retransmissions, {} timeouts, {} failed phones) in {:?}; \
         cm2 received {cm2_registers} and holds {cm2_left} AORs, restarted cm1 received {cm1_registers}; \
         regedge {} (whole test {:?})",
        summary.requests_sent,
        summary.retransmissions,
        summary.timeouts,
        summary.failed,
        summary.elapsed,
        metrics.outcomes(),
        started.elapsed()
    );
    assert!(
        summary.all_ok(count),
        "{test}: {} of {count} phones failed across the failover and fallback: {summary:#?}\nregedge: {}\n{}",
        summary.failed,
        metrics.outcomes(),
        lab.regedge_log()
    );
    assert_eq!(summary.requests_sent, 26 * u64::from(count), "{test}: {summary:#?}");
    let users = u64::from(count);
    let lost: Vec<_> = samples.iter().filter(|(_, all, cm1, cm2, _)| (*all, *cm1, *cm2) != (users, users, 0)).collect();
    assert!(
        lost.is_empty(),
        "{test}: after the fallback regedge does not hold every phone at cm1, though cm1 holds them all \
         (ms after restart, regedge_bindings, backend_bindings cm1, cm2, forwarded): {samples:?}"
    );
    // One full registration per phone at each move: the first, to cm2, back to cm1 (and
    // a forwarded retransmission at most per retransmission).
    let forwarded = metrics.registrations("forwarded");
    assert!(
        forwarded >= 3 * users && forwarded <= 3 * users + summary.retransmissions,
        "{test}: regedge forwarded {forwarded} REGISTERs for {count} phones that moved twice (want {}): {}",
        3 * users,
        metrics.outcomes()
    );
    assert!(
        cm1_registers >= users && cm1_registers <= users + summary.retransmissions,
        "{test}: restarted cm1 received {cm1_registers} REGISTERs for {count} phones that came back once"
    );
    // A phone that moves back leaves the backend it moved from (regedge de-registers it
    // there), so each phone is registered on one backend of its group only.
    assert_eq!(cm2_left, 0, "{test}: phones still registered at cm2 after moving back to cm1");
    assert_eq!(metrics.bindings(), users, "{test}");
    assert_eq!(metrics.backend_bindings("cm1"), users, "{test}");
    assert_eq!(metrics.backend_bindings("cm2"), 0, "{test}");
}

/// A real UA: baresip registers through regedge as its outbound proxy; cm1 stores it with
/// regedge's Path; its refresh is answered by regedge; its de-registration reaches cm1.
#[test]
fn baresip_registers_through_regedge() {
    let test = "baresip_registers_through_regedge";
    if !require_peers(test, &["baresip"]) {
        return;
    }
    let lab = Lab::start(test);
    let domain = lab.edge.ip().to_string();
    let mut alice = Baresip::start(&lab.phones, "alice", &domain, lab.edge);
    let line = alice
        .wait_registered(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{test}: {e}\nregedge: {}\n{}", lab.metrics().outcomes(), lab.regedge_log()));
    eprintln!("{test}: {line}");

    let contacts = lab.cm1.contacts();
    let found: Vec<&Binding> = contacts.iter().filter(|b| b.aor == "alice").collect();
    assert_eq!(found.len(), 1, "{test}: alice's contacts at cm1: {contacts:?}");
    assert!(lab.path_names_regedge(found[0]), "{test}: no Path naming regedge {}: {:?}", lab.edge, found[0]);
    assert!(found[0].contact.contains(&format!("@{}:", lab.phone_ip)), "{test}: {:?}", found[0]);
    assert_eq!(aors(&lab.cm2), BTreeSet::new(), "{test}");
    let metrics = lab.metrics();
    assert_eq!(metrics.bindings(), 1, "{test}: {}", metrics.outcomes());
    assert_eq!(metrics.backend_bindings("cm1"), 1, "{test}");
    let cm1_registers = lab.cm1.stat("core:rcv_requests_register");

    // regedge granted at most 30 s: baresip refreshes well within that, and regedge
    // answers the refresh itself. baresip prints a REGISTER result only when the status
    // code changes, so the refresh is seen in regedge's counters, not in baresip's log.
    let registered_at = Instant::now();
    let metrics = loop {
        let metrics = lab.metrics();
        if metrics.registrations("absorbed") + metrics.registrations("forwarded") >= 2
            || registered_at.elapsed() > Duration::from_secs(35)
        {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (metrics.registrations("forwarded"), metrics.registrations("absorbed")),
        (1, 1),
        "{test}: baresip's refresh (within 35 s) was not absorbed: {}\n{}",
        metrics.outcomes(),
        alice.log()
    );
    eprintln!("{test}: refresh absorbed {:?} after the registration", registered_at.elapsed());
    assert_eq!(alice.registration_failures(), Vec::<String>::new(), "{test}: baresip saw a failed REGISTER");
    assert_eq!(
        lab.cm1.stat("core:rcv_requests_register"),
        cm1_registers,
        "{test}: baresip's refresh reached cm1: {}",
        metrics.outcomes()
    );
    assert_eq!(lab.cm1.contacts().len(), 1, "{test}");
    let registered_outcomes = metrics.outcomes();

    // SIGTERM: baresip de-registers (Expires 0), which regedge forwards.
    alice.stop(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !lab.cm1.registered_aors().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = lab.metrics();
    assert_eq!(lab.cm1.registered_aors(), Vec::<String>::new(), "{test}: de-registration did not reach cm1");
    assert_eq!(metrics.bindings(), 0, "{test}: regedge kept the binding: {}", metrics.outcomes());
    eprintln!("{test}: registered: {registered_outcomes}; after stop: {}", metrics.outcomes());
}
