//! A UDP path with faults, for fault tests: a relay inside a namespace that passes
//! datagrams between one client and one target, and can drop them all (a blackhole),
//! delay them (a slow peer) or drop a seeded fraction (loss). The kernels these tests run
//! on have no `sch_netem`, so `tc qdisc ... netem` is not available; the relay gives the
//! same faults, per direction and switchable while traffic flows.
//!
//! The client is whoever sent the last datagram to the relay's front address (regedge
//! talking to a backend, or sipp's single socket talking to regedge); the target sees
//! the relay's back socket as its peer and, with `rport`, answers there.

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
    client: Mutex<Option<SocketAddr>>,
    stop: AtomicBool,
    counts: [PathCounts; 2],
    /// Datagrams waiting out a delay: (due, direction, bytes).
    delayed: Mutex<VecDeque<(Instant, usize, Vec<u8>)>>,
    wake: Condvar,
}

/// Direction index: toward the target.
pub const TO_TARGET: usize = 0;
/// Direction index: back toward the client.
pub const TO_CLIENT: usize = 1;

/// The relay; dropping it stops its threads.
pub struct Impairment {
    pub front: SocketAddr,
    pub target: SocketAddr,
    state: Arc<State>,
    threads: Vec<JoinHandle<()>>,
}

impl Impairment {
    /// A relay in `ns` listening on `front` (UDP) and passing to `target` from `back_ip`
    /// (port chosen by the kernel), every datagram passed until [`set`](Self::set).
    pub fn start(ns: &NetNs, front: SocketAddr, back_ip: std::net::IpAddr, target: SocketAddr) -> Self {
        let (front_socket, back_socket) = ns.run(|| {
            let f = UdpSocket::bind(front).unwrap_or_else(|e| panic!("relay bind {front}: {e}"));
            let b = UdpSocket::bind(SocketAddr::new(back_ip, 0)).unwrap_or_else(|e| panic!("relay bind {back_ip}: {e}"));
            (f, b)
        });
        let state = Arc::new(State {
            faults: Mutex::new([Fault::None; 2]),
            client: Mutex::new(None),
            stop: AtomicBool::new(false),
            counts: Default::default(),
            delayed: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
        });
        let sockets = [Arc::new(back_socket), Arc::new(front_socket)]; // indexed by direction: the socket that sends
        for s in &sockets {
            s.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
        }
        let mut threads = Vec::new();
        // Readers: the front socket reads what goes to the target, the back socket what goes back.
        for direction in [TO_TARGET, TO_CLIENT] {
            let reader = Arc::clone(&sockets[1 - direction]);
            let writer = Arc::clone(&sockets[direction]);
            let state = Arc::clone(&state);
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ direction as u64;
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_535];
                while !state.stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = reader.recv_from(&mut buf) else { continue };
                    if direction == TO_TARGET {
                        *state.client.lock().unwrap() = Some(from);
                    }
                    let fault = state.faults.lock().unwrap()[direction];
                    let counts = &state.counts[direction];
                    match fault {
                        Fault::Blackhole => {
                            counts.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Fault::Loss(p) if next_unit(&mut rng) < p => {
                            counts.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Fault::Delay(d) => {
                            state.delayed.lock().unwrap().push_back((Instant::now() + d, direction, buf[..n].to_vec()));
                            state.wake.notify_all();
                        }
                        Fault::None | Fault::Loss(_) => {
                            send(&state, &writer, direction, target, &buf[..n]);
                        }
                    }
                }
            }));
        }
        // The delay line: sends each delayed datagram when it is due, in arrival order.
        {
            let state = Arc::clone(&state);
            threads.push(std::thread::spawn(move || {
                let mut queue = state.delayed.lock().unwrap();
                while !state.stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    match queue.front() {
                        Some((due, _, _)) if *due <= now => {
                            let (_, direction, bytes) = queue.pop_front().expect("front");
                            drop(queue);
                            send(&state, &sockets[direction], direction, target, &bytes);
                            queue = state.delayed.lock().unwrap();
                        }
                        Some((due, _, _)) => {
                            let wait = (*due - now).min(Duration::from_millis(50));
                            queue = state.wake.wait_timeout(queue, wait).unwrap().0;
                        }
                        None => queue = state.wake.wait_timeout(queue, Duration::from_millis(50)).unwrap().0,
                    }
                }
            }));
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

fn send(state: &State, socket: &UdpSocket, direction: usize, target: SocketAddr, bytes: &[u8]) {
    let to = if direction == TO_TARGET { Some(target) } else { *state.client.lock().unwrap() };
    if let Some(to) = to
        && socket.send_to(bytes, to).is_ok()
    {
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
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
