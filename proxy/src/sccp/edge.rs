//! The SCCP edge's I/O shell: mio event loops (one per worker, each with its own
//! SO_REUSEPORT listener per `[sccp] listen` address) that own phone connections and the
//! backend connection of each phone's [`Session`], feed the sessions whole PDUs and carry
//! out their actions. A timer tick drives keepalives, the Register deadline and moves:
//! a registered session whose backend is down or no longer its group's choice is closed
//! once idle, paced by the target backend's `max_register_rate`, so that the phone
//! registers again and lands on the group's active backend (failover, and fallback when
//! the primary is back).

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use std::os::fd::{AsFd, BorrowedFd};

use mio::{Events, Interest, Poll, Token, Waker, net::TcpListener};

use super::{
    framing::{FramingError, StreamDecoder},
    session::{Action, CloseReason, Session, SessionPolicy, State},
};
use crate::{
    config::BackendProtocol,
    datapath::sccp::{SccpOffload, SccpSocket},
    failover::{BackendId, BackendState, GroupId, Routing},
    io::{tcp, workers::monotonic_ms},
    limits::{Limit, Limits},
    registrar::request::Device,
    registry::ConnectionId,
};

type Conn = tcp::Connection<StreamDecoder>;

const WAKE: Token = Token(usize::MAX);
const SESSION_BASE: usize = 1 << 20;
const TICK: Duration = Duration::from_millis(250);
/// Backpressure: a side is not read while more than this is queued for the other side,
/// and is read again once that queue is below [`RESUME_BELOW`].
const PAUSE_ABOVE: usize = 256 * 1024;
const RESUME_BELOW: usize = 64 * 1024;
/// How much is read from one side before the queue toward the other is checked again;
/// also what each connection's receive buffer holds room for (two PDUs of the largest size).
const READ_SLICE: usize = 8 * 1024;

/// Sessions by the state they count as in `regedge_sccp_sessions{state}`.
pub const STATE_LABELS: [&str; 4] = ["awaiting_register", "standby", "registering", "registered"];

fn state_index(state: &State) -> Option<usize> {
    match state {
        State::AwaitingRegister => Some(0),
        State::Standby => Some(1),
        State::Connecting | State::Registering => Some(2),
        State::Registered => Some(3),
        State::Closed(_) => None,
    }
}

/// What the SCCP edge counts (read by metrics).
#[derive(Debug, Default)]
pub struct SccpStats {
    pub sessions: [AtomicI64; STATE_LABELS.len()],
    pub closed: [AtomicU64; CloseReason::ALL.len()],
    /// Phone keepalives answered in userspace.
    pub keepalives_answered: AtomicU64,
    /// Keepalives of standby connections, deliberately not acked.
    pub standby_keepalives: AtomicU64,
    pub framing_errors: [AtomicU64; FramingError::ALL.len()],
}

impl SccpStats {
    fn count_close(&self, reason: CloseReason) {
        let index = CloseReason::ALL.iter().position(|r| *r == reason).expect("listed");
        self.closed[index].fetch_add(1, Relaxed);
    }

    fn count_framing(&self, error: FramingError) {
        let index = FramingError::ALL.iter().position(|e| e.label() == error.label()).expect("listed");
        self.framing_errors[index].fetch_add(1, Relaxed);
    }
}

/// Where phone keepalives may be answered in the kernel: sockets (named by their local
/// and peer address) are added when accepted, marked once the phone registered (never a
/// standby connection), removed when the session ends.
pub trait KeepaliveOffload: Send + Sync {
    fn add(&self, fd: BorrowedFd<'_>, local: SocketAddr, peer: SocketAddr);
    fn mark_registered(&self, local: SocketAddr, peer: SocketAddr);
    fn remove(&self, local: SocketAddr, peer: SocketAddr);
    /// Keepalives answered in the kernel so far.
    fn kernel_answers(&self) -> u64;
}

impl KeepaliveOffload for SccpOffload {
    fn add(&self, fd: BorrowedFd<'_>, local: SocketAddr, peer: SocketAddr) {
        if let Err(error) = self.add_fd(fd, SccpSocket::new(local, peer)) {
            tracing::debug!(%peer, %error, "SCCP connection not offloaded: userspace answers its keepalives");
        }
    }

    fn mark_registered(&self, local: SocketAddr, peer: SocketAddr) {
        if let Err(error) = SccpOffload::mark_registered(self, SccpSocket::new(local, peer)) {
            tracing::debug!(%peer, %error, "SCCP connection not marked registered in the kernel");
        }
    }

    fn remove(&self, local: SocketAddr, peer: SocketAddr) {
        let _ = SccpOffload::remove(self, SccpSocket::new(local, peer));
    }

    fn kernel_answers(&self) -> u64 {
        self.kernel_keepalive_answers()
    }
}

/// What every SCCP loop shares.
pub struct SccpShared {
    pub routing: Arc<Routing>,
    pub policy: SessionPolicy,
    pub stats: SccpStats,
    pub offload: Option<Box<dyn KeepaliveOffload>>,
    /// `[limits]`: `max_sccp_sessions` caps the phone connections of all loops.
    pub limits: Arc<Limits>,
}

/// The running SCCP loops; dropping stops and joins them.
pub struct SccpEdge {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl SccpEdge {
    /// Whether every loop still runs (none has stopped on an error or a panic).
    pub fn running(&self) -> bool {
        self.threads.iter().all(|thread| !thread.is_finished())
    }

    /// Binds every listen address once per worker (a port in use fails here) and starts
    /// the loops.
    pub fn start(listen: &[SocketAddr], workers: usize, shared: Arc<SccpShared>) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut wakers, mut threads) = (Vec::new(), Vec::new());
        for id in 0..workers {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let mut listeners = Vec::with_capacity(listen.len());
            for (i, addr) in listen.iter().enumerate() {
                let mut listener = tcp::bind_listener(*addr)
                    .map_err(|e| io::Error::new(e.kind(), format!("binding SCCP {addr}: {e}")))?;
                poll.registry().register(&mut listener, Token(i), Interest::READABLE)?;
                listeners.push(listener);
            }
            let event_loop = Loop {
                poll,
                listeners,
                sessions: HashMap::new(),
                next_key: 0,
                shared: Arc::clone(&shared),
                stop: Arc::clone(&stop),
            };
            wakers.push(waker);
            threads.push(std::thread::Builder::new().name(format!("sccp-{id}")).spawn(move || event_loop.run())?);
        }
        Ok(Self { stop, wakers, threads })
    }
}

impl Drop for SccpEdge {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One phone: its connection, its backend's, its session.
struct Entry {
    phone: Conn,
    backend: Option<Conn>,
    group: Option<GroupId>,
    session: Session,
    /// The state the session is counted in.
    counted: Option<usize>,
    /// Reading the phone waits until the backend takes what is queued for it.
    phone_paused: bool,
    /// Reading the backend waits until the phone takes what is queued for it.
    backend_paused: bool,
    /// A write failed (or overflowed) on that side; `apply` acts on it.
    phone_failed: bool,
    /// The phone's socket left the kernel keepalive offload (see `send_to_phone`).
    offload_left: bool,
    backend_failed: bool,
}

struct Loop {
    poll: Poll,
    listeners: Vec<TcpListener>,
    sessions: HashMap<usize, Entry>,
    next_key: usize,
    shared: Arc<SccpShared>,
    stop: Arc<AtomicBool>,
}

fn phone_token(key: usize) -> Token {
    Token(SESSION_BASE + 2 * key)
}

fn backend_token(key: usize) -> Token {
    Token(SESSION_BASE + 2 * key + 1)
}

/// The identity SCCP phones are routed by: the device name (`SEP<MAC>`) and its MAC.
fn device_of(name: &str) -> Device {
    let tail = name.get(name.len().saturating_sub(12)..).unwrap_or_default();
    let mac = (tail.len() == 12 && tail.bytes().all(|c| c.is_ascii_hexdigit())).then(|| tail.to_ascii_lowercase());
    Device { key: format!("dev:{name}"), name: Some(name.to_owned()), mac, domain: String::new() }
}

impl Loop {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        while !self.stop.load(Relaxed) {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(err) = self.poll.poll(&mut events, Some(timeout)) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %err, "SCCP event loop stopped");
                return;
            }
            for event in &events {
                let token = event.token();
                if token == WAKE {
                    continue;
                }
                if token.0 < self.listeners.len() {
                    self.accept(token.0);
                    continue;
                }
                let key = (token.0 - SESSION_BASE) / 2;
                let is_backend = (token.0 - SESSION_BASE) % 2 == 1;
                if is_backend {
                    self.backend_event(key, event.is_writable(), event.is_readable() || event.is_read_closed());
                } else {
                    self.phone_event(key, event.is_writable(), event.is_readable() || event.is_read_closed());
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                self.tick();
            }
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let (mut stream, peer) = match self.listeners[index].accept() {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    tracing::debug!(error = %err, "SCCP accept failed");
                    return;
                }
            };
            let held: i64 = self.shared.stats.sessions.iter().map(|count| count.load(Relaxed)).sum();
            if !self.shared.limits.admit(Limit::SccpSessions, usize::try_from(held).unwrap_or(0)) {
                let cap = self.shared.limits.cap(Limit::SccpSessions);
                let refused = self.shared.limits.refused(Limit::SccpSessions);
                if self.shared.limits.log_refusal(Limit::SccpSessions) {
                    tracing::warn!(%peer, cap, refused, "SCCP connection closed at once: [limits] max_sccp_sessions reached (logged at the 1st, 2nd, 4th... refusal)");
                }
                drop(stream);
                continue;
            }
            let key = self.next_key;
            self.next_key += 1;
            if let Err(err) =
                self.poll.registry().register(&mut stream, phone_token(key), Interest::READABLE | Interest::WRITABLE)
            {
                tracing::debug!(error = %err, "registering an SCCP connection");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(peer);
            if let Some(offload) = &self.shared.offload {
                offload.add(stream.as_fd(), local, peer);
            }
            let phone = Conn::with_decoder(stream, ConnectionId(key as u64), peer, local, StreamDecoder::new());
            let session = Session::new(monotonic_ms(), self.shared.policy);
            let mut entry = Entry {
                phone,
                backend: None,
                group: None,
                session,
                counted: None,
                phone_paused: false,
                backend_paused: false,
                phone_failed: false,
                backend_failed: false,
                offload_left: false,
            };
            self.recount(&mut entry);
            self.sessions.insert(key, entry);
        }
    }

    /// Moves the session's count to its current state.
    fn recount(&self, entry: &mut Entry) {
        let now = state_index(&entry.session.state);
        if now != entry.counted {
            if let Some(old) = entry.counted {
                self.shared.stats.sessions[old].fetch_sub(1, Relaxed);
            }
            if let Some(new) = now {
                self.shared.stats.sessions[new].fetch_add(1, Relaxed);
            }
            entry.counted = now;
        }
    }

    fn phone_event(&mut self, key: usize, writable: bool, readable: bool) {
        let Some(mut entry) = self.sessions.remove(&key) else { return };
        let mut actions = Vec::new();
        let now = monotonic_ms();
        if writable {
            if entry.phone.flush().is_err() {
                entry.session.on_phone_closed(&mut actions);
            } else if entry.backend_paused && entry.phone.queued_len() < RESUME_BELOW {
                // The phone caught up: read what the backend sent meanwhile.
                entry.backend_paused = false;
                if self.read_backend(&mut entry, now, &mut actions) {
                    self.backend_lost(key, &mut entry, &mut actions);
                }
            }
        }
        if readable {
            self.read_phone(&mut entry, &mut actions);
        }
        self.apply(key, entry, actions);
    }

    /// Reads and handles what the phone sent, a slice at a time, until the socket is
    /// drained or the backend is not taking it fast enough (then the rest waits in the
    /// socket, TCP slows the phone down, and reading resumes when the backend catches up).
    fn read_phone(&self, entry: &mut Entry, actions: &mut Vec<Action>) {
        loop {
            if entry.backend.as_ref().is_some_and(|b| b.queued_len() > PAUSE_ABOVE) {
                entry.phone_paused = true;
                return;
            }
            let read = entry.phone.fill_some(READ_SLICE);
            let routing = &self.shared.routing;
            loop {
                let frame = match entry.phone.decoder.next_pdu() {
                    Ok(Some(pdu)) => pdu.to_frame(),
                    Ok(None) => break,
                    Err(error) => {
                        self.shared.stats.count_framing(error);
                        tracing::info!(peer = %entry.phone.peer, %error, "SCCP connection is not Skinny; closing it");
                        entry.session.close_malformed(actions);
                        return;
                    }
                };
                let mut group = None;
                let pick = |device: &str| {
                    group = routing.group_for_protocol(&device_of(device), BackendProtocol::Sccp);
                    routing.active_backend(group?)
                };
                let pdu = super::framing::Pdu {
                    header_version: frame.header_version,
                    message_id: frame.message_id,
                    bytes: &frame.bytes,
                };
                entry.session.on_phone(pdu, pick, actions);
                if group.is_some() {
                    entry.group = group;
                }
            }
            // Carry out what the session asked so far, so that the queue check above sees it.
            self.deliver(entry, actions);
            match read {
                Ok((n, true)) if n == READ_SLICE => continue,
                Ok((_, true)) => return,
                _ => return entry.session.on_phone_closed(actions),
            }
        }
    }

    /// Reads and handles what the backend sent, a slice at a time, until the socket is
    /// drained or the phone is not reading (then the rest waits in the socket). Returns
    /// true when the backend connection is lost.
    fn read_backend(&self, entry: &mut Entry, now: u64, actions: &mut Vec<Action>) -> bool {
        loop {
            if entry.phone.queued_len() > PAUSE_ABOVE {
                entry.backend_paused = true;
                return false;
            }
            let Some(backend) = entry.backend.as_mut() else { return false };
            let read = backend.fill_some(READ_SLICE);
            loop {
                match backend.decoder.next_pdu() {
                    Ok(Some(pdu)) => entry.session.on_backend(pdu, now, actions),
                    Ok(None) => break,
                    Err(error) => {
                        self.shared.stats.count_framing(error);
                        return true;
                    }
                }
            }
            self.deliver(entry, actions);
            match read {
                Ok((n, true)) if n == READ_SLICE => continue,
                Ok((_, true)) => return false,
                _ => return true,
            }
        }
    }

    /// Writes to the phone. The kernel's KeepAliveAcks enter the socket between
    /// userspace's writes, so once a PDU was written only in part (the phone is not
    /// reading) the socket leaves the kernel offload for good: an ack must never land in
    /// the middle of a PDU. From then on userspace answers that phone's keepalives.
    fn send_to_phone(&self, entry: &mut Entry, bytes: &[u8]) -> Result<(), tcp::CloseReason> {
        let sent = entry.phone.send(bytes);
        if entry.phone.queued_len() > 0 && !entry.offload_left {
            entry.offload_left = true;
            if let Some(offload) = &self.shared.offload {
                offload.remove(entry.phone.local, entry.phone.peer);
            }
        }
        sent
    }

    /// Writes the bytes the session produced so far; other actions stay for `apply`.
    fn deliver(&self, entry: &mut Entry, actions: &mut Vec<Action>) {
        actions.retain(|action| match action {
            Action::ToPhone(bytes) => {
                if self.send_to_phone(entry, bytes).is_err() {
                    entry.phone_failed = true;
                }
                false
            }
            Action::ToBackend(bytes) => match entry.backend.as_mut() {
                Some(backend) => {
                    if backend.send(bytes).is_err() {
                        entry.backend_failed = true;
                    }
                    false
                }
                None => false,
            },
            _ => true,
        });
    }

    fn backend_event(&mut self, key: usize, writable: bool, readable: bool) {
        let Some(mut entry) = self.sessions.remove(&key) else { return };
        let mut actions = Vec::new();
        let now = monotonic_ms();
        let mut lost = false;
        if writable && let Some(backend) = entry.backend.as_mut() {
            let was_connected = backend.is_connected();
            match backend.establish() {
                Ok(()) if backend.is_connected() && !was_connected => {
                    entry.session.on_backend_connected(now, &mut actions);
                }
                Ok(()) => {}
                Err(_) => lost = true,
            }
            if !lost && backend.flush().is_err() {
                lost = true;
            }
            if !lost && entry.phone_paused && backend.queued_len() < RESUME_BELOW {
                // The backend caught up: read what the phone sent meanwhile.
                entry.phone_paused = false;
                self.read_phone(&mut entry, &mut actions);
            }
        }
        if readable && !lost {
            lost = self.read_backend(&mut entry, now, &mut actions);
        }
        if lost {
            self.backend_lost(key, &mut entry, &mut actions);
        }
        self.apply(key, entry, actions);
    }

    /// The backend connection failed or closed. While registering, the next backend of
    /// the group that is up (other than the one that failed) gets the Register; otherwise
    /// the session learns it lost its backend.
    fn backend_lost(&self, key: usize, entry: &mut Entry, actions: &mut Vec<Action>) {
        let failed = entry.session.backend;
        if let Some(mut backend) = entry.backend.take() {
            let _ = self.poll.registry().deregister(&mut backend.stream);
        }
        if entry.session.registering()
            && let Some(group) = entry.group
        {
            let routing = &self.shared.routing;
            let next = routing.groups[group.0]
                .backends
                .iter()
                .copied()
                .skip_while(|b| Some(*b) != failed)
                .skip(1)
                .find(|b| routing.backend(*b).state() == BackendState::Up);
            if let Some(next) = next {
                entry.session.reconnect(next, actions);
                if self.connect(key, entry, next) {
                    actions.retain(|a| !matches!(a, Action::Connect(_)));
                    return;
                }
            }
        }
        entry.session.on_backend_lost(monotonic_ms(), actions);
    }

    /// Carries out a session's actions and puts the entry back (unless it closed).
    fn apply(&mut self, key: usize, mut entry: Entry, actions: Vec<Action>) {
        let stats = &self.shared.stats;
        let mut closing = None;
        let mut follow_up = Vec::new();
        if std::mem::take(&mut entry.phone_failed) {
            closing = Some(CloseReason::PhoneClosed);
        }
        if std::mem::take(&mut entry.backend_failed) {
            self.backend_lost(key, &mut entry, &mut follow_up);
        }
        for action in actions {
            match action {
                Action::ToPhone(bytes) => {
                    if self.send_to_phone(&mut entry, &bytes).is_err() {
                        closing.get_or_insert(CloseReason::PhoneClosed);
                    }
                }
                Action::ToBackend(bytes) => {
                    if let Some(backend) = entry.backend.as_mut()
                        && backend.send(&bytes).is_err()
                    {
                        self.backend_lost(key, &mut entry, &mut follow_up);
                    }
                }
                Action::Connect(backend) => {
                    if !self.connect(key, &mut entry, backend) {
                        self.backend_lost(key, &mut entry, &mut follow_up);
                    }
                }
                Action::Registered => {
                    if let Some(offload) = &self.shared.offload {
                        offload.mark_registered(entry.phone.local, entry.phone.peer);
                    }
                }
                Action::AnsweredKeepalive => {
                    stats.keepalives_answered.fetch_add(1, Relaxed);
                }
                Action::StandbyKeepalive => {
                    stats.standby_keepalives.fetch_add(1, Relaxed);
                }
                Action::Close(reason) => closing = Some(reason),
            }
        }
        for action in follow_up {
            match action {
                Action::Close(reason) => closing = Some(reason),
                Action::Connect(backend) => {
                    if !self.connect(key, &mut entry, backend) {
                        closing.get_or_insert(CloseReason::NoBackend);
                    }
                }
                _ => {}
            }
        }
        if let Some(reason) = closing {
            self.close(entry, reason);
        } else {
            self.recount(&mut entry);
            self.sessions.insert(key, entry);
        }
    }

    fn connect(&self, key: usize, entry: &mut Entry, backend: BackendId) -> bool {
        let address = self.shared.routing.backend(backend).address;
        let local = entry.phone.local;
        match Conn::connect_with(address, ConnectionId(key as u64), local, StreamDecoder::new()) {
            Ok(mut conn) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if self.poll.registry().register(&mut conn.stream, backend_token(key), interest).is_err() {
                    return false;
                }
                let _ = conn.stream.set_nodelay(true);
                entry.backend = Some(conn);
                true
            }
            Err(err) => {
                tracing::debug!(%address, error = %err, "connecting to an SCCP backend");
                false
            }
        }
    }

    /// Ends a session: what is queued for the phone is written if the socket takes it,
    /// then both connections close.
    fn close(&self, mut entry: Entry, reason: CloseReason) {
        let _ = entry.phone.flush();
        self.shared.stats.count_close(reason);
        if let Some(old) = entry.counted.take() {
            self.shared.stats.sessions[old].fetch_sub(1, Relaxed);
        }
        if let Some(offload) = &self.shared.offload {
            offload.remove(entry.phone.local, entry.phone.peer);
        }
        tracing::debug!(device = ?entry.session.device, reason = reason.label(), "SCCP session closed");
        let _ = self.poll.registry().deregister(&mut entry.phone.stream);
        if let Some(mut backend) = entry.backend.take() {
            let _ = self.poll.registry().deregister(&mut backend.stream);
        }
    }

    /// Timers, and moves of sessions whose backend is no longer the right one.
    fn tick(&mut self) {
        let now = monotonic_ms();
        let keys: Vec<usize> = self.sessions.keys().copied().collect();
        for key in keys {
            let Some(mut entry) = self.sessions.remove(&key) else { continue };
            let mut actions = Vec::new();
            entry.session.on_tick(now, &mut actions);
            if entry.session.state == State::Registered {
                self.maybe_move(&mut entry, now, &mut actions);
            }
            self.apply(key, entry, actions);
        }
    }

    /// A registered session whose backend connection is gone, or whose backend is down,
    /// draining or not its group's first choice, moves: when the phone is idle, and as
    /// fast as the target backend's `max_register_rate` allows (a phone the edge closes
    /// registers again at once, so the closes pace the re-registrations).
    fn maybe_move(&self, entry: &mut Entry, now: u64, actions: &mut Vec<Action>) {
        let routing = &self.shared.routing;
        let (Some(backend), Some(mut group)) = (entry.session.backend, entry.group) else { return };
        // A reload took the session's group away: the rules say where the phone goes now.
        if routing.groups[group.0].is_retired(group)
            && let Some(now_in) = entry
                .session
                .device
                .as_deref()
                .and_then(|device| routing.group_for_protocol(&device_of(device), BackendProtocol::Sccp))
        {
            group = now_in;
            entry.group = Some(now_in);
        }
        let active = routing.active_backend(group);
        let settled = entry.backend.is_some() && routing.backend(backend).state() == BackendState::Up;
        if settled && active == Some(backend) {
            return;
        }
        entry.session.must_move();
        // A connection lost to a backend the health checks still call up: give them time
        // to judge it, so that a dead backend's phones go once, paced, to the next one.
        if active == Some(backend) && entry.session.awaiting_judgement(now) {
            return;
        }
        // With no backend up there is nowhere to go: the phone stays (its own backup CM
        // list takes over if it loses us too).
        let Some(target) = active else { return };
        if entry.session.wants_move() && routing.backend(target).try_admit(now) {
            entry.session.moved(actions);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The shell over loopback: a phone, regedge's SCCP loop and a backend that stops
    //! reading.

    use std::{
        io::{Read, Write},
        net::{TcpListener as StdListener, TcpStream},
    };

    use regedge_common::sccp::id;

    use super::*;
    use crate::{config::Config, sccp::framing::encode_pdu};

    /// An SCCP edge on a free loopback port whose one group is the SCCP backend listening
    /// on `backend`, with `extra` config on top and `workers` loops.
    fn edge_to(backend: &StdListener, extra: &str, workers: usize) -> (SocketAddr, Arc<SccpShared>, SccpEdge) {
        let edge_addr: SocketAddr = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let config = Config::from_toml(
            &format!(
                "{extra}[routing]\ndefault_group = \"skinny\"\n[[backends]]\nname = \"cm1\"\naddress = \"{}\"\n\
                 protocol = \"sccp\"\ntransport = \"tcp\"\n[[groups]]\nname = \"skinny\"\nbackends = [\"cm1\"]\n",
                backend.local_addr().unwrap()
            ),
            "test",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let policy =
            SessionPolicy { register_timeout_ms: 5000, default_keepalive_ms: 30_000, backend_judgement_ms: 3000 };
        let shared = Arc::new(SccpShared {
            routing: Arc::new(Routing::from_config(&config)),
            policy,
            stats: SccpStats::default(),
            offload: None,
            limits: Arc::new(Limits::new(&config.limits)),
        });
        let edge = SccpEdge::start(&[edge_addr], workers, Arc::clone(&shared)).unwrap();
        (edge_addr, shared, edge)
    }

    fn pdu(message_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_pdu(0x11, message_id, payload, &mut out);
        out
    }

    fn read_pdu(stream: &mut TcpStream) -> (u32, Vec<u8>) {
        let mut header = [0u8; 12];
        stream.read_exact(&mut header).unwrap();
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize - 4;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).unwrap();
        (u32::from_le_bytes(header[8..].try_into().unwrap()), payload)
    }

    /// A phone that sends faster than its backend reads is slowed down by TCP (regedge
    /// stops reading it), not cut off; once the backend reads again, every byte arrives.
    #[test]
    fn a_backend_that_stops_reading_slows_the_phone_down() {
        let backend = StdListener::bind("127.0.0.1:0").unwrap();
        let (edge_addr, shared, _edge) = edge_to(&backend, "", 1);

        let mut phone = TcpStream::connect(edge_addr).unwrap();
        phone.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut register = b"SEP001122334455\0".to_vec();
        register.extend_from_slice(&[0; 28]);
        phone.write_all(&pdu(id::REGISTER, &register)).unwrap();
        let (mut cm, _) = backend.accept().unwrap();
        cm.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_pdu(&mut cm).0, id::REGISTER);
        cm.write_all(&pdu(id::REGISTER_ACK, &[30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])).unwrap();
        assert_eq!(read_pdu(&mut phone).0, id::REGISTER_ACK);

        // The backend reads nothing now; the phone sends 64 MiB of opaque PDUs.
        const TOTAL: usize = 64 << 20;
        let chunk = pdu(0x0099, &[7u8; 4000]);
        let expected = TOTAL.div_ceil(chunk.len()) * chunk.len();
        let sender = std::thread::spawn(move || {
            let mut sent = 0;
            while sent < TOTAL {
                phone.write_all(&chunk).unwrap();
                sent += chunk.len();
            }
            phone
        });
        std::thread::sleep(Duration::from_secs(2));
        let closed: Vec<_> = CloseReason::ALL
            .iter()
            .zip(&shared.stats.closed)
            .filter(|(_, c)| c.load(Relaxed) > 0)
            .map(|(r, c)| (r.label(), c.load(Relaxed)))
            .collect();
        assert!(
            !sender.is_finished(),
            "the phone could send 64 MiB to a backend that reads nothing; closed: {closed:?}"
        );
        assert_eq!(
            shared.stats.closed.iter().map(|c| c.load(Relaxed)).sum::<u64>(),
            0,
            "the session is held, not closed for overflowing"
        );
        // The backend reads again: every byte arrives, in order.
        let mut received = 0;
        let mut buf = vec![0u8; 1 << 16];
        while received < expected {
            let n = cm.read(&mut buf).unwrap();
            assert!(n > 0, "backend connection closed after {received} bytes");
            received += n;
        }
        assert_eq!(received, expected);
        let _phone = sender.join().unwrap();
    }

    /// Beyond `[limits] max_sccp_sessions` a connection is accepted and closed at once
    /// (counted); the sessions held keep working, and a slot that frees is used again.
    #[test]
    fn connections_beyond_max_sccp_sessions_are_closed_at_once() {
        let backend = StdListener::bind("127.0.0.1:0").unwrap();
        let (edge_addr, shared, _edge) = edge_to(&backend, "[limits]\nmax_sccp_sessions = 2\n", 2);
        let held = || shared.stats.sessions.iter().map(|c| c.load(Relaxed)).sum::<i64>();
        let wait = |what: &str, check: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !check() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let first = TcpStream::connect(edge_addr).unwrap();
        let second = TcpStream::connect(edge_addr).unwrap();
        wait("two sessions held", &|| held() == 2);
        let mut third = TcpStream::connect(edge_addr).unwrap();
        third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let read = third.read(&mut buf);
        assert!(matches!(read, Ok(0)) || read.is_err(), "the third connection was not closed: {read:?}");
        assert_eq!(shared.limits.refused(Limit::SccpSessions), 1);
        assert_eq!(held(), 2, "sessions held beyond the cap");
        drop(second);
        wait("the closed session freed its slot", &|| held() == 1);
        let _fourth = TcpStream::connect(edge_addr).unwrap();
        wait("a fourth connection takes the free slot", &|| held() == 2);
        assert_eq!(shared.limits.refused(Limit::SccpSessions), 1);
        drop(first);
    }
}
