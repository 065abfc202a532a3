//! UDP event loops: one mio loop per worker thread, each with its own SO_REUSEPORT
//! socket on every `[sip] listen` address, so the kernel spreads datagrams over the
//! loops. Each datagram goes to the engine; the loop sends the reply and counts.

use std::{
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use mio::{Events, Interest, Poll, Token, Waker, net::UdpSocket};
use socket2::{Domain, Protocol, Socket, Type};

use super::pktinfo;
use crate::{engine::UdpEngine, metrics::UserspaceCounters};

const WAKE: Token = Token(usize::MAX);
/// Largest datagram read; a UDP SIP message over the MTU is fragmented, not larger.
const RECV_BUFFER: usize = 65_535;
const EVENTS_CAPACITY: usize = 256;

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
    /// here, before anything runs) and starts the loops.
    pub fn start(
        listen: &[SocketAddr],
        workers: usize,
        engine: Arc<UdpEngine>,
        counters: Arc<UserspaceCounters>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut loops = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let mut sockets = Vec::with_capacity(listen.len());
            for (i, addr) in listen.iter().enumerate() {
                let mut socket = UdpSocket::from_std(
                    bind_reuseport(*addr).map_err(|e| io::Error::new(e.kind(), format!("binding UDP {addr}: {e}")))?,
                );
                poll.registry().register(&mut socket, Token(i), Interest::READABLE)?;
                sockets.push(Listener { socket, wildcard: addr.ip().is_unspecified() });
            }
            loops.push((poll, waker, sockets));
        }
        let mut wakers = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for (id, (poll, waker, sockets)) in loops.into_iter().enumerate() {
            wakers.push(waker);
            let event_loop = UdpLoop {
                poll,
                sockets,
                engine: Arc::clone(&engine),
                counters: Arc::clone(&counters),
                stop: Arc::clone(&stop),
            };
            threads.push(std::thread::Builder::new().name(format!("udp-{id}")).spawn(move || event_loop.run())?);
        }
        Ok(Self { stop, wakers, threads })
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

struct UdpLoop {
    poll: Poll,
    sockets: Vec<Listener>,
    engine: Arc<UdpEngine>,
    counters: Arc<UserspaceCounters>,
    stop: Arc<AtomicBool>,
}

impl UdpLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut recv = vec![0u8; RECV_BUFFER];
        let mut reply = Vec::with_capacity(2048);
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(err) = self.poll.poll(&mut events, None) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %err, "UDP event loop stopped");
                return;
            }
            for event in &events {
                if let Some(listener) = self.sockets.get(event.token().0) {
                    drain(listener, &self.engine, &self.counters, &mut recv, &mut reply);
                }
            }
        }
    }
}

/// A listening socket; `wildcard` ones learn and reply from each datagram's destination.
struct Listener {
    socket: UdpSocket,
    wildcard: bool,
}

/// Reads until the socket would block (mio is edge-triggered).
fn drain(listener: &Listener, engine: &UdpEngine, counters: &UserspaceCounters, recv: &mut [u8], reply: &mut Vec<u8>) {
    let fd = listener.socket.as_raw_fd();
    loop {
        let received = if listener.wildcard {
            pktinfo::recv(fd, recv)
        } else {
            listener.socket.recv_from(recv).map(|(len, peer)| (len, peer, None))
        };
        let (len, peer, local) = match received {
            Ok(received) => received,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            // ICMP errors from earlier sends surface here; they concern one peer only.
            Err(err) => {
                tracing::debug!(error = %err, "UDP receive error");
                continue;
            }
        };
        let outcome = engine.on_datagram(&recv[..len], peer, reply);
        if !reply.is_empty() {
            let sent = match local {
                Some(local) => pktinfo::send_from(fd, reply, peer, local),
                None => listener.socket.send_to(reply, peer).map(drop),
            };
            if let Err(err) = sent {
                tracing::debug!(%peer, error = %err, "UDP reply not sent");
            }
        }
        counters.record(outcome);
    }
}
