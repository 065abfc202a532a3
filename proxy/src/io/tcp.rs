//! TCP for SIP and SCCP: listeners (one SO_REUSEPORT listener per loop and address, so
//! the kernel spreads accepts over the loops) and connections whose received bytes go
//! straight into a protocol's stream decoder (SIP's
//! [`StreamDecoder`](crate::sip::framing::StreamDecoder) by default), with bounded write
//! buffers.

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

/// A protocol decoder that received bytes are read into.
pub trait ReadInto {
    /// Room of at least `min` bytes to read into.
    fn read_buf(&mut self, min: usize) -> &mut [u8];
    /// The first `n` bytes of that room were received.
    fn commit(&mut self, n: usize);
}

impl ReadInto for StreamDecoder {
    fn read_buf(&mut self, min: usize) -> &mut [u8] {
        StreamDecoder::read_buf(self, min)
    }
    fn commit(&mut self, n: usize) {
        StreamDecoder::commit(self, n)
    }
}

impl ReadInto for crate::sccp::framing::StreamDecoder {
    fn read_buf(&mut self, min: usize) -> &mut [u8] {
        crate::sccp::framing::StreamDecoder::read_buf(self, min)
    }
    fn commit(&mut self, n: usize) {
        crate::sccp::framing::StreamDecoder::commit(self, n)
    }
}

/// A TCP connection: accepted from a phone, or opened to a backend.
pub struct Connection<D = StreamDecoder> {
    pub stream: TcpStream,
    pub id: ConnectionId,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub decoder: D,
    queued: Vec<u8>,
    /// False while an outgoing connection is still being established.
    connected: bool,
}

impl Connection {
    /// An accepted SIP connection.
    pub fn new(stream: TcpStream, id: ConnectionId, peer: SocketAddr, local: SocketAddr) -> Self {
        Self::with_decoder(stream, id, peer, local, StreamDecoder::new(StreamLimits::default()))
    }

    /// A SIP connection being opened to `peer` (see [`Connection::connect_with`]).
    pub fn connect(peer: SocketAddr, id: ConnectionId, local: SocketAddr) -> io::Result<Self> {
        Self::connect_with(peer, id, local, StreamDecoder::new(StreamLimits::default()))
    }
}

impl<D: ReadInto> Connection<D> {
    /// An accepted connection read into `decoder`.
    pub fn with_decoder(stream: TcpStream, id: ConnectionId, peer: SocketAddr, local: SocketAddr, decoder: D) -> Self {
        Self { stream, id, peer, local, decoder, queued: Vec::new(), connected: true }
    }

    /// A connection being opened to `peer` (non-blocking connect); writes queue until
    /// it is established.
    pub fn connect_with(peer: SocketAddr, id: ConnectionId, local: SocketAddr, decoder: D) -> io::Result<Self> {
        let stream = TcpStream::connect(peer)?;
        let mut connection = Self::with_decoder(stream, id, peer, local, decoder);
        connection.connected = false;
        Ok(connection)
    }

    /// Whether an outgoing connection is established.
    pub fn is_connected(&self) -> bool {
        self.connected
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

    /// Reads at most about `max` bytes into the decoder: `(bytes read, still open)`. Fewer
    /// than `max` means the socket is drained (edge-triggered readiness is consumed).
    pub fn fill_some(&mut self, max: usize) -> io::Result<(usize, bool)> {
        let mut read = 0;
        while read < max {
            let buf = self.decoder.read_buf(READ_CHUNK.min(max - read));
            let want = buf.len().min(max - read);
            match self.stream.read(&mut buf[..want]) {
                Ok(0) => return Ok((read, false)),
                Ok(n) => {
                    self.decoder.commit(n);
                    read += n;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok((read, true)),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok((read, true))
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

    /// Bytes queued for the peer.
    pub fn queued_len(&self) -> usize {
        self.queued.len()
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
