//! The protocol core for UDP datagrams: no I/O, no clock. The mio shell hands it a
//! datagram and the sender; it writes the reply (if any) into a buffer the shell owns and
//! says what happened, for the shell to send and count.
//!
//! Today it answers the steady-state keepalives — STUN, CRLF, OPTIONS to the proxy — with
//! the bytes the XDP program sends for the same request, rejects malformed requests with
//! a 400 that names the problem, and answers other requests 501 (registration and call
//! routing come with the registration edge).

use std::net::SocketAddr;

use regedge_common::{ReplyKind, sip::CRLF_KEEPALIVES};

use crate::{
    local_names::LocalNames,
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
}

/// Error responses the edge sends itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the SIP framing is broken (a header line without a colon, ...).
    Malformed(ParseError),
    /// 400: a dialog header is duplicated, empty or malformed.
    BadRequest(RequestError),
    /// 501: a request this edge does not route yet.
    NotImplemented,
    /// STUN 420: comprehension-required attributes regedge does not implement.
    StunUnknownAttributes,
}

impl Rejection {
    /// Values of the `reason` metric label, indexed by [`Rejection::index`].
    pub const LABELS: [&'static str; 4] = ["malformed", "bad_request", "not_implemented", "stun_unknown_attribute"];

    pub const fn index(self) -> usize {
        match self {
            Self::Malformed(_) => 0,
            Self::BadRequest(_) => 1,
            Self::NotImplemented => 2,
            Self::StunUnknownAttributes => 3,
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
            Self::NotImplemented => (501, "Not Implemented"),
            Self::StunUnknownAttributes => (420, "Unknown Attribute"),
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
    /// ACK: never answered (RFC 3261 §17).
    Ack,
    /// STUN that is not a Binding Request, or whose lengths do not add up.
    StunIgnored,
}

impl DropReason {
    pub const ALL: [DropReason; 5] =
        [Self::NotSip, Self::Unanswerable, Self::StrayResponse, Self::Ack, Self::StunIgnored];

    pub const fn label(self) -> &'static str {
        match self {
            Self::NotSip => "not_sip",
            Self::Unanswerable => "unanswerable",
            Self::StrayResponse => "stray_response",
            Self::Ack => "ack",
            Self::StunIgnored => "stun_ignored",
        }
    }
}

/// Per-node facts the answers depend on.
#[derive(Clone, Debug)]
pub struct UdpEngine {
    local_names: LocalNames,
    to_tag: ToTag,
}

impl UdpEngine {
    pub fn new(local_names: LocalNames, to_tag: ToTag) -> Self {
        Self { local_names, to_tag }
    }

    /// Handles one datagram from `peer`; a reply, if any, is left in `out`.
    pub fn on_datagram(&self, payload: &[u8], peer: SocketAddr, out: &mut Vec<u8>) -> Outcome {
        out.clear();
        if CRLF_KEEPALIVES.contains(&payload) {
            return Outcome::Absorbed(ReplyKind::Crlf);
        }
        if stun::is_stun(payload) {
            return match stun::answer(payload, peer, out) {
                StunOutcome::Success => Outcome::Replied(ReplyKind::Stun),
                StunOutcome::UnknownAttributes => Outcome::Rejected(Rejection::StunUnknownAttributes),
                StunOutcome::NotBindingRequest | StunOutcome::Malformed => Outcome::Dropped(DropReason::StunIgnored),
            };
        }
        self.on_sip(payload, out)
    }

    fn on_sip(&self, payload: &[u8], out: &mut Vec<u8>) -> Outcome {
        let (msg, framing_error) = match Message::parse(payload) {
            Ok(msg) => (msg, None),
            Err(err) => match Message::frame(payload) {
                Ok(msg) => (msg, Some(err)),
                Err(_) => return Outcome::Dropped(DropReason::NotSip),
            },
        };
        let StartLine::Request { method, uri } = msg.start else {
            return Outcome::Dropped(DropReason::StrayResponse);
        };
        if method == b"ACK" {
            return Outcome::Dropped(DropReason::Ack);
        }
        if let Err(err) = stateless::check_request(&msg) {
            if !err.is_answerable() {
                return Outcome::Dropped(DropReason::Unanswerable);
            }
            return self.reject(&msg, Rejection::BadRequest(err), out);
        }
        if let Some(err) = framing_error {
            return self.reject(&msg, Rejection::Malformed(err), out);
        }
        if method == b"OPTIONS" && uri::proxy_host(uri).is_some_and(|h| self.local_names.contains(h)) {
            stateless::write_response(&msg, 200, "OK", self.to_tag, out);
            return Outcome::Replied(ReplyKind::Options);
        }
        self.reject(&msg, Rejection::NotImplemented, out)
    }

    fn reject(&self, msg: &Message<'_>, rejection: Rejection, out: &mut Vec<u8>) -> Outcome {
        let (status, reason) = rejection.status();
        stateless::write_response(msg, status, reason, self.to_tag, out);
        Outcome::Rejected(rejection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> UdpEngine {
        let listen = ["192.0.2.1:5060".parse().unwrap()];
        UdpEngine::new(LocalNames::new(&["edge.example.net".into()], &listen, &[]), ToTag::for_node("t"))
    }

    fn sip(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    const PEER: &str = "192.0.2.9:5062";

    fn run(payload: &[u8]) -> (Outcome, String) {
        let mut out = Vec::new();
        let outcome = engine().on_datagram(payload, PEER.parse().unwrap(), &mut out);
        (outcome, String::from_utf8_lossy(&out).into_owned())
    }

    const HEADERS: &str =
        "Via: SIP/2.0/UDP 192.0.2.9:5062;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\nTo: <sip:x>\nCall-ID: c\n";

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
                "SIP/2.0 501 Not Implemented\r\n",
            ),
            (
                format!("REGISTER sip:edge.example.net SIP/2.0\n{HEADERS}CSeq: 1 REGISTER\n\n"),
                "SIP/2.0 501 Not Implemented\r\n",
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
