//! The event loops: one mio loop per worker thread. Each has its own SO_REUSEPORT UDP
//! socket and TCP listener on every `[sip] listen` address, so the kernel spreads
//! datagrams and connections over the loops. Every message goes to the engine; the loop
//! sends what it says — the answer to the sender, REGISTERs to backends, relayed
//! responses to phones — and counts. A TCP connection belongs to the loop that accepted
//! it; messages for it from other loops arrive through that loop's mailbox. The first
//! loop also runs the registrar's timers and applies health changes.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker, net::TcpListener};

use super::{
    pktinfo,
    tcp::{self, CloseReason, Connection},
    udp::bind_reuseport,
};
use crate::{
    config::BackendTransport,
    engine::{Engine, Output},
    failover::BackendId,
    health::HealthEvent,
    limits::{Limit, Limits},
    metrics::UserspaceCounters,
    registrar::{Destination, Now, Send},
    registry::{ConnectionId, Flow, Transport},
    sip::framing::{Frame, PONG},
};
use regedge_common::ReplyKind;

const WAKE: Token = Token(usize::MAX);
/// Tokens of TCP connections start here (UDP sockets and TCP listeners come first).
const CONNECTION_BASE: usize = 1 << 32;
/// Largest datagram read; a UDP SIP message over the MTU is fragmented, not larger.
const RECV_BUFFER: usize = 65_535;
const EVENTS_CAPACITY: usize = 256;
/// How often the first loop runs the registrar's timers.
const TICK: Duration = Duration::from_millis(250);

/// The clock the shell reads for the engine.
#[derive(Clone, Copy, Debug)]
/// Reads CLOCK_MONOTONIC (the clock `bpf_ktime_get_ns` reads, so times in kernel map
/// entries and in the registry compare, across userspace restarts too) and the wall clock.
#[derive(Default)]
pub struct Clock;

impl Clock {
    pub fn now(&self) -> Now {
        let unix_secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Now { mono_ms: monotonic_ms(), unix_secs }
    }
}

/// CLOCK_MONOTONIC in milliseconds.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// What every loop shares.
pub struct Shared {
    pub engine: Engine,
    pub counters: UserspaceCounters,
    pub clock: Clock,
    next_connection: AtomicU64,
    /// `[limits]`, shared with the registrar and the SCCP edge; a reload sets them.
    pub limits: Arc<Limits>,
    /// Open SIP TCP connections accepted from phones (`max_sip_tcp_connections`).
    accepted: AtomicUsize,
}

impl Shared {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            counters: UserspaceCounters::default(),
            clock: Clock::default(),
            next_connection: AtomicU64::new(1),
            limits: Arc::default(),
            accepted: AtomicUsize::new(0),
        }
    }

    /// The caps in force (the registrar's and the SCCP edge's: one `Limits`).
    pub fn with_limits(mut self, limits: Arc<Limits>) -> Self {
        self.limits = limits;
        self
    }

    /// Open SIP TCP connections accepted from phones.
    pub fn accepted_connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Open TCP connections.
    pub fn connections(&self) -> usize {
        self.engine.connections.len()
    }
}

/// Bytes for a connection owned by another loop.
type Mail = (ConnectionId, Vec<u8>);

/// The running loops. Dropping stops and joins them.
pub struct Workers {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Binds every listen address (UDP and TCP) once per worker — a port in use fails
    /// here, before anything runs — and starts the loops. `backend_listener[i]` is the
    /// index in `listen` of the UDP socket that talks to backend `i`.
    pub fn start(
        listen: &[SocketAddr],
        workers: usize,
        shared: Arc<Shared>,
        backend_listener: Vec<usize>,
        health: Option<Receiver<HealthEvent>>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        fn with_addr(addr: SocketAddr, what: &'static str) -> impl FnOnce(io::Error) -> io::Error {
            move |e| io::Error::new(e.kind(), format!("binding {what} {addr}: {e}"))
        }
        let mut prepared = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let mut udp = Vec::with_capacity(listen.len());
            let mut tcp = Vec::with_capacity(listen.len());
            for (i, addr) in listen.iter().enumerate() {
                let mut socket = mio::net::UdpSocket::from_std(bind_reuseport(*addr).map_err(with_addr(*addr, "UDP"))?);
                poll.registry().register(&mut socket, Token(i), Interest::READABLE)?;
                udp.push(UdpListener { socket, addr: *addr });
                let mut listener = tcp::bind_listener(*addr).map_err(with_addr(*addr, "TCP"))?;
                poll.registry().register(&mut listener, Token(listen.len() + i), Interest::READABLE)?;
                tcp.push(listener);
            }
            prepared.push((poll, waker, udp, tcp));
        }
        let mailboxes: Vec<(Sender<Mail>, Receiver<Mail>)> =
            (0..workers).map(|_| crossbeam_channel::unbounded()).collect();
        let wakers: Vec<Arc<Waker>> = prepared.iter().map(|(_, w, _, _)| Arc::clone(w)).collect();
        let post: Arc<Vec<(Sender<Mail>, Arc<Waker>)>> =
            Arc::new(mailboxes.iter().zip(&wakers).map(|((tx, _), w)| (tx.clone(), Arc::clone(w))).collect());
        let mut threads = Vec::with_capacity(workers);
        let mut health = health;
        for (id, ((poll, _, udp, tcp), (_, inbox))) in prepared.into_iter().zip(mailboxes).enumerate() {
            let event_loop = Loop {
                id,
                poll,
                udp,
                tcp,
                connections: HashMap::new(),
                backend_connections: HashMap::new(),
                inbox,
                post: Arc::clone(&post),
                shared: Arc::clone(&shared),
                stop: Arc::clone(&stop),
                backend_listener: backend_listener.clone(),
                timekeeper: id == 0,
                health: if id == 0 { health.take() } else { None },
            };
            threads.push(std::thread::Builder::new().name(format!("sip-{id}")).spawn(move || event_loop.run())?);
        }
        Ok(Self { stop, wakers, threads })
    }

    /// Wakes the first loop (the one that applies health changes).
    pub fn timekeeper_waker(&self) -> Arc<Waker> {
        Arc::clone(&self.wakers[0])
    }

    /// Whether every loop still runs (none has stopped on an error or a panic).
    pub fn running(&self) -> bool {
        self.threads.iter().all(|thread| !thread.is_finished())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A UDP socket; a wildcard one learns and replies from each datagram's destination.
struct UdpListener {
    socket: mio::net::UdpSocket,
    addr: SocketAddr,
}

impl UdpListener {
    fn wildcard(&self) -> bool {
        self.addr.ip().is_unspecified()
    }
}

struct Loop {
    id: usize,
    poll: Poll,
    udp: Vec<UdpListener>,
    tcp: Vec<TcpListener>,
    connections: HashMap<usize, Connection>,
    /// This loop's connection to each TCP backend (by backend index), once opened.
    backend_connections: HashMap<usize, usize>,
    inbox: Receiver<Mail>,
    post: Arc<Vec<(Sender<Mail>, Arc<Waker>)>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    backend_listener: Vec<usize>,
    timekeeper: bool,
    health: Option<Receiver<HealthEvent>>,
}

fn connection_token(id: ConnectionId) -> usize {
    CONNECTION_BASE + id.0 as usize
}

impl Loop {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut recv = vec![0u8; RECV_BUFFER];
        let mut output = Output::default();
        let mut next_tick = Instant::now() + TICK;
        while !self.stop.load(Ordering::Relaxed) {
            let timeout = self.timekeeper.then(|| next_tick.saturating_duration_since(Instant::now()));
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %err, "event loop stopped");
                return;
            }
            for event in &events {
                let token = event.token().0;
                if event.token() == WAKE {
                    continue;
                } else if token < self.udp.len() {
                    self.drain_udp(token, &mut recv, &mut output);
                } else if token < self.udp.len() + self.tcp.len() {
                    self.accept(token - self.udp.len());
                } else {
                    if event.is_writable() {
                        self.flush(token);
                    }
                    if event.is_readable() || event.is_read_closed() {
                        self.read_connection(token, &mut output);
                    }
                }
            }
            self.deliver_mail();
            if self.timekeeper {
                self.apply_health_events();
                if Instant::now() >= next_tick {
                    next_tick = Instant::now() + TICK;
                    output.clear();
                    self.shared.engine.on_tick(self.shared.clock.now(), &mut output.sends);
                    self.dispatch(&output.sends);
                }
            }
        }
        for (token, connection) in self.connections.drain() {
            if !self.backend_connections.values().any(|t| *t == token) {
                self.shared.accepted.fetch_sub(1, Ordering::Relaxed);
            }
            self.shared.engine.connections.remove(&connection.id);
        }
    }

    fn apply_health_events(&self) {
        let (Some(events), Some(registrar)) = (&self.health, &self.shared.engine.registrar) else { return };
        for event in events.try_iter() {
            registrar.on_backend_state(event.backend, event.state);
        }
    }

    /// Reads a UDP socket until it would block (mio is edge-triggered).
    fn drain_udp(&mut self, index: usize, recv: &mut [u8], output: &mut Output) {
        loop {
            let listener = &self.udp[index];
            let fd = listener.socket.as_raw_fd();
            let received = if listener.wildcard() {
                pktinfo::recv(fd, recv)
            } else {
                listener.socket.recv_from(recv).map(|(len, peer)| (len, peer, None))
            };
            let (len, peer, local_ip) = match received {
                Ok(received) => received,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors from earlier sends surface here; they concern one peer only.
                Err(err) => {
                    tracing::debug!(error = %err, "UDP receive error");
                    continue;
                }
            };
            let local = SocketAddr::new(local_ip.unwrap_or(listener.addr.ip()), listener.addr.port());
            let flow = Flow { transport: Transport::Udp, peer, local, connection: None };
            let outcome = self.shared.engine.on_datagram(&recv[..len], flow, self.shared.clock.now(), output);
            if !output.reply.is_empty() {
                self.send_udp(&flow, &output.reply);
            }
            self.dispatch(&output.sends);
            self.shared.counters.record(outcome);
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let (mut stream, peer) = match self.tcp[index].accept() {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::warn!(error = %err, "TCP accept failed");
                    return;
                }
            };
            if !self.shared.limits.admit(Limit::SipTcpConnections, self.shared.accepted.load(Ordering::Relaxed)) {
                let cap = self.shared.limits.cap(Limit::SipTcpConnections);
                let refused = self.shared.limits.refused(Limit::SipTcpConnections);
                if self.shared.limits.log_refusal(Limit::SipTcpConnections) {
                    tracing::warn!(%peer, cap, refused, "SIP TCP connection closed at once: [limits] max_sip_tcp_connections reached (logged at the 1st, 2nd, 4th... refusal)");
                }
                drop(stream);
                continue;
            }
            let Ok(local) = stream.local_addr() else { continue };
            let id = ConnectionId(self.shared.next_connection.fetch_add(1, Ordering::Relaxed));
            let token = connection_token(id);
            if let Err(err) =
                self.poll.registry().register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)
            {
                tracing::warn!(error = %err, "registering a TCP connection failed");
                continue;
            }
            let _ = stream.set_nodelay(true);
            self.shared.accepted.fetch_add(1, Ordering::Relaxed);
            self.shared.engine.connections.insert(id, self.id);
            self.connections.insert(token, Connection::new(stream, id, peer, local));
        }
    }

    fn read_connection(&mut self, token: usize, output: &mut Output) {
        let Some(connection) = self.connections.get_mut(&token) else { return };
        let open = match connection.fill() {
            Ok(open) => open,
            Err(_) => return self.close(token, CloseReason::Io),
        };
        let flow = Flow {
            transport: Transport::Tcp,
            peer: connection.peer,
            local: connection.local,
            connection: Some(connection.id),
        };
        let mut replies: Vec<Vec<u8>> = Vec::new();
        let mut sends: Vec<Send> = Vec::new();
        loop {
            let Some(connection) = self.connections.get_mut(&token) else { return };
            match connection.decoder.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Pong)) => {}
                Ok(Some(Frame::Ping)) => {
                    replies.push(PONG.to_vec());
                    self.shared.counters.record(crate::engine::Outcome::Replied(ReplyKind::Crlf));
                }
                Ok(Some(Frame::Message(bytes))) => {
                    let outcome = self.shared.engine.on_datagram(bytes, flow, self.shared.clock.now(), output);
                    if !output.reply.is_empty() {
                        replies.push(std::mem::take(&mut output.reply));
                    }
                    sends.append(&mut output.sends);
                    self.shared.counters.record(outcome);
                }
                Err(err) => {
                    tracing::info!(peer = %flow.peer, error = %err, "closing a SIP TCP connection");
                    return self.close(token, CloseReason::Framing(err));
                }
            }
        }
        for reply in replies {
            self.send_to_connection(token, &reply);
        }
        self.dispatch(&sends);
        if !open {
            self.close(token, CloseReason::PeerClosed);
        }
    }

    fn flush(&mut self, token: usize) {
        let Some(connection) = self.connections.get_mut(&token) else { return };
        let result =
            connection.establish().and_then(|()| if connection.wants_write() { connection.flush() } else { Ok(()) });
        if let Err(reason) = result {
            tracing::info!(peer = %connection.peer, reason = reason.label(), "closing a SIP TCP connection");
            self.close(token, reason);
        }
    }

    fn send_to_connection(&mut self, token: usize, bytes: &[u8]) {
        let Some(connection) = self.connections.get_mut(&token) else { return };
        if let Err(reason) = connection.send(bytes) {
            tracing::info!(peer = %connection.peer, reason = reason.label(), "closing a SIP TCP connection");
            self.close(token, reason);
        }
    }

    fn close(&mut self, token: usize, reason: CloseReason) {
        let to_backend = self.backend_connections.values().any(|t| *t == token);
        self.backend_connections.retain(|_, t| *t != token);
        if let Some(mut connection) = self.connections.remove(&token) {
            if !to_backend {
                self.shared.accepted.fetch_sub(1, Ordering::Relaxed);
            }
            let _ = self.poll.registry().deregister(&mut connection.stream);
            self.shared.engine.connections.remove(&connection.id);
            self.shared.counters.record_tcp_close(reason);
        }
    }

    fn deliver_mail(&mut self) {
        while let Ok((id, bytes)) = self.inbox.try_recv() {
            self.send_to_connection(connection_token(id), &bytes);
        }
    }

    fn dispatch(&mut self, sends: &[Send]) {
        for send in sends {
            match send.to {
                Destination::Phone(flow) => self.send_to_flow(&flow, &send.bytes),
                Destination::Backend(id) => self.send_to_backend(id, &send.bytes),
            }
        }
    }

    /// To a backend: from the UDP socket that faces it, or over this loop's connection
    /// to it (opened on first use; its answers come back on it).
    fn send_to_backend(&mut self, id: BackendId, bytes: &[u8]) {
        let Some(registrar) = &self.shared.engine.registrar else { return };
        let backend = registrar.routing.backend(id);
        // Backends a reload added are not in the start's list: their link says.
        let listener = &self.udp[self.backend_listener.get(id.0).copied().unwrap_or(backend.link.listener)];
        if backend.transport == BackendTransport::Udp {
            if let Err(err) = listener.socket.send_to(bytes, backend.address) {
                tracing::debug!(backend = %backend.name, error = %err, "UDP send to backend failed");
            }
            return;
        }
        let token = match self.backend_connections.get(&id.0) {
            Some(token) => *token,
            None => {
                let (address, local) = (backend.address, listener.addr);
                let connection_id = ConnectionId(self.shared.next_connection.fetch_add(1, Ordering::Relaxed));
                let token = connection_token(connection_id);
                let opened = Connection::connect(address, connection_id, local).and_then(|mut connection| {
                    self.poll.registry().register(
                        &mut connection.stream,
                        Token(token),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    Ok(connection)
                });
                match opened {
                    Ok(connection) => {
                        self.shared.engine.connections.insert(connection_id, self.id);
                        self.connections.insert(token, connection);
                        self.backend_connections.insert(id.0, token);
                        token
                    }
                    Err(err) => {
                        tracing::debug!(backend = %address, error = %err, "TCP connection to backend failed");
                        return;
                    }
                }
            }
        };
        self.send_to_connection(token, bytes);
    }

    fn send_to_flow(&mut self, flow: &Flow, bytes: &[u8]) {
        match (flow.transport, flow.connection) {
            (Transport::Tcp, Some(id)) => match self.shared.engine.connections.get(&id).map(|owner| *owner) {
                Some(owner) if owner == self.id => self.send_to_connection(connection_token(id), bytes),
                Some(owner) => {
                    let (mailbox, waker) = &self.post[owner];
                    if mailbox.send((id, bytes.to_vec())).is_ok() {
                        let _ = waker.wake();
                    }
                }
                None => tracing::debug!(peer = %flow.peer, "the phone's TCP connection is gone"),
            },
            _ => self.send_udp(flow, bytes),
        }
    }

    /// Sends to a phone's UDP flow from the address it sent to.
    fn send_udp(&self, flow: &Flow, bytes: &[u8]) {
        let port = flow.local.port();
        let listener = self.udp.iter().find(|l| l.addr == flow.local).or_else(|| {
            self.udp.iter().find(|l| l.wildcard() && l.addr.port() == port && l.addr.is_ipv4() == flow.local.is_ipv4())
        });
        let Some(listener) = listener else {
            tracing::debug!(local = %flow.local, "no listener for a flow's local address");
            return;
        };
        let sent = if listener.wildcard() {
            pktinfo::send_from(listener.socket.as_raw_fd(), bytes, flow.peer, flow.local.ip())
        } else {
            listener.socket.send_to(bytes, flow.peer).map(drop)
        };
        if let Err(err) = sent {
            tracing::debug!(peer = %flow.peer, error = %err, "UDP send failed");
        }
    }
}
