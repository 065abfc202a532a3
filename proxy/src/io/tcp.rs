//! SIP over TCP: listeners (one SO_REUSEPORT listener per loop and address, so the
//! kernel spreads accepts over the loops) and connections framed by
//! [`StreamDecoder`](crate::sip::framing::StreamDecoder), with bounded write buffers.

use std::{
    io::{self, Read, Write},
    net::SocketAddr,
};

use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    registry::ConnectionId,
    sip::framing::{FramingError, StreamDecoder, StreamLimits},
};

/// Bytes queued for a peer that does not read before the connection is closed.
pub const MAX_QUEUED: usize = 1 << 20;
/// How much is read per call.
const READ_CHUNK: usize = 16 * 1024;

/// A TCP listener with SO_REUSEPORT (IPv6-only for IPv6 addresses).
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Why a connection was closed, as counted in `regedge_sip_tcp_closed_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    PeerClosed,
    Framing(FramingError),
    /// The peer did not read what was queued for it.
    WriteOverflow,
    Io,
}

impl CloseReason {
    pub const LABELS: [&'static str; 7] = [
        "peer_closed",
        "missing_content_length",
        "bad_content_length",
        "message_too_large",
        "headers_too_large",
        "write_overflow",
        "io_error",
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::PeerClosed => "peer_closed",
            Self::Framing(err) => err.label(),
            Self::WriteOverflow => "write_overflow",
            Self::Io => "io_error",
        }
    }

    pub fn index(self) -> usize {
        Self::LABELS.iter().position(|l| *l == self.label()).expect("every label is listed")
    }
}

/// A SIP TCP connection: accepted from a phone, or opened to a backend.
pub struct Connection {
    pub stream: TcpStream,
    pub id: ConnectionId,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub decoder: StreamDecoder,
    queued: Vec<u8>,
    /// False while an outgoing connection is still being established.
    connected: bool,
}

impl Connection {
    /// An accepted connection.
    pub fn new(stream: TcpStream, id: ConnectionId, peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            stream,
            id,
            peer,
            local,
            decoder: StreamDecoder::new(StreamLimits::default()),
            queued: Vec::new(),
            connected: true,
        }
    }

    /// A connection being opened to `peer` (non-blocking connect); writes queue until
    /// it is established.
    pub fn connect(peer: SocketAddr, id: ConnectionId, local: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(peer)?;
        let mut connection = Self::new(stream, id, peer, local);
        connection.connected = false;
        Ok(connection)
    }

    /// On a writable event: whether an outgoing connection is now established (or
    /// failed, as an error).
    pub fn establish(&mut self) -> Result<(), CloseReason> {
        if self.connected {
            return Ok(());
        }
        if let Ok(Some(_)) | Err(_) = self.stream.take_error() {
            return Err(CloseReason::Io);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connected = true;
                if let Ok(local) = self.stream.local_addr() {
                    self.local = local;
                }
                Ok(())
            }
            Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(_) => Err(CloseReason::Io),
        }
    }

    /// Reads what is available into the decoder. `Ok(false)`: the peer closed.
    pub fn fill(&mut self) -> io::Result<bool> {
        loop {
            let buf = self.decoder.read_buf(READ_CHUNK);
            match self.stream.read(buf) {
                Ok(0) => return Ok(false),
                Ok(n) => self.decoder.commit(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Writes `bytes` now, queueing what the socket does not take.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), CloseReason> {
        if self.queued.is_empty() && self.connected {
            let written = write_some(&mut self.stream, bytes)?;
            self.queued.extend_from_slice(&bytes[written..]);
        } else {
            self.queued.extend_from_slice(bytes);
        }
        if self.queued.len() > MAX_QUEUED {
            return Err(CloseReason::WriteOverflow);
        }
        Ok(())
    }

    /// Writes queued bytes (on a writable event).
    pub fn flush(&mut self) -> Result<(), CloseReason> {
        if !self.connected {
            return Ok(());
        }
        let written = write_some(&mut self.stream, &self.queued)?;
        self.queued.drain(..written);
        Ok(())
    }

    pub fn wants_write(&self) -> bool {
        !self.queued.is_empty()
    }
}

/// Writes as much of `bytes` as the socket takes without blocking.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> Result<usize, CloseReason> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(CloseReason::PeerClosed),
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(CloseReason::Io),
        }
    }
    Ok(written)
}
