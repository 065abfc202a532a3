//! The XDP program fed 100,000 random and mutated frames through BPF_PROG_TEST_RUN, with
//! userspace (the engine and its registrar, whose bindings the kernel map mirrors) judging
//! the same payload from the same flow:
//!
//! - the program never returns XDP_ABORTED, and XDP_DROP only for a CRLF keepalive;
//! - XDP_TX only for a frame that parses (Ethernet, IPv4 or IPv6, UDP to a listener) and
//!   that userspace answers itself — a STUN Binding Request, an OPTIONS to the proxy, an
//!   absorbable REGISTER refresh or a Cisco backup probe — and the kernel's reply is the
//!   userspace reply byte for byte, from the request's destination to its source;
//! - a reply is never larger than its request, except STUN's fixed growth (the
//!   XOR-MAPPED-ADDRESS attribute);
//! - a frame the kernel passes but userspace answers is one the kernel leaves to
//!   userspace on purpose (counted per pass reason); never one whose binding the kernel
//!   holds differently from userspace (unknown Call-ID, other flow, flagged).
//!
//! The frames start from the fixture corpus (the sipp and baresip REGISTER captures,
//! phones registered through the registrar, STUN, CRLF and OPTIONS keepalives, other SIP)
//! and are mutated at the SIP level (tokens, cuts, bit flips) and at the frame level
//! (header bytes, lengths, truncation), or are random bytes. The seed is fixed
//! (`REGEDGE_XDP_FUZZ_SEED` changes it, `REGEDGE_XDP_FUZZ_FRAMES` the count).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use regedge::{
    config::Config,
    datapath::{AnswerSettings, Fastpath},
    engine::{Engine, Outcome, Output},
    failover::Routing,
    io::workers::monotonic_ms,
    local_names::LocalNames,
    registrar::{Destination, Node, Now, Policy, Registrar, RegistrationOutcome, mirror::MirrorUpdate},
    registry::{Flow, Transport},
    sip::{HeaderName, Message, contact::Contact, stateless::ToTag},
};
use regedge_common::{PassReason, ReplyKind};
use regedge_tests::{
    fixtures::{options_request, stun_attr, stun_request},
    frames::{parse_reply, udp_frame},
    privilege::require_root,
    process::workspace_root,
};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const NODE: &str = "xdp-fuzz";
const FRAMES: usize = 100_000;
const SEED: u64 = 0x0DDB_A11C_0FFE_E5ED;

const CONFIG: &str = r#"
[registration]
phone_expires = 120
backend_expires = 3600
expires_jitter = 0.0
date_header = false

[[backends]]
name = "cm1"
address = "10.9.0.11:5060"
max_register_rate = 100000

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
fn backend() -> SocketAddr {
    "10.9.0.11:5060".parse().unwrap()
}

/// xorshift64*: deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A phone registered through the registrar: its flow and its REGISTER with `{cseq}`.
struct Phone {
    addr: SocketAddr,
    template: String,
    cseq: u32,
}

impl Phone {
    fn request(&self, cseq: u32) -> Vec<u8> {
        self.template.replace("{cseq}", &cseq.to_string()).into_bytes()
    }
    fn proxy(&self) -> SocketAddr {
        if self.addr.is_ipv4() { proxy_v4() } else { proxy_v6() }
    }
}

fn corpus(name: &str) -> String {
    let path: PathBuf = workspace_root().join("tests/corpus/register").join(name);
    String::from_utf8(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A capture as a template: its CSeq becomes `{cseq}`; the phone is moved into the test
/// net at its Via port.
fn captured(name: &str) -> Phone {
    let text = corpus(name);
    let via = text.lines().find(|l| l.starts_with("Via: ")).unwrap();
    let port: u16 = via.split(';').next().unwrap().rsplit(':').next().unwrap().trim().parse().unwrap();
    let cseq_line = text.lines().find(|l| l.starts_with("CSeq: ")).unwrap();
    let template = text.replace(cseq_line, "CSeq: {cseq} REGISTER");
    Phone { addr: SocketAddr::new("10.9.0.2".parse().unwrap(), port), template, cseq: 1 }
}

const CISCO_V6: &str = "REGISTER sip:example.net SIP/2.0
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

const COMPACT: &str = "REGISTER sip:example.net SIP/2.0
v: SIP/2.0/UDP 10.9.0.3:5062;branch=z9hG4bK-c{cseq};rport
f: <sip:2001@example.net>;tag=c1
t: \"Front Desk\" <sip:2001@example.net>
i: compact-2001@10.9.0.3
CSeq: {cseq} REGISTER
m: <sip:2001@10.9.0.3:5062>;expires=90;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-001122334455>\"
l: 0

";

fn synthetic(template: &str, addr: &str) -> Phone {
    Phone { addr: addr.parse().unwrap(), template: template.replace('\n', "\r\n"), cseq: 1 }
}

struct Harness {
    fastpath: Fastpath,
    engine: Engine,
    updates: crossbeam_channel::Receiver<MirrorUpdate>,
    _absorbed: crossbeam_channel::Sender<regedge_common::maps::AbsorbedRefresh>,
}

impl Harness {
    fn new() -> Self {
        let mut fastpath = Fastpath::load().expect("load and verify the XDP program");
        let listen = [proxy_v4(), proxy_v6()];
        let names = LocalNames::new(&["edge.example.net".into()], &listen, &[]);
        let answer = AnswerSettings { register: true, date_header: false };
        fastpath.configure(&listen, &names, ToTag::for_node(NODE), answer).expect("fill the maps");
        let config = Config::from_toml(CONFIG, "xdp-fuzz").unwrap_or_else(|e| panic!("{e}"));
        let routing = Arc::new(Routing::from_config(&config));
        let node =
            Node { to_tag: ToTag::for_node(NODE), backend_facing: vec![(Transport::Udp, proxy_v4())], token_key: 5 };
        let registrar = Registrar::new(routing, Policy::from(&config.registration), node);
        let (updates, absorbed) = registrar.connect_kernel();
        let engine = Engine::new(names, ToTag::for_node(NODE), Some(registrar));
        Self { fastpath, engine, updates, _absorbed: absorbed }
    }

    /// Applies the registrar's mirror updates to the kernel map, as the mirror thread does.
    fn sync(&mut self) {
        let bindings = self.fastpath.bindings_mut().expect("bindings map");
        for update in self.updates.try_iter() {
            match update {
                MirrorUpdate::Upsert { key, entry, .. } => bindings.upsert(key, &entry).unwrap(),
                MirrorUpdate::Remove { key, .. } => bindings.remove(key).unwrap(),
            }
        }
    }

    fn userspace(&self, payload: &[u8], from: SocketAddr, to: SocketAddr) -> (Outcome, Output) {
        let flow = Flow { transport: Transport::Udp, peer: from, local: to, connection: None };
        let mut out = Output::default();
        let now = Now { mono_ms: monotonic_ms(), unix_secs: 0 };
        let outcome = self.engine.on_datagram(payload, flow, now, &mut out);
        (outcome, out)
    }

    /// A full registration: the REGISTER through the engine, the backend's 200 back
    /// through it, the kernel entry mirrored.
    fn register(&mut self, phone: &mut Phone) {
        let request = phone.request(phone.cseq);
        let (outcome, out) = self.userspace(&request, phone.addr, phone.proxy());
        assert_eq!(outcome, Outcome::Registration(RegistrationOutcome::Forwarded), "{}", phone.template);
        let forwarded = out.sends.iter().find(|s| s.to == Destination::Backend(regedge::failover::BackendId(0)));
        let response = backend_ok(&forwarded.expect("sent to the backend").bytes);
        let (outcome, _) = self.userspace(&response, backend(), proxy_v4());
        assert_eq!(outcome, Outcome::Relayed, "the backend's 200 is taken");
        self.sync();
    }
}

/// The backend's 200 to a forwarded REGISTER.
fn backend_ok(forwarded: &[u8]) -> Vec<u8> {
    let msg = Message::parse(forwarded).unwrap();
    let mut out = b"SIP/2.0 200 OK\r\n".to_vec();
    for h in msg.headers() {
        match HeaderName::of(h.name) {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => out.extend_from_slice(h.raw),
            HeaderName::To => {
                out.extend_from_slice(&h.raw[..h.raw.len() - 2]);
                out.extend_from_slice(b";tag=backend\r\n");
            }
            _ if h.name.eq_ignore_ascii_case(b"contact") || h.name.eq_ignore_ascii_case(b"m") => {
                let uri = Contact::parse(h.value).unwrap().uri;
                out.extend_from_slice(
                    format!("Contact: <{}>;expires=3600\r\n", String::from_utf8_lossy(uri)).as_bytes(),
                );
            }
            _ => {}
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

/// The UDP datagram of a frame as the program reads it (Ethernet, IPv4 without options
/// or fragments, or IPv6 with UDP next; IP and UDP lengths consistent and within the
/// frame): (source, destination, payload).
fn parse_request(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let be16 = |at: usize| Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    let (src, dst, udp_at, ip_payload) = match be16(12)? {
        0x0800 => {
            let ip = frame.get(14..34)?;
            if ip[0] != 0x45 || ip[9] != 17 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            if total < 28 || 14 + total > frame.len() {
                return None;
            }
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (std::net::IpAddr::from(s), std::net::IpAddr::from(d), 34, total - 20)
        }
        0x86dd => {
            let ip = frame.get(14..54)?;
            if ip[0] >> 4 != 6 || ip[6] != 17 {
                return None;
            }
            let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            if len < 8 || 54 + len > frame.len() {
                return None;
            }
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (s.into(), d.into(), 54, len)
        }
        _ => return None,
    };
    let udp_len = be16(udp_at + 4)? as usize;
    if udp_len != ip_payload {
        return None;
    }
    let src = SocketAddr::new(src, be16(udp_at)?);
    let dst = SocketAddr::new(dst, be16(udp_at + 2)?);
    Some((src, dst, &frame[udp_at + 8..udp_at + udp_len]))
}

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b"\"",
    b" ",
    b"\t",
    b"\0",
    b"0",
    b"4294967295",
    b";expires=0",
    b"Expires: 0\r\n",
    b"Content-Length: 5\r\n",
    b"l: 0\r\n",
    b"\r\n ",
    b"SIP/2.0 ",
    b"REGISTER ",
    b"Call-ID: x\r\n",
    b"CSeq: 1 REGISTER\r\n",
    b"Via: SIP/2.0/UDP 10.9.0.9;branch=z9hG4bK1\r\n",
    b";cisco-keep-alive",
    b"Authorization: Digest username=\"x\", realm=\"y\", nonce=\"z\"\r\n",
    b"To: <sip:other@example.net>\r\n",
];

fn mutate_payload(rng: &mut Rng, p: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = p.len();
        match rng.below(6) {
            0 if len > 0 => {
                let at = rng.below(len);
                p[at] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                p.splice(at..at, t.iter().copied());
            }
            2 if len > 0 => {
                let at = rng.below(len);
                let n = rng.below((len - at).min(24) + 1);
                p.drain(at..at + n);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                p.truncate(at);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                p[at] = rng.next() as u8;
            }
            _ => {
                let at = rng.below(len + 1);
                let n = rng.below(16);
                let bytes = rng.bytes(n);
                p.splice(at..at, bytes);
            }
        }
    }
}

fn mutate_frame(rng: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(5) {
            // A header byte: Ethernet type, IP version/length/flags/protocol, UDP ports/length.
            0 | 1 => {
                let at = rng.below(f.len().min(62).max(1));
                if at < f.len() {
                    f[at] = if rng.below(2) == 0 { f[at] ^ (1 << rng.below(8)) } else { rng.next() as u8 };
                }
            }
            2 => {
                let at = rng.below(f.len() + 1);
                f.truncate(at);
            }
            3 => {
                let n = rng.below(64);
                let bytes = rng.bytes(n);
                f.extend(bytes);
            }
            _ => {
                // A length field set to something else.
                let at = [16, 18, 38, 58][rng.below(4)];
                if at + 1 < f.len() {
                    let v = rng.next() as u16 % 2048;
                    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
}

/// What happened, for the summary and the coverage checks.
#[derive(Default, Debug)]
struct Tally {
    frames: usize,
    tx: BTreeMap<&'static str, usize>,
    dropped_crlf: usize,
    passed: usize,
    parity_checks: usize,
    deferred: BTreeMap<(&'static str, &'static str), usize>,
    mutated: usize,
}

#[test]
fn random_and_mutated_frames_keep_the_fast_path_honest() {
    if !require_root("XDP fed random and mutated frames") {
        return;
    }
    let seed = std::env::var("REGEDGE_XDP_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED);
    let frames = std::env::var("REGEDGE_XDP_FUZZ_FRAMES").ok().and_then(|s| s.parse().ok()).unwrap_or(FRAMES);
    let started = std::time::Instant::now();
    let mut h = Harness::new();
    let mut phones = vec![
        captured("sipp-1-register.sip"),
        captured("baresip-1-register.sip"),
        synthetic(CISCO_V6, "[fd00:9::5]:5070"),
        synthetic(COMPACT, "10.9.0.3:5062"),
    ];
    for phone in &mut phones {
        h.register(phone);
    }
    let counters = h.fastpath.counters();
    let passes_before: Vec<u64> = PassReason::ALL.iter().map(|r| counters.passes(*r)).collect();
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let mut options_seq = 0u32;
    for i in 0..frames {
        // A base datagram, its flow, then mutations.
        let p = rng.below(phones.len());
        let (mut from, to) = (phones[p].addr, phones[p].proxy());
        let mut payload = match rng.below(100) {
            0..=39 => {
                phones[p].cseq += 1 + rng.below(2) as u32;
                phones[p].request(phones[p].cseq)
            }
            40..=47 => {
                // The Cisco backup probe: Expires 0 with cisco-keep-alive.
                let r = String::from_utf8(phones[p].request(phones[p].cseq + 1)).unwrap();
                let r = r.replacen("Expires: 60", "Expires: 0", 1).replacen("Expires: 4", "Expires: 0", 1);
                let r = r.replacen(">;", ">;expires=0;cisco-keep-alive;", 1);
                r.into_bytes()
            }
            48..=59 => {
                let attrs = match rng.below(4) {
                    0 => stun_attr(0x8022, b"regedge-fuzz"),
                    1 => stun_attr(0x0006, b"user:pass"),
                    _ => Vec::new(),
                };
                let txn: [u8; 12] = rng.bytes(12).try_into().unwrap();
                stun_request(txn, &attrs)
            }
            60..=64 => [&b"\r\n\r\n"[..], b"\r\n"][rng.below(2)].to_vec(),
            65..=79 => {
                options_seq += 1;
                let uri = ["sip:10.9.0.1:5060", "sip:edge.example.net", "sip:[fd00:9::1]", "sip:user@edge.example.net"]
                    [rng.below(4)];
                options_request(uri, from, &format!("opt-{options_seq}"), "")
            }
            80..=89 => {
                let other = [
                    "INVITE sip:1001@10.9.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.2:5097;branch=z9hG4bK-i1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:1001@b>\r\nCall-ID: inv-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                    "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.9.0.1:5060;branch=z9hG4bK-rg0000000000000001\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@b>;tag=2\r\nCall-ID: r-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
                    "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.7:5060;branch=z9hG4bK-new\r\nFrom: <sip:9001@example.net>;tag=n\r\nTo: <sip:9001@example.net>\r\nCall-ID: new-9001\r\nCSeq: 7 REGISTER\r\nContact: <sip:9001@10.9.0.7:5060>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n",
                ];
                other[rng.below(other.len())].as_bytes().to_vec()
            }
            _ => {
                let n = rng.below(300);
                rng.bytes(n)
            }
        };
        if rng.below(10) == 0 {
            // Another source: port, or address.
            from = if rng.below(2) == 0 {
                SocketAddr::new(from.ip(), from.port().wrapping_add(1))
            } else if from.is_ipv4() {
                "10.9.0.66:5097".parse().unwrap()
            } else {
                "[fd00:9::66]:5070".parse().unwrap()
            };
        }
        let mode = rng.below(10);
        if (4..=7).contains(&mode) {
            mutate_payload(&mut rng, &mut payload);
        }
        let mut frame = udp_frame(from, to, &payload);
        if mode == 8 {
            mutate_frame(&mut rng, &mut frame);
        } else if mode == 9 {
            let n = rng.below(200);
            frame = if rng.below(2) == 0 {
                rng.bytes(n)
            } else {
                let mut f = frame[..42.min(frame.len())].to_vec();
                f.extend(rng.bytes(n));
                f
            };
        }
        if mode >= 4 {
            tally.mutated += 1;
        }
        if frame.len() < 14 {
            // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
            frame.resize(14, 0);
        }
        tally.frames += 1;
        check_frame(&mut h, &frame, i, &mut tally);
    }
    let elapsed = started.elapsed();
    let passes: BTreeMap<&str, u64> = PassReason::ALL
        .iter()
        .zip(&passes_before)
        .map(|(r, before)| (r.label(), counters.passes(*r) - before))
        .filter(|(_, n)| *n > 0)
        .collect();
    eprintln!(
        "xdp fuzz: seed {seed:#x}, {} frames ({} mutated) in {elapsed:.1?}: TX {:?}, DROP (CRLF) {}, PASS {} by reason {passes:?}; \
         {} TX replies equal to userspace's; passed but answered by userspace, by reason: {:?}",
        tally.frames, tally.mutated, tally.tx, tally.dropped_crlf, tally.passed, tally.parity_checks, tally.deferred
    );
    // The run reaches every kind of answer, so a generator that stopped producing them fails.
    if frames >= FRAMES {
        for kind in ["stun", "options", "register_refresh"] {
            assert!(tally.tx.get(kind).copied().unwrap_or(0) > 1_000, "few {kind} answers: {:?}", tally.tx);
        }
        // Probes carry contact parameters the binding's contact has not, so the kernel
        // answers few of them and leaves the rest to userspace.
        let probes: usize = tally.deferred.iter().filter(|((k, _), _)| *k == "backup_probe").map(|(_, n)| n).sum();
        assert!(tally.tx.get("backup_probe").is_some_and(|n| *n > 0) && probes > 500, "{tally:?}");
        assert!(tally.dropped_crlf > 500 && tally.passed > 10_000, "{tally:?}");
    }
}

/// One frame through the kernel and, when it is UDP to a listener, through userspace.
fn check_frame(h: &mut Harness, frame: &[u8], i: usize, tally: &mut Tally) {
    let run = h.fastpath.test_run(frame, 1).expect("BPF_PROG_TEST_RUN");
    let shown = || {
        format!(
            "frame #{i}: {:02x?}\npayload: {:?}",
            frame,
            parse_request(frame).map(|r| String::from_utf8_lossy(r.2).into_owned())
        )
    };
    assert_ne!(run.action, XDP_ABORTED, "XDP_ABORTED for {}", shown());
    let parsed = parse_request(frame);
    let for_us = parsed.filter(|(_, dst, _)| *dst == proxy_v4() || *dst == proxy_v6());
    match run.action {
        XDP_TX => {
            let (src, dst, request) =
                for_us.unwrap_or_else(|| panic!("XDP_TX for a frame not to a listener: {}", shown()));
            let reply =
                parse_reply(&run.frame).unwrap_or_else(|e| panic!("a broken reply frame ({e}) for {}", shown()));
            assert_eq!((reply.src, reply.dst), (dst, src), "the reply does not go back to the sender: {}", shown());
            let (outcome, out) = h.userspace(request, src, dst);
            let kind = match outcome {
                Outcome::Replied(ReplyKind::Stun) => "stun",
                Outcome::Replied(ReplyKind::Options) => "options",
                Outcome::Registration(RegistrationOutcome::Absorbed) => "register_refresh",
                Outcome::Registration(RegistrationOutcome::BackupProbe) => "backup_probe",
                other => panic!("XDP_TX for what userspace does not answer itself ({other:?}): {}", shown()),
            };
            assert_eq!(
                String::from_utf8_lossy(&reply.payload),
                String::from_utf8_lossy(&out.reply),
                "the kernel's {kind} reply differs from userspace's: {}",
                shown()
            );
            assert!(out.sends.is_empty(), "userspace sends something on for a frame the kernel answered");
            let growth = if kind == "stun" { if src.is_ipv4() { 12 } else { 24 } } else { 0 };
            assert!(
                reply.payload.len() <= request.len() + growth,
                "a {kind} reply of {} bytes to {} bytes: {}",
                reply.payload.len(),
                request.len(),
                shown()
            );
            assert!(run.frame.len() <= frame.len() + growth, "a reply frame larger than the request's");
            *tally.tx.entry(kind).or_default() += 1;
            tally.parity_checks += 1;
        }
        XDP_DROP => {
            let (src, dst, request) =
                for_us.unwrap_or_else(|| panic!("XDP_DROP for a frame not to a listener: {}", shown()));
            assert!(
                request == b"\r\n\r\n" || request == b"\r\n",
                "XDP_DROP for more than a CRLF keepalive: {}",
                shown()
            );
            let (outcome, out) = h.userspace(request, src, dst);
            assert_eq!(outcome, Outcome::Absorbed(ReplyKind::Crlf), "userspace absorbs the keepalive too");
            assert!(out.reply.is_empty());
            tally.dropped_crlf += 1;
        }
        XDP_PASS => {
            tally.passed += 1;
            let Some((src, dst, request)) = for_us else { return };
            let (outcome, _) = h.userspace(request, src, dst);
            let answered = matches!(
                outcome,
                Outcome::Replied(ReplyKind::Stun | ReplyKind::Options)
                    | Outcome::Absorbed(ReplyKind::Crlf)
                    | Outcome::Registration(RegistrationOutcome::Absorbed | RegistrationOutcome::BackupProbe)
            );
            if answered {
                // Why the kernel left it: run it again (its map has not changed) and see
                // which pass counter moves.
                let counters = h.fastpath.counters();
                let before: Vec<u64> = PassReason::ALL.iter().map(|r| counters.passes(*r)).collect();
                let again = h.fastpath.test_run(frame, 1).expect("BPF_PROG_TEST_RUN");
                assert_eq!(again.action, XDP_PASS, "the kernel judged the same frame twice differently: {}", shown());
                let reason = PassReason::ALL
                    .iter()
                    .zip(before)
                    .find(|(r, b)| counters.passes(**r) > *b)
                    .map(|(r, _)| *r)
                    .unwrap_or_else(|| panic!("a pass without a reason: {}", shown()));
                // Userspace answers a backup probe from anyone and changes nothing; the
                // kernel answers only those of the flows it holds.
                let probe = outcome == Outcome::Registration(RegistrationOutcome::BackupProbe);
                assert!(
                    probe
                        || !matches!(
                            reason,
                            PassReason::RegisterUnknown
                                | PassReason::RegisterOtherFlow
                                | PassReason::RegisterFlagged
                                | PassReason::NotListener
                                | PassReason::NotIp
                                | PassReason::NotUdp
                                | PassReason::Truncated
                        ),
                    "the kernel passed as {reason:?} what userspace answers ({outcome:?}): {}",
                    shown()
                );
                let label = if probe { "backup_probe" } else { "other" };
                *tally.deferred.entry((label, reason.label())).or_default() += 1;
            }
        }
        other => panic!("XDP action {other} for {}", shown()),
    }
    // Userspace refreshes move the kernel entries on, as the mirror thread would.
    h.sync();
}
