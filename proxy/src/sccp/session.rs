//! One SCCP phone's session through the edge, with no I/O: the phone's connection on one
//! side, its backend's on the other. The shell feeds it whole PDUs, connection events
//! and the time, and carries out the [`Action`]s it returns.
//!
//! - **Waiting for Register.** The first PDU must come within `register_timeout`. A
//!   KeepAlive first makes this a *standby* connection: regedge is that phone's backup
//!   call manager, so, like a backup CUCM, it counts the keepalives and never acks them;
//!   a later Register promotes it (the phone failed over to us). Anything else closes.
//! - **Registering.** The device name picks the group, the group's active backend gets a
//!   connection; the Register (and whatever the phone sends meanwhile, bounded) follows
//!   once it is up. RegisterAck is relayed and gives the keepalive interval; RegisterReject
//!   is relayed and the session ends.
//! - **Relaying.** Every PDU goes through unchanged both ways, except keepalives: the
//!   phone's KeepAlive is answered here (and in the kernel, once the socket is marked
//!   registered), and regedge keeps the backend session alive with its own KeepAlives at
//!   the RegisterAck's interval, swallowing the backend's KeepAliveAcks. Three intervals
//!   without an ack mean the backend is gone. A phone's Unregister is relayed; its
//!   UnregisterAck closes both sides.
//! - **Calls.** The session is *busy* while the phone is off-hook (OffHook until OnHook)
//!   or the backend has any call that is not on-hook (CallState per call reference). A
//!   session that must move (backend lost or down, or back on the primary) moves only
//!   when idle: the shell closes the phone's connection, paced, and the phone registers
//!   again and lands on its group's active backend.

use std::collections::HashMap;

use regedge_common::sccp::{HEADER_LEN, id};

use super::framing::{Pdu, encode_pdu};
use crate::failover::BackendId;

/// Message ids the session reads besides registration and keepalive.
pub mod call_id {
    pub const OFF_HOOK: u32 = 0x0006;
    pub const ON_HOOK: u32 = 0x0007;
    pub const CALL_STATE: u32 = 0x0111;
    /// `CallState` value of a call that is over.
    pub const STATE_ON_HOOK: u32 = 2;
}

/// Bytes the session holds for a backend that is not connected yet.
pub const PENDING_MAX: usize = 16 * 1024;

/// Why a session ended (the `reason` label of `regedge_sccp_sessions_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// No Register within `register_timeout`.
    RegisterTimeout,
    /// A message other than Register or KeepAlive before registering.
    NotRegistered,
    /// The device has no SCCP group, or the group no backend up.
    NoBackend,
    /// The backend refused the registration.
    Rejected,
    /// Unregister acknowledged.
    Unregistered,
    /// Moved to another backend (failover or fallback): the phone registers again.
    Moved,
    /// The phone closed its connection.
    PhoneClosed,
    /// Bytes that are not Skinny, or too many of them.
    Malformed,
    /// More held for the backend than `PENDING_MAX`.
    Overflow,
}

impl CloseReason {
    pub const ALL: [Self; 9] = [
        Self::RegisterTimeout,
        Self::NotRegistered,
        Self::NoBackend,
        Self::Rejected,
        Self::Unregistered,
        Self::Moved,
        Self::PhoneClosed,
        Self::Malformed,
        Self::Overflow,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::RegisterTimeout => "register_timeout",
            Self::NotRegistered => "not_registered",
            Self::NoBackend => "no_backend",
            Self::Rejected => "rejected",
            Self::Unregistered => "unregistered",
            Self::Moved => "moved",
            Self::PhoneClosed => "phone_closed",
            Self::Malformed => "malformed",
            Self::Overflow => "overflow",
        }
    }
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    ToPhone(Vec<u8>),
    ToBackend(Vec<u8>),
    /// Open a connection to this backend; answer with `on_backend_connected` or
    /// `on_backend_lost`.
    Connect(BackendId),
    /// The phone is registered: its keepalives may be answered in the kernel.
    Registered,
    /// A keepalive answered here (counted as `kind="sccp_keepalive"` in userspace).
    AnsweredKeepalive,
    /// A standby connection's keepalive, deliberately not acked.
    StandbyKeepalive,
    /// Close both connections (after flushing what is queued to the phone).
    Close(CloseReason),
}

/// Where the session is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    AwaitingRegister,
    Standby,
    /// Waiting for the backend connection; PDUs for it are held.
    Connecting,
    /// Register sent, waiting for RegisterAck or RegisterReject.
    Registering,
    Registered,
    Closed(CloseReason),
}

/// The little-endian u32 at `offset` of a PDU's payload.
fn payload_u32(pdu: &Pdu<'_>, offset: usize) -> Option<u32> {
    let b = pdu.payload().get(offset..offset + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A header-only PDU (KeepAlive, KeepAliveAck).
pub fn empty_pdu(header_version: u32, message_id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    encode_pdu(header_version, message_id, &[], &mut out);
    out
}

/// The device name of a Register payload (16 bytes, NUL-padded), upper-cased.
pub fn register_device_name(pdu: &Pdu<'_>) -> Option<String> {
    let name = pdu.payload().get(..16)?;
    let end = name.iter().position(|&c| c == 0).unwrap_or(16);
    let name = &name[..end];
    (!name.is_empty() && name.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'))
        .then(|| String::from_utf8_lossy(name).to_ascii_uppercase())
}

/// Timing policy.
#[derive(Clone, Copy, Debug)]
pub struct SessionPolicy {
    pub register_timeout_ms: u64,
    /// Keepalive interval toward the backend when its RegisterAck gives none.
    pub default_keepalive_ms: u64,
    /// After losing its backend connection, a session waits this long for the health
    /// checks to judge the backend before moving back to it (so a dead backend's phones
    /// are not sent to it again, and are paced once, toward the next one).
    pub backend_judgement_ms: u64,
}

/// One phone's session.
#[derive(Debug)]
pub struct Session {
    pub state: State,
    pub device: Option<String>,
    pub backend: Option<BackendId>,
    header_version: u32,
    opened_ms: u64,
    /// PDUs for the backend while it connects.
    pending: Vec<u8>,
    /// The phone's Register, sent again if the first backend cannot be reached.
    register: Vec<u8>,
    keepalive_ms: u64,
    next_keepalive_ms: u64,
    /// Keepalives sent to the backend without an ack.
    unacked: u32,
    off_hook: bool,
    /// Calls the backend reported, by call reference, and whether each is on-hook.
    calls: HashMap<u32, bool>,
    /// The session must move to another backend when idle.
    pub move_when_idle: bool,
    /// When the backend connection was lost, if it was.
    pub lost_backend_at_ms: Option<u64>,
    policy: SessionPolicy,
}

impl Session {
    pub fn new(now_ms: u64, policy: SessionPolicy) -> Self {
        Self {
            state: State::AwaitingRegister,
            device: None,
            backend: None,
            header_version: 0,
            opened_ms: now_ms,
            pending: Vec::new(),
            register: Vec::new(),
            keepalive_ms: policy.default_keepalive_ms,
            next_keepalive_ms: u64::MAX,
            unacked: 0,
            off_hook: false,
            calls: HashMap::new(),
            move_when_idle: false,
            lost_backend_at_ms: None,
            policy,
        }
    }

    /// In a call: off-hook, or a call the backend has not put on-hook.
    pub fn busy(&self) -> bool {
        self.off_hook || self.calls.values().any(|on_hook| !on_hook)
    }

    fn close(&mut self, reason: CloseReason, out: &mut Vec<Action>) {
        if !matches!(self.state, State::Closed(_)) {
            self.state = State::Closed(reason);
            out.push(Action::Close(reason));
        }
    }

    fn to_backend(&mut self, bytes: &[u8], out: &mut Vec<Action>) {
        if self.state == State::Connecting {
            if self.pending.len() + bytes.len() > PENDING_MAX {
                self.close(CloseReason::Overflow, out);
            } else {
                self.pending.extend_from_slice(bytes);
            }
        } else {
            out.push(Action::ToBackend(bytes.to_vec()));
        }
    }

    /// A PDU from the phone. `pick` chooses the backend for a device name (the group's
    /// active SCCP backend), `None` when there is none.
    pub fn on_phone(&mut self, pdu: Pdu<'_>, pick: impl FnOnce(&str) -> Option<BackendId>, out: &mut Vec<Action>) {
        match (&self.state, pdu.message_id) {
            (State::Closed(_), _) => {}
            (State::AwaitingRegister | State::Standby, id::KEEP_ALIVE) => {
                self.state = State::Standby;
                out.push(Action::StandbyKeepalive);
            }
            (State::AwaitingRegister | State::Standby, id::REGISTER) => {
                self.header_version = pdu.header_version;
                let Some(device) = register_device_name(&pdu) else {
                    return self.close(CloseReason::Malformed, out);
                };
                let Some(backend) = pick(&device) else {
                    self.device = Some(device);
                    return self.close(CloseReason::NoBackend, out);
                };
                self.device = Some(device);
                self.backend = Some(backend);
                self.state = State::Connecting;
                self.register = pdu.bytes.to_vec();
                self.pending = self.register.clone();
                out.push(Action::Connect(backend));
            }
            (State::AwaitingRegister | State::Standby, _) => self.close(CloseReason::NotRegistered, out),
            (State::Registered, id::KEEP_ALIVE) => {
                out.push(Action::ToPhone(empty_pdu(pdu.header_version, id::KEEP_ALIVE_ACK)));
                out.push(Action::AnsweredKeepalive);
            }
            (_, message_id) => {
                match message_id {
                    call_id::OFF_HOOK => self.off_hook = true,
                    call_id::ON_HOOK => self.off_hook = false,
                    _ => {}
                }
                self.to_backend(pdu.bytes, out);
            }
        }
    }

    /// The backend connection is up: the Register and what was held go out.
    pub fn on_backend_connected(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if self.state != State::Connecting {
            return;
        }
        self.state = State::Registering;
        out.push(Action::ToBackend(std::mem::take(&mut self.pending)));
        self.next_keepalive_ms = now_ms + self.keepalive_ms;
    }

    /// A PDU from the backend. A closed session takes nothing more (the shell may still
    /// hold PDUs read in the same batch as the one that closed it).
    pub fn on_backend(&mut self, pdu: Pdu<'_>, now_ms: u64, out: &mut Vec<Action>) {
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        match pdu.message_id {
            id::KEEP_ALIVE_ACK => {
                // The answer to our own keepalive: the phone gets its acks from us.
                self.unacked = 0;
                return;
            }
            id::REGISTER_ACK if self.state == State::Registering => {
                if let Some(secs) = payload_u32(&pdu, 0).filter(|s| (1..=3600).contains(s)) {
                    self.keepalive_ms = secs as u64 * 1000;
                }
                self.state = State::Registered;
                self.next_keepalive_ms = now_ms + self.keepalive_ms;
                out.push(Action::ToPhone(pdu.bytes.to_vec()));
                out.push(Action::Registered);
                return;
            }
            id::REGISTER_REJECT => {
                out.push(Action::ToPhone(pdu.bytes.to_vec()));
                return self.close(CloseReason::Rejected, out);
            }
            id::UNREGISTER_ACK => {
                out.push(Action::ToPhone(pdu.bytes.to_vec()));
                return self.close(CloseReason::Unregistered, out);
            }
            call_id::CALL_STATE => {
                if let (Some(state), Some(reference)) = (payload_u32(&pdu, 0), payload_u32(&pdu, 8)) {
                    if state == call_id::STATE_ON_HOOK {
                        self.calls.remove(&reference);
                    } else {
                        self.calls.insert(reference, false);
                    }
                }
            }
            _ => {}
        }
        out.push(Action::ToPhone(pdu.bytes.to_vec()));
        self.unacked = 0;
    }

    /// Whether the session is still registering (the shell may try another backend).
    pub fn registering(&self) -> bool {
        matches!(self.state, State::Connecting | State::Registering)
    }

    /// The backend could not be reached while registering: try `backend` instead, with
    /// the phone's Register.
    pub fn reconnect(&mut self, backend: BackendId, out: &mut Vec<Action>) {
        if self.registering() {
            self.state = State::Connecting;
            self.backend = Some(backend);
            self.pending = self.register.clone();
            out.push(Action::Connect(backend));
        }
    }

    /// The backend connection failed or closed. While registering, the session ends. Once
    /// registered, the phone must register again elsewhere: the calls the backend had are
    /// gone with it (no CallState will end them), so the session moves as soon as the
    /// phone is on-hook, when the shell's pacing lets it ([`Session::wants_move`]).
    pub fn on_backend_lost(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        match self.state {
            State::Connecting | State::Registering => self.close(CloseReason::NoBackend, out),
            State::Registered => {
                self.calls.clear();
                self.move_when_idle = true;
                self.lost_backend_at_ms.get_or_insert(now_ms);
            }
            _ => {}
        }
    }

    /// The backend is down or no longer the group's choice: the session should move.
    pub fn must_move(&mut self) {
        self.move_when_idle = true;
    }

    /// The session should move and the phone is idle: the shell closes it with
    /// [`Session::moved`] when the target backend's rate limit allows.
    pub fn wants_move(&self) -> bool {
        self.move_when_idle && self.state == State::Registered && !self.busy()
    }

    /// The backend connection was lost less than `backend_judgement_ms` ago.
    pub fn awaiting_judgement(&self, now_ms: u64) -> bool {
        self.lost_backend_at_ms.is_some_and(|at| now_ms < at + self.policy.backend_judgement_ms)
    }

    /// Closes a session that [`Session::wants_move`], so that the phone registers again.
    pub fn moved(&mut self, out: &mut Vec<Action>) {
        self.close(CloseReason::Moved, out);
    }

    /// Timers: the Register deadline, keepalives toward the backend and their acks.
    pub fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        match self.state {
            State::AwaitingRegister if now_ms >= self.opened_ms + self.policy.register_timeout_ms => {
                self.close(CloseReason::RegisterTimeout, out);
            }
            State::Registered if now_ms >= self.next_keepalive_ms => {
                if self.unacked >= 3 {
                    return self.on_backend_lost(now_ms, out);
                }
                if self.move_when_idle {
                    return;
                }
                self.unacked += 1;
                self.next_keepalive_ms = now_ms + self.keepalive_ms;
                out.push(Action::ToBackend(empty_pdu(self.header_version, id::KEEP_ALIVE)));
            }
            _ => {}
        }
    }

    /// The phone's bytes are not Skinny.
    pub fn close_malformed(&mut self, out: &mut Vec<Action>) {
        self.close(CloseReason::Malformed, out);
    }

    /// The phone closed its connection.
    pub fn on_phone_closed(&mut self, out: &mut Vec<Action>) {
        self.close(CloseReason::PhoneClosed, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SessionPolicy =
        SessionPolicy { register_timeout_ms: 10_000, default_keepalive_ms: 30_000, backend_judgement_ms: 3_000 };

    fn pdu(message_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(4 + payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&0x11u32.to_le_bytes());
        out.extend_from_slice(&message_id.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn view(bytes: &[u8]) -> Pdu<'_> {
        Pdu {
            header_version: u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
            message_id: u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            bytes,
        }
    }

    fn register(name: &str) -> Vec<u8> {
        let mut payload = vec![0u8; 28];
        payload[..name.len()].copy_from_slice(name.as_bytes());
        pdu(id::REGISTER, &payload)
    }

    fn register_ack(keepalive_secs: u32) -> Vec<u8> {
        let mut payload = keepalive_secs.to_le_bytes().to_vec();
        payload.extend_from_slice(&[0; 12]);
        pdu(id::REGISTER_ACK, &payload)
    }

    fn call_state(state: u32, reference: u32) -> Vec<u8> {
        let mut payload = state.to_le_bytes().to_vec();
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.extend_from_slice(&reference.to_le_bytes());
        pdu(call_id::CALL_STATE, &payload)
    }

    fn registered() -> Session {
        let mut s = Session::new(0, POLICY);
        let mut out = Vec::new();
        s.on_phone(view(&register("sep001122334455")), |d| (d == "SEP001122334455").then_some(BackendId(1)), &mut out);
        assert_eq!(out, vec![Action::Connect(BackendId(1))]);
        out.clear();
        s.on_backend_connected(0, &mut out);
        assert_eq!(out, vec![Action::ToBackend(register("sep001122334455"))]);
        out.clear();
        s.on_backend(view(&register_ack(20)), 0, &mut out);
        assert_eq!(out, vec![Action::ToPhone(register_ack(20)), Action::Registered]);
        s
    }

    #[test]
    fn keepalives_are_answered_here_and_the_backend_gets_its_own() {
        let mut s = registered();
        let mut out = Vec::new();
        s.on_phone(view(&pdu(id::KEEP_ALIVE, &[])), |_| None, &mut out);
        assert_eq!(out, vec![Action::ToPhone(pdu(id::KEEP_ALIVE_ACK, &[])), Action::AnsweredKeepalive]);
        out.clear();
        s.on_tick(19_999, &mut out);
        assert!(out.is_empty(), "the RegisterAck's 20 s interval");
        s.on_tick(20_000, &mut out);
        assert_eq!(out, vec![Action::ToBackend(pdu(id::KEEP_ALIVE, &[]))]);
        out.clear();
        s.on_backend(view(&pdu(id::KEEP_ALIVE_ACK, &[])), 20_001, &mut out);
        assert!(out.is_empty(), "the backend's ack is ours, not the phone's");
        for t in [40_000, 60_000, 80_000] {
            s.on_tick(t, &mut out);
        }
        assert_eq!(out.len(), 3, "three keepalives without an ack");
        out.clear();
        s.on_tick(100_000, &mut out);
        assert!(out.is_empty() && s.wants_move(), "the backend is gone: register again elsewhere, paced");
        s.moved(&mut out);
        assert_eq!(out, vec![Action::Close(CloseReason::Moved)]);
    }

    #[test]
    fn a_standby_connection_is_never_acked_and_may_register_later() {
        let mut s = Session::new(0, POLICY);
        let mut out = Vec::new();
        s.on_phone(view(&pdu(id::KEEP_ALIVE, &[])), |_| None, &mut out);
        s.on_phone(view(&pdu(id::KEEP_ALIVE, &[])), |_| None, &mut out);
        assert_eq!(out, vec![Action::StandbyKeepalive, Action::StandbyKeepalive]);
        assert_eq!(s.state, State::Standby);
        out.clear();
        s.on_tick(60_000, &mut out);
        assert!(out.is_empty(), "a standby connection has no Register deadline");
        s.on_phone(view(&register("SEPAABBCCDDEEFF")), |_| Some(BackendId(0)), &mut out);
        assert_eq!(out, vec![Action::Connect(BackendId(0))]);
    }

    #[test]
    fn no_register_in_time_or_another_message_first_closes() {
        let mut s = Session::new(0, POLICY);
        let mut out = Vec::new();
        s.on_tick(10_000, &mut out);
        assert_eq!(out, vec![Action::Close(CloseReason::RegisterTimeout)]);
        let mut s = Session::new(0, POLICY);
        out.clear();
        s.on_phone(view(&pdu(call_id::OFF_HOOK, &[])), |_| None, &mut out);
        assert_eq!(out, vec![Action::Close(CloseReason::NotRegistered)]);
        let mut s = Session::new(0, POLICY);
        out.clear();
        s.on_phone(view(&register("SEP001122334455")), |_| None, &mut out);
        assert_eq!(out, vec![Action::Close(CloseReason::NoBackend)]);
    }

    #[test]
    fn everything_else_is_relayed_and_calls_hold_a_move_back() {
        let mut s = registered();
        let mut out = Vec::new();
        s.on_phone(view(&pdu(call_id::OFF_HOOK, &[])), |_| None, &mut out);
        assert_eq!(out, vec![Action::ToBackend(pdu(call_id::OFF_HOOK, &[]))]);
        out.clear();
        s.on_backend(view(&call_state(1, 77)), 0, &mut out);
        assert_eq!(out, vec![Action::ToPhone(call_state(1, 77))]);
        out.clear();
        s.must_move();
        assert!(!s.wants_move(), "not while a call is up");
        s.on_phone(view(&pdu(call_id::ON_HOOK, &[])), |_| None, &mut out);
        assert_eq!(out.len(), 1);
        assert!(s.busy(), "the backend still has the call");
        out.clear();
        s.on_backend(view(&call_state(call_id::STATE_ON_HOOK, 77)), 0, &mut out);
        assert_eq!(out, vec![Action::ToPhone(call_state(2, 77))]);
        assert!(s.wants_move(), "idle now");
    }

    #[test]
    fn a_lost_backend_takes_its_calls_with_it() {
        let mut s = registered();
        let mut out = Vec::new();
        s.on_phone(view(&pdu(call_id::OFF_HOOK, &[])), |_| None, &mut out);
        s.on_backend(view(&call_state(1, 5)), 0, &mut out);
        s.on_backend_lost(0, &mut out);
        assert!(!s.wants_move(), "the phone is still off-hook");
        s.on_phone(view(&pdu(call_id::ON_HOOK, &[])), |_| None, &mut out);
        assert!(s.wants_move(), "no CallState will come from a lost backend: on-hook is enough");
    }

    #[test]
    fn an_unreachable_backend_is_replaced_while_registering() {
        let mut s = Session::new(0, POLICY);
        let mut out = Vec::new();
        s.on_phone(view(&register("SEP001122334455")), |_| Some(BackendId(0)), &mut out);
        assert!(s.registering());
        out.clear();
        s.reconnect(BackendId(1), &mut out);
        assert_eq!(out, vec![Action::Connect(BackendId(1))]);
        out.clear();
        s.on_backend_connected(0, &mut out);
        assert_eq!(out, vec![Action::ToBackend(register("SEP001122334455"))]);
    }

    #[test]
    fn unregister_and_reject_end_the_session_after_relaying() {
        let mut s = registered();
        let mut out = Vec::new();
        s.on_phone(view(&pdu(id::UNREGISTER, &[0; 4])), |_| None, &mut out);
        assert_eq!(out, vec![Action::ToBackend(pdu(id::UNREGISTER, &[0; 4]))]);
        out.clear();
        s.on_backend(view(&pdu(id::UNREGISTER_ACK, &[0; 4])), 0, &mut out);
        assert_eq!(
            out,
            vec![Action::ToPhone(pdu(id::UNREGISTER_ACK, &[0; 4])), Action::Close(CloseReason::Unregistered)]
        );

        let mut s = Session::new(0, POLICY);
        out.clear();
        s.on_phone(view(&register("SEP001122334455")), |_| Some(BackendId(0)), &mut out);
        s.on_backend_connected(0, &mut out);
        out.clear();
        let reject = pdu(id::REGISTER_REJECT, &[0; 33]);
        s.on_backend(view(&reject), 0, &mut out);
        assert_eq!(out, vec![Action::ToPhone(reject), Action::Close(CloseReason::Rejected)]);
    }

    #[test]
    fn what_the_phone_sends_while_the_backend_connects_is_held_and_bounded() {
        let mut s = Session::new(0, POLICY);
        let mut out = Vec::new();
        s.on_phone(view(&register("SEP001122334455")), |_| Some(BackendId(0)), &mut out);
        let ip_port = pdu(id::IP_PORT, &[0, 0, 0x7d, 0]);
        s.on_phone(view(&ip_port), |_| None, &mut out);
        out.clear();
        s.on_backend_connected(0, &mut out);
        let mut expected = register("SEP001122334455");
        expected.extend_from_slice(&ip_port);
        assert_eq!(out, vec![Action::ToBackend(expected)]);

        let mut s = Session::new(0, POLICY);
        out.clear();
        s.on_phone(view(&register("SEP001122334455")), |_| Some(BackendId(0)), &mut out);
        let big = pdu(0x0099, &vec![0; 4000]);
        for _ in 0..5 {
            s.on_phone(view(&big), |_| None, &mut out);
        }
        assert_eq!(out.last(), Some(&Action::Close(CloseReason::Overflow)));
    }
}
