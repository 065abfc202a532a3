//! REGISTER refreshes and Cisco backup probes answered by the XDP program, through
//! BPF_PROG_TEST_RUN: each row is a `RegisterFixture` (request, flow, `BINDINGS` entry)
//! with the reply written out by hand, or the one pass reason whose counter must move.
//! The Date header is checked against the clock (within 2 s), the rest byte for byte.

use std::{
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use regedge::{
    datapath::{AnswerSettings, Fastpath},
    local_names::LocalNames,
    sip::stateless::ToTag,
};
use regedge_common::{
    PassReason, ReplyKind,
    hash::{hash_bytes, identity},
    maps::{AbsorbedRefresh, BINDING_PASS, BindingEntry, NO_CONTACT_EXPIRES},
};
use regedge_tests::{
    fixtures::table::{listen, phone_v4, phone_v6, proxy_v4, proxy_v6},
    fixtures::{RegisterFixture, binding_for, crlf, monotonic_ms, options_request, register_request, sized_register},
    frames::{PHONE_MAC, PROXY_MAC, parse_reply, udp_frame},
    privilege::require_root,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const NODE: &str = "register-fixture";
/// Seconds a phone may be granted in the fixtures' entries.
const CEILING: u32 = 120;
const URI: &str = "sip:example.net";

fn local_names() -> LocalNames {
    LocalNames::new(&["edge.example.net".to_owned()], &listen(), &[])
}

fn configure(fastpath: &mut Fastpath, date_header: bool) {
    fastpath
        .configure(&listen(), &local_names(), ToTag::for_node(NODE), AnswerSettings { register: true, date_header })
        .expect("fill the maps");
}

fn load(date_header: bool) -> Fastpath {
    let mut fastpath = Fastpath::load().expect("load and verify the XDP program");
    configure(&mut fastpath, date_header);
    fastpath
}

fn tag() -> String {
    String::from_utf8(ToTag::for_node(NODE).bytes().to_vec()).unwrap()
}

/// What a row expects.
#[derive(Debug)]
enum Expect {
    /// XDP_TX with this payload (`\n` line ends, `{DATE}` for the Date value).
    Reply(ReplyKind, String),
    Pass(PassReason),
}

struct Row {
    fixture: RegisterFixture,
    expect: Expect,
}

/// A refresh on `phone` → `proxy` whose entry is what userspace writes for it, changed by
/// `edit`.
fn refresh(
    name: &str,
    phone: SocketAddr,
    proxy: SocketAddr,
    headers: &str,
    edit: impl FnOnce(&mut BindingEntry),
) -> RegisterFixture {
    let request = register_request(URI, headers);
    let (key, mut entry) = binding_for(&request, phone, proxy, CEILING);
    edit(&mut entry);
    RegisterFixture { name: name.into(), phone, proxy, request, binding: Some((key, entry)) }
}

/// A refresh whose entry was written for `other_headers` (another To, Contact, ...).
fn refresh_against(name: &str, headers: &str, other_headers: &str) -> RegisterFixture {
    let request = register_request(URI, headers);
    let (key, entry) = binding_for(&register_request(URI, other_headers), phone_v4(), proxy_v4(), CEILING);
    RegisterFixture { name: name.into(), phone: phone_v4(), proxy: proxy_v4(), request, binding: Some((key, entry)) }
}

fn unknown(name: &str, headers: &str) -> RegisterFixture {
    RegisterFixture {
        name: name.into(),
        phone: phone_v4(),
        proxy: proxy_v4(),
        request: register_request(URI, headers),
        binding: None,
    }
}

fn raw(name: &str, request: Vec<u8>, binding_headers: &str) -> RegisterFixture {
    let (key, entry) = binding_for(&register_request(URI, binding_headers), phone_v4(), proxy_v4(), CEILING);
    RegisterFixture { name: name.into(), phone: phone_v4(), proxy: proxy_v4(), request, binding: Some((key, entry)) }
}

const PAD: &str = "Allow: INVITE, ACK, CANCEL, BYE, REFER, NOTIFY, OPTIONS\nUser-Agent: regedge-tests phone 1.0\n";

/// The usual IPv4 refresh with Call-ID `call`, CSeq 102, Contact `contact`, and `extra`
/// header lines before Content-Length.
fn v4(call: &str, contact: &str, extra: &str) -> String {
    format!(
        "Via: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bK-{call};rport\n\
         Max-Forwards: 70\n\
         From: <sip:1001@example.net>;tag=f1\n\
         To: <sip:1001@example.net>\n\
         Call-ID: {call}\n\
         CSeq: 102 REGISTER\n\
         Contact: {contact}\n\
         {PAD}{extra}Content-Length: 0\n"
    )
}

/// The 200 OK to `v4(call, ...)` granting `grant` to `uri`.
fn v4_ok(call: &str, uri: &str, grant: u32) -> String {
    format!(
        "SIP/2.0 200 OK\n\
         Via: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bK-{call};rport\n\
         From: <sip:1001@example.net>;tag=f1\n\
         To: <sip:1001@example.net>;tag={tag}\n\
         Call-ID: {call}\n\
         CSeq: 102 REGISTER\n\
         Contact: <{uri}>;expires={grant}\n\
         Expires: {grant}\n\
         Date: {{DATE}}\n\
         Content-Length: 0\n\n",
        tag = tag()
    )
}

const AUTH_ABC: &str = "Authorization: Digest username=\"1001\", realm=\"example.net\", nonce=\"abc\", uri=\"sip:example.net\", response=\"0123456789abcdef0123456789abcdef\"\n";
const AUTH_DEF: &str = "Authorization: Digest username=\"1001\", realm=\"example.net\", nonce=\"def\", uri=\"sip:example.net\", response=\"0123456789abcdef0123456789abcdef\"\n";
const CONTACT: &str = "<sip:1001@10.0.0.2:40000;transport=udp>;expires=3600";
const CONTACT_URI: &str = "sip:1001@10.0.0.2:40000;transport=udp";

fn answered_rows() -> Vec<Row> {
    let (p4, p6, x4, x6) = (phone_v4(), phone_v6(), proxy_v4(), proxy_v6());
    let t = tag();
    let reply = |kind, text: String| Expect::Reply(kind, text);
    vec![
        Row {
            fixture: refresh("ipv4, contact expires over the ceiling", p4, x4, &v4("r1", CONTACT, "Expires: 3600\n"), |_| {}),
            expect: reply(ReplyKind::Register, v4_ok("r1", CONTACT_URI, 120)),
        },
        Row {
            fixture: refresh(
                "ipv6, contact expires under the ceiling wins over the header",
                p6,
                x6,
                &format!(
                    "Via: SIP/2.0/UDP [fd00::2]:40002;branch=z9hG4bK-r2;rport\nMax-Forwards: 70\n\
                     From: <sip:1002@example.net>;tag=f2\nTo: <sip:1002@example.net>\nCall-ID: r2@fd00::2\n\
                     CSeq: 9 REGISTER\nContact: <sip:1002@[fd00::2]:40002>;expires=60\n{PAD}Expires: 3600\nContent-Length: 0\n"
                ),
                |_| {},
            ),
            expect: reply(
                ReplyKind::Register,
                format!(
                    "SIP/2.0 200 OK\nVia: SIP/2.0/UDP [fd00::2]:40002;branch=z9hG4bK-r2;rport\n\
                     From: <sip:1002@example.net>;tag=f2\nTo: <sip:1002@example.net>;tag={t}\nCall-ID: r2@fd00::2\n\
                     CSeq: 9 REGISTER\nContact: <sip:1002@[fd00::2]:40002>;expires=60\nExpires: 60\n\
                     Date: {{DATE}}\nContent-Length: 0\n\n"
                ),
            ),
        },
        Row {
            fixture: refresh(
                "compact headers, no expiry asked: the ceiling",
                p4,
                x4,
                &format!(
                    "v: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bK-r3\nf: <sip:1001@example.net>;tag=f1\n\
                     t: <sip:1001@example.net>\ni: r3\ncseq: 7 REGISTER\nm: <sip:1001@10.0.0.2:40000>\n{PAD}l: 0\n"
                ),
                |_| {},
            ),
            expect: reply(
                ReplyKind::Register,
                format!(
                    "SIP/2.0 200 OK\nv: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bK-r3\nf: <sip:1001@example.net>;tag=f1\n\
                     t: <sip:1001@example.net>;tag={t}\ni: r3\ncseq: 7 REGISTER\n\
                     Contact: <sip:1001@10.0.0.2:40000>;expires=120\nExpires: 120\nDate: {{DATE}}\nContent-Length: 0\n\n"
                ),
            ),
        },
        Row {
            fixture: refresh(
                "folded Via and From, several Vias, tagged To, display name and quoted parameters",
                p4,
                x4,
                &format!(
                    "Via: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bK-r4,\n SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-0\n\
                     VIA: SIP/2.0/UDP 10.0.0.8;branch=z9hG4bK-x\nMax-Forwards: 70\nFrom: \"Desk\"\n\t<sip:1001@example.net>;tag=f1\n\
                     To: <sip:1001@example.net>;TAG=old\nCall-ID: r4\nCSeq:\t8  REGISTER\n\
                     Contact: \"Desk, 1\" <sip:1001@10.0.0.2:40000;transport=udp>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-0024142ddf24>\";expires=90\n\
                     {PAD}Content-Length: 0\n"
                ),
                |_| {},
            ),
            expect: reply(
                ReplyKind::Register,
                "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bK-r4,\n SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-0\n\
                 VIA: SIP/2.0/UDP 10.0.0.8;branch=z9hG4bK-x\nFrom: \"Desk\"\n\t<sip:1001@example.net>;tag=f1\n\
                 To: <sip:1001@example.net>;TAG=old\nCall-ID: r4\nCSeq:\t8  REGISTER\n\
                 Contact: <sip:1001@10.0.0.2:40000;transport=udp>;expires=90\nExpires: 90\nDate: {DATE}\nContent-Length: 0\n\n"
                    .into(),
            ),
        },
        Row {
            fixture: refresh(
                "Expires header only",
                p4,
                x4,
                &v4("r5", "<sip:1001@10.0.0.2:40000>", "Expires: 60\n"),
                |_| {},
            ),
            expect: reply(ReplyKind::Register, v4_ok("r5", "sip:1001@10.0.0.2:40000", 60)),
        },
        Row {
            fixture: RegisterFixture {
                name: "one-byte Request-URI".into(),
                request: crlf(&format!("REGISTER x SIP/2.0\n{}\n", v4("r8", CONTACT, ""))),
                ..refresh("", p4, x4, &v4("r8", CONTACT, ""), |_| {})
            },
            expect: reply(ReplyKind::Register, v4_ok("r8", CONTACT_URI, 120)),
        },
        Row {
            fixture: refresh("Authorization unchanged", p4, x4, &v4("r6", CONTACT, AUTH_ABC), |_| {}),
            expect: reply(ReplyKind::Register, v4_ok("r6", CONTACT_URI, 120)),
        },
        Row {
            fixture: refresh(
                "Proxy-Authorization unchanged",
                p4,
                x4,
                &v4("r9", CONTACT, &AUTH_ABC.replace("Authorization", "Proxy-Authorization")),
                |_| {},
            ),
            expect: reply(ReplyKind::Register, v4_ok("r9", CONTACT_URI, 120)),
        },
        Row {
            fixture: refresh("grant under the ceiling, large ceiling", p4, x4, &v4("r7", "<sip:1001@10.0.0.2:40000>;expires=3600", ""), |e| {
                e.grant_ceiling = 86_400;
            }),
            expect: reply(ReplyKind::Register, v4_ok("r7", "sip:1001@10.0.0.2:40000", 3600)),
        },
        // Backup probes: no entry.
        Row {
            fixture: unknown("backup probe", &v4("p1", "<sip:1001@10.0.0.2:40000>;expires=0;cisco-keep-alive", "")),
            expect: reply(
                ReplyKind::BackupProbe,
                format!(
                    "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bK-p1;rport\n\
                     From: <sip:1001@example.net>;tag=f1\nTo: <sip:1001@example.net>;tag={t}\nCall-ID: p1\n\
                     CSeq: 102 REGISTER\nDate: {{DATE}}\nContent-Length: 0\n\n"
                ),
            ),
        },
        Row {
            fixture: unknown(
                "backup probe, Expires header 0, flag in upper case",
                &v4("p2", "<sip:1001@10.0.0.2:40000>;Cisco-Keep-Alive;transport=udp", "Expires: 0\n"),
            ),
            expect: reply(
                ReplyKind::BackupProbe,
                format!(
                    "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bK-p2;rport\n\
                     From: <sip:1001@example.net>;tag=f1\nTo: <sip:1001@example.net>;tag={t}\nCall-ID: p2\n\
                     CSeq: 102 REGISTER\nDate: {{DATE}}\nContent-Length: 0\n\n"
                ),
            ),
        },
    ]
}

fn pass_rows() -> Vec<Row> {
    let (p4, x4) = (phone_v4(), proxy_v4());
    let pass = Expect::Pass;
    let base = |call: &str| v4(call, CONTACT, "");
    vec![
        Row { fixture: unknown("unknown Call-ID", &base("u1")), expect: pass(PassReason::RegisterUnknown) },
        Row {
            fixture: unknown(
                "backup probe asking expires 60",
                &v4("u2", "<sip:1001@10.0.0.2:40000>;expires=60;cisco-keep-alive", ""),
            ),
            expect: pass(PassReason::RegisterUnknown),
        },
        Row {
            fixture: unknown(
                "backup probe with two contacts",
                &v4("u3", "<sip:1001@10.0.0.2:40000>;expires=0;cisco-keep-alive, <sip:1001@10.0.0.3>", ""),
            ),
            expect: pass(PassReason::RegisterUnknown),
        },
        Row {
            fixture: refresh("other source port", p4, x4, &base("f1"), |e| e.peer_port_be = 41000u16.to_be()),
            expect: pass(PassReason::RegisterOtherFlow),
        },
        Row {
            fixture: refresh("other destination", p4, x4, &base("f2"), |e| e.local_addr[3] = 9),
            expect: pass(PassReason::RegisterOtherFlow),
        },
        Row {
            fixture: refresh("flagged", p4, x4, &base("g1"), |e| e.flags |= BINDING_PASS),
            expect: pass(PassReason::RegisterFlagged),
        },
        Row {
            fixture: refresh_against(
                "other Contact",
                &base("i1"),
                &v4("i1", "<sip:1001@10.0.0.2:40001>;expires=3600", ""),
            ),
            expect: pass(PassReason::RegisterOtherIdentity),
        },
        Row {
            fixture: refresh_against("other To", &base("i2"), &base("i2").replace("To: <sip:1001@", "To: <sip:1009@")),
            expect: pass(PassReason::RegisterOtherIdentity),
        },
        Row {
            fixture: refresh_against(
                "Authorization changed",
                &v4("a1", CONTACT, AUTH_DEF),
                &v4("a1", CONTACT, AUTH_ABC),
            ),
            expect: pass(PassReason::RegisterAuthChanged),
        },
        Row {
            fixture: refresh("same CSeq", p4, x4, &base("c1"), |e| e.cseq = 102),
            expect: pass(PassReason::RegisterOldCseq),
        },
        Row {
            fixture: refresh("lower CSeq", p4, x4, &base("c2"), |e| e.cseq = 500),
            expect: pass(PassReason::RegisterOldCseq),
        },
        Row {
            fixture: refresh(
                "Expires 0 in the header",
                p4,
                x4,
                &v4("e1", "<sip:1001@10.0.0.2:40000>", "Expires: 0\n"),
                |_| {},
            ),
            expect: pass(PassReason::RegisterExpiresZero),
        },
        Row {
            fixture: refresh(
                "expires=0 as a contact parameter",
                p4,
                x4,
                &v4("e2", "<sip:1001@10.0.0.2:40000>;expires=0", ""),
                |e| {
                    assert_eq!(e.contact_expires, 0);
                },
            ),
            expect: pass(PassReason::RegisterExpiresZero),
        },
        Row {
            fixture: refresh("deadline passed", p4, x4, &base("d1"), |e| e.absorb_until_ms = monotonic_ms()),
            expect: pass(PassReason::RegisterDeadline),
        },
        Row {
            fixture: refresh("grant would end after the deadline", p4, x4, &base("d2"), |e| {
                e.absorb_until_ms = monotonic_ms() + 60_000;
            }),
            expect: pass(PassReason::RegisterDeadline),
        },
        Row {
            fixture: raw(
                "body present",
                {
                    let mut r = register_request(URI, &base("b1").replace("Content-Length: 0", "Content-Length: 4"));
                    r.extend_from_slice(b"abcd");
                    r
                },
                &base("b1"),
            ),
            expect: pass(PassReason::RegisterBody),
        },
        Row {
            fixture: RegisterFixture {
                name: "oversized".into(),
                phone: p4,
                proxy: x4,
                request: sized_register(p4, "big", 102, 1500),
                binding: None,
            },
            expect: pass(PassReason::TooBig),
        },
        Row {
            fixture: raw(
                "truncated: no empty line",
                {
                    let mut r = register_request(URI, &base("t1"));
                    r.truncate(r.len() - 2);
                    r
                },
                &base("t1"),
            ),
            expect: pass(PassReason::RegisterTruncated),
        },
        Row {
            fixture: raw(
                "bare LF",
                String::from_utf8(register_request(URI, &base("l1")))
                    .unwrap()
                    .replacen("Max-Forwards: 70\r\n", "Max-Forwards: 70\n", 1)
                    .into_bytes(),
                &base("l1"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "bare CR",
                String::from_utf8(register_request(URI, &base("l2")))
                    .unwrap()
                    .replacen("Max-Forwards: 70", "Max-Forwards:\r70", 1)
                    .into_bytes(),
                &base("l2"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "duplicate Contact",
                register_request(URI, &v4("x1", CONTACT, "Contact: <sip:1001@10.0.0.2:40000>\n")),
                &base("x1"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "folded Call-ID",
                register_request(URI, &base("x2").replace("Call-ID: x2", "Call-ID:\n x2")),
                &base("x2"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "space before a colon",
                register_request(URI, &base("x3").replace("Contact:", "Contact :")),
                &base("x3"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "CSeq of another method",
                register_request(URI, &base("x4").replace("102 REGISTER", "102 INVITE")),
                &base("x4"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "Expires not a number",
                register_request(URI, &v4("x11", CONTACT, "Expires: soon\n")),
                &base("x11"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "CSeq over 2^31-1",
                register_request(URI, &base("x12").replace("102 REGISTER", "2147483648 REGISTER")),
                &base("x12"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "Authorization and Proxy-Authorization",
                register_request(
                    URI,
                    &v4(
                        "x13",
                        CONTACT,
                        &format!("{AUTH_ABC}{}", AUTH_ABC.replace("Authorization", "Proxy-Authorization")),
                    ),
                ),
                &v4("x13", CONTACT, AUTH_ABC),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "two Expires",
                register_request(URI, &v4("x5", CONTACT, "Expires: 60\nExpires: 60\n")),
                &base("x5"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "trailing space in To",
                register_request(URI, &base("x6").replace("To: <sip:1001@example.net>", "To: <sip:1001@example.net> ")),
                &base("x6"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "three spaces in the request line",
                crlf(&format!("REGISTER sip:example.net  SIP/2.0\n{}\n", base("x7"))),
                &base("x7"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw("SIP/2.1", crlf(&format!("REGISTER sip:example.net SIP/2.1\n{}\n", base("x8"))), &base("x8")),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: raw(
                "header line without a colon",
                register_request(URI, &v4("x9", CONTACT, "no colon here\n")),
                &base("x9"),
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
        Row {
            fixture: refresh(
                "reply would be larger than the request",
                p4,
                x4,
                "v: a\nf: b\nt: c\ni: x10\nCSeq: 2 REGISTER\nm: <sip:1001@10.0.0.2:40000>\n",
                |_| {},
            ),
            expect: pass(PassReason::RegisterUnsupported),
        },
    ]
}

fn counters(fastpath: &Fastpath) -> (Vec<u64>, Vec<u64>) {
    let c = fastpath.counters();
    (ReplyKind::ALL.iter().map(|k| c.replies(*k)).collect(), PassReason::ALL.iter().map(|r| c.passes(*r)).collect())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Unix seconds of an IMF-fixdate (`Wed, 25 Nov 2026 12:00:00 GMT`), with the weekday checked.
fn parse_http_date(date: &str) -> Option<u64> {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let b = date.as_bytes();
    if b.len() != 29 || &date[3..5] != ", " || &date[25..] != " GMT" {
        return None;
    }
    let num =
        |r: std::ops::Range<usize>| date.get(r).filter(|s| s.bytes().all(|c| c.is_ascii_digit()))?.parse::<i64>().ok();
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| *m == &date[8..11])? as i64 + 1;
    let year = num(12..16)?;
    let (h, m, s) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if [&date[7..8], &date[11..12], &date[16..17], &date[19..20], &date[22..23]] != [" ", " ", " ", ":", ":"] {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    if DAYS[days.rem_euclid(7) as usize] != &date[..3] {
        return None;
    }
    Some((days * 86_400 + h * 3600 + m * 60 + s) as u64)
}

/// The reply with its Date value replaced by `{DATE}`, after checking it against the clock.
fn undate(reply: &[u8]) -> Result<String, String> {
    let text = String::from_utf8(reply.to_vec()).map_err(|e| e.to_string())?;
    let Some(at) = text.find("\r\nDate: ") else { return Ok(text) };
    let start = at + 8;
    let end = start + text[start..].find("\r\n").ok_or("unterminated Date")?;
    let date = &text[start..end];
    let secs = parse_http_date(date).ok_or_else(|| format!("bad Date {date:?}"))?;
    let now = unix_now();
    if secs.abs_diff(now) > 2 {
        return Err(format!("Date {date:?} is {secs}, now is {now}"));
    }
    Ok(format!("{}{{DATE}}{}", &text[..start], &text[end..]))
}

fn read_record(ring: &mut RingBuf<MapData>) -> Option<AbsorbedRefresh> {
    let item = ring.next()?;
    assert_eq!(item.len(), std::mem::size_of::<AbsorbedRefresh>());
    // SAFETY: the kernel wrote one AbsorbedRefresh.
    Some(unsafe { (item.as_ptr() as *const AbsorbedRefresh).read_unaligned() })
}

/// Runs `rows` and returns the failures.
fn run_rows(fastpath: &mut Fastpath, ring: &mut RingBuf<MapData>, rows: Vec<Row>, dated: bool) -> Vec<String> {
    let mut failures = Vec::new();
    for row in rows {
        let fx = &row.fixture;
        if let Some((key, entry)) = &fx.binding {
            fastpath.bindings_mut().unwrap().upsert(*key, entry).expect("insert the entry");
        }
        while read_record(ring).is_some() {}
        let frame = fx.frame();
        let before = counters(fastpath);
        let run = fastpath.test_run(&frame, 1).expect("BPF_PROG_TEST_RUN");
        let after = counters(fastpath);
        let delta = |b: &[u64], a: &[u64]| -> Vec<u64> { a.iter().zip(b).map(|(a, b)| a - b).collect() };
        let (replies, passes) = (delta(&before.0, &after.0), delta(&before.1, &after.1));
        let mut want_replies = vec![0; ReplyKind::COUNT as usize];
        let mut want_passes = vec![0; PassReason::COUNT as usize];
        let outcome: Result<(), String> = (|| {
            match &row.expect {
                Expect::Reply(kind, text) => {
                    want_replies[*kind as usize] = 1;
                    if run.action != XDP_TX {
                        return Err(format!("action {} (passes {passes:?}), want XDP_TX", run.action));
                    }
                    let reply = parse_reply(&run.frame)?;
                    if (reply.eth_src, reply.eth_dst, reply.src, reply.dst)
                        != (PROXY_MAC, PHONE_MAC, fx.proxy, fx.phone)
                    {
                        return Err(format!("addresses not swapped: {reply:?}"));
                    }
                    let mut want = text.replace('\n', "\r\n");
                    if !dated {
                        want = want.replace("Date: {DATE}\r\n", "");
                    }
                    let got = undate(&reply.payload)?;
                    if got != want {
                        return Err(format!("reply\n{got}\nwant\n{want}"));
                    }
                    if reply.payload.len() > fx.request.len() {
                        return Err("reply larger than the request".into());
                    }
                    let record = read_record(ring);
                    if let Some((key, _)) = &fx.binding {
                        let now = monotonic_ms();
                        let updated = fastpath.bindings_mut().unwrap().get(*key).ok_or("entry gone")?;
                        let cseq = regedge::sip::stateless::parse_cseq(
                            text.lines().find(|l| l.to_ascii_lowercase().starts_with("cseq:")).unwrap()[5..].as_bytes(),
                        )
                        .unwrap()
                        .0;
                        if updated.cseq != cseq || updated.last_seen_ms > now || updated.last_seen_ms + 2000 < now {
                            return Err(format!(
                                "entry not updated: cseq {} last_seen {} now {now}",
                                updated.cseq, updated.last_seen_ms
                            ));
                        }
                        let record = record.ok_or("no ABSORBED record")?;
                        if record.call_id_key != *key || record.cseq != cseq || record.seen_ms != updated.last_seen_ms {
                            return Err(format!("ABSORBED record {record:?}"));
                        }
                        let grant: u32 =
                            text.split("\nExpires: ").nth(1).unwrap().split('\n').next().unwrap().parse().unwrap();
                        if record.grant != grant {
                            return Err(format!("ABSORBED grant {} want {grant}", record.grant));
                        }
                    } else if let Some(record) = record {
                        return Err(format!("ABSORBED record for a probe: {record:?}"));
                    }
                }
                Expect::Pass(reason) => {
                    want_passes[*reason as usize] = 1;
                    if run.action != XDP_PASS {
                        return Err(format!("action {}, want XDP_PASS", run.action));
                    }
                    if run.frame != frame {
                        return Err("a passed frame was modified".into());
                    }
                    if let Some((key, entry)) = &fx.binding {
                        if fastpath.bindings_mut().unwrap().get(*key).as_ref() != Some(entry) {
                            return Err("a passed refresh changed its entry".into());
                        }
                    }
                    if let Some(record) = read_record(ring) {
                        return Err(format!("ABSORBED record for a pass: {record:?}"));
                    }
                }
            }
            if replies != want_replies || passes != want_passes {
                return Err(format!(
                    "counters moved: replies {replies:?} passes {passes:?}, want {want_replies:?} {want_passes:?}"
                ));
            }
            Ok(())
        })();
        if let Some((key, _)) = &fx.binding {
            fastpath.bindings_mut().unwrap().remove(*key).unwrap();
        }
        match outcome {
            Ok(()) => eprintln!("ok   {}", fx.name),
            Err(err) => failures.push(format!("FAIL {}: {err}", fx.name)),
        }
    }
    failures
}

#[test]
fn register_fixture_table() {
    if !require_root("register_fixture_table") {
        return;
    }
    let mut fastpath = load(true);
    let mut ring = fastpath.take_absorbed().expect("the ABSORBED ring");
    let mut rows = answered_rows();
    rows.extend(pass_rows());
    let failures = run_rows(&mut fastpath, &mut ring, rows, true);
    assert!(failures.is_empty(), "{} rows failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn without_the_date_header() {
    if !require_root("without_the_date_header") {
        return;
    }
    let mut fastpath = load(false);
    let mut ring = fastpath.take_absorbed().expect("the ABSORBED ring");
    let failures = run_rows(&mut fastpath, &mut ring, answered_rows(), false);
    assert!(failures.is_empty(), "{} rows failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn register_stays_a_pass_without_answer_register() {
    if !require_root("register_stays_a_pass_without_answer_register") {
        return;
    }
    let mut fastpath = Fastpath::load().expect("load");
    fastpath.configure(&listen(), &local_names(), ToTag::for_node(NODE), AnswerSettings::default()).unwrap();
    let fx = refresh("refresh", phone_v4(), proxy_v4(), &v4("n1", CONTACT, ""), |_| {});
    let (key, entry) = fx.binding.unwrap();
    fastpath.bindings_mut().unwrap().upsert(key, &entry).unwrap();
    let before = fastpath.counters().passes(PassReason::NotKeepalive);
    let run = fastpath.test_run(&fx.frame(), 1).unwrap();
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(fastpath.counters().passes(PassReason::NotKeepalive), before + 1);
}

#[test]
fn identity_is_what_the_fixture_helper_computes() {
    // The helper's entry for a refresh uses the trimmed To and Contact values.
    let request = register_request(URI, &v4("h1", CONTACT, ""));
    let (_, entry) = binding_for(&request, phone_v4(), proxy_v4(), CEILING);
    assert_eq!(entry.identity, identity(hash_bytes(b"<sip:1001@example.net>"), hash_bytes(CONTACT.as_bytes())));
    assert_eq!(entry.contact_expires, 3600);
    assert_eq!(
        &CONTACT.as_bytes()[entry.contact_uri_off as usize..][..entry.contact_uri_len as usize],
        CONTACT_URI.as_bytes()
    );
    let (_, bare) = binding_for(&register_request(URI, &v4("h2", "<sip:a@b>", "")), phone_v4(), proxy_v4(), CEILING);
    assert_eq!(bare.contact_expires, NO_CONTACT_EXPIRES);
}

/// Median of the kernel's own timing over `runs` single runs, `prepare` before each.
fn median_ns(
    fastpath: &mut Fastpath,
    frame: &[u8],
    runs: usize,
    want: u32,
    mut prepare: impl FnMut(&mut Fastpath),
) -> u32 {
    let mut durations = Vec::with_capacity(runs);
    for _ in 0..runs {
        prepare(fastpath);
        let run = fastpath.test_run(frame, 1).unwrap();
        assert_eq!(run.action, want);
        durations.push(run.duration_ns);
    }
    durations.sort_unstable();
    durations[runs / 2]
}

/// Kernel cost of a 600-byte refresh beside an OPTIONS keepalive, on the same machine in
/// the same run. `repeat` reruns the program on the frame it left behind (the reply after
/// an XDP_TX), so the per-call median of single runs is the figure for an answer.
#[test]
fn refresh_cost() {
    if !require_root("refresh_cost") {
        return;
    }
    let mut fastpath = load(true);
    let phone = phone_v4();
    let request = sized_register(phone, "cost-refresh", 102, 600);
    assert_eq!(request.len(), 600);
    let (key, entry) = binding_for(&request, phone, proxy_v4(), CEILING);
    let frame = udp_frame(phone, proxy_v4(), &request);
    fastpath.bindings_mut().unwrap().upsert(key, &entry).unwrap();
    let repeated = fastpath.test_run(&frame, 100_000).unwrap();
    eprintln!(
        "600-byte refresh, repeat=100000: {} ns per run (last action {}: the runs after the first see the reply)",
        repeated.duration_ns, repeated.action
    );
    const RUNS: usize = 20_000;
    let register_ns = median_ns(&mut fastpath, &frame, RUNS, XDP_TX, |f| {
        f.bindings_mut().unwrap().upsert(key, &entry).unwrap();
    });
    let options = options_request("sip:edge.example.net", phone, "cost-options", "");
    let options_frame = udp_frame(phone, proxy_v4(), &options);
    let options_repeated = fastpath.test_run(&options_frame, 100_000).unwrap();
    let options_ns = median_ns(&mut fastpath, &options_frame, RUNS, XDP_TX, |_| {});
    let unknown_frame = udp_frame(phone, proxy_v4(), &sized_register(phone, "cost-unknown", 102, 600));
    let unknown_ns = median_ns(&mut fastpath, &unknown_frame, RUNS, XDP_PASS, |_| {});
    eprintln!("kernel ns per packet, median of {RUNS} single runs:");
    eprintln!("  600-byte REGISTER refresh answered     {register_ns:>6} ns");
    eprintln!("  600-byte REGISTER, unknown Call-ID     {unknown_ns:>6} ns (XDP_PASS)");
    eprintln!("  {}-byte OPTIONS answered               {options_ns:>6} ns", options.len());
    eprintln!(
        "  OPTIONS repeat=100000                  {:>6} ns per run (after the first: the reply, passed)",
        options_repeated.duration_ns
    );
    assert!(register_ns < 50_000, "a refresh costs {register_ns} ns in the kernel");
}
