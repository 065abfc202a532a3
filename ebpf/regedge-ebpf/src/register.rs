//! UDP REGISTER refreshes of bindings in `BINDINGS` → 200 OK, byte for byte what
//! userspace sends (`proxy/src/registrar/mod.rs` `absorbed_ok`): the status line, every
//! Via, From, To, Call-ID and CSeq line of the request in request order (continuation
//! lines included, the node's To-tag added to a To without one), then
//! `Contact: <uri>;expires=G`, `Expires: G`, `Date: ...` (when configured) and
//! `Content-Length: 0`. A REGISTER whose Call-ID has no entry may be Cisco's backup
//! probe (`cisco-keep-alive`, expires 0), answered with the copied headers and the Date.
//!
//! Everything else passes, counted by the first rule that failed (the order is the one
//! of the `PassReason::Register*` documentation and of the task that introduced this
//! file; see `answer`).
//!
//! Cost: the payload is split into lines by one `bpf_loop` over 8-byte words (SWAR masks
//! for LF, CR, ':' and, on the request line, SP/HT), then one `bpf_loop` over the lines
//! classifies header names with 8-byte window patterns and records value ranges and copy
//! segments. Values are hashed a word per step, segments copied a word per step. Bytes
//! are looked at one by one only in the CSeq and Expires numbers, and in the Contact
//! parameters of a REGISTER without an entry (the backup probe).

use core::ffi::c_void;

use aya_ebpf::{
    cty::c_long,
    helpers::generated::{bpf_ktime_get_ns, bpf_ktime_get_tai_ns, bpf_loop},
};
use regedge_common::{
    PassReason, ReplyKind,
    hash::{identity, mix, start as hash_start},
    maps::{BINDING_PASS, BindingEntry, NO_CONTACT_EXPIRES, SETTING_DATE_HEADER},
    sip::{CONTENT_LENGTH_0, MAX_PAYLOAD, STATUS_200_OK, TO_TAG_LEN},
};

use crate::{
    frame::Udp,
    maps::{self, BUF_MASK, Scratch},
};

/// Lines a REGISTER may have (request line and the empty line included).
pub const MAX_LINES: usize = 64;
const LINE_MASK: usize = MAX_LINES - 1;
/// Copy segments: at most one per line, plus the Contact URI.
pub const MAX_SEGS: usize = 128;
const SEG_MASK: usize = MAX_SEGS - 1;
/// State words in `RegScratch::v`.
pub const STATE_WORDS: usize = 64;

/// The REGISTER scanner's part of the per-CPU scratch.
#[repr(C)]
pub struct RegScratch {
    /// Per line: start offset, first colon (0 = none), offset of the LF.
    pub lines: [[u16; 4]; MAX_LINES],
    /// Per copy segment: start offset in the payload, length, `SEG_*` kind.
    pub segs: [[u16; 4]; MAX_SEGS],
    /// Scanner state, indexed by the `V_*` constants.
    pub v: [u32; STATE_WORDS],
}

// State words.
const V_LINES: usize = 0;
const V_START: usize = 1;
const V_COLON: usize = 2;
const V_CR: usize = 3;
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

/// Eight input bytes at `k`, little-endian.
#[inline(always)]
fn window(s: *mut Scratch, k: usize) -> u64 {
    unsafe { ((&raw const (*s).input as *const u8).add(k & BUF_MASK) as *const u64).read_unaligned() }
}

#[inline(always)]
fn out_u64(s: *mut Scratch, o: usize, v: u64) {
    unsafe { ((&raw mut (*s).output as *mut u8).add(o & BUF_MASK) as *mut u64).write_unaligned(v) }
}

#[inline(always)]
fn out_byte(s: *mut Scratch, o: usize, c: u8) {
    unsafe { *(&raw mut (*s).output as *mut u8).add(o & BUF_MASK) = c }
}

/// Writes `text` at `o`; returns the offset after it.
#[inline(always)]
fn out_text(s: *mut Scratch, o: usize, text: &[u8]) -> usize {
    let mut i = 0;
    while i < text.len() {
        out_byte(s, o + i, text[i]);
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

#[inline(always)]
fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// `(pattern, mask)` for comparing a window against `text` (at most eight bytes): letters
/// compare case-insensitively, every other byte exactly.
const fn pattern(text: &[u8]) -> (u64, u64) {
    let mut value = 0u64;
    let mut mask = 0u64;
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        let fold = if c.is_ascii_alphabetic() { 0x20u64 } else { 0 };
        value |= ((c as u64) | fold) << (8 * i);
        mask |= 0xffu64 << (8 * i);
        i += 1;
    }
    (value, mask)
}

#[inline(always)]
fn matches(w: u64, p: (u64, u64)) -> bool {
    let letters = p.0 & 0x2020_2020_2020_2020 & p.1;
    (w | letters) & p.1 == p.0
}

const fn name_pattern(text: &[u8]) -> (u64, u64, usize) {
    let (value, mask) = pattern(text);
    (value, mask, text.len())
}

const SHORT_NAMES: [((u64, u64, usize), u32); 13] = [
    (name_pattern(b"via"), K_VIA),
    (name_pattern(b"v"), K_VIA),
    (name_pattern(b"from"), K_FROM),
    (name_pattern(b"f"), K_FROM),
    (name_pattern(b"to"), K_TO),
    (name_pattern(b"t"), K_TO),
    (name_pattern(b"call-id"), K_CALL_ID),
    (name_pattern(b"i"), K_CALL_ID),
    (name_pattern(b"cseq"), K_CSEQ),
    (name_pattern(b"contact"), K_CONTACT),
    (name_pattern(b"m"), K_CONTACT),
    (name_pattern(b"expires"), K_EXPIRES),
    (name_pattern(b"authoriz"), K_AUTH),
];
const AUTH_TAIL: (u64, u64) = pattern(b"ation");
const PROXY_AUTH: [(u64, u64); 3] = [pattern(b"proxy-au"), pattern(b"thorizat"), pattern(b"ion")];
const TAG_PARAM: (u64, u64) = pattern(b"tag=");
const KEEPALIVE: [(u64, u64); 2] = [pattern(b"cisco-ke"), pattern(b"ep-alive")];
const EXPIRES_PARAM: (u64, u64) = pattern(b"expires");

/// The kind of the header whose name starts at `k` (`K_OTHER` for any other name).
#[inline(always)]
fn classify(s: *mut Scratch, k: usize) -> u32 {
    let w = window(s, k);
    let mut i = 0;
    while i < SHORT_NAMES.len() {
        let ((value, mask, len), kind) = SHORT_NAMES[i];
        if matches(w, (value, mask)) {
            let mut end = k + len;
            if kind == K_AUTH {
                if !matches(window(s, end), AUTH_TAIL) {
                    i += 1;
                    continue;
                }
                end += 5;
            }
            let next = input_at(s, end);
            if next == b':' {
                return kind;
            }
            if is_ws(next) {
                return K_BAD;
            }
        }
        i += 1;
    }
    if matches(w, PROXY_AUTH[0])
        && matches(window(s, k + 8), PROXY_AUTH[1])
        && matches(window(s, k + 16), PROXY_AUTH[2])
    {
        let next = input_at(s, k + 19);
        if next == b':' {
            return K_AUTH;
        }
        if is_ws(next) {
            return K_BAD;
        }
    }
    K_OTHER
}

// ---------------------------------------------------------------------------------------
// Pass 1: lines.

/// Accounts the bytes of `part` (0x80 bits) of the word at `base` to the current line.
#[inline(always)]
fn account(s: *mut Scratch, base: usize, w: u64, part: u64, colon: u64, cr: u64) {
    let c = colon & part;
    if c != 0 && get(s, V_COLON) == 0 {
        set(s, V_COLON, (base + byte_index(c & c.wrapping_neg())) as u32);
    }
    set(s, V_CR, get(s, V_CR) + count(cr & part));
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

/// Splits word `i` of the payload into lines. Returns false to stop.
#[inline(always)]
fn scan_word(s: *mut Scratch, i: usize) -> bool {
    let base = i * 8;
    let w = window(s, base);
    let colon = eq_mask(w, b':');
    let cr = eq_mask(w, b'\r');
    let mut lf = eq_mask(w, b'\n');
    let mut consumed = 0u64;
    let mut round = 0;
    while round < 8 {
        if lf == 0 {
            break;
        }
        let bit = lf & lf.wrapping_neg();
        let upto = bit | (bit - 1);
        account(s, base, w, upto & !consumed, colon, cr);
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
    account(s, base, w, !consumed, colon, cr);
    true
}

unsafe extern "C" fn scan_word_callback(i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    if scan_word(s, i as usize) { 0 } else { 1 }
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

unsafe extern "C" fn scan_line_callback(i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    if scan_line(s, i as usize + 1) { 0 } else { 1 }
}

// ---------------------------------------------------------------------------------------
// Hashing, the To-tag search.

#[repr(C)]
struct RangeCtx {
    s: *mut Scratch,
    start: u64,
    end: u64,
    acc: u64,
}

unsafe extern "C" fn hash_callback(i: u64, ctx: *mut c_void) -> c_long {
    let c = ctx as *mut RangeCtx;
    let (s, start, end) = unsafe { ((*c).s, (*c).start as usize, (*c).end as usize) };
    let at = start + 8 * i as usize;
    let mut w = window(s, at);
    let rest = end.wrapping_sub(at);
    if rest < 8 {
        w &= (1u64 << ((rest & 7) * 8)) - 1;
    }
    unsafe { (*c).acc = mix((*c).acc, w) };
    0
}

/// `regedge_common::hash::hash_bytes` of the input bytes `[start, end)`.
#[inline(always)]
fn hash_range(s: *mut Scratch, start: usize, end: usize) -> u64 {
    let len = end - start;
    let mut ctx = RangeCtx { s, start: start as u64, end: end as u64, acc: hash_start(len) };
    let words = (len as u32 + 7) / 8;
    unsafe { bpf_loop(words & 0x3ff, hash_callback as *mut c_void, (&raw mut ctx).cast(), 0) };
    opaque(ctx.acc)
}

unsafe extern "C" fn tag_callback(i: u64, ctx: *mut c_void) -> c_long {
    let c = ctx as *mut RangeCtx;
    let (s, start, end) = unsafe { ((*c).s, (*c).start as usize, (*c).end as usize) };
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
        if matches(window(s, k + 1), TAG_PARAM) {
            unsafe { (*c).acc = 1 };
            return 1;
        }
        semis &= !bit;
        round += 1;
    }
    0
}

/// Whether `[start, end)` holds `;tag=` (case-insensitive).
#[inline(always)]
fn has_tag(s: *mut Scratch, start: usize, end: usize) -> bool {
    let mut ctx = RangeCtx { s, start: start as u64, end: end as u64, acc: 0 };
    let words = ((end - start) as u32 + 7) / 8;
    unsafe { bpf_loop(words & 0x3ff, tag_callback as *mut c_void, (&raw mut ctx).cast(), 0) };
    opaque(ctx.acc) != 0
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
    let c = ctx as *mut RangeCtx;
    let (s, start) = unsafe { ((*c).s, (*c).start as usize) };
    if probe_step(s, start + i as usize) { 0 } else { 1 }
}

/// Whether the Contact value `[start, end)` (trimmed) is Cisco's backup probe: one
/// contact, a `cisco-keep-alive` parameter, expires 0 (the parameter, else the header).
#[inline(always)]
fn is_backup_probe(s: *mut Scratch, start: usize, end: usize, header_expires: Option<u32>) -> bool {
    let mut i = P_QUOTED;
    while i < STATE_WORDS {
        set(s, i, 0);
        i += 1;
    }
    let first = input_at(s, start);
    if first == b'<' {
        set(s, P_FLAGS, PF_NAME_ADDR);
    } else if first == b';' {
        return false;
    }
    let mut ctx = RangeCtx { s, start: start as u64, end: end as u64, acc: 0 };
    let n = (end - start) as u32;
    unsafe { bpf_loop(n & 0x7ff, probe_callback as *mut c_void, (&raw mut ctx).cast(), 0) };
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

unsafe extern "C" fn copy_callback(i: u64, ctx: *mut c_void) -> c_long {
    let s = unsafe { *(ctx as *mut *mut Scratch) };
    let [start, len, kind, _] = unsafe { (*s).reg.segs[i as usize & SEG_MASK] };
    let (start, len) = (start as usize, len as usize);
    let mut o = get(s, V_OUT) as usize;
    if kind == SEG_CONTACT_URI {
        out_u64(s, o, u64::from_le_bytes(*b"Contact:"));
        out_byte(s, o + 8, b' ');
        out_byte(s, o + 9, b'<');
        o += 10;
    }
    let words = (len + 7) / 8;
    let mut k = 0;
    while k < MAX_PAYLOAD / 8 + 1 {
        if k >= words {
            break;
        }
        out_u64(s, o + 8 * k, window(s, start + 8 * k));
        k += 1;
    }
    o += len;
    if kind == SEG_TO && get(s, V_TO_TAGGED) == 0 {
        o -= 2;
        out_u64(s, o, u64::from_le_bytes(*b";tag=\0\0\0"));
        out_u64(s, o + 5, u64::from_le_bytes(unsafe { (*s).tag }));
        out_byte(s, o + 13, b'\r');
        out_byte(s, o + 14, b'\n');
        o += 15;
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

/// Writes `v` in decimal at `o`; returns the offset after it.
#[inline(always)]
fn out_decimal(s: *mut Scratch, o: usize, v: u32) -> usize {
    let n = digits(v);
    let mut v = v;
    let mut i = 0;
    while i < 10 {
        if i >= n {
            break;
        }
        out_byte(s, o + n - 1 - i, b'0' + (v % 10) as u8);
        v /= 10;
        i += 1;
    }
    o + n
}

#[inline(always)]
fn out_2(s: *mut Scratch, o: usize, v: u64) {
    out_byte(s, o, b'0' + (v / 10 % 10) as u8);
    out_byte(s, o + 1, b'0' + (v % 10) as u8);
}

const DAYS: [[u8; 4]; 8] = [*b"Thu,", *b"Fri,", *b"Sat,", *b"Sun,", *b"Mon,", *b"Tue,", *b"Wed,", *b"Thu,"];
const MONTHS: [[u8; 4]; 16] = [
    *b" Jan", *b" Feb", *b" Mar", *b" Apr", *b" May", *b" Jun", *b" Jul", *b" Aug", *b" Sep", *b" Oct", *b" Nov",
    *b" Dec", *b" Jan", *b" Jan", *b" Jan", *b" Jan",
];

/// Writes the Date line for `unix_secs` at `o` (IMF-fixdate, `forward::http_date`).
#[inline(always)]
fn out_date(s: *mut Scratch, o: usize, unix_secs: u64) -> usize {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as u64;
    let weekday = opaque((days % 7) as usize) & 7;
    let month_index = opaque((month - 1) as usize) & 15;
    let o = out_text(s, o, b"Date: ");
    let name = DAYS[weekday];
    let mut i = 0;
    while i < 4 {
        out_byte(s, o + i, name[i]);
        i += 1;
    }
    out_byte(s, o + 4, b' ');
    out_2(s, o + 5, day);
    let name = MONTHS[month_index];
    let mut i = 0;
    while i < 4 {
        out_byte(s, o + 7 + i, name[i]);
        i += 1;
    }
    out_byte(s, o + 11, b' ');
    out_2(s, o + 12, year / 100);
    out_2(s, o + 14, year);
    out_byte(s, o + 16, b' ');
    out_2(s, o + 17, secs / 3600);
    out_byte(s, o + 19, b':');
    out_2(s, o + 20, secs / 60 % 60);
    out_byte(s, o + 22, b':');
    out_2(s, o + 23, secs % 60);
    out_text(s, o + 25, b" GMT\r\n")
}

// ---------------------------------------------------------------------------------------

/// What to write back once the reply is on its way.
pub struct Commit {
    pub entry: *mut BindingEntry,
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
#[inline(always)]
pub fn answer(udp: &Udp, s: *mut Scratch, plen: usize) -> Result<Answer, PassReason> {
    let settings = maps::settings().ok_or(PassReason::HelperFailed)?;
    if settings.to_tag == [0; TO_TAG_LEN] || input_at(s, 8) != b' ' {
        return Err(PassReason::RegisterUnsupported);
    }
    let date = settings.flags & SETTING_DATE_HEADER != 0;
    let realtime_minus_tai_ns = settings.realtime_minus_tai_ns;
    unsafe { (*s).tag = settings.to_tag };
    let mut i = 0;
    while i < P_QUOTED {
        set(s, i, 0);
        i += 1;
    }
    set(s, V_CURRENT, K_NONE);

    // Rules 1 and 2: lines, framing, the request line.
    let mut cb = s;
    let words = (plen as u32 + 7) / 8;
    unsafe { bpf_loop(words & 0x3ff, scan_word_callback as *mut c_void, (&raw mut cb).cast(), 0) };
    let lines = get(s, V_LINES) as usize;
    let done = get(s, V_DONE);
    if lines == 0 {
        return Err(PassReason::RegisterUnsupported);
    }
    let e0 = unsafe { (*s).reg.lines[0][2] } as usize;
    if get(s, V_SP0) != 2 || e0 < 20 || window(s, e0 - 9) != u64::from_le_bytes(*b" SIP/2.0") {
        return Err(PassReason::RegisterUnsupported);
    }
    if done == DONE_ERR {
        return Err(PassReason::RegisterUnsupported);
    }
    if done != DONE_OK {
        return Err(PassReason::RegisterTruncated);
    }
    if get(s, V_CR) != lines as u32 {
        return Err(PassReason::RegisterUnsupported);
    }
    if (get(s, V_END) as usize) < plen {
        return Err(PassReason::RegisterBody);
    }

    // Rule 3: headers.
    let header_lines = (lines as u32).saturating_sub(2);
    unsafe { bpf_loop(header_lines & 0x3f, scan_line_callback as *mut c_void, (&raw mut cb).cast(), 0) };
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
    unsafe { bpf_loop(1, cseq_callback as *mut c_void, (&raw mut cb).cast(), 0) };
    if get(s, V_ERR) != 0 {
        return Err(PassReason::RegisterUnsupported);
    }
    let cseq = get(s, V_NUMBER);
    let header_expires = if n(K_EXPIRES) == 1 {
        unsafe { bpf_loop(1, expires_callback as *mut c_void, (&raw mut cb).cast(), 0) };
        if get(s, V_ERR) != 0 {
            return Err(PassReason::RegisterUnsupported);
        }
        Some(get(s, V_NUMBER))
    } else {
        None
    };

    // Rule 5: the binding.
    let (ids, ide) = value(s, K_CALL_ID);
    let key = hash_range(s, ids, ide);
    let (ts, te) = value(s, K_TO);
    let (ms, me) = value(s, K_CONTACT);
    let trailer_date = if date { TRAILER_DATE } else { 0 };
    let Some(entry) = maps::binding(key) else {
        if !is_backup_probe(s, ms, me, header_expires) {
            return Err(PassReason::RegisterUnknown);
        }
        let len = build(s, ts, te, trailer_date, 0, realtime_minus_tai_ns);
        if len > plen {
            return Err(PassReason::RegisterUnsupported);
        }
        return Ok(Answer { len, kind: ReplyKind::BackupProbe, commit: None });
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
    // Rules 13 and 14: the reply, never longer than the request.
    let nseg = get(s, V_SEGS) as usize;
    unsafe { (*s).reg.segs[nseg & SEG_MASK] = [(ms + uri_off) as u16, uri_len as u16, SEG_CONTACT_URI, 0] };
    set(s, V_SEGS, nseg as u32 + 1);
    set(s, V_GRANT, grant);
    let len = build(s, ts, te, trailer_date | TRAILER_CONTACT, grant, realtime_minus_tai_ns);
    if len > plen {
        return Err(PassReason::RegisterUnsupported);
    }
    Ok(Answer { len, kind: ReplyKind::Register, commit: Some(Commit { entry, call_id_key: key, cseq, grant, now_ms }) })
}

/// Builds the reply in `scratch.output`: the status line, the copy segments (To-tag
/// added when the To value `[ts, te)` has none), the trailer. Returns its length.
#[inline(always)]
fn build(s: *mut Scratch, ts: usize, te: usize, trailer: u32, grant: u32, realtime_minus_tai_ns: i64) -> usize {
    set(s, V_TO_TAGGED, has_tag(s, ts, te) as u32);
    set(s, V_TRAILER, trailer);
    set(s, V_GRANT, grant);
    if trailer & TRAILER_DATE != 0 {
        let secs = unix_secs(realtime_minus_tai_ns);
        set(s, V_UNIX_LO, secs as u32);
        set(s, V_UNIX_HI, (secs >> 32) as u32);
    }
    out_u64(s, 0, u64::from_le_bytes(*b"SIP/2.0 "));
    out_u64(s, 8, u64::from_le_bytes(*b"200 OK\r\n"));
    set(s, V_OUT, STATUS_200_OK.len() as u32);
    let mut cb = s;
    let n = get(s, V_SEGS);
    unsafe {
        bpf_loop(n & 0x7f, copy_callback as *mut c_void, (&raw mut cb).cast(), 0);
        bpf_loop(1, trailer_callback as *mut c_void, (&raw mut cb).cast(), 0);
    }
    get(s, V_OUT) as usize
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
        let secs = get(s, V_UNIX_LO) as u64 | (get(s, V_UNIX_HI) as u64) << 32;
        o = out_date(s, o, secs) & BUF_MASK;
    }
    o = out_text(s, o, CONTENT_LENGTH_0);
    set(s, V_OUT, o as u32);
    1
}

#[inline(always)]
fn unix_secs(realtime_minus_tai_ns: i64) -> u64 {
    let tai = unsafe { bpf_ktime_get_tai_ns() } as i64;
    let unix_ns = tai.wrapping_add(realtime_minus_tai_ns);
    if unix_ns < 0 { 0 } else { unix_ns as u64 / 1_000_000_000 }
}
