//! UDP event loops: one mio loop per worker thread, each with its own SO_REUSEPORT
//! socket on every `[sip] listen` address, so the kernel spreads datagrams over the
//! loops. Each datagram goes to the engine; the loop sends what it says — the answer to
//! the sender, REGISTERs to backends, relayed responses to phones — and counts.
//! The first loop also runs the registrar's timers and applies health changes.

use std::{
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use crossbeam_channel::Receiver;
use mio::{Events, Interest, Poll, Token, Waker, net::UdpSocket};
use socket2::{Domain, Protocol, Socket, Type};

use super::pktinfo;
use crate::{
    engine::{Engine, Output},
    health::HealthEvent,
    metrics::UserspaceCounters,
    registrar::{Destination, Now, Send},
    registry::{Flow, Transport},
};

const WAKE: Token = Token(usize::MAX);
/// Largest datagram read; a UDP SIP message over the MTU is fragmented, not larger.
const RECV_BUFFER: usize = 65_535;
const EVENTS_CAPACITY: usize = 256;
/// How often the first loop runs the registrar's timers.
const TICK: Duration = Duration::from_millis(250);

/// The clock the shell reads for the engine.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self { start: Instant::now() }
    }
}

impl Clock {
    pub fn now(&self) -> Now {
        let unix_secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Now { mono_ms: self.start.elapsed().as_millis() as u64, unix_secs }
    }
}

/// What every loop shares.
pub struct Shared {
    pub engine: Engine,
    pub counters: UserspaceCounters,
    pub clock: Clock,
}

/// A UDP socket bound with SO_REUSEPORT (IPv6 sockets are IPv6-only, so `[::]` and
/// `0.0.0.0` are separate listeners). A wildcard socket reports each datagram's
/// destination address (see `pktinfo`).
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if addr.ip().is_unspecified() {
        pktinfo::enable(&socket, addr.is_ipv6())?;
    }
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The running UDP loops. Dropping stops and joins them.
pub struct UdpWorkers {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpWorkers {
    /// Binds every listen address once per worker (errors such as a port in use surface
    /// here, before anything runs) and starts the loops. `backend_listener[i]` is the
    /// index in `listen` of the socket that talks to backend `i`.
    pub fn start(
        listen: &[SocketAddr],
        workers: usize,
        shared: Arc<Shared>,
        backend_listener: Vec<usize>,
        health: Option<Receiver<HealthEvent>>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut loops = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let mut listeners = Vec::with_capacity(listen.len());
            for (i, addr) in listen.iter().enumerate() {
                let socket =
                    bind_reuseport(*addr).map_err(|e| io::Error::new(e.kind(), format!("binding UDP {addr}: {e}")))?;
                let mut socket = UdpSocket::from_std(socket);
                poll.registry().register(&mut socket, Token(i), Interest::READABLE)?;
                listeners.push(Listener { socket, addr: *addr });
            }
            loops.push((poll, waker, listeners));
        }
        let mut wakers = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        let mut health = health;
        for (id, (poll, waker, listeners)) in loops.into_iter().enumerate() {
            wakers.push(waker);
            let event_loop = UdpLoop {
                poll,
                listeners,
                shared: Arc::clone(&shared),
                stop: Arc::clone(&stop),
                backend_listener: backend_listener.clone(),
                // The first loop runs timers and applies health changes.
                timekeeper: id == 0,
                health: if id == 0 { health.take() } else { None },
            };
            threads.push(std::thread::Builder::new().name(format!("udp-{id}")).spawn(move || event_loop.run())?);
        }
        Ok(Self { stop, wakers, threads })
    }

    /// Wakes the first loop (the one that applies health changes).
    pub fn timekeeper_waker(&self) -> Arc<Waker> {
        Arc::clone(&self.wakers[0])
    }
}

impl Drop for UdpWorkers {
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

/// A listening socket; a wildcard one learns and replies from each datagram's destination.
struct Listener {
    socket: UdpSocket,
    addr: SocketAddr,
}

impl Listener {
    fn wildcard(&self) -> bool {
        self.addr.ip().is_unspecified()
    }
}

struct UdpLoop {
    poll: Poll,
    listeners: Vec<Listener>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    backend_listener: Vec<usize>,
    timekeeper: bool,
    health: Option<Receiver<HealthEvent>>,
}

impl UdpLoop {
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
                tracing::error!(error = %err, "UDP event loop stopped");
                return;
            }
            for event in &events {
                if event.token() != WAKE {
                    self.drain(event.token().0, &mut recv, &mut output);
                }
            }
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
    }

    fn apply_health_events(&self) {
        let (Some(events), Some(registrar)) = (&self.health, &self.shared.engine.registrar) else { return };
        for event in events.try_iter() {
            registrar.routing.backend(event.backend).set_state(event.state);
        }
    }

    /// Reads the listener until it would block (mio is edge-triggered).
    fn drain(&self, index: usize, recv: &mut [u8], output: &mut Output) {
        let Some(listener) = self.listeners.get(index) else { return };
        let fd = listener.socket.as_raw_fd();
        loop {
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
                self.send_to_flow(&flow, &output.reply);
            }
            self.dispatch(&output.sends);
            self.shared.counters.record(outcome);
        }
    }

    fn dispatch(&self, sends: &[Send]) {
        for send in sends {
            match send.to {
                Destination::Phone(flow) => self.send_to_flow(&flow, &send.bytes),
                Destination::Backend(id) => {
                    let Some(registrar) = &self.shared.engine.registrar else { continue };
                    let backend = registrar.routing.backend(id);
                    let listener = &self.listeners[self.backend_listener[id.0]];
                    if let Err(err) = listener.socket.send_to(&send.bytes, backend.address) {
                        tracing::debug!(backend = %backend.name, error = %err, "UDP send to backend failed");
                    }
                }
            }
        }
    }

    /// Sends to a phone's UDP flow from the address it sent to.
    fn send_to_flow(&self, flow: &Flow, bytes: &[u8]) {
        if flow.transport != Transport::Udp {
            tracing::debug!(peer = %flow.peer, "no UDP route to a TCP flow from this loop");
            return;
        }
        let port = flow.local.port();
        let listener = self.listeners.iter().find(|l| l.addr == flow.local).or_else(|| {
            self.listeners
                .iter()
                .find(|l| l.wildcard() && l.addr.port() == port && l.addr.is_ipv4() == flow.local.is_ipv4())
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
