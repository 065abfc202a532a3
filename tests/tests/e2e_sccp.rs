//! End-to-end: regedge as the SCCP edge between a fleet of simulated Skinny phones and
//! two simulated call servers in one group. Three namespaces: phones —veth— edge
//! (regedge) —veth— servers (cm1 and cm2 on two addresses of one subnet, port 2000).
//!
//! Checked from every side: what the phones saw (RegisterAcks, KeepAliveAcks, closes),
//! what the servers hold (devices registered on an open connection) and what regedge
//! says (/metrics).

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use regedge_tests::{
    netns::NetNs,
    privilege::require_root,
    process::{MetricsText, Regedge, TempDir, scrape},
    sccp_sim::{
        CallServer, CallServerOpts, FleetOpts, PhoneFleet, PhoneMode, PhoneStats, connect_in, message_ids, msg,
        wait_closed,
    },
};

const METRICS: &str = "127.0.0.1:9100";
const SCCP_PORT: u16 = 2000;
/// `max_register_rate` of both servers.
const RATE: u32 = 200;

/// Picks the subnets of one test: phones 10.222.<n>.0/24, servers 10.223.<n>.0/24.
static SUBNET: AtomicU32 = AtomicU32::new(0);

/// The namespaces, both servers and regedge. Drop order: regedge, the servers, the
/// scratch dir, then the namespaces.
struct Lab {
    regedge: Regedge,
    cm1: CallServer,
    cm2: CallServer,
    _dir: TempDir,
    phones: NetNs,
    proxy: NetNs,
    servers: NetNs,
    /// regedge's SCCP address (phone side).
    edge: SocketAddr,
}

impl Lab {
    fn start(test: &str) -> Self {
        let n = (SUBNET.fetch_add(1, Ordering::Relaxed) % 250) as u8;
        let phone_ip = Ipv4Addr::new(10, 222, n, 2);
        let edge_ip = Ipv4Addr::new(10, 222, n, 1);
        let edge_server_side = Ipv4Addr::new(10, 223, n, 1);
        let cm1_ip = Ipv4Addr::new(10, 223, n, 11);
        let cm2_ip = Ipv4Addr::new(10, 223, n, 12);

        let phones = NetNs::new("sphones");
        let proxy = NetNs::new("sedge");
        let servers = NetNs::new("scms");
        phones.link("rgsp0", &phone_ip.to_string(), &proxy, "rgse0", &edge_ip.to_string(), 24);
        proxy.link("rgsb0", &edge_server_side.to_string(), &servers, "rgsk0", &cm1_ip.to_string(), 24);
        servers.ip(&["addr", "add", &format!("{cm2_ip}/24"), "dev", "rgsk0"]);

        let opts = CallServerOpts { keepalive_secs: 30, secondary_keepalive_secs: 60, call_states: true };
        let cm1_addr = SocketAddr::new(cm1_ip.into(), SCCP_PORT);
        let cm2_addr = SocketAddr::new(cm2_ip.into(), SCCP_PORT);
        let cm1 = CallServer::start(&servers, cm1_addr, opts.clone());
        let cm2 = CallServer::start(&servers, cm2_addr, opts);

        let dir = TempDir::new(test);
        let edge = SocketAddr::new(edge_ip.into(), SCCP_PORT);
        let config = dir.write(
            "regedge.toml",
            &format!(
                "[node]\nname = \"e2e-sccp\"\nworkers = 2\nstate_dir = \"\"\n\n\
                 [sccp]\nlisten = [\"{edge}\"]\nregister_timeout = \"1s\"\nkeepalive_interval = \"30s\"\n\n\
                 [fastpath]\nmode = \"auto\"\npin_path = \"\"\n\n\
                 [health]\ninterval = \"500ms\"\ntimeout = \"250ms\"\ndown_after = 2\nup_after = 2\n\n\
                 [metrics]\nlisten = \"{METRICS}\"\n\n[routing]\ndefault_group = \"cms\"\n\n\
                 [[backends]]\nname = \"cm1\"\naddress = \"{cm1_addr}\"\nprotocol = \"sccp\"\ntransport = \"tcp\"\n\
                 max_register_rate = {RATE}\n\n\
                 [[backends]]\nname = \"cm2\"\naddress = \"{cm2_addr}\"\nprotocol = \"sccp\"\ntransport = \"tcp\"\n\
                 max_register_rate = {RATE}\n\n\
                 [[groups]]\nname = \"cms\"\nbackends = [\"cm1\", \"cm2\"]\n",
            ),
        );
        let mut regedge = Regedge::start(Some(&proxy), &config, dir.0.join("regedge.log"));
        if let Err(err) = regedge.wait_ready(METRICS.parse().unwrap(), Some(&proxy), Duration::from_secs(20)) {
            panic!("{test}: {err}");
        }
        let lab = Self { regedge, cm1, cm2, _dir: dir, phones, proxy, servers, edge };
        // Both servers up before any phone comes.
        let up = wait_for(Duration::from_secs(10), || {
            let m = lab.metrics();
            m.get("regedge_backend_up", &[("backend", "cm1")]) == Some(1)
                && m.get("regedge_backend_up", &[("backend", "cm2")]) == Some(1)
        });
        assert!(up.is_some(), "{test}: the servers never came up:\n{}\n{}", lab.metrics().0.0, lab.regedge_log());
        lab
    }

    fn metrics(&self) -> Metrics {
        Metrics(MetricsText(scrape(METRICS.parse().unwrap(), Some(&self.proxy)).expect("scrape /metrics")))
    }

    fn regedge_log(&self) -> String {
        tail(&self.regedge.log(), 4000)
    }

    fn fleet(&self, opts: FleetOpts) -> PhoneFleet {
        PhoneFleet::start(&self.phones, self.edge, opts)
    }
}

/// A /metrics text.
struct Metrics(MetricsText);

impl Metrics {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.0.get(name, labels)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0.value(name, labels)
    }

    fn sessions(&self, state: &str) -> u64 {
        self.value("regedge_sccp_sessions", &[("state", state)])
    }

    fn closed(&self, reason: &str) -> u64 {
        self.value("regedge_sccp_sessions_closed_total", &[("reason", reason)])
    }

    fn framing(&self, reason: &str) -> u64 {
        self.value("regedge_sccp_framing_errors_total", &[("reason", reason)])
    }

    fn kernel_keepalives(&self) -> u64 {
        self.value("regedge_fastpath_replies_total", &[("kind", "sccp_keepalive")])
    }

    fn userspace_keepalives(&self) -> u64 {
        self.value("regedge_userspace_replies_total", &[("kind", "sccp_keepalive")])
    }

    fn standby_keepalives(&self) -> u64 {
        self.value("regedge_sccp_standby_keepalives_total", &[])
    }

    /// Every close reason, for messages.
    fn closes(&self) -> String {
        [
            "register_timeout",
            "not_registered",
            "no_backend",
            "rejected",
            "unregistered",
            "moved",
            "phone_closed",
            "malformed",
            "overflow",
        ]
        .iter()
        .map(|r| format!("{r}={}", self.closed(r)))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

fn tail(text: &str, chars: usize) -> String {
    let skip = text.chars().count().saturating_sub(chars);
    text.chars().skip(skip).collect()
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; how long it took.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if cond() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const PHONES: usize = 500;

/// The least time `moves` paced moves can take at `RATE` per second, with a full bucket
/// of `RATE` at the start (10 % slack).
fn paced_floor(moves: usize) -> Duration {
    Duration::from_secs_f64(moves.saturating_sub(RATE as usize) as f64 / RATE as f64 * 0.9)
}
/// Phones (of the 500) whose keepalives always share a segment with another message.
const COALESCED: usize = 20;

/// 500 phones register through regedge on cm1 (the group's first), their keepalives are
/// answered by regedge; cm1 dies: every idle phone is moved, paced by cm2's
/// `max_register_rate`, and registers again on cm2; the phone in a call stays where it
/// is until it hangs up, then moves too. None is lost.
#[test]
fn phones_fail_over_paced_and_a_call_holds_its_phone() {
    let test = "phones_fail_over_paced_and_a_call_holds_its_phone";
    if !require_root(test) {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::start(test);
    let base = FleetOpts {
        keepalive_interval: Duration::from_millis(1000),
        reconnect_delay: Duration::from_millis(250),
        ..FleetOpts::default()
    };
    let plain = lab.fleet(FleetOpts { count: PHONES - COALESCED, first_mac: 0x0011_2200_0000, ..base.clone() });
    let coalesced = lab.fleet(FleetOpts {
        count: COALESCED,
        first_mac: 0x0011_2300_0000,
        header_version: 0,
        coalesce_keepalive: true,
        ..base
    });
    let all = |f: &dyn Fn(&PhoneStats) -> bool| plain.stats().iter().chain(&coalesced.stats()).all(f);

    // Registration: all 500 on cm1.
    let registered_in = wait_for(Duration::from_secs(20), || all(&|p| p.registered));
    assert!(
        registered_in.is_some(),
        "{test}: {} + {} of {PHONES} phones registered; cm1 {} cm2 {}; closes: {}\n{}",
        plain.registered_count(),
        coalesced.registered_count(),
        lab.cm1.registered_count(),
        lab.cm2.registered_count(),
        lab.metrics().closes(),
        lab.regedge_log()
    );
    let registered_in = registered_in.unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || lab.cm1.registered_count() == PHONES).is_some(),
        "{test}: cm1 holds {} of {PHONES}",
        lab.cm1.registered_count()
    );
    assert_eq!(lab.cm2.registered_count(), 0, "{test}: nothing on the secondary");
    assert!(
        all(&|p| p.connects == 1 && p.register_acks.len() == 1 && p.capabilities_reqs == 1),
        "{test}: one try each"
    );
    assert_eq!(lab.metrics().sessions("registered"), PHONES as u64, "{test}: regedge's count");

    // Keepalives: every phone gets its acks from regedge, cm1 none of the phones'.
    let acked = wait_for(Duration::from_secs(6), || all(&|p| p.keepalive_acks >= 2));
    assert!(acked.is_some(), "{test}: some phone has fewer than 2 KeepAliveAcks");
    // A KeepAlive alone in its segment is answered in the kernel, one sharing its segment
    // with an IpPort (the coalesced phones') in userspace.
    let m = lab.metrics();
    let (kernel, userspace) = (m.kernel_keepalives(), m.userspace_keepalives());
    let acks: u64 = plain.stats().iter().chain(&coalesced.stats()).map(|p| p.keepalive_acks).sum();
    eprintln!("{test}: {acks} KeepAliveAcks: {kernel} from the kernel, {userspace} from userspace");
    assert!(
        kernel > 0,
        "{test}: no keepalive answered in the kernel ({userspace} in userspace)\n{}",
        lab.regedge_log()
    );
    assert!(
        userspace >= 2 * COALESCED as u64,
        "{test}: the coalesced keepalives were not answered in userspace: {userspace}"
    );
    let cm1_keepalives = lab.cm1.stats().keepalives;
    let phone_keepalives: u64 = plain.stats().iter().chain(&coalesced.stats()).map(|p| p.keepalives_sent).sum();
    assert!(
        cm1_keepalives < phone_keepalives / 4,
        "{test}: cm1 saw {cm1_keepalives} keepalives for the phones' {phone_keepalives}: not answered at the edge"
    );

    // A call on phone 0.
    plain.off_hook(0);
    plain.digits(0, "5551234");
    let in_call =
        plain.wait_until(Duration::from_secs(3), |s| s[0].call_states.iter().any(|c| c.0 == msg::STATE_OFF_HOOK));
    assert!(in_call.is_some(), "{test}: phone 0 got no CallState for its off-hook: {:?}", plain.phone(0));
    assert!(wait_for(Duration::from_secs(3), || lab.cm1.stats().digits == 7).is_some(), "{test}: digits relayed");
    let caller = plain.phone(0);

    // cm1 dies.
    let killed = Instant::now();
    lab.cm1.kill();
    let idle_moved = wait_for(Duration::from_secs(25), || {
        lab.cm2.registered_count() >= PHONES - 1
            && plain.stats()[1..]
                .iter()
                .chain(&coalesced.stats())
                .all(|p| p.registered && p.acks_since(killed).count() > 0)
    });
    let stats: Vec<PhoneStats> = plain.stats()[1..].iter().chain(&coalesced.stats()).cloned().collect();
    let m = lab.metrics();
    assert!(
        idle_moved.is_some(),
        "{test}: after cm1 died, {} of {} idle phones registered again, cm2 holds {}; closes: {}\n{}",
        stats.iter().filter(|p| p.registered && p.acks_since(killed).count() > 0).count(),
        PHONES - 1,
        lab.cm2.registered_count(),
        m.closes(),
        lab.regedge_log()
    );
    let firsts: Vec<Duration> =
        stats.iter().map(|p| p.acks_since(killed).next().expect("re-registered") - killed).collect();
    let first = firsts.iter().min().copied().unwrap();
    let last = firsts.iter().max().copied().unwrap();
    let tries: u32 = stats.iter().map(|p| p.connects - 1).sum();
    eprintln!(
        "{test}: 500 registered in {registered_in:?}; cm1 killed: first re-registration after {first:?}, \
         last after {last:?} (spread {:?}), {tries} reconnects for {} phones; closes: {}",
        last - first,
        PHONES - 1,
        m.closes()
    );

    // The caller stayed where it was: same connection, not on cm2.
    let now_caller = plain.phone(0);
    assert_eq!(now_caller.closes, 0, "{test}: the phone in a call was moved: {now_caller:?}");
    assert_eq!(now_caller.register_acks.len(), caller.register_acks.len(), "{test}: the caller registered again");
    assert!(!lab.cm2.stats().registered.contains(&now_caller.device), "{test}: the caller is on cm2");

    // (The backend connections all close at once when cm1 dies: the moves must be paced
    // all the same, as they are on fallback.)
    // Paced: 499 moves at max_register_rate, after a burst of one second's worth (the
    // token bucket's), take at least (499 - RATE) / RATE seconds.
    // Checked after the rest, so that one run reports every failure.
    let mut failures = Vec::new();
    let floor = paced_floor(PHONES - 1);
    if last - first < floor {
        failures.push(format!(
            "{} phones re-registered within {:?}: not paced at {RATE}/s (expected >= {floor:?})",
            PHONES - 1,
            last - first
        ));
    }

    // The caller hangs up, then moves too. (Its backend is gone, so no CallState on-hook
    // can ever come for the call cm1 reported: the session must not wait for one.)
    plain.on_hook(0);
    let hung_up = Instant::now();
    let caller_moved = plain.wait_until(Duration::from_secs(8), |s| s[0].acks_since(hung_up).count() > 0);
    let Some(caller_moved) = caller_moved else {
        failures.push(format!(
            "phone 0 hung up but was not moved to cm2 within 8 s: {:?}; closes: {}",
            plain.phone(0),
            lab.metrics().closes()
        ));
        panic!("{test}:\n{}", failures.join("\n"));
    };
    eprintln!("{test}: the caller moved {caller_moved:?} after hanging up");

    // None lost.
    let all_on_cm2 = wait_for(Duration::from_secs(5), || lab.cm2.registered_count() == PHONES);
    assert!(all_on_cm2.is_some(), "{test}: cm2 holds {} of {PHONES}", lab.cm2.registered_count());
    assert!(all(&|p| p.registered && p.register_rejects == 0), "{test}: a phone is not registered");
    assert_eq!(lab.metrics().sessions("registered"), PHONES as u64, "{test}: regedge's count after the move");
    eprintln!("{test}: took {:?}", started.elapsed());
    assert!(failures.is_empty(), "{test}:\n{}", failures.join("\n"));
}

/// The primary comes back: every phone on the secondary moves back to it, paced by the
/// primary's `max_register_rate`, none lost.
#[test]
fn phones_fall_back_to_the_primary_paced() {
    let test = "phones_fall_back_to_the_primary_paced";
    if !require_root(test) {
        return;
    }
    const COUNT: usize = 400;
    let mut lab = Lab::start(test);
    let fleet = lab.fleet(FleetOpts {
        count: COUNT,
        first_mac: 0x00DD_0000_0000,
        keepalive_interval: Duration::from_millis(1000),
        reconnect_delay: Duration::from_millis(250),
        ..FleetOpts::default()
    });
    let on = |cm: &CallServer| cm.registered_count() == COUNT;
    assert!(
        wait_for(Duration::from_secs(20), || on(&lab.cm1) && fleet.registered_count() == COUNT).is_some(),
        "{test}: cm1 holds {} of {COUNT}",
        lab.cm1.registered_count()
    );
    lab.cm1.kill();
    assert!(
        wait_for(Duration::from_secs(20), || on(&lab.cm2) && fleet.registered_count() == COUNT).is_some(),
        "{test}: after cm1 died cm2 holds {} of {COUNT}; closes: {}",
        lab.cm2.registered_count(),
        lab.metrics().closes()
    );
    // Let the token buckets fill up again.
    std::thread::sleep(Duration::from_millis(1200));
    let moved_before = lab.metrics().closed("moved");

    let restarted = Instant::now();
    lab.cm1.restart(&lab.servers);
    let back = wait_for(Duration::from_secs(20), || {
        on(&lab.cm1) && fleet.stats().iter().all(|p| p.registered && p.acks_since(restarted).count() > 0)
    });
    let m = lab.metrics();
    assert!(
        back.is_some(),
        "{test}: after cm1 came back it holds {} of {COUNT}, cm2 {}; closes: {}\n{}",
        lab.cm1.registered_count(),
        lab.cm2.registered_count(),
        m.closes(),
        lab.regedge_log()
    );
    let firsts: Vec<Duration> =
        fleet.stats().iter().map(|p| p.acks_since(restarted).next().expect("registered again") - restarted).collect();
    let (first, last) = (*firsts.iter().min().unwrap(), *firsts.iter().max().unwrap());
    eprintln!(
        "{test}: cm1 restarted: first phone back after {first:?}, last after {last:?} (spread {:?}); moved {}",
        last - first,
        m.closed("moved") - moved_before
    );
    assert_eq!(lab.cm2.registered_count(), 0, "{test}: phones left on cm2");
    assert_eq!(m.closed("moved") - moved_before, COUNT as u64, "{test}: one move per phone");
    assert!(last - first >= paced_floor(COUNT), "{test}: {COUNT} phones back within {:?}: not paced", last - first);
}

/// A connection that only sends KeepAlives (regedge as a phone's backup call manager)
/// never gets a KeepAliveAck, and is not closed for not registering; a registered phone
/// next to it gets its acks.
#[test]
fn a_standby_connection_is_never_acked() {
    let test = "a_standby_connection_is_never_acked";
    if !require_root(test) {
        return;
    }
    let lab = Lab::start(test);
    let before = lab.metrics().standby_keepalives();
    let standby = lab.fleet(FleetOpts {
        count: 3,
        first_mac: 0x00AA_0000_0000,
        mode: PhoneMode::Standby,
        keepalive_interval: Duration::from_millis(200),
        ..FleetOpts::default()
    });
    let registered = lab.fleet(FleetOpts {
        count: 1,
        first_mac: 0x00BB_0000_0000,
        keepalive_interval: Duration::from_millis(200),
        ..FleetOpts::default()
    });
    // Longer than register_timeout (1 s): a standby connection has no Register deadline.
    std::thread::sleep(Duration::from_millis(2500));
    let m = lab.metrics();
    let sent: u64 = standby.stats().iter().map(|p| p.keepalives_sent).sum();
    for phone in standby.stats() {
        assert_eq!(phone.keepalive_acks, 0, "{test}: a standby connection got a KeepAliveAck: {phone:?}");
        assert_eq!(phone.connects, 1, "{test}: the standby connection was closed: {phone:?}; {}", m.closes());
        assert_eq!(phone.closes, 0, "{test}: the standby connection was closed: {phone:?}; {}", m.closes());
        assert!(phone.keepalives_sent >= 8, "{test}: {phone:?}");
    }
    let counted = m.standby_keepalives() - before;
    assert!(counted + 3 >= sent && counted <= sent, "{test}: {counted} standby keepalives counted for {sent} sent");
    assert_eq!(m.sessions("standby"), 3, "{test}: regedge's count");
    let phone = registered.phone(0);
    assert!(phone.registered && phone.keepalive_acks >= 5, "{test}: the registered phone: {phone:?}");
    assert_eq!(lab.cm1.stats().registered.len(), 1, "{test}: only the registered phone reached cm1");
    eprintln!("{test}: {sent} standby keepalives, none acked; regedge counted {counted}");
}

/// Bytes that are not Skinny (a bad data_length, a wrong header version, an oversize
/// PDU) and connections that never finish a Register are closed, each alone: a
/// registered phone's session goes on untouched.
#[test]
fn hostile_connections_are_closed_alone() {
    let test = "hostile_connections_are_closed_alone";
    if !require_root(test) {
        return;
    }
    let lab = Lab::start(test);
    let phone = lab.fleet(FleetOpts {
        count: 1,
        first_mac: 0x00CC_0000_0001,
        keepalive_interval: Duration::from_millis(200),
        ..FleetOpts::default()
    });
    assert!(phone.wait_until(Duration::from_secs(5), |s| s[0].registered).is_some(), "{test}: {:?}", phone.phone(0));
    let before_phone = phone.phone(0);
    let before = lab.metrics();

    let header = |data_length: u32, version: u32, id: u32| {
        [data_length.to_le_bytes(), version.to_le_bytes(), id.to_le_bytes()].concat()
    };
    let mut oversize = header(4097, 0x11, 0x0099);
    oversize.extend_from_slice(&[0x55; 1024]);
    let mut register = Vec::new();
    regedge::sccp::Message::Register(regedge::sccp::Register::new("SEP00CC00000099", [10, 0, 0, 9], 30_016))
        .encode(0x11, &mut register);
    // What is sent, and whether it is closed at once (not Skinny) or at register_timeout.
    let cases: [(&str, Vec<u8>, bool); 5] = [
        ("data_length below 4", header(2, 0, 0), true),
        ("wrong header version", header(4, 5, 0), true),
        ("oversize PDU", oversize, true),
        ("never sends anything", Vec::new(), false),
        ("a Register cut short", register[..20].to_vec(), false),
    ];
    let edge = lab.edge;
    let mut streams = Vec::new();
    for (what, bytes, at_once) in &cases {
        let mut stream = connect_in(&lab.phones, edge, Duration::from_millis(200)).expect("connect");
        use std::io::Write as _;
        stream.write_all(bytes).expect("write");
        streams.push((what, stream, Instant::now(), *at_once));
    }
    // Bytes that are not Skinny close at once; the rest at register_timeout (1 s).
    for (what, stream, at, at_once) in &mut streams {
        let got = wait_closed(stream, Duration::from_secs(3));
        let after = at.elapsed();
        assert!(got.is_ok(), "{test}: {what}: the connection was not closed within 3 s");
        let ids = message_ids(&got.unwrap());
        assert!(ids.is_empty(), "{test}: {what}: regedge answered {ids:x?}");
        if *at_once {
            assert!(after < Duration::from_millis(700), "{test}: {what}: closed only after {after:?}");
        } else {
            assert!(after >= Duration::from_millis(700), "{test}: {what}: closed after {after:?}, before the timeout");
        }
        eprintln!("{test}: {what}: closed after {after:?}");
    }
    // The slowest: a Register one byte every 300 ms, never done within register_timeout.
    let mut slow = connect_in(&lab.phones, edge, Duration::from_millis(200)).expect("connect");
    let slow_started = Instant::now();
    let mut slow_closed_after = None;
    for byte in &register[..10] {
        use std::io::Write as _;
        if slow.write_all(std::slice::from_ref(byte)).is_err() {
            slow_closed_after = Some(slow_started.elapsed());
            break;
        }
        if wait_closed(&mut slow, Duration::from_millis(300)).is_ok() {
            slow_closed_after = Some(slow_started.elapsed());
            break;
        }
    }
    let slow_closed_after = slow_closed_after.expect("the slow Register was closed");
    assert!(
        slow_closed_after >= Duration::from_millis(800),
        "{test}: slow Register closed after {slow_closed_after:?}"
    );
    eprintln!("{test}: slow Register closed after {slow_closed_after:?}");

    let after = lab.metrics();
    let delta = |f: &dyn Fn(&Metrics) -> u64| f(&after) - f(&before);
    assert_eq!(delta(&|m| m.framing("bad_length")), 2, "{test}: bad data_length and oversize: {}", after.closes());
    assert_eq!(delta(&|m| m.framing("bad_header_version")), 1, "{test}: header version: {}", after.closes());
    assert_eq!(delta(&|m| m.closed("malformed")), 3, "{test}: {}", after.closes());
    assert_eq!(delta(&|m| m.closed("register_timeout")), 3, "{test}: {}", after.closes());

    // The registered phone never noticed.
    std::thread::sleep(Duration::from_millis(500));
    let now = phone.phone(0);
    assert!(now.registered && now.connects == 1 && now.closes == 0, "{test}: the phone was disturbed: {now:?}");
    assert!(now.keepalive_acks >= before_phone.keepalive_acks + 8, "{test}: keepalives stalled: {now:?}");
    assert!(now.keepalive_acks + 1 >= now.keepalives_sent, "{test}: keepalives unanswered: {now:?}");
    assert_eq!(lab.cm1.registered_count(), 1, "{test}: cm1 lost the phone");
    assert_eq!(after.sessions("registered"), 1, "{test}: regedge's count");
    assert_eq!(lab.metrics().closed("phone_closed"), before.closed("phone_closed"), "{test}: a session closed");
}
