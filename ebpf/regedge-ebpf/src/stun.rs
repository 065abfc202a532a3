//! STUN Binding Request → Binding Success Response with XOR-MAPPED-ADDRESS (RFC 5389 §7.3,
//! §15.2), the UDP keepalive of RFC 5626 §4.4.2. The kernel answers requests whose
//! attributes are all comprehension-optional and that carry no FINGERPRINT; userspace
//! answers the rest (or rejects them with 420).

use regedge_common::{
    PassReason,
    maps::FAMILY_IPV4,
    stun::{
        ATTR_FINGERPRINT, ATTR_XOR_MAPPED_ADDRESS, BINDING_REQUEST, BINDING_SUCCESS, COMPREHENSION_OPTIONAL,
        FAMILY_IPV4 as STUN_IPV4, FAMILY_IPV6 as STUN_IPV6, HEADER_LEN, MAGIC_COOKIE, MAX_KERNEL_ATTRIBUTES,
        SUCCESS_LEN_IPV4, SUCCESS_LEN_IPV6,
    },
};

use crate::{
    frame::Udp,
    maps::{BUF_MASK, Scratch},
};

/// A Binding Request with a consistent length, judged from its first eight bytes.
#[inline(always)]
pub fn is_binding_request(head: &[u8; 8], payload_len: usize) -> bool {
    let msg_type = u16::from_be_bytes([head[0], head[1]]);
    let msg_len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let cookie = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    msg_type == BINDING_REQUEST && cookie == MAGIC_COOKIE && msg_len % 4 == 0 && msg_len + HEADER_LEN == payload_len
}

#[inline(always)]
fn be16_at(buf: *const u8, off: usize) -> u16 {
    unsafe { u16::from_be_bytes([*buf.add(off & BUF_MASK), *buf.add((off + 1) & BUF_MASK)]) }
}

/// Checks the request's attributes and writes the response into `scratch.output`.
/// Returns the response length.
#[inline(always)]
pub fn build_reply(scratch: *mut Scratch, udp: &Udp) -> Result<usize, PassReason> {
    let input = unsafe { &raw const (*scratch).input as *const u8 };
    let output = unsafe { &raw mut (*scratch).output as *mut u8 };
    let len = udp.payload_len;
    let mut off = HEADER_LEN;
    for _ in 0..MAX_KERNEL_ATTRIBUTES {
        if off >= len {
            break;
        }
        if off + 4 > len {
            return Err(PassReason::StunUnsupported);
        }
        let attr_type = be16_at(input, off);
        let attr_len = be16_at(input, off + 2) as usize;
        if attr_type < COMPREHENSION_OPTIONAL || attr_type == ATTR_FINGERPRINT {
            return Err(PassReason::StunUnsupported);
        }
        off += 4 + ((attr_len + 3) & !3);
    }
    if off != len {
        return Err(PassReason::StunUnsupported);
    }

    let ipv4 = udp.family == FAMILY_IPV4;
    let (reply_len, value_len, family) =
        if ipv4 { (SUCCESS_LEN_IPV4, 8u16, STUN_IPV4) } else { (SUCCESS_LEN_IPV6, 20u16, STUN_IPV6) };
    let out: &mut [u8; SUCCESS_LEN_IPV6] = unsafe { &mut *(output as *mut [u8; SUCCESS_LEN_IPV6]) };
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let sport = u16::from_be_bytes(udp.sport.to_ne_bytes());
    unsafe {
        out[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
        out[2..4].copy_from_slice(&((reply_len - HEADER_LEN) as u16).to_be_bytes());
        out[4..8].copy_from_slice(&cookie);
        // Transaction id, bytes 8..20 of the request.
        let mut i = 8;
        while i < HEADER_LEN {
            out[i] = *input.add(i);
            i += 1;
        }
        out[20..22].copy_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
        out[22..24].copy_from_slice(&value_len.to_be_bytes());
        out[24] = 0;
        out[25] = family;
        out[26..28].copy_from_slice(&(sport ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
        // X-Address: the address XOR the cookie (IPv4), or XOR cookie ‖ transaction id (IPv6).
        let mut i = 0;
        while i < 16 {
            let key = if i < 4 { cookie[i] } else { *input.add(4 + i) };
            out[28 + i] = udp.saddr[i] ^ key;
            i += 1;
        }
    }
    Ok(reply_len)
}
