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
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
