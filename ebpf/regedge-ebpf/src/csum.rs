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

/// Sum of `len` payload bytes in `buf` (8-byte aligned): aligned 8-byte loads of the
/// whole words, then the last partial word with the bytes past `len` masked off (which
/// is also the zero pad of an odd length).
#[inline(always)]
pub fn sum_payload(buf: *const u8, len: usize) -> u64 {
    let words = buf as *const u64;
    let full = len / 8;
    let mut sum = 0u64;
    for i in 0..(regedge_common::sip::MAX_PAYLOAD / 8 + 1) {
        if i >= full {
            break;
        }
        let w = unsafe { *words.add(i & (BUF_MASK / 8)) };
        sum += (w & 0xffff_ffff) + (w >> 32);
    }
    let tail = unsafe { *words.add(full & (BUF_MASK / 8)) } & ((1u64 << ((len & 7) * 8)) - 1);
    sum + (tail & 0xffff_ffff) + (tail >> 32)
}
