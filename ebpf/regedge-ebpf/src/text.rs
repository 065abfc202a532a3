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
        // Letters match in either case (bit 0x20 ignored); every other byte exactly.
        let (fold, byte_mask) = if c.is_ascii_alphabetic() { (0x20u64, 0xdfu64) } else { (0, 0xff) };
        value |= ((c as u64) | fold) << (8 * i);
        mask |= byte_mask << (8 * i);
        i += 1;
    }
    (value, mask)
}

/// Whether the little-endian window `w` starts with the pattern `p`.
#[inline(always)]
pub fn matches(w: u64, p: (u64, u64)) -> bool {
    w & p.1 == p.0 & p.1
}

/// SP or HT.
#[inline(always)]
pub fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}
