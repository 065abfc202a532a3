//! Parity between the kernel and userspace answers to REGISTER refreshes: each phone's
//! full registration goes through regedge's own registrar (forwarded, answered 200 by a
//! scripted backend, cached), the kernel entry is the one the registrar's mirror update
//! carries, and then every refresh is answered twice — by the XDP program through
//! BPF_PROG_TEST_RUN and by the registrar — and the two answers must be equal byte for
//! byte (the Date is the one second both render: userspace renders the kernel's second).
//!
//! The corpus holds real captures of sipp's and baresip's REGISTERs
//! (`tests/corpus/register/`) and variants that exercise the header forms the kernel
//! decodes: compact names, folded and repeated Vias, To with a tag, the expiry in a
//! contact parameter or in the Expires header, credentials, IPv6.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use regedge::{
    config::Config,
    datapath::{AnswerSettings, Fastpath},
    failover::Routing,
    io::workers::monotonic_ms,
    local_names::LocalNames,
    registrar::{Node, Now, Policy, Registrar, RegistrationOutcome, mirror::MirrorUpdate},
    registry::{Flow, Transport},
    sip::{Message, contact::Contact, stateless::ToTag},
};
use regedge_common::{PassReason, ReplyKind};
use regedge_tests::{
    frames::{parse_reply, udp_frame},
    privilege::require_root,
    process::workspace_root,
};

const XDP_TX: u32 = 3;
const NODE: &str = "parity";

const CONFIG: &str = r#"
[registration]
phone_expires = 120
backend_expires = 3600
expires_jitter = 0.1

[[backends]]
name = "cm1"
address = "10.9.0.11:5060"

[[groups]]
name = "default"
backends = ["cm1"]
"#;

fn proxy_v4() -> SocketAddr {
    "10.9.0.1:5060".parse().unwrap()
}
fn proxy_v6() -> SocketAddr {
    "[fd00:9::1]:5060".parse().unwrap()
}

struct Harness {
    fastpath: Fastpath,
    registrar: Registrar,
    updates: crossbeam_channel::Receiver<MirrorUpdate>,
    absorbed: crossbeam_channel::Sender<regedge_common::maps::AbsorbedRefresh>,
}

impl Harness {
    fn new() -> Self {
        let mut fastpath = Fastpath::load().expect("load and verify the XDP program");
        let listen = [proxy_v4(), proxy_v6()];
        let names = LocalNames::new(&[], &listen, &[]);
        let answer = AnswerSettings { register: true, date_header: true };
        fastpath.configure(&listen, &names, ToTag::for_node(NODE), answer).expect("fill the maps");
        let config = Config::from_toml(CONFIG, "parity").unwrap_or_else(|e| panic!("{e}"));
        let routing = Arc::new(Routing::from_config(&config));
        let facing = vec![(Transport::Udp, proxy_v4())];
        let node = Node { to_tag: ToTag::for_node(NODE), backend_facing: facing, token_key: 11 };
        let registrar = Registrar::new(routing, Policy::from(&config.registration), node);
        let (updates, absorbed) = registrar.connect_kernel();
        Self { fastpath, registrar, updates, absorbed }
    }

    /// Applies the registrar's mirror updates to the kernel map, as the mirror thread does.
    fn sync(&mut self) -> usize {
        let bindings = self.fastpath.bindings_mut().expect("bindings map");
        let mut applied = 0;
        for update in self.updates.try_iter() {
            match update {
                MirrorUpdate::Upsert { key, entry, .. } => bindings.upsert(key, &entry).unwrap(),
                MirrorUpdate::Remove { key, .. } => bindings.remove(key).unwrap(),
            }
            applied += 1;
        }
        applied
    }

    fn flow(phone: SocketAddr) -> Flow {
        let local = if phone.is_ipv4() { proxy_v4() } else { proxy_v6() };
        Flow { transport: Transport::Udp, peer: phone, local, connection: None }
    }

    /// A full registration through the registrar, answered 200 by the backend.
    fn register(&mut self, phone: SocketAddr, register: &[u8]) {
        let now = now(0);
        let msg = Message::parse(register).expect("the REGISTER parses");
        let (mut reply, mut sends) = (Vec::new(), Vec::new());
        let outcome = self.registrar.on_register(&msg, register, Self::flow(phone), now, &mut reply, &mut sends);
        assert_eq!(outcome, RegistrationOutcome::Forwarded, "{}", String::from_utf8_lossy(&reply));
        let response = backend_ok(&sends[0].bytes);
        let msg = Message::parse(&response).unwrap();
        let mut relayed = Vec::new();
        assert!(self.registrar.on_response(&msg, &response, now, &mut relayed));
        assert_eq!(self.sync(), 1, "one kernel entry per registration");
    }

    /// The refresh answered by the kernel, then by userspace with the kernel's Date.
    fn both_answers(&mut self, phone: SocketAddr, refresh: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let local = if phone.is_ipv4() { proxy_v4() } else { proxy_v6() };
        let run = self.fastpath.test_run(&udp_frame(phone, local, refresh), 1).expect("BPF_PROG_TEST_RUN");
        if run.action != XDP_TX {
            let counters = self.fastpath.counters();
            let passed: Vec<_> = PassReason::ALL
                .iter()
                .filter(|r| counters.passes(**r) > 0)
                .map(|r| (r.label(), counters.passes(*r)))
                .collect();
            panic!(
                "the kernel did not answer (action {}; passes so far {passed:?}):\n{}",
                run.action,
                String::from_utf8_lossy(refresh)
            );
        }
        let kernel = parse_reply(&run.frame).expect("a well-formed reply frame");
        assert_eq!((kernel.src, kernel.dst), (local, phone));
        let unix_secs = date_of(&kernel.payload);
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(unix_secs.abs_diff(wall) <= 2, "the kernel's Date is now: {unix_secs} vs {wall}");
        let msg = Message::parse(refresh).unwrap();
        let (mut reply, mut sends) = (Vec::new(), Vec::new());
        let now = Now { mono_ms: monotonic_ms(), unix_secs };
        let outcome = self.registrar.on_register(&msg, refresh, Self::flow(phone), now, &mut reply, &mut sends);
        assert_eq!(outcome, RegistrationOutcome::Absorbed, "userspace answers it too");
        assert!(sends.is_empty(), "nothing goes to the backend");
        self.sync();
        (kernel.payload, reply)
    }
}

fn now(offset_secs: u64) -> Now {
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    Now { mono_ms: monotonic_ms() + offset_secs * 1000, unix_secs: wall + offset_secs }
}

/// The backend's 200 to a forwarded REGISTER: Vias, dialog headers, the contact granted
/// the backend expiry.
fn backend_ok(forwarded: &[u8]) -> Vec<u8> {
    let msg = Message::parse(forwarded).unwrap();
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for h in msg.headers() {
        let name = String::from_utf8_lossy(h.name).to_ascii_lowercase();
        let raw = String::from_utf8_lossy(h.raw);
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => out.push_str(&raw),
            "to" | "t" => out.push_str(&format!("{};tag=backend\r\n", raw.trim_end())),
            "contact" | "m" => {
                let uri = Contact::parse(h.value).unwrap().uri;
                out.push_str(&format!("Contact: <{}>;expires=3600\r\n", String::from_utf8_lossy(uri)));
            }
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// The unix second of the reply's Date header.
fn date_of(reply: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(reply);
    let line = text.lines().find_map(|l| l.strip_prefix("Date: ")).expect("a Date header");
    // "Wed, 25 Nov 2026 12:00:00 GMT"
    let parts: Vec<&str> = line.split([' ', ':']).collect();
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (day, month, year): (i64, i64, i64) = (
        parts[1].parse().unwrap(),
        months.iter().position(|m| *m == parts[2]).unwrap() as i64 + 1,
        parts[3].parse().unwrap(),
    );
    let (h, m, s): (u64, u64, u64) = (parts[4].parse().unwrap(), parts[5].parse().unwrap(), parts[6].parse().unwrap());
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe - 719_468) as u64;
    days * 86_400 + h * 3600 + m * 60 + s
}

fn corpus(name: &str) -> Vec<u8> {
    let path: PathBuf = workspace_root().join("tests/corpus/register").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The phone address a capture was sent from (its Via sent-by), moved into the test net.
fn captured_phone(raw: &[u8]) -> SocketAddr {
    let text = String::from_utf8_lossy(raw);
    let via = text.lines().find(|l| l.starts_with("Via: ")).unwrap();
    let port: u16 = via.split(';').next().unwrap().rsplit(':').next().unwrap().trim().parse().unwrap();
    SocketAddr::new("10.9.0.2".parse().unwrap(), port)
}

/// One synthetic phone: a REGISTER template with `{cseq}`, CRLF line ends.
fn synthetic(template: &str, cseq: u32) -> Vec<u8> {
    template.replace("{cseq}", &cseq.to_string()).replace('\n', "\r\n").into_bytes()
}

const COMPACT: &str = "REGISTER sip:example.net SIP/2.0
v: SIP/2.0/UDP 10.9.0.3:5062;branch=z9hG4bK-c{cseq};rport
f: <sip:2001@example.net>;tag=c1
t: \"Front Desk\" <sip:2001@example.net>
i: compact-2001@10.9.0.3
CSeq: {cseq} REGISTER
m: <sip:2001@10.9.0.3:5062>;expires=90;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-001122334455>\"
l: 0

";

const FOLDED_AND_SEVERAL_VIAS: &str = "REGISTER sip:example.net SIP/2.0
Via: SIP/2.0/UDP 10.9.0.4:5060;branch=z9hG4bK-sbc{cseq};rport,
 SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-inner{cseq}
Via: SIP/2.0/UDP 172.16.0.9:5060;branch=z9hG4bK-phone{cseq}
Max-Forwards: 69
From: <sip:3001@example.net>
\t;tag=fold
To: <sip:3001@example.net>;tag=already
Call-ID: folded-3001
CSeq: {cseq} REGISTER
Contact: <sip:3001@172.16.0.9:5060;line=x7>;q=0.9
Expires: 300
User-Agent: Yealink SIP-T46S 66.86.0.15
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, INFO, SUBSCRIBE, UPDATE
Content-Length: 0

";

const WITH_CREDENTIALS_V6: &str = "REGISTER sip:example.net SIP/2.0
Via: SIP/2.0/UDP [fd00:9::5]:5070;branch=z9hG4bK-v6{cseq};rport
Max-Forwards: 70
From: <sip:4001@example.net>;tag=v6
To: <sip:4001@example.net>
Call-ID: v6-4001
CSeq: {cseq} REGISTER
Contact: <sip:4001@[fd00:9::5]:5070>;+u.sip!devicename.ccm.cisco.com=\"SEP0A0B0C0D0E0F\"
Authorization: Digest username=\"4001\", realm=\"example.net\", nonce=\"n1\", uri=\"sip:example.net\", response=\"0123456789abcdef0123456789abcdef\"
Expires: 60
User-Agent: Cisco-CP8845/14.2.1
Content-Length: 0

";

#[test]
fn kernel_and_userspace_answer_refreshes_alike() {
    if !require_root("kernel/userspace REGISTER parity") {
        return;
    }
    let mut h = Harness::new();
    let mut compared = 0;

    for ua in ["sipp", "baresip"] {
        let first = corpus(&format!("{ua}-1-register.sip"));
        let phone = captured_phone(&first);
        h.register(phone, &first);
        for refresh in [format!("{ua}-2-refresh.sip"), format!("{ua}-3-refresh.sip")] {
            let (kernel, user) = h.both_answers(phone, &corpus(&refresh));
            assert_eq!(String::from_utf8_lossy(&kernel), String::from_utf8_lossy(&user), "{refresh}");
            compared += 1;
        }
    }

    let synthetic_phones = [
        (COMPACT, "10.9.0.3:5062"),
        (FOLDED_AND_SEVERAL_VIAS, "10.9.0.4:5060"),
        (WITH_CREDENTIALS_V6, "[fd00:9::5]:5070"),
    ];
    for (template, phone) in synthetic_phones {
        let phone: SocketAddr = phone.parse().unwrap();
        h.register(phone, &synthetic(template, 1));
        for cseq in [2, 3] {
            let (kernel, user) = h.both_answers(phone, &synthetic(template, cseq));
            assert_eq!(String::from_utf8_lossy(&kernel), String::from_utf8_lossy(&user), "{template}");
            compared += 1;
        }
    }
    assert_eq!(compared, 10);
    let counters = h.fastpath.counters();
    assert_eq!(counters.replies(ReplyKind::Register), 10, "every refresh answered in the kernel");
    assert_eq!(counters.passes(PassReason::RegisterUnknown), 0);
    drop(h.absorbed);
}

#[test]
fn refreshes_the_registrar_would_not_absorb_pass() {
    if !require_root("kernel passes what userspace would forward") {
        return;
    }
    let mut h = Harness::new();
    let first = corpus("sipp-1-register.sip");
    let phone = captured_phone(&first);
    h.register(phone, &first);
    let refresh = corpus("sipp-2-refresh.sip");
    let frame = |payload: &[u8], from: SocketAddr| udp_frame(from, proxy_v4(), payload);
    let cases: [(&str, Vec<u8>, SocketAddr, PassReason); 4] = [
        (
            "another contact",
            String::from_utf8_lossy(&refresh).replace("transport=UDP>", "transport=UDP;x=1>").into_bytes(),
            phone,
            PassReason::RegisterOtherIdentity,
        ),
        (
            // The next refresh, so that its forward is not taken for a retransmission
            // of the first case's.
            "another source port",
            corpus("sipp-3-refresh.sip"),
            SocketAddr::new(phone.ip(), phone.port() + 1),
            PassReason::RegisterOtherFlow,
        ),
        (
            "a de-registration",
            String::from_utf8_lossy(&refresh)
                .replace("Expires: 4\r\n", "Expires: 0\r\n")
                .replace("CSeq: 2 REGISTER", "CSeq: 4 REGISTER")
                .into_bytes(),
            phone,
            PassReason::RegisterExpiresZero,
        ),
        (
            "the registration's own CSeq",
            String::from_utf8_lossy(&refresh).replace("CSeq: 2 REGISTER", "CSeq: 1 REGISTER").into_bytes(),
            phone,
            PassReason::RegisterOldCseq,
        ),
    ];
    for (name, payload, from, reason) in cases {
        let before = h.fastpath.counters().passes(reason);
        let run = h.fastpath.test_run(&frame(&payload, from), 1).unwrap();
        assert_eq!(run.action, 2, "{name}: XDP_PASS");
        assert_eq!(h.fastpath.counters().passes(reason), before + 1, "{name}: counted as {reason:?}");
        // Userspace forwards these, except the retransmission, which it answers again
        // without moving the binding on.
        let msg = Message::parse(&payload).unwrap();
        let (mut reply, mut sends) = (Vec::new(), Vec::new());
        let outcome = h.registrar.on_register(&msg, &payload, Harness::flow(from), now(1), &mut reply, &mut sends);
        let expected = if reason == PassReason::RegisterOldCseq {
            RegistrationOutcome::Absorbed
        } else {
            RegistrationOutcome::Forwarded
        };
        assert_eq!(outcome, expected, "{name}");
    }
}
