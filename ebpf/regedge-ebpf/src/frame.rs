//! Ethernet / IPv4 / IPv6 / UDP: parsing the request and rewriting it into the reply.

use aya_ebpf::{
    helpers::generated::{
        bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use regedge_common::{
    PassReason,
    maps::{FAMILY_IPV4, FAMILY_IPV6},
};

use crate::{
    csum,
    maps::{BUF_MASK, Scratch},
};

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;
const IPV4_PAYLOAD_OFF: usize = ETH_LEN + IPV4_LEN + UDP_LEN;
const IPV6_PAYLOAD_OFF: usize = ETH_LEN + IPV6_LEN + UDP_LEN;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ether_type: [u8; 2],
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

#[repr(C)]
struct UdpHdr {
    sport: [u8; 2],
    dport: [u8; 2],
    len: [u8; 2],
    check: [u8; 2],
}

/// A UDP datagram to answer: everything the reply needs, saved before the frame is
/// resized (resizing invalidates packet pointers).
pub struct Udp {
    pub family: u16,
    pub payload_len: usize,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    /// IPv4 addresses use the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Ports in network byte order.
    pub sport: u16,
    pub dport: u16,
    pub ipv4_id: [u8; 2],
}

impl Udp {
    /// Where the UDP payload starts in the frame.
    #[inline(always)]
    pub fn payload_off(&self) -> usize {
        if self.family == FAMILY_IPV4 { IPV4_PAYLOAD_OFF } else { IPV6_PAYLOAD_OFF }
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn buff_len(ctx: &XdpContext) -> usize {
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) as usize }
}

/// Parses Ethernet → IPv4 (no options, not a fragment) or IPv6 (UDP as the first next
/// header) → UDP with consistent lengths.
#[inline(always)]
pub fn parse_udp(ctx: &XdpContext) -> Result<Udp, PassReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(PassReason::Truncated)?;
    let ether_type = u16::from_be_bytes(unsafe { (*eth).ether_type });
    let mut out = Udp {
        family: 0,
        payload_len: 0,
        eth_src: unsafe { (*eth).src },
        eth_dst: unsafe { (*eth).dst },
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        ipv4_id: [0; 2],
    };
    let frame_len = buff_len(ctx);
    let udp: *const UdpHdr;
    let ip_payload_len: usize;
    if ether_type == ETH_P_IPV4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok_or(PassReason::Truncated)?;
        let (version_ihl, protocol, frag) =
            unsafe { ((*ip).version_ihl, (*ip).protocol, u16::from_be_bytes((*ip).frag)) };
        if version_ihl >> 4 != 4 {
            return Err(PassReason::NotIp);
        }
        if version_ihl & 0x0f != 5 {
            return Err(PassReason::IpOptions);
        }
        if protocol != IPPROTO_UDP {
            return Err(PassReason::NotUdp);
        }
        if frag & 0x3fff != 0 {
            return Err(PassReason::IpFragment);
        }
        let total_len = u16::from_be_bytes(unsafe { (*ip).total_len }) as usize;
        if total_len < IPV4_LEN + UDP_LEN || ETH_LEN + total_len > frame_len {
            return Err(PassReason::Truncated);
        }
        ip_payload_len = total_len - IPV4_LEN;
        out.family = FAMILY_IPV4;
        unsafe {
            out.saddr[..4].copy_from_slice(&*&raw const (*ip).saddr);
            out.daddr[..4].copy_from_slice(&*&raw const (*ip).daddr);
            out.ipv4_id = (*ip).id;
        }
        udp = ptr_at(ctx, ETH_LEN + IPV4_LEN).ok_or(PassReason::Truncated)?;
    } else if ether_type == ETH_P_IPV6 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN).ok_or(PassReason::Truncated)?;
        if unsafe { (*ip).version_class_flow[0] } >> 4 != 6 {
            return Err(PassReason::NotIp);
        }
        match unsafe { (*ip).next_header } {
            IPPROTO_UDP => {}
            // Fragment header.
            44 => return Err(PassReason::IpFragment),
            // Hop-by-hop, routing, destination options, AH, ESP, mobility, HIP, shim6, tests.
            0 | 43 | 60 | 51 | 50 | 135 | 139 | 140 | 253 | 254 => {
                return Err(PassReason::IpOptions);
            }
            _ => return Err(PassReason::NotUdp),
        }
        ip_payload_len = u16::from_be_bytes(unsafe { (*ip).payload_len }) as usize;
        if ip_payload_len < UDP_LEN || ETH_LEN + IPV6_LEN + ip_payload_len > frame_len {
            return Err(PassReason::Truncated);
        }
        out.family = FAMILY_IPV6;
        unsafe {
            out.saddr = (*ip).saddr;
            out.daddr = (*ip).daddr;
        }
        udp = ptr_at(ctx, ETH_LEN + IPV6_LEN).ok_or(PassReason::Truncated)?;
    } else {
        return Err(PassReason::NotIp);
    }
    let udp_len = u16::from_be_bytes(unsafe { (*udp).len }) as usize;
    if udp_len != ip_payload_len {
        return Err(PassReason::Truncated);
    }
    out.sport = u16::from_ne_bytes(unsafe { (*udp).sport });
    out.dport = u16::from_ne_bytes(unsafe { (*udp).dport });
    out.payload_len = udp_len - UDP_LEN;
    Ok(out)
}

/// Reads `N` payload bytes at payload offset 0 through direct packet access.
#[inline(always)]
fn payload_bytes<const N: usize>(ctx: &XdpContext, udp: &Udp) -> Option<[u8; N]> {
    let p: *const [u8; N] =
        if udp.family == FAMILY_IPV4 { ptr_at(ctx, IPV4_PAYLOAD_OFF)? } else { ptr_at(ctx, IPV6_PAYLOAD_OFF)? };
    Some(unsafe { *p })
}

/// The payload is exactly one of `regedge_common::sip::CRLF_KEEPALIVES`.
#[inline(always)]
pub fn is_crlf_keepalive(ctx: &XdpContext, udp: &Udp) -> bool {
    match udp.payload_len {
        4 => payload_bytes::<4>(ctx, udp) == Some(*b"\r\n\r\n"),
        2 => payload_bytes::<2>(ctx, udp) == Some(*b"\r\n"),
        _ => false,
    }
}

/// The first eight payload bytes, enough to tell STUN from an OPTIONS request line.
#[inline(always)]
pub fn payload_head(ctx: &XdpContext, udp: &Udp) -> Option<[u8; 8]> {
    if udp.payload_len < 8 {
        return None;
    }
    payload_bytes::<8>(ctx, udp)
}

/// Value the compiler cannot reason about: keeps a bounds mask on the very register that
/// reaches a helper (see EBPF-NOTES.md, "LLVM rewrites that the verifier rejects").
#[inline(always)]
fn opaque<T: Copy>(v: T) -> T {
    unsafe { core::ptr::read_volatile(&v) }
}

/// Copies the payload into `scratch.input` and zeroes the 16 bytes after it, so that
/// look-ahead windows past the end read zeros and never a previous packet.
#[inline(always)]
pub fn load_payload(ctx: &XdpContext, udp: &Udp, scratch: *mut Scratch) -> Result<(), PassReason> {
    let len = opaque(udp.payload_len as u32) & BUF_MASK as u32;
    if len == 0 {
        return Err(PassReason::Truncated);
    }
    let input = unsafe { &raw mut (*scratch).input as *mut u8 };
    let off = udp.payload_off() as u32;
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, off, input.cast(), len) } != 0 {
        return Err(PassReason::HelperFailed);
    }
    // Zero the rest of the last word and the two after it with aligned stores (volatile,
    // or LLVM merges them into a call to a byte-at-a-time memset).
    let tail = (opaque(udp.payload_len) & BUF_MASK) / 8;
    unsafe {
        let words = input as *mut u64;
        let last = (*words.add(tail)) & ((1u64 << ((udp.payload_len & 7) * 8)) - 1);
        core::ptr::write_volatile(words.add(tail), last);
        core::ptr::write_volatile(words.add(tail + 1), 0);
        core::ptr::write_volatile(words.add(tail + 2), 0);
    }
    Ok(())
}

/// Turns the request frame into the reply: resizes it to carry `reply_len` payload bytes
/// from `scratch.output`, swaps addresses and ports, and recomputes every checksum in
/// full (veth delivers partial checksums, so incremental updates would be wrong).
/// The frame grows at the head (XDP guarantees 256 bytes of headroom; native veth has
/// almost no tailroom) and shrinks at the tail.
#[inline(always)]
pub fn emit_reply(ctx: &XdpContext, udp: &Udp, scratch: *mut Scratch, reply_len: usize) -> Result<(), PassReason> {
    let out_len = opaque(reply_len) & BUF_MASK;
    if out_len == 0 || out_len > regedge_common::sip::MAX_PAYLOAD {
        return Err(PassReason::HelperFailed);
    }
    let output = unsafe { &raw mut (*scratch).output as *mut u8 };
    // Zero pad for the checksum of an odd-length payload.
    unsafe { *output.add(out_len) = 0 };
    let want = udp.payload_off() + out_len;
    let have = buff_len(ctx);
    let delta = want as i64 - have as i64;
    if delta > 0 {
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(delta as i32)) } != 0 {
            return Err(PassReason::HelperFailed);
        }
    } else if delta < 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return Err(PassReason::HelperFailed);
    }

    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(PassReason::HelperFailed)?;
    let udp_total = (UDP_LEN + out_len) as u16;
    let mut sum: u64;
    unsafe {
        (*eth).dst = udp.eth_src;
        (*eth).src = udp.eth_dst;
    }
    let uh: *mut UdpHdr;
    if udp.family == FAMILY_IPV4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN).ok_or(PassReason::HelperFailed)?;
        unsafe {
            (*eth).ether_type = ETH_P_IPV4.to_be_bytes();
            (*ip).version_ihl = 0x45;
            (*ip).tos = 0;
            (*ip).total_len = (IPV4_LEN as u16 + udp_total).to_be_bytes();
            (*ip).id = udp.ipv4_id;
            (*ip).frag = 0x4000u16.to_be_bytes(); // DF
            (*ip).ttl = 64;
            (*ip).protocol = IPPROTO_UDP;
            (*ip).check = [0, 0];
            (*ip).saddr = [udp.daddr[0], udp.daddr[1], udp.daddr[2], udp.daddr[3]];
            (*ip).daddr = [udp.saddr[0], udp.saddr[1], udp.saddr[2], udp.saddr[3]];
            (*ip).check = csum::ipv4_header(ip as *const [u8; 20]).to_ne_bytes();
        }
        sum = u16::from_ne_bytes([udp.daddr[0], udp.daddr[1]]) as u64
            + u16::from_ne_bytes([udp.daddr[2], udp.daddr[3]]) as u64
            + u16::from_ne_bytes([udp.saddr[0], udp.saddr[1]]) as u64
            + u16::from_ne_bytes([udp.saddr[2], udp.saddr[3]]) as u64;
        uh = ptr_at(ctx, ETH_LEN + IPV4_LEN).ok_or(PassReason::HelperFailed)?;
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN).ok_or(PassReason::HelperFailed)?;
        unsafe {
            (*eth).ether_type = ETH_P_IPV6.to_be_bytes();
            (*ip).version_class_flow = [0x60, 0, 0, 0];
            (*ip).payload_len = udp_total.to_be_bytes();
            (*ip).next_header = IPPROTO_UDP;
            (*ip).hop_limit = 64;
            (*ip).saddr = udp.daddr;
            (*ip).daddr = udp.saddr;
        }
        sum = csum::sum_bytes16(&udp.saddr) + csum::sum_bytes16(&udp.daddr);
        uh = ptr_at(ctx, ETH_LEN + IPV6_LEN).ok_or(PassReason::HelperFailed)?;
    }
    unsafe {
        (*uh).sport = udp.dport.to_ne_bytes();
        (*uh).dport = udp.sport.to_ne_bytes();
        (*uh).len = udp_total.to_be_bytes();
        (*uh).check = [0, 0];
    }
    let n = opaque(out_len as u32) & BUF_MASK as u32;
    if n == 0 {
        return Err(PassReason::HelperFailed);
    }
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, udp.payload_off() as u32, output.cast(), n) } != 0 {
        return Err(PassReason::HelperFailed);
    }
    // Pseudo header (addresses above, protocol, length), UDP header, payload.
    sum += u16::from_ne_bytes([0, IPPROTO_UDP]) as u64
        + 2 * u16::from_ne_bytes(udp_total.to_be_bytes()) as u64
        + udp.sport as u64
        + udp.dport as u64
        + csum::sum_payload(output, out_len);
    let mut check = csum::fold(sum);
    if check == 0 {
        check = 0xffff;
    }
    let uh: *mut UdpHdr = if udp.family == FAMILY_IPV4 {
        ptr_at(ctx, ETH_LEN + IPV4_LEN).ok_or(PassReason::HelperFailed)?
    } else {
        ptr_at(ctx, ETH_LEN + IPV6_LEN).ok_or(PassReason::HelperFailed)?
    };
    unsafe { (*uh).check = check.to_ne_bytes() };
    Ok(())
}
