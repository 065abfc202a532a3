//! Replies from the address the request was sent to, on wildcard sockets.
//!
//! A socket bound to `0.0.0.0` or `[::]` learns each datagram's destination address from
//! IP_PKTINFO / IPV6_PKTINFO and sends the reply with that address as its source, as
//! the XDP program does by swapping addresses. Otherwise a multi-homed host would answer
//! a phone from whichever address routing picks, which NAT and firewalls drop.
//! Buffers live on the stack: nothing is allocated per datagram.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
};

use socket2::{SockAddr, Socket};

/// Asks the kernel to report each datagram's destination address.
pub fn enable(socket: &Socket, ipv6: bool) -> io::Result<()> {
    let (level, name) =
        if ipv6 { (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO) } else { (libc::IPPROTO_IP, libc::IP_PKTINFO) };
    let on: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Room for one IPv6 packet-info control message (the larger of the two).
#[repr(C, align(8))]
struct ControlBuffer([u8; 64]);

/// Receives a datagram: (length, sender, the local address it was sent to).
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    // SAFETY: all-zero is a valid value for these C structs.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = ControlBuffer([0; 64]);
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    // SAFETY: every pointer in `msg` refers to live buffers of the stated sizes.
    let len = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `storage` with `msg_namelen` bytes of a socket address.
    let peer = unsafe { SockAddr::new(storage, msg.msg_namelen) }
        .as_socket()
        .ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
    Ok((len as usize, peer, local_address(&msg)))
}

fn local_address(msg: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: walking the control messages the kernel wrote into `msg`'s buffer.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = (data as *const libc::in_pktinfo).read_unaligned();
                    return Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)).into());
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = (data as *const libc::in6_pktinfo).read_unaligned();
                    return Some(Ipv6Addr::from(info.ipi6_addr.s6_addr).into());
                }
                _ => cmsg = libc::CMSG_NXTHDR(msg, cmsg),
            }
        }
    }
    None
}

/// Sends `data` to `peer` from `local`.
pub fn send_from(fd: RawFd, data: &[u8], peer: SocketAddr, local: IpAddr) -> io::Result<()> {
    let peer = SockAddr::from(peer);
    let mut control = ControlBuffer([0; 64]);
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = peer.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = peer.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_* compute sizes and positions inside `control`, which is large enough
    // for one in6_pktinfo; the data written matches the declared level and type.
    unsafe {
        let (level, kind, data_len) = match local {
            IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>()),
            IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>()),
        };
        msg.msg_controllen = libc::CMSG_SPACE(data_len as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as usize;
        let data = libc::CMSG_DATA(cmsg);
        match local {
            IpAddr::V4(v4) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr { s_addr: u32::from(v4).to_be() },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                (data as *mut libc::in_pktinfo).write_unaligned(info);
            }
            IpAddr::V6(v6) => {
                let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: v6.octets() }, ipi6_ifindex: 0 };
                (data as *mut libc::in6_pktinfo).write_unaligned(info);
            }
        }
        if libc::sendmsg(fd, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
