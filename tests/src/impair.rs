//! A UDP path with faults, for fault tests: a relay inside a namespace that passes
//! datagrams between one client and one target, and can drop them all (a blackhole),
//! delay them (a slow peer) or drop a seeded fraction (loss). The kernels these tests run
//! on have no `sch_netem`, so `tc qdisc ... netem` is not available; the relay gives the
//! same faults, per direction and switchable while traffic flows.
//!
//! Each client address (regedge's SIP socket, each of its health probes' sockets, sipp's
//! socket) gets a back socket of its own, so the target's answers, however late, go back
//! to the client they belong to; the target sees the back socket as its peer and, with
//! `rport`, answers there.

use std::{
    collections::VecDeque,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// What happens to datagrams on the path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Passed at once.
    None,
    /// Dropped, every one (a blackhole).
    Blackhole,
    /// Passed after this long.
    Delay(Duration),
    /// This fraction (0.0 to 1.0) dropped, chosen by a seeded generator; the rest passed at once.
    Loss(f64),
}

/// Datagrams counted per direction.
#[derive(Debug, Default)]
pub struct PathCounts {
    pub passed: AtomicU64,
    pub dropped: AtomicU64,
}

struct State {
    /// Toward the target, toward the client.
    faults: Mutex<[Fault; 2]>,
    stop: AtomicBool,
    counts: [PathCounts; 2],
    /// Datagrams waiting out a delay: (due, direction, socket to send from, destination, bytes).
    delayed: Mutex<VecDeque<Delayed>>,
    wake: Condvar,
}

type Delayed = (Instant, usize, Arc<UdpSocket>, SocketAddr, Vec<u8>);

/// Direction index: toward the target.
pub const TO_TARGET: usize = 0;
/// Direction index: back toward the client.
pub const TO_CLIENT: usize = 1;

/// The relay; dropping it stops its threads.
pub struct Impairment {
    pub front: SocketAddr,
    pub target: SocketAddr,
    state: Arc<State>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Impairment {
    /// A relay in `ns` listening on `front` (UDP) and passing to `target` from `back_ip`
    /// (a port per client, chosen by the kernel), every datagram passed until
    /// [`set`](Self::set).
    pub fn start(ns: &NetNs, front: SocketAddr, back_ip: std::net::IpAddr, target: SocketAddr) -> Self {
        let state = Arc::new(State {
            faults: Mutex::new([Fault::None; 2]),
            stop: AtomicBool::new(false),
            counts: Default::default(),
            delayed: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
        });
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let netns = std::fs::File::open(format!("/run/netns/{}", ns.name)).expect("open netns");
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        // The front reader joins the namespace: it binds a back socket per new client there.
        let front_reader = {
            let state = Arc::clone(&state);
            let threads = Arc::clone(&threads);
            std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a namespace fd for this thread only.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                let socket = match UdpSocket::bind(front) {
                    Ok(socket) => Arc::new(socket),
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                socket.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
                let _ = bound_tx.send(Ok(()));
                let mut backs: std::collections::HashMap<SocketAddr, Arc<UdpSocket>> = Default::default();
                let mut rng = 0x9e37_79b9_7f4a_7c15u64;
                let mut buf = vec![0u8; 65_535];
                while !state.stop.load(Ordering::Relaxed) {
                    let Ok((n, client)) = socket.recv_from(&mut buf) else { continue };
                    let back = match backs.get(&client) {
                        Some(back) => Arc::clone(back),
                        None => {
                            let Ok(back) = UdpSocket::bind(SocketAddr::new(back_ip, 0)) else { continue };
                            back.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
                            let back = Arc::new(back);
                            backs.insert(client, Arc::clone(&back));
                            let (state, reader, front) = (Arc::clone(&state), Arc::clone(&back), Arc::clone(&socket));
                            let handle = std::thread::spawn(move || {
                                let mut rng = 0x2545_f491_4f6c_dd1du64 ^ client.port() as u64;
                                let mut buf = vec![0u8; 65_535];
                                while !state.stop.load(Ordering::Relaxed) {
                                    let Ok((n, _)) = reader.recv_from(&mut buf) else { continue };
                                    pass(&state, TO_CLIENT, &front, client, &buf[..n], &mut rng);
                                }
                            });
                            threads.lock().unwrap().push(handle);
                            back
                        }
                    };
                    pass(&state, TO_TARGET, &back, target, &buf[..n], &mut rng);
                }
            })
        };
        bound_rx.recv().expect("relay thread").unwrap_or_else(|e| panic!("relay bind {front}: {e}"));
        threads.lock().unwrap().push(front_reader);
        // The delay line: sends each delayed datagram when it is due, in arrival order.
        {
            let state = Arc::clone(&state);
            let handle = std::thread::spawn(move || {
                let mut queue = state.delayed.lock().unwrap();
                while !state.stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    match queue.front() {
                        Some((due, ..)) if *due <= now => {
                            let (_, direction, socket, to, bytes) = queue.pop_front().expect("front");
                            drop(queue);
                            send(&state, direction, &socket, to, &bytes);
                            queue = state.delayed.lock().unwrap();
                        }
                        Some((due, ..)) => {
                            let wait = (*due - now).min(Duration::from_millis(50));
                            queue = state.wake.wait_timeout(queue, wait).unwrap().0;
                        }
                        None => queue = state.wake.wait_timeout(queue, Duration::from_millis(50)).unwrap().0,
                    }
                }
            });
            threads.lock().unwrap().push(handle);
        }
        Self { front, target, state, threads }
    }

    /// Sets the fault of both directions.
    pub fn set(&self, fault: Fault) {
        *self.state.faults.lock().unwrap() = [fault; 2];
    }

    /// Sets the fault of one direction ([`TO_TARGET`] or [`TO_CLIENT`]).
    pub fn set_direction(&self, direction: usize, fault: Fault) {
        self.state.faults.lock().unwrap()[direction] = fault;
    }

    /// (passed, dropped) in `direction` so far.
    pub fn counts(&self, direction: usize) -> (u64, u64) {
        let c = &self.state.counts[direction];
        (c.passed.load(Ordering::Relaxed), c.dropped.load(Ordering::Relaxed))
    }
}

/// One datagram read in `direction`: dropped, delayed or sent from `socket` to `to`.
fn pass(state: &State, direction: usize, socket: &Arc<UdpSocket>, to: SocketAddr, bytes: &[u8], rng: &mut u64) {
    let fault = state.faults.lock().unwrap()[direction];
    match fault {
        Fault::Blackhole => {
            state.counts[direction].dropped.fetch_add(1, Ordering::Relaxed);
        }
        Fault::Loss(p) if next_unit(rng) < p => {
            state.counts[direction].dropped.fetch_add(1, Ordering::Relaxed);
        }
        Fault::Delay(d) => {
            let entry = (Instant::now() + d, direction, Arc::clone(socket), to, bytes.to_vec());
            state.delayed.lock().unwrap().push_back(entry);
            state.wake.notify_all();
        }
        Fault::None | Fault::Loss(_) => send(state, direction, socket, to, bytes),
    }
}

fn send(state: &State, direction: usize, socket: &UdpSocket, to: SocketAddr, bytes: &[u8]) {
    if socket.send_to(bytes, to).is_ok() {
        state.counts[direction].passed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A uniform value in [0, 1) from a xorshift generator.
fn next_unit(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

impl Drop for Impairment {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        self.state.wake.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
        // Threads the front reader started while these were joined.
        for t in std::mem::take(&mut *self.threads.lock().unwrap()) {
            let _ = t.join();
        }
    }
}
