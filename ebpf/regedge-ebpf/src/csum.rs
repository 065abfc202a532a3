//! Internet checksums (RFC 1071). Words are summed in native order straight from wire
//! bytes and the folded result is stored the same way, which is byte-order independent.

use crate::maps::BUF_MASK;

#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
pub fn sum_bytes16(b: &[u8; 16]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 16 {
        sum += u16::from_ne_bytes([b[i], b[i + 1]]) as u64;
        i += 2;
    }
    sum
}

/// IPv4 header checksum over a 20-byte header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(hdr: *const [u8; 20]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 20 {
        sum += unsafe { u16::from_ne_bytes([(*hdr)[i], (*hdr)[i + 1]]) } as u64;
        i += 2;
    }
    fold(sum)
}

/// Sum of `len` payload bytes in `buf` (the byte after them must be zero when `len` is odd).
#[inline(always)]
pub fn sum_payload(buf: *const u8, len: usize) -> u64 {
    let words = (len + 1) / 2;
    let mut sum = 0u64;
    for i in 0..(regedge_common::sip::MAX_PAYLOAD / 2 + 1) {
        if i >= words {
            break;
        }
        sum += unsafe { (buf.add((2 * i) & BUF_MASK) as *const u16).read_unaligned() } as u64;
    }
    sum
}
