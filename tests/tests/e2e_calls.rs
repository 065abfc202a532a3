//! End-to-end: calls through regedge. Two phones register through regedge to a real
//! Kamailio that routes calls between its users (`lookup("location")` + `t_relay`, Path
//! stored and used); a call is set up, confirmed and torn down through regedge both ways:
//! phone → regedge → Kamailio → regedge (by the Path flow token) → phone, and the ACK and
//! BYE by the Record-Route regedge put in. Three namespaces: phones —veth— regedge —veth—
//! Kamailio.
//!
//! Checked from both ends (sipp's own verdict per phone, baresip's log), in regedge's
//! /metrics (requests routed each way, by method), and on the wire: tshark on both sides
//! of regedge decodes every SIP message without a malformed-packet report.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use regedge_tests::{
    baresip::{Baresip, BaresipOpts},
    kamailio::{Kamailio, KamailioOpts},
    netns::NetNs,
    privilege::require_peers,
    process::{MetricsText, Regedge, TempDir, scrape},
    sipp::{CallOpts, FleetSummary, Sipp, Transport},
    tshark::{Capture, Captured},
};

const METRICS: &str = "127.0.0.1:9100";
const SIP_PORT: u16 = 5060;
const DOMAIN: &str = "calls.example.net";

/// Picks the subnets of one test: phones 10.214.<n>.0/24, backend 10.215.<n>.0/24.
static SUBNET: AtomicU32 = AtomicU32::new(0);

struct Lab {
    regedge: Regedge,
    cm: Kamailio,
    dir: TempDir,
    phones: NetNs,
    proxy: NetNs,
    backends: NetNs,
    phone_ip: Ipv4Addr,
    edge: SocketAddr,
    edge_backend_side: Ipv4Addr,
    cm_ip: Ipv4Addr,
}

/// How a lab is set up.
#[derive(Clone, Copy, Default)]
struct LabOpts {
    /// The XDP program attached (generic mode) to regedge's phone-side interface: call
    /// signalling passes it on to the event loops.
    xdp: bool,
    /// Kamailio ignores Path; regedge rewrites contacts instead (`[[backends]] path = false`).
    without_path: bool,
}

impl Lab {
    fn start(test: &str) -> Self {
        Self::start_with(test, LabOpts::default())
    }

    fn start_with(test: &str, opts: LabOpts) -> Self {
        let n = (SUBNET.fetch_add(1, Ordering::Relaxed) % 250) as u8;
        let phone_ip = Ipv4Addr::new(10, 214, n, 2);
        let edge_ip = Ipv4Addr::new(10, 214, n, 1);
        let edge_backend_side = Ipv4Addr::new(10, 215, n, 1);
        let cm_ip = Ipv4Addr::new(10, 215, n, 11);
        let phones = NetNs::new("phones");
        let proxy = NetNs::new("edge");
        let backends = NetNs::new("cms");
        phones.link("rgph0", &phone_ip.to_string(), &proxy, "rgpp0", &edge_ip.to_string(), 24);
        proxy.link("rgpb0", &edge_backend_side.to_string(), &backends, "rgbk0", &cm_ip.to_string(), 24);
        backends.route(&format!("10.214.{n}.0/24"), &edge_backend_side.to_string());
        let cm = Kamailio::start(
            &backends,
            cm_ip,
            KamailioOpts { children: 2, without_path: opts.without_path, ..KamailioOpts::default() },
        );
        let fastpath = if opts.xdp {
            "[fastpath]\ninterfaces = [\"rgpp0\"]\nmode = \"generic\"\npin_path = \"\"\n"
        } else {
            "[fastpath]\nmode = \"off\"\n"
        };
        let dir = TempDir::new(test);
        let edge = SocketAddr::new(edge_ip.into(), SIP_PORT);
        let config = dir.write(
            "regedge.toml",
            &format!(
                "[node]\nname = \"calls\"\nworkers = 2\nstate_dir = \"\"\n\n[sip]\nlisten = [\"{edge}\"]\n\n\
                 {fastpath}\n[registration]\nphone_expires = 60\nbackend_expires = 600\n\n\
                 [health]\ninterval = \"1s\"\ntimeout = \"500ms\"\n\n[metrics]\nlisten = \"{METRICS}\"\n\n\
                 [[backends]]\nname = \"cm1\"\naddress = \"{}\"\npath = {}\n\n[[groups]]\nname = \"default\"\nbackends = [\"cm1\"]\n",
                cm.sip_addr(),
                !opts.without_path
            ),
        );
        let mut regedge = Regedge::start(Some(&proxy), &config, dir.0.join("regedge.log"));
        if let Err(err) = regedge.wait_ready(METRICS.parse().unwrap(), Some(&proxy), Duration::from_secs(20)) {
            panic!("{test}: {err}");
        }
        Self { regedge, cm, dir, phones, proxy, backends, phone_ip, edge, edge_backend_side, cm_ip }
    }

    fn metrics(&self) -> MetricsText {
        MetricsText(scrape(METRICS.parse().unwrap(), Some(&self.proxy)).expect("scrape /metrics"))
    }

    fn routed(&self, method: &str, toward: &str) -> u64 {
        self.metrics().value("regedge_sip_routed_requests_total", &[("method", method), ("toward", toward)])
    }

    /// Waits until Kamailio holds a contact for `user` registered with `call_id` (a
    /// phone registered earlier by another sipp has another Call-ID and flow).
    fn wait_registered(&self, user: &str, call_id: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.cm.contacts().iter().any(|b| b.aor == user && b.call_id == call_id) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("{user} not registered at Kamailio after {timeout:?}\n--- regedge log:\n{}", self.regedge.log()))
    }

    /// Captures SIP (UDP and TCP port 5060) on regedge's phone side and backend side.
    fn capture(&self) -> [Capture; 2] {
        [
            Capture::start_filtered(
                &self.phones,
                "rgph0",
                "port 5060 or portrange 5070-5079",
                self.dir.0.join("phones.pcapng"),
                IpAddr::V4(self.phone_ip),
                self.edge.ip(),
            ),
            Capture::start_filtered(
                &self.backends,
                "rgbk0",
                "port 5060",
                self.dir.0.join("backends.pcapng"),
                IpAddr::V4(self.cm_ip),
                IpAddr::V4(self.edge_backend_side),
            ),
        ]
    }

    /// One call from `caller` to `callee`, both sipp phones on `transport`; the callee
    /// registers first. `during` runs while the call is up (between ACK and BYE).
    fn sipp_call(
        &self,
        test: &str,
        (caller, caller_port): (&str, u16),
        (callee, callee_port): (&str, u16),
        transport: Transport,
        during: impl FnOnce(),
    ) -> (FleetSummary, FleetSummary) {
        let call_id = format!("{test}-{caller}-{callee}");
        let phone = |user: &str, port: u16, calls: Option<&str>, hold: Duration| CallOpts {
            user: user.to_owned(),
            callee: calls.map(str::to_owned),
            domain: DOMAIN.to_owned(),
            transport,
            local_port: port,
            call_id: call_id.clone(),
            hold,
            timeout: Duration::from_secs(20),
        };
        let hold = Duration::from_millis(1500);
        let answering =
            Sipp::spawn_call(&self.phones, self.phone_ip.into(), self.edge, &phone(callee, callee_port, None, hold));
        if let Err(err) = self.wait_registered(callee, &call_id, Duration::from_secs(10)) {
            panic!("{test}: {err}\n--- callee's sipp:\n{}", answering.messages());
        }
        let calling = Sipp::spawn_call(
            &self.phones,
            self.phone_ip.into(),
            self.edge,
            &phone(caller, caller_port, Some(callee), hold),
        );
        std::thread::sleep(hold / 2 + Duration::from_millis(300));
        during();
        (calling.wait(), answering.wait())
    }
}

fn check_clean(test: &str, captured: &Captured, side: &str) -> usize {
    let malformed = captured.malformed();
    assert!(malformed.trim().is_empty(), "{test}: tshark reports malformed packets on the {side} side:\n{malformed}");
    captured.read("sip", &["sip.CSeq.method"]).lines().count()
}

fn assert_call_ok(test: &str, lab: &Lab, caller: &FleetSummary, callee: &FleetSummary) {
    assert!(
        caller.all_ok(1) && callee.all_ok(1),
        "{test}: caller {caller:?}\ncallee {callee:?}\n--- caller's messages:\n{}\n--- callee's messages:\n{}\n--- regedge:\n{}",
        caller.messages,
        callee.messages,
        lab.regedge.log()
    );
}

/// A call each way between two sipp phones over `transport`.
fn calls_both_ways(test: &str, transport: Transport, opts: LabOpts) {
    if !require_peers(test, &["sipp", "tshark"]) {
        return;
    }
    let lab = Lab::start_with(test, opts);
    let [phones_side, backend_side] = lab.capture();
    let (caller, callee) = lab.sipp_call(test, ("1001", 5071), ("1002", 5072), transport, || {});
    assert_call_ok(test, &lab, &caller, &callee);
    let (caller, callee) = lab.sipp_call(test, ("1002", 5072), ("1001", 5071), transport, || {});
    assert_call_ok(test, &lab, &caller, &callee);
    let (phones_side, backend_side) = (phones_side.finish(), backend_side.finish());

    // The INVITE went to the backend and came back to the callee's flow; ACK and BYE went
    // phone to phone by Record-Route; responses were relayed.
    // At least one each per call (a UDP retransmission under load is routed too).
    assert!(lab.routed("INVITE", "backend") >= 2 && lab.routed("INVITE", "phone") >= 2, "{test}: {}", lab.metrics().0);
    assert!(lab.routed("ACK", "phone") >= 2 && lab.routed("BYE", "phone") >= 2, "{test}: {}", lab.metrics().0);
    assert_eq!(lab.routed("BYE", "backend"), 0, "{test}: the backend did not record-route");
    let relayed = lab.metrics().value("regedge_sip_relayed_responses_total", &[]);
    assert!(relayed >= 8, "{test}: responses relayed: {relayed}");
    let on_phones = check_clean(test, &phones_side, "phones'");
    let on_backend = check_clean(test, &backend_side, "backend's");
    let invites = backend_side.read("sip.Method == \"INVITE\"", &["sip.r-uri", "sip.Route"]);
    if opts.without_path {
        // Kamailio sends to the contact it stored: a flow-token URI at regedge.
        assert!(
            invites.lines().any(|l| l.contains(&format!("@{};ob", lab.edge)) && !l.contains(";lr")),
            "{test}: Kamailio's INVITE goes to the rewritten contact:\n{invites}"
        );
    } else {
        assert!(
            invites.lines().any(|l| l.contains(";lr;ob")),
            "{test}: Kamailio's INVITE carries the Path:\n{invites}"
        );
    }
    if opts.xdp {
        let metrics = lab.metrics();
        assert_eq!(metrics.value("regedge_fastpath_attached", &[("mode", "generic")]), 1, "{test}");
        // INVITEs, ACKs, BYEs and responses: "not a keepalive", handed to the stack.
        let passed = metrics.value("regedge_fastpath_passed_total", &[("reason", "not_keepalive")]);
        assert!(passed >= 10, "{test}: call signalling passed by the XDP program: {passed}\n{}", metrics.0);
    }
    assert!(on_phones >= 16 && on_backend >= 8, "{test}: tshark decoded {on_phones} and {on_backend} SIP messages");
    eprintln!(
        "{test}: two calls over {}: {on_phones} SIP messages on the phones' side, {on_backend} on the backend's, all decoded",
        transport.as_str()
    );
}

/// Over UDP, with the XDP program on regedge's phone side (it answers keepalives and
/// refreshes, and passes everything else).
#[test]
fn calls_over_udp_both_ways() {
    calls_both_ways("calls_over_udp_both_ways", Transport::Udp, LabOpts { xdp: true, ..LabOpts::default() });
}

#[test]
fn calls_over_tcp_both_ways() {
    calls_both_ways("calls_over_tcp_both_ways", Transport::Tcp, LabOpts::default());
}

/// A call server that ignores Path: regedge gives it flow-token contacts, and the
/// requests it sends to them reach the phones.
#[test]
fn calls_through_a_backend_without_path() {
    let opts = LabOpts { without_path: true, ..LabOpts::default() };
    calls_both_ways("calls_through_a_backend_without_path", Transport::Udp, opts);
}

/// A call in progress survives a SIGHUP (config reload): the BYE after it still reaches
/// the callee through regedge, which keeps running.
#[test]
fn a_call_survives_a_reload() {
    let test = "a_call_survives_a_reload";
    if !require_peers(test, &["sipp"]) {
        return;
    }
    let mut lab = Lab::start(test);
    let pid = lab.regedge.pid();
    let (caller, callee) = lab.sipp_call(test, ("2001", 5073), ("2002", 5074), Transport::Udp, || {
        // SAFETY: signalling the regedge process this test started, by its PID.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    });
    assert!(lab.regedge.is_running(), "{test}: regedge exited on SIGHUP:\n{}", lab.regedge.log());
    assert_call_ok(test, &lab, &caller, &callee);
    assert!(lab.routed("BYE", "phone") >= 1, "{test}");
}

/// Sends `request` from a socket in `ns` bound to `from` and returns the response.
fn exchange(ns: &NetNs, from: SocketAddr, to: SocketAddr, request: &str) -> String {
    let socket = ns.run(|| UdpSocket::bind(from)).expect("bind");
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    socket.send_to(request.as_bytes(), to).expect("send");
    let mut buf = [0u8; 4096];
    let (len, _) = socket.recv_from(&mut buf).expect("an answer from regedge");
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

fn register_text(user: &str, port: u16, ip: Ipv4Addr, expires: u32, cseq: u32) -> String {
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:{port};branch=z9hG4bKreg{user}{cseq};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=r{user}\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: reg-{user}@{ip}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{ip}:{port}>\r\nExpires: {expires}\r\n\
         Supported: path\r\nContent-Length: 0\r\n\r\n"
    )
}

fn invite_text(route: &str, max_forwards: u32, from: SocketAddr) -> String {
    format!(
        "INVITE sip:3001@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKinv{max_forwards}{}\r\n\
         Route: {route}\r\nMax-Forwards: {max_forwards}\r\nFrom: <sip:x@{DOMAIN}>;tag=x\r\nTo: <sip:3001@{DOMAIN}>\r\n\
         Call-ID: refusal-{max_forwards}-{}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        route.len(),
        route.len()
    )
}

/// Forged and stale flow tokens, Max-Forwards 0 and a lapsed binding get their statuses;
/// the same request with a good token reaches the phone.
#[test]
fn refusals_have_their_statuses() {
    let test = "refusals_have_their_statuses";
    if !require_peers(test, &[]) {
        return;
    }
    let lab = Lab::start(test);
    let phone_addr = SocketAddr::new(lab.phone_ip.into(), 5075);
    let phone = lab.phones.run(|| UdpSocket::bind(phone_addr)).expect("bind the phone's socket");
    phone.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4096];
    let ask = |request: String| {
        let mut buf = [0u8; 4096];
        phone.send_to(request.as_bytes(), lab.edge).expect("send");
        let (len, _) = phone.recv_from(&mut buf).expect("an answer from regedge");
        String::from_utf8_lossy(&buf[..len]).into_owned()
    };
    let answer = ask(register_text("3001", 5075, lab.phone_ip, 600, 1));
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{test}: {answer}");
    let path = lab
        .cm
        .contacts()
        .into_iter()
        .find(|b| b.aor == "3001")
        .and_then(|b| b.path)
        .unwrap_or_else(|| panic!("{test}: Kamailio stored no Path for 3001"));
    // Requests from the backend's namespace, as a call server sends them.
    let backend = SocketAddr::new(lab.cm_ip.into(), 5090);
    let status = |request: String| {
        let answer = exchange(&lab.backends, backend, lab.edge, &request);
        answer.split("\r\n").next().unwrap_or_default().to_owned()
    };
    assert_eq!(status(invite_text(&path, 0, backend)), "SIP/2.0 483 Too Many Hops", "{test}");
    let token_start = path.find("sip:").expect("a SIP URI") + 4;
    let mut forged = path.clone().into_bytes();
    forged[token_start + 3] = if forged[token_start + 3] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(status(invite_text(&forged, 5, backend)), "SIP/2.0 430 Flow Failed", "{test}: {forged}");

    // The good token: the INVITE reaches the phone's socket, our Route gone.
    let socket = lab.backends.run(|| UdpSocket::bind(backend)).expect("bind");
    socket.send_to(invite_text(&path, 5, backend).as_bytes(), lab.edge).expect("send");
    let (len, from) = phone.recv_from(&mut buf).expect("the INVITE at the phone");
    let at_phone = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert!(at_phone.starts_with("INVITE sip:3001@") && !at_phone.contains("\r\nRoute:"), "{test}: {at_phone}");
    assert_eq!(from, lab.edge, "{test}: the INVITE comes from the address the phone registered to");
    drop(socket);

    // Unregistered: a new call gets 480.
    let answer = ask(register_text("3001", 5075, lab.phone_ip, 0, 2));
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{test}: {answer}");
    assert_eq!(status(invite_text(&path, 5, backend)), "SIP/2.0 480 Temporarily Unavailable", "{test}");
    let refused = lab.metrics();
    for (reason, count) in [("too_many_hops", 1), ("flow_failed", 1), ("binding_lapsed", 1)] {
        assert_eq!(refused.value("regedge_userspace_rejected_total", &[("reason", reason)]), count, "{test}: {reason}");
    }
}

/// baresip on either side: a sipp phone calls a baresip that answers by itself; then a
/// baresip (over TCP) dials that baresip, which answers, and hangs up.
#[test]
fn baresip_answers_and_calls() {
    let test = "baresip_answers_and_calls";
    if !require_peers(test, &["sipp", "baresip"]) {
        return;
    }
    let lab = Lab::start(test);
    let callee_opts = BaresipOpts { auto_answer: true, ..BaresipOpts::new("4002", DOMAIN, lab.edge) };
    let mut callee = Baresip::start_with(&lab.phones, &callee_opts);
    callee.wait_registered(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{test}: {e}"));

    let caller = CallOpts {
        user: "4001".into(),
        callee: Some("4002".into()),
        domain: DOMAIN.into(),
        transport: Transport::Udp,
        local_port: 5076,
        call_id: format!("{test}-1"),
        hold: Duration::from_millis(1000),
        timeout: Duration::from_secs(20),
    };
    let summary = Sipp::spawn_call(&lab.phones, lab.phone_ip.into(), lab.edge, &caller).wait();
    assert!(
        summary.all_ok(1),
        "{test}: sipp → baresip: {summary:?}\n--- sipp:\n{}\n--- baresip:\n{}\n--- regedge:\n{}",
        summary.messages,
        callee.log(),
        lab.regedge.log()
    );
    callee.wait_log("terminated", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{test}: {e}"));

    let dialer_opts = BaresipOpts {
        transport: Transport::Tcp,
        control_port: Some(4450),
        ..BaresipOpts::new("4003", DOMAIN, lab.edge)
    };
    let mut dialer = Baresip::start_with(&lab.phones, &dialer_opts);
    dialer.wait_registered(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{test}: {e}"));
    dialer.command(&lab.phones, "dial", &format!("sip:4002@{DOMAIN}")).unwrap_or_else(|e| panic!("{test}: {e}"));
    dialer.wait_log("Call established", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{test}: {e}"));
    std::thread::sleep(Duration::from_millis(500));
    dialer.command(&lab.phones, "hangup", "").unwrap_or_else(|e| panic!("{test}: {e}"));
    // The dialer's BYE reaches the callee through regedge (the callee's log may say the
    // session closed first: the dialer's RTP port is gone and ICMP says so).
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.routed("BYE", "phone") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lab.routed("BYE", "phone") >= 2, "{test}: both BYEs reach the callee\n{}", lab.regedge.log());
    assert!(callee.log().contains("Call established: sip:4003@"), "{test}: {}", callee.log());
    assert!(lab.routed("INVITE", "phone") >= 2 && lab.routed("INVITE", "backend") >= 2, "{test}");
}
