//! Byte-pattern helpers the SIP scanners share: eight-byte windows compared against
//! compile-time patterns, letters case-insensitively.

/// `(pattern, mask)` for comparing a window against `text` (at most eight bytes): letters
/// compare case-insensitively, every other byte exactly.
pub const fn pattern(text: &[u8]) -> (u64, u64) {
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

/// Whether the little-endian window `w` starts with the pattern `p`.
#[inline(always)]
pub fn matches(w: u64, p: (u64, u64)) -> bool {
    let letters = p.0 & 0x2020_2020_2020_2020 & p.1;
    (w | letters) & p.1 == p.0
}

/// SP or HT.
#[inline(always)]
pub fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}
