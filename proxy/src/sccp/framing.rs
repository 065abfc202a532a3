//! Framing of SCCP (Skinny) over TCP: the 12-byte little-endian header
//! (`data_length`, `header_version`, `message_id`) followed by `data_length - 4` bytes of
//! payload, so a PDU is `data_length + 8` bytes.
//!
//! [`StreamDecoder`] is pure logic, used like the SIP one ([`crate::sip::framing`]): the
//! I/O shell appends what it received (with [`StreamDecoder::extend`], or by reading
//! straight into [`StreamDecoder::read_buf`] and then [`StreamDecoder::commit`]) and
//! takes out [`Pdu`]s with [`StreamDecoder::next_pdu`] until it returns `Ok(None)`.
//!
//! # What is not Skinny
//! A `data_length` below [`DATA_LENGTH_MIN`] or above [`DATA_LENGTH_MAX`], or a
//! `header_version` that is neither 0 nor 0x0A..=0x16, means the peer does not speak
//! Skinny (or the stream lost sync): the decoder fails for good with a [`FramingError`]
//! whose [`FramingError::label`] is the metric label, and the connection must be closed.
//! Both are checked as soon as their 4 bytes have arrived, before the rest of the PDU.
//!
//! # Memory
//! As in the SIP decoder: consumed bytes are released at the next call and live bytes
//! are moved to the front only once at least as many bytes were consumed as are live, so
//! decoding stays linear however many PDUs one read carries. When the shell drains every
//! PDU after each read the buffer stays below one PDU (at most `DATA_LENGTH_MAX + 8`
//! bytes) plus the largest read. After an error the buffer is freed.

use regedge_common::sccp::{DATA_LENGTH_MAX, DATA_LENGTH_MIN, HEADER_LEN, is_header_version};

use crate::io::stream_buffer::StreamBuffer;

/// Bytes of the header that `data_length` does not count (itself and `header_version`).
const UNCOUNTED: usize = 8;

/// One PDU borrowed from the decoder's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pdu<'a> {
    pub header_version: u32,
    pub message_id: u32,
    /// The whole PDU, header included, exactly as received: relay these bytes.
    pub bytes: &'a [u8],
}

impl<'a> Pdu<'a> {
    /// The bytes after the 12-byte header.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// An owned copy.
    pub fn to_frame(&self) -> Frame {
        Frame { header_version: self.header_version, message_id: self.message_id, bytes: self.bytes.to_vec() }
    }
}

/// One PDU copied out of the decoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header_version: u32,
    pub message_id: u32,
    /// The whole PDU, header included.
    pub bytes: Vec<u8>,
}

impl Frame {
    /// The bytes after the 12-byte header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }
}

/// Why a stream is not Skinny; the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// `data_length` below [`DATA_LENGTH_MIN`] or above [`DATA_LENGTH_MAX`].
    #[error("SCCP data_length {0} outside {DATA_LENGTH_MIN}..={DATA_LENGTH_MAX}")]
    BadLength(u32),
    /// `header_version` neither 0 nor 0x0A..=0x16.
    #[error("SCCP header_version {0:#x} is not a Skinny version")]
    BadHeaderVersion(u32),
}

impl FramingError {
    /// Every error kind (with a placeholder value), for pre-registering metrics.
    pub const ALL: [Self; 2] = [Self::BadLength(0), Self::BadHeaderVersion(0)];

    /// Metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::BadLength(_) => "bad_length",
            Self::BadHeaderVersion(_) => "bad_header_version",
        }
    }
}

/// Writes the 12-byte header of a PDU whose payload is `payload_len` bytes.
///
/// # Panics
/// If `payload_len + 4` does not fit a u32 (callers stay far below [`DATA_LENGTH_MAX`]).
pub fn encode_header(header_version: u32, message_id: u32, payload_len: usize, out: &mut Vec<u8>) {
    let data_length = u32::try_from(payload_len + 4).expect("SCCP payload length fits a u32");
    out.extend_from_slice(&data_length.to_le_bytes());
    out.extend_from_slice(&header_version.to_le_bytes());
    out.extend_from_slice(&message_id.to_le_bytes());
}

/// Writes a whole PDU: header and payload.
pub fn encode_pdu(header_version: u32, message_id: u32, payload: &[u8], out: &mut Vec<u8>) {
    encode_header(header_version, message_id, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Reads the little-endian u32 at `at`.
fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Turns a byte stream into Skinny PDUs. See the module documentation.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: StreamBuffer,
    /// Set once the stream broke; every later call reports it.
    failed: Option<FramingError>,
}

impl StreamDecoder {
    /// An empty decoder; it allocates nothing until bytes arrive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
    }

    /// Room of at least `min` bytes to read into directly; follow with [`Self::commit`].
    /// The slice may be longer than `min` and holds stale bytes.
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        self.buf.read_buf(min)
    }

    /// Marks the first `n` bytes of the slice [`Self::read_buf`] returned as received.
    ///
    /// # Panics
    /// If `n` exceeds that slice.
    pub fn commit(&mut self, n: usize) {
        self.buf.commit(n);
    }

    /// The next complete PDU, or `Ok(None)` when more bytes are needed. The returned
    /// bytes are released at the next call. After an error the stream is unusable: the
    /// same error is returned again and the buffered bytes are dropped.
    ///
    /// # Errors
    /// A [`FramingError`] when the stream is not Skinny.
    pub fn next_pdu(&mut self) -> Result<Option<Pdu<'_>>, FramingError> {
        self.buf.release();
        if let Some(err) = self.failed {
            return Err(err);
        }
        let live = self.buf.live();
        if live.len() < 4 {
            return Ok(None);
        }
        let data_length = le32(live, 0);
        if !(DATA_LENGTH_MIN..=DATA_LENGTH_MAX).contains(&data_length) {
            return Err(self.fail(FramingError::BadLength(data_length)));
        }
        if live.len() < 8 {
            return Ok(None);
        }
        let header_version = le32(live, 4);
        if !is_header_version(header_version) {
            return Err(self.fail(FramingError::BadHeaderVersion(header_version)));
        }
        // data_length <= DATA_LENGTH_MAX, so this cannot overflow.
        let len = data_length as usize + UNCOUNTED;
        if live.len() < len {
            return Ok(None);
        }
        let bytes = self.buf.take(len);
        Ok(Some(Pdu { header_version, message_id: le32(bytes, 8), bytes }))
    }

    /// Bytes received and not yet returned in a PDU.
    pub fn buffered(&self) -> usize {
        self.buf.buffered()
    }

    /// Breaks the stream for good and frees its buffer.
    fn fail(&mut self, err: FramingError) -> FramingError {
        self.failed = Some(err);
        self.buf.clear();
        err
    }
}

#[cfg(test)]
mod tests {
    use regedge_common::sccp::id;

    use super::*;

    fn pdu(header_version: u32, message_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_pdu(header_version, message_id, payload, &mut out);
        out
    }

    fn frame(bytes: &[u8]) -> Frame {
        Frame { header_version: le32(bytes, 4), message_id: le32(bytes, 8), bytes: bytes.to_vec() }
    }

    fn drain(dec: &mut StreamDecoder, out: &mut Vec<Frame>) -> Result<(), FramingError> {
        while let Some(pdu) = dec.next_pdu()? {
            out.push(pdu.to_frame());
        }
        Ok(())
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FramingError> {
        let mut dec = StreamDecoder::new();
        dec.extend(bytes);
        let mut out = Vec::new();
        drain(&mut dec, &mut out)?;
        Ok(out)
    }

    /// PDUs of every size class and header version, and the stream of them all.
    fn mixed_stream() -> (Vec<u8>, Vec<Frame>) {
        let versions = [0, 0x0A, 0x11, 0x16];
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for i in 0..80u32 {
            let payload: Vec<u8> = (0..(i * 7 % 300)).map(|b| b as u8).collect();
            let p = pdu(versions[i as usize % 4], i % 0x160, &payload);
            stream.extend_from_slice(&p);
            want.push(frame(&p));
        }
        (stream, want)
    }

    #[test]
    fn one_pdu() {
        let p = pdu(0, id::KEEP_ALIVE, &[]);
        assert_eq!(p, [4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut dec = StreamDecoder::new();
        dec.extend(&p);
        let got = dec.next_pdu().unwrap().unwrap();
        assert_eq!(got, Pdu { header_version: 0, message_id: id::KEEP_ALIVE, bytes: &p });
        assert!(got.payload().is_empty());
        assert_eq!(dec.next_pdu(), Ok(None));
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn payload_and_fields() {
        let p = pdu(0x11, id::IP_PORT, &[0xd0, 0x07, 0, 0]);
        let got = decode_all(&p).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].header_version, got[0].message_id), (0x11, id::IP_PORT));
        assert_eq!(got[0].payload(), [0xd0, 0x07, 0, 0]);
    }

    #[test]
    fn coalesced_pdus_in_one_read() {
        let (stream, want) = mixed_stream();
        assert_eq!(decode_all(&stream), Ok(want));
    }

    #[test]
    fn split_reads_wait() {
        let p = pdu(0, 0x0006, &[1, 0, 0, 0, 2, 0, 0, 0]);
        let mut dec = StreamDecoder::new();
        dec.extend(&p[..3]);
        assert_eq!(dec.next_pdu(), Ok(None));
        dec.extend(&p[3..12]);
        assert_eq!(dec.next_pdu(), Ok(None));
        dec.extend(&p[12..p.len() - 1]);
        assert_eq!(dec.next_pdu(), Ok(None));
        assert_eq!(dec.buffered(), p.len() - 1);
        dec.extend(&p[p.len() - 1..]);
        assert_eq!(dec.next_pdu().unwrap().unwrap().bytes, &p[..]);
    }

    #[test]
    fn byte_at_a_time() {
        let (stream, want) = mixed_stream();
        let mut dec = StreamDecoder::new();
        let mut got = Vec::new();
        for byte in &stream {
            dec.extend(std::slice::from_ref(byte));
            drain(&mut dec, &mut got).unwrap();
        }
        assert_eq!(got, want);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn random_splits_give_the_same_pdus() {
        let (stream, want) = mixed_stream();
        let mut rng = crate::testing::Rng(0x5cc9_0000_1234_0001);
        for round in 0..200 {
            let mut dec = StreamDecoder::new();
            let mut got = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let max_chunk = [1, 5, 13, 300, 5000][round % 5];
                let n = (1 + rng.below(max_chunk)).min(stream.len() - at);
                let chunk = &stream[at..at + n];
                if rng.below(2) == 0 {
                    dec.extend(chunk);
                } else {
                    dec.read_buf(n)[..n].copy_from_slice(chunk);
                    dec.commit(n);
                }
                at += n;
                drain(&mut dec, &mut got).unwrap();
            }
            assert_eq!(got, want, "round {round}");
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn data_length_below_four() {
        for data_length in 0..4u32 {
            let mut bytes = data_length.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0; 8]);
            assert_eq!(decode_all(&bytes), Err(FramingError::BadLength(data_length)), "{data_length}");
        }
    }

    #[test]
    fn data_length_above_the_max() {
        let mut bytes = (DATA_LENGTH_MAX + 1).to_le_bytes().to_vec();
        // Known from the first 4 bytes alone.
        assert_eq!(decode_all(&bytes), Err(FramingError::BadLength(DATA_LENGTH_MAX + 1)));
        bytes = u32::MAX.to_le_bytes().to_vec();
        assert_eq!(decode_all(&bytes), Err(FramingError::BadLength(u32::MAX)));
        // An HTTP request or a TLS ClientHello on the Skinny port.
        assert_eq!(decode_all(b"GET / HTTP/1.1\r\n").unwrap_err().label(), "bad_length");
        assert_eq!(decode_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap_err().label(), "bad_length");
    }

    #[test]
    fn data_length_at_the_max() {
        let p = pdu(0, 0x0099, &vec![b'x'; DATA_LENGTH_MAX as usize - 4]);
        assert_eq!(decode_all(&p), Ok(vec![frame(&p)]));
    }

    #[test]
    fn bad_header_versions() {
        for version in [1, 2, 9, 0x17, 0x100, u32::MAX] {
            let p = pdu(version, id::KEEP_ALIVE, &[]);
            assert_eq!(decode_all(&p[..8]), Err(FramingError::BadHeaderVersion(version)), "{version:#x}");
        }
        for version in [0, 0x0A, 0x0B, 0x0F, 0x10, 0x16] {
            let p = pdu(version, id::KEEP_ALIVE, &[]);
            assert_eq!(decode_all(&p), Ok(vec![frame(&p)]), "{version:#x}");
        }
    }

    #[test]
    fn a_bad_pdu_after_good_ones() {
        let good = pdu(0, id::KEEP_ALIVE, &[]);
        let stream = [good.clone(), pdu(3, id::KEEP_ALIVE, &[])].concat();
        let mut dec = StreamDecoder::new();
        dec.extend(&stream);
        assert_eq!(dec.next_pdu().unwrap().unwrap().bytes, &good[..]);
        assert_eq!(dec.next_pdu(), Err(FramingError::BadHeaderVersion(3)));
    }

    #[test]
    fn errors_are_final() {
        let mut dec = StreamDecoder::new();
        dec.extend(&[1, 0, 0, 0]);
        assert_eq!(dec.next_pdu(), Err(FramingError::BadLength(1)));
        assert_eq!(dec.buffered(), 0);
        dec.extend(&pdu(0, id::KEEP_ALIVE, &[]));
        assert_eq!(dec.next_pdu(), Err(FramingError::BadLength(1)));
    }

    #[test]
    fn labels_are_distinct() {
        let labels: Vec<_> = FramingError::ALL.iter().map(|e| e.label()).collect();
        assert_eq!(labels, ["bad_length", "bad_header_version"]);
    }

    #[test]
    #[should_panic(expected = "beyond the read buffer")]
    fn commit_past_the_room_panics() {
        let mut dec = StreamDecoder::new();
        let room = dec.read_buf(4).len();
        dec.commit(room + 1);
    }

    #[test]
    fn many_small_pdus_in_one_read_compact_linearly() {
        let p = pdu(0, id::KEEP_ALIVE_ACK, &[]);
        let count = 20_000;
        let stream = p.repeat(count);
        let mut dec = StreamDecoder::new();
        dec.extend(&stream);
        let mut seen = 0;
        while let Some(got) = dec.next_pdu().unwrap() {
            assert_eq!(got.bytes, &p[..]);
            seen += 1;
        }
        assert_eq!(seen, count);
        assert!(dec.buf.moved <= stream.len(), "moved {} bytes for {}", dec.buf.moved, stream.len());
    }

    #[test]
    fn buffer_stays_bounded() {
        let (stream, _) = mixed_stream();
        let mut dec = StreamDecoder::new();
        let mut got = Vec::new();
        for _ in 0..50 {
            for chunk in stream.chunks(1000) {
                dec.extend(chunk);
                drain(&mut dec, &mut got).unwrap();
                assert!(dec.buf.capacity() <= 4096, "buffer grew to {}", dec.buf.capacity());
            }
        }
    }
}
