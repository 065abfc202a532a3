//! SCCP KeepAlives answered in the kernel: a stream-verdict `sk_skb` program on the
//! phones' TCP sockets (`SCCP_SOCKETS`), run once per received segment (verdict-only
//! mode, no stream parser: the parser cannot frame several PDUs in one segment, see
//! EBPF-NOTES.md).
//!
//! - A segment that is exactly one KeepAlive PDU (12 bytes: `data_length` 4, a Skinny
//!   header version, message id 0), starting at a PDU boundary, on a socket userspace
//!   marked registered (`SCCP_REGISTERED`): rewritten in place into a KeepAliveAck (id
//!   0x0100, same header version) and redirected to the same socket's egress.
//! - Everything else goes to userspace (SK_PASS) unchanged, including KeepAlives that
//!   share a segment with other PDUs: userspace answers those.
//!
//! To know where PDUs start, the program walks the PDU headers of every segment it passes
//! and keeps the state across segments in `SCCP_FRAMING`: the bytes still owed to a PDU
//! that continues in the next segment, or the first bytes of a header split between two.
//! A segment it cannot follow (an invalid header, more than `MAX_PDUS` PDUs) puts the
//! socket out of sync for good: everything is passed from then on, nothing answered.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, sk_action::SK_PASS},
    helpers::bpf_loop,
    macros::stream_verdict,
    programs::{SkBuffContext, sk_buff::SkBuff},
};
use regedge_common::{
    ReplyKind,
    maps::{SCCP_OUT_OF_SYNC, SOCKET_FAMILY_INET6, SccpFraming, SccpSocketKey},
    sccp::{DATA_LENGTH_MAX, DATA_LENGTH_MIN, FRAMING_LEN, KEEP_ALIVE_LEN, id, is_header_version},
};

use crate::maps;

/// PDUs walked in one segment (with `bpf_loop`, so the verifier sees one step whatever
/// the count); a segment with more puts the socket out of sync. 8192 of the smallest PDU
/// (12 bytes) are 96 KiB: more than a 64 KiB skb holds.
pub const MAX_PDUS: u32 = 8192;

#[stream_verdict]
pub fn regedge_sccp_keepalive(ctx: SkBuffContext) -> u32 {
    verdict(&ctx)
}

#[inline(always)]
fn verdict(ctx: &SkBuffContext) -> u32 {
    let mut key = socket_key(ctx);
    // A socket without framing state is not ours to follow (userspace creates it first).
    let Some(state) = maps::sccp_framing(&key) else { return SK_PASS };
    let state = unsafe { &mut *state };
    if state.flags & SCCP_OUT_OF_SYNC != 0 {
        return SK_PASS;
    }
    let len = ctx.skb.len();
    if state.owed == 0 && state.header_have == 0 && len == KEEP_ALIVE_LEN as u32 {
        if let Ok(header) = ctx.skb.load::<[u32; 3]>(0)
            && u32::from_le(header[0]) == DATA_LENGTH_MIN
            && is_header_version(u32::from_le(header[1]))
            && u32::from_le(header[2]) == id::KEEP_ALIVE
        {
            // One whole PDU: the stream stays at a boundary whether answered or passed.
            if maps::sccp_registered(&key) {
                return answer(ctx, &mut key);
            }
            return SK_PASS;
        }
    }
    if !walk(ctx, state, len) {
        state.flags |= SCCP_OUT_OF_SYNC;
    }
    SK_PASS
}

/// Rewrites the KeepAlive into a KeepAliveAck and sends it back out of the same socket.
#[inline(always)]
fn answer(ctx: &SkBuffContext, key: &mut SccpSocketKey) -> u32 {
    let id_offset = 8;
    if ctx.skb.store(id_offset, &id::KEEP_ALIVE_ACK.to_le(), 0).is_err() {
        return SK_PASS;
    }
    if maps::sccp_redirect_egress(ctx, key) == SK_PASS {
        maps::count_reply(ReplyKind::SccpKeepalive);
        return SK_PASS;
    }
    // The socket is not in SCCP_SOCKETS (a key mismatch): hand the KeepAlive to userspace
    // as it came.
    let _ = ctx.skb.store(id_offset, &id::KEEP_ALIVE.to_le(), 0);
    SK_PASS
}

/// The socket's 4-tuple as userspace builds it (`SccpSocketKey::new`).
#[inline(always)]
fn socket_key(ctx: &SkBuffContext) -> SccpSocketKey {
    let skb = ctx.skb.skb;
    // SAFETY: ctx field reads, one u32 each (the verifier rejects wider context reads).
    unsafe {
        let family = core::ptr::read_volatile(&raw const (*skb).family);
        // `remote_port` is network order in the upper 16 bits; `local_port` host order.
        let remote_port = core::ptr::read_volatile(&raw const (*skb).remote_port);
        let remote_port_be = if remote_port > 0xffff { remote_port >> 16 } else { remote_port } as u16;
        let local_port_be = (core::ptr::read_volatile(&raw const (*skb).local_port) as u16).to_be();
        let mut key = SccpSocketKey { family, local_port_be, remote_port_be, local_addr: [0; 4], remote_addr: [0; 4] };
        if family == SOCKET_FAMILY_INET6 {
            for i in 0..4 {
                key.local_addr[i] = core::ptr::read_volatile(&raw const (*skb).local_ip6[i]);
                key.remote_addr[i] = core::ptr::read_volatile(&raw const (*skb).remote_ip6[i]);
            }
        } else {
            key.local_addr[0] = core::ptr::read_volatile(&raw const (*skb).local_ip4);
            key.remote_addr[0] = core::ptr::read_volatile(&raw const (*skb).remote_ip4);
        }
        key
    }
}

/// Whether `data_length` and `header_version` can start a PDU.
#[inline(always)]
fn valid_header(data_length: u32, version: u32) -> bool {
    data_length >= DATA_LENGTH_MIN && data_length <= DATA_LENGTH_MAX && is_header_version(version)
}

/// Follows the PDU boundaries through a segment of `len` bytes that is passed to
/// userspace, updating `state`. False: the segment cannot be followed.
#[inline(always)]
fn walk(ctx: &SkBuffContext, state: &mut SccpFraming, len: u32) -> bool {
    let mut offset: u32 = 0;
    // The rest of a header split by the previous segment.
    if state.header_have != 0 {
        let mut i: u32 = 0;
        while i < FRAMING_LEN {
            if i >= state.header_have {
                if offset >= len {
                    state.header_have = i;
                    return true;
                }
                let Ok(byte) = ctx.skb.load::<u8>(offset as usize) else { return false };
                state.header[(i & 7) as usize] = byte;
                offset += 1;
            }
            i += 1;
        }
        state.header_have = 0;
        let h = state.header;
        let data_length = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if !valid_header(data_length, u32::from_le_bytes([h[4], h[5], h[6], h[7]])) {
            return false;
        }
        state.owed = data_length;
    }
    // The rest of a PDU that started in an earlier segment.
    if state.owed != 0 {
        let available = len - offset;
        if state.owed >= available {
            state.owed -= available;
            return true;
        }
        offset += state.owed;
        state.owed = 0;
    }
    let mut w = Walk { skb: ctx.skb.skb, offset, len, outcome: WALKING, owed: 0, header_have: 0, header: [0; 8] };
    // SAFETY: `walk_step` is a callback of bpf_loop's signature; `w` outlives the call.
    unsafe {
        bpf_loop(MAX_PDUS, walk_step as *const () as *mut c_void, (&raw mut w).cast(), 0);
    }
    match w.outcome {
        FOLLOWED => {
            state.owed = w.owed;
            state.header_have = w.header_have;
            state.header = w.header;
            true
        }
        // WALKING: MAX_PDUS PDUs and the segment goes on.
        _ => false,
    }
}

/// [`Walk::outcome`] values.
const WALKING: u32 = 0;
const FOLLOWED: u32 = 1;
const LOST: u32 = 2;

/// The PDU walk's state, handed to each `bpf_loop` step.
#[repr(C)]
struct Walk {
    skb: *mut __sk_buff,
    /// Where the next PDU starts in the segment.
    offset: u32,
    len: u32,
    outcome: u32,
    /// At the end of the segment (outcome `FOLLOWED`): the `SccpFraming` fields.
    owed: u32,
    header_have: u32,
    header: [u8; 8],
}

/// One `bpf_loop` step: steps over the PDU at `offset`; 1 ends the loop.
#[inline(never)]
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on the caller's stack.
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    let skb = SkBuff::new(w.skb);
    let offset = w.offset;
    if offset >= w.len {
        w.outcome = FOLLOWED;
        return 1;
    }
    let rest = w.len - offset;
    if rest < FRAMING_LEN {
        // A header split by the end of the segment: keep its first bytes.
        let mut j: u32 = 0;
        while j < FRAMING_LEN - 1 {
            if j < rest {
                let Ok(byte) = skb.load::<u8>((offset + j) as usize) else {
                    w.outcome = LOST;
                    return 1;
                };
                w.header[(j & 7) as usize] = byte;
            }
            j += 1;
        }
        w.header_have = rest;
        w.outcome = FOLLOWED;
        return 1;
    }
    let Ok(header) = skb.load::<[u32; 2]>(offset as usize) else {
        w.outcome = LOST;
        return 1;
    };
    let data_length = u32::from_le(header[0]);
    if !valid_header(data_length, u32::from_le(header[1])) {
        w.outcome = LOST;
        return 1;
    }
    let total = FRAMING_LEN + data_length;
    if total > rest {
        w.owed = total - rest;
        w.outcome = FOLLOWED;
        return 1;
    }
    w.offset = offset + total;
    0
}
