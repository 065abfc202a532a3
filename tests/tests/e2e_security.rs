//! End-to-end: nobody rides regedge's registration cache. A refresh is absorbed only from
//! the flow that registered, with its Call-ID and a higher CSeq — in regedge's event loops
//! and in the XDP program; the OpenSIPS auth holes (#3193, #2536, #1156) stay closed
//! against a Kamailio that requires digest authentication; the admin API is not reachable
//! from the phones' side by default, and off loopback it takes the token.
//!
//! Phones here are hand-made REGISTERs on UDP sockets in the phones' namespace (so that a
//! test can send from any flow it likes), in the lab of `regedge_tests::edge_lab`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use regedge_tests::{
    edge_lab::{EdgeConfig, EdgeLab},
    netns::NetNs,
    privilege::require_peers,
    process::{MetricsText, Regedge, TempDir},
};

static BRANCH: AtomicU32 = AtomicU32::new(1);

/// A hand-made Cisco SIP phone: one AOR, one device, one Call-ID, sending from `socket`.
#[derive(Clone)]
struct Phone {
    user: String,
    mac: String,
    call_id: String,
    domain: IpAddr,
}

impl Phone {
    fn new(user: &str, mac: &str, domain: IpAddr) -> Self {
        Self { user: user.to_owned(), mac: mac.to_owned(), call_id: format!("sec-{user}-{mac}"), domain }
    }

    /// The REGISTER with `cseq` as sent from `local`, with `extra` headers.
    fn register(&self, local: SocketAddr, cseq: u32, extra: &str) -> String {
        let branch = BRANCH.fetch_add(1, Ordering::Relaxed);
        let (user, mac, domain) = (&self.user, &self.mac, self.domain);
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-sec{branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=t{mac}\r\nTo: <sip:{user}@{domain}>\r\n\
             Call-ID: {}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{local}>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-{mac}>\";\
             +u.sip!devicename.ccm.cisco.com=\"SEP{mac}\"\r\nExpires: 120\r\n{extra}Content-Length: 0\r\n\r\n",
            self.call_id
        )
    }
}

/// A UDP socket in the phones' namespace.
fn socket(ns: &NetNs, local: SocketAddr) -> UdpSocket {
    let socket = ns.run(|| UdpSocket::bind(local)).unwrap_or_else(|e| panic!("bind {local}: {e}"));
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    socket
}

/// Sends `request` from `socket` to `edge` and returns the final response (1xx skipped),
/// or "" when none came within 3 s.
fn exchange(socket: &UdpSocket, edge: SocketAddr, request: &str) -> String {
    let call_id = request.lines().find_map(|l| l.strip_prefix("Call-ID: ")).expect("Call-ID").to_owned();
    let cseq = request.lines().find_map(|l| l.strip_prefix("CSeq: ")).expect("CSeq").to_owned();
    socket.send_to(request.as_bytes(), edge).expect("send");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 8192];
    while Instant::now() < deadline {
        let Ok(n) = socket.recv(&mut buf) else { continue };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let ours = text.contains(&format!("Call-ID: {call_id}\r\n")) && text.contains(&format!("CSeq: {cseq}\r\n"));
        if ours && !text.starts_with("SIP/2.0 1") {
            return text;
        }
    }
    String::new()
}

fn status(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// (userspace absorbed, kernel register replies, forwarded + rejected + challenged).
fn absorbed(m: &MetricsText) -> (u64, u64, u64) {
    let outcome = |o| m.value("regedge_registrations_total", &[("protocol", "sip"), ("outcome", o)]);
    let kernel = m.get("regedge_fastpath_replies_total", &[("kind", "register")]).unwrap_or(0);
    (outcome("absorbed"), kernel, outcome("forwarded") + outcome("rejected") + outcome("rate_limited"))
}

fn passed(m: &MetricsText, reason: &str) -> u64 {
    m.get("regedge_fastpath_passed_total", &[("reason", reason)]).unwrap_or(0)
}

/// The phones' address `host` in the lab's phone subnet (the lab's phone is .2).
fn phone_subnet_addr(lab: &EdgeLab, host: u8) -> Ipv4Addr {
    let [a, b, c, _] = lab.phone_ip.octets();
    Ipv4Addr::new(a, b, c, host)
}

/// Two phones register (A and B, each from its own port); each refresh from its own flow
/// is absorbed (in the kernel when `xdp`). Then, with higher CSeqs each time so that only
/// the flow or the CSeq can be what refuses them: A's CSeq replayed from A's flow, A's
/// refresh from B's flow (A's Call-ID on another phone's flow), from another port and
/// from another address of the phones' namespace. None may be absorbed, in userspace or
/// in the kernel: each is forwarded to the backend or rejected.
fn refresh_is_absorbed_only_from_its_flow(test: &str, xdp: bool) {
    if !require_peers(test, &[]) {
        return;
    }
    let lab = EdgeLab::start(test, &EdgeConfig { xdp, ..EdgeConfig::default() });
    let edge = lab.edge;
    let a = Phone::new("701", "00AA00000701", edge.ip());
    let b = Phone::new("702", "00AA00000702", edge.ip());
    let a_flow = SocketAddr::new(lab.phone_ip.into(), 15061);
    let b_flow = SocketAddr::new(lab.phone_ip.into(), 15062);
    let (a_socket, b_socket) = (socket(&lab.phones, a_flow), socket(&lab.phones, b_flow));
    for (phone, s, local) in [(&a, &a_socket, a_flow), (&b, &b_socket, b_flow)] {
        let answer = exchange(s, edge, &phone.register(local, 1, ""));
        assert!(
            status(&answer).starts_with("SIP/2.0 200"),
            "{test}: {} did not register: {answer}\n{}",
            phone.user,
            lab.log()
        );
    }
    if xdp {
        let mirrored = lab.wait_for("both bindings in the kernel mirror", Duration::from_secs(5), || {
            lab.metrics().value("regedge_fastpath_bindings", &[]) == 2
        });
        eprintln!("{test}: both bindings mirrored into the kernel after {mirrored:?}");
    }
    // Their own refreshes are absorbed (where the test expects them).
    let before = absorbed(&lab.metrics());
    let mut a_refresh = String::new();
    for (phone, s, local) in [(&a, &a_socket, a_flow), (&b, &b_socket, b_flow)] {
        let refresh = phone.register(local, 2, "");
        let answer = exchange(s, edge, &refresh);
        assert!(status(&answer).starts_with("SIP/2.0 200"), "{test}: {}'s refresh: {answer}", phone.user);
        if phone.user == a.user {
            a_refresh = refresh;
        }
    }
    let after = absorbed(&lab.metrics());
    let (user, kernel) = (after.0 - before.0, after.1 - before.1);
    if xdp {
        assert_eq!((user, kernel), (0, 2), "{test}: the legitimate refreshes are answered in the kernel");
    } else {
        assert_eq!((user, kernel), (2, 0), "{test}: the legitimate refreshes are absorbed in userspace");
    }

    let other_port = SocketAddr::new(lab.phone_ip.into(), 15099);
    let other_ip = phone_subnet_addr(&lab, 3);
    lab.phones.ip(&["addr", "add", &format!("{other_ip}/24"), "dev", "rgph0"]);
    let other_addr = SocketAddr::new(other_ip.into(), 15061);
    let (port_socket, addr_socket) = (socket(&lab.phones, other_port), socket(&lab.phones, other_addr));
    let passes_before = (passed(&lab.metrics(), "register_other_flow"), passed(&lab.metrics(), "register_old_cseq"));
    // A's last refresh again. Userspace answered it (no XDP): the same bytes are a
    // retransmission and are answered again, changing nothing and sending nothing upstream.
    // The kernel answered it (XDP): never answered in the kernel (it needs a higher CSeq),
    // and userspace, which does not know that request's Via, lets the backend judge it.
    if !xdp {
        let before = absorbed(&lab.metrics());
        let again = exchange(&a_socket, edge, &a_refresh);
        std::thread::sleep(Duration::from_millis(200));
        let after = absorbed(&lab.metrics());
        eprintln!("{test}: A's CSeq 2 retransmitted: {:?}", status(&again));
        assert!(status(&again).starts_with("SIP/2.0 200"), "{test}: a retransmission: {again}");
        assert_eq!(after.2, before.2, "{test}: a retransmission of an absorbed refresh went upstream");
    }
    // A's last CSeq in a new transaction (a new Via branch): a replay, never absorbed.
    let before = absorbed(&lab.metrics());
    let replay = exchange(&a_socket, edge, &a.register(a_flow, 2, ""));
    std::thread::sleep(Duration::from_millis(200));
    let after = absorbed(&lab.metrics());
    eprintln!(
        "{test}: A's CSeq 2 again in a new transaction from A's flow: {:?}; +{} userspace, +{} kernel, \
         +{} forwarded or refused",
        status(&replay),
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2
    );
    assert_eq!((after.0, after.1), (before.0, before.1), "{test}: a replayed CSeq was absorbed: {replay}");
    assert!(after.2 > before.2, "{test}: a replayed CSeq was neither forwarded nor refused: {replay}");
    if !xdp {
        assert!(status(&replay).starts_with("SIP/2.0 400 CSeq Out Of Order"), "{test}: {replay}");
    }
    let attacks: [(&str, &UdpSocket, SocketAddr, u32); 4] = [
        ("A's CSeq 1 replayed from A's flow", &a_socket, a_flow, 1),
        ("A's refresh (its Call-ID) from B's flow", &b_socket, b_flow, 3),
        ("A's refresh from another port", &port_socket, other_port, 4),
        ("A's refresh from another address", &addr_socket, other_addr, 5),
    ];
    for (what, s, local, cseq) in attacks {
        let before = absorbed(&lab.metrics());
        let answer = exchange(s, edge, &a.register(local, cseq, ""));
        // A forwarded request's answer is relayed, and counted once it is in.
        std::thread::sleep(Duration::from_millis(200));
        let after = absorbed(&lab.metrics());
        eprintln!(
            "{test}: {what}: answered {:?}; absorbed +{} userspace, +{} kernel; forwarded or refused +{}",
            status(&answer),
            after.0 - before.0,
            after.1 - before.1,
            after.2 - before.2
        );
        assert_eq!(after.0, before.0, "{test}: {what} was absorbed in userspace: {answer}");
        assert_eq!(after.1, before.1, "{test}: {what} was answered in the kernel: {answer}");
        assert!(after.2 > before.2, "{test}: {what} was neither forwarded nor refused: {answer}\n{}", lab.log());
    }
    if xdp {
        let m = lab.metrics();
        let other_flow = passed(&m, "register_other_flow") - passes_before.0;
        let old_cseq = passed(&m, "register_old_cseq") - passes_before.1;
        eprintln!(
            "{test}: the XDP program passed {other_flow} as register_other_flow, {old_cseq} as register_old_cseq"
        );
        assert!(
            other_flow >= 3 && old_cseq >= 1,
            "{test}: kernel pass reasons: other_flow {other_flow}, old_cseq {old_cseq}"
        );
    }
}

#[test]
fn refresh_is_absorbed_only_from_its_flow_in_userspace() {
    refresh_is_absorbed_only_from_its_flow("refresh_is_absorbed_only_from_its_flow_in_userspace", false);
}

#[test]
fn refresh_is_absorbed_only_from_its_flow_in_the_kernel() {
    refresh_is_absorbed_only_from_its_flow("refresh_is_absorbed_only_from_its_flow_in_the_kernel", true);
}

/// MD5 in hex, by coreutils' `md5sum` (the tests crate has no MD5 of its own).
fn md5_hex(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run md5sum");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to md5sum");
    let out = child.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("md5sum output").to_owned()
}

/// The quoted `name` parameter of the WWW-Authenticate header of `challenge`.
fn challenge_param(challenge: &str, name: &str) -> String {
    let header = challenge.lines().find(|l| l.starts_with("WWW-Authenticate:")).expect("WWW-Authenticate");
    let start = header.find(&format!("{name}=\"")).unwrap_or_else(|| panic!("no {name} in {header}")) + name.len() + 2;
    header[start..].split('"').next().expect("quoted").to_owned()
}

/// An Authorization header answering `challenge` as `auth_user` with `password`.
fn authorization(challenge: &str, auth_user: &str, password: &str, uri: &str) -> String {
    let (realm, nonce) = (challenge_param(challenge, "realm"), challenge_param(challenge, "nonce"));
    let ha1 = md5_hex(&format!("{auth_user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("REGISTER:{uri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
    format!(
        "Authorization: Digest username=\"{auth_user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5\r\n"
    )
}

/// The OpenSIPS registration-cache holes against a Kamailio that requires digest auth:
/// - #3193: a second device of an AOR that is registered (and cached) registers without
///   credentials: it is forwarded and challenged, never answered from the cache;
/// - #2536: a REGISTER the backend refuses (403: credentials of another user) saves
///   nothing, at the backend or in regedge, and a refresh of it is not absorbed;
/// - #1156: a renewal carrying Authorization goes to the backend (not absorbed), and the
///   backend keeps the user.
#[test]
fn opensips_auth_holes_stay_closed_against_a_digest_registrar() {
    let test = "opensips_auth_holes_stay_closed_against_a_digest_registrar";
    if !require_peers(test, &[]) {
        return;
    }
    let password = "regedge-secret";
    let lab = EdgeLab::start(test, &EdgeConfig { backend_password: Some(password.into()), ..EdgeConfig::default() });
    let edge = lab.edge;
    let uri = format!("sip:{}", edge.ip());
    let alice = Phone::new("801", "00BB00000801", edge.ip());
    let a_flow = SocketAddr::new(lab.phone_ip.into(), 16061);
    let a_socket = socket(&lab.phones, a_flow);

    // Alice registers with digest auth: 401, then 200.
    let challenge = exchange(&a_socket, edge, &alice.register(a_flow, 1, ""));
    assert!(status(&challenge).starts_with("SIP/2.0 401"), "{test}: no challenge: {challenge}\n{}", lab.log());
    let ok = exchange(&a_socket, edge, &alice.register(a_flow, 2, &authorization(&challenge, "801", password, &uri)));
    assert!(status(&ok).starts_with("SIP/2.0 200"), "{test}: alice not registered: {ok}\n{}", lab.log());
    // Her plain refresh is absorbed: the cache is in use.
    let before = absorbed(&lab.metrics());
    let refresh = exchange(&a_socket, edge, &alice.register(a_flow, 3, ""));
    assert!(status(&refresh).starts_with("SIP/2.0 200"), "{test}: {refresh}");
    assert_eq!(absorbed(&lab.metrics()).0, before.0 + 1, "{test}: alice's refresh is absorbed");
    let registers_at_cm1 = || lab.cm1.stat("core:rcv_requests_register");

    // #3193: a second device of alice's AOR, no credentials.
    let second = Phone::new("801", "00BB00000899", edge.ip());
    let second_flow = SocketAddr::new(lab.phone_ip.into(), 16062);
    let second_socket = socket(&lab.phones, second_flow);
    let (before, cm1_before) = (absorbed(&lab.metrics()), registers_at_cm1());
    let answer = exchange(&second_socket, edge, &second.register(second_flow, 1, ""));
    let after = absorbed(&lab.metrics());
    eprintln!("{test}: #3193 second device without credentials: {:?}", status(&answer));
    assert!(status(&answer).starts_with("SIP/2.0 401"), "{test}: #3193: the second device got {answer}");
    assert_eq!((after.0, after.1), (before.0, before.1), "{test}: #3193: answered from the cache");
    assert_eq!(registers_at_cm1(), cm1_before + 1, "{test}: #3193: the REGISTER did not reach cm1");
    let contacts: Vec<_> = lab.cm1.contacts().into_iter().filter(|b| b.aor == "801").collect();
    assert_eq!(contacts.len(), 1, "{test}: #3193: contacts of 801 at cm1: {contacts:?}");

    // #2536: mallory registers as 802 with 801's credentials: Kamailio says 403.
    let mallory = Phone::new("802", "00BB00000802", edge.ip());
    let m_flow = SocketAddr::new(lab.phone_ip.into(), 16063);
    let m_socket = socket(&lab.phones, m_flow);
    let challenge = exchange(&m_socket, edge, &mallory.register(m_flow, 1, ""));
    assert!(status(&challenge).starts_with("SIP/2.0 401"), "{test}: #2536: {challenge}");
    let bindings_before = lab.metrics().value("regedge_bindings", &[("protocol", "sip")]);
    let refused =
        exchange(&m_socket, edge, &mallory.register(m_flow, 2, &authorization(&challenge, "801", password, &uri)));
    eprintln!("{test}: #2536 REGISTER with another user's credentials: {:?}", status(&refused));
    assert!(status(&refused).starts_with("SIP/2.0 403"), "{test}: #2536: {refused}");
    assert_eq!(
        lab.metrics().value("regedge_bindings", &[("protocol", "sip")]),
        bindings_before,
        "{test}: #2536: cached"
    );
    assert!(lab.cm1.contacts().iter().all(|b| b.aor != "802"), "{test}: #2536: 802 saved at cm1");
    let before = absorbed(&lab.metrics());
    let again = exchange(&m_socket, edge, &mallory.register(m_flow, 3, ""));
    let after = absorbed(&lab.metrics());
    assert!(status(&again).starts_with("SIP/2.0 401"), "{test}: #2536: mallory's refresh got {again}");
    assert_eq!((after.0, after.1), (before.0, before.1), "{test}: #2536: mallory's refresh was absorbed");

    // #1156: alice renews with Authorization: credentials with a nonce of a later second
    // (Kamailio's nonces change every second) from a fresh challenge to the second device.
    std::thread::sleep(Duration::from_millis(1100));
    let fresh = exchange(&second_socket, edge, &second.register(second_flow, 2, ""));
    assert!(status(&fresh).starts_with("SIP/2.0 401"), "{test}: #1156: {fresh}");
    assert_ne!(challenge_param(&fresh, "nonce"), challenge_param(&challenge, "nonce"), "{test}: #1156: same nonce");
    let (before, cm1_before) = (absorbed(&lab.metrics()), registers_at_cm1());
    let renewal = exchange(&a_socket, edge, &alice.register(a_flow, 4, &authorization(&fresh, "801", password, &uri)));
    let mut answers = vec![status(&renewal).to_owned()];
    let final_answer = if status(&renewal).starts_with("SIP/2.0 401") {
        // The nonce was mallory's: Kamailio challenges again; alice answers.
        let ok = exchange(&a_socket, edge, &alice.register(a_flow, 5, &authorization(&renewal, "801", password, &uri)));
        answers.push(status(&ok).to_owned());
        ok
    } else {
        renewal
    };
    let after = absorbed(&lab.metrics());
    eprintln!("{test}: #1156 renewal with Authorization: {answers:?}");
    assert_eq!((after.0, after.1), (before.0, before.1), "{test}: #1156: a renewal with credentials was absorbed");
    assert!(registers_at_cm1() > cm1_before, "{test}: #1156: the renewal did not reach cm1");
    assert!(status(&final_answer).starts_with("SIP/2.0 200"), "{test}: #1156: {final_answer}");
    let kept: Vec<_> = lab.cm1.contacts().into_iter().filter(|b| b.aor == "801").collect();
    assert_eq!(kept.len(), 1, "{test}: #1156: cm1 dropped alice (or holds her twice): {kept:?}");
    // And her next plain refresh is absorbed again.
    let before = absorbed(&lab.metrics());
    let refresh = exchange(&a_socket, edge, &alice.register(a_flow, 6, ""));
    assert!(status(&refresh).starts_with("SIP/2.0 200"), "{test}: {refresh}");
    assert_eq!(absorbed(&lab.metrics()).0, before.0 + 1, "{test}: alice's refresh after the renewal");
}

/// The admin API binds to loopback by default: from the phones' namespace regedge's
/// addresses do not answer on its port, and the proxy's own namespace reaches it. On a
/// non-loopback address with a token, a request from the phones' side without the token
/// (or with a wrong one) is refused and with it answered; without a token, regedge warns
/// at start.
#[test]
fn admin_api_is_local_by_default_and_takes_the_token_off_loopback() {
    let test = "admin_api_is_local_by_default_and_takes_the_token_off_loopback";
    if !require_peers(test, &[]) {
        return;
    }
    let mut lab = EdgeLab::start(test, &EdgeConfig::default());
    let admin_port = 9101;
    let from_phones = lab
        .phones
        .run(|| TcpStream::connect_timeout(&SocketAddr::new(lab.edge.ip(), admin_port), Duration::from_secs(1)));
    assert!(from_phones.is_err(), "{test}: the default admin API answers on the phone-side address");
    assert_eq!(lab.admin().get("/live").status, 200, "{test}: loopback in the proxy's namespace");

    // Off loopback, with a token.
    let token = "0123456789abcdef-token";
    let listen = SocketAddr::new(lab.edge.ip(), admin_port);
    let text = lab.config_text(&EdgeConfig::default()).replace(
        "[admin]\nlisten = \"127.0.0.1:9101\"\n",
        &format!("[admin]\nlisten = \"{listen}\"\ntoken = \"{token}\"\n"),
    );
    assert!(text.contains(token), "{test}: the lab's config has no [admin] section to rewrite");
    lab.regedge().terminate(Duration::from_secs(5));
    let dir = TempDir::new(test);
    let config = dir.write("regedge.toml", &text);
    let mut regedge = Regedge::start(Some(&lab.proxy), &config, dir.0.join("regedge.log"));
    regedge
        .wait_ready("127.0.0.1:9100".parse().unwrap(), Some(&lab.proxy), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    let remote = regedge_tests::admin::Admin { ns: &lab.phones, addr: listen, token: None };
    let without = remote.get_with("/bindings", None).status;
    let wrong = remote.get_with("/bindings", Some("not-the-token-at-all")).status;
    let with = remote.get_with("/bindings", Some(token)).status;
    let drain_without = remote.post_with("/backends/cm1/drain", None).status;
    eprintln!(
        "{test}: from the phones' side: GET /bindings without token {without}, wrong token {wrong}, token {with}; POST drain without token {drain_without}"
    );
    assert_eq!((without, wrong, with, drain_without), (401, 401, 200, 401), "{test}");
    assert!(!regedge.log().contains("admin.token is empty"), "{test}: warned though a token is set");
    regedge.terminate(Duration::from_secs(5));

    // Off loopback without a token: regedge says so when it starts.
    let open = text.replace(&format!("token = \"{token}\"\n"), "");
    let config = dir.write("regedge-open.toml", &open);
    let mut regedge = Regedge::start(Some(&lab.proxy), &config, dir.0.join("regedge-open.log"));
    regedge
        .wait_ready("127.0.0.1:9100".parse().unwrap(), Some(&lab.proxy), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    let log = regedge.log();
    let warning = log.lines().find(|l| l.contains("is not a loopback address and admin.token is empty"));
    eprintln!("{test}: {}", warning.unwrap_or("no warning"));
    assert!(warning.is_some_and(|l| l.contains("WARN")), "{test}: no warning at start:\n{log}");
    regedge.terminate(Duration::from_secs(5));
}

/// `[fastpath] reply_rate_per_source = 20` on a running regedge with XDP: 200 STUN
/// keepalives from one source in a burst get at most a second's worth of kernel replies
/// (plus what the budget earns meanwhile); the rest go to userspace, counted as
/// `rate_limited`, and are still answered; another source has a budget of its own.
#[test]
fn kernel_replies_are_limited_per_source() {
    let test = "kernel_replies_are_limited_per_source";
    if !require_peers(test, &[]) {
        return;
    }
    let mut lab = EdgeLab::start(test, &EdgeConfig { xdp: true, ..EdgeConfig::default() });
    let text = lab.config_text(&EdgeConfig { xdp: true, ..EdgeConfig::default() });
    let limited = text.replace("pin_path = \"\"\n", "pin_path = \"\"\nreply_rate_per_source = 20\n");
    assert_ne!(limited, text, "{test}: no [fastpath] pin_path line to add the limit after");
    lab.regedge().terminate(Duration::from_secs(5));
    let dir = TempDir::new(test);
    let config = dir.write("regedge.toml", &limited);
    let mut regedge = Regedge::start(Some(&lab.proxy), &config, dir.0.join("regedge.log"));
    regedge
        .wait_ready("127.0.0.1:9100".parse().unwrap(), Some(&lab.proxy), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    let metrics = || {
        let m = lab.metrics();
        let stun = |name| m.get(name, &[("kind", "stun")]).unwrap_or(0);
        (stun("regedge_fastpath_replies_total"), stun("regedge_userspace_replies_total"), passed(&m, "rate_limited"))
    };
    let burst = |s: &UdpSocket, count: u32| -> u32 {
        let started = Instant::now();
        for i in 0..count {
            let mut tx = *b"rate-limit-0";
            tx[8..].copy_from_slice(&i.to_be_bytes());
            s.send_to(&regedge_tests::fixtures::stun_request(tx, &[]), lab.edge).expect("send");
        }
        let mut answers = 0;
        let mut buf = [0u8; 512];
        while started.elapsed() < Duration::from_secs(3) && answers < count {
            if s.recv(&mut buf).is_ok_and(|n| n >= 20 && buf[0] == 0x01 && buf[1] == 0x01) {
                answers += 1;
            }
        }
        answers
    };
    let one = socket(&lab.phones, SocketAddr::new(lab.phone_ip.into(), 17061));
    let other_ip = phone_subnet_addr(&lab, 4);
    lab.phones.ip(&["addr", "add", &format!("{other_ip}/24"), "dev", "rgph0"]);
    let two = socket(&lab.phones, SocketAddr::new(other_ip.into(), 17061));
    let before = metrics();
    let started = Instant::now();
    let answered = burst(&one, 200);
    let elapsed = started.elapsed();
    let after_one = metrics();
    let answered_two = burst(&two, 10);
    let after_two = metrics();
    let (kernel, user, limited) = (after_one.0 - before.0, after_one.1 - before.1, after_one.2 - before.2);
    eprintln!(
        "{test}: 200 STUN requests from one source in {elapsed:?}: {answered} answered, {kernel} by the kernel, {user} in \
         userspace, {limited} passed as rate_limited; another source: {answered_two} answered, {} by the kernel",
        after_two.0 - after_one.0
    );
    assert_eq!(answered, 200, "{test}: every request is answered, in the kernel or in userspace");
    let most = 20 + (20.0 * elapsed.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        kernel >= 20 && kernel <= most,
        "{test}: {kernel} kernel replies to one source (budget 20/s, at most {most})"
    );
    assert_eq!(kernel + limited, 200, "{test}: what the kernel did not answer it passed as rate_limited");
    assert_eq!(user, limited, "{test}: userspace answered what was passed");
    assert_eq!(answered_two, 10, "{test}: the other source");
    assert_eq!(after_two.0 - after_one.0, 10, "{test}: the other source has its own budget");
    regedge.terminate(Duration::from_secs(5));
}
