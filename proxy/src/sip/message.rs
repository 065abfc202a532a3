//! Zero-copy SIP message parsing (RFC 3261 §7). [`Message::parse`] checks the framing
//! once — start line, header lines ending in CRLF, continuation lines, the empty line —
//! and borrows everything from the receive buffer. Headers are typed only when asked
//! for, by walking the header block again.

use std::fmt;

/// A parsed SIP message borrowing from the datagram or stream buffer.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    pub start: StartLine<'a>,
    /// The header block: every header line with its CRLF, excluding the empty line.
    headers: &'a [u8],
    pub body: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: &'a [u8], uri: &'a [u8] },
    Response { code: u16, reason: &'a [u8] },
}

/// One logical header: its raw lines (the first line, any continuation lines, the final
/// CRLF), its name and its value (everything after the colon, continuation lines
/// included, without the final CRLF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub raw: &'a [u8],
    pub name: &'a [u8],
    pub value: &'a [u8],
}

/// The headers regedge types, with their compact forms (RFC 3261 §7.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Other,
}

impl HeaderName {
    pub fn of(name: &[u8]) -> Self {
        let is = |long: &[u8]| name.eq_ignore_ascii_case(long);
        match name.len() {
            1 => match name[0].to_ascii_lowercase() {
                b'v' => Self::Via,
                b'f' => Self::From,
                b't' => Self::To,
                b'i' => Self::CallId,
                _ => Self::Other,
            },
            2 if is(b"to") => Self::To,
            3 if is(b"via") => Self::Via,
            4 if is(b"from") => Self::From,
            4 if is(b"cseq") => Self::CSeq,
            7 if is(b"call-id") => Self::CallId,
            _ => Self::Other,
        }
    }

    /// The name used in reason phrases.
    pub const fn canonical(self) -> &'static str {
        match self {
            Self::Via => "Via",
            Self::From => "From",
            Self::To => "To",
            Self::CallId => "Call-ID",
            Self::CSeq => "CSeq",
            Self::Other => "header",
        }
    }
}

/// Why a buffer is not a SIP message. `Copy`, allocation-free; [`ParseError::label`] is
/// the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no empty line ends the headers")]
    Unterminated,
    #[error("malformed start line")]
    BadStartLine,
    #[error("unsupported SIP version")]
    BadVersion,
    #[error("header line without a colon")]
    HeaderWithoutColon,
    #[error("header line with an empty name")]
    EmptyHeaderName,
    #[error("continuation line before the first header")]
    LeadingContinuation,
}

impl ParseError {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Unterminated => "unterminated",
            Self::BadStartLine => "bad_start_line",
            Self::BadVersion => "bad_version",
            Self::HeaderWithoutColon => "header_without_colon",
            Self::EmptyHeaderName => "empty_header_name",
            Self::LeadingContinuation => "leading_continuation",
        }
    }
}

const SIP_VERSION: &[u8] = b"SIP/2.0";

fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Trims spaces, tabs, CR and LF from both ends.
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_ws(*first) || *first == b'\r' || *first == b'\n' {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if is_ws(*last) || *last == b'\r' || *last == b'\n' {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Splits `buf` at the first CRLF: (line, rest after the CRLF).
fn split_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut from = 0;
    loop {
        let lf = from + memchr::memchr(b'\n', &buf[from..])?;
        if lf > 0 && buf[lf - 1] == b'\r' {
            return Some((&buf[..lf - 1], &buf[lf + 1..]));
        }
        from = lf + 1;
    }
}

impl<'a> Message<'a> {
    /// Parses and validates every header line.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        let message = Self::frame(buf)?;
        let mut seen_header = false;
        let mut rest = message.headers;
        while let Some((line, after)) = split_line(rest) {
            if is_ws(line[0]) {
                if !seen_header {
                    return Err(ParseError::LeadingContinuation);
                }
            } else {
                let colon = line.iter().position(|&c| c == b':').ok_or(ParseError::HeaderWithoutColon)?;
                if trim(&line[..colon]).is_empty() {
                    return Err(ParseError::EmptyHeaderName);
                }
                seen_header = true;
            }
            rest = after;
        }
        Ok(message)
    }

    /// Finds the start line, the header block and the body without judging the header
    /// lines: enough to answer a request whose headers are broken with a 400.
    pub fn frame(buf: &'a [u8]) -> Result<Self, ParseError> {
        let (first, rest) = split_line(buf).ok_or(ParseError::Unterminated)?;
        let start = parse_start_line(first)?;
        let headers_start = buf.len() - rest.len();
        let mut remaining = rest;
        loop {
            let (line, after) = split_line(remaining).ok_or(ParseError::Unterminated)?;
            if line.is_empty() {
                let headers_end = buf.len() - remaining.len();
                return Ok(Self { start, headers: &buf[headers_start..headers_end], body: after });
            }
            remaining = after;
        }
    }

    /// Every header in order.
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.headers }
    }

    /// Headers of one kind, in order.
    pub fn headers_named(&self, name: HeaderName) -> impl Iterator<Item = Header<'a>> + use<'a> {
        self.headers().filter(move |h| HeaderName::of(h.name) == name)
    }

    pub fn method(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }
}

fn parse_start_line(line: &[u8]) -> Result<StartLine<'_>, ParseError> {
    if let Some(after_version) = line.strip_prefix(b"SIP/2.0 ") {
        let (code, reason) = after_version.split_at(after_version.len().min(3));
        let code = std::str::from_utf8(code).ok().and_then(|c| c.parse::<u16>().ok());
        return match (code, reason) {
            (Some(code @ 100..=699), []) => Ok(StartLine::Response { code, reason: b"" }),
            (Some(code @ 100..=699), [b' ', reason @ ..]) => Ok(StartLine::Response { code, reason }),
            _ => Err(ParseError::BadStartLine),
        };
    }
    let mut parts = line.splitn(3, |&c| c == b' ');
    let (Some(method), Some(uri), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ParseError::BadStartLine);
    };
    if method.is_empty() || uri.is_empty() || uri.contains(&b' ') || !method.iter().all(|c| c.is_ascii_graphic()) {
        return Err(ParseError::BadStartLine);
    }
    if version != SIP_VERSION {
        return Err(ParseError::BadVersion);
    }
    Ok(StartLine::Request { method, uri })
}

/// Iterator over the logical headers of a parsed header block.
#[derive(Clone, Debug)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        loop {
            let block = self.rest;
            let (first, mut after) = split_line(block)?;
            // Continuation lines start with a space or a tab.
            while let Some(&c) = after.first() {
                if !is_ws(c) {
                    break;
                }
                let (_, next) = split_line(after)?;
                after = next;
            }
            let raw_len = block.len() - after.len();
            let raw = &block[..raw_len];
            self.rest = after;
            // Lines without a colon only occur in a `frame`d message: skip them.
            let Some(colon) = first.iter().position(|&c| c == b':') else { continue };
            let name = trim(&first[..colon]);
            let value = &raw[colon + 1..raw_len - 2];
            return Some(Header { raw, name, value });
        }
    }
}

impl fmt::Display for Header<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:edge.example.net SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1,\r\n SIP/2.0/UDP 192.0.2.8;branch=z9hG4bK2\r\n\
        v: SIP/2.0/TCP 192.0.2.9;branch=z9hG4bK3\r\n\
        f: <sip:a@example.net>;tag=1\r\n\
        To : <sip:edge.example.net>\r\n\
        i: abc@192.0.2.7\r\n\
        CSeq: 7 OPTIONS\r\n\
        Content-Length: 4\r\n\
        \r\n\
        body";

    #[test]
    fn parses_request_headers_and_body() {
        let m = Message::parse(OPTIONS).unwrap();
        assert_eq!(m.start, StartLine::Request { method: b"OPTIONS", uri: b"sip:edge.example.net" });
        assert_eq!(m.body, b"body");
        let vias: Vec<_> = m.headers_named(HeaderName::Via).collect();
        assert_eq!(vias.len(), 2);
        assert_eq!(
            vias[0].value,
            b" SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1,\r\n SIP/2.0/UDP 192.0.2.8;branch=z9hG4bK2"
        );
        assert!(vias[0].raw.ends_with(b"z9hG4bK2\r\n"));
        let to = m.headers_named(HeaderName::To).next().unwrap();
        assert_eq!(to.name, b"To");
        assert_eq!(m.headers().count(), 7);
        // Raw lines put back together are the header block.
        let joined: Vec<u8> = m.headers().flat_map(|h| h.raw.iter().copied()).collect();
        let start = OPTIONS.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        assert_eq!(&OPTIONS[start..start + joined.len()], &joined[..]);
    }

    #[test]
    fn parses_responses() {
        let m = Message::parse(b"SIP/2.0 401 Unauthorized\r\nCall-ID: x\r\n\r\n").unwrap();
        assert_eq!(m.start, StartLine::Response { code: 401, reason: b"Unauthorized" });
        assert_eq!(m.method(), None);
    }

    #[test]
    fn rejects_broken_framing() {
        let cases: [(&[u8], ParseError); 7] = [
            (b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\n", ParseError::Unterminated),
            (b"OPTIONS sip:x\r\n\r\n", ParseError::BadStartLine),
            (b"OPTIONS sip:x SIP/3.0\r\n\r\n", ParseError::BadVersion),
            (b"OPTIONS sip:x SIP/2.0\r\nVia a\r\n\r\n", ParseError::HeaderWithoutColon),
            (b"OPTIONS sip:x SIP/2.0\r\n : a\r\n\r\n", ParseError::LeadingContinuation),
            (b"OPTIONS sip:x SIP/2.0\r\n: a\r\n\r\n", ParseError::EmptyHeaderName),
            (b"SIP/2.0 99 Early\r\n\r\n", ParseError::BadStartLine),
        ];
        for (input, want) in cases {
            assert_eq!(Message::parse(input).unwrap_err(), want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn compact_and_long_names_are_the_same_header() {
        for (name, want) in [
            ("VIA", HeaderName::Via),
            ("i", HeaderName::CallId),
            ("Call-Id", HeaderName::CallId),
            ("cSeQ", HeaderName::CSeq),
            ("X", HeaderName::Other),
        ] {
            assert_eq!(HeaderName::of(name.as_bytes()), want, "{name}");
        }
    }
}
