//! Backend health, one probe thread per backend. SIP backends get an OPTIONS: any SIP
//! response within `[health] timeout` is a success; a timeout, an ICMP error or a refused
//! connection is a failure (never a locally generated 408). SCCP backends get a TCP
//! connection and a KeepAlive: a KeepAliveAck, or silence until the timeout on a
//! connection that stays open (a backup CUCM only TCP-acks an unregistered connection's
//! keepalives), is a success; a refused, reset or closed connection is a failure. `down_after`
//! failures in a row take an up backend down, `up_after` successes bring it back. State
//! changes reach the event loops over a crossbeam channel.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::Sender;

use crate::{
    config::{BackendProtocol, BackendTransport, HealthConfig},
    failover::{BackendId, BackendState, Routing},
};

/// A backend changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub backend: BackendId,
    pub state: BackendState,
}

/// Consecutive results and the thresholds that turn them into a state.
#[derive(Clone, Copy, Debug)]
pub struct Verdicts {
    down_after: u32,
    up_after: u32,
    up: bool,
    streak: u32,
}

impl Verdicts {
    pub fn new(config: &HealthConfig) -> Self {
        Self::starting(config, true)
    }

    /// Thresholds of `config`, starting from a backend known up or down (a restarted
    /// checker, after a reload, goes on from what the previous one found).
    pub fn starting(config: &HealthConfig, up: bool) -> Self {
        Self { down_after: config.down_after, up_after: config.up_after, up, streak: 0 }
    }

    /// Records one probe; returns the new state when it changes.
    pub fn record(&mut self, alive: bool) -> Option<BackendState> {
        if alive == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let threshold = if self.up { self.down_after } else { self.up_after };
        if self.streak < threshold {
            return None;
        }
        self.up = alive;
        self.streak = 0;
        Some(if alive { BackendState::Up } else { BackendState::Down })
    }
}

/// The probe threads, one per backend of the config (retired backends are not probed).
/// Dropping stops them (within one interval).
pub struct HealthChecker {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HealthChecker {
    pub fn start(
        routing: &Routing,
        config: &HealthConfig,
        events: Sender<HealthEvent>,
        wake: impl Fn() + Clone + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for id in routing.live_backends() {
            let backend = routing.backend(id);
            let probe = Probe {
                address: backend.address,
                protocol: backend.protocol,
                transport: backend.transport,
                timeout: config.timeout,
                sequence: 0,
            };
            let (stop, events, wake, interval) = (Arc::clone(&stop), events.clone(), wake.clone(), config.interval);
            let mut verdicts = Verdicts::starting(config, backend.health() == BackendState::Up);
            let name = backend.name.clone();
            threads.push(std::thread::Builder::new().name(format!("health-{name}")).spawn(move || {
                let mut probe = probe;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let alive = probe.run();
                    if let Some(state) = verdicts.record(alive) {
                        tracing::warn!(backend = %name, state = state.label(), "backend health changed");
                        if events.send(HealthEvent { backend: id, state }).is_err() {
                            return;
                        }
                        wake();
                    }
                    sleep_unless_stopped(&stop, interval.saturating_sub(started.elapsed()));
                }
            })?);
        }
        Ok(Self { stop, threads })
    }
}

fn sleep_unless_stopped(stop: &AtomicBool, mut left: Duration) {
    const STEP: Duration = Duration::from_millis(50);
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let step = left.min(STEP);
        std::thread::sleep(step);
        left -= step;
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct Probe {
    address: SocketAddr,
    protocol: BackendProtocol,
    transport: BackendTransport,
    timeout: Duration,
    sequence: u32,
}

impl Probe {
    /// One OPTIONS; true if a SIP response came back in time.
    fn run(&mut self) -> bool {
        self.sequence = self.sequence.wrapping_add(1);
        let result = match (self.protocol, self.transport) {
            (BackendProtocol::Sccp, _) => self.sccp_keepalive(),
            (BackendProtocol::Sip, BackendTransport::Udp) => self.over_udp(),
            (BackendProtocol::Sip, BackendTransport::Tcp) => self.over_tcp(),
        };
        result.unwrap_or(false)
    }

    fn request(&self, transport: &str, local: SocketAddr) -> String {
        let (seq, target) = (self.sequence, self.address);
        format!(
            "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK-hc{seq:08x};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:regedge@{local}>;tag=hc{seq:08x}\r\nTo: <sip:{target}>\r\n\
             Call-ID: health-{seq:08x}-{local}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn over_udp(&self) -> std::io::Result<bool> {
        let bind: SocketAddr =
            if self.address.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(self.address)?;
        socket.set_read_timeout(Some(self.timeout))?;
        socket.send(self.request("UDP", socket.local_addr()?).as_bytes())?;
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + self.timeout;
        while Instant::now() < deadline {
            let n = socket.recv(&mut buf)?;
            if buf[..n].starts_with(b"SIP/2.0 ") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// An SCCP KeepAlive on a fresh connection (see the module documentation).
    fn sccp_keepalive(&self) -> std::io::Result<bool> {
        use regedge_common::sccp::{HEADER_LEN, HEADER_VERSION_BASIC, id};
        let mut stream = TcpStream::connect_timeout(&self.address, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.write_all(&crate::sccp::session::empty_pdu(HEADER_VERSION_BASIC, id::KEEP_ALIVE))?;
        let mut header = [0u8; HEADER_LEN];
        match stream.read_exact(&mut header) {
            Ok(()) => Ok(u32::from_le_bytes([header[8], header[9], header[10], header[11]]) == id::KEEP_ALIVE_ACK),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn over_tcp(&self) -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&self.address, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.write_all(self.request("TCP", stream.local_addr()?).as_bytes())?;
        let mut buf = [0u8; 8];
        stream.read_exact(&mut buf)?;
        Ok(&buf == b"SIP/2.0 ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let config = HealthConfig {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            down_after: 2,
            up_after: 3,
        };
        let mut v = Verdicts::new(&config);
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(true), None, "a success resets the failure streak");
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), Some(BackendState::Down));
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(true), Some(BackendState::Up));
    }
}
