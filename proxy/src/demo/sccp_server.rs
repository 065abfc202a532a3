//! A simulated SCCP (Skinny) call server: Register is answered with RegisterAck (its
//! keepalive interval) and CapabilitiesReq, KeepAlive with KeepAliveAck (also on a
//! connection that never registered: the proxy's health probe), Unregister with
//! UnregisterAck; other messages are taken in silence. [`Station`] is the protocol of one
//! connection, without I/O, using the proxy's own codec; [`SccpServer`] listens and serves
//! each connection on a thread, and can be killed (a crash: the listener and every
//! connection close at once) and started again.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use super::netns::Place;
use crate::sccp::{Message, RegisterAck, StreamDecoder};

/// One connection's state: the device registered on it, if any.
#[derive(Debug, Default)]
pub struct Station {
    pub device: Option<String>,
}

impl Station {
    /// The bytes answering one message.
    pub fn answer(&mut self, header_version: u32, message: &Message, keepalive_secs: u32) -> Vec<u8> {
        let mut out = Vec::new();
        match message {
            Message::Register(register) => {
                self.device = Some(register.device_name().to_owned());
                Message::RegisterAck(RegisterAck::new(keepalive_secs, keepalive_secs * 2, 0x11))
                    .encode(header_version, &mut out);
                Message::CapabilitiesReq.encode(header_version, &mut out);
            }
            Message::KeepAlive => Message::KeepAliveAck.encode(header_version, &mut out),
            Message::Unregister { .. } => {
                self.device = None;
                Message::UnregisterAck { status: 0 }.encode(header_version, &mut out);
            }
            _ => {}
        }
        out
    }
}

/// The live connections of a server: a handle to close each, and its device.
type Connections = Mutex<HashMap<u64, (TcpStream, Option<String>)>>;

/// A simulated call server on one TCP address.
pub struct SccpServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    place: Place,
    keepalive_secs: u32,
    connections: Arc<Connections>,
    registers: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SccpServer {
    /// Listens on `addr` in `place` and serves.
    pub fn start(name: &'static str, addr: SocketAddr, place: Place, keepalive_secs: u32) -> io::Result<Self> {
        let mut server = Self {
            name,
            addr,
            place,
            keepalive_secs,
            connections: Arc::default(),
            registers: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> io::Result<()> {
        self.stop = Arc::new(AtomicBool::new(false));
        let (stop, connections, registers) =
            (Arc::clone(&self.stop), Arc::clone(&self.connections), Arc::clone(&self.registers));
        let (addr, keepalive_secs, name) = (self.addr, self.keepalive_secs, self.name);
        let (bound_tx, bound_rx) = mpsc::channel();
        let thread = self
            .place
            .spawn(&format!("sccp-{name}"), move || {
                let listener = TcpListener::bind(addr).and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(l)
                });
                match listener {
                    Ok(listener) => {
                        let _ = bound_tx.send(Ok(()));
                        accept_loop(&listener, keepalive_secs, &connections, &registers, &stop);
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                    }
                }
            })
            .map_err(io::Error::other)?;
        self.thread = Some(thread);
        bound_rx.recv().unwrap_or_else(|_| Err(io::Error::other("server thread ended")))
    }

    /// Devices registered on an open connection.
    pub fn registered(&self) -> usize {
        self.connections.lock().expect("connections lock").values().filter(|(_, device)| device.is_some()).count()
    }

    /// Register messages answered since start.
    pub fn registers(&self) -> u64 {
        self.registers.load(Ordering::Relaxed)
    }

    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }

    /// A crash: the listener and every connection close at once.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (stream, _) in self.connections.lock().expect("connections lock").values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.connections.lock().expect("connections lock").clear();
    }

    /// Listens again after [`Self::kill`].
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.launch()
    }
}

impl Drop for SccpServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Accepts until stopped; each connection gets a thread, all joined before returning.
fn accept_loop(
    listener: &TcpListener,
    keepalive_secs: u32,
    connections: &Arc<Connections>,
    registers: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let id = next_id;
                next_id += 1;
                let Ok(handle) = stream.try_clone() else { continue };
                connections.lock().expect("connections lock").insert(id, (handle, None));
                let (shared, registers, stop) = (Arc::clone(connections), Arc::clone(registers), Arc::clone(stop));
                let spawned = std::thread::Builder::new().name(format!("sccp-conn-{id}")).spawn(move || {
                    serve(stream, id, keepalive_secs, &shared, &registers, &stop);
                    shared.lock().expect("connections lock").remove(&id);
                });
                match spawned {
                    Ok(thread) => threads.push(thread),
                    Err(_) => {
                        connections.lock().expect("connections lock").remove(&id);
                    }
                }
                threads.retain(|t| !t.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
}

fn serve(
    mut stream: TcpStream,
    id: u64,
    keepalive_secs: u32,
    connections: &Connections,
    registers: &AtomicU64,
    stop: &AtomicBool,
) {
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(Duration::from_millis(100))).is_err() {
        return;
    }
    let mut decoder = StreamDecoder::new();
    let mut station = Station::default();
    while !stop.load(Ordering::Relaxed) {
        match stream.read(decoder.read_buf(4096)) {
            Ok(0) => return,
            Ok(n) => decoder.commit(n),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        let mut out = Vec::new();
        loop {
            let pdu = match decoder.next_pdu() {
                Ok(Some(pdu)) => pdu,
                Ok(None) => break,
                // Not Skinny: a real server hangs up.
                Err(_) => return,
            };
            let Ok(message) = Message::decode(pdu.header_version, pdu.message_id, pdu.payload()) else { continue };
            if matches!(message, Message::Register(_)) {
                registers.fetch_add(1, Ordering::Relaxed);
            }
            out.extend(station.answer(pdu.header_version, &message, keepalive_secs));
        }
        if let Some((_, device)) = connections.lock().expect("connections lock").get_mut(&id) {
            device.clone_from(&station.device);
        }
        if !out.is_empty() && stream.write_all(&out).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sccp::Register;
    use regedge_common::sccp::id;

    fn ids(bytes: &[u8]) -> Vec<u32> {
        let mut decoder = StreamDecoder::new();
        decoder.extend(bytes);
        std::iter::from_fn(|| decoder.next_pdu().ok().flatten().map(|p| p.message_id)).collect()
    }

    #[test]
    fn answers_register_keepalive_and_unregister() {
        let mut station = Station::default();
        let register = Message::Register(Register::new("SEP001B54000201", [10, 0, 0, 1], 30_016));
        assert_eq!(ids(&station.answer(0x11, &register, 5)), [id::REGISTER_ACK, id::CAPABILITIES_REQ]);
        assert_eq!(station.device.as_deref(), Some("SEP001B54000201"));
        assert_eq!(ids(&station.answer(0x11, &Message::KeepAlive, 5)), [id::KEEP_ALIVE_ACK]);
        assert_eq!(ids(&station.answer(0x11, &Message::Unregister { reason: Some(0) }, 5)), [id::UNREGISTER_ACK]);
        assert_eq!(station.device, None);
        assert!(station.answer(0x11, &Message::IpPort { port: 1 }, 5).is_empty());
    }
}
