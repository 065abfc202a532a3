//! UDP REGISTER refreshes of bindings in `BINDINGS` → 200 OK, byte for byte what
//! userspace sends (`proxy/src/registrar/mod.rs` `absorbed_ok`): the status line, every
//! Via, From, To, Call-ID and CSeq line of the request in request order (continuation
//! lines included, the node's To-tag added to a To without one), then
//! `Contact: <uri>;expires=G`, `Expires: G`, `Date: ...` (when configured) and
//! `Content-Length: 0`. A REGISTER whose Call-ID has no entry may be Cisco's backup
//! probe (`cisco-keep-alive`, expires 0), answered with the copied headers and the Date.
//!
//! Everything else passes, counted by the first rule that failed. The rules, in order
//! (see `answer`):
//! 1. at most `MAX_PAYLOAD` bytes (`TooBig`), request line `REGISTER <uri> SIP/2.0` with
//!    exactly two spaces (no tabs) and a non-empty URI;
//! 2. CRLF line ends only (no bare CR or LF before the empty line), every header line
//!    with a colon and a non-empty name, no continuation line first, at most `MAX_LINES`
//!    lines; no empty line → `RegisterTruncated`, bytes after it → `RegisterBody`;
//! 3. names matched case-insensitively with compact forms (a known name with whitespace
//!    before its colon is not decoded); Via at least once; From, To, Call-ID, CSeq,
//!    Contact once; Expires and Authorization/Proxy-Authorization at most once; values
//!    not empty, and those read (To, Call-ID, CSeq, Contact, Expires, the credentials)
//!    neither folded nor with trailing whitespace;
//! 4. CSeq `<1-10 digits, at most 2^31-1><1-16 SP/HT>REGISTER`, Expires 1 to 9 digits;
//! 5-12. the entry: Call-ID known (else the backup probe, else `RegisterUnknown`), same
//!    flow, not flagged, same To and Contact, same credentials if any, a higher CSeq,
//!    not expires 0, a grant that ends before the entry's deadline;
//! 13. a reply no longer than the request. Whatever the kernel does not decode is
//!    `RegisterUnsupported`: userspace decides.
//!
//! Cost (a 600-byte refresh: about 2 µs of kernel time on the 2-core test VM, against
//! about 4.6 µs for a 343-byte OPTIONS; `tests/tests/xdp_register.rs` `refresh_cost`):
//! the payload is split into lines by one `bpf_loop` over 8-byte words (aligned loads;
//! SWAR masks for LF, CR and ':', a single test skips words without control bytes),
//! eight words per callback call, since a call costs about as much as a word's work.
//! Then one `bpf_loop` over the lines classifies header names with 8-byte window
//! patterns (dispatched on the first letter) and records value ranges and copy segments.
//! Values are hashed a word per step (windows from two aligned loads: an unaligned load
//! is eight byte loads on BPF); the copied header lines go from the packet to the reply
//! with one `bpf_xdp_load_bytes` per run of lines. Bytes are looked at one by one
//! only in the CSeq and Expires numbers, and in the Contact parameters of a REGISTER
//! without an entry that carries `;cisco-keep-alive`. The Date value is formatted once a
//! second per CPU. Work that would multiply the verifier's paths (numbers, the trailer,
//! the date) runs in its own one-shot callback, refreshes and probes share one reply
//! builder, and `answer` is not inlined so that the program, it and a callback fit the
//! 512-byte stack together.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_md,
    cty::c_long,
    helpers::generated::{bpf_ktime_get_ns, bpf_ktime_get_tai_ns, bpf_loop, bpf_xdp_load_bytes},
};
use regedge_common::{
    PassReason, ReplyKind,
    hash::{identity, mix, start as hash_start},
    maps::{BINDING_PASS, NO_CONTACT_EXPIRES, SETTING_DATE_HEADER},
    sip::{CONTENT_LENGTH_0, STATUS_200_OK, TO_TAG_LEN},
};

use crate::{
    frame::Udp,
    maps::{self, BUF, BUF_MASK, Scratch},
    text::{is_ws, matches, pattern},
};

/// Lines a REGISTER may have (request line and the empty line included).
pub const MAX_LINES: usize = 64;
const LINE_MASK: usize = MAX_LINES - 1;
/// Copy segments: at most one per line, plus the Contact URI.
pub const MAX_SEGS: usize = 128;
const SEG_MASK: usize = MAX_SEGS - 1;
/// State words in `RegScratch::v`.
pub const STATE_WORDS: usize = 128;

/// The REGISTER scanner's part of the per-CPU scratch.
#[repr(C)]
pub struct RegScratch {
    /// Per line: start offset, first colon (0 = none), offset of the LF.
    pub lines: [[u16; 4]; MAX_LINES],
    /// Per copy segment: start offset in the payload, length, `SEG_*` kind.
    pub segs: [[u16; 4]; MAX_SEGS],
    /// Scanner state, indexed by the `V_*` constants.
    pub v: [u32; STATE_WORDS],
    /// The running hash, or the search result, of a range callback.
    pub acc: u64,
    /// The Date value last formatted on this CPU (`Wed, 25 Nov 2026 12:00:00 GMT`) and
    /// the unix time in nanoseconds of the start of its second: a date is formatted once
    /// a second, not per packet.
    pub date_ns: u64,
    pub date: [u8; DATE_LEN + 3],
}

/// Length of an IMF-fixdate.
const DATE_LEN: usize = 29;

// State words.
const V_LINES: usize = 0;
const V_START: usize = 1;
const V_COLON: usize = 2;
/// 1 + offset of the first CR not followed by LF, 0 if none.
const V_BARE_CR: usize = 3;
const V_SP0: usize = 4;
/// 0 while scanning, `DONE_OK` once the empty line is found, `DONE_ERR` on bad framing.
const V_DONE: usize = 5;
const V_END: usize = 6;
const V_CURRENT: usize = 7;
const V_SEGS: usize = 8;
const V_COPY_LEN: usize = 9;
const V_OUT: usize = 10;
const V_ERR: usize = 11;
const V_TO_TAGGED: usize = 12;
const V_NUMBER: usize = 13;
/// Trailer inputs: `TRAILER_*` bits, the grant, the unix time.
const V_TRAILER: usize = 14;
const V_GRANT: usize = 15;
const V_UNIX_LO: usize = 26;
const V_UNIX_HI: usize = 27;
const V_RANGE_START: usize = 46;
const V_RANGE_END: usize = 47;
const V_WORDS: usize = 48;
// What `decide` leaves for the reply and the commit.
const V_KIND: usize = 64;
const V_NEW_CSEQ: usize = 65;
const V_KEY_LO: usize = 66;
const V_KEY_HI: usize = 67;
const V_NOW_LO: usize = 68;
const V_NOW_HI: usize = 69;
const V_REALTIME_LO: usize = 70;
const V_REALTIME_HI: usize = 71;
const V_PAYLOAD_OFF: usize = 72;
const KIND_REGISTER: u32 = 1;
const KIND_PROBE: u32 = 2;
/// Header counts: `V_COUNT + kind`.
const V_COUNT: usize = 16;
/// Value ranges: `V_VALUE + 2 * kind` (start), `+ 1` (end, the CR); kinds 3 to 8.
const V_VALUE: usize = 28;
// Backup-probe scanner.
const P_QUOTED: usize = 52;
const P_ESCAPED: usize = 53;
const P_ANGLED: usize = 54;
const P_PHASE: usize = 55;
const P_PQUOTED: usize = 56;
const P_KEY_START: usize = 57;
const P_KEY_END: usize = 58;
const P_VAL_START: usize = 59;
const P_VAL_END: usize = 60;
const P_EQ: usize = 61;
/// `PF_*` bits.
const P_FLAGS: usize = 62;
const P_EXPIRES: usize = 63;

const DONE_OK: u32 = 1;
const DONE_ERR: u32 = 2;

// Header kinds.
const K_OTHER: u32 = 0;
const K_VIA: u32 = 1;
const K_FROM: u32 = 2;
const K_TO: u32 = 3;
const K_CALL_ID: u32 = 4;
const K_CSEQ: u32 = 5;
const K_CONTACT: u32 = 6;
const K_EXPIRES: u32 = 7;
const K_AUTH: u32 = 8;
/// Before the first header line.
const K_NONE: u32 = 9;
/// A known name followed by whitespace before the colon.
const K_BAD: u32 = 10;

const TRAILER_CONTACT: u32 = 1 << 0;
const TRAILER_DATE: u32 = 1 << 1;

// Segment kinds.
const SEG_COPY: u16 = 0;
const SEG_TO: u16 = 1;
const SEG_CONTACT_URI: u16 = 2;

// Backup-probe flags.
const PF_MULTI: u32 = 1 << 0;
const PF_KEEPALIVE: u32 = 1 << 1;
const PF_EXPIRES_FOUND: u32 = 1 << 2;
const PF_NAME_ADDR: u32 = 1 << 3;
const PF_BAD_URI: u32 = 1 << 4;
/// `P_EXPIRES` packs the expires parameter's value range: start << 16 | end.
const CSEQ_MAX: u64 = (1 << 31) - 1;

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

#[inline(always)]
fn get(s: *mut Scratch, i: usize) -> u32 {
    unsafe { core::ptr::read_volatile(&(*s).reg.v[i & (STATE_WORDS - 1)]) }
}

#[inline(always)]
fn set(s: *mut Scratch, i: usize, v: u32) {
    unsafe { core::ptr::write_volatile(&mut (*s).reg.v[i & (STATE_WORDS - 1)], v) }
}

#[inline(always)]
fn opaque<T: Copy>(v: T) -> T {
    unsafe { core::ptr::read_volatile(&v) }
}

#[inline(always)]
fn input_at(s: *mut Scratch, k: usize) -> u8 {
    unsafe { *(&raw const (*s).input as *const u8).add(k & BUF_MASK) }
}

/// Input word `i` (bytes `8 * i ..`), one aligned 8-byte load: `input` sits at an
/// 8-byte aligned offset of the map value (checked below), map values are 8-byte aligned.
#[inline(always)]
fn word(s: *mut Scratch, i: usize) -> u64 {
    unsafe { *((&raw const (*s).input as *const u64).add(i & WORD_MASK)) }
}

/// Output word `i`.
#[inline(always)]
fn out_word(s: *mut Scratch, i: usize) -> *mut u64 {
    unsafe { (&raw mut (*s).output as *mut u64).add(i & WORD_MASK) }
}

const WORD_MASK: usize = BUF / 8 - 1;
const _: () = assert!(core::mem::offset_of!(Scratch, input) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Scratch, output) % 8 == 0);

/// Eight input bytes at `k`, little-endian: two aligned loads (an unaligned `read`
/// compiles to eight byte loads on BPF).
#[inline(always)]
fn window(s: *mut Scratch, k: usize) -> u64 {
    let i = k >> 3;
    let shift = (k & 7) * 8;
    // `(hi << 1) << (63 - shift)` is `hi << (64 - shift)`, and 0 when shift is 0.
    (word(s, i) >> shift) | ((word(s, i + 1) << 1) << (63 - shift))
}

/// The output at `o`: `OUT_SLACK` bytes may be written from there.
#[inline(always)]
fn out_at(s: *mut Scratch, o: usize) -> *mut u8 {
    unsafe { (&raw mut (*s).output as *mut u8).add(o & BUF_MASK) }
}

#[inline(always)]
fn out_byte(s: *mut Scratch, o: usize, c: u8) {
    unsafe { *out_at(s, o) = c }
}

/// Writes `text` (at most `OUT_SLACK` bytes) at `o`; returns the offset after it.
#[inline(always)]
fn out_text(s: *mut Scratch, o: usize, text: &[u8]) -> usize {
    let p = out_at(s, o);
    let mut i = 0;
    while i < text.len() {
        unsafe { *p.add(i) = text[i] };
        i += 1;
    }
    o + text.len()
}

/// Bytes of `w` equal to `c`: 0x80 in each such byte, exact (no false positives).
#[inline(always)]
fn eq_mask(w: u64, c: u8) -> u64 {
    let x = w ^ ONES.wrapping_mul(c as u64);
    !((x & LOW7).wrapping_add(LOW7) | x | LOW7)
}

/// Byte index of a mask with a single 0x80 bit.
#[inline(always)]
fn byte_index(bit: u64) -> usize {
    ((bit >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// Number of 0x80 bits in a mask.
#[inline(always)]
fn count(mask: u64) -> u32 {
    ((mask >> 7).wrapping_mul(ONES) >> 56) as u32
}

const VIA: (u64, u64) = pattern(b"via");
const FROM: (u64, u64) = pattern(b"from");
const TO: (u64, u64) = pattern(b"to");
const CALL_ID: (u64, u64) = pattern(b"call-id");
const CSEQ: (u64, u64) = pattern(b"cseq");
const CONTACT: (u64, u64) = pattern(b"contact");
const EXPIRES: (u64, u64) = pattern(b"expires");
const AUTHORIZATION: [(u64, u64); 2] = [pattern(b"authoriz"), pattern(b"ation")];
const PROXY_AUTHORIZATION: [(u64, u64); 3] = [pattern(b"proxy-au"), pattern(b"thorizat"), pattern(b"ion")];
const TAG_PARAM: (u64, u64) = pattern(b"tag=");
const KEEPALIVE: [(u64, u64); 2] = [pattern(b"cisco-ke"), pattern(b"ep-alive")];
const EXPIRES_PARAM: (u64, u64) = pattern(b"expires");

/// `kind` if the name of `len` bytes at `k` ends at a colon, `K_BAD` if whitespace
/// follows it, `None` if the line's name is longer.
#[inline(always)]
fn ends_name(s: *mut Scratch, k: usize, len: usize, kind: u32) -> Option<u32> {
    let next = input_at(s, k + len);
    if next == b':' {
        Some(kind)
    } else if is_ws(next) {
        Some(K_BAD)
    } else {
        None
    }
}

/// The kind of the header whose name starts at `k` (`K_OTHER` for any other name),
/// dispatched on the first letter.
#[inline(always)]
fn classify(s: *mut Scratch, k: usize) -> u32 {
    let w = window(s, k);
    let first = (w as u8) | 0x20;
    let kind = if first == b'v' {
        (if matches(w, VIA) { ends_name(s, k, 3, K_VIA) } else { None }).or_else(|| ends_name(s, k, 1, K_VIA))
    } else if first == b'f' {
        (if matches(w, FROM) { ends_name(s, k, 4, K_FROM) } else { None }).or_else(|| ends_name(s, k, 1, K_FROM))
    } else if first == b't' {
        (if matches(w, TO) { ends_name(s, k, 2, K_TO) } else { None }).or_else(|| ends_name(s, k, 1, K_TO))
    } else if first == b'i' {
        ends_name(s, k, 1, K_CALL_ID)
    } else if first == b'm' {
        ends_name(s, k, 1, K_CONTACT)
    } else if first == b'c' {
        if matches(w, CALL_ID) {
            ends_name(s, k, 7, K_CALL_ID)
        } else if matches(w, CONTACT) {
            ends_name(s, k, 7, K_CONTACT)
        } else if matches(w, CSEQ) {
            ends_name(s, k, 4, K_CSEQ)
        } else {
            None
        }
    } else if first == b'e' {
        if matches(w, EXPIRES) { ends_name(s, k, 7, K_EXPIRES) } else { None }
    } else if first == b'a' {
        if matches(w, AUTHORIZATION[0]) && matches(window(s, k + 8), AUTHORIZATION[1]) {
            ends_name(s, k, 13, K_AUTH)
        } else {
            None
        }
    } else if first == b'p' {
        if matches(w, PROXY_AUTHORIZATION[0])
            && matches(window(s, k + 8), PROXY_AUTHORIZATION[1])
            && matches(window(s, k + 16), PROXY_AUTHORIZATION[2])
        {
            ends_name(s, k, 19, K_AUTH)
        } else {
            None
        }
    } else {
        None
    };
    kind.unwrap_or(K_OTHER)
}

// ---------------------------------------------------------------------------------------
// Pass 1: lines.

/// Notes the first colon of the current line among the bytes of `part` (0x80 bits) of
/// word `w` at `base`, and counts the request line's spaces and tabs.
#[inline(always)]
fn account(s: *mut Scratch, base: usize, w: u64, part: u64) {
    if get(s, V_COLON) == 0 {
        let c = eq_mask(w, b':') & part;
        if c != 0 {
            set(s, V_COLON, (base + byte_index(c & c.wrapping_neg())) as u32);
        }
    }
    if get(s, V_LINES) == 0 {
        let ws = (eq_mask(w, b' ') | eq_mask(w, b'\t')) & part;
        set(s, V_SP0, get(s, V_SP0) + count(ws));
    }
}

#[inline(always)]
fn fail(s: *mut Scratch) -> bool {
    set(s, V_DONE, DONE_ERR);
    false
}

const HIGH_BYTE: u64 = 0x80 << 56;

/// Splits word `i` of the payload into lines. Returns false to stop.
#[inline(always)]
fn scan_word(s: *mut Scratch, i: usize) -> bool {
    let base = i * 8;
    let w = word(s, i);
    // Most words hold no byte below 0x0e (no CR, LF or HT): one exact test.
    if w.wrapping_sub(ONES * 0x0e) & !w & (ONES * 0x80) == 0 {
        if get(s, V_COLON) == 0 || get(s, V_LINES) == 0 {
            account(s, base, w, !0);
        }
        return true;
    }
    let mut lf = eq_mask(w, b'\n');
    // A CR must be followed by LF (the one in byte 7 by byte 0 of the next word): note
    // the first that is not; it matters if it comes before the end of the headers.
    let mut bare_cr = eq_mask(w, b'\r') & !(lf >> 8);
    if bare_cr != 0 {
        if input_at(s, base + 8) == b'\n' {
            bare_cr &= !HIGH_BYTE;
        }
        if bare_cr != 0 && get(s, V_BARE_CR) == 0 {
            set(s, V_BARE_CR, (base + byte_index(bare_cr & bare_cr.wrapping_neg())) as u32 + 1);
        }
    }
    if lf == 0 {
        account(s, base, w, !0);
        return true;
    }
    let mut consumed = 0u64;
    let mut round = 0;
    while round < 8 {
        if lf == 0 {
            break;
        }
        let bit = lf & lf.wrapping_neg();
        let upto = bit | (bit - 1);
        account(s, base, w, upto & !consumed);
        let pos = base + byte_index(bit);
        if input_at(s, pos.wrapping_sub(1)) != b'\r' {
            return fail(s);
        }
        let n = get(s, V_LINES) as usize;
        if n >= MAX_LINES {
            return fail(s);
        }
        let start = get(s, V_START) as usize;
        unsafe {
            (*s).reg.lines[n & LINE_MASK] = [start as u16, get(s, V_COLON) as u16, pos as u16, 0];
        }
        set(s, V_LINES, n as u32 + 1);
        if n > 0 && pos == start + 1 {
            set(s, V_DONE, DONE_OK);
            set(s, V_END, pos as u32 + 1);
            return false;
        }
        set(s, V_START, pos as u32 + 1);
        set(s, V_COLON, 0);
        consumed |= upto;
        lf &= !bit;
        round += 1;
    }
    account(s, base, w, !consumed);
    true
}

/// Words per `scan_words_callback` call: each callback call costs about as much as a
/// word's work (a BPF-to-BPF call and return, with return-thunk mitigations on this CPU).
const SCAN_CHUNK: usize = 8;

unsafe extern "C" fn scan_words_callback(i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    let words = get(s, V_WORDS) as usize;
    let first = i as usize * SCAN_CHUNK;
    let mut j = 0;
    while j < SCAN_CHUNK {
        if first + j >= words {
            return 1;
        }
        if !scan_word(s, first + j) {
            return 1;
        }
        j += 1;
    }
    0
}

// ---------------------------------------------------------------------------------------
// Pass 2: headers.

#[inline(always)]
fn fail_line(s: *mut Scratch) -> bool {
    set(s, V_ERR, 1);
    false
}

#[inline(always)]
fn push_segment(s: *mut Scratch, start: usize, len: usize, kind: u16) {
    let n = get(s, V_SEGS) as usize;
    set(s, V_COPY_LEN, get(s, V_COPY_LEN) + len as u32);
    if n > 0 && kind == SEG_COPY {
        let last = unsafe { &mut (*s).reg.segs[(n - 1) & SEG_MASK] };
        if last[2] == SEG_COPY && last[0] as usize + last[1] as usize == start {
            last[1] += len as u16;
            return;
        }
    }
    unsafe { (*s).reg.segs[n & SEG_MASK] = [start as u16, len as u16, kind, 0] };
    set(s, V_SEGS, n as u32 + 1);
}

/// Classifies header line `idx`. Returns false to stop (`V_ERR` set on a failure).
#[inline(always)]
fn scan_line(s: *mut Scratch, idx: usize) -> bool {
    let [start, colon, end, _] = unsafe { (*s).reg.lines[idx & LINE_MASK] };
    let (start, colon, end) = (start as usize, colon as usize, end as usize);
    let cr = end - 1;
    let line_len = end + 1 - start;
    if is_ws(input_at(s, start)) {
        // A continuation line: only Via and From (copied) and other headers may fold.
        let current = get(s, V_CURRENT);
        if current == K_VIA || current == K_FROM {
            push_segment(s, start, line_len, SEG_COPY);
            return true;
        }
        return current == K_OTHER || fail_line(s);
    }
    if colon == 0 || colon == start {
        return fail_line(s);
    }
    let kind = classify(s, start);
    if kind == K_BAD {
        return fail_line(s);
    }
    set(s, V_CURRENT, kind);
    if kind == K_OTHER {
        return true;
    }
    set(s, V_COUNT + kind as usize, get(s, V_COUNT + kind as usize) + 1);
    let mut vs = colon + 1;
    let mut i = 0;
    while i < 16 {
        if vs >= cr || !is_ws(input_at(s, vs)) {
            break;
        }
        vs += 1;
        i += 1;
    }
    if vs >= cr || is_ws(input_at(s, vs)) {
        return fail_line(s);
    }
    if kind >= K_TO {
        if is_ws(input_at(s, cr - 1)) {
            return fail_line(s);
        }
        set(s, V_VALUE + 2 * kind as usize, vs as u32);
        set(s, V_VALUE + 2 * kind as usize + 1, cr as u32);
    }
    if kind <= K_CSEQ {
        push_segment(s, start, line_len, if kind == K_TO { SEG_TO } else { SEG_COPY });
    }
    true
}

/// Header lines per `scan_lines_callback` call (4 measured no faster and cost the
/// verifier 126k more instructions).
const LINE_CHUNK: usize = 1;

unsafe extern "C" fn scan_lines_callback(i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    // Header lines are 1 to `V_LINES - 2` (not the request line, not the empty line).
    let last = get(s, V_LINES) as usize - 2;
    let first = 1 + i as usize * LINE_CHUNK;
    let mut j = 0;
    while j < LINE_CHUNK {
        if first + j > last || !scan_line(s, first + j) {
            return 1;
        }
        j += 1;
    }
    0
}

// ---------------------------------------------------------------------------------------
// Hashing, the To-tag search.

/// The range a hashing, searching or probing callback works on, and its result, live in
/// the scratch (`V_RANGE_*`, `reg.acc`): the callbacks get only the scratch pointer, so
/// the program's stack stays small (callbacks add their frames to it).
#[inline(always)]
fn set_range(s: *mut Scratch, start: usize, end: usize, acc: u64) {
    set(s, V_RANGE_START, start as u32);
    set(s, V_RANGE_END, end as u32);
    unsafe { core::ptr::write_volatile(&raw mut (*s).reg.acc, acc) };
}

#[inline(always)]
fn range(s: *mut Scratch) -> (usize, usize) {
    (get(s, V_RANGE_START) as usize, get(s, V_RANGE_END) as usize)
}

#[inline(always)]
fn acc(s: *mut Scratch) -> u64 {
    unsafe { core::ptr::read_volatile(&raw const (*s).reg.acc) }
}

#[inline(always)]
fn set_acc(s: *mut Scratch, v: u64) {
    unsafe { core::ptr::write_volatile(&raw mut (*s).reg.acc, v) }
}

/// Runs `callback` `n` times on the scratch.
#[inline(always)]
fn run_loop(s: *mut Scratch, n: u32, callback: unsafe extern "C" fn(u64, *mut c_void) -> c_long) {
    let mut cb = s;
    unsafe { bpf_loop(n, callback as *mut c_void, (&raw mut cb).cast(), 0) };
}

/// Words hashed per `hash_callback` call.
const HASH_CHUNK: usize = 8;

unsafe extern "C" fn hash_callback(i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    let (start, end) = range(s);
    let mut h = acc(s);
    let mut j = 0;
    while j < HASH_CHUNK {
        let at = start + 8 * (i as usize * HASH_CHUNK + j);
        if at >= end {
            break;
        }
        let mut w = window(s, at);
        let rest = end - at;
        if rest < 8 {
            w &= (1u64 << ((rest & 7) * 8)) - 1;
        }
        h = mix(h, w);
        j += 1;
    }
    set_acc(s, h);
    0
}

/// `regedge_common::hash::hash_bytes` of the input bytes `[start, end)`.
#[inline(always)]
fn hash_range(s: *mut Scratch, start: usize, end: usize) -> u64 {
    let len = end - start;
    set_range(s, start, end, hash_start(len));
    let chunk = 8 * HASH_CHUNK as u32;
    run_loop(s, ((len as u32 + chunk - 1) / chunk) & 0x3ff, hash_callback);
    acc(s)
}

unsafe extern "C" fn tag_callback(i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    let (start, end) = range(s);
    let base = start + 8 * i as usize;
    let mut semis = eq_mask(window(s, base), b';');
    let mut round = 0;
    while round < 8 {
        if semis == 0 {
            break;
        }
        let bit = semis & semis.wrapping_neg();
        let k = base + byte_index(bit);
        if k >= end {
            break;
        }
        let found = if acc(s) == SEARCH_KEEPALIVE {
            matches(window(s, k + 1), KEEPALIVE[0]) && matches(window(s, k + 9), KEEPALIVE[1])
        } else {
            matches(window(s, k + 1), TAG_PARAM)
        };
        if found {
            set_acc(s, acc(s) | FOUND);
            return 1;
        }
        semis &= !bit;
        round += 1;
    }
    0
}

const SEARCH_TAG: u64 = 0;
const SEARCH_KEEPALIVE: u64 = 2;
const FOUND: u64 = 1;

/// Whether `[start, end)` holds `;tag=` (`SEARCH_TAG`) or `;cisco-keep-alive`
/// (`SEARCH_KEEPALIVE`), case-insensitive: a word per step, the windows compared only
/// at the semicolons.
#[inline(always)]
fn has_param(s: *mut Scratch, start: usize, end: usize, which: u64) -> bool {
    set_range(s, start, end, which);
    run_loop(s, (((end - start) as u32 + 7) / 8) & 0x3ff, tag_callback);
    acc(s) & FOUND != 0
}

// ---------------------------------------------------------------------------------------
// The backup probe: the Contact value's parameters, a byte per step.

#[inline(always)]
fn reset_param(s: *mut Scratch) {
    set(s, P_PQUOTED, 0);
    set(s, P_KEY_START, 0);
    set(s, P_KEY_END, 0);
    set(s, P_VAL_START, 0);
    set(s, P_VAL_END, 0);
    set(s, P_EQ, 0);
}

/// At the end of one parameter: note `cisco-keep-alive` and the first `expires`.
#[inline(always)]
fn finish_param(s: *mut Scratch) {
    let ks = get(s, P_KEY_START) as usize;
    let ke = get(s, P_KEY_END) as usize;
    let flags = get(s, P_FLAGS);
    if ks == 0 {
        return;
    }
    let len = ke - ks;
    if len == 16 && matches(window(s, ks), KEEPALIVE[0]) && matches(window(s, ks + 8), KEEPALIVE[1]) {
        set(s, P_FLAGS, flags | PF_KEEPALIVE);
    } else if len == 7 && flags & PF_EXPIRES_FOUND == 0 && matches(window(s, ks), EXPIRES_PARAM) {
        set(s, P_FLAGS, flags | PF_EXPIRES_FOUND);
        set(s, P_EXPIRES, (get(s, P_VAL_START) << 16) | get(s, P_VAL_END));
    }
}

/// One byte of the Contact value (`contact.rs`: `split_values`, `Contact::parse`,
/// `split_params`, `param`). Returns false to stop.
#[inline(always)]
fn probe_step(s: *mut Scratch, k: usize) -> bool {
    let c = input_at(s, k);
    // split_values: a comma outside quotes and angle brackets means several contacts.
    let quoted = get(s, P_QUOTED);
    if get(s, P_ESCAPED) != 0 {
        set(s, P_ESCAPED, 0);
    } else if c == b'\\' && quoted != 0 {
        set(s, P_ESCAPED, 1);
    } else if c == b'"' {
        set(s, P_QUOTED, quoted ^ 1);
    } else if c == b'<' && quoted == 0 {
        set(s, P_ANGLED, 1);
    } else if c == b'>' && quoted == 0 {
        set(s, P_ANGLED, 0);
    } else if c == b',' && quoted == 0 && get(s, P_ANGLED) == 0 {
        set(s, P_FLAGS, get(s, P_FLAGS) | PF_MULTI);
        return false;
    }
    let flags = get(s, P_FLAGS);
    if get(s, P_PHASE) == 0 {
        // The URI: up to the first '>' of a name-addr, the first ';' of an addr-spec.
        if flags & PF_NAME_ADDR != 0 {
            if c == b'>' {
                set(s, P_PHASE, 1);
                reset_param(s);
            }
        } else if c == b';' {
            set(s, P_PHASE, 1);
            reset_param(s);
        } else if c == b'<' || c == b'"' || is_ws(c) {
            set(s, P_FLAGS, flags | PF_BAD_URI);
            return false;
        }
        return true;
    }
    if c == b'<' && flags & PF_NAME_ADDR == 0 {
        // `Contact::parse` would take this `<` for a name-addr.
        set(s, P_FLAGS, flags | PF_BAD_URI);
        return false;
    }
    if c == b'"' {
        set(s, P_PQUOTED, get(s, P_PQUOTED) ^ 1);
    }
    if c == b';' && get(s, P_PQUOTED) == 0 {
        finish_param(s);
        reset_param(s);
        return true;
    }
    if c == b'=' && get(s, P_EQ) == 0 {
        set(s, P_EQ, 1);
        return true;
    }
    if !is_ws(c) {
        let (start, end) = if get(s, P_EQ) == 0 { (P_KEY_START, P_KEY_END) } else { (P_VAL_START, P_VAL_END) };
        if get(s, start) == 0 {
            set(s, start, k as u32);
        }
        set(s, end, k as u32 + 1);
    }
    true
}

unsafe extern "C" fn probe_callback(i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    let start = get(s, V_RANGE_START) as usize;
    if probe_step(s, start + i as usize) { 0 } else { 1 }
}

/// Whether the Contact value `[start, end)` (trimmed) is Cisco's backup probe: one
/// contact, a `cisco-keep-alive` parameter, expires 0 (the parameter, else the header).
#[inline(always)]
fn is_backup_probe(s: *mut Scratch, start: usize, end: usize, header_expires: Option<u32>) -> bool {
    // Most REGISTERs without an entry are not probes: look for the flag a word per step
    // before parsing the parameters a byte per step. (`; cisco-keep-alive`, with space
    // after the semicolon, is not recognised: it passes as RegisterUnknown.)
    if !has_param(s, start, end, SEARCH_KEEPALIVE) {
        return false;
    }
    let mut i = P_QUOTED;
    while i <= P_EXPIRES {
        set(s, i, 0);
        i += 1;
    }
    let first = input_at(s, start);
    if first == b'<' {
        set(s, P_FLAGS, PF_NAME_ADDR);
    } else if first == b';' {
        return false;
    }
    set_range(s, start, end, 0);
    run_loop(s, (end - start) as u32 & 0x7ff, probe_callback);
    if get(s, P_PHASE) == 1 {
        finish_param(s);
    }
    let flags = get(s, P_FLAGS);
    if flags & (PF_MULTI | PF_BAD_URI) != 0 || flags & PF_KEEPALIVE == 0 {
        return false;
    }
    if flags & PF_NAME_ADDR != 0 {
        // `<` then a non-empty URI then `>`.
        if get(s, P_PHASE) != 1 || is_ws(input_at(s, start + 1)) || input_at(s, start + 1) == b'>' {
            return false;
        }
    }
    if flags & PF_EXPIRES_FOUND == 0 {
        return header_expires == Some(0);
    }
    let range = get(s, P_EXPIRES);
    let (mut vs, mut ve) = ((range >> 16) as usize, (range & 0xffff) as usize);
    if ve >= vs + 2 && input_at(s, vs) == b'"' && input_at(s, ve - 1) == b'"' {
        vs += 1;
        ve -= 1;
    }
    // parse_u32: 1 to 10 digits; zero only when every digit is 0.
    if vs == 0 || ve <= vs || ve - vs > 10 {
        return false;
    }
    let mut k = 0;
    while k < 10 {
        if vs + k >= ve {
            break;
        }
        if input_at(s, vs + k) != b'0' {
            return false;
        }
        k += 1;
    }
    true
}

// ---------------------------------------------------------------------------------------
// Numbers (each in its own callback: the verifier sees one path per digit count there,
// not in the main program).

/// CSeq value: `<1 to 10 digits, at most 2^31-1><SP/HT, 1 to 16>REGISTER` → `V_NUMBER`.
#[inline(always)]
fn parse_cseq(s: *mut Scratch) -> bool {
    let (cs, ce) = value(s, K_CSEQ);
    if ce < cs + 10 || window(s, ce - 8) != u64::from_le_bytes(*b"REGISTER") {
        return false;
    }
    let mut number = 0u64;
    let mut k = 0;
    while k < 10 {
        let c = input_at(s, cs + k);
        if !c.is_ascii_digit() {
            break;
        }
        number = number * 10 + (c - b'0') as u64;
        k += 1;
    }
    if k == 0 || number > CSEQ_MAX {
        return false;
    }
    let gap_start = cs + k;
    let gap_end = ce - 8;
    if gap_end <= gap_start || gap_end - gap_start > 16 {
        return false;
    }
    let mut j = 0;
    while j < 16 {
        if gap_start + j >= gap_end {
            break;
        }
        if !is_ws(input_at(s, gap_start + j)) {
            return false;
        }
        j += 1;
    }
    set(s, V_NUMBER, number as u32);
    true
}

unsafe extern "C" fn cseq_callback(_i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    if !parse_cseq(s) {
        set(s, V_ERR, 1);
    }
    1
}

/// Expires value: 1 to 9 digits → `V_NUMBER`.
#[inline(always)]
fn parse_expires(s: *mut Scratch) -> bool {
    let (es, ee) = value(s, K_EXPIRES);
    if ee <= es || ee > es + 9 {
        return false;
    }
    let mut v = 0u32;
    let mut k = 0;
    while k < 9 {
        if es + k >= ee {
            break;
        }
        let c = input_at(s, es + k);
        if !c.is_ascii_digit() {
            return false;
        }
        v = v * 10 + (c - b'0') as u32;
        k += 1;
    }
    set(s, V_NUMBER, v);
    true
}

unsafe extern "C" fn expires_callback(_i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    if !parse_expires(s) {
        set(s, V_ERR, 1);
    }
    1
}

// ---------------------------------------------------------------------------------------
// The reply.

/// What `copy_callback` works with: the scratch and the packet it copies from.
#[repr(C)]
struct CopyCtx {
    s: *mut Scratch,
    xdp: *mut xdp_md,
}

unsafe extern "C" fn copy_callback(i: u64, ctx: *mut c_void) -> c_long {
    let c = ctx as *mut CopyCtx;
    let (s, xdp) = unsafe { ((*c).s, (*c).xdp) };
    let [start, len, kind, _] = unsafe { (*s).reg.segs[i as usize & SEG_MASK] };
    let mut o = get(s, V_OUT) as usize;
    if kind == SEG_CONTACT_URI {
        o = out_text(s, o, b"Contact: <");
    }
    // Straight from the packet (one helper call, verified once; the payload in the
    // scratch is a copy of the same bytes). `OUT_SLACK` covers any masked length.
    let n = len as u32 & BUF_MASK as u32;
    if n == 0 {
        set(s, V_ERR, 1);
        return 1;
    }
    let from = get(s, V_PAYLOAD_OFF) + start as u32;
    if unsafe { bpf_xdp_load_bytes(xdp, from, out_at(s, o).cast(), n) } != 0 {
        set(s, V_ERR, 1);
        return 1;
    }
    o += n as usize;
    if kind == SEG_TO && get(s, V_TO_TAGGED) == 0 {
        o -= 2;
        o = out_text(s, o, b";tag=");
        let tag = unsafe { (*s).tag };
        let mut t = 0;
        while t < TO_TAG_LEN {
            out_byte(s, o + t, tag[t]);
            t += 1;
        }
        o = out_text(s, o + TO_TAG_LEN, b"\r\n");
    }
    set(s, V_OUT, o as u32);
    0
}

/// Decimal digits of `v`.
#[inline(always)]
fn digits(v: u32) -> usize {
    let mut n = 1;
    let mut limit = 10u64;
    while n < 10 {
        if (v as u64) < limit {
            break;
        }
        limit *= 10;
        n += 1;
    }
    n
}

/// `v / 10` for any `u32` without a division (BPF has no multiply-high, so LLVM keeps
/// divisions by constants as divisions, which are slow).
#[inline(always)]
fn div10(v: u64) -> u64 {
    (v * 0xcccc_cccd) >> 35
}

/// Writes `v` in decimal at `o`; returns the offset after it.
#[inline(always)]
fn out_decimal(s: *mut Scratch, o: usize, v: u32) -> usize {
    let n = digits(v);
    let p = out_at(s, o);
    let mut v = v as u64;
    let mut i = 0;
    while i < 10 {
        if i >= n {
            break;
        }
        let q = div10(v);
        unsafe { *p.add((n - 1 - i) & 15) = b'0' + (v - q * 10) as u8 };
        v = q;
        i += 1;
    }
    o + n
}

const DAYS: [[u8; 4]; 8] = [*b"Thu,", *b"Fri,", *b"Sat,", *b"Sun,", *b"Mon,", *b"Tue,", *b"Wed,", *b"Thu,"];
const MONTHS: [[u8; 4]; 16] = [
    *b" Jan", *b" Feb", *b" Mar", *b" Apr", *b" May", *b" Jun", *b" Jul", *b" Aug", *b" Sep", *b" Oct", *b" Nov",
    *b" Dec", *b" Jan", *b" Jan", *b" Jan", *b" Jan",
];

/// Formats `unix_secs` as an IMF-fixdate (`forward::http_date`) into `reg.date`.
#[inline(always)]
fn format_date(s: *mut Scratch, unix_secs: u64) {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = regedge_common::date::civil_from_days(days);
    let weekday = opaque((days % 7) as usize) & 7;
    let month_index = opaque((month - 1) as usize) & 15;
    let d = unsafe { &mut (*s).reg.date };
    let two = |d: &mut [u8; DATE_LEN + 3], at: usize, v: u64| {
        d[at] = b'0' + (v / 10 % 10) as u8;
        d[at + 1] = b'0' + (v % 10) as u8;
    };
    d[..4].copy_from_slice(&DAYS[weekday]);
    d[4] = b' ';
    two(d, 5, day);
    d[7..11].copy_from_slice(&MONTHS[month_index]);
    d[11] = b' ';
    two(d, 12, year / 100);
    two(d, 14, year);
    d[16] = b' ';
    two(d, 17, secs / 3600);
    d[19] = b':';
    two(d, 20, secs / 60 % 60);
    d[22] = b':';
    two(d, 23, secs % 60);
    d[25..29].copy_from_slice(b" GMT");
}

/// Whether the cached Date is not the one of `unix_ns`.
#[inline(always)]
fn date_is_stale(s: *mut Scratch, unix_ns: u64) -> bool {
    let cached = unsafe { core::ptr::read_volatile(&raw const (*s).reg.date_ns) };
    cached == 0 || unix_ns < cached || unix_ns - cached >= 1_000_000_000
}

/// Formats the Date of the unix time in `V_UNIX_*` into the cache (its own callback: the
/// verifier adds each callback's stack to the program's).
unsafe extern "C" fn date_callback(_i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    let unix_ns = get(s, V_UNIX_LO) as u64 | (get(s, V_UNIX_HI) as u64) << 32;
    let secs = unix_ns / 1_000_000_000;
    format_date(s, secs);
    unsafe { core::ptr::write_volatile(&raw mut (*s).reg.date_ns, secs * 1_000_000_000) };
    1
}

/// Writes `Date: <cached date>\r\n` at `o`.
#[inline(always)]
fn out_date(s: *mut Scratch, o: usize) -> usize {
    let o = out_text(s, o, b"Date: ");
    let p = out_at(s, o);
    let d = unsafe { &(*s).reg.date };
    let mut i = 0;
    while i < DATE_LEN {
        unsafe { *p.add(i) = d[i] };
        i += 1;
    }
    out_text(s, o + DATE_LEN, b"\r\n")
}

// ---------------------------------------------------------------------------------------

/// What to write back once the reply is on its way.
pub struct Commit {
    /// The entry is looked up again by the caller: a map value pointer returned through
    /// the caller's stack is read back in pieces, which the verifier refuses.
    pub call_id_key: u64,
    pub cseq: u32,
    pub grant: u32,
    pub now_ms: u64,
}

/// The answer to a REGISTER: reply length in `scratch.output`, its kind, and the entry
/// update for a refresh.
pub struct Answer {
    pub len: usize,
    pub kind: ReplyKind,
    pub commit: Option<Commit>,
}

#[inline(always)]
fn value(s: *mut Scratch, kind: u32) -> (usize, usize) {
    (get(s, V_VALUE + 2 * kind as usize) as usize, get(s, V_VALUE + 2 * kind as usize + 1) as usize)
}

#[inline(always)]
fn read16(p: *const [u8; 16]) -> (u64, u64) {
    unsafe { ((p as *const u64).read_unaligned(), (p as *const u64).add(1).read_unaligned()) }
}

/// Decides on the REGISTER in `scratch.input` (`plen` bytes, starting `REGISTER`) and
/// builds the reply in `scratch.output`.
/// Not inlined: its stack frame is separate from the program's, so that the program, this
/// function and a callback stay within the 512-byte stack together.
#[inline(never)]
pub fn answer(xdp: *mut xdp_md, udp: &Udp, s: *mut Scratch, plen: usize) -> Result<Answer, PassReason> {
    let settings = maps::settings().ok_or(PassReason::HelperFailed)?;
    if settings.to_tag == [0; TO_TAG_LEN] || input_at(s, 8) != b' ' {
        return Err(PassReason::RegisterUnsupported);
    }
    let date = settings.flags & SETTING_DATE_HEADER != 0;
    let realtime_minus_tai_ns = settings.realtime_minus_tai_ns as u64;
    unsafe { (*s).tag = settings.to_tag };
    let mut i = 0;
    while i < P_QUOTED {
        set(s, i, 0);
        i += 1;
    }
    set(s, V_CURRENT, K_NONE);
    set(s, V_PAYLOAD_OFF, udp.payload_off() as u32);
    set(s, V_TRAILER, if date { TRAILER_DATE } else { 0 });
    set(s, V_REALTIME_LO, realtime_minus_tai_ns as u32);
    set(s, V_REALTIME_HI, (realtime_minus_tai_ns >> 32) as u32);

    // Rules 1 and 2: lines, framing, the request line.
    let words = (plen as u32 + 7) / 8;
    set(s, V_WORDS, words);
    run_loop(s, ((words + SCAN_CHUNK as u32 - 1) / SCAN_CHUNK as u32) & 0x3ff, scan_words_callback);
    let lines = get(s, V_LINES) as usize;
    let done = get(s, V_DONE);
    if lines == 0 {
        return Err(PassReason::RegisterUnsupported);
    }
    let e0 = unsafe { (*s).reg.lines[0][2] } as usize;
    if get(s, V_SP0) != 2 || e0 < 19 || window(s, e0 - 9) != u64::from_le_bytes(*b" SIP/2.0") {
        return Err(PassReason::RegisterUnsupported);
    }
    if done == DONE_ERR {
        return Err(PassReason::RegisterUnsupported);
    }
    if done != DONE_OK {
        return Err(PassReason::RegisterTruncated);
    }
    let bare_cr = get(s, V_BARE_CR);
    if bare_cr != 0 && bare_cr <= get(s, V_END) {
        return Err(PassReason::RegisterUnsupported);
    }
    if (get(s, V_END) as usize) < plen {
        return Err(PassReason::RegisterBody);
    }

    // Rule 3: headers.
    let header_lines = (lines as u32).saturating_sub(2);
    run_loop(s, ((header_lines + LINE_CHUNK as u32 - 1) / LINE_CHUNK as u32) & 0x3f, scan_lines_callback);
    if get(s, V_ERR) != 0 {
        return Err(PassReason::RegisterUnsupported);
    }
    let n = |kind: u32| get(s, V_COUNT + kind as usize);
    if n(K_VIA) == 0
        || n(K_FROM) != 1
        || n(K_TO) != 1
        || n(K_CALL_ID) != 1
        || n(K_CSEQ) != 1
        || n(K_CONTACT) != 1
        || n(K_EXPIRES) > 1
        || n(K_AUTH) > 1
    {
        return Err(PassReason::RegisterUnsupported);
    }

    // Rule 4: CSeq `<digits> REGISTER`, Expires digits.
    run_loop(s, 1, cseq_callback);
    if get(s, V_ERR) != 0 {
        return Err(PassReason::RegisterUnsupported);
    }
    let cseq = get(s, V_NUMBER);
    let header_expires = if n(K_EXPIRES) == 1 {
        run_loop(s, 1, expires_callback);
        if get(s, V_ERR) != 0 {
            return Err(PassReason::RegisterUnsupported);
        }
        Some(get(s, V_NUMBER))
    } else {
        None
    };

    decide(udp, s, cseq, header_expires)?;
    // One reply builder for refreshes and probes: `decide` left everything it needs in
    // the scratch, so the verifier sees one path here, not one per kind.
    let len = build(s, xdp)?;
    if len > plen {
        return Err(PassReason::RegisterUnsupported);
    }
    if get(s, V_KIND) == KIND_PROBE {
        return Ok(Answer { len, kind: ReplyKind::BackupProbe, commit: None });
    }
    let wide = |lo: usize, hi: usize| get(s, lo) as u64 | (get(s, hi) as u64) << 32;
    Ok(Answer {
        len,
        kind: ReplyKind::Register,
        commit: Some(Commit {
            call_id_key: wide(V_KEY_LO, V_KEY_HI),
            cseq: get(s, V_NEW_CSEQ),
            grant: get(s, V_GRANT),
            now_ms: wide(V_NOW_LO, V_NOW_HI),
        }),
    })
}

/// Rules 5 to 13 for the REGISTER scanned into the scratch: answered as a refresh of its
/// entry or as a backup probe, or why not. Leaves the reply's kind, grant and trailer and
/// the entry update in the scratch.
#[inline(always)]
fn decide(udp: &Udp, s: *mut Scratch, cseq: u32, header_expires: Option<u32>) -> Result<(), PassReason> {
    let n = |kind: u32| get(s, V_COUNT + kind as usize);
    // Rule 5: the binding.
    let (ids, ide) = value(s, K_CALL_ID);
    let key = hash_range(s, ids, ide);
    let (ts, te) = value(s, K_TO);
    let (ms, me) = value(s, K_CONTACT);
    let Some(entry) = maps::binding(key) else {
        if !is_backup_probe(s, ms, me, header_expires) {
            return Err(PassReason::RegisterUnknown);
        }
        set(s, V_KIND, KIND_PROBE);
        return Ok(());
    };

    // Rule 6: the flow.
    let e = unsafe { &*entry };
    if e.family != udp.family
        || e.peer_port_be != udp.sport
        || e.local_port_be != udp.dport
        || read16(&raw const e.peer_addr) != read16(&raw const udp.saddr)
        || read16(&raw const e.local_addr) != read16(&raw const udp.daddr)
    {
        return Err(PassReason::RegisterOtherFlow);
    }
    // Rule 7.
    if e.flags & BINDING_PASS != 0 {
        return Err(PassReason::RegisterFlagged);
    }
    // Rule 8: To and Contact.
    let to_hash = hash_range(s, ts, te);
    let contact_hash = hash_range(s, ms, me);
    if identity(to_hash, contact_hash) != e.identity {
        return Err(PassReason::RegisterOtherIdentity);
    }
    // Rule 9: credentials.
    if n(K_AUTH) == 1 {
        let (auth_start, auth_end) = value(s, K_AUTH);
        if hash_range(s, auth_start, auth_end) != e.auth {
            return Err(PassReason::RegisterAuthChanged);
        }
    }
    // Rule 10.
    if cseq <= e.cseq {
        return Err(PassReason::RegisterOldCseq);
    }
    // Rule 11: expiry and grant.
    let requested = if e.contact_expires != NO_CONTACT_EXPIRES { Some(e.contact_expires) } else { header_expires };
    if requested == Some(0) {
        return Err(PassReason::RegisterExpiresZero);
    }
    let grant = requested.unwrap_or(u32::MAX).min(e.grant_ceiling);
    // Rule 12: the deadline.
    let now_ms = unsafe { bpf_ktime_get_ns() } / 1_000_000;
    if now_ms + grant as u64 * 1000 >= e.absorb_until_ms {
        return Err(PassReason::RegisterDeadline);
    }
    let uri_off = e.contact_uri_off as usize;
    let uri_len = e.contact_uri_len as usize;
    if uri_len == 0 || ms + uri_off + uri_len > me {
        return Err(PassReason::RegisterUnsupported);
    }
    // The contact URI is the last copy segment, after `Contact: <`.
    let nseg = get(s, V_SEGS) as usize;
    unsafe { (*s).reg.segs[nseg & SEG_MASK] = [(ms + uri_off) as u16, uri_len as u16, SEG_CONTACT_URI, 0] };
    set(s, V_SEGS, nseg as u32 + 1);
    set(s, V_KIND, KIND_REGISTER);
    set(s, V_TRAILER, get(s, V_TRAILER) | TRAILER_CONTACT);
    set(s, V_GRANT, grant);
    set(s, V_NEW_CSEQ, cseq);
    set(s, V_KEY_LO, key as u32);
    set(s, V_KEY_HI, (key >> 32) as u32);
    set(s, V_NOW_LO, now_ms as u32);
    set(s, V_NOW_HI, (now_ms >> 32) as u32);
    Ok(())
}

/// Builds the reply in `scratch.output`: the status line, the copy segments (To-tag
/// added when the To value has none), the trailer `V_TRAILER` asks for. Returns its
/// length.
#[inline(always)]
fn build(s: *mut Scratch, xdp: *mut xdp_md) -> Result<usize, PassReason> {
    let (ts, te) = value(s, K_TO);
    set(s, V_TO_TAGGED, has_param(s, ts, te, SEARCH_TAG) as u32);
    if get(s, V_TRAILER) & TRAILER_DATE != 0 {
        let realtime_minus_tai_ns = (get(s, V_REALTIME_LO) as u64 | (get(s, V_REALTIME_HI) as u64) << 32) as i64;
        let ns = unix_ns(realtime_minus_tai_ns);
        if date_is_stale(s, ns) {
            set(s, V_UNIX_LO, ns as u32);
            set(s, V_UNIX_HI, (ns >> 32) as u32);
            run_loop(s, 1, date_callback);
        }
    }
    unsafe {
        *out_word(s, 0) = u64::from_le_bytes(*b"SIP/2.0 ");
        *out_word(s, 1) = u64::from_le_bytes(*b"200 OK\r\n");
    }
    set(s, V_OUT, STATUS_200_OK.len() as u32);
    let n = get(s, V_SEGS);
    let mut copy_ctx = CopyCtx { s, xdp };
    unsafe { bpf_loop(n & 0x7f, copy_callback as *mut c_void, (&raw mut copy_ctx).cast(), 0) };
    if get(s, V_ERR) != 0 {
        return Err(PassReason::HelperFailed);
    }
    run_loop(s, 1, trailer_callback);
    Ok(get(s, V_OUT) as usize)
}

/// After the copied headers: `Contact: <uri>;expires=G` and `Expires: G` for a refresh
/// (the URI itself is the last copy segment), the Date line, `Content-Length: 0`.
unsafe extern "C" fn trailer_callback(_i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    let trailer = get(s, V_TRAILER);
    let mut o = get(s, V_OUT) as usize & BUF_MASK;
    if trailer & TRAILER_CONTACT != 0 {
        let grant = get(s, V_GRANT);
        o = out_text(s, o, b">;expires=");
        o = out_decimal(s, o, grant) & BUF_MASK;
        o = out_text(s, o, b"\r\nExpires: ");
        o = out_decimal(s, o, grant) & BUF_MASK;
        o = out_text(s, o, b"\r\n");
    }
    if trailer & TRAILER_DATE != 0 {
        o = out_date(s, o) & BUF_MASK;
    }
    o = out_text(s, o, CONTENT_LENGTH_0);
    set(s, V_OUT, o as u32);
    1
}

#[inline(always)]
fn unix_ns(realtime_minus_tai_ns: i64) -> u64 {
    let tai = unsafe { bpf_ktime_get_tai_ns() } as i64;
    let unix_ns = tai.wrapping_add(realtime_minus_tai_ns);
    if unix_ns < 0 { 0 } else { unix_ns as u64 }
}
