//! Fuzz targets: each takes arbitrary bytes, drives one part of regedge the way its
//! shell would, and panics when an invariant breaks (not only when the code under test
//! panics). `proxy/fuzz/` runs them under libFuzzer (`cargo +nightly fuzz run <target>`
//! from `proxy/`); the unit tests in [`smoke`] replay the in-tree seed corpora and crash
//! regressions (`proxy/fuzz/corpus/<target>/`, `proxy/fuzz/regressions/<target>/`) and
//! a fixed number of seeded mutations of them through the same functions on stable, so
//! CI runs them without nightly or cargo-fuzz.
//!
//! - [`sip::parser`]: `Message::parse`/`frame` and the header walk stay inside the buffer
//!   and agree with each other; the typed readers (CSeq, Contact, URI, REGISTER) do not
//!   panic.
//! - [`sip::stream_framing`]: the SIP stream decoder gives the same frames and the same
//!   error however the bytes are split, loses no byte and stays within its limits.
//! - [`registrar::engine`]: REGISTERs (well-formed, mutated and raw), backend answers,
//!   health changes and time through `Engine::on_datagram` with two backends: every
//!   answer parses as a SIP response, nothing is absorbed that the backend did not
//!   accept for that flow, Call-ID and contact, and phones' datagrams never remove or
//!   re-point a binding.
//! - [`sccp::codec`]: the SCCP decoder is split-independent and every typed message
//!   encodes back to the bytes it came from.
//! - [`sccp::session`]: the SCCP session state machine under a scripted shell: no action
//!   after Close, relays are byte-exact and in order, keepalives answered only when
//!   registered, and a registered session survives anything its phone sends.

pub mod registrar;
pub mod sccp;
pub mod sip;
#[cfg(test)]
mod smoke;

/// Reads a fuzz input as a script: bytes, small numbers and choices, with zeros once it
/// runs out (so every input is a complete script).
#[derive(Clone, Debug)]
pub struct Script<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Script<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Whether every byte was read.
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 256 { self.byte() as usize % n } else { self.u16() as usize % n }
    }

    /// Up to `max` bytes taken as they are (a length byte, then the bytes).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let want = self.below(max + 1);
        let start = self.pos.min(self.data.len());
        let end = (start + want).min(self.data.len());
        self.pos = start + want;
        &self.data[start..end]
    }

    /// The unread rest.
    pub fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        &self.data[start..]
    }
}

/// Whether `inner` is a sub-slice of `outer` (same memory), so that a parser's borrowed
/// pieces are known to lie inside its buffer. An empty slice holds no bytes: it may be a
/// constant (`b""`) anywhere.
pub fn within(outer: &[u8], inner: &[u8]) -> bool {
    inner.is_empty() || in_memory_of(outer, inner)
}

fn in_memory_of(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

/// Offset of a sub-slice of `outer`, which must point into it even when empty.
pub fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    assert!(in_memory_of(outer, inner), "slice outside its buffer");
    inner.as_ptr() as usize - outer.as_ptr() as usize
}

/// Splits `bytes` into chunks whose lengths are read from `sizes` (cycling; a zero means
/// one byte), as a TCP stack might deliver them.
pub fn chunks<'a>(bytes: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let size = sizes.get(i % sizes.len().max(1)).map_or(rest.len(), |&s| usize::from(s).max(1));
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        out.push(chunk);
        rest = after;
        i += 1;
    }
    out
}
