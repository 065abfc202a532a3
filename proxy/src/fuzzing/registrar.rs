//! Fuzz target for the registration edge: REGISTERs through `Engine::on_datagram` with a
//! registrar of two backends (one honouring Path, one not), the backends' answers, health
//! changes and the clock, all chosen by the input.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use super::Script;
use crate::{
    config::Config,
    engine::{Engine, Outcome},
    failover::{BackendId, BackendState, Routing},
    local_names::LocalNames,
    registrar::{Destination, Node, Now, Policy, Registrar, RegistrationOutcome, request::RegisterRequest},
    registry::{ConnectionId, Flow, Transport},
    sip::{HeaderName, Message, StartLine, contact::Contact, message::trim, stateless::ToTag},
};

const CONFIG: &str = r#"
[registration]
phone_expires = 120
backend_expires = 3600
expires_jitter = 0.0
lapse_grace = "10s"
transaction_timeout = "4s"

[[backends]]
name = "cm1"
address = "10.0.0.11:5060"
max_register_rate = 5

[[backends]]
name = "cm2"
address = "10.0.0.12:5060"
max_register_rate = 5
path = false

[[groups]]
name = "default"
backends = ["cm1", "cm2"]
"#;

const LOCAL: &str = "10.0.0.1:5060";
const PHONES: usize = 3;

fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| Config::from_toml(CONFIG, "fuzz").unwrap_or_else(|e| panic!("{e}")))
}

/// A fresh engine: every input starts from an empty registry.
fn engine() -> Engine {
    let config = config();
    let routing = Arc::new(Routing::from_config(config));
    let facing = config.backends.iter().map(|_| (Transport::Udp, LOCAL.parse().unwrap())).collect();
    let node = Node { to_tag: ToTag::for_node("fuzz"), backend_facing: facing, token_key: 7 };
    let registrar = Registrar::new(routing, Policy::from(&config.registration), node);
    let local: SocketAddr = LOCAL.parse().unwrap();
    Engine::new(LocalNames::new(&["edge.example.net".into()], &[local], &[]), ToTag::for_node("fuzz"), Some(registrar))
}

/// A phone's flow: its own, another port, another address, or TCP.
fn phone_flow(phone: usize, variant: usize) -> Flow {
    let local = LOCAL.parse().unwrap();
    let port = 5061 + phone as u16;
    let (transport, peer, connection) = match variant {
        0 => (Transport::Udp, SocketAddr::from(([192, 0, 2, 7], port)), None),
        1 => (Transport::Udp, SocketAddr::from(([192, 0, 2, 7], port + 100)), None),
        2 => (Transport::Udp, SocketAddr::from(([192, 0, 2, 66], port)), None),
        _ => (Transport::Tcp, SocketAddr::from(([192, 0, 2, 7], port)), Some(ConnectionId(phone as u64))),
    };
    Flow { transport, peer, local, connection }
}

fn backend_flow(backend: BackendId) -> Flow {
    let peer = config().backends[backend.0].address;
    Flow { transport: Transport::Udp, peer, local: LOCAL.parse().unwrap(), connection: None }
}

/// Who a REGISTER says it is, as a binding would hold it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Identity {
    device: String,
    call_id: String,
    flow: Flow,
    contact: String,
}

/// A request sent to a backend and not answered finally yet.
struct Outstanding {
    backend: BackendId,
    bytes: Vec<u8>,
    /// The phone REGISTER it carries (not for regedge's own de-registrations or calls).
    origin: Option<Identity>,
}

/// What a binding must keep while only phones talk.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    call_id: String,
    flow: Flow,
    contact: String,
    backend: BackendId,
    cseq: u32,
    last_via: Option<u64>,
}

struct Model {
    engine: Engine,
    now_ms: u64,
    cseq: [u32; PHONES],
    outstanding: Vec<Outstanding>,
    /// Identities a backend answered 2xx for: the only ones a binding may have.
    accepted: HashSet<Identity>,
}

/// The fuzz target. See the module documentation of [`super`].
pub fn engine_target(data: &[u8]) {
    let mut script = Script::new(data);
    let mut model =
        Model { engine: engine(), now_ms: 1_000, cseq: [1; PHONES], outstanding: Vec::new(), accepted: HashSet::new() };
    let mut steps = 0;
    while !script.done() && steps < 64 {
        steps += 1;
        match script.byte() % 10 {
            0..=3 => {
                let (bytes, flow) = phone_register(&mut script, &mut model);
                model.phone_datagram(&bytes, flow);
            }
            4 => {
                let flow = phone_flow(script.below(PHONES), script.below(4));
                let bytes = script.bytes(400).to_vec();
                model.phone_datagram(&bytes, flow);
            }
            5 | 6 => model.backend_answer(&mut script, false),
            7 => model.backend_answer(&mut script, true),
            8 => {
                let step = [0, 100, 600, 5_000, 61_000, 200_000][script.below(6)];
                model.now_ms += step;
                let mut sends = Vec::new();
                model.engine.on_tick(model.now(), &mut sends);
                model.collect_sends(&sends, None);
            }
            _ => {
                let backend = BackendId(script.below(2));
                let state = [BackendState::Up, BackendState::Down, BackendState::Draining][script.below(3)];
                model.registrar().on_backend_state(backend, state);
            }
        }
        model.check_bindings_accepted();
    }
}

/// A REGISTER built from choices, optionally with a stretch of raw bytes spliced in.
fn phone_register(script: &mut Script<'_>, model: &mut Model) -> (Vec<u8>, Flow) {
    let phone = script.below(PHONES);
    let flow = phone_flow(phone, [0, 0, 0, 1, 2, 3][script.below(6)]);
    let call_id = match script.below(4) {
        0 | 1 => format!("call-{phone}"),
        2 => format!("call-{phone}-reboot"),
        _ => format!("call-{}", (phone + 1) % PHONES),
    };
    let cseq = &mut model.cseq[phone];
    *cseq = match script.below(6) {
        0 => cseq.saturating_sub(1),
        1 => *cseq,
        2 => cseq.saturating_add(5),
        3 => u32::MAX,
        _ => cseq.saturating_add(1),
    };
    let cseq = *cseq;
    let host = if script.below(4) == 0 { "192.0.2.99" } else { "192.0.2.7" };
    let port = 5061 + phone;
    let (contact_params, expires_header) = match script.below(8) {
        0 => ("", "Expires: 60\r\n"),
        1 => ("", "Expires: 0\r\n"),
        2 => (";expires=3600", ""),
        3 => (";expires=0;cisco-keep-alive", "Expires: 0\r\n"),
        4 => ("", "Expires: soon\r\n"),
        5 => (";expires=0", ""),
        6 => ("", ""),
        _ => (";expires=120", "Expires: 120\r\n"),
    };
    let contact = match script.below(8) {
        0 => String::new(),
        1 => "Contact: *\r\n".to_owned(),
        2 => format!("Contact: <sip:100{phone}@{host}:{port}>, <sip:x@192.0.2.9>\r\n"),
        _ => format!(
            "Contact: <sip:100{phone}@{host}:{port}>;+u.sip!devicename.ccm.cisco.com=\"SEP00000000000{phone}\"\
             {contact_params}\r\n"
        ),
    };
    let auth = match script.below(4) {
        0 => format!(
            "Authorization: Digest username=\"100{phone}\", realm=\"example.net\", nonce=\"n{}\", \
             uri=\"sip:example.net\", response=\"00\"\r\n",
            script.below(2)
        ),
        _ => String::new(),
    };
    let branch = script.u16();
    let mut bytes = format!(
        "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:{port};branch=z9hG4bK-{branch:x};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:100{phone}@example.net>;tag=p{phone}\r\nTo: <sip:100{phone}@example.net>\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n{contact}{expires_header}{auth}Content-Length: 0\r\n\r\n"
    )
    .into_bytes();
    if script.below(4) == 0 {
        // Replace a stretch with raw bytes: broken headers, stray CRLFs, odd values.
        let at = script.below(bytes.len());
        let cut = script.below(16).min(bytes.len() - at);
        let raw = script.bytes(24);
        bytes.splice(at..at + cut, raw.iter().copied());
    }
    (bytes, flow)
}

impl Model {
    fn registrar(&self) -> &Registrar {
        self.engine.registrar.as_ref().expect("configured")
    }

    fn now(&self) -> Now {
        Now { mono_ms: self.now_ms, unix_secs: 1_795_608_000 + self.now_ms / 1000 }
    }

    fn held(&self) -> BTreeMap<String, Held> {
        let mut held = BTreeMap::new();
        self.registrar().registry.for_each(|device, b| {
            let binding = Held {
                call_id: b.call_id.clone(),
                flow: b.flow,
                contact: b.contact.clone(),
                backend: b.backend,
                cseq: b.cseq,
                last_via: b.last_via,
            };
            held.insert(device.to_owned(), binding);
        });
        held
    }

    /// A datagram from a phone: the answer parses, bindings keep who they are, and an
    /// absorbed REGISTER matches a binding the backend accepted.
    fn phone_datagram(&mut self, bytes: &[u8], flow: Flow) {
        let before = self.held();
        let request = Message::parse(bytes).ok();
        let typed = request.as_ref().filter(|m| m.method() == Some(b"REGISTER")).and_then(|m| {
            let r = RegisterRequest::parse(m).ok()?;
            let contact = r.contact().map(|c| String::from_utf8_lossy(c.uri).into_owned());
            Some((r, contact))
        });
        let mut out = crate::engine::Output::default();
        let outcome = self.engine.on_datagram(bytes, flow, self.now(), &mut out);
        check_reply(bytes, &out.reply, outcome);
        let after = self.held();
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "a phone's datagram added or removed a binding ({outcome:?})"
        );
        for (device, was) in &before {
            let now = &after[device];
            assert_eq!(
                (&now.call_id, now.flow, &now.contact, now.backend),
                (&was.call_id, was.flow, &was.contact, was.backend),
                "a phone's datagram re-pointed the binding of {device} ({outcome:?})"
            );
            assert!(now.cseq >= was.cseq, "a binding's CSeq went back ({outcome:?})");
        }
        if outcome == Outcome::Registration(RegistrationOutcome::Absorbed) {
            let (request, contact) = typed.as_ref().expect("only a typed REGISTER is absorbed");
            let identity = Identity {
                device: request.device.key.clone(),
                call_id: String::from_utf8_lossy(request.call_id).into_owned(),
                flow,
                contact: contact.clone().expect("only a single contact is absorbed"),
            };
            let was = before.get(&identity.device).expect("absorbed without a binding");
            assert_eq!(
                (&was.call_id, was.flow, &was.contact),
                (&identity.call_id, identity.flow, &identity.contact),
                "absorbed a REGISTER that does not match its binding"
            );
            assert!(self.accepted.contains(&identity), "absorbed for an identity no backend accepted");
            assert_ne!(request.expires, Some(0), "absorbed a de-registration");
            assert!(request.cseq >= was.cseq, "absorbed an old CSeq");
            assert!(
                request.cseq > was.cseq || was.last_via == Some(request.via),
                "absorbed the binding's CSeq again in another transaction (a replay)"
            );
            let binding = self.registrar().registry.get(&identity.device).expect("held");
            assert!(
                binding.phone_expires_at_ms <= binding.backend_valid_until_ms,
                "absorbed a refresh granting the phone {} ms past the backend's registration",
                binding.phone_expires_at_ms.saturating_sub(binding.backend_valid_until_ms)
            );
            assert!(
                request.credentials.is_none() || request.credentials == binding.credentials,
                "absorbed a REGISTER with other credentials than the backend accepted"
            );
        }
        let origin = match (outcome, &typed) {
            // A retransmission sent on again is the same request.
            (
                Outcome::Registration(RegistrationOutcome::Forwarded | RegistrationOutcome::Retransmission),
                Some((request, Some(contact))),
            ) => (request.expires != Some(0)).then(|| Identity {
                device: request.device.key.clone(),
                call_id: String::from_utf8_lossy(request.call_id).into_owned(),
                flow,
                contact: contact.clone(),
            }),
            _ => None,
        };
        self.collect_sends(&out.sends, origin);
    }

    /// Checks and keeps what went to backends and phones.
    fn collect_sends(&mut self, sends: &[crate::registrar::Send], origin: Option<Identity>) {
        for send in sends {
            let msg = Message::parse(&send.bytes).unwrap_or_else(|e| {
                panic!("a message sent on does not parse ({e}): {:?}", String::from_utf8_lossy(&send.bytes))
            });
            match send.to {
                Destination::Backend(backend) => {
                    assert!(matches!(msg.start, StartLine::Request { .. }), "a response sent to a backend");
                    let is_register = msg.method() == Some(b"REGISTER");
                    self.outstanding.push(Outstanding {
                        backend,
                        bytes: send.bytes.clone(),
                        origin: origin.clone().filter(|_| is_register),
                    });
                }
                Destination::Phone(_) => {}
            }
        }
    }

    /// A backend answers one outstanding request; `forged` sends that same answer from a
    /// phone's address instead (the branch regedge puts in its Via is computable by the
    /// phone that sent the REGISTER, so a phone can write this answer).
    fn backend_answer(&mut self, script: &mut Script<'_>, forged: bool) {
        if self.outstanding.is_empty() {
            return;
        }
        let index = script.below(self.outstanding.len());
        let (status, granted) = match script.below(9) {
            0 | 1 | 2 => ("200 OK", Some(3600)),
            3 => ("200 OK", Some(30)),
            4 => ("200 OK", Some(0)),
            5 => ("200 OK", None),
            6 => ("401 Unauthorized", None),
            7 => ("100 Trying", None),
            _ => (["403 Forbidden", "404 Not Found", "500 Server Error", "503 Busy"][script.below(4)], None),
        };
        let provisional = status.starts_with('1');
        let outstanding = if provisional { None } else { Some(self.outstanding.remove(index)) };
        let (backend, request, origin) = match &outstanding {
            Some(o) => (o.backend, o.bytes.clone(), o.origin.clone()),
            None => (self.outstanding[index].backend, self.outstanding[index].bytes.clone(), None),
        };
        let answer = answer_to(&request, status, granted);
        let flow = if forged { phone_flow(script.below(PHONES), script.below(4)) } else { backend_flow(backend) };
        let mut out = crate::engine::Output::default();
        let outcome = self.engine.on_datagram(&answer, flow, self.now(), &mut out);
        assert!(out.reply.is_empty(), "a response was answered: {outcome:?}");
        // A 2xx is the backend's acceptance (a binding may still not be stored: expires
        // 0 for the contact; one the answer does not list is taken as granted the asked
        // backend_expires).
        if !forged
            && status.starts_with('2')
            && outcome == Outcome::Relayed
            && let Some(origin) = origin
        {
            self.accepted.insert(origin);
        }
        self.collect_sends(&out.sends, None);
        if forged && let Some(o) = outstanding {
            // The real backend's answer may still come.
            self.outstanding.push(o);
        }
    }

    /// Every binding is one a backend accepted, for its flow, Call-ID and contact.
    fn check_bindings_accepted(&self) {
        self.registrar().registry.for_each(|device, b| {
            let identity = Identity {
                device: device.to_owned(),
                call_id: b.call_id.clone(),
                flow: b.flow,
                contact: b.contact.clone(),
            };
            assert!(self.accepted.contains(&identity), "a binding no backend accepted: {identity:?}");
        });
    }
}

/// Every answer the engine writes to a SIP datagram is a SIP response with the request's
/// Call-ID and CSeq.
fn check_reply(request: &[u8], reply: &[u8], outcome: Outcome) {
    if reply.is_empty() || crate::stun::is_stun(request) {
        return;
    }
    let answer = Message::parse(reply).unwrap_or_else(|e| {
        panic!("the answer ({outcome:?}) does not parse ({e}): {:?}", String::from_utf8_lossy(reply))
    });
    assert!(matches!(answer.start, StartLine::Response { .. }), "the answer is not a response");
    let request = Message::frame(request).expect("only a framed request is answered");
    for name in [HeaderName::CallId, HeaderName::CSeq] {
        let want = request.headers_named(name).next().map(|h| trim(h.value));
        let got = answer.headers_named(name).next().map(|h| trim(h.value));
        assert_eq!(got, want, "the answer's {name:?} is not the request's ({outcome:?})");
    }
}

/// A backend's answer to `request`: its Vias, From, Call-ID and CSeq, To with a tag, and
/// for a 2xx to a REGISTER its contacts with `granted` seconds.
fn answer_to(request: &[u8], status: &str, granted: Option<u32>) -> Vec<u8> {
    let msg = Message::parse(request).expect("checked when sent");
    let mut out = format!("SIP/2.0 {status}\r\n").into_bytes();
    for h in msg.headers() {
        match HeaderName::of(h.name) {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => out.extend_from_slice(h.raw),
            HeaderName::To => {
                out.extend_from_slice(&h.raw[..h.raw.len() - 2]);
                out.extend_from_slice(b";tag=backend\r\n");
            }
            HeaderName::Other if h.name.eq_ignore_ascii_case(b"contact") && status.starts_with('2') => {
                for value in crate::sip::contact::split_values(h.value) {
                    if let Some(c) = Contact::parse(value) {
                        out.extend_from_slice(b"Contact: <");
                        out.extend_from_slice(c.uri);
                        match granted {
                            Some(g) => out.extend_from_slice(format!(">;expires={g}\r\n").as_bytes()),
                            None => out.extend_from_slice(b">\r\n"),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if status.starts_with("401") {
        out.extend_from_slice(b"WWW-Authenticate: Digest realm=\"example.net\", nonce=\"n-1\"\r\n");
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}
