//! End-to-end: several regedge nodes behind one shared address, bindings shared through a
//! real redis-server (issue 11). The lab (`cluster_lab`): phones (sipp) —— a direct server
//! return balancer hashing on the phones' source address and port —— node1 and node2
//! (the shared address on their loopback, XDP on their veth) —— Kamailio (registrar,
//! Path honoured) and redis-server (persistence off).
//!
//! A node killed or drained hands its phones to the other with no REGISTER upstream and
//! no failed refresh; a call reaches a phone registered through a dead node; a store
//! outage loses nothing and the store catches up; a single node with a store behaves as
//! before; a Redis Cluster store (three masters) serves as one server does. Every figure
//! measured is printed.
//!
//! Phones of one sipp process share its socket, so the phones are split over several sipp
//! processes, each from a source port the balancer sends to a known node
//! ([`ClusterLab::ports_by_node`]). The labs of this file run one at a time.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use regedge_tests::{
    cluster_lab::{CLUSTER_STORE_PORTS, ClusterLab, LabOpts, NODES, PHONE_IP, RECORDS},
    privilege::require_peers,
    process::MetricsText,
    sipp::{CallOpts, FleetOpts, FleetSummary, Sipp, Transport, user_names},
};

const DOMAIN: &str = "cluster.example.net";
const PHONES_PER_FLEET: u32 = 25;
/// Each phone refreshes this long after its last 200 OK (`phone_expires` is 10 s).
const REFRESH: Duration = Duration::from_secs(4);

/// How long after a node's death the balancer takes it out (in the kill test).
const BALANCER_DETECTION: Duration = Duration::from_secs(2);

/// Root, the peers, nft and redis-server; prints SKIPPED otherwise (fails under CI).
fn require(test: &str) -> bool {
    require_peers(test, &["sipp", "nft", "redis-server"])
}

fn fleet_opts(first_user: u32, refreshes: u32) -> FleetOpts {
    FleetOpts {
        users: PHONES_PER_FLEET,
        first_user,
        expires: 10,
        refreshes,
        refresh_interval: REFRESH,
        // A fleet's phones register over one refresh period, so that refreshes are spread
        // evenly and some are always in flight.
        rate: PHONES_PER_FLEET.div_ceil(REFRESH.as_secs() as u32) + 1,
        timeout: REFRESH * (refreshes + 8),
        response_timeout: Duration::from_secs(10),
        ..FleetOpts::default()
    }
}

/// `fleets_per_node` sipp fleets toward each node (by source port), started at once.
fn spawn_balanced(lab: &ClusterLab, fleets_per_node: usize, first_user: u32, refreshes: u32) -> Vec<Sipp> {
    let ports = lab.ports_by_node(fleets_per_node, 5101);
    let all: Vec<u16> = ports.iter().flatten().copied().collect();
    eprintln!("{}: source ports by node: {ports:?}", lab.test);
    lab.spawn_fleets(&all, PHONES_PER_FLEET, &fleet_opts(first_user, refreshes))
}

/// Waits for every fleet; asserts every phone registered and every refresh got its 200 OK
/// (no failed phone, no unexpected message, no timeout). Returns the retransmissions.
fn assert_fleets_ok(lab: &ClusterLab, fleets: Vec<Sipp>) -> u64 {
    let summaries: Vec<FleetSummary> = fleets.into_iter().map(Sipp::wait).collect();
    for (k, s) in summaries.iter().enumerate() {
        assert!(
            s.all_ok(PHONES_PER_FLEET) && s.unexpected == 0 && s.timeouts == 0,
            "{}: fleet {k}: a phone failed or got something else than 200 OK: {s:#?}\n{}",
            lab.test,
            lab.logs()
        );
    }
    let requests: u64 = summaries.iter().map(|s| s.requests_sent).sum();
    let retransmissions: u64 = summaries.iter().map(|s| s.retransmissions).sum();
    eprintln!(
        "{}: {} fleets: {requests} REGISTERs sent, all answered 200 OK, {retransmissions} retransmissions",
        lab.test,
        summaries.len()
    );
    retransmissions
}

/// The store and adoption samples of a node (counters that are not 0), for the printed figures.
fn store_lines(metrics: &MetricsText) -> String {
    metrics
        .0
        .lines()
        .filter(|l| l.starts_with("regedge_store_") || l.starts_with("regedge_bindings_adopted"))
        .filter(|l| !(l.contains("_total{") && l.ends_with(" 0")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A node's store operations that failed (`regedge_store_ops_total{outcome="error"}`, all ops).
fn store_errors(metrics: &MetricsText) -> u64 {
    metrics
        .0
        .lines()
        .filter(|l| l.starts_with("regedge_store_ops_total{") && l.contains("outcome=\"error\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

fn adopted(lab: &ClusterLab, i: usize) -> (u64, u64) {
    (
        lab.sample(i, "regedge_bindings_adopted_total", &[("how", "sighted")]),
        lab.sample(i, "regedge_bindings_adopted_total", &[("how", "swept")]),
    )
}

fn kernel_register_replies(lab: &ClusterLab, i: usize) -> u64 {
    lab.sample(i, "regedge_fastpath_replies_total", &[("kind", "register")])
}

/// Waits until the nodes hold `phones` bindings between them and the store as many
/// records; the time it took.
fn wait_all_registered(lab: &ClusterLab, phones: u64) -> Duration {
    lab.wait_for(
        &format!("{phones} bindings on the nodes and {phones} records in the store"),
        Duration::from_secs(40),
        || lab.total_bindings() == phones && lab.records() == Some(phones),
    )
}

/// Every phone still registered at Kamailio (a contact per AOR), each with a Path at the
/// shared address, so that requests for it reach whichever node is live.
fn assert_kamailio_holds(lab: &ClusterLab, first_user: u32, phones: u32) {
    let expected = user_names(first_user, phones);
    let contacts: Vec<_> = lab.kamailio.contacts().into_iter().filter(|b| expected.contains(&b.aor)).collect();
    let aors: BTreeSet<String> = contacts.iter().map(|b| b.aor.clone()).collect();
    let missing: Vec<&String> = expected.difference(&aors).take(10).collect();
    assert!(missing.is_empty(), "{}: Kamailio lost registrations, e.g. {missing:?}", lab.test);
    let vip = format!("@{}", lab.vip());
    let elsewhere: Vec<_> =
        contacts.iter().filter(|b| !b.path.as_deref().is_some_and(|p| p.contains(&vip))).take(3).collect();
    assert!(elsewhere.is_empty(), "{}: Path not at the shared address {vip}: {elsewhere:#?}", lab.test);
}

/// 500 phones through both nodes; node1 is killed (SIGKILL) and the balancer moves its
/// phones to node2, which answers their refreshes from the store's records (in its kernel
/// after the first), with no REGISTER upstream.
#[test]
fn a_node_killed_costs_no_reregistration() {
    let test = "a_node_killed_costs_no_reregistration";
    if !require(test) {
        return;
    }
    const FIRST: u32 = 500_000;
    const FLEETS_PER_NODE: usize = 10;
    let phones = (NODES * FLEETS_PER_NODE) as u64 * u64::from(PHONES_PER_FLEET);
    let mut lab = ClusterLab::start(test, LabOpts { kamailio_children: 3, ..LabOpts::default() });
    let started = Instant::now();
    let mut fleets = spawn_balanced(&lab, FLEETS_PER_NODE, FIRST, 15);
    let registered = wait_all_registered(&lab, phones);
    let split = [lab.bindings(0), lab.bindings(1)];
    assert!(split[0] > 0 && split[1] > 0, "{test}: both nodes serve phones: {split:?}");
    // One refresh round, answered where each phone registered.
    std::thread::sleep(REFRESH + Duration::from_secs(1));
    let registers_before = lab.kamailio_registers();
    let kernel_before = kernel_register_replies(&lab, 1);
    eprintln!(
        "{test}: {phones} phones registered in {registered:?} (n1 {}, n2 {}), Kamailio REGISTERs {registers_before}\n\
         n1: {}\nn2: {}",
        split[0],
        split[1],
        store_lines(&lab.metrics(0)),
        store_lines(&lab.metrics(1))
    );

    let killed = Instant::now();
    lab.kill_node(0);
    let counts_at_kill = lab.balancer_counts();
    let xdp_after_kill = lab.xdp_attached(0);
    // A health-checking balancer notices a little later: refreshes sent meanwhile are
    // lost and retransmitted by the phones, then reach node2.
    std::thread::sleep(BALANCER_DETECTION);
    lab.remove_node(0);
    let to_dead_node = lab.balancer_counts()[0] - counts_at_kill[0];
    eprintln!(
        "{test}: {to_dead_node} packets went to node1 in the {BALANCER_DETECTION:?} after its death (an XDP program \
         still attached to its veth: {xdp_after_kill})"
    );
    assert!(to_dead_node > 0, "{test}: no refresh was in flight toward node1 when it died");
    let moved = lab.wait_for("node2 holds every binding", Duration::from_secs(30), || lab.bindings(1) == phones);
    let (sighted, swept) = adopted(&lab, 1);
    eprintln!(
        "{test}: node2 holds all {phones} bindings {moved:?} after the kill; adopted: sighted {sighted}, swept {swept}"
    );
    // Each of node1's phones taken over once: a binding let go and adopted again (a lease
    // renewal racing a takeover) would count twice.
    assert_eq!(
        sighted + swept,
        split[0],
        "{test}: node2's adoptions of node1's phones: {}",
        store_lines(&lab.metrics(1))
    );
    // At least two refresh rounds after the move, then one round measured: every phone's
    // refresh is answered in node2's kernel, the moved ones too.
    let since_kill = killed.elapsed();
    if since_kill < REFRESH * 2 + Duration::from_secs(1) {
        std::thread::sleep(REFRESH * 2 + Duration::from_secs(1) - since_kill);
    }
    let window_start = kernel_register_replies(&lab, 1);
    let window = REFRESH * 2 + Duration::from_millis(500);
    std::thread::sleep(window);
    let in_window = kernel_register_replies(&lab, 1) - window_start;
    assert!(
        fleets.iter_mut().all(|f| !f.is_done()),
        "{test}: the phones stopped refreshing before the measurement ended ({:?})",
        started.elapsed()
    );
    // Each phone refreshes at least twice in the window: all of them in the kernel make
    // 2 × phones; node2's own phones alone could make at most 3 × phones / 2.
    let kernel_total = kernel_register_replies(&lab, 1) - kernel_before;
    eprintln!(
        "{test}: node2 answered {in_window} refreshes in its kernel in {window:?} ({phones} phones refreshing every \
         {REFRESH:?}); {kernel_total} since before the kill"
    );
    assert!(
        in_window >= phones * 9 / 5,
        "{test}: the moved phones' refreshes are not answered in node2's kernel: {in_window} kernel replies in \
         {window:?}\n{}",
        lab.logs()
    );

    let retransmissions = assert_fleets_ok(&lab, fleets);
    let registers_after = lab.kamailio_registers();
    // backend_expires 600: no upstream refresh falls due within the test (half-life 300 s).
    let due = 0;
    eprintln!(
        "{test}: Kamailio REGISTERs: {registers_before} before the kill, {registers_after} at the end (due: {due}); \
         {retransmissions} phone retransmissions; store records {:?}; whole test {:?}\nn2: {}",
        lab.records(),
        started.elapsed(),
        store_lines(&lab.metrics(1))
    );
    assert!(
        registers_after - registers_before <= due,
        "{test}: Kamailio saw {} REGISTERs after the kill\n{}",
        registers_after - registers_before,
        lab.logs()
    );
    assert_eq!(lab.bindings(1), phones, "{test}: node2's bindings at the end");
    lab.wait_for("the store's records equal node2's bindings", Duration::from_secs(10), || {
        lab.records() == Some(phones)
    });
    assert_kamailio_holds(&lab, FIRST, phones as u32);
}

/// A phone registers through node1, node1 dies; a call to it (from a phone registered
/// through node2, through Kamailio) reaches it through node2 and completes.
#[test]
fn a_call_reaches_a_phone_registered_through_the_dead_node() {
    let test = "a_call_reaches_a_phone_registered_through_the_dead_node";
    if !require(test) {
        return;
    }
    // The answering sipp registers once (Expires 600): phone_expires long enough that its
    // binding does not lapse during the test.
    let mut lab = ClusterLab::start(test, LabOpts { phone_expires: 60, ..LabOpts::default() });
    let ports = lab.ports_by_node(1, 5201);
    let (callee_port, caller_port) = (ports[0][0], ports[1][0]);
    let call_id = format!("{test}-7001");
    let phone = |user: &str, port: u16, callee: Option<&str>| CallOpts {
        user: user.to_owned(),
        callee: callee.map(str::to_owned),
        domain: DOMAIN.to_owned(),
        transport: Transport::Udp,
        local_port: port,
        call_id: call_id.clone(),
        hold: Duration::from_millis(1000),
        timeout: Duration::from_secs(40),
    };
    let answering = Sipp::spawn_call(&lab.phones, PHONE_IP.into(), lab.vip(), &phone("7001", callee_port, None));
    lab.wait_for("the callee registered through node1, at Kamailio and in the store", Duration::from_secs(15), || {
        lab.bindings(0) == 1
            && lab.records() == Some(1)
            && lab.kamailio.contacts().iter().any(|b| b.aor == "7001" && b.call_id == call_id)
    });
    assert_eq!(lab.bindings(1), 0, "{test}: the callee's port lands on node1 only");
    let path = lab.kamailio.contacts().into_iter().find(|b| b.aor == "7001").and_then(|b| b.path);
    eprintln!("{test}: the callee (port {callee_port}) registered through node1; Path at Kamailio: {path:?}");
    let vip = format!("@{};", lab.vip());
    assert!(path.as_deref().is_some_and(|p| p.contains(&vip)), "{test}: the Path names the shared address {vip}");

    lab.kill_node(0);
    lab.remove_node(0);
    let killed = Instant::now();
    let calling = Sipp::spawn_call(&lab.phones, PHONE_IP.into(), lab.vip(), &phone("7002", caller_port, Some("7001")));
    let (caller, callee) = (calling.wait(), answering.wait());
    assert!(
        caller.all_ok(1) && callee.all_ok(1),
        "{test}: caller {caller:?}\ncallee {callee:?}\n--- caller's messages:\n{}\n--- callee's messages:\n{}\n{}",
        caller.messages,
        callee.messages,
        lab.logs()
    );
    let metrics = lab.metrics(1);
    let routed = |method: &str, toward: &str| {
        metrics.get("regedge_sip_routed_requests_total", &[("method", method), ("toward", toward)]).unwrap_or(0)
    };
    assert!(routed("INVITE", "phone") >= 1, "{test}: node2 routed the INVITE to the callee\n{}", metrics.0);
    eprintln!(
        "{test}: call set up and torn down through node2 {:?} after node1's death: INVITE to phone {}, ACK {}, BYE {}; \
         node2: {}",
        killed.elapsed(),
        routed("INVITE", "phone"),
        routed("ACK", "phone"),
        routed("BYE", "phone"),
        store_lines(&metrics)
    );
}

/// redis-server stopped for 10 s under refresh load, then started again empty: no
/// refresh fails, no binding is lost, the nodes say the store is down then up, and the
/// store catches up with the nodes' bindings.
#[test]
fn a_store_outage_loses_nothing() {
    let test = "a_store_outage_loses_nothing";
    if !require(test) {
        return;
    }
    const FIRST: u32 = 600_000;
    const FLEETS_PER_NODE: usize = 4;
    let phones = (NODES * FLEETS_PER_NODE) as u64 * u64::from(PHONES_PER_FLEET);
    let mut lab = ClusterLab::start(test, LabOpts::default());
    let fleets = spawn_balanced(&lab, FLEETS_PER_NODE, FIRST, 12);
    let registered = wait_all_registered(&lab, phones);
    let store_up =
        |lab: &ClusterLab| -> Vec<u64> { (0..NODES).map(|i| lab.sample(i, "regedge_store_up", &[])).collect() };
    assert_eq!(store_up(&lab), vec![1; NODES], "{test}: the store is up");
    let registers_before = lab.kamailio_registers();
    eprintln!("{test}: {phones} phones registered in {registered:?}; Kamailio REGISTERs {registers_before}");

    let stopped = Instant::now();
    lab.redis_mut().stop();
    let mut saw_down = None;
    let (mut fewest, mut most, mut deepest_queue) = (u64::MAX, 0, 0);
    while stopped.elapsed() < Duration::from_secs(10) {
        let total = lab.total_bindings();
        (fewest, most) = (fewest.min(total), most.max(total));
        deepest_queue =
            deepest_queue.max((0..NODES).map(|i| lab.sample(i, "regedge_store_queue_depth", &[])).max().unwrap_or(0));
        if saw_down.is_none() && store_up(&lab).iter().all(|&up| up == 0) {
            saw_down = Some(stopped.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let during = [store_lines(&lab.metrics(0)), store_lines(&lab.metrics(1))];
    lab.redis_mut().start_again();
    let restarted = Instant::now();
    let caught_up = lab.wait_for("the store up again and holding every binding", Duration::from_secs(20), || {
        store_up(&lab).iter().all(|&up| up == 1) && lab.records() == Some(lab.total_bindings())
    });
    eprintln!(
        "{test}: store stopped 10 s: both nodes reported it down after {saw_down:?}; bindings between {fewest} and \
         {most} during the outage; deepest write queue {deepest_queue}; up again and {:?} records {caught_up:?} after \
         the restart ({:?} in all)\nduring the outage: n1: {}\n  n2: {}",
        lab.records(),
        restarted.elapsed(),
        during[0],
        during[1]
    );
    assert!(saw_down.is_some(), "{test}: regedge_store_up never went to 0 on both nodes\n{}", lab.logs());
    assert_eq!((fewest, most), (phones, phones), "{test}: bindings changed during the outage");
    assert!(caught_up <= Duration::from_secs(12), "{test}: the store caught up only {caught_up:?} after its return");
    assert_eq!(lab.records(), Some(phones), "{test}: the store's records");

    assert_fleets_ok(&lab, fleets);
    assert_eq!(lab.total_bindings(), phones, "{test}: bindings at the end");
    let registers_after = lab.kamailio_registers();
    eprintln!(
        "{test}: Kamailio REGISTERs {registers_before} before the outage, {registers_after} at the end\nn1: {}\nn2: {}",
        store_lines(&lab.metrics(0)),
        store_lines(&lab.metrics(1))
    );
    assert_kamailio_holds(&lab, FIRST, phones as u32);
}

/// node1 taken out of the balancer, then stopped with SIGTERM (a drain): it releases its
/// leases, node2 adopts its phones and answers their refreshes, nothing goes upstream.
#[test]
fn a_drained_node_hands_its_phones_over() {
    let test = "a_drained_node_hands_its_phones_over";
    if !require(test) {
        return;
    }
    const FIRST: u32 = 700_000;
    const FLEETS_PER_NODE: usize = 4;
    let phones = (NODES * FLEETS_PER_NODE) as u64 * u64::from(PHONES_PER_FLEET);
    let mut lab = ClusterLab::start(test, LabOpts::default());
    let fleets = spawn_balanced(&lab, FLEETS_PER_NODE, FIRST, 12);
    let registered = wait_all_registered(&lab, phones);
    let split = [lab.bindings(0), lab.bindings(1)];
    assert!(split[0] > 0 && split[1] > 0, "{test}: both nodes serve phones: {split:?}");
    std::thread::sleep(REFRESH + Duration::from_secs(1));
    let registers_before = lab.kamailio_registers();
    eprintln!("{test}: {phones} phones registered in {registered:?} (n1 {}, n2 {})", split[0], split[1]);

    lab.remove_node(0);
    let drained = Instant::now();
    let status = lab.terminate_node(0, Duration::from_secs(20));
    let took = drained.elapsed();
    assert!(status.is_some(), "{test}: node1 did not stop within 20 s of SIGTERM\n{}", lab.log(0));
    let moved = lab.wait_for("node2 holds every binding", Duration::from_secs(20), || lab.bindings(1) == phones);
    let (sighted, swept) = adopted(&lab, 1);
    eprintln!(
        "{test}: node1 drained and exited ({status:?}) in {took:?}; node2 holds all {phones} bindings {moved:?} \
         after; adopted: sighted {sighted}, swept {swept}"
    );
    // Each of node1's phones taken over once: a binding let go and adopted again (a lease
    // renewal racing a takeover) would count twice.
    assert_eq!(
        sighted + swept,
        split[0],
        "{test}: node2's adoptions of node1's phones: {}",
        store_lines(&lab.metrics(1))
    );

    assert_fleets_ok(&lab, fleets);
    let registers_after = lab.kamailio_registers();
    eprintln!(
        "{test}: Kamailio REGISTERs: {registers_before} before the drain, {registers_after} at the end; \
         records {:?}\nn2: {}",
        lab.records(),
        store_lines(&lab.metrics(1))
    );
    // backend_expires 600: no upstream refresh falls due within the test.
    assert_eq!(registers_after, registers_before, "{test}: REGISTERs reached Kamailio after the drain\n{}", lab.logs());
    assert_eq!(lab.bindings(1), phones, "{test}: node2's bindings at the end");
    lab.wait_for("the store's records equal node2's bindings", Duration::from_secs(10), || {
        lab.records() == Some(phones)
    });
    assert_kamailio_holds(&lab, FIRST, phones as u32);
}

/// One node with the store configured: phones register once upstream, their refreshes
/// are answered in the kernel, and the store holds one record per binding.
#[test]
fn a_single_node_with_a_store_behaves_as_before() {
    let test = "a_single_node_with_a_store_behaves_as_before";
    if !require(test) {
        return;
    }
    const FIRST: u32 = 800_000;
    const FLEETS: u32 = 2;
    const REFRESHES: u32 = 5;
    let phones = u64::from(FLEETS * PHONES_PER_FLEET);
    let mut lab = ClusterLab::new(test, LabOpts::default());
    lab.start_node(0);
    lab.remove_node(1);
    let fleets = lab.spawn_fleets(&[5101, 5102], PHONES_PER_FLEET, &fleet_opts(FIRST, REFRESHES));
    let registered = wait_all_registered(&lab, phones);
    assert_fleets_ok(&lab, fleets);

    let metrics = lab.metrics(0);
    let kernel = metrics.value("regedge_fastpath_replies_total", &[("kind", "register")]);
    let forwarded = metrics.value("regedge_registrations_total", &[("protocol", "sip"), ("outcome", "forwarded")]);
    let registers = lab.kamailio_registers();
    let key = lab.redis().keys(RECORDS).and_then(|keys| keys.into_iter().next()).expect("a record");
    let (bytes, ttl, record) = (lab.redis().memory_usage(&key), lab.redis().ttl(&key), lab.redis().hgetall(&key));
    eprintln!(
        "{test}: {phones} phones registered in {registered:?}; {forwarded} REGISTERs forwarded, Kamailio received \
         {registers}; {kernel} refreshes answered in the kernel (of {}); store: {:?} records; {key}: {bytes:?} bytes, \
         TTL {ttl:?} s, {record:?}\n{}",
        phones * u64::from(REFRESHES),
        lab.records(),
        store_lines(&metrics)
    );
    assert_eq!(lab.bindings(0), phones, "{test}: bindings");
    assert_eq!((forwarded, registers), (phones, phones), "{test}: one REGISTER upstream per phone\n{}", lab.log(0));
    assert!(
        kernel >= phones * u64::from(REFRESHES - 1),
        "{test}: refreshes answered in the kernel: {kernel}\n{}",
        lab.log(0)
    );
    assert_eq!(lab.records(), Some(phones), "{test}: one record per binding in the store");
    assert_eq!(metrics.value("regedge_store_up", &[]), 1, "{test}");
    assert_eq!(metrics.value("regedge_store_leases_held", &[]), phones, "{test}: a lease per binding");
    assert!(ttl.is_some_and(|t| t > 0), "{test}: a record expires with its binding: TTL {ttl:?}");
    assert_kamailio_holds(&lab, FIRST, phones as u32);
}

/// The store a Redis Cluster of three masters (`[cluster] store` lists them): 100 phones
/// through both nodes, their records spread over the masters (one slot per record, by
/// its hash tag); node1 killed (SIGKILL) and taken out of the balancer; node2 takes its
/// phones over from records it reads across the cluster, every refresh is answered
/// 200 OK and nothing goes upstream.
#[test]
fn a_redis_cluster_store_serves_like_one_server() {
    let test = "a_redis_cluster_store_serves_like_one_server";
    if !require(test) {
        return;
    }
    const FIRST: u32 = 900_000;
    const FLEETS_PER_NODE: usize = 2;
    const REFRESHES: u32 = 5;
    let phones = (NODES * FLEETS_PER_NODE) as u64 * u64::from(PHONES_PER_FLEET);
    let setup = Instant::now();
    let mut lab = ClusterLab::start(test, LabOpts { redis_cluster: true, ..LabOpts::default() });
    // From here: the lab's start may have waited for another lab of this process.
    let (setup, started) = (setup.elapsed(), Instant::now());
    let slots = lab.redis_cluster().slots_by_master();
    eprintln!(
        "{test}: lab with a Redis Cluster store up in {setup:?} (with any wait for another lab); slots by master \
         {:?}: {slots:?}",
        CLUSTER_STORE_PORTS
    );
    assert!(slots.iter().all(|s| !s.is_empty()), "{test}: a master serves no slot: {slots:?}");
    let fleets = spawn_balanced(&lab, FLEETS_PER_NODE, FIRST, REFRESHES);
    let registered = wait_all_registered(&lab, phones);
    let split = [lab.bindings(0), lab.bindings(1)];
    let by_master = lab.redis_cluster().count_keys_by_master(RECORDS);
    let registers_before = lab.kamailio_registers();
    eprintln!(
        "{test}: {phones} phones registered in {registered:?} (n1 {}, n2 {}); records by master {by_master:?}; \
         Kamailio REGISTERs {registers_before}\nn1: {}\nn2: {}",
        split[0],
        split[1],
        store_lines(&lab.metrics(0)),
        store_lines(&lab.metrics(1))
    );
    assert!(split[0] > 0 && split[1] > 0, "{test}: both nodes serve phones: {split:?}");
    assert!(by_master.iter().all(|c| c.is_some_and(|c| c > 0)), "{test}: every master holds records: {by_master:?}");
    assert_eq!(
        by_master.iter().map(|c| c.unwrap_or(0)).sum::<u64>(),
        phones,
        "{test}: the masters' records add up to the bindings: {by_master:?}"
    );
    for i in 0..NODES {
        let metrics = lab.metrics(i);
        assert_eq!(metrics.value("regedge_store_up", &[]), 1, "{test}: node n{} store up", i + 1);
        assert_eq!(store_errors(&metrics), 0, "{test}: node n{}: {}\n{}", i + 1, store_lines(&metrics), lab.logs());
    }

    let killed = Instant::now();
    lab.kill_node(0);
    std::thread::sleep(BALANCER_DETECTION);
    lab.remove_node(0);
    lab.wait_for("node2 holds every binding", Duration::from_secs(20), || lab.bindings(1) == phones);
    let (sighted, swept) = adopted(&lab, 1);
    eprintln!(
        "{test}: node1 killed; node2 holds all {phones} bindings {:?} after the kill; adopted: sighted {sighted}, \
         swept {swept}",
        killed.elapsed()
    );
    assert!(
        sighted + swept == split[0],
        "{test}: node2 adopted {} of node1's {} phones: {}",
        sighted + swept,
        split[0],
        store_lines(&lab.metrics(1))
    );

    let retransmissions = assert_fleets_ok(&lab, fleets);
    let registers_after = lab.kamailio_registers();
    assert_eq!(lab.bindings(1), phones, "{test}: node2's bindings at the end");
    lab.wait_for("the masters' records equal node2's bindings", Duration::from_secs(10), || {
        lab.records() == Some(phones)
    });
    let by_master_end = lab.redis_cluster().count_keys_by_master(RECORDS);
    let n2 = lab.metrics(1);
    eprintln!(
        "{test}: Kamailio REGISTERs {registers_before} before the kill, {registers_after} at the end; \
         {retransmissions} phone retransmissions; records by master at the end {by_master_end:?}; \
         store errors on node2 {}; {:?} since the lab was up\nn2: {}",
        store_errors(&n2),
        started.elapsed(),
        store_lines(&n2)
    );
    // backend_expires 600: no upstream refresh falls due within the test.
    assert_eq!(registers_after, registers_before, "{test}: REGISTERs reached Kamailio after the kill\n{}", lab.logs());
    assert_eq!(n2.value("regedge_store_up", &[]), 1, "{test}: node2's store up at the end");
    assert_eq!(store_errors(&n2), 0, "{test}: node2's store operations failed: {}\n{}", store_lines(&n2), lab.logs());
    assert_kamailio_holds(&lab, FIRST, phones as u32);
}
