//! Framing of SIP over stream transports (TCP, TLS): RFC 3261 §18.3 Content-Length
//! framing with the RFC 5626 §3.5.1 CRLF keepalives in between.
//!
//! [`StreamDecoder`] is pure logic: the I/O shell appends what it received (either with
//! [`StreamDecoder::extend`] or by reading straight into [`StreamDecoder::read_buf`] and
//! then [`StreamDecoder::commit`]) and takes out [`Frame`]s with
//! [`StreamDecoder::next_frame`] until it returns `Ok(None)`.
//!
//! # Messages
//! The header block (start line, header lines, empty line) ends at the first CRLFCRLF.
//! Header lines are split at CRLF exactly as [`super::message`] splits them, a line
//! starting with SP or HT continues the previous header, names are compared without
//! regard to case and `l` is the compact form of `Content-Length`. The body is exactly
//! Content-Length bytes. On a stream Content-Length is mandatory; its value may be
//! surrounded by whitespace (folding included) but must otherwise be digits only.
//! Several Content-Length headers are accepted only when they agree.
//!
//! # Keepalives and leading CRLFs
//! Only at a frame boundary (before the first byte of a message, never inside one):
//! - `"\r\n\r\n"` is a [`Frame::Ping`], to be answered with a single `"\r\n"`;
//! - `"\r\n"` not followed by `"\r\n"` is a [`Frame::Pong`] and is simply consumed. This
//!   also makes the CRLFs that RFC 3261 §7.5 says may precede a message disappear.
//!
//! When only `"\r\n"` (or `"\r\n\r"`) has arrived, the decoder cannot yet tell a pong
//! from the start of a ping, so it waits: a lone CRLF is reported once the byte after it
//! shows it is not a ping. A pong needs no answer, so reporting it late costs nothing,
//! whereas guessing "pong" early would turn a ping split across two reads into two pongs
//! and leave the peer unanswered. Consequently `"\r\n\r\n\r\n"` is a ping followed by a
//! lone CRLF that is still waiting for its next byte.
//!
//! # Memory
//! Consumed bytes are released at the next call and the live bytes are moved to the
//! front of the buffer only once at least as many bytes have been consumed as are still
//! live (or when room to read is short), so every byte is moved a bounded number of times
//! and decoding is linear however many small messages one read carries. When the shell
//! drains every frame after each read, the live bytes never exceed one incomplete frame,
//! which the limits bound, so the buffer stays below about the largest frame plus the
//! largest read. After an error the buffer is freed.

use memchr::memchr;

use crate::io::stream_buffer::StreamBuffer;

/// Size limits of one stream's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// The whole message, header block and body, in bytes.
    pub max_message: usize,
    /// The header block (start line, header lines and the empty line), in bytes.
    pub max_headers: usize,
}

impl Default for StreamLimits {
    /// 64 KiB per message, 16 KiB of headers.
    fn default() -> Self {
        Self { max_message: 64 * 1024, max_headers: 16 * 1024 }
    }
}

/// One unit taken out of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One complete SIP message (header block and body), borrowed from the buffer.
    Message(&'a [u8]),
    /// A CRLFCRLF keepalive ping: answer it with [`PONG`].
    Ping,
    /// A lone CRLF: a keepalive pong, or a CRLF preceding a message. Nothing to do.
    Pong,
}

/// The bytes that answer a [`Frame::Ping`].
pub const PONG: &[u8] = b"\r\n";

/// Why a stream cannot be framed; the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("message without Content-Length on a stream")]
    MissingContentLength,
    #[error("malformed or conflicting Content-Length")]
    BadContentLength,
    #[error("message larger than the stream limit")]
    MessageTooLarge,
    #[error("header block larger than the stream limit")]
    HeadersTooLarge,
}

impl FramingError {
    /// Every error, for pre-registering metrics.
    pub const ALL: [Self; 4] =
        [Self::MissingContentLength, Self::BadContentLength, Self::MessageTooLarge, Self::HeadersTooLarge];

    /// Metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::MissingContentLength => "missing_content_length",
            Self::BadContentLength => "bad_content_length",
            Self::MessageTooLarge => "message_too_large",
            Self::HeadersTooLarge => "headers_too_large",
        }
    }
}

/// Where the decoder is in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between frames: a keepalive or the first byte of a message comes next.
    Boundary,
    /// Inside a header block; `scanned` live bytes hold no CRLFCRLF end.
    Headers { scanned: usize },
    /// The header block was read; the message is `len` bytes long in all.
    Body { len: usize },
    /// The stream is broken; every later call reports this error.
    Failed(FramingError),
}

/// What one decoding step found.
enum Step {
    /// The state changed: decode again.
    Again,
    /// More bytes are needed.
    NeedMore,
    /// A frame of this kind starts at the live data.
    Emit(Found),
}

/// A complete frame at the start of the live data.
enum Found {
    Ping,
    Pong,
    /// A message of this many bytes.
    Message(usize),
}

/// What the bytes at a frame boundary are.
enum Boundary {
    NeedMore,
    Ping,
    Pong,
    Message,
}

/// Turns a byte stream into SIP messages and keepalives. See the module documentation.
#[derive(Debug)]
pub struct StreamDecoder {
    limits: StreamLimits,
    buf: StreamBuffer,
    state: State,
}

impl StreamDecoder {
    /// An empty decoder; it allocates nothing until bytes arrive.
    pub fn new(limits: StreamLimits) -> Self {
        Self { limits, buf: StreamBuffer::default(), state: State::Boundary }
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

    /// The next complete frame, or `Ok(None)` when more bytes are needed. The bytes of the
    /// returned frame are released at the next call. After an error the stream is
    /// unusable: the same error is returned again and the buffered bytes are dropped.
    ///
    /// # Errors
    /// A [`FramingError`] when the stream breaks the framing rules or the limits.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FramingError> {
        self.buf.release();
        loop {
            let step = match self.state {
                State::Failed(err) => return Err(err),
                State::Boundary => Ok(self.at_boundary()),
                State::Headers { scanned } => self.in_headers(scanned),
                State::Body { len } => Ok(self.in_body(len)),
            };
            match step {
                Ok(Step::Again) => {}
                Ok(Step::NeedMore) => return Ok(None),
                Ok(Step::Emit(found)) => return Ok(Some(self.emit(found))),
                Err(err) => return Err(self.fail(err)),
            }
        }
    }

    /// Bytes received and not yet returned in a frame.
    pub fn buffered(&self) -> usize {
        self.buf.buffered()
    }

    /// The received bytes not yet returned in a frame.
    fn live(&self) -> &[u8] {
        self.buf.live()
    }

    /// Classifies the bytes at a frame boundary.
    fn at_boundary(&mut self) -> Step {
        match classify_boundary(self.live()) {
            Boundary::NeedMore => Step::NeedMore,
            Boundary::Ping => Step::Emit(Found::Ping),
            Boundary::Pong => Step::Emit(Found::Pong),
            Boundary::Message => {
                self.state = State::Headers { scanned: 0 };
                Step::Again
            }
        }
    }

    /// Looks for the end of the header block, then for the message length.
    fn in_headers(&mut self, scanned: usize) -> Result<Step, FramingError> {
        let live = self.live();
        let window = &live[..live.len().min(self.limits.max_headers)];
        match find_header_end(window, scanned) {
            Some(head_len) => {
                let len = message_len(&live[..head_len], self.limits.max_message)?;
                self.state = State::Body { len };
                Ok(Step::Again)
            }
            None if live.len() >= self.limits.max_headers => Err(FramingError::HeadersTooLarge),
            None => {
                self.state = State::Headers { scanned: window.len() };
                Ok(Step::NeedMore)
            }
        }
    }

    /// Waits for the whole body.
    fn in_body(&mut self, len: usize) -> Step {
        if self.live().len() < len {
            return Step::NeedMore;
        }
        self.state = State::Boundary;
        Step::Emit(Found::Message(len))
    }

    /// Marks a found frame consumed and borrows it.
    fn emit(&mut self, found: Found) -> Frame<'_> {
        match found {
            Found::Ping => {
                self.buf.take(CRLFCRLF.len());
                Frame::Ping
            }
            Found::Pong => {
                self.buf.take(CRLF.len());
                Frame::Pong
            }
            Found::Message(len) => Frame::Message(self.buf.take(len)),
        }
    }

    /// Breaks the stream for good and frees its buffer.
    fn fail(&mut self, err: FramingError) -> FramingError {
        self.state = State::Failed(err);
        self.buf.clear();
        err
    }
}

const CRLF: &[u8] = b"\r\n";
const CRLFCRLF: &[u8] = b"\r\n\r\n";

/// Tells a ping, a lone CRLF and a message apart at a frame boundary, waiting while a
/// CRLF could still grow into a ping. Bytes that are not CRLF keepalives start a message
/// (a stray CR or LF included: the message parser rejects those).
fn classify_boundary(live: &[u8]) -> Boundary {
    match live {
        [] | [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => Boundary::NeedMore,
        [b'\r', b'\n', b'\r', b'\n', ..] => Boundary::Ping,
        [b'\r', b'\n', ..] => Boundary::Pong,
        _ => Boundary::Message,
    }
}

/// The length of the header block including its CRLFCRLF end, if `window` holds it.
/// `scanned` leading bytes are known to hold no end; an end is only recognised at an LF,
/// looking back, so the search resumes there without rescanning.
fn find_header_end(window: &[u8], scanned: usize) -> Option<usize> {
    let mut from = scanned;
    while let Some(at) = memchr(b'\n', &window[from..]) {
        let lf = from + at;
        if lf >= 3 && &window[lf - 3..=lf] == CRLFCRLF {
            return Some(lf + 1);
        }
        from = lf + 1;
    }
    None
}

/// The total length of a message given its header block (ending in CRLFCRLF).
fn message_len(head: &[u8], max_message: usize) -> Result<usize, FramingError> {
    // Without the empty line every line, the last included, ends in CRLF.
    let lines = &head[..head.len() - CRLF.len()];
    let body = content_length(lines, max_message)?.ok_or(FramingError::MissingContentLength)?;
    head.len().checked_add(body).filter(|&len| len <= max_message).ok_or(FramingError::MessageTooLarge)
}

/// The agreed value of every Content-Length header of a header block whose lines all end
/// in CRLF, start line included; `None` when there is none.
fn content_length(lines: &[u8], max_message: usize) -> Result<Option<usize>, FramingError> {
    let Some(start_line_end) = find_crlf(lines) else { return Ok(None) };
    let mut found = None;
    for (name, value) in (HeaderFields { rest: &lines[start_line_end + CRLF.len()..] }) {
        if !is_content_length(name) {
            continue;
        }
        let len = parse_length(value, max_message)?;
        if found.is_some_and(|seen| seen != len) {
            return Err(FramingError::BadContentLength);
        }
        found = Some(len);
    }
    Ok(found)
}

/// Whether a header name is Content-Length, long or compact form, in any case.
fn is_content_length(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")
}

/// Parses a Content-Length value: digits with optional whitespace (folding included)
/// around them. Values over `max_message` (or over `usize`) are too large.
fn parse_length(value: &[u8], max_message: usize) -> Result<usize, FramingError> {
    let digits = trim(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(FramingError::BadContentLength);
    }
    digits
        .iter()
        .try_fold(0usize, |n, &d| n.checked_mul(10)?.checked_add(usize::from(d - b'0')))
        .filter(|&n| n <= max_message)
        .ok_or(FramingError::MessageTooLarge)
}

/// Whether a byte is linear whitespace inside a line.
fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Trims spaces, tabs, CR and LF from both ends.
fn trim(s: &[u8]) -> &[u8] {
    let keep = |c: &u8| !is_ws(*c) && *c != b'\r' && *c != b'\n';
    let Some(first) = s.iter().position(keep) else { return &[] };
    let last = s.iter().rposition(keep).unwrap_or(first);
    &s[first..=last]
}

/// The index of the first CRLF.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let lf = from + memchr(b'\n', &buf[from..])?;
        if lf > 0 && buf[lf - 1] == b'\r' {
            return Some(lf - 1);
        }
        from = lf + 1;
    }
}

/// The logical headers of header lines that all end in CRLF: (trimmed name, value with
/// any continuation lines). Lines without a colon are skipped; the message parser
/// judges them.
struct HeaderFields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for HeaderFields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let block = self.rest;
            let first_end = find_crlf(block)?;
            let mut end = first_end + CRLF.len();
            while block.get(end).is_some_and(|&c| is_ws(c)) {
                end += find_crlf(&block[end..])? + CRLF.len();
            }
            self.rest = &block[end..];
            let first = &block[..first_end];
            if let Some(colon) = memchr(b':', first) {
                return Some((trim(&first[..colon]), &block[colon + 1..end - CRLF.len()]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame copied out of the decoder, to compare across feeding strategies.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Owned {
        Message(Vec<u8>),
        Ping,
        Pong,
    }

    impl From<Frame<'_>> for Owned {
        fn from(frame: Frame<'_>) -> Self {
            match frame {
                Frame::Message(m) => Self::Message(m.to_vec()),
                Frame::Ping => Self::Ping,
                Frame::Pong => Self::Pong,
            }
        }
    }

    /// Takes out every complete frame.
    fn drain(dec: &mut StreamDecoder, out: &mut Vec<Owned>) -> Result<(), FramingError> {
        while let Some(frame) = dec.next_frame()? {
            out.push(frame.into());
        }
        Ok(())
    }

    /// Feeds all of `bytes` at once and drains.
    fn decode_all(bytes: &[u8], limits: StreamLimits) -> Result<Vec<Owned>, FramingError> {
        let mut dec = StreamDecoder::new(limits);
        dec.extend(bytes);
        let mut out = Vec::new();
        drain(&mut dec, &mut out)?;
        Ok(out)
    }

    /// The first frame of `bytes` fed at once, or the error.
    fn first(bytes: &[u8]) -> Result<Option<Owned>, FramingError> {
        let mut dec = StreamDecoder::new(StreamLimits::default());
        dec.extend(bytes);
        dec.next_frame().map(|f| f.map(Owned::from))
    }

    /// A request with `extra` header lines (each ending in CRLF) and a body.
    fn request(extra: &str, body: &str) -> Vec<u8> {
        format!("OPTIONS sip:edge.example.net SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.7\r\n{extra}\r\n{body}").into_bytes()
    }

    /// A request framed by a plain Content-Length.
    fn with_body(body: &str) -> Vec<u8> {
        request(&format!("Content-Length: {}\r\n", body.len()), body)
    }

    fn msg(bytes: &[u8]) -> Owned {
        Owned::Message(bytes.to_vec())
    }

    #[test]
    fn one_message_with_body() {
        let m = with_body("v=0\r\n\r\nContent-Length: 99\r\n");
        let mut dec = StreamDecoder::new(StreamLimits::default());
        dec.extend(&m);
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Message(&m))));
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn empty_body() {
        let m = with_body("");
        assert_eq!(first(&m), Ok(Some(msg(&m))));
    }

    #[test]
    fn several_messages_in_one_read() {
        let (a, b, c) = (with_body("abc"), with_body(""), with_body("0123456789"));
        let stream = [a.clone(), b.clone(), c.clone()].concat();
        assert_eq!(decode_all(&stream, StreamLimits::default()), Ok(vec![msg(&a), msg(&b), msg(&c)]));
    }

    #[test]
    fn incomplete_body_waits() {
        let m = with_body("hello");
        let mut dec = StreamDecoder::new(StreamLimits::default());
        dec.extend(&m[..m.len() - 1]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.buffered(), m.len() - 1);
        dec.extend(&m[m.len() - 1..]);
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Message(&m))));
    }

    #[test]
    fn compact_form_and_any_case() {
        for header in ["l: 4\r\n", "L:4\r\n", "CONTENT-LENGTH: 4\r\n", "cOnTeNt-LeNgTh: 4\r\n"] {
            let m = request(header, "abcd");
            assert_eq!(first(&m), Ok(Some(msg(&m))), "{header:?}");
        }
    }

    #[test]
    fn whitespace_around_the_value() {
        for header in ["Content-Length :   4  \r\n", "Content-Length:\t4\t\r\n", "l \t:4 \r\n"] {
            let m = request(header, "abcd");
            assert_eq!(first(&m), Ok(Some(msg(&m))), "{header:?}");
        }
    }

    #[test]
    fn folded_headers() {
        // The value on a continuation line.
        let m = request("Content-Length:\r\n   4\r\n", "abcd");
        assert_eq!(first(&m), Ok(Some(msg(&m))));
        let m = request("Content-Length: 4\r\n\t \r\n", "abcd");
        assert_eq!(first(&m), Ok(Some(msg(&m))));
        // A continuation line that looks like a header is part of the previous header.
        let m = request("Subject: x\r\n Content-Length: 99\r\nl: 4\r\n", "abcd");
        assert_eq!(first(&m), Ok(Some(msg(&m))));
        // Folding between digits is whitespace inside the number.
        assert_eq!(first(&request("Content-Length: 1\r\n 2\r\n", "")), Err(FramingError::BadContentLength));
    }

    #[test]
    fn other_headers_mentioning_content_length_do_not_count() {
        let m = request("X-Content-Length: 99\r\nContent-Lengths: 7\r\nContent-Length: 2\r\n", "ab");
        assert_eq!(first(&m), Ok(Some(msg(&m))));
    }

    #[test]
    fn duplicate_content_lengths() {
        let m = request("Content-Length: 4\r\nl: 04\r\n", "abcd");
        assert_eq!(first(&m), Ok(Some(msg(&m))));
        let m = request("Content-Length: 4\r\nContent-Length: 5\r\n", "abcde");
        assert_eq!(first(&m), Err(FramingError::BadContentLength));
        let m = request("Content-Length: 4\r\nl: x\r\n", "abcd");
        assert_eq!(first(&m), Err(FramingError::BadContentLength));
    }

    #[test]
    fn malformed_values() {
        for value in ["", "  ", "abc", "1 2", "-1", "+5", "0x10", "4;x", "4,4", "٤"] {
            let m = request(&format!("Content-Length: {value}\r\n"), "");
            assert_eq!(first(&m), Err(FramingError::BadContentLength), "{value:?}");
        }
    }

    #[test]
    fn missing_content_length() {
        assert_eq!(first(&request("", "")), Err(FramingError::MissingContentLength));
        assert_eq!(first(b"OPTIONS sip:x SIP/2.0\r\n\r\n"), Err(FramingError::MissingContentLength));
        assert_eq!(first(b"garbage\r\n\r\n"), Err(FramingError::MissingContentLength));
    }

    #[test]
    fn too_large_values() {
        let limits = StreamLimits { max_message: 300, max_headers: 200 };
        let large = |value: &str| {
            let m = request(&format!("Content-Length: {value}\r\n"), "");
            decode_all(&m, limits)
        };
        assert_eq!(large("99999999999999999999999999999999"), Err(FramingError::MessageTooLarge));
        assert_eq!(large(&usize::MAX.to_string()), Err(FramingError::MessageTooLarge));
        assert_eq!(large("301"), Err(FramingError::MessageTooLarge));
        // Fits by itself, not with the header block.
        assert_eq!(large("300"), Err(FramingError::MessageTooLarge));
    }

    #[test]
    fn message_exactly_at_the_limit() {
        let head = request("Content-Length: 100\r\n", "");
        let body = "b".repeat(100);
        let m = request("Content-Length: 100\r\n", &body);
        let exact = StreamLimits { max_message: head.len() + 100, max_headers: head.len() };
        assert_eq!(decode_all(&m, exact), Ok(vec![msg(&m)]));
        let short = StreamLimits { max_message: head.len() + 99, ..exact };
        assert_eq!(decode_all(&m, short), Err(FramingError::MessageTooLarge));
    }

    #[test]
    fn headers_too_large_before_the_end_arrives() {
        let limits = StreamLimits { max_message: 1000, max_headers: 100 };
        let mut dec = StreamDecoder::new(limits);
        dec.extend(b"OPTIONS sip:x SIP/2.0\r\n");
        while dec.buffered() < 99 {
            dec.extend(b"X");
            assert_eq!(dec.next_frame(), Ok(None));
        }
        dec.extend(b"X");
        assert_eq!(dec.next_frame(), Err(FramingError::HeadersTooLarge));
    }

    #[test]
    fn header_block_exactly_at_the_limit() {
        let m = with_body("xyz");
        let head_len = m.len() - 3;
        let fits = StreamLimits { max_message: 1000, max_headers: head_len };
        assert_eq!(decode_all(&m, fits), Ok(vec![msg(&m)]));
        let short = StreamLimits { max_headers: head_len - 1, ..fits };
        assert_eq!(decode_all(&m, short), Err(FramingError::HeadersTooLarge));
    }

    #[test]
    fn ping_and_pong() {
        assert_eq!(first(b"\r\n\r\n"), Ok(Some(Owned::Ping)));
        assert_eq!(first(b"\r\nO"), Ok(Some(Owned::Pong)));
        let m = with_body("");
        let stream = [b"\r\n\r\n\r\n\r\n\r\n".as_slice(), &m, b"\r\n\r\n"].concat();
        let want = vec![Owned::Ping, Owned::Ping, Owned::Pong, msg(&m), Owned::Ping];
        assert_eq!(decode_all(&stream, StreamLimits::default()), Ok(want));
    }

    #[test]
    fn lone_crlf_waits_for_the_next_byte() {
        let mut dec = StreamDecoder::new(StreamLimits::default());
        dec.extend(b"\r\n");
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.buffered(), 2);
        dec.extend(b"\r");
        assert_eq!(dec.next_frame(), Ok(None));
        dec.extend(b"\n");
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Ping)));
        dec.extend(b"\r\n");
        assert_eq!(dec.next_frame(), Ok(None));
        let m = with_body("");
        dec.extend(&m);
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Pong)));
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Message(&m))));
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    fn crlf_then_stray_cr_is_a_pong_then_a_message_start() {
        let stream = [b"\r\n\r".as_slice(), &with_body("")].concat();
        let want = vec![Owned::Pong, msg(&stream[2..])];
        assert_eq!(decode_all(&stream, StreamLimits::default()), Ok(want));
    }

    #[test]
    fn crlfs_inside_a_message_are_not_keepalives() {
        let body = "\r\n\r\n\r\n";
        let m = with_body(body);
        let stream = [m.clone(), b"\r\n\r\n".to_vec()].concat();
        assert_eq!(decode_all(&stream, StreamLimits::default()), Ok(vec![msg(&m), Owned::Ping]));
    }

    #[test]
    fn errors_are_final() {
        let mut dec = StreamDecoder::new(StreamLimits::default());
        dec.extend(&request("", ""));
        assert_eq!(dec.next_frame(), Err(FramingError::MissingContentLength));
        assert_eq!(dec.buffered(), 0);
        dec.extend(&with_body(""));
        assert_eq!(dec.next_frame(), Err(FramingError::MissingContentLength));
    }

    #[test]
    fn labels_are_distinct() {
        let labels: Vec<_> = FramingError::ALL.iter().map(|e| e.label()).collect();
        for (i, label) in labels.iter().enumerate() {
            assert!(!labels[i + 1..].contains(label), "{label}");
        }
    }

    #[test]
    fn read_buf_and_commit() {
        let m = with_body("body");
        let mut dec = StreamDecoder::new(StreamLimits::default());
        for chunk in m.chunks(7) {
            let room = dec.read_buf(chunk.len());
            assert!(room.len() >= chunk.len());
            room[..chunk.len()].copy_from_slice(chunk);
            dec.commit(chunk.len());
        }
        let room = dec.read_buf(16);
        room[..2].copy_from_slice(b"\r\n");
        dec.commit(2);
        dec.read_buf(1)[..2].copy_from_slice(b"\r\n");
        dec.commit(2);
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Message(&m))));
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Ping)));
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    #[should_panic(expected = "beyond the read buffer")]
    fn commit_past_the_room_panics() {
        let mut dec = StreamDecoder::new(StreamLimits::default());
        let room = dec.read_buf(4).len();
        dec.commit(room + 1);
    }

    /// A stream mixing every kind of message and keepalive, and its frames.
    fn mixed_stream() -> (Vec<u8>, Vec<Owned>) {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for i in 0..60 {
            let body = "x\r\n".repeat(i % 7);
            let m = match i % 5 {
                0 => with_body(&body),
                1 => request(&format!("l:{}\r\n", body.len()), &body),
                2 => request(&format!("Content-Length:\r\n\t{} \r\nX: y\r\n", body.len()), &body),
                3 => request(&format!("content-length: {0}\r\nl: {0}\r\n", body.len()), &body),
                _ => format!("SIP/2.0 200 OK\r\nCall-ID: {i}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                    .into_bytes(),
            };
            if i % 3 == 0 {
                stream.extend_from_slice(b"\r\n\r\n");
                want.push(Owned::Ping);
            }
            if i % 4 == 1 {
                stream.extend_from_slice(b"\r\n");
                want.push(Owned::Pong);
            }
            stream.extend_from_slice(&m);
            want.push(Owned::Message(m));
        }
        stream.extend_from_slice(b"\r\n\r\n");
        want.push(Owned::Ping);
        (stream, want)
    }

    #[test]
    fn byte_at_a_time_with_pings_between() {
        let (stream, want) = mixed_stream();
        let mut dec = StreamDecoder::new(StreamLimits::default());
        let mut got = Vec::new();
        for byte in &stream {
            dec.extend(std::slice::from_ref(byte));
            drain(&mut dec, &mut got).unwrap();
        }
        assert_eq!(got, want);
        assert_eq!(dec.buffered(), 0);
        assert_eq!(decode_all(&stream, StreamLimits::default()), Ok(want));
    }

    #[test]
    fn random_splits_give_the_same_frames() {
        let (stream, want) = mixed_stream();
        let mut rng = crate::testing::Rng(0x5eed_1234_abcd_0001);
        for round in 0..300 {
            let mut dec = StreamDecoder::new(StreamLimits::default());
            let mut got = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let max_chunk = [1, 3, 17, 200, 5000][round % 5];
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
    fn many_small_messages_in_one_read_compact_linearly() {
        let m = with_body("");
        let count = 20_000;
        let stream = m.repeat(count);
        let mut dec = StreamDecoder::new(StreamLimits::default());
        dec.extend(&stream);
        let mut seen = 0;
        while let Some(frame) = dec.next_frame().unwrap() {
            assert_eq!(frame, Frame::Message(&m));
            seen += 1;
        }
        assert_eq!(seen, count);
        assert!(dec.buf.moved <= stream.len(), "moved {} bytes for {}", dec.buf.moved, stream.len());
    }

    #[test]
    fn buffer_stays_bounded() {
        let (stream, _) = mixed_stream();
        let mut dec = StreamDecoder::new(StreamLimits::default());
        let mut got = Vec::new();
        for _ in 0..50 {
            for chunk in stream.chunks(1000) {
                dec.extend(chunk);
                drain(&mut dec, &mut got).unwrap();
                assert!(dec.buf.capacity() <= 4096, "buffer grew to {}", dec.buf.capacity());
            }
        }
        assert!(dec.buf.moved <= 50 * stream.len());
    }

    #[test]
    fn slow_large_message_is_not_rescanned() {
        // Byte-at-a-time headers: the scan resumes where it stopped.
        let limits = StreamLimits { max_message: 64 * 1024, max_headers: 16 * 1024 };
        let filler = format!("X: {}\r\n", "y".repeat(15_000));
        let m = request(&format!("{filler}Content-Length: 0\r\n"), "");
        let mut dec = StreamDecoder::new(limits);
        for byte in &m[..m.len() - 1] {
            dec.extend(std::slice::from_ref(byte));
            assert_eq!(dec.next_frame(), Ok(None));
            if let State::Headers { scanned } = dec.state {
                assert_eq!(scanned, dec.buffered());
            }
        }
        dec.extend(&m[m.len() - 1..]);
        assert_eq!(dec.next_frame(), Ok(Some(Frame::Message(&m))));
    }
}
