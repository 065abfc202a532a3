//! The test harness against the real peer programs, with no regedge in between: Kamailio
//! as the registrar in one namespace; sipp fleets, baresip and plain UDP sockets as phones
//! in another, joined by a veth pair. Proves that the harness starts, drives, reads and
//! stops them, so tests through regedge can trust it.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use regedge_tests::{
    baresip::{Baresip, BaresipOpts},
    kamailio::{Kamailio, KamailioOpts},
    netns::VethPair,
    privilege::require_peers,
    sipp::{FleetOpts, FleetSummary, Sipp, Transport, user_mac, user_names},
};

/// Kamailio in the proxy namespace of a veth pair. Drop order: Kamailio, then the
/// namespaces.
struct Lab {
    kamailio: Kamailio,
    veth: VethPair,
}

impl Lab {
    fn start(opts: KamailioOpts) -> Self {
        let veth = VethPair::new();
        let kamailio = Kamailio::start(&veth.proxy, veth.proxy_v4, opts);
        Self { kamailio, veth }
    }

    fn phone_ip(&self) -> IpAddr {
        self.veth.phone_v4.into()
    }
}

/// Root and the programs the test runs (SKIPPED without them, a failure under CI).
fn assert_fleet_ok(summary: &FleetSummary, users: u32, kamailio: &Kamailio) {
    assert!(
        summary.all_ok(users),
        "sipp fleet of {users} did not succeed: {summary:#?}\nkamailio log:\n{}",
        kamailio.log()
    );
}

/// A fleet registers and refreshes; Kamailio counted every REGISTER and holds one
/// binding per phone, with the phone's Call-ID, last CSeq and instance.
fn fleet_registers_and_refreshes(test: &str, transport: Transport, count: u32, first_user: u32) {
    if !require_peers(test, &["sipp"]) {
        return;
    }
    let started = Instant::now();
    let lab = Lab::start(KamailioOpts::default());
    let opts = FleetOpts {
        users: count,
        first_user,
        transport,
        expires: 30,
        refreshes: 2,
        refresh_interval: Duration::from_secs(1),
        rate: 1000,
        timeout: Duration::from_secs(40),
        ..FleetOpts::default()
    };
    let summary = Sipp::register_fleet(&lab.veth.phone, lab.phone_ip(), lab.kamailio.sip_addr(), &opts);
    assert_fleet_ok(&summary, count, &lab.kamailio);
    let registers = u64::from(count) * 3;
    assert_eq!(summary.requests_sent, registers, "{summary:#?}");
    assert_eq!(summary.responses, registers, "{summary:#?}");

    let stats = lab.kamailio.stats();
    let stat = |name: &str| stats.get(name).copied().unwrap_or_else(|| panic!("no counter {name}"));
    // Every REGISTER sipp sent, retransmissions included, reached Kamailio.
    assert_eq!(stat("core:rcv_requests_register"), summary.requests_sent + summary.retransmissions);
    assert!(stat("registrar:accepted_regs") >= registers, "{stats:?}");
    assert_eq!(stat("registrar:rejected_regs"), 0);
    assert_eq!(stat("usrloc:location_users"), u64::from(count));
    assert_eq!(stat("usrloc:location_contacts"), u64::from(count));

    let contacts = lab.kamailio.contacts();
    let aors: BTreeSet<String> = contacts.iter().map(|b| b.aor.clone()).collect();
    assert_eq!(aors, user_names(first_user, count), "ul.dump AORs");
    assert_eq!(contacts.len(), count as usize, "one contact per phone");
    let call_ids: BTreeSet<&str> = contacts.iter().map(|b| b.call_id.as_str()).collect();
    assert_eq!(call_ids.len(), count as usize, "one Call-ID per phone");
    let socket_prefix = format!("{}:{}:5060", transport.as_str(), lab.veth.proxy_v4);
    for b in &contacts {
        let n: u32 = b.aor.parse().expect("numeric user");
        assert_eq!(b.cseq, 3, "two refreshes after the first REGISTER: {b:?}");
        assert!(b.expires > 0 && b.expires <= 30, "{b:?}");
        assert_eq!(
            b.contact,
            format!("sip:{}@{}:5060;transport={}", b.aor, lab.veth.phone_v4, transport.as_str().to_uppercase())
        );
        assert_eq!(b.instance.as_deref(), Some(format!("<urn:uuid:00000000-0000-0000-0000-{}>", user_mac(n)).as_str()));
        assert_eq!(b.path, None);
        assert_eq!(b.socket, socket_prefix);
    }
    eprintln!(
        "{test}: {count} phones, {} REGISTERs in {:?} (whole test {:?})",
        summary.requests_sent,
        summary.elapsed,
        started.elapsed()
    );
}

#[test]
fn sipp_udp_fleet_registers_and_refreshes_at_kamailio() {
    fleet_registers_and_refreshes("sipp_udp_fleet_registers_and_refreshes_at_kamailio", Transport::Udp, 1000, 100_000);
}

#[test]
fn sipp_tcp_fleet_registers_and_refreshes_at_kamailio() {
    fleet_registers_and_refreshes("sipp_tcp_fleet_registers_and_refreshes_at_kamailio", Transport::Tcp, 200, 200_000);
}

/// With digest auth required, sipp answers the one challenge per phone and reuses the
/// nonce on the refresh; a fleet with the wrong password registers nobody; unregister
/// removes the bindings.
#[test]
fn sipp_fleet_answers_kamailio_digest_challenge() {
    let test = "sipp_fleet_answers_kamailio_digest_challenge";
    if !require_peers(test, &["sipp"]) {
        return;
    }
    let lab = Lab::start(KamailioOpts::default().with_auth("s3cret-pw"));
    let target = lab.kamailio.sip_addr();
    let good = FleetOpts {
        users: 100,
        first_user: 300_000,
        expires: 60,
        refreshes: 1,
        refresh_interval: Duration::from_millis(500),
        rate: 500,
        timeout: Duration::from_secs(30),
        password: Some("s3cret-pw".into()),
        ..FleetOpts::default()
    };
    let summary = Sipp::register_fleet(&lab.veth.phone, lab.phone_ip(), target, &good);
    assert_fleet_ok(&summary, good.users, &lab.kamailio);
    // Per phone: REGISTER → 401, REGISTER with credentials → 200, refresh with
    // credentials (same nonce) → 200.
    assert_eq!(summary.requests_sent, 300, "{summary:#?}");
    let stats = lab.kamailio.stats();
    assert_eq!(stats["sl:401_replies"], 100, "{stats:?}");
    assert_eq!(stats["registrar:accepted_regs"], 200 + summary.retransmissions, "{stats:?}");
    assert_eq!(lab.kamailio.registered_aors().into_iter().collect::<BTreeSet<_>>(), user_names(300_000, 100));

    let bad = FleetOpts {
        users: 5,
        first_user: 400_000,
        password: Some("wrong".into()),
        local_port: 5070,
        timeout: Duration::from_secs(20),
        ..good.clone()
    };
    let summary = Sipp::register_fleet(&lab.veth.phone, lab.phone_ip(), target, &bad);
    assert_eq!((summary.successful, summary.failed), (0, 5), "{summary:#?}");
    assert_ne!(summary.exit_code, Some(0));
    assert_eq!(lab.kamailio.registered_aors().len(), 100, "a wrong password registered someone");

    let summary = Sipp::unregister_fleet(&lab.veth.phone, lab.phone_ip(), target, &good);
    assert_fleet_ok(&summary, good.users, &lab.kamailio);
    assert_eq!(lab.kamailio.registered_aors(), Vec::<String>::new(), "unregister left bindings");
}

/// baresip registers through its outbound proxy (Kamailio here), over UDP and over TCP,
/// and unregisters when stopped.
#[test]
fn baresip_registers_at_kamailio() {
    let test = "baresip_registers_at_kamailio";
    if !require_peers(test, &["baresip"]) {
        return;
    }
    let lab = Lab::start(KamailioOpts::default());
    let domain = lab.veth.proxy_v4.to_string();
    let mut alice = Baresip::start(&lab.veth.phone, "alice", &domain, lab.kamailio.sip_addr());
    let bob_opts =
        BaresipOpts { transport: Transport::Tcp, ..BaresipOpts::new("bob", &domain, lab.kamailio.sip_addr()) };
    let mut bob = Baresip::start_with(&lab.veth.phone, &bob_opts);
    for phone in [&mut alice, &mut bob] {
        let line = phone.wait_registered(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{test}: {line}");
    }
    let contacts = lab.kamailio.contacts();
    for (user, transport) in [("alice", "udp"), ("bob", "tcp")] {
        let found: Vec<_> = contacts.iter().filter(|b| b.aor == user).collect();
        assert_eq!(found.len(), 1, "{contacts:?}");
        assert!(found[0].contact.contains(&format!("@{}:", lab.veth.phone_v4)), "{:?}", found[0]);
        assert_eq!(found[0].socket, format!("{transport}:{}:5060", lab.veth.proxy_v4), "{:?}", found[0]);
    }

    alice.stop(Duration::from_secs(5));
    bob.stop(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !lab.kamailio.registered_aors().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lab.kamailio.registered_aors(), Vec::<String>::new(), "baresip did not unregister on SIGTERM");
}

/// Plain UDP: OPTIONS health probe answered 200; a REGISTER with Path is stored with its
/// Path, and a request to the user is routed through the Path; after kill() nothing
/// answers, after restart() the probe is answered again and the table is empty.
#[test]
fn kamailio_probe_path_kill_and_restart() {
    let test = "kamailio_probe_path_kill_and_restart";
    if !require_peers(test, &[]) {
        return;
    }
    let mut lab = Lab::start(KamailioOpts::default());
    let phone = lab.veth.phone_v4;
    let registrar = lab.kamailio.sip_addr();
    let (probe, edge) = lab.veth.phone.run(|| {
        let bind = |port| {
            let s = UdpSocket::bind(SocketAddr::new(phone.into(), port)).expect("bind");
            s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
            s
        };
        (bind(5090), bind(5070))
    });

    let options = |socket: &UdpSocket, branch: &str| -> Option<String> {
        let local = socket.local_addr().unwrap();
        let msg = format!(
            "OPTIONS sip:{registrar} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p{branch}\r\nTo: <sip:{registrar}>\r\n\
             Call-ID: {branch}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        socket.send_to(msg.as_bytes(), registrar).unwrap();
        recv(socket)
    };
    let reply = options(&probe, "probe1").expect("no reply to OPTIONS");
    assert!(reply.starts_with("SIP/2.0 200 OK"), "{reply}");

    // REGISTER as an edge proxy would forward it: Path pointing at the edge.
    let register = format!(
        "REGISTER sip:{ip} SIP/2.0\r\nVia: SIP/2.0/UDP {phone}:5070;branch=z9hG4bKreg1\r\n\
         Max-Forwards: 69\r\nFrom: <sip:bob@{ip}>;tag=r1\r\nTo: <sip:bob@{ip}>\r\nCall-ID: reg1@bob\r\n\
         CSeq: 1 REGISTER\r\nPath: <sip:{phone}:5070;lr>\r\nSupported: path\r\n\
         Contact: <sip:bob@{phone}:5080>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n",
        ip = lab.veth.proxy_v4
    );
    edge.send_to(register.as_bytes(), registrar).unwrap();
    let reply = recv(&edge).expect("no reply to REGISTER");
    assert!(reply.starts_with("SIP/2.0 200 OK"), "{reply}");
    assert!(reply.contains(&format!("Path: <sip:{phone}:5070;lr>")), "Path not echoed with Supported: path:\n{reply}");
    let contacts = lab.kamailio.contacts();
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert_eq!(contacts[0].aor, "bob");
    assert_eq!(contacts[0].path.as_deref(), Some(format!("<sip:{phone}:5070;lr>").as_str()));

    // A request to bob goes to the Path (the edge), with the Path as Route.
    let local = probe.local_addr().unwrap();
    let to_bob = format!(
        "OPTIONS sip:bob@{ip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKtobob\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=t1\r\nTo: <sip:bob@{ip}>\r\nCall-ID: tobob@probe\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        ip = lab.veth.proxy_v4
    );
    probe.send_to(to_bob.as_bytes(), registrar).unwrap();
    let forwarded = recv(&edge).expect("request to bob did not reach the Path");
    assert!(forwarded.starts_with(&format!("OPTIONS sip:bob@{phone}:5080 SIP/2.0")), "{forwarded}");
    assert!(forwarded.contains(&format!("Route: <sip:{phone}:5070;lr>")), "{forwarded}");

    // A crash: nothing answers, the control socket is gone.
    let pid = lab.kamailio.pid();
    lab.kamailio.kill();
    assert!(!lab.kamailio.is_running());
    assert!(lab.kamailio.kamcmd(&["core.version"]).is_err());
    assert_eq!(options(&probe, "probe2"), None, "killed Kamailio (pid {pid}) still answers");

    lab.kamailio.restart();
    assert_ne!(lab.kamailio.pid(), pid);
    let reply = options(&probe, "probe3").expect("no reply to OPTIONS after restart");
    assert!(reply.starts_with("SIP/2.0 200 OK"), "{reply}");
    assert_eq!(lab.kamailio.registered_aors(), Vec::<String>::new(), "usrloc survived a restart");
}

/// The next SIP message on `socket` (skipping 100 Trying), or `None` after its timeout.
fn recv(socket: &UdpSocket) -> Option<String> {
    let mut buf = [0u8; 65536];
    loop {
        let n = socket.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("SIP/2.0 100 ") {
            return Some(text);
        }
    }
}
