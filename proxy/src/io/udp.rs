//! UDP sockets for SIP: SO_REUSEPORT, one per loop and listen address, so the kernel
//! spreads datagrams over the loops; wildcard sockets learn each datagram's destination
//! (see `pktinfo`).

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

use super::pktinfo;

/// A UDP socket bound with SO_REUSEPORT (IPv6 sockets are IPv6-only, so `[::]` and
/// `0.0.0.0` are separate listeners). A wildcard socket reports each datagram's
/// destination address (see `pktinfo`).
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if addr.ip().is_unspecified() {
        pktinfo::enable(&socket, addr.is_ipv6())?;
    }
    socket.set_reuse_port(true)?;
    set_receive_buffer(&socket, RECEIVE_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Receive buffer asked for each UDP socket: room for bursts of registrations (a
/// power-cycled site re-registering at once) while a loop is busy.
pub const RECEIVE_BUFFER: usize = 4 << 20;

/// SO_RCVBUFFORCE where the process may (CAP_NET_ADMIN), else SO_RCVBUF, which the
/// kernel caps at net.core.rmem_max. A smaller buffer is not an error.
fn set_receive_buffer(socket: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let size = bytes as libc::c_int;
    // SAFETY: a valid fd and a c_int option value.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !forced && let Err(err) = socket.set_recv_buffer_size(bytes) {
        tracing::debug!(error = %err, "could not enlarge a UDP receive buffer");
    }
}
