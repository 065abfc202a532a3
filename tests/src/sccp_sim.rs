//! SCCP (Skinny) simulators for the end-to-end tests and the benchmarks: a call server
//! (a CUCM stand-in) and a fleet of phones, both driven by one `poll(2)` loop on one
//! thread each, with non-blocking std sockets and regedge's own codec.
//!
//! - [`CallServer`] accepts connections, answers Register with RegisterAck (keepalive
//!   interval configurable) then CapabilitiesReq, KeepAlive with KeepAliveAck (also on a
//!   connection that never registered, as regedge's health probe sends), Unregister with
//!   UnregisterAck, OffHook and OnHook with a CallState, and counts what it holds.
//!   [`CallServer::kill`] closes the listener and every connection at once, like a
//!   crashed server; [`CallServer::restart`] listens again.
//! - [`PhoneFleet`] runs N phones, each its own TCP connection: Register, wait for
//!   RegisterAck, KeepAlive every interval (optionally coalesced with another message in
//!   one write), reconnect and register again when the connection closes; off-hook,
//!   digits and on-hook on demand. A phone in [`PhoneMode::Standby`] only sends
//!   KeepAlives (as to a backup call manager) and records any KeepAliveAck.
//!
//! Every loop is bounded: a poll timeout, a stop flag checked each turn, joined on drop.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use regedge::sccp::{Message, Register, RegisterAck, StreamDecoder};
use regedge_common::sccp::id;

use crate::netns::NetNs;

/// Message ids the simulators use besides the registration ones.
pub mod msg {
    pub const KEYPAD_BUTTON: u32 = 0x0003;
    pub const OFF_HOOK: u32 = 0x0006;
    pub const ON_HOOK: u32 = 0x0007;
    pub const CALL_STATE: u32 = 0x0111;
    /// CallState: off-hook / connected.
    pub const STATE_OFF_HOOK: u32 = 1;
    /// CallState: on-hook (the call is over).
    pub const STATE_ON_HOOK: u32 = 2;
}

const POLL_MS: i32 = 20;

/// Spawns a thread that joins `ns` (sockets it creates belong there) and runs `f`.
fn spawn_in(ns: &NetNs, name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let file = std::fs::File::open(format!("/run/netns/{}", ns.name)).expect("open netns");
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            // SAFETY: setns on a namespace fd for this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            drop(file);
            f();
        })
        .expect("spawn simulator thread")
}

/// `poll(2)` for readability (and writability where asked) of `fds`; the revents.
fn poll_fds(fds: &[(RawFd, bool)], timeout_ms: i32) -> Vec<i16> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, write)| libc::pollfd {
            fd,
            events: libc::POLLIN | if write { libc::POLLOUT } else { 0 },
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array of pollfd of the given length.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if rc <= 0 {
        return vec![0; fds.len()];
    }
    pfds.iter().map(|p| p.revents).collect()
}

/// One PDU copied out of a decoder, typed when the codec knows it.
#[derive(Clone, Debug)]
pub struct Received {
    pub header_version: u32,
    pub message_id: u32,
    pub payload: Vec<u8>,
}

impl Received {
    pub fn message(&self) -> Option<Message> {
        Message::decode(self.header_version, self.message_id, &self.payload).ok()
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        self.payload.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A non-blocking TCP connection with a Skinny decoder and an output queue.
struct Wire {
    stream: TcpStream,
    decoder: StreamDecoder,
    out: Vec<u8>,
}

impl Wire {
    fn new(stream: TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        Ok(Self { stream, decoder: StreamDecoder::new(), out: Vec::new() })
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Queues `bytes` and writes what the socket takes; `Err` when the connection broke.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(bytes);
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what is there and returns the whole PDUs; `Err` when the peer closed, the
    /// connection broke or the bytes are not Skinny (the PDUs before that are lost too,
    /// which the simulators do not need).
    fn receive(&mut self) -> io::Result<Vec<Received>> {
        let mut open = true;
        for _ in 0..64 {
            let buf = self.decoder.read_buf(16 * 1024);
            match self.stream.read(buf) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => self.decoder.commit(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    open = false;
                    break;
                }
            }
        }
        let mut got = Vec::new();
        loop {
            match self.decoder.next_pdu() {
                Ok(Some(pdu)) => got.push(Received {
                    header_version: pdu.header_version,
                    message_id: pdu.message_id,
                    payload: pdu.payload().to_vec(),
                }),
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
        if open || !got.is_empty() { Ok(got) } else { Err(io::ErrorKind::UnexpectedEof.into()) }
    }
}

/// A CallState payload: state, line 1, call reference.
pub fn call_state(state: u32, reference: u32) -> Message {
    let mut payload = state.to_le_bytes().to_vec();
    payload.extend_from_slice(&1u32.to_le_bytes());
    payload.extend_from_slice(&reference.to_le_bytes());
    Message::Other { message_id: msg::CALL_STATE, payload }
}

// ---------------------------------------------------------------------------------------
// Call server
// ---------------------------------------------------------------------------------------

/// How a [`CallServer`] answers.
#[derive(Clone, Debug)]
pub struct CallServerOpts {
    /// The RegisterAck's keepalive interval, seconds.
    pub keepalive_secs: u32,
    /// The RegisterAck's secondary keepalive interval, seconds.
    pub secondary_keepalive_secs: u32,
    /// Answer OffHook and OnHook with a CallState (as a call server does); without, the
    /// edge learns of the call from the phone's OffHook alone.
    pub call_states: bool,
}

impl Default for CallServerOpts {
    fn default() -> Self {
        Self { keepalive_secs: 30, secondary_keepalive_secs: 60, call_states: true }
    }
}

/// What a [`CallServer`] counted.
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    /// Devices registered on a connection that is still open.
    pub registered: HashSet<String>,
    /// Register messages answered.
    pub registrations: u64,
    /// KeepAlives answered (regedge's own and its health probes').
    pub keepalives: u64,
    pub unregisters: u64,
    pub off_hooks: u64,
    pub on_hooks: u64,
    /// KeypadButton messages seen.
    pub digits: u64,
    /// Other messages seen (neither registration, keepalive nor call control).
    pub others: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub open: usize,
}

/// A simulated call server on one address. Stopped (and joined) on drop.
pub struct CallServer {
    pub addr: SocketAddr,
    ns_file: String,
    opts: CallServerOpts,
    stats: Arc<Mutex<ServerStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct ServerConn {
    wire: Wire,
    device: Option<String>,
    /// Call reference of the call off-hook on this connection.
    call: Option<u32>,
}

impl CallServer {
    /// Listens on `addr` inside `ns` and serves until killed or dropped.
    ///
    /// # Panics
    /// If the address cannot be bound.
    pub fn start(ns: &NetNs, addr: SocketAddr, opts: CallServerOpts) -> Self {
        let mut server = Self {
            addr,
            ns_file: ns.name.clone(),
            opts,
            stats: Arc::new(Mutex::new(ServerStats::default())),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        server.launch(ns);
        server
    }

    fn launch(&mut self, ns: &NetNs) {
        assert_eq!(ns.name, self.ns_file, "restart in the namespace the server started in");
        let (addr, opts) = (self.addr, self.opts.clone());
        let listener = ns.run(|| TcpListener::bind(addr)).unwrap_or_else(|e| panic!("bind call server {addr}: {e}"));
        listener.set_nonblocking(true).expect("non-blocking listener");
        self.stop = Arc::new(AtomicBool::new(false));
        let (stop, stats) = (Arc::clone(&self.stop), Arc::clone(&self.stats));
        self.thread = Some(
            std::thread::Builder::new()
                .name(format!("cm-{addr}"))
                .spawn(move || serve(listener, opts, &stop, &stats))
                .expect("spawn call server"),
        );
    }

    /// A copy of the counts.
    pub fn stats(&self) -> ServerStats {
        self.stats.lock().unwrap().clone()
    }

    /// How many devices are registered on an open connection.
    pub fn registered_count(&self) -> usize {
        self.stats.lock().unwrap().registered.len()
    }

    /// Closes the listener and every connection at once (a crash); the counts stay,
    /// except `registered` and `open`, which drop to nothing.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut stats = self.stats.lock().unwrap();
        stats.registered.clear();
        stats.open = 0;
    }

    /// Listens again after [`Self::kill`].
    pub fn restart(&mut self, ns: &NetNs) {
        self.kill();
        self.launch(ns);
    }

    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for CallServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(listener: TcpListener, opts: CallServerOpts, stop: &AtomicBool, stats: &Mutex<ServerStats>) {
    let mut conns: HashMap<u64, ServerConn> = HashMap::new();
    let mut next_key = 0u64;
    let mut next_call = 1000u32;
    while !stop.load(Ordering::Relaxed) {
        let keys: Vec<u64> = conns.keys().copied().collect();
        let mut fds = vec![(listener.as_raw_fd(), false)];
        fds.extend(keys.iter().map(|k| (conns[k].wire.fd(), !conns[k].wire.out.is_empty())));
        let revents = poll_fds(&fds, POLL_MS);
        if revents[0] != 0 {
            for _ in 0..1024 {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let Ok(wire) = Wire::new(stream) else { continue };
                        conns.insert(next_key, ServerConn { wire, device: None, call: None });
                        next_key += 1;
                        let mut s = stats.lock().unwrap();
                        s.connections += 1;
                        s.open += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        for (key, revent) in keys.iter().zip(&revents[1..]) {
            if *revent == 0 {
                continue;
            }
            let conn = conns.get_mut(key).expect("listed");
            let mut alive = conn.wire.flush().is_ok();
            if alive && revent & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match conn.wire.receive() {
                    Ok(pdus) => {
                        for pdu in pdus {
                            if answer(conn, &pdu, &opts, &mut next_call, stats).is_err() {
                                alive = false;
                                break;
                            }
                        }
                    }
                    Err(_) => alive = false,
                }
            }
            if !alive {
                let conn = conns.remove(key).expect("listed");
                forget(stats, &conn);
            }
        }
    }
    // Killed: every socket closes here at once.
    for conn in conns.values() {
        let _ = conn.wire.stream.shutdown(Shutdown::Both);
    }
}

fn forget(stats: &Mutex<ServerStats>, conn: &ServerConn) {
    let mut s = stats.lock().unwrap();
    s.open = s.open.saturating_sub(1);
    if let Some(device) = &conn.device {
        s.registered.remove(device);
    }
}

fn answer(
    conn: &mut ServerConn,
    pdu: &Received,
    opts: &CallServerOpts,
    next_call: &mut u32,
    stats: &Mutex<ServerStats>,
) -> io::Result<()> {
    let v = pdu.header_version;
    let mut out = Vec::new();
    let mut s = stats.lock().unwrap();
    match pdu.message() {
        Some(Message::Register(register)) => {
            let device = register.device_name().to_owned();
            s.registrations += 1;
            s.registered.insert(device.clone());
            conn.device = Some(device);
            let ack = RegisterAck::new(opts.keepalive_secs, opts.secondary_keepalive_secs, 0x11);
            Message::RegisterAck(ack).encode(v, &mut out);
            Message::CapabilitiesReq.encode(v, &mut out);
        }
        Some(Message::KeepAlive) => {
            s.keepalives += 1;
            Message::KeepAliveAck.encode(v, &mut out);
        }
        Some(Message::Unregister { .. }) => {
            s.unregisters += 1;
            if let Some(device) = conn.device.take() {
                s.registered.remove(&device);
            }
            Message::UnregisterAck { status: 0 }.encode(v, &mut out);
        }
        _ => match pdu.message_id {
            msg::OFF_HOOK => {
                s.off_hooks += 1;
                let reference = *conn.call.get_or_insert_with(|| {
                    *next_call += 1;
                    *next_call
                });
                if opts.call_states {
                    call_state(msg::STATE_OFF_HOOK, reference).encode(v, &mut out);
                }
            }
            msg::ON_HOOK => {
                s.on_hooks += 1;
                if let Some(reference) = conn.call.take().filter(|_| opts.call_states) {
                    call_state(msg::STATE_ON_HOOK, reference).encode(v, &mut out);
                }
            }
            msg::KEYPAD_BUTTON => s.digits += 1,
            _ => s.others += 1,
        },
    }
    drop(s);
    if out.is_empty() { Ok(()) } else { conn.wire.send(&out) }
}

// ---------------------------------------------------------------------------------------
// Phones
// ---------------------------------------------------------------------------------------

/// What a simulated phone does on its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhoneMode {
    /// Register, then keepalives; register again after any close.
    Register,
    /// Only KeepAlives, never Register: a connection to a backup call manager.
    Standby,
}

/// How a [`PhoneFleet`] behaves.
#[derive(Clone, Debug)]
pub struct FleetOpts {
    pub count: usize,
    /// The first device's MAC as a number; device `i` is `SEP` + the 12 hex digits of
    /// `first_mac + i`.
    pub first_mac: u64,
    /// Header version of everything the phones send (0 basic, 0x0A..=0x16).
    pub header_version: u32,
    pub mode: PhoneMode,
    /// Time between two KeepAlives of one phone.
    pub keepalive_interval: Duration,
    /// Send every KeepAlive in one write with an IpPort message after it, so that it
    /// never arrives as a segment of its own (the kernel path cannot answer it).
    pub coalesce_keepalive: bool,
    /// Wait after a close (or a failed connect) before connecting again.
    pub reconnect_delay: Duration,
    /// A Register without a RegisterAck after this closes the connection (and the phone
    /// tries again).
    pub register_timeout: Duration,
    /// Connects per poll turn at start, so a big fleet does not connect in one burst.
    pub connects_per_turn: usize,
}

impl Default for FleetOpts {
    fn default() -> Self {
        Self {
            count: 1,
            first_mac: 0x0011_2233_0000,
            header_version: 0x11,
            mode: PhoneMode::Register,
            keepalive_interval: Duration::from_secs(1),
            coalesce_keepalive: false,
            reconnect_delay: Duration::from_millis(200),
            register_timeout: Duration::from_secs(5),
            connects_per_turn: 50,
        }
    }
}

/// `SEP` + 12 upper-case hex digits.
pub fn device_name(mac: u64) -> String {
    format!("SEP{:012X}", mac & 0xFFFF_FFFF_FFFF)
}

/// What one phone saw.
#[derive(Clone, Debug, Default)]
pub struct PhoneStats {
    pub device: String,
    /// Registered on its current connection (RegisterAck received).
    pub registered: bool,
    /// Connections opened (1 when it never lost one).
    pub connects: u32,
    /// Connections that closed under it.
    pub closes: u32,
    /// RegisterAcks received, with their times.
    pub register_acks: Vec<Instant>,
    pub register_rejects: u32,
    pub capabilities_reqs: u32,
    /// KeepAlives sent.
    pub keepalives_sent: u64,
    pub keepalive_acks: u64,
    /// CallState messages received: (state, call reference).
    pub call_states: Vec<(u32, u32)>,
    /// Bytes that were not Skinny from the edge.
    pub framing_errors: u32,
    /// When the connection last closed under it.
    pub last_close: Option<Instant>,
}

impl PhoneStats {
    /// RegisterAcks received at or after `t`.
    pub fn acks_since(&self, t: Instant) -> impl Iterator<Item = Instant> + '_ {
        self.register_acks.iter().copied().filter(move |a| *a >= t)
    }
}

enum Command {
    OffHook(usize),
    Digits(usize, String),
    OnHook(usize),
    Unregister(usize),
}

/// A fleet of simulated phones on one thread. Stopped (and joined) on drop; the phones'
/// connections close then.
pub struct PhoneFleet {
    stats: Arc<Mutex<Vec<PhoneStats>>>,
    commands: Arc<Mutex<Vec<Command>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PhoneState {
    /// Not connected; connect at this time.
    Idle(Instant),
    /// Register sent at this time.
    Registering(Instant),
    Registered,
    /// Standby: connected, keepalives only.
    Standby,
}

struct Phone {
    device: String,
    wire: Option<Wire>,
    state: PhoneState,
    next_keepalive: Instant,
}

impl PhoneFleet {
    /// Starts the fleet inside `ns`, every phone connecting to `edge`.
    pub fn start(ns: &NetNs, edge: SocketAddr, opts: FleetOpts) -> Self {
        let stats = Arc::new(Mutex::new(
            (0..opts.count)
                .map(|i| PhoneStats { device: device_name(opts.first_mac + i as u64), ..Default::default() })
                .collect::<Vec<_>>(),
        ));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stats, commands, stop) = (Arc::clone(&stats), Arc::clone(&commands), Arc::clone(&stop));
            spawn_in(ns, "phone-fleet", move || run_fleet(edge, &opts, &stats, &commands, &stop))
        };
        Self { stats, commands, stop, thread: Some(thread) }
    }

    /// A copy of every phone's counts.
    pub fn stats(&self) -> Vec<PhoneStats> {
        self.stats.lock().unwrap().clone()
    }

    pub fn phone(&self, i: usize) -> PhoneStats {
        self.stats.lock().unwrap()[i].clone()
    }

    /// Phones registered on their current connection.
    pub fn registered_count(&self) -> usize {
        self.stats.lock().unwrap().iter().filter(|p| p.registered).count()
    }

    pub fn off_hook(&self, phone: usize) {
        self.commands.lock().unwrap().push(Command::OffHook(phone));
    }

    /// KeypadButton messages, one per digit (0-9, `*` = 14, `#` = 15).
    pub fn digits(&self, phone: usize, digits: &str) {
        self.commands.lock().unwrap().push(Command::Digits(phone, digits.to_owned()));
    }

    pub fn on_hook(&self, phone: usize) {
        self.commands.lock().unwrap().push(Command::OnHook(phone));
    }

    pub fn unregister(&self, phone: usize) {
        self.commands.lock().unwrap().push(Command::Unregister(phone));
    }

    /// Polls `cond` on the stats every 50 ms until it holds or `timeout` passes; how
    /// long it took.
    pub fn wait_until(&self, timeout: Duration, cond: impl Fn(&[PhoneStats]) -> bool) -> Option<Duration> {
        let started = Instant::now();
        loop {
            if cond(&self.stats.lock().unwrap()) {
                return Some(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PhoneFleet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn keypad(digit: char) -> Option<u32> {
    match digit {
        '0'..='9' => digit.to_digit(10),
        '*' => Some(14),
        '#' => Some(15),
        _ => None,
    }
}

fn run_fleet(
    edge: SocketAddr,
    opts: &FleetOpts,
    stats: &Mutex<Vec<PhoneStats>>,
    commands: &Mutex<Vec<Command>>,
    stop: &AtomicBool,
) {
    let start = Instant::now();
    let mut phones: Vec<Phone> = (0..opts.count)
        .map(|i| Phone {
            device: device_name(opts.first_mac + i as u64),
            wire: None,
            state: PhoneState::Idle(start),
            next_keepalive: start,
        })
        .collect();
    let v = opts.header_version;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Connect the phones that are due, a bounded number per turn.
        let mut connects = 0;
        for (i, phone) in phones.iter_mut().enumerate() {
            if connects >= opts.connects_per_turn.max(1) {
                break;
            }
            let PhoneState::Idle(at) = phone.state else { continue };
            if at > now {
                continue;
            }
            connects += 1;
            let wire = TcpStream::connect_timeout(&edge, Duration::from_secs(1)).and_then(Wire::new);
            let mut s = stats.lock().unwrap();
            let Ok(mut wire) = wire else {
                phone.state = PhoneState::Idle(now + opts.reconnect_delay);
                continue;
            };
            s[i].connects += 1;
            drop(s);
            let sent = match opts.mode {
                PhoneMode::Register => {
                    let register = Register::new(&phone.device, [10, 0, 0, 1], 30_016);
                    phone.state = PhoneState::Registering(now);
                    wire.send(&Message::Register(register).to_bytes(v))
                }
                PhoneMode::Standby => {
                    phone.state = PhoneState::Standby;
                    phone.next_keepalive = now;
                    Ok(())
                }
            };
            phone.wire = Some(wire);
            if sent.is_err() {
                close_phone(phone, i, opts, stats, now);
            }
        }
        // Commands from the test.
        for command in std::mem::take(&mut *commands.lock().unwrap()) {
            let (i, bytes) = match command {
                Command::OffHook(i) => (i, Message::Other { message_id: msg::OFF_HOOK, payload: vec![] }.to_bytes(v)),
                Command::OnHook(i) => (i, Message::Other { message_id: msg::ON_HOOK, payload: vec![] }.to_bytes(v)),
                Command::Unregister(i) => (i, Message::Unregister { reason: Some(0) }.to_bytes(v)),
                Command::Digits(i, digits) => {
                    let mut out = Vec::new();
                    for button in digits.chars().filter_map(keypad) {
                        let mut payload = button.to_le_bytes().to_vec();
                        payload.extend_from_slice(&1u32.to_le_bytes());
                        payload.extend_from_slice(&0u32.to_le_bytes());
                        Message::Other { message_id: msg::KEYPAD_BUTTON, payload }.encode(v, &mut out);
                    }
                    (i, out)
                }
            };
            if let Some(wire) = phones.get_mut(i).and_then(|p| p.wire.as_mut())
                && wire.send(&bytes).is_err()
            {
                close_phone(&mut phones[i], i, opts, stats, now);
            }
        }
        // Keepalives and Register deadlines.
        for (i, phone) in phones.iter_mut().enumerate() {
            match phone.state {
                PhoneState::Registering(at) if now >= at + opts.register_timeout => {
                    close_phone(phone, i, opts, stats, now);
                }
                PhoneState::Registered | PhoneState::Standby if now >= phone.next_keepalive => {
                    phone.next_keepalive = now + opts.keepalive_interval;
                    let mut bytes = Message::KeepAlive.to_bytes(v);
                    if opts.coalesce_keepalive {
                        Message::IpPort { port: 0x4000 }.encode(v, &mut bytes);
                    }
                    let sent = phone.wire.as_mut().map_or(Ok(()), |w| w.send(&bytes));
                    stats.lock().unwrap()[i].keepalives_sent += 1;
                    if sent.is_err() {
                        close_phone(phone, i, opts, stats, now);
                    }
                }
                _ => {}
            }
        }
        // I/O.
        let connected: Vec<usize> = (0..phones.len()).filter(|&i| phones[i].wire.is_some()).collect();
        let fds: Vec<(RawFd, bool)> = connected
            .iter()
            .map(|&i| {
                let w = phones[i].wire.as_ref().expect("connected");
                (w.fd(), !w.out.is_empty())
            })
            .collect();
        let revents = if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(POLL_MS as u64));
            Vec::new()
        } else {
            poll_fds(&fds, POLL_MS)
        };
        let now = Instant::now();
        for (&i, revent) in connected.iter().zip(revents) {
            if revent == 0 {
                continue;
            }
            let phone = &mut phones[i];
            let wire = phone.wire.as_mut().expect("connected");
            let mut alive = wire.flush().is_ok();
            let mut received = Vec::new();
            if alive && revent & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match wire.receive() {
                    Ok(pdus) => received = pdus,
                    Err(e) => {
                        if e.kind() == io::ErrorKind::InvalidData {
                            stats.lock().unwrap()[i].framing_errors += 1;
                        }
                        alive = false;
                    }
                }
            }
            {
                let mut s = stats.lock().unwrap();
                let st = &mut s[i];
                for pdu in &received {
                    match pdu.message_id {
                        id::REGISTER_ACK => {
                            st.registered = true;
                            st.register_acks.push(now);
                            phone.state = PhoneState::Registered;
                            phone.next_keepalive = now + opts.keepalive_interval;
                        }
                        id::REGISTER_REJECT => {
                            st.register_rejects += 1;
                            alive = false;
                        }
                        id::CAPABILITIES_REQ => st.capabilities_reqs += 1,
                        id::KEEP_ALIVE_ACK => st.keepalive_acks += 1,
                        msg::CALL_STATE => {
                            if let (Some(state), Some(reference)) = (pdu.u32_at(0), pdu.u32_at(8)) {
                                st.call_states.push((state, reference));
                            }
                        }
                        _ => {}
                    }
                }
            }
            if !alive {
                close_phone(phone, i, opts, stats, now);
            }
        }
    }
}

fn close_phone(phone: &mut Phone, i: usize, opts: &FleetOpts, stats: &Mutex<Vec<PhoneStats>>, now: Instant) {
    if phone.wire.take().is_some() {
        let mut s = stats.lock().unwrap();
        s[i].registered = false;
        s[i].closes += 1;
        s[i].last_close = Some(now);
    }
    phone.state = PhoneState::Idle(now + opts.reconnect_delay);
}

// ---------------------------------------------------------------------------------------
// Raw connections, for hostile input
// ---------------------------------------------------------------------------------------

/// Connects to `addr` from inside `ns` (blocking socket, read timeout set).
pub fn connect_in(ns: &NetNs, addr: SocketAddr, read_timeout: Duration) -> io::Result<TcpStream> {
    let stream = ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    stream.set_read_timeout(Some(read_timeout))?;
    Ok(stream)
}

/// Reads until the peer closes (`Ok` with what arrived) or `timeout` passes (`Err`).
pub fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let _ = stream.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(got),
        }
    }
    Err(got)
}

/// Message ids of the whole PDUs in `bytes` (stops at the first that is not Skinny).
pub fn message_ids(bytes: &[u8]) -> Vec<u32> {
    let mut decoder = StreamDecoder::new();
    decoder.extend(bytes);
    let mut ids = Vec::new();
    while let Ok(Some(pdu)) = decoder.next_pdu() {
        ids.push(pdu.message_id);
    }
    ids
}
