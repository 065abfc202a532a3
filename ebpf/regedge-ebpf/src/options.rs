//! SIP OPTIONS addressed to the proxy → 200 OK, built exactly as userspace builds it
//! (`proxy/src/sip/stateless.rs`): the status line, then every Via, From, To, Call-ID and
//! CSeq header line copied verbatim in request order (folded lines included), the node's
//! To-tag appended to a To without one, and `Content-Length: 0`.
//!
//! The kernel answers only what it fully decodes and passes the rest:
//! - request line `OPTIONS sip:<host>[...] SIP/2.0` with no user part and `<host>` in
//!   `LOCAL_NAMES` (otherwise `NotForUs`);
//! - CRLF line ends only; header names matched exactly (`Via :` with a space before the
//!   colon goes to userspace); every header line has a colon and a non-empty name;
//!   From, To, Call-ID, CSeq exactly once, Via at least once,
//!   none of them empty; CSeq `<number up to 2^31-1> OPTIONS`, not folded;
//! - a reply no larger than the request (the fast path is never an amplifier).
//!
//! The payload is scanned once by a `bpf_loop` callback (a plain loop with this many
//! data-dependent branches per byte exceeds the verifier's state budget), whose state
//! lives in the per-CPU scratch map.

use core::ffi::c_void;

use aya_ebpf::{cty::c_long, helpers::generated::bpf_loop};
use regedge_common::{
    PassReason,
    maps::LOCAL_NAME_MAX,
    sip::{CONTENT_LENGTH_0, STATUS_200_OK, TO_TAG_LEN},
};

use crate::{
    maps::{self, BUF_MASK, Scratch},
    text::{is_ws, matches, pattern},
};

// Scanner state words in `Scratch::state`.
const S_OUT: usize = 0;
const S_MODE: usize = 1;
const S_FLAGS: usize = 2;
const S_HOST_LEN: usize = 3;
const S_CURRENT: usize = 4;
const S_CSEQ_NUM: usize = 5;
const S_CSEQ_STATE: usize = 6;
const S_CSEQ_METHOD: usize = 7;

// Modes.
const M_HOST: u32 = 0;
const M_URI_REST: u32 = 1;
const M_REQUEST_LINE_END: u32 = 2;
const M_LINE_START: u32 = 3;
const M_COPY: u32 = 4;
const M_SKIP: u32 = 5;
const M_DONE: u32 = 6;
const M_NOT_FOR_US: u32 = 7;
const M_UNSUPPORTED: u32 = 8;

// Headers (S_CURRENT values and "seen" bits in S_FLAGS).
const H_VIA: u32 = 1 << 0;
const H_FROM: u32 = 1 << 1;
const H_TO: u32 = 1 << 2;
const H_CALL_ID: u32 = 1 << 3;
const H_CSEQ: u32 = 1 << 4;
const H_REQUIRED: u32 = H_VIA | H_FROM | H_TO | H_CALL_ID | H_CSEQ;
/// `header_at` result for a known name followed by whitespace before its colon.
const H_UNSUPPORTED: u32 = 1 << 31;

// Other S_FLAGS bits.
const F_IN_HEADERS: u32 = 1 << 8;
const F_AFTER_COLON: u32 = 1 << 9;
const F_NON_EMPTY: u32 = 1 << 10;
const F_TO_HAS_TAG: u32 = 1 << 11;
const F_IPV6_HOST: u32 = 1 << 12;
/// The current skipped line has its colon (or is a continuation line, which needs none).
const F_LINE_COLON: u32 = 1 << 13;

// CSeq value states.
const C_LEADING_WS: u32 = 0;
const C_NUMBER: u32 = 1;
const C_GAP: u32 = 2;
const C_METHOD: u32 = 3;
const C_TRAILING_WS: u32 = 4;
const CSEQ_MAX: u32 = (1 << 31) - 1;

/// Where the Request-URI host starts: after `OPTIONS sip:`.
const HOST_START: usize = 12;

#[inline(always)]
fn get(s: *mut Scratch, i: usize) -> u32 {
    unsafe { core::ptr::read_volatile(&(*s).state[i]) }
}

#[inline(always)]
fn set(s: *mut Scratch, i: usize, v: u32) {
    unsafe { core::ptr::write_volatile(&mut (*s).state[i], v) }
}

#[inline(always)]
fn input_at(s: *mut Scratch, k: usize) -> u8 {
    unsafe { *(&raw const (*s).input as *const u8).add(k & BUF_MASK) }
}

/// Eight input bytes at `k`, little-endian.
#[inline(always)]
fn window(s: *mut Scratch, k: usize) -> u64 {
    unsafe { ((&raw const (*s).input as *const u8).add(k & BUF_MASK) as *const u64).read_unaligned() }
}

/// Compile-time patterns: (value, mask, length).
const fn name_pattern(text: &[u8]) -> (u64, u64, usize) {
    let (value, mask) = pattern(text);
    (value, mask, text.len())
}

const HEADER_NAMES: [((u64, u64, usize), u32); 9] = [
    (name_pattern(b"via"), H_VIA),
    (name_pattern(b"v"), H_VIA),
    (name_pattern(b"from"), H_FROM),
    (name_pattern(b"f"), H_FROM),
    (name_pattern(b"to"), H_TO),
    (name_pattern(b"t"), H_TO),
    (name_pattern(b"call-id"), H_CALL_ID),
    (name_pattern(b"i"), H_CALL_ID),
    (name_pattern(b"cseq"), H_CSEQ),
];
const SIP_SCHEME: (u64, u64) = pattern(b"sip:");
const TAG_PARAM: (u64, u64) = pattern(b"tag=");

/// Which header a line starting at `k` holds: an `H_*` bit, 0 for any other header, or
/// `H_UNSUPPORTED` for a known name followed by whitespace.
#[inline(always)]
fn header_at(s: *mut Scratch, k: usize) -> u32 {
    let w = window(s, k);
    let mut i = 0;
    while i < HEADER_NAMES.len() {
        let ((value, mask, len), bit) = HEADER_NAMES[i];
        if matches(w, (value, mask)) {
            let next = input_at(s, k + len);
            if next == b':' {
                return bit;
            }
            if is_ws(next) {
                return H_UNSUPPORTED;
            }
        }
        i += 1;
    }
    0
}

#[inline(always)]
fn put(s: *mut Scratch, c: u8) -> bool {
    let o = get(s, S_OUT) as usize;
    if o >= regedge_common::sip::MAX_PAYLOAD {
        set(s, S_MODE, M_UNSUPPORTED);
        return false;
    }
    unsafe { *(&raw mut (*s).output as *mut u8).add(o & BUF_MASK) = c };
    set(s, S_OUT, o as u32 + 1);
    true
}

#[inline(always)]
fn stop(s: *mut Scratch, mode: u32) -> bool {
    set(s, S_MODE, mode);
    false
}

/// The request-line part: the Request-URI host, then `SIP/2.0`.
#[inline(always)]
fn step_request_line(s: *mut Scratch, k: usize, c: u8, mode: u32) -> bool {
    if c == b'\r' || c == b'\n' {
        return stop(s, M_UNSUPPORTED);
    }
    if mode == M_HOST {
        let flags = get(s, S_FLAGS);
        let ipv6 = if k == HOST_START && c == b'[' {
            set(s, S_FLAGS, flags | F_IPV6_HOST);
            true
        } else {
            flags & F_IPV6_HOST != 0
        };
        if !ipv6 {
            match c {
                b'@' => return stop(s, M_NOT_FOR_US),
                b':' | b';' | b'?' => {
                    set(s, S_MODE, M_URI_REST);
                    return true;
                }
                b' ' => return end_of_uri(s, k),
                _ => {}
            }
        } else if c == b' ' {
            return stop(s, M_UNSUPPORTED);
        }
        let n = get(s, S_HOST_LEN) as usize;
        if n >= LOCAL_NAME_MAX {
            return stop(s, M_NOT_FOR_US);
        }
        unsafe { (*s).host.name[n & 63] = c.to_ascii_lowercase() };
        set(s, S_HOST_LEN, n as u32 + 1);
        if ipv6 && c == b']' {
            set(s, S_MODE, M_URI_REST);
        }
        return true;
    }
    // M_URI_REST
    match c {
        b'@' => stop(s, M_NOT_FOR_US),
        b' ' => end_of_uri(s, k),
        _ => true,
    }
}

/// At the space after the Request-URI: the rest of the line must be `SIP/2.0\r\n`.
#[inline(always)]
fn end_of_uri(s: *mut Scratch, k: usize) -> bool {
    if window(s, k + 1) == u64::from_le_bytes(*b"SIP/2.0\r") && input_at(s, k + 9) == b'\n' {
        set(s, S_MODE, M_REQUEST_LINE_END);
        return true;
    }
    stop(s, M_UNSUPPORTED)
}

/// One CSeq value byte (after the colon, not CR/LF).
#[inline(always)]
fn step_cseq(s: *mut Scratch, k: usize, c: u8) -> bool {
    let state = get(s, S_CSEQ_STATE);
    if state == C_LEADING_WS || state == C_NUMBER {
        if c.is_ascii_digit() {
            let n = get(s, S_CSEQ_NUM) as u64 * 10 + (c - b'0') as u64;
            if n > CSEQ_MAX as u64 {
                return stop(s, M_UNSUPPORTED);
            }
            set(s, S_CSEQ_NUM, n as u32);
            set(s, S_CSEQ_STATE, C_NUMBER);
            return true;
        }
        if is_ws(c) {
            if state == C_NUMBER {
                set(s, S_CSEQ_STATE, C_GAP);
            }
            return true;
        }
        return stop(s, M_UNSUPPORTED);
    }
    if state == C_GAP {
        if !is_ws(c) {
            set(s, S_CSEQ_METHOD, k as u32);
            set(s, S_CSEQ_STATE, C_METHOD);
        }
        return true;
    }
    if state == C_METHOD {
        if is_ws(c) {
            if !cseq_method_is_options(s, k) {
                return stop(s, M_UNSUPPORTED);
            }
            set(s, S_CSEQ_STATE, C_TRAILING_WS);
        }
        return true;
    }
    // C_TRAILING_WS
    if is_ws(c) { true } else { stop(s, M_UNSUPPORTED) }
}

/// The CSeq method runs from `S_CSEQ_METHOD` to `end` and is exactly `OPTIONS`.
#[inline(always)]
fn cseq_method_is_options(s: *mut Scratch, end: usize) -> bool {
    let start = get(s, S_CSEQ_METHOD) as usize;
    end == start + 7 && window(s, start) & 0x00ff_ffff_ffff_ffff == u64::from_le_bytes(*b"OPTIONS\0")
}

/// At the CR that ends a logical header (the next line is not a continuation).
#[inline(always)]
fn end_of_header(s: *mut Scratch, k: usize) -> bool {
    let flags = get(s, S_FLAGS);
    let current = get(s, S_CURRENT);
    if flags & F_NON_EMPTY == 0 {
        return stop(s, M_UNSUPPORTED);
    }
    if current == H_CSEQ {
        let state = get(s, S_CSEQ_STATE);
        let ok = state == C_TRAILING_WS || (state == C_METHOD && cseq_method_is_options(s, k));
        if !ok {
            return stop(s, M_UNSUPPORTED);
        }
    }
    if current == H_TO && flags & F_TO_HAS_TAG == 0 {
        for c in *b";tag=" {
            if !put(s, c) {
                return false;
            }
        }
        let mut i = 0;
        while i < TO_TAG_LEN {
            if !put(s, unsafe { (*s).tag[i] }) {
                return false;
            }
            i += 1;
        }
    }
    true
}

/// One step of the scanner for input byte `k`. Returns false to stop the loop.
#[inline(always)]
fn step(s: *mut Scratch, k: usize) -> bool {
    if k < HOST_START {
        return true;
    }
    let c = input_at(s, k);
    let mode = get(s, S_MODE);
    match mode {
        M_HOST | M_URI_REST => step_request_line(s, k, c, mode),
        M_REQUEST_LINE_END => {
            if c == b'\n' {
                set(s, S_MODE, M_LINE_START);
            }
            true
        }
        M_LINE_START => {
            let flags = get(s, S_FLAGS);
            if c == b'\r' {
                return stop(s, if input_at(s, k + 1) == b'\n' { M_DONE } else { M_UNSUPPORTED });
            }
            if is_ws(c) {
                // A continuation line of the previous header.
                if flags & F_IN_HEADERS == 0 {
                    return stop(s, M_UNSUPPORTED);
                }
                if get(s, S_CURRENT) == 0 {
                    set(s, S_FLAGS, flags | F_LINE_COLON);
                    set(s, S_MODE, M_SKIP);
                    return true;
                }
                set(s, S_MODE, M_COPY);
                return put(s, c);
            }
            let header = header_at(s, k);
            if header == H_UNSUPPORTED || c == b':' {
                return stop(s, M_UNSUPPORTED);
            }
            let mut flags = flags | F_IN_HEADERS;
            set(s, S_CURRENT, header);
            if header == 0 {
                set(s, S_FLAGS, flags & !F_LINE_COLON);
                set(s, S_MODE, M_SKIP);
                return true;
            }
            if header != H_VIA && flags & header != 0 {
                return stop(s, M_UNSUPPORTED);
            }
            flags = (flags | header) & !(F_AFTER_COLON | F_NON_EMPTY | F_TO_HAS_TAG);
            set(s, S_FLAGS, flags);
            set(s, S_CSEQ_STATE, C_LEADING_WS);
            set(s, S_CSEQ_NUM, 0);
            set(s, S_MODE, M_COPY);
            put(s, c)
        }
        M_COPY => {
            if c == b'\r' {
                if input_at(s, k + 1) != b'\n' {
                    return stop(s, M_UNSUPPORTED);
                }
                let folded = is_ws(input_at(s, k + 2));
                if folded && get(s, S_CURRENT) == H_CSEQ {
                    return stop(s, M_UNSUPPORTED);
                }
                if !folded && !end_of_header(s, k) {
                    return false;
                }
                return put(s, c);
            }
            if c == b'\n' {
                if input_at(s, k - 1) != b'\r' {
                    return stop(s, M_UNSUPPORTED);
                }
                set(s, S_MODE, M_LINE_START);
                return put(s, c);
            }
            let flags = get(s, S_FLAGS);
            if flags & F_AFTER_COLON == 0 {
                if c == b':' {
                    set(s, S_FLAGS, flags | F_AFTER_COLON);
                }
                return put(s, c);
            }
            let mut flags = flags;
            if !is_ws(c) {
                flags |= F_NON_EMPTY;
            }
            let current = get(s, S_CURRENT);
            if current == H_TO && c == b';' && matches(window(s, k + 1), TAG_PARAM) {
                flags |= F_TO_HAS_TAG;
            }
            set(s, S_FLAGS, flags);
            if current == H_CSEQ && !step_cseq(s, k, c) {
                return false;
            }
            put(s, c)
        }
        M_SKIP => {
            if c == b':' {
                set(s, S_FLAGS, get(s, S_FLAGS) | F_LINE_COLON);
            }
            if c == b'\r' && (input_at(s, k + 1) != b'\n' || get(s, S_FLAGS) & F_LINE_COLON == 0) {
                return stop(s, M_UNSUPPORTED);
            }
            if c == b'\n' {
                if input_at(s, k - 1) != b'\r' {
                    return stop(s, M_UNSUPPORTED);
                }
                set(s, S_MODE, M_LINE_START);
            }
            true
        }
        _ => false,
    }
}

/// `bpf_loop` callback; `ctx` points at a `*mut Scratch`. Must stay private (static
/// linkage in BTF) to be accepted as a callback.
unsafe extern "C" fn step_callback(k: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    if step(s, k as usize) { 0 } else { 1 }
}

/// Scans the OPTIONS in `scratch.input` (`len` bytes, starting `OPTIONS `) and writes the
/// 200 OK into `scratch.output`. Returns the reply length.
#[inline(always)]
pub fn build_reply(s: *mut Scratch, len: usize) -> Result<usize, PassReason> {
    let settings = maps::settings().ok_or(PassReason::HelperFailed)?;
    if settings.to_tag == [0; TO_TAG_LEN] {
        return Err(PassReason::SipUnsupported);
    }
    if !matches(window(s, 8), SIP_SCHEME) {
        return Err(PassReason::NotForUs);
    }
    unsafe {
        (*s).tag = settings.to_tag;
        (*s).host.name = [0; LOCAL_NAME_MAX + 1];
    }
    set(s, S_OUT, 0);
    set(s, S_MODE, M_HOST);
    set(s, S_FLAGS, 0);
    set(s, S_HOST_LEN, 0);
    set(s, S_CURRENT, 0);
    for c in STATUS_200_OK {
        put(s, *c);
    }
    let mut callback_ctx = s;
    let n = (len as u32) & BUF_MASK as u32;
    unsafe { bpf_loop(n, step_callback as *mut c_void, (&raw mut callback_ctx).cast(), 0) };
    match get(s, S_MODE) {
        M_DONE => {}
        M_NOT_FOR_US => return Err(PassReason::NotForUs),
        _ => return Err(PassReason::SipUnsupported),
    }
    if get(s, S_FLAGS) & H_REQUIRED != H_REQUIRED {
        return Err(PassReason::SipUnsupported);
    }
    if get(s, S_HOST_LEN) == 0 || !maps::is_local_name(unsafe { &raw const (*s).host }) {
        return Err(PassReason::NotForUs);
    }
    for c in CONTENT_LENGTH_0 {
        if !put(s, *c) {
            return Err(PassReason::SipUnsupported);
        }
    }
    let out_len = get(s, S_OUT) as usize;
    if out_len > len {
        return Err(PassReason::SipUnsupported);
    }
    Ok(out_len)
}
