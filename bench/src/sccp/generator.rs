//! The SCCP phone generator: a few threads in the phones' namespace, each owning an equal
//! share of the phones (one non-blocking TCP connection each) and one epoll. Each phone
//! registers (Register, wait for the RegisterAck), then, while the load is on, keeps one
//! lone KeepAlive outstanding: a 12-byte write of its own, the next as soon as the
//! KeepAliveAck arrives. Every loop is bounded by a deadline or the phase flag; threads
//! are joined on [`Fleet::stop`] or drop.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use regedge::sccp::{Message, Register, StreamDecoder};
use regedge_common::sccp::id;
use regedge_tests::{netns::NetNs, sccp_sim::device_name};

const HEADER_VERSION: u32 = 0x11;
const REGISTER: u8 = 0;
const LOAD: u8 = 1;
const STOP: u8 = 2;

struct Shared {
    phase: AtomicU8,
    /// 0: not counting; 1 + [`LIGHT`] or 1 + [`FULL`]: counting in that window.
    window: AtomicU8,
    /// Phones per thread that keep a KeepAlive outstanding.
    active: AtomicUsize,
    connected: AtomicUsize,
    registered: AtomicUsize,
    /// Threads done with registering (every phone answered, or their deadline passed).
    settled: AtomicUsize,
}

/// Which window the phones count in ([`Fleet::set_window`]).
pub const NO_WINDOW: u8 = 0;
/// One KeepAlive outstanding per generator thread: latency without queueing.
pub const LIGHT: usize = 0;
/// Every phone with one KeepAlive outstanding: throughput.
pub const FULL: usize = 1;

/// What the phones counted in one window.
pub struct Window {
    pub acks: u64,
    /// KeepAliveAck latency, nanoseconds.
    pub histogram: Histogram<u64>,
}

impl Window {
    fn new() -> Self {
        Self { acks: 0, histogram: new_histogram() }
    }

    pub fn percentile_us(&self, q: f64) -> f64 {
        if self.histogram.is_empty() { 0.0 } else { self.histogram.value_at_quantile(q) as f64 / 1000.0 }
    }
}

/// What the phones counted.
pub struct LoadResult {
    /// [`LIGHT`] and [`FULL`].
    pub windows: [Window; 2],
    pub sent: u64,
    /// Writes that failed or did not take the whole KeepAlive.
    pub errors: u64,
    /// Connections closed under a phone during the load.
    pub closed: u64,
}

impl LoadResult {
    fn new() -> Self {
        Self { windows: [Window::new(), Window::new()], sent: 0, errors: 0, closed: 0 }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

pub struct Fleet {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<LoadResult>>,
}

impl Fleet {
    /// Starts `count` phones in `ns` toward `edge`, split over `threads` threads; device
    /// names from `first_mac` on. They connect and register at once.
    pub fn start(ns: &NetNs, edge: SocketAddr, count: usize, threads: usize, first_mac: u64) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            phase: AtomicU8::new(REGISTER),
            window: AtomicU8::new(NO_WINDOW),
            active: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            registered: AtomicUsize::new(0),
            settled: AtomicUsize::new(0),
        });
        let mut handles = Vec::new();
        for t in 0..threads {
            let macs: Vec<u64> = (t..count).step_by(threads).map(|i| first_mac + i as u64).collect();
            let file = std::fs::File::open(format!("/run/netns/{}", ns.name)).context("open the phones' netns")?;
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("sccp-phones-{t}"))
                .spawn(move || {
                    // SAFETY: setns on a namespace fd for this thread only.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
                    drop(file);
                    phones(edge, &macs, &shared)
                })
                .context("spawn a generator thread")?;
            handles.push(handle);
        }
        Ok(Self { shared, threads: handles })
    }

    /// Waits until every thread is done registering (at most `timeout`); whether every
    /// phone connected and registered.
    pub fn wait_registered(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.shared.settled.load(Ordering::Relaxed) < self.threads.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.shared.settled.load(Ordering::Relaxed) == self.threads.len()
            && self.registered() == self.connected()
            && self.threads.iter().all(|t| !t.is_finished())
    }

    pub fn connected(&self) -> usize {
        self.shared.connected.load(Ordering::Relaxed)
    }

    pub fn registered(&self) -> usize {
        self.shared.registered.load(Ordering::Relaxed)
    }

    /// Starts (or changes) the load: `per_thread` phones of each thread keep one
    /// KeepAlive outstanding.
    pub fn load(&self, per_thread: usize) {
        self.shared.active.store(per_thread, Ordering::Relaxed);
        self.shared.phase.store(LOAD, Ordering::Relaxed);
    }

    /// Counts acks in window `w` ([`LIGHT`], [`FULL`]) from now on, or in none.
    pub fn set_window(&self, w: Option<usize>) {
        self.shared.window.store(w.map_or(NO_WINDOW, |w| 1 + w as u8), Ordering::Relaxed);
    }

    /// Stops the load, joins the threads (their connections close) and sums their counts.
    pub fn stop(mut self) -> LoadResult {
        self.shared.phase.store(STOP, Ordering::Relaxed);
        let mut total = LoadResult::new();
        for handle in self.threads.drain(..) {
            if let Ok(r) = handle.join() {
                for (t, w) in total.windows.iter_mut().zip(&r.windows) {
                    t.acks += w.acks;
                    let _ = t.histogram.add(&w.histogram);
                }
                total.sent += r.sent;
                total.errors += r.errors;
                total.closed += r.closed;
            }
        }
        total
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shared.phase.store(STOP, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

struct Phone {
    stream: TcpStream,
    decoder: StreamDecoder,
    registered: bool,
    open: bool,
    /// When the outstanding KeepAlive was written.
    sent_at: Option<Instant>,
}

/// An epoll instance, closed on drop.
struct Epoll(i32);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(Self(fd)) }
    }

    fn add(&self, fd: i32, key: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: key };
        // SAFETY: valid epoll fd and event.
        let rc = unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    fn delete(&self, fd: i32) {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: valid epoll fd and event.
        unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_DEL, fd, &mut event) };
    }

    /// Keys of the ready sockets into `keys`.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32, keys: &mut Vec<usize>) {
        keys.clear();
        // SAFETY: events is a valid buffer of its length.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        for e in events.iter().take(n.max(0) as usize) {
            keys.push(e.u64 as usize);
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

/// Reads what `phone` has and appends the message ids of its whole PDUs to `ids`; false
/// when the connection closed or broke.
fn receive(phone: &mut Phone, ids: &mut Vec<u32>) -> bool {
    let mut open = true;
    for _ in 0..16 {
        let buf = phone.decoder.read_buf(4096);
        match phone.stream.read(buf) {
            Ok(0) => {
                open = false;
                break;
            }
            Ok(n) => {
                phone.decoder.commit(n);
                if n < 4096 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                open = false;
                break;
            }
        }
    }
    loop {
        match phone.decoder.next_pdu() {
            Ok(Some(pdu)) => ids.push(pdu.message_id),
            Ok(None) => break,
            Err(_) => return false,
        }
    }
    open
}

fn phones(edge: SocketAddr, macs: &[u64], shared: &Shared) -> LoadResult {
    let mut result = LoadResult::new();
    let Ok(epoll) = Epoll::new() else {
        shared.settled.fetch_add(1, Ordering::Relaxed);
        return result;
    };
    let mut phones: Vec<Phone> = Vec::with_capacity(macs.len());
    for &mac in macs {
        if shared.phase.load(Ordering::Relaxed) == STOP {
            break;
        }
        let Ok(mut stream) = TcpStream::connect_timeout(&edge, Duration::from_secs(2)) else { continue };
        let _ = stream.set_nodelay(true);
        let register = Message::Register(Register::new(&device_name(mac), [10, 232, 0, 2], 30_016));
        if stream.write_all(&register.to_bytes(HEADER_VERSION)).is_err() || stream.set_nonblocking(true).is_err() {
            continue;
        }
        if epoll.add(stream.as_raw_fd(), phones.len() as u64).is_err() {
            continue;
        }
        shared.connected.fetch_add(1, Ordering::Relaxed);
        phones.push(Phone { stream, decoder: StreamDecoder::new(), registered: false, open: true, sent_at: None });
    }

    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut registered = 0;
    let mut answered = 0;
    while answered < phones.len() && Instant::now() < deadline && shared.phase.load(Ordering::Relaxed) != STOP {
        epoll.wait(&mut events, 50, &mut keys);
        for &k in &keys {
            let phone = &mut phones[k];
            ids.clear();
            let open = receive(phone, &mut ids);
            for &message in &ids {
                if message == id::REGISTER_ACK && !phone.registered {
                    phone.registered = true;
                    registered += 1;
                    answered += 1;
                    shared.registered.fetch_add(1, Ordering::Relaxed);
                } else if message == id::REGISTER_REJECT && phone.open && !phone.registered {
                    answered += 1;
                    phone.open = false;
                }
            }
            if !open && phone.open {
                phone.open = false;
                epoll.delete(phone.stream.as_raw_fd());
                if !phone.registered {
                    answered += 1;
                } else {
                    phone.registered = false;
                    registered -= 1;
                    shared.registered.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
    let _ = registered;
    shared.settled.fetch_add(1, Ordering::Relaxed);

    // Hold the sessions until the load starts (or the fleet stops), bounded.
    let hold_until = Instant::now() + Duration::from_secs(120);
    while shared.phase.load(Ordering::Relaxed) == REGISTER && Instant::now() < hold_until {
        std::thread::sleep(Duration::from_millis(1));
    }
    if shared.phase.load(Ordering::Relaxed) != LOAD {
        return result;
    }

    let keepalive = Message::KeepAlive.to_bytes(HEADER_VERSION);
    // The time is taken before the write: on a veth the write itself may carry the
    // KeepAlive through the edge's receive path, and the ack may be back when it returns.
    let send = |phone: &mut Phone, result: &mut LoadResult| {
        let at = Instant::now();
        match phone.stream.write(&keepalive) {
            Ok(n) if n == keepalive.len() => {
                phone.sent_at = Some(at);
                result.sent += 1;
            }
            _ => {
                result.errors += 1;
                phone.sent_at = None;
            }
        }
    };
    // Bounded: stops when the phase moves on, or after 10 minutes whatever happens.
    let load_deadline = Instant::now() + Duration::from_secs(600);
    let mut active = 0;
    while shared.phase.load(Ordering::Relaxed) == LOAD && Instant::now() < load_deadline {
        let now_active = shared.active.load(Ordering::Relaxed).min(phones.len());
        if now_active > active {
            for phone in phones[active..now_active].iter_mut().filter(|p| p.registered && p.open) {
                send(phone, &mut result);
            }
        }
        active = now_active;
        epoll.wait(&mut events, 10, &mut keys);
        let window = shared.window.load(Ordering::Relaxed);
        for &k in &keys {
            let phone = &mut phones[k];
            ids.clear();
            let open = receive(phone, &mut ids);
            let now = Instant::now();
            let mut acked = false;
            for &message in &ids {
                if message == id::KEEP_ALIVE_ACK
                    && let Some(sent_at) = phone.sent_at.take()
                {
                    acked = true;
                    if window != NO_WINDOW {
                        let w = &mut result.windows[usize::from(window - 1)];
                        w.acks += 1;
                        w.histogram.saturating_record(now.duration_since(sent_at).as_nanos() as u64);
                    }
                }
            }
            if !open {
                if phone.open {
                    phone.open = false;
                    result.closed += 1;
                    epoll.delete(phone.stream.as_raw_fd());
                }
                continue;
            }
            if acked && k < active {
                send(phone, &mut result);
            }
        }
    }
    result
}
