//! A simulated SIP call server (a registrar) on UDP: REGISTER is answered 200 OK with the
//! Contact and its granted expiry (Expires 0 removes the binding), OPTIONS 200 OK (the
//! proxy's health probe), anything else 501. [`Registrar`] is the protocol, without I/O;
//! [`SipServer`] is its socket, which can be killed (a crash: the socket closes, the
//! bindings are lost) and started again.

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    netns::Place,
    sip_text::{self, SipText},
};

/// Longest registration the server grants.
const MAX_EXPIRES: u32 = 3600;

/// One binding: the contact, until when.
#[derive(Clone, Debug)]
struct Binding {
    until: Instant,
}

/// The registrar's state and answers.
#[derive(Debug)]
pub struct Registrar {
    /// A name for To tags.
    name: String,
    bindings: HashMap<String, Binding>,
    /// REGISTERs answered 200 (registrations and de-registrations).
    pub registers: u64,
    /// OPTIONS answered.
    pub options: u64,
}

impl Registrar {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), bindings: HashMap::new(), registers: 0, options: 0 }
    }

    /// The answer to one datagram, if it is a request.
    pub fn handle(&mut self, datagram: &[u8], now: Instant) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(datagram).ok()?;
        let msg = SipText::parse(text)?;
        let method = msg.method()?;
        let (status, extra) = match method {
            "REGISTER" => self.register(&msg, now),
            "OPTIONS" => {
                self.options += 1;
                (200, String::new())
            }
            "ACK" => return None,
            _ => (501, String::new()),
        };
        Some(self.response(&msg, status, &extra).into_bytes())
    }

    fn register(&mut self, msg: &SipText<'_>, now: Instant) -> (u16, String) {
        let Some(to) = msg.get("To") else { return (400, String::new()) };
        let aor = sip_text::aor(to).to_ascii_lowercase();
        let contact = msg.get("Contact");
        let requested = contact
            .and_then(|c| sip_text::param(c, "expires"))
            .and_then(|v| v.parse().ok())
            .or_else(|| msg.get("Expires").and_then(|v| v.parse().ok()))
            .unwrap_or(MAX_EXPIRES);
        self.registers += 1;
        match contact {
            Some(contact) if contact != "*" && requested > 0 => {
                let granted = requested.min(MAX_EXPIRES);
                self.bindings.insert(aor, Binding { until: now + Duration::from_secs(granted.into()) });
                (200, format!("Contact: {}\r\n", sip_text::with_expires(contact, granted)))
            }
            // Expires 0 (or Contact: *): the binding ends.
            _ => {
                self.bindings.remove(&aor);
                (200, String::new())
            }
        }
    }

    fn response(&self, msg: &SipText<'_>, status: u16, extra: &str) -> String {
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            _ => "Not Implemented",
        };
        let mut out = format!("SIP/2.0 {status} {reason}\r\n");
        for via in msg.all("Via") {
            out.push_str(&format!("Via: {via}\r\n"));
        }
        for name in ["From", "Call-ID", "CSeq"] {
            if let Some(value) = msg.get(name) {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        if let Some(to) = msg.get("To") {
            let tagged = sip_text::param(to, "tag").is_some();
            let tag = if tagged { String::new() } else { format!(";tag={}", self.name) };
            out.push_str(&format!("To: {to}{tag}\r\n"));
        }
        out.push_str(extra);
        out.push_str("Server: regedge-demo-callserver\r\nContent-Length: 0\r\n\r\n");
        out
    }

    /// Addresses of record with a binding that has not expired.
    pub fn registered(&mut self, now: Instant) -> usize {
        self.bindings.retain(|_, b| b.until > now);
        self.bindings.len()
    }

    /// A crash: every binding is lost.
    pub fn forget_all(&mut self) {
        self.bindings.clear();
    }
}

/// A [`Registrar`] on a UDP socket, served by one thread.
pub struct SipServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    place: Place,
    registrar: Arc<Mutex<Registrar>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SipServer {
    /// Binds `addr` in `place` and serves.
    pub fn start(name: &'static str, addr: SocketAddr, place: Place) -> io::Result<Self> {
        let mut server = Self {
            name,
            addr,
            place,
            registrar: Arc::new(Mutex::new(Registrar::new(name))),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> io::Result<()> {
        self.stop = Arc::new(AtomicBool::new(false));
        let (stop, registrar, addr) = (Arc::clone(&self.stop), Arc::clone(&self.registrar), self.addr);
        let (bound_tx, bound_rx) = mpsc::channel();
        let thread = self
            .place
            .spawn(&format!("sip-{}", self.name), move || {
                let socket = UdpSocket::bind(addr).and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(50)))?;
                    Ok(s)
                });
                let socket = match socket {
                    Ok(socket) => {
                        let _ = bound_tx.send(Ok(()));
                        socket
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                serve(&socket, &registrar, &stop);
            })
            .map_err(io::Error::other)?;
        self.thread = Some(thread);
        bound_rx.recv().unwrap_or_else(|_| Err(io::Error::other("server thread ended")))
    }

    /// Registrations it holds now.
    pub fn registered(&self) -> usize {
        self.registrar.lock().expect("registrar lock").registered(Instant::now())
    }

    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }

    /// A crash: the socket closes (the proxy's probes get ICMP port unreachable) and the
    /// bindings are gone.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.registrar.lock().expect("registrar lock").forget_all();
    }

    /// Serves again after [`Self::kill`].
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.launch()
    }
}

impl Drop for SipServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(socket: &UdpSocket, registrar: &Mutex<Registrar>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // An ICMP error for an earlier answer: nothing to do.
            Err(_) => continue,
        };
        let answer = registrar.lock().expect("registrar lock").handle(&buf[..n], Instant::now());
        if let Some(answer) = answer {
            let _ = socket.send_to(&answer, from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:demo.invalid SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-rg1\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK2\r\n\
        From: <sip:1001@demo.invalid>;tag=a\r\nTo: <sip:1001@demo.invalid>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\n\
        Contact: <sip:1001@10.0.0.2:5060>;+sip.instance=\"<urn:uuid:1>\"\r\nExpires: 120\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn registers_refreshes_and_unregisters() {
        let mut r = Registrar::new("sip-a");
        let now = Instant::now();
        let answer = String::from_utf8(r.handle(REGISTER.as_bytes(), now).unwrap()).unwrap();
        let msg = SipText::parse(&answer).unwrap();
        assert_eq!(msg.status(), Some(200));
        assert_eq!(msg.all("Via").count(), 2, "{answer}");
        assert_eq!(msg.expires(), Some(120));
        assert!(msg.get("To").unwrap().contains("tag=sip-a"));
        assert!(msg.get("Contact").unwrap().starts_with("<sip:1001@10.0.0.2:5060>;+sip.instance=\"<urn:uuid:1>\""));
        assert_eq!(r.registered(now), 1);
        assert_eq!(r.registered(now + Duration::from_secs(121)), 0, "expired");

        r.handle(REGISTER.as_bytes(), now).unwrap();
        let unregister = REGISTER.replace("Expires: 120", "Expires: 0");
        let answer = String::from_utf8(r.handle(unregister.as_bytes(), now).unwrap()).unwrap();
        assert!(answer.starts_with("SIP/2.0 200 OK\r\n") && !answer.contains("Contact:"), "{answer}");
        assert_eq!(r.registered(now), 0);

        let options = REGISTER.replace("REGISTER sip", "OPTIONS sip").replace("1 REGISTER", "1 OPTIONS");
        assert!(String::from_utf8(r.handle(options.as_bytes(), now).unwrap()).unwrap().starts_with("SIP/2.0 200 OK"));
        assert_eq!(r.handle(b"SIP/2.0 200 OK\r\n\r\n", now), None, "responses are not answered");
    }
}
