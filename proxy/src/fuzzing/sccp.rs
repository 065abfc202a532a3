//! Fuzz targets for the SCCP codec and the SCCP session state machine.

use regedge_common::sccp::{DATA_LENGTH_MAX, HEADER_LEN, id, is_header_version};

use super::{Script, chunks};
use crate::{
    failover::BackendId,
    sccp::{
        DecodeError, FramingError, Message, Register, RegisterAck, StreamDecoder,
        framing::{Frame, Pdu},
        session::{self, Action, CloseReason, Session, SessionPolicy, State, call_id},
    },
};

/// Decodes `pieces` in order, draining after each, as the shell does.
fn decode(pieces: &[&[u8]]) -> (Vec<Frame>, Option<FramingError>, usize) {
    let mut dec = StreamDecoder::new();
    let mut frames = Vec::new();
    for piece in pieces {
        dec.extend(piece);
        loop {
            match dec.next_pdu() {
                Ok(Some(pdu)) => frames.push(pdu.to_frame()),
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(dec.next_pdu(), Err(error), "an error is not final");
                    return (frames, Some(error), dec.buffered());
                }
            }
        }
        assert!(dec.buffered() < DATA_LENGTH_MAX as usize + 8, "more than one PDU held after draining");
    }
    (frames, None, dec.buffered())
}

/// The SCCP codec: the stream decoder gives the same PDUs however the stream is split and
/// loses no byte; every PDU is valid Skinny framing; every typed message encodes back to
/// its very bytes and decodes again to itself; messages built from the input round-trip.
pub fn codec(data: &[u8]) {
    let mut script = Script::new(data);
    let built = build_messages(&mut script);
    let sizes = script.bytes(6);
    let stream = script.rest();
    let whole = decode(&[stream]);
    let split = decode(&chunks(stream, sizes));
    assert_eq!(whole, split, "the PDUs depend on how the stream was split");
    let (frames, error, buffered) = whole;
    let mut joined = Vec::new();
    for frame in &frames {
        check_frame(frame);
        joined.extend_from_slice(&frame.bytes);
    }
    assert!(stream.starts_with(&joined), "the PDUs are not the stream's bytes in order");
    if error.is_none() {
        assert_eq!(joined.len() + buffered, stream.len(), "bytes lost between PDUs");
    }
    for (header_version, message) in built {
        let bytes = message.to_bytes(header_version);
        assert_eq!(&bytes[..4], &((bytes.len() - 8) as u32).to_le_bytes(), "data_length of an encoded message");
        let decoded = Message::decode(header_version, message.message_id(), &bytes[HEADER_LEN..]);
        assert_eq!(decoded.as_ref(), Ok(&message), "an encoded message does not decode to itself");
        let (frames, error, _) = decode(&[&bytes]);
        assert_eq!((frames.len(), error), (1, None), "an encoded message is not one PDU");
        assert_eq!(frames[0].bytes, bytes);
    }
}

fn check_frame(frame: &Frame) {
    let bytes = &frame.bytes;
    assert!(bytes.len() >= HEADER_LEN, "a PDU shorter than its header");
    assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 8, "data_length");
    assert!(is_header_version(frame.header_version), "a PDU with a bad header version");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), frame.message_id);
    let payload = frame.payload();
    match Message::decode(frame.header_version, frame.message_id, payload) {
        Ok(message) => {
            assert_eq!(message.message_id(), frame.message_id, "a message decoded under another id");
            assert_eq!(&message.to_bytes(frame.header_version), bytes, "a message does not encode to its bytes");
            assert_eq!(
                Message::decode(frame.header_version, frame.message_id, payload).as_ref(),
                Ok(&message),
                "decoding is not deterministic"
            );
            read_fields(&message);
        }
        Err(DecodeError::BadPayloadLength { message_id, len }) => {
            assert_eq!((message_id, len), (frame.message_id, payload.len()));
        }
        Err(DecodeError::BadDeviceName { message_id }) => {
            assert_eq!(message_id, frame.message_id);
            assert!(matches!(message_id, id::REGISTER | id::REGISTER_TOKEN_REQ), "a device name in {message_id:#x}");
        }
    }
    let pdu = Pdu { header_version: frame.header_version, message_id: frame.message_id, bytes };
    if let Some(name) = session::register_device_name(&pdu) {
        assert!(
            !name.is_empty()
                && name.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-' || c == b'_'),
            "device name {name:?}"
        );
    }
}

/// The accessors of typed messages: none may panic, and what they return is consistent.
fn read_fields(message: &Message) {
    match message {
        Message::Register(r) => {
            let name = r.device_name();
            assert!(name.len() <= 16 && name.bytes().all(|c| c.is_ascii_graphic()), "device name {name:?}");
            if let Some(mac) = r.mac() {
                assert_eq!(name.len(), 15, "a MAC from a name that is not SEP + 12 digits");
                assert_eq!(format!("SEP{}", hex(&mac)), name.to_ascii_uppercase());
            }
            let _ = (r.active_streams(), r.protocol_version(), r.phone_features(), r.max_conferences());
            let _ = (r.active_conferences(), r.reported_mac(), r.max_lines(), r.station_ipv6());
            let _ = (r.firmware_load_name(), r.config_version_stamp());
            if r.tail.len() < 4 {
                assert_eq!(r.active_streams(), None, "a tail field read past the tail");
            }
        }
        Message::RegisterTokenReq(r) => {
            let _ = (r.device_name(), r.mac());
        }
        _ => {}
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Messages built from choices, to encode and decode back.
fn build_messages(script: &mut Script<'_>) -> Vec<(u32, Message)> {
    let mut out = Vec::new();
    for _ in 0..script.below(4) {
        let header_version = [0, 0x0A, 0x11, 0x16][script.below(4)];
        let number = u32::from_le_bytes([script.byte(), script.byte(), script.byte(), script.byte()]);
        let message = match script.below(12) {
            0 => Message::KeepAlive,
            1 => Message::KeepAliveAck,
            2 => Message::IpPort { port: number },
            3 => Message::Unregister { reason: (number & 1 == 0).then_some(number) },
            4 => Message::UnregisterAck { status: number },
            5 => Message::RegisterTokenReject { wait_time: number },
            6 => Message::register_reject(&String::from_utf8_lossy(script.bytes(40))),
            7 => {
                let mut ack = RegisterAck::new(number, number.rotate_left(7), script.byte());
                ack.features = script.u16();
                ack.unknown = script.byte();
                Message::RegisterAck(ack)
            }
            8 | 9 => {
                let name: String = script.bytes(15).iter().map(|&c| char::from(0x21 + c % 0x5E)).collect();
                let mut register = Register::new(&name, [script.byte(), 0, 2, 7], number);
                register.max_streams = number.rotate_right(3);
                register.tail = script.bytes(160).to_vec();
                Message::Register(register)
            }
            10 => Message::CapabilitiesReq,
            _ => {
                // An untyped id: relayed as opaque bytes.
                let message_id = 0x1000 + (number & 0xFFFF);
                Message::Other { message_id, payload: script.bytes(200).to_vec() }
            }
        };
        out.push((header_version, message));
    }
    out
}

const POLICY: SessionPolicy =
    SessionPolicy { register_timeout_ms: 10_000, default_keepalive_ms: 30_000, backend_judgement_ms: 3_000 };

/// The shell around one session, and what it checks.
struct Shell {
    session: Session,
    now_ms: u64,
    phone: StreamDecoder,
    /// A Connect was asked for and not answered yet.
    connecting: Option<BackendId>,
    backend_up: bool,
    /// What the current backend connection must get, in order (the Register, then the
    /// phone's PDUs), and what it got.
    expected: Vec<u8>,
    sent: Vec<u8>,
    /// The phone's Register as it came, and its header version.
    register: Vec<u8>,
    register_version: u32,
    closed: Option<CloseReason>,
    registered_once: bool,
}

/// Who called the session, for the checks on its actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Phone,
    Backend,
    Tick,
    Other,
}

/// The SCCP session state machine driven by a script of phone bytes, backend PDUs,
/// connection events and time.
pub fn session(data: &[u8]) {
    let mut script = Script::new(data);
    let mut shell = Shell {
        session: Session::new(0, POLICY),
        now_ms: 0,
        phone: StreamDecoder::new(),
        connecting: None,
        backend_up: false,
        expected: Vec::new(),
        sent: Vec::new(),
        register: Vec::new(),
        register_version: 0,
        closed: None,
        registered_once: false,
    };
    let mut steps = 0;
    while !script.done() && steps < 96 {
        steps += 1;
        match script.byte() % 16 {
            0..=5 => {
                let bytes = phone_bytes(&mut script);
                let pick = script.below(5);
                shell.from_phone(&bytes, pick);
            }
            6 | 7 => {
                if shell.connecting.is_some() {
                    shell.connecting = None;
                    shell.backend_up = true;
                    let now = shell.now_ms;
                    shell.call(Caller::Other, |s, out| s.on_backend_connected(now, out));
                }
            }
            8..=10 => {
                if shell.backend_up {
                    let bytes = backend_pdu(&mut script);
                    let now = shell.now_ms;
                    let actions = shell.call(Caller::Backend, |s, out| s.on_backend(view(&bytes), now, out));
                    for action in &actions {
                        if let Action::ToPhone(relayed) = action {
                            assert_eq!(relayed, &bytes, "the backend's PDU was not relayed as it came");
                        }
                    }
                    let keepalive_ack = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) == id::KEEP_ALIVE_ACK;
                    if keepalive_ack {
                        assert!(actions.is_empty(), "the backend's KeepAliveAck reached the phone");
                    }
                }
            }
            11 => shell.backend_lost(&mut script),
            12 | 13 => {
                shell.now_ms += [1, 999, 5_000, 20_000, 30_000, 60_000][script.below(6)];
                let now = shell.now_ms;
                shell.call(Caller::Tick, |s, out| s.on_tick(now, out));
            }
            14 => {
                shell.session.must_move();
                if shell.session.wants_move() && script.below(2) == 0 {
                    shell.call(Caller::Other, |s, out| s.moved(out));
                }
            }
            _ => {
                if script.below(8) == 0 {
                    shell.call(Caller::Other, |s, out| s.on_phone_closed(out));
                }
            }
        }
        shell.check_state();
    }
}

fn view(bytes: &[u8]) -> Pdu<'_> {
    Pdu {
        header_version: u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
        message_id: u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        bytes,
    }
}

fn pdu(header_version: u32, message_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::sccp::framing::encode_pdu(header_version, message_id, payload, &mut out);
    out
}

/// What a phone writes: a PDU of a kind the session reads, any other one, or raw bytes.
fn phone_bytes(script: &mut Script<'_>) -> Vec<u8> {
    let header_version = [0, 0x11, 0x16, 0x11][script.below(4)];
    match script.below(12) {
        0 | 1 => pdu(header_version, id::KEEP_ALIVE, &[]),
        2 | 3 => {
            let mut payload = vec![0u8; [28, 36, 52, 140][script.below(4)]];
            let name: &[u8] = match script.below(5) {
                0 => b"SEP001122334455",
                1 => b"sep00aabbccddee",
                2 => b"SEP 0011",
                3 => b"",
                _ => script.bytes(16),
            };
            payload[..name.len()].copy_from_slice(name);
            pdu(header_version, id::REGISTER, &payload)
        }
        4 => pdu(header_version, call_id::OFF_HOOK, &[]),
        5 => pdu(header_version, call_id::ON_HOOK, &[]),
        6 => pdu(header_version, id::UNREGISTER, &[0; 4]),
        7 => pdu(header_version, id::IP_PORT, &[0x10, 0x27, 0, 0]),
        8 | 9 => {
            let message_id = u32::from(script.u16());
            pdu(header_version, message_id, script.bytes(300))
        }
        10 => pdu(header_version, 0x0099, &vec![0; 4000]),
        _ => script.bytes(64).to_vec(),
    }
}

/// What a backend sends, framed.
fn backend_pdu(script: &mut Script<'_>) -> Vec<u8> {
    let header_version = [0, 0x11][script.below(2)];
    let number = [0u32, 1, 2, 20, 3600, 3601, u32::MAX][script.below(7)];
    match script.below(9) {
        0 | 1 => {
            let mut payload = number.to_le_bytes().to_vec();
            payload.extend_from_slice(&[0; 16]);
            pdu(header_version, id::REGISTER_ACK, &payload[..[20, 2, 0][script.below(3)]])
        }
        2 => pdu(header_version, id::REGISTER_REJECT, &[0; 33]),
        3 => pdu(header_version, id::KEEP_ALIVE_ACK, &[]),
        4 | 5 => {
            let state = [1u32, 2, 12][script.below(3)];
            let mut payload = state.to_le_bytes().to_vec();
            payload.extend_from_slice(&1u32.to_le_bytes());
            payload.extend_from_slice(&u32::from(script.byte() % 4).to_le_bytes());
            pdu(header_version, call_id::CALL_STATE, &payload[..[12, 8, 4][script.below(3)]])
        }
        6 => pdu(header_version, id::UNREGISTER_ACK, &number.to_le_bytes()),
        7 => pdu(header_version, id::CAPABILITIES_REQ, &[]),
        _ => {
            let message_id = u32::from(script.u16());
            pdu(header_version, message_id, script.bytes(64))
        }
    }
}

impl Shell {
    /// Runs one session call and checks its actions against the state before and after.
    fn call(&mut self, caller: Caller, f: impl FnOnce(&mut Session, &mut Vec<Action>)) -> Vec<Action> {
        let before = self.session.state.clone();
        let mut out = Vec::new();
        f(&mut self.session, &mut out);
        let after = self.session.state.clone();
        if self.closed.is_some() {
            assert!(out.is_empty(), "a closed session acted: {out:?}");
            return out;
        }
        for action in &out {
            match action {
                Action::ToBackend(bytes) => {
                    if !self.backend_up {
                        // Only a registered session that lost its backend (it waits to be
                        // idle to move) still writes; the shell has no connection to carry it.
                        assert!(
                            before == State::Registered && self.session.lost_backend_at_ms.is_some(),
                            "sent to a backend that is not connected"
                        );
                        assert_ne!(caller, Caller::Tick, "a keepalive to a lost backend");
                        continue;
                    }
                    if caller == Caller::Tick {
                        assert_eq!(bytes, &session::empty_pdu(self.register_version, id::KEEP_ALIVE));
                        assert_eq!(before, State::Registered, "a keepalive to the backend before registering");
                    } else {
                        self.sent.extend_from_slice(bytes);
                        assert!(bytes.len() <= session::PENDING_MAX, "more than PENDING_MAX held");
                    }
                }
                Action::ToPhone(bytes) => match caller {
                    Caller::Backend => {}
                    Caller::Phone => {
                        assert_eq!(before, State::Registered, "a KeepAliveAck before registering");
                        assert_eq!(&bytes[8..12], &id::KEEP_ALIVE_ACK.to_le_bytes(), "the edge wrote {bytes:?}");
                        assert_eq!(bytes.len(), HEADER_LEN);
                    }
                    _ => panic!("a session wrote to the phone unasked: {bytes:?}"),
                },
                Action::Connect(backend) => {
                    assert_eq!(self.session.backend, Some(*backend), "connects to a backend it does not hold");
                    self.connecting = Some(*backend);
                    self.backend_up = false;
                    self.sent.clear();
                    self.expected = self.register.clone();
                }
                Action::Registered => {
                    assert!(!self.registered_once, "registered twice");
                    assert_eq!((before.clone(), after.clone()), (State::Registering, State::Registered));
                    self.registered_once = true;
                }
                Action::AnsweredKeepalive => assert_eq!(before, State::Registered, "answered a standby keepalive"),
                Action::StandbyKeepalive => {
                    assert!(matches!(before, State::AwaitingRegister | State::Standby), "standby after registering");
                    assert_eq!(after, State::Standby);
                }
                Action::Close(reason) => {
                    assert_eq!(after, State::Closed(*reason), "closed in another state");
                    if before == State::Registered {
                        let allowed: &[CloseReason] = match caller {
                            Caller::Phone => &[CloseReason::Malformed, CloseReason::PhoneClosed],
                            Caller::Backend => &[CloseReason::Rejected, CloseReason::Unregistered],
                            Caller::Tick => &[],
                            Caller::Other => &[CloseReason::Moved, CloseReason::PhoneClosed],
                        };
                        assert!(allowed.contains(reason), "a registered session lost to {reason:?}");
                    }
                    self.closed = Some(*reason);
                }
            }
        }
        let closes = out.iter().filter(|a| matches!(a, Action::Close(_))).count();
        assert!(closes <= 1, "closed twice");
        assert_eq!(closes == 1, matches!(after, State::Closed(_)), "state {after:?} against actions {out:?}");
        out
    }

    fn from_phone(&mut self, bytes: &[u8], pick: usize) {
        self.phone.extend(bytes);
        loop {
            let frame = match self.phone.next_pdu() {
                Ok(Some(pdu)) => pdu.to_frame(),
                Ok(None) => return,
                Err(_) => {
                    self.call(Caller::Phone, |s, out| s.close_malformed(out));
                    return;
                }
            };
            let before = self.session.state.clone();
            let relayed = match before {
                State::Connecting | State::Registering => true,
                State::Registered => frame.message_id != id::KEEP_ALIVE,
                _ => false,
            };
            if matches!(before, State::AwaitingRegister | State::Standby) && frame.message_id == id::REGISTER {
                self.register = frame.bytes.clone();
                self.register_version = frame.header_version;
            }
            let choice = (pick > 0).then(|| BackendId(pick % 2));
            let pdu = Pdu { header_version: frame.header_version, message_id: frame.message_id, bytes: &frame.bytes };
            self.call(Caller::Phone, |s, out| s.on_phone(pdu, |_| choice, out));
            if relayed {
                self.expected.extend_from_slice(&frame.bytes);
            }
            if before == State::Registered {
                assert!(
                    self.session.state == State::Registered,
                    "a registered session left Registered on a phone PDU: {:?}",
                    self.session.state
                );
            }
        }
    }

    /// The backend connection breaks: while registering the shell may try another one.
    fn backend_lost(&mut self, script: &mut Script<'_>) {
        if self.connecting.is_none() && !self.backend_up {
            return;
        }
        self.connecting = None;
        self.backend_up = false;
        if self.session.registering() && script.below(2) == 0 {
            let next = BackendId(script.below(2));
            self.call(Caller::Other, |s, out| s.reconnect(next, out));
        } else {
            let was = self.session.state.clone();
            let now = self.now_ms;
            self.call(Caller::Other, |s, out| s.on_backend_lost(now, out));
            if was == State::Registered {
                assert_eq!(self.session.state, State::Registered, "a lost backend closed a registered session");
                assert!(self.session.move_when_idle, "a lost backend does not move the session");
            }
        }
    }

    /// Invariants of the state after every step.
    fn check_state(&self) {
        let s = &self.session;
        match &s.state {
            State::Connecting | State::Registering | State::Registered => {
                assert!(s.device.is_some() && s.backend.is_some(), "{:?} without a device or backend", s.state);
            }
            State::AwaitingRegister | State::Standby => assert!(s.backend.is_none(), "a backend before Register"),
            State::Closed(reason) => assert_eq!(self.closed, Some(*reason)),
        }
        if s.wants_move() {
            assert!(s.state == State::Registered && !s.busy(), "wants to move while busy or not registered");
        }
        if self.closed.is_none() && (self.backend_up || self.connecting.is_some()) {
            assert!(
                self.expected.starts_with(&self.sent),
                "the backend got other bytes than the Register and the phone's PDUs, in order"
            );
            if self.backend_up {
                assert_eq!(self.sent.len(), self.expected.len(), "bytes held back from a connected backend");
            }
        }
    }
}
