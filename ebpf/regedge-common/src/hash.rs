//! The hashes the kernel and userspace both compute over header values, so that the XDP
//! program can compare a refresh with the binding userspace holds without the strings.
//!
//! [`hash_bytes`] works on 8-byte little-endian words (the last one zero-padded) because
//! the kernel hashes a range of its payload buffer a word per step.

/// Starting value of [`hash_bytes`] (before the length is folded in).
pub const HASH_SEED: u64 = 0x243f_6a88_85a3_08d3;
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// Folds one word into the hash.
#[inline(always)]
pub const fn mix(h: u64, word: u64) -> u64 {
    let x = (h ^ word).wrapping_mul(MULTIPLIER);
    x ^ (x >> 29)
}

/// The starting state for a value of `len` bytes.
#[inline(always)]
pub const fn start(len: usize) -> u64 {
    HASH_SEED ^ len as u64
}

/// Hash of `bytes`: `start(len)`, then [`mix`] of each 8-byte little-endian word, the
/// last one zero-padded.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = start(bytes.len());
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix(h, u64::from_le_bytes(word));
    }
    h
}

/// The `BINDINGS` key of a REGISTER: the hash of its trimmed Call-ID value.
pub fn call_id_key(call_id: &[u8]) -> u64 {
    hash_bytes(call_id)
}

/// What identifies a binding's REGISTERs besides Call-ID and flow: the trimmed To and
/// Contact values, hashed separately and combined.
#[inline(always)]
pub const fn identity(to_hash: u64, contact_hash: u64) -> u64 {
    mix(to_hash, contact_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_lengths_matter() {
        assert_ne!(hash_bytes(b"abc"), hash_bytes(b"abc\0"), "the length is part of the hash");
        assert_ne!(hash_bytes(b"12345678a"), hash_bytes(b"12345678b"));
        assert_eq!(hash_bytes(b""), start(0));
        let mut h = start(9);
        h = mix(h, u64::from_le_bytes(*b"12345678"));
        h = mix(h, u64::from_le_bytes(*b"9\0\0\0\0\0\0\0"));
        assert_eq!(hash_bytes(b"123456789"), h);
    }
}
