//! Simulated phones, one thread each: SIP over UDP (REGISTER, refresh at 40 % of the grant,
//! STUN keepalives), SIP over TCP (the same, CRLF ping keepalives, reconnect and
//! re-register when the connection drops), and SCCP (Register, KeepAlive at the
//! interval, reconnect and re-register when the connection drops). [`SipPhone`] is the
//! SIP protocol without I/O; the loops below own the sockets and the clock.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{netns::Place, sip_text::SipText};
use crate::sccp::{Message, Register, StreamDecoder};

/// How often a phone sends a keepalive (STUN, CRLF ping, SCCP KeepAlive).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(2);
/// A REGISTER unanswered this long is sent again (UDP), at most [`REGISTER_TRIES`] times.
const RETRANSMIT_AFTER: Duration = Duration::from_millis(700);
const REGISTER_TRIES: u32 = 4;
/// Wait before trying again after a failure (no answer, refused connection, reject).
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Longest 503 Retry-After a phone honours here (the demo is short).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3);
/// A poll turn: how long a read waits.
const TURN: Duration = Duration::from_millis(50);

/// The three kinds of phones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhoneKind {
    SipUdp,
    SipTcp,
    Sccp,
}

impl PhoneKind {
    pub const ALL: [Self; 3] = [Self::SipUdp, Self::SipTcp, Self::Sccp];

    pub fn label(self) -> &'static str {
        match self {
            Self::SipUdp => "SIP/UDP",
            Self::SipTcp => "SIP/TCP",
            Self::Sccp => "SCCP",
        }
    }
}

/// What one phone has seen.
#[derive(Clone, Debug, Default)]
pub struct PhoneStatus {
    /// Registered now (a 200 OK or RegisterAck that has not lapsed or been lost).
    pub registered: bool,
    /// Registrations answered with success (initial and refreshes).
    pub registrations: u64,
    pub keepalives_sent: u64,
    /// Keepalives answered (STUN response, CRLF pong, KeepAliveAck).
    pub keepalive_answers: u64,
    /// Failures: unanswered REGISTERs, errors, closed connections, 503s.
    pub failures: u64,
}

/// The SIP side of a phone: identity and the REGISTER it sends.
#[derive(Clone, Debug)]
pub struct SipPhone {
    pub user: String,
    /// 12 hex digits.
    pub mac: String,
    pub domain: String,
    pub call_id: String,
    pub tag: String,
    pub cseq: u32,
    pub transport: &'static str,
}

/// What a response to the phone's REGISTER means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterResult {
    /// 2xx: registered for this many seconds.
    Registered(u32),
    /// 503: try again after this long.
    RetryAfter(Duration),
    /// Any other final answer.
    Failed(u16),
    /// Provisional, or not an answer to the pending REGISTER.
    Ignore,
}

impl SipPhone {
    pub fn new(index: usize, kind: PhoneKind) -> Self {
        let (base, transport) = match kind {
            PhoneKind::SipTcp => (0x001b_5400_0100u64, "TCP"),
            _ => (0x001b_5400_0000, "UDP"),
        };
        let mac = format!("{:012X}", base + index as u64 + 1);
        let user = format!("{}", if transport == "TCP" { 2001 } else { 1001 } + index);
        Self {
            call_id: format!("demo-{mac}@regedge"),
            tag: format!("t{mac}"),
            user,
            mac,
            domain: "demo.regedge.invalid".to_owned(),
            cseq: 0,
            transport,
        }
    }

    /// The next REGISTER (a new CSeq) as sent from `local`.
    pub fn register(&mut self, local: SocketAddr) -> String {
        self.cseq += 1;
        let (user, domain, mac, transport) = (&self.user, &self.domain, &self.mac, self.transport);
        let branch = format!("z9hG4bK-{}-{}", self.mac, self.cseq);
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{local};transport={lower}>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-{mac}>\";\
             +u.sip!devicename.ccm.cisco.com=\"SEP{mac}\"\r\n\
             Expires: 3600\r\n\
             Supported: path,outbound\r\n\
             User-Agent: regedge-demo-phone\r\n\
             Content-Length: 0\r\n\r\n",
            tag = self.tag,
            call_id = self.call_id,
            cseq = self.cseq,
            lower = transport.to_ascii_lowercase(),
        )
    }

    /// What `response` says about the REGISTER with CSeq `pending`.
    pub fn on_response(&self, response: &SipText<'_>, pending: u32) -> RegisterResult {
        let Some(status) = response.status() else { return RegisterResult::Ignore };
        if response.cseq() != Some(pending) || status < 200 {
            return RegisterResult::Ignore;
        }
        match status {
            200..=299 => RegisterResult::Registered(response.expires().unwrap_or(super::config::PHONE_EXPIRES)),
            503 => RegisterResult::RetryAfter(
                response
                    .get("Retry-After")
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .map_or(RETRY_AFTER, |s: u64| Duration::from_secs(s).min(MAX_RETRY_AFTER)),
            ),
            other => RegisterResult::Failed(other),
        }
    }
}

/// When to refresh a registration granted for `seconds`: at 40 % of it, well before it
/// ends (a phone that misses one refresh is still registered at the next).
pub fn refresh_after(seconds: u32) -> Duration {
    Duration::from_millis(u64::from(seconds.max(2)) * 400)
}

/// A STUN Binding Request (RFC 5389) with a transaction id from `seed`.
pub fn stun_request(seed: u64) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..2].copy_from_slice(&0x0001u16.to_be_bytes());
    out[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    out[8..16].copy_from_slice(&seed.to_be_bytes());
    out
}

fn is_stun_success(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[..2] == [0x01, 0x01]
}

/// The fleet: every phone's thread and status.
pub struct Fleet {
    phones: Vec<(PhoneKind, Arc<Mutex<PhoneStatus>>)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Where the phones send to.
#[derive(Clone, Copy, Debug)]
pub struct Targets {
    pub sip: SocketAddr,
    pub sccp: SocketAddr,
    /// The phones' own address.
    pub local_ip: IpAddr,
}

impl Fleet {
    /// Starts `counts` phones of each kind (in [`PhoneKind::ALL`] order) in `place`, their
    /// first registrations spread over `spread`.
    pub fn start(place: &Place, targets: Targets, counts: [usize; 3], spread: Duration) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut fleet = Self { phones: Vec::new(), stop, threads: Vec::new() };
        let total = counts.iter().sum::<usize>().max(1) as u32;
        for (kind, count) in PhoneKind::ALL.into_iter().zip(counts) {
            for index in 0..count {
                let status = Arc::new(Mutex::new(PhoneStatus::default()));
                let delay = spread * fleet.phones.len() as u32 / total;
                let (stop, shared) = (Arc::clone(&fleet.stop), Arc::clone(&status));
                let thread = place
                    .spawn(&format!("phone-{}-{index}", kind.label()), move || {
                        sleep_unless(&stop, delay);
                        match kind {
                            PhoneKind::SipUdp => sip_udp_phone(index, targets, &shared, &stop),
                            PhoneKind::SipTcp => sip_tcp_phone(index, targets, &shared, &stop),
                            PhoneKind::Sccp => sccp_phone(index, targets, &shared, &stop),
                        }
                    })
                    .map_err(io::Error::other)?;
                fleet.threads.push(thread);
                fleet.phones.push((kind, status));
            }
        }
        Ok(fleet)
    }

    /// Registered phones and all phones of `kind`.
    pub fn registered(&self, kind: PhoneKind) -> (usize, usize) {
        let of_kind = self.phones.iter().filter(|(k, _)| *k == kind);
        let registered = of_kind.clone().filter(|(_, s)| s.lock().expect("phone lock").registered).count();
        (registered, of_kind.count())
    }

    /// The sum of every phone's counts.
    pub fn totals(&self) -> PhoneStatus {
        self.phones.iter().fold(PhoneStatus::default(), |mut sum, (_, status)| {
            let s = status.lock().expect("phone lock");
            sum.registrations += s.registrations;
            sum.keepalives_sent += s.keepalives_sent;
            sum.keepalive_answers += s.keepalive_answers;
            sum.failures += s.failures;
            sum
        })
    }

    /// Stops every phone (their sockets close) and joins the threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sleep_unless(stop: &AtomicBool, mut left: Duration) {
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let step = left.min(TURN);
        std::thread::sleep(step);
        left -= step;
    }
}

fn update(status: &Mutex<PhoneStatus>, f: impl FnOnce(&mut PhoneStatus)) {
    f(&mut status.lock().expect("phone lock"));
}

/// A socket of `kind` bound to `ip` (any port).
fn bound_socket(ip: IpAddr, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(SocketAddr::new(ip, 0)), kind, Some(protocol))?;
    socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    Ok(socket)
}

/// A TCP connection from `ip` to `to`.
fn connect_from(ip: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = bound_socket(ip, Type::STREAM, Protocol::TCP)?;
    socket.connect_timeout(&SockAddr::from(to), Duration::from_secs(1))?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(TURN))?;
    Ok(stream)
}

/// A REGISTER waiting for its answer.
struct Pending {
    cseq: u32,
    bytes: String,
    sent: Instant,
    tries: u32,
}

/// Applies a REGISTER result; returns when to register next.
fn registered_next(result: RegisterResult, status: &Mutex<PhoneStatus>, now: Instant) -> Instant {
    match result {
        RegisterResult::Registered(seconds) => {
            update(status, |s| {
                s.registered = true;
                s.registrations += 1;
            });
            now + refresh_after(seconds)
        }
        RegisterResult::RetryAfter(after) => {
            update(status, |s| s.failures += 1);
            now + after
        }
        RegisterResult::Failed(_) | RegisterResult::Ignore => {
            update(status, |s| {
                s.registered = false;
                s.failures += 1;
            });
            now + RETRY_AFTER
        }
    }
}

fn sip_udp_phone(index: usize, targets: Targets, status: &Mutex<PhoneStatus>, stop: &AtomicBool) {
    let mut phone = SipPhone::new(index, PhoneKind::SipUdp);
    let socket = match bound_socket(targets.local_ip, Type::DGRAM, Protocol::UDP).map(UdpSocket::from) {
        Ok(socket) => socket,
        Err(_) => return update(status, |s| s.failures += 1),
    };
    if socket.connect(targets.sip).and_then(|()| socket.set_read_timeout(Some(TURN))).is_err() {
        return update(status, |s| s.failures += 1);
    }
    let Ok(local) = socket.local_addr() else { return };
    let mut next_register = Instant::now();
    let mut next_keepalive = Instant::now() + KEEPALIVE_EVERY;
    let mut pending: Option<Pending> = None;
    let mut buf = vec![0u8; 8192];
    let mut stun_seq = (index as u64) << 32;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if pending.is_none() && now >= next_register {
            let bytes = phone.register(local);
            let _ = socket.send(bytes.as_bytes());
            pending = Some(Pending { cseq: phone.cseq, bytes, sent: now, tries: 1 });
        }
        if let Some(p) = pending.as_mut().filter(|p| now >= p.sent + RETRANSMIT_AFTER) {
            if p.tries < REGISTER_TRIES {
                let _ = socket.send(p.bytes.as_bytes());
                p.sent = now;
                p.tries += 1;
            } else {
                pending = None;
                next_register = registered_next(RegisterResult::Failed(408), status, now);
            }
        }
        if now >= next_keepalive {
            next_keepalive = now + KEEPALIVE_EVERY;
            stun_seq += 1;
            let _ = socket.send(&stun_request(stun_seq));
            update(status, |s| s.keepalives_sent += 1);
        }
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            // Timeouts, and ICMP errors while the proxy is not listening yet.
            Err(_) => continue,
        };
        let datagram = &buf[..n];
        if is_stun_success(datagram) {
            update(status, |s| s.keepalive_answers += 1);
            continue;
        }
        let Some(msg) = std::str::from_utf8(datagram).ok().and_then(SipText::parse) else { continue };
        if let Some(p) = &pending {
            let result = phone.on_response(&msg, p.cseq);
            if result != RegisterResult::Ignore {
                pending = None;
                next_register = registered_next(result, status, Instant::now());
            }
        }
    }
}

/// What a SIP TCP stream has delivered so far.
#[derive(Default)]
struct SipStream {
    buf: Vec<u8>,
}

impl SipStream {
    /// Takes CRLF pongs (counted) and complete messages out of the buffer.
    fn take(&mut self, pongs: &mut u64) -> Vec<String> {
        let mut messages = Vec::new();
        loop {
            if self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
                *pongs += 1;
                continue;
            }
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { break };
            let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
            let body = SipText::parse(&head)
                .and_then(|m| m.get("Content-Length").and_then(|v| v.parse::<usize>().ok()))
                .unwrap_or(0);
            if self.buf.len() < end + 4 + body {
                break;
            }
            self.buf.drain(..end + 4 + body);
            messages.push(head);
        }
        messages
    }
}

fn sip_tcp_phone(index: usize, targets: Targets, status: &Mutex<PhoneStatus>, stop: &AtomicBool) {
    let mut phone = SipPhone::new(index, PhoneKind::SipTcp);
    let mut buf = vec![0u8; 8192];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = connect_from(targets.local_ip, targets.sip) else {
            update(status, |s| s.failures += 1);
            sleep_unless(stop, RETRY_AFTER);
            continue;
        };
        let Ok(local) = stream.local_addr() else { continue };
        let mut next_register = Instant::now();
        let mut next_keepalive = Instant::now() + KEEPALIVE_EVERY;
        let mut pending: Option<Pending> = None;
        let mut incoming = SipStream::default();
        // One connection: until it breaks or the demo stops.
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let mut write = Vec::new();
            if pending.is_none() && now >= next_register {
                let bytes = phone.register(local);
                write.extend_from_slice(bytes.as_bytes());
                pending = Some(Pending { cseq: phone.cseq, bytes, sent: now, tries: 1 });
            }
            if pending.as_ref().is_some_and(|p| now >= p.sent + RETRANSMIT_AFTER * REGISTER_TRIES) {
                // TCP does not retransmit at this layer: no answer in time is a failure.
                pending = None;
                next_register = registered_next(RegisterResult::Failed(408), status, now);
            }
            if now >= next_keepalive {
                next_keepalive = now + KEEPALIVE_EVERY;
                write.extend_from_slice(b"\r\n\r\n");
                update(status, |s| s.keepalives_sent += 1);
            }
            if !write.is_empty() && stream.write_all(&write).is_err() {
                break;
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => incoming.buf.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            let mut pongs = 0;
            for text in incoming.take(&mut pongs) {
                let Some(msg) = SipText::parse(&text) else { continue };
                if let Some(p) = &pending {
                    let result = phone.on_response(&msg, p.cseq);
                    if result != RegisterResult::Ignore {
                        pending = None;
                        next_register = registered_next(result, status, Instant::now());
                    }
                }
            }
            update(status, |s| s.keepalive_answers += pongs);
        }
        // The connection is gone: so is the registration on it (a new one is made on
        // the next connection).
        update(status, |s| {
            s.registered = false;
            s.failures += 1;
        });
        sleep_unless(stop, RETRY_AFTER);
    }
}

fn sccp_phone(index: usize, targets: Targets, status: &Mutex<PhoneStatus>, stop: &AtomicBool) {
    use regedge_common::sccp::id;
    const VERSION: u32 = 0x11;
    let device = format!("SEP{:012X}", 0x001b_5400_0200u64 + index as u64 + 1);
    let station_ip = match targets.local_ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => [0; 4],
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = connect_from(targets.local_ip, targets.sccp) else {
            update(status, |s| s.failures += 1);
            sleep_unless(stop, RETRY_AFTER);
            continue;
        };
        let register = Message::Register(Register::new(&device, station_ip, 30_016)).to_bytes(VERSION);
        if stream.write_all(&register).is_err() {
            continue;
        }
        let sent = Instant::now();
        let mut registered = false;
        let mut next_keepalive = Instant::now() + KEEPALIVE_EVERY;
        let mut decoder = StreamDecoder::new();
        'connection: while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if !registered && now >= sent + Duration::from_secs(5) {
                break;
            }
            if registered && now >= next_keepalive {
                next_keepalive = now + KEEPALIVE_EVERY;
                if stream.write_all(&Message::KeepAlive.to_bytes(VERSION)).is_err() {
                    break;
                }
                update(status, |s| s.keepalives_sent += 1);
            }
            match stream.read(decoder.read_buf(4096)) {
                Ok(0) => break,
                Ok(n) => decoder.commit(n),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            loop {
                let message_id = match decoder.next_pdu() {
                    Ok(Some(pdu)) => pdu.message_id,
                    Ok(None) => break,
                    Err(_) => break 'connection,
                };
                match message_id {
                    id::REGISTER_ACK => {
                        registered = true;
                        next_keepalive = Instant::now() + KEEPALIVE_EVERY;
                        update(status, |s| {
                            s.registered = true;
                            s.registrations += 1;
                        });
                    }
                    id::REGISTER_REJECT => break 'connection,
                    id::KEEP_ALIVE_ACK => update(status, |s| s.keepalive_answers += 1),
                    _ => {}
                }
            }
        }
        drop(stream);
        update(status, |s| {
            s.registered = false;
            s.failures += 1;
        });
        sleep_unless(stop, RETRY_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_carries_the_cisco_identity_and_counts_cseq() {
        let mut phone = SipPhone::new(4, PhoneKind::SipTcp);
        let local: SocketAddr = "10.254.0.2:40000".parse().unwrap();
        let first = phone.register(local);
        let second = phone.register(local);
        let msg = SipText::parse(&second).unwrap();
        assert_eq!(msg.method(), Some("REGISTER"));
        assert_eq!(msg.cseq(), Some(2));
        assert!(first.contains("CSeq: 1 REGISTER"));
        let contact = msg.get("Contact").unwrap();
        assert!(contact.contains("+u.sip!devicename.ccm.cisco.com=\"SEP001B54000105\""), "{contact}");
        assert!(contact.starts_with("<sip:2005@10.254.0.2:40000;transport=tcp>"), "{contact}");
        assert!(msg.get("Via").unwrap().starts_with("SIP/2.0/TCP 10.254.0.2:40000;branch=z9hG4bK"));
    }

    #[test]
    fn responses_to_the_pending_register() {
        let phone = SipPhone::new(0, PhoneKind::SipUdp);
        let ok = "SIP/2.0 200 OK\r\nCSeq: 3 REGISTER\r\nContact: <sip:1001@h>;expires=9\r\n\r\n";
        let msg = SipText::parse(ok).unwrap();
        assert_eq!(phone.on_response(&msg, 3), RegisterResult::Registered(9));
        assert_eq!(phone.on_response(&msg, 4), RegisterResult::Ignore, "another CSeq");
        let busy =
            SipText::parse("SIP/2.0 503 Service Unavailable\r\nCSeq: 3 REGISTER\r\nRetry-After: 30\r\n\r\n").unwrap();
        assert_eq!(phone.on_response(&busy, 3), RegisterResult::RetryAfter(MAX_RETRY_AFTER));
        let trying = SipText::parse("SIP/2.0 100 Trying\r\nCSeq: 3 REGISTER\r\n\r\n").unwrap();
        assert_eq!(phone.on_response(&trying, 3), RegisterResult::Ignore);
        assert_eq!(refresh_after(10), Duration::from_secs(4));
    }

    #[test]
    fn tcp_stream_splits_pongs_and_messages() {
        let mut stream = SipStream::default();
        stream.buf.extend_from_slice(b"\r\nSIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n\r\nSIP/2.0");
        let mut pongs = 0;
        let messages = stream.take(&mut pongs);
        assert_eq!((messages.len(), pongs), (1, 2));
        assert_eq!(stream.buf, b"SIP/2.0");
        assert_eq!(stun_request(7)[4..8], 0x2112_A442u32.to_be_bytes());
    }
}
