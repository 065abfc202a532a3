//! Calls through the edge, message by message through the engine: phones register, a
//! call is set up and torn down both ways, and every refusal has its row.

use super::*;
use crate::{
    engine::{Engine, Outcome, Output, Rejection},
    registrar::{Now, tests::registrar_from},
    sip::{HeaderName, Message, stateless::ToTag},
};

const CONFIG: &str = r#"
[registration]
phone_expires = 120
backend_expires = 3600
expires_jitter = 0.0

[[backends]]
name = "cm1"
address = "10.0.0.11:5060"

[[backends]]
name = "cm2"
address = "10.0.0.12:5060"
path = false

[[groups]]
name = "default"
backends = ["cm1"]

[[groups]]
name = "contacts"
backends = ["cm2"]

[[rules]]
domain = "nopath.example.net"
group = "contacts"
"#;

const EDGE: &str = "10.0.0.1:5060";

fn engine() -> Engine {
    let listen = [EDGE.parse().unwrap()];
    Engine::new(LocalNames::new(&[], &listen, &[]), ToTag::for_node("t"), Some(registrar_from(CONFIG)))
}

fn now() -> Now {
    Now { mono_ms: 10_000, unix_secs: 1_795_608_000 }
}

fn udp(peer: &str) -> Flow {
    Flow { transport: Transport::Udp, peer: peer.parse().unwrap(), local: EDGE.parse().unwrap(), connection: None }
}

fn backend_flow(n: u8) -> Flow {
    udp(&format!("10.0.0.1{n}:5060"))
}

/// One message through the engine: its outcome, the reply and the sends.
fn step(engine: &Engine, bytes: &[u8], from: Flow) -> (Outcome, String, Vec<Send>) {
    let mut out = Output::default();
    let outcome = engine.on_datagram(bytes, from, now(), &mut out);
    (outcome, String::from_utf8(out.reply).unwrap(), out.sends)
}

fn text(send: &Send) -> String {
    String::from_utf8(send.bytes.clone()).unwrap()
}

/// A response to `request` as a UAS writes it: its Via, From, To (tagged), Call-ID,
/// CSeq and Record-Route, plus `extra` lines.
fn respond(request: &[u8], status: &str, to_tag: &str, extra: &str) -> Vec<u8> {
    let msg = Message::parse(request).unwrap();
    let mut out = format!("SIP/2.0 {status}\r\n");
    for h in msg.headers() {
        let name = HeaderName::of(h.name);
        let copied = name != HeaderName::Other || h.name.eq_ignore_ascii_case(b"record-route");
        if !copied {
            continue;
        }
        let raw = String::from_utf8_lossy(h.raw);
        if name == HeaderName::To && !raw.contains(";tag=") {
            out.push_str(&format!("{};tag={to_tag}\r\n", raw.trim_end()));
        } else {
            out.push_str(&raw);
        }
    }
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

fn header<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    message
        .split("\r\n")
        .filter_map(|l| l.split_once(": ").filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v))
        .collect()
}

/// Registers `user`@`domain` from `phone` through `engine`; returns the REGISTER the
/// backend saw.
fn register(engine: &Engine, user: &str, domain: &str, phone: Flow, backend: u8) -> String {
    let port = phone.peer.port();
    let register = format!(
        "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.5:{port};branch=z9hG4bKr{user};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=f{user}\r\nTo: <sip:{user}@{domain}>\r\n\
         Call-ID: reg-{user}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@192.168.1.5:{port}>\r\nExpires: 120\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let (outcome, _, sends) = step(engine, register.as_bytes(), phone);
    assert_eq!(outcome, Outcome::Registration(crate::registrar::RegistrationOutcome::Forwarded));
    let forwarded = text(&sends[0]);
    let contact = header(&forwarded, "Contact")[0].to_owned();
    let ok = respond(&sends[0].bytes, "200 OK", "reg", &format!("Contact: {contact};expires=3600\r\n"));
    let (outcome, _, sends) = step(engine, &ok, backend_flow(backend));
    assert_eq!(outcome, Outcome::Relayed);
    assert!(text(&sends[0]).starts_with("SIP/2.0 200 OK"), "{}", text(&sends[0]));
    forwarded
}

fn invite(from_user: &str, to: &str, phone: Flow, extra: &str) -> Vec<u8> {
    let port = phone.peer.port();
    format!(
        "INVITE {to} SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.5:{port};branch=z9hG4bKinv{from_user};rport\r\n\
         {extra}Max-Forwards: 70\r\nFrom: <sip:{from_user}@example.net>;tag=a{from_user}\r\nTo: <{to}>\r\n\
         Call-ID: call-{from_user}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from_user}@192.168.1.5:{port}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The Path URI a backend stores for a registration (as a Route value).
fn path_of(forwarded_register: &str) -> String {
    header(forwarded_register, "Path")[0].to_owned()
}

/// The INVITE a backend sends to a registered phone: its R-URI the contact, Route the Path.
fn backend_invite(contact: &str, route: &str, call_id: &str) -> Vec<u8> {
    format!(
        "INVITE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bKcm{call_id}\r\n\
         Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-rpx;rgf=00\r\nRoute: {route}\r\nMax-Forwards: 68\r\n\
         From: <sip:1001@example.net>;tag=a1001\r\nTo: <sip:1002@example.net>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:1001@192.168.1.5:5062>\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn a_call_is_set_up_and_torn_down_both_ways() {
    let engine = engine();
    let alice = udp("203.0.113.1:5062");
    let bob = udp("203.0.113.2:5064");
    register(&engine, "1001", "example.net", alice, 1);
    let bob_register = register(&engine, "1002", "example.net", bob, 1);

    // Alice → cm1: our Via naming Alice's flow, her Via stamped, Record-Route with her token.
    let invite_a = invite("1001", "sip:1002@example.net", alice, "");
    let (outcome, reply, sends) = step(&engine, &invite_a, alice);
    assert_eq!(outcome, Outcome::Routed(MethodLabel::of(b"INVITE"), Toward::Backend), "{reply}");
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].to, Destination::Backend(BackendId(0)));
    let to_cm1 = text(&sends[0]);
    let vias = header(&to_cm1, "Via");
    assert!(vias[0].starts_with(&format!("SIP/2.0/UDP {EDGE};branch={BRANCH_PREFIX}")), "{to_cm1}");
    assert_eq!(vias[1], "SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bKinv1001;received=203.0.113.1;rport=5062");
    let alice_token = token::encode(&alice, 7);
    assert_eq!(header(&to_cm1, "Record-Route"), [format!("<sip:{alice_token}@{EDGE};lr>")]);
    assert_eq!(header(&to_cm1, "Max-Forwards"), ["69"]);

    // cm1 → Bob, by the Path it stored: the Route goes, Bob's flow gets it.
    let path = path_of(&bob_register);
    let mut to_bob_invite = String::from_utf8(backend_invite("sip:1002@192.168.1.5:5064", &path, "call-1001")).unwrap();
    to_bob_invite =
        to_bob_invite.replace("Route:", &format!("Record-Route: {}\r\nRoute:", header(&to_cm1, "Record-Route")[0]));
    let (outcome, reply, sends) = step(&engine, to_bob_invite.as_bytes(), backend_flow(1));
    assert_eq!(outcome, Outcome::Routed(MethodLabel::of(b"INVITE"), Toward::Phone), "{reply}");
    assert_eq!(sends[0].to, Destination::Phone(bob));
    let at_bob = text(&sends[0]);
    assert!(header(&at_bob, "Route").is_empty(), "{at_bob}");
    let bob_token = token::encode(&bob, 7);
    assert_eq!(
        header(&at_bob, "Record-Route"),
        [format!("<sip:{bob_token}@{EDGE};lr>"), format!("<sip:{alice_token}@{EDGE};lr>")]
    );

    // Bob's 200 goes back to cm1 (the flow that sent the INVITE), cm1's to Alice.
    let ok_bob = respond(&sends[0].bytes, "200 OK", "b1002", "Contact: <sip:1002@192.168.1.5:5064>\r\n");
    let (outcome, _, sends) = step(&engine, &ok_bob, bob);
    assert_eq!(outcome, Outcome::RelayedResponse);
    assert_eq!(sends[0].to, Destination::Phone(backend_flow(1)));
    assert!(!text(&sends[0]).contains(&format!("rgf={}", token::encode(&backend_flow(1), 7))));
    let ok_cm1 = respond(&to_cm1.into_bytes(), "200 OK", "b1002", "Contact: <sip:1002@192.168.1.5:5064>\r\n");
    let (outcome, _, sends) = step(&engine, &ok_cm1, backend_flow(1));
    assert_eq!(outcome, Outcome::RelayedResponse);
    assert_eq!(sends[0].to, Destination::Phone(alice));
    let at_alice = text(&sends[0]);
    assert!(at_alice.starts_with("SIP/2.0 200 OK\r\n"), "{at_alice}");
    assert_eq!(
        header(&at_alice, "Via"),
        ["SIP/2.0/UDP 192.168.1.5:5062;branch=z9hG4bKinv1001;received=203.0.113.1;rport=5062"]
    );

    // In dialog, by Record-Route: Alice's ACK and BYE reach Bob, Bob's BYE reaches Alice,
    // without the backend (it did not record-route).
    let route_set_alice = format!("<sip:{alice_token}@{EDGE};lr>, <sip:{bob_token}@{EDGE};lr>");
    let route_set_bob = format!("<sip:{bob_token}@{EDGE};lr>, <sip:{alice_token}@{EDGE};lr>");
    for (method, from, route, to) in [
        ("ACK", alice, &route_set_alice, bob),
        ("BYE", alice, &route_set_alice, bob),
        ("BYE", bob, &route_set_bob, alice),
    ] {
        let request = format!(
            "{method} sip:peer@192.168.1.5:5064 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.5:{};branch=z9hG4bK{method}{}\r\n\
             Route: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:1001@example.net>;tag=a1001\r\n\
             To: <sip:1002@example.net>;tag=b1002\r\nCall-ID: call-1001\r\nCSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n",
            from.peer.port(),
            from.peer.port()
        );
        let (outcome, reply, sends) = step(&engine, request.as_bytes(), from);
        assert_eq!(outcome, Outcome::Routed(MethodLabel::of(method.as_bytes()), Toward::Phone), "{method}: {reply}");
        assert_eq!(sends[0].to, Destination::Phone(to), "{method}");
        let forwarded = text(&sends[0]);
        assert!(header(&forwarded, "Route").is_empty() && header(&forwarded, "Record-Route").is_empty());
    }
}

#[test]
fn cancel_and_non_2xx_ack_take_the_invites_branch() {
    let engine = engine();
    let alice = udp("203.0.113.1:5062");
    register(&engine, "1001", "example.net", alice, 1);
    let invite_a = invite("1001", "sip:1002@example.net", alice, "");
    let (_, _, sends) = step(&engine, &invite_a, alice);
    let branch_of = |bytes: &[u8]| header(&String::from_utf8_lossy(bytes), "Via")[0].to_owned();
    let invite_branch = branch_of(&sends[0].bytes);
    let retransmitted = step(&engine, &invite_a, alice).2;
    assert_eq!(branch_of(&retransmitted[0].bytes), invite_branch);
    for method in ["CANCEL", "ACK"] {
        let text = String::from_utf8(invite_a.clone()).unwrap().replace("INVITE", method);
        let (outcome, _, sends) = step(&engine, text.as_bytes(), alice);
        assert_eq!(outcome, Outcome::Routed(MethodLabel::of(method.as_bytes()), Toward::Backend));
        assert_eq!(branch_of(&sends[0].bytes), invite_branch, "{method}");
        assert!(header(&String::from_utf8_lossy(&sends[0].bytes), "Record-Route").is_empty(), "{method}");
    }
}

#[test]
fn refusals() {
    let engine = engine();
    let alice = udp("203.0.113.1:5062");
    let bob = udp("203.0.113.2:5064");
    register(&engine, "1001", "example.net", alice, 1);
    let bob_register = register(&engine, "1002", "example.net", bob, 1);
    let path = path_of(&bob_register);
    let refused = |bytes: &[u8], from: Flow| {
        let (outcome, reply, sends) = step(&engine, bytes, from);
        assert!(sends.is_empty(), "{outcome:?} {reply} {sends:?}");
        (outcome, reply)
    };

    // A token this node did not issue, or altered: 430.
    let forged = path.replace(&token::encode(&bob, 7), &token::encode(&bob, 8));
    let (outcome, reply) = refused(&backend_invite("sip:1002@x", &forged, "f1"), backend_flow(1));
    assert_eq!(outcome, Outcome::Rejected(Rejection::Call(Refusal::FlowFailed)));
    assert!(reply.starts_with("SIP/2.0 430 Flow Failed\r\n"), "{reply}");
    // A TCP flow whose connection is gone: 430.
    let gone = Flow {
        transport: Transport::Tcp,
        peer: "203.0.113.9:40000".parse().unwrap(),
        local: EDGE.parse().unwrap(),
        connection: Some(ConnectionId(99)),
    };
    let route = format!("<sip:{}@{EDGE};transport=tcp;lr>", token::encode(&gone, 7));
    let (outcome, _) = refused(&backend_invite("sip:x@y", &route, "f2"), backend_flow(1));
    assert_eq!(outcome, Outcome::Rejected(Rejection::Call(Refusal::FlowFailed)));
    engine.connections.insert(ConnectionId(99), 0);
    let (outcome, _, sends) = step(&engine, &backend_invite("sip:x@y", &route, "f2"), backend_flow(1));
    assert!(matches!(outcome, Outcome::Rejected(Rejection::Call(Refusal::BindingLapsed))), "{outcome:?} {sends:?}");

    // Max-Forwards 0: 483; an ACK is dropped instead.
    let zero = String::from_utf8(backend_invite("sip:1002@x", &path, "f3"))
        .unwrap()
        .replace("Max-Forwards: 68", "Max-Forwards: 0");
    let (outcome, reply) = refused(zero.as_bytes(), backend_flow(1));
    assert_eq!(outcome, Outcome::Rejected(Rejection::Call(Refusal::TooManyHops)));
    assert!(reply.starts_with("SIP/2.0 483 Too Many Hops\r\n"), "{reply}");
    let (outcome, reply) = refused(zero.replace("INVITE", "ACK").as_bytes(), backend_flow(1));
    assert_eq!((outcome, reply.as_str()), (Outcome::Dropped(crate::engine::DropReason::Ack), ""));

    // Bob's binding lapses: a new call to him gets 480, an in-dialog request still goes.
    engine.registrar.as_ref().unwrap().registry.remove("aor:sip:1002@example.net");
    let (outcome, reply) = refused(&backend_invite("sip:1002@x", &path, "f4"), backend_flow(1));
    assert_eq!(outcome, Outcome::Rejected(Rejection::Call(Refusal::BindingLapsed)));
    assert!(reply.starts_with("SIP/2.0 480 Temporarily Unavailable\r\n"), "{reply}");
    let bye = String::from_utf8(backend_invite("sip:1002@x", &path, "f4"))
        .unwrap()
        .replace("INVITE", "BYE")
        .replace("To: <sip:1002@example.net>", "To: <sip:1002@example.net>;tag=b");
    assert_eq!(
        step(&engine, bye.as_bytes(), backend_flow(1)).0,
        Outcome::Routed(MethodLabel::of(b"BYE"), Toward::Phone)
    );

    // A new call from a flow with no registration: 403; from a backend naming no phone: 404;
    // to a next hop that is not a backend: 403.
    let (outcome, reply) =
        refused(&invite("9", "sip:1001@example.net", udp("198.51.100.1:5060"), ""), udp("198.51.100.1:5060"));
    assert_eq!(outcome, Outcome::Rejected(Rejection::Call(Refusal::NotRegistered)), "{reply}");
    let (outcome, _) =
        refused(&backend_invite("sip:1002@192.168.1.5", "<sip:198.51.100.50;lr>", "f5"), backend_flow(1));
    assert_eq!(outcome, Outcome::Rejected(Rejection::Call(Refusal::RouteNotAllowed)));
    let no_route =
        String::from_utf8(backend_invite("sip:1002@192.168.1.5", "x", "f6")).unwrap().replace("Route: x\r\n", "");
    let (outcome, _) = refused(no_route.as_bytes(), backend_flow(1));
    assert_eq!(outcome, Outcome::Rejected(Rejection::Call(Refusal::NoFlow)));
    let elsewhere = invite("1001", "sip:1002@example.net", alice, "Route: <sip:198.51.100.50;lr>\r\n");
    let (outcome, _) = refused(&elsewhere, alice);
    assert_eq!(outcome, Outcome::Rejected(Rejection::Call(Refusal::RouteNotAllowed)));
}

#[test]
fn a_backend_without_path_gets_a_flow_token_contact() {
    let engine = engine();
    let carol = udp("203.0.113.3:5066");
    let forwarded = register(&engine, "1003", "nopath.example.net", carol, 2);
    assert!(header(&forwarded, "Path").is_empty(), "{forwarded}");
    let carol_token = token::encode(&carol, 7);
    assert_eq!(header(&forwarded, "Contact"), [format!("<sip:{carol_token}@{EDGE};ob>")]);
    let binding = engine.registrar.as_ref().unwrap().registry.by_flow(&carol).expect("stored").1;
    assert_eq!(binding.contact, "sip:1003@192.168.1.5:5066");
    assert_eq!(binding.backend, BackendId(1));

    // cm2 calls the contact it stored: the Request-URI becomes Carol's own again.
    let request = String::from_utf8(backend_invite(&format!("sip:{carol_token}@{EDGE};ob"), "x", "c1"))
        .unwrap()
        .replace("Route: x\r\n", "")
        .replace("10.0.0.11:5060;branch", "10.0.0.12:5060;branch");
    let (outcome, reply, sends) = step(&engine, request.as_bytes(), backend_flow(2));
    assert_eq!(outcome, Outcome::Routed(MethodLabel::of(b"INVITE"), Toward::Phone), "{reply}");
    assert_eq!(sends[0].to, Destination::Phone(carol));
    assert!(text(&sends[0]).starts_with("INVITE sip:1003@192.168.1.5:5066 SIP/2.0\r\n"), "{}", text(&sends[0]));
    let forged = request.replace(&carol_token[..10], "0000000000");
    assert_eq!(
        step(&engine, forged.as_bytes(), backend_flow(2)).0,
        Outcome::Rejected(Rejection::Call(Refusal::FlowFailed))
    );
}

#[test]
fn tcp_phones_and_double_record_route() {
    let engine = engine();
    let dave = Flow {
        transport: Transport::Tcp,
        peer: "203.0.113.4:41000".parse().unwrap(),
        local: EDGE.parse().unwrap(),
        connection: Some(ConnectionId(5)),
    };
    engine.connections.insert(ConnectionId(5), 0);
    register(&engine, "1004", "example.net", dave, 1);
    let (outcome, _, sends) = step(&engine, &invite("1004", "sip:1001@example.net", dave, ""), dave);
    assert_eq!(outcome, Outcome::Routed(MethodLabel::of(b"INVITE"), Toward::Backend));
    let token = token::encode(&dave, 7);
    // UDP toward cm1, TCP toward Dave: two entries, each naming its transport.
    assert_eq!(
        header(&text(&sends[0]), "Record-Route"),
        [format!("<sip:{token}@{EDGE};lr>"), format!("<sip:{token}@{EDGE};transport=tcp;lr>")]
    );
    // The answer goes back over Dave's connection.
    let ok = respond(&sends[0].bytes, "180 Ringing", "x", "");
    let (_, _, sends) = step(&engine, &ok, backend_flow(1));
    assert_eq!(sends[0].to, Destination::Phone(dave));
}
