//! The protocol core for SIP and STUN over UDP (and, message by message, TCP): no I/O,
//! no clock. The shell hands it a message, the flow it came from and the time; it writes
//! the answer to the sender into one buffer, messages for elsewhere (backends, relayed
//! responses) into another, and says what happened, for the shell to send and count.
//!
//! Keepalives — STUN, CRLF, OPTIONS to the proxy — get the bytes the XDP program sends
//! for the same request; REGISTERs go to the registrar when failover groups are
//! configured; every other request is routed as `calls` says (phone to backend, backend
//! to phone); malformed requests get a 400 that names the problem.

use std::net::SocketAddr;

use dashmap::DashMap;
use regedge_common::{ReplyKind, sip::CRLF_KEEPALIVES};

use crate::{
    calls::{MethodLabel, Refusal, Routed, Router, Toward},
    local_names::LocalNames,
    registrar::{Now, Registrar, RegistrationOutcome, Send},
    registry::{ConnectionId, Flow, Transport},
    sip::{
        Message, ParseError, StartLine,
        stateless::{self, RequestError, ToTag},
        uri,
    },
    stun::{self, StunOutcome},
};

/// What the engine did with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A keepalive answered; the reply is in the output buffer.
    Replied(ReplyKind),
    /// A keepalive absorbed; nothing to send.
    Absorbed(ReplyKind),
    /// An error response is in the output buffer.
    Rejected(Rejection),
    /// Nothing to send.
    Dropped(DropReason),
    /// A REGISTER handled by the registrar.
    Registration(RegistrationOutcome),
    /// A backend's response to a REGISTER relayed toward a phone (counted by the registrar).
    Relayed,
    /// A request routed toward a backend or a phone.
    Routed(MethodLabel, Toward),
    /// A response to a routed request relayed to where the request came from.
    RelayedResponse,
}

/// Error responses the edge sends itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the SIP framing is broken (a header line without a colon, ...).
    Malformed(ParseError),
    /// 400: a dialog header is duplicated, empty or malformed.
    BadRequest(RequestError),
    /// 503: a request, but no failover group is configured to send it to.
    NoRegistrar,
    /// STUN 420: comprehension-required attributes regedge does not implement.
    StunUnknownAttributes,
    /// A request the call router answers itself (430, 480, 483, 403, 404, 503).
    Call(Refusal),
}

impl Rejection {
    /// Values of the `reason` metric label, indexed by [`Rejection::index`].
    pub const LABELS: [&'static str; 4 + Refusal::ALL.len()] = {
        let mut labels =
            ["malformed", "bad_request", "stun_unknown_attribute", "no_registrar", "", "", "", "", "", "", ""];
        let mut i = 0;
        while i < Refusal::ALL.len() {
            labels[4 + i] = Refusal::ALL[i].label();
            i += 1;
        }
        labels
    };

    pub const fn index(self) -> usize {
        match self {
            Self::Malformed(_) => 0,
            Self::BadRequest(_) => 1,
            Self::StunUnknownAttributes => 2,
            Self::NoRegistrar => 3,
            Self::Call(refusal) => 4 + refusal as usize,
        }
    }

    /// Value of the `reason` metric label.
    pub const fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// Status code and reason phrase of the answer.
    pub const fn status(self) -> (u16, &'static str) {
        match self {
            Self::Malformed(_) => (400, "Malformed Header Line"),
            Self::BadRequest(err) => err.status(),
            Self::StunUnknownAttributes => (420, "Unknown Attribute"),
            Self::NoRegistrar => (503, "No Failover Group Configured"),
            Self::Call(refusal) => refusal.status(),
        }
    }
}

/// Datagrams that get no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Neither STUN nor a SIP message.
    NotSip,
    /// A SIP request without the headers a response needs (Via, From, To, Call-ID, CSeq).
    Unanswerable,
    /// A SIP response with no transaction to relay it to.
    StrayResponse,
    /// An ACK that could not be routed: never answered (RFC 3261 §17).
    Ack,
    /// STUN that is not a Binding Request, or whose lengths do not add up.
    StunIgnored,
    /// A request for a phone of another node while the cluster store is asked about it.
    AwaitingStore,
}

impl DropReason {
    pub const ALL: [DropReason; 6] =
        [Self::NotSip, Self::Unanswerable, Self::StrayResponse, Self::Ack, Self::StunIgnored, Self::AwaitingStore];

    pub const fn label(self) -> &'static str {
        match self {
            Self::NotSip => "not_sip",
            Self::Unanswerable => "unanswerable",
            Self::StrayResponse => "stray_response",
            Self::Ack => "ack",
            Self::StunIgnored => "stun_ignored",
            Self::AwaitingStore => "awaiting_store",
        }
    }
}

/// The protocol core of a node.
pub struct Engine {
    local_names: LocalNames,
    to_tag: ToTag,
    /// `None` when no failover group is configured: requests are then answered 503.
    pub registrar: Option<Registrar>,
    /// Open TCP connections (phones' and backends') and the event loop that owns each; the
    /// shell keeps it current. A flow token naming a closed one fails (430).
    pub connections: DashMap<ConnectionId, usize>,
}

/// What one message makes the node send: the answer to its sender, and the rest.
#[derive(Debug, Default)]
pub struct Output {
    pub reply: Vec<u8>,
    pub sends: Vec<Send>,
}

impl Output {
    pub fn clear(&mut self) {
        self.reply.clear();
        self.sends.clear();
    }
}

impl Engine {
    pub fn new(local_names: LocalNames, to_tag: ToTag, registrar: Option<Registrar>) -> Self {
        Self { local_names, to_tag, registrar, connections: DashMap::new() }
    }

    /// Handles one datagram from `peer` with no registrar state involved (keepalives,
    /// errors): the answer, if any, is left in `reply`. Used where only the answer to the
    /// sender matters (parity with the kernel).
    pub fn answer_datagram(&self, payload: &[u8], peer: SocketAddr, local: SocketAddr, reply: &mut Vec<u8>) -> Outcome {
        let mut output = Output { reply: std::mem::take(reply), sends: Vec::new() };
        let flow = Flow { transport: Transport::Udp, peer, local, connection: None };
        let outcome = self.on_datagram(payload, flow, Now { mono_ms: 0, unix_secs: 0 }, &mut output);
        *reply = output.reply;
        outcome
    }

    /// Handles one datagram (or one framed TCP message) from `flow`.
    pub fn on_datagram(&self, payload: &[u8], flow: Flow, now: Now, out: &mut Output) -> Outcome {
        out.clear();
        if CRLF_KEEPALIVES.contains(&payload) {
            return Outcome::Absorbed(ReplyKind::Crlf);
        }
        if flow.transport == Transport::Udp && stun::is_stun(payload) {
            return match stun::answer(payload, flow.peer, &mut out.reply) {
                StunOutcome::Success => Outcome::Replied(ReplyKind::Stun),
                StunOutcome::UnknownAttributes => Outcome::Rejected(Rejection::StunUnknownAttributes),
                StunOutcome::NotBindingRequest | StunOutcome::Malformed => Outcome::Dropped(DropReason::StunIgnored),
            };
        }
        self.on_sip(payload, flow, now, out)
    }

    fn on_sip(&self, payload: &[u8], flow: Flow, now: Now, out: &mut Output) -> Outcome {
        let (msg, framing_error) = match Message::parse(payload) {
            Ok(msg) => (msg, None),
            Err(err) => match Message::frame(payload) {
                Ok(msg) => (msg, Some(err)),
                Err(_) => return Outcome::Dropped(DropReason::NotSip),
            },
        };
        let StartLine::Request { method, uri } = msg.start else {
            if framing_error.is_none()
                && let Some(registrar) = &self.registrar
            {
                // Answers to forwarded REGISTERs count only from a backend: the branch of
                // regedge's Via is computable by the phone that sent the REGISTER, so a
                // 200 OK from anywhere else could store a binding no backend accepted.
                if registrar.is_backend_address(flow.peer) && registrar.on_response(&msg, payload, now, &mut out.sends)
                {
                    return Outcome::Relayed;
                }
                if self.router(registrar).relay_response(&msg, payload, &mut out.sends) {
                    return Outcome::RelayedResponse;
                }
            }
            return Outcome::Dropped(DropReason::StrayResponse);
        };
        let is_ack = method == b"ACK";
        if let Err(err) = stateless::check_request(&msg) {
            if !err.is_answerable() || is_ack {
                return Outcome::Dropped(DropReason::Unanswerable);
            }
            return self.reject(&msg, Rejection::BadRequest(err), &mut out.reply);
        }
        if let Some(err) = framing_error {
            if is_ack {
                return Outcome::Dropped(DropReason::Ack);
            }
            return self.reject(&msg, Rejection::Malformed(err), &mut out.reply);
        }
        if method == b"OPTIONS" && uri::proxy_host(uri).is_some_and(|h| self.local_names.contains(h)) {
            stateless::write_response(&msg, 200, "OK", self.to_tag, &mut out.reply);
            return Outcome::Replied(ReplyKind::Options);
        }
        if method == b"REGISTER" {
            return match &self.registrar {
                Some(registrar) => Outcome::Registration(registrar.on_register(
                    &msg,
                    payload,
                    flow,
                    now,
                    &mut out.reply,
                    &mut out.sends,
                )),
                None => self.reject(&msg, Rejection::NoRegistrar, &mut out.reply),
            };
        }
        let Some(registrar) = &self.registrar else {
            if is_ack {
                return Outcome::Dropped(DropReason::Ack);
            }
            return self.reject(&msg, Rejection::NoRegistrar, &mut out.reply);
        };
        match self.router(registrar).route(&msg, payload, flow, &mut out.sends) {
            Routed::Forwarded(method, toward) => Outcome::Routed(method, toward),
            Routed::Refused(refusal) => self.reject(&msg, Rejection::Call(refusal), &mut out.reply),
            Routed::AckDropped => Outcome::Dropped(DropReason::Ack),
            Routed::AwaitingStore => Outcome::Dropped(DropReason::AwaitingStore),
        }
    }

    fn router<'a>(&'a self, registrar: &'a Registrar) -> Router<'a> {
        Router { registrar, local_names: &self.local_names, connections: &self.connections }
    }

    fn reject(&self, msg: &Message<'_>, rejection: Rejection, out: &mut Vec<u8>) -> Outcome {
        let (status, reason) = rejection.status();
        stateless::write_response(msg, status, reason, self.to_tag, out);
        Outcome::Rejected(rejection)
    }

    /// Timers (once per tick from one event loop).
    pub fn on_tick(&self, now: Now, sends: &mut Vec<Send>) {
        if let Some(registrar) = &self.registrar {
            registrar.on_tick(now, sends);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let listen = ["192.0.2.1:5060".parse().unwrap()];
        Engine::new(LocalNames::new(&["edge.example.net".into()], &listen, &[]), ToTag::for_node("t"), None)
    }

    fn sip(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    const PEER: &str = "192.0.2.9:5062";

    fn run(payload: &[u8]) -> (Outcome, String) {
        let mut out = Vec::new();
        let outcome =
            engine().answer_datagram(payload, PEER.parse().unwrap(), "192.0.2.1:5060".parse().unwrap(), &mut out);
        (outcome, String::from_utf8_lossy(&out).into_owned())
    }

    fn flow_of(peer: &str) -> Flow {
        Flow {
            transport: Transport::Udp,
            peer: peer.parse().unwrap(),
            local: "192.0.2.1:5060".parse().unwrap(),
            connection: None,
        }
    }

    const HEADERS: &str =
        "Via: SIP/2.0/UDP 192.0.2.9:5062;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\nTo: <sip:x>\nCall-ID: c\n";

    /// Hostile input: hand-written breakage plus seeded mutations of valid messages.
    /// Every input gets an outcome without a panic, and every answer is a SIP response.
    #[test]
    fn malformed_corpus_is_answered_or_dropped() {
        let config = "[[backends]]\nname = \"cm1\"\naddress = \"10.0.0.11:5060\"\n[[groups]]\nname = \"default\"\nbackends = [\"cm1\"]\n";
        let engine = Engine::new(
            LocalNames::new(&["edge.example.net".into()], &["192.0.2.1:5060".parse().unwrap()], &[]),
            ToTag::for_node("t"),
            Some(crate::registrar::tests::registrar_from(config)),
        );
        let register = sip(&format!(
            "REGISTER sip:example.net SIP/2.0\n{HEADERS}CSeq: 1 REGISTER\nContact: <sip:a@192.0.2.9:5062>;expires=60\nExpires: 60\n\n"
        ));
        let options = sip(&format!("OPTIONS sip:edge.example.net SIP/2.0\n{HEADERS}CSeq: 1 OPTIONS\n\n"));
        // A request for a phone as a call server sends it: a Route with a flow token.
        // A re-INVITE for another phone, routed by the Record-Route token of its flow.
        let token = crate::calls::token::encode(&flow_of("192.0.2.10:5062"), 7);
        let invite = sip(&format!(
            "INVITE sip:1001@192.0.2.10:5062 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.9:5062;branch=z9hG4bK2\n\
             From: <sip:a@b>;tag=1\nTo: <sip:1001@b>;tag=2\nCall-ID: c\nCSeq: 2 INVITE\n\
             Route: <sip:192.0.2.1;lr>, <sip:{token}@192.0.2.1:5060;lr>\nMax-Forwards: 3\nContent-Length: 4\n\nv=0\n"
        ));
        let mut corpus: Vec<Vec<u8>> = [
            "", "\r\n\r\n\r\n", "SIP/2.0", "REGISTER\r\n\r\n", "REGISTER sip:x SIP/2.0\r\n\r\n",
            "REGISTER sip:x SIP/2.0\r\nVia: \r\nTo: \r\nFrom: x\r\nCall-ID: \r\nCSeq: 1 REGISTER\r\n\r\n",
            "REGISTER sip:x SIP/2.0\r\nVia: v\r\nTo: <sip:a@b\r\nFrom: f\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: <\r\n\r\n",
            "REGISTER sip:x SIP/2.0\r\nVia: v\r\nTo: t\r\nFrom: f\r\nCall-ID: c\r\nCSeq: 99999999999 REGISTER\r\n\r\n",
            "REGISTER sip:x SIP/2.0\r\nVia: v\r\nTo: <sip:a@b>\r\nFrom: f\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nExpires: -1\r\n\r\n",
            "REGISTER sip:x SIP/2.0\r\nVia: v\r\nTo: <sip:a@b>\r\nFrom: f\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: *, <sip:x>\r\n\r\n",
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-rg0000000000000000\r\n\r\n",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        corpus.push(b"\x00\x01\x00\x04\x21\x12\xa4\x42abcdefghijkl\x80\x28\x00\x08".to_vec());
        let mut rng = crate::testing::Rng(0x9E37_79B9_7F4A_7C15);
        let mut random = move |n: usize| rng.below(n);
        for _ in 0..3000 {
            let mut m = [&register, &options, &invite][random(3)].clone();
            const NOISE: &[u8] = b"\r\n:;<>\" ,@=0\x00\xff";
            for _ in 0..1 + random(4) {
                if m.is_empty() {
                    break;
                }
                let at = random(m.len());
                match random(4) {
                    0 => m[at] = NOISE[random(NOISE.len())],
                    1 => drop(m.remove(at)),
                    2 => m.insert(at, NOISE[random(NOISE.len())]),
                    _ => m.truncate(at),
                }
            }
            corpus.push(m);
        }
        let flow = flow_of(PEER);
        let mut out = Output::default();
        let (mut registrations, mut rejected, mut dropped, mut routed) = (0, 0, 0, 0);
        for (i, input) in corpus.iter().enumerate() {
            let outcome = engine.on_datagram(input, flow, Now { mono_ms: i as u64, unix_secs: 0 }, &mut out);
            match outcome {
                Outcome::Registration(_) => registrations += 1,
                Outcome::Rejected(_) => rejected += 1,
                Outcome::Dropped(_) => dropped += 1,
                Outcome::Routed(..) => routed += 1,
                _ => {}
            }
            if !out.reply.is_empty()
                && !matches!(
                    outcome,
                    Outcome::Replied(ReplyKind::Stun) | Outcome::Rejected(Rejection::StunUnknownAttributes)
                )
            {
                let reply = Message::parse(&out.reply).unwrap_or_else(|e| {
                    panic!("answer to #{i} does not parse ({e}): {:?}", String::from_utf8_lossy(&out.reply))
                });
                assert!(matches!(reply.start, StartLine::Response { .. }), "answer to #{i} is not a response");
            }
        }
        assert!(
            registrations > 100 && rejected > 100 && dropped > 100 && routed > 50,
            "the corpus reaches every path: {registrations} {rejected} {dropped} {routed}"
        );
    }

    #[test]
    fn keepalives_are_answered() {
        assert_eq!(run(b"\r\n\r\n").0, Outcome::Absorbed(ReplyKind::Crlf));
        assert_eq!(run(b"\r\n").0, Outcome::Absorbed(ReplyKind::Crlf));
        for uri in ["sip:edge.example.net", "sip:192.0.2.1:5060", "sip:EDGE.example.net;transport=udp"] {
            let (outcome, reply) = run(&sip(&format!("OPTIONS {uri} SIP/2.0\n{HEADERS}CSeq: 1 OPTIONS\n\n")));
            assert_eq!(outcome, Outcome::Replied(ReplyKind::Options), "{uri}");
            assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
        }
    }

    #[test]
    fn everything_else_gets_a_clear_answer_or_nothing() {
        let cases = [
            (
                format!("OPTIONS sip:ping@edge.example.net SIP/2.0\n{HEADERS}CSeq: 1 OPTIONS\n\n"),
                "SIP/2.0 503 No Failover Group Configured\r\n",
            ),
            (
                format!("REGISTER sip:edge.example.net SIP/2.0\n{HEADERS}CSeq: 1 REGISTER\n\n"),
                "SIP/2.0 503 No Failover Group Configured\r\n",
            ),
            (
                format!("OPTIONS sip:edge.example.net SIP/2.0\n{HEADERS}CSeq: 1 INVITE\n\n"),
                "SIP/2.0 400 CSeq Method Mismatch\r\n",
            ),
            (
                format!("OPTIONS sip:edge.example.net SIP/2.0\n{HEADERS}Call-ID: d\nCSeq: 1 OPTIONS\n\n"),
                "SIP/2.0 400 Duplicate Call-ID\r\n",
            ),
            (
                format!("OPTIONS sip:edge.example.net SIP/2.0\n{HEADERS}CSeq: 1 OPTIONS\nno colon here\n\n"),
                "SIP/2.0 400 Malformed Header Line\r\n",
            ),
        ];
        for (request, status) in cases {
            let (outcome, reply) = run(&sip(&request));
            assert!(matches!(outcome, Outcome::Rejected(_)), "{request}: {outcome:?}");
            assert!(reply.starts_with(status), "{request}: {reply}");
            assert!(reply.contains("Call-ID: c\r\n") && reply.ends_with("Content-Length: 0\r\n\r\n"), "{reply}");
        }
        assert_eq!(
            run(&sip("OPTIONS sip:edge.example.net SIP/2.0\nCSeq: 1 OPTIONS\n\n")).0,
            Outcome::Dropped(DropReason::Unanswerable)
        );
        assert_eq!(
            run(&sip(&format!("ACK sip:x SIP/2.0\n{HEADERS}CSeq: 1 ACK\n\n"))).0,
            Outcome::Dropped(DropReason::Ack)
        );
        assert_eq!(run(&sip("SIP/2.0 200 OK\nCall-ID: x\n\n")).0, Outcome::Dropped(DropReason::StrayResponse));
        assert_eq!(run(b"\x16\x03\x01 hello").0, Outcome::Dropped(DropReason::NotSip));
    }
}
