//! Responses the edge sends without keeping transaction state: the 200 OK to an OPTIONS
//! addressed to the proxy, and 4xx/5xx answers to requests it rejects.
//!
//! The XDP program builds the same 200 OK byte for byte (`ebpf/regedge-ebpf/src/
//! options.rs`), so the rules here are the contract between the two:
//! - status line, then every Via, From, To, Call-ID and CSeq header of the request,
//!   copied verbatim in request order (continuation lines included);
//! - this node's To-tag appended (`;tag=<8 hex>`) to a To whose value holds no `;tag=`
//!   (case-insensitive), just before the To header's final CRLF;
//! - `Content-Length: 0` and the empty line.
//!
//! A request gets an answer only when [`check_request`] accepts it: Via at least once;
//! From, To, Call-ID and CSeq exactly once; none empty; CSeq `<number ≤ 2^31-1> <method>`
//! with the request's method. The kernel answers a subset of these requests (it passes
//! anything it does not fully decode) and never a request this module would reject.

use regedge_common::sip::{CONTENT_LENGTH_0, TO_TAG_LEN};

use super::message::{HeaderName, Message, trim};

/// The To-tag a node puts in its stateless responses: eight lower-case hex digits derived
/// from the node name, so the kernel and userspace (and restarts) agree on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToTag([u8; TO_TAG_LEN]);

impl ToTag {
    pub fn for_node(name: &str) -> Self {
        // FNV-1a, 32 bits.
        let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
        let mut tag = [0u8; TO_TAG_LEN];
        for (i, slot) in tag.iter_mut().enumerate() {
            let nibble = (hash >> (28 - 4 * i)) & 0xf;
            *slot = b"0123456789abcdef"[nibble as usize];
        }
        Self(tag)
    }

    pub fn bytes(&self) -> [u8; TO_TAG_LEN] {
        self.0
    }
}

/// Why a request is rejected before any routing decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("missing {}", .0.canonical())]
    Missing(HeaderName),
    #[error("duplicate {}", .0.canonical())]
    Duplicate(HeaderName),
    #[error("empty {}", .0.canonical())]
    Empty(HeaderName),
    #[error("malformed CSeq")]
    BadCSeq,
    #[error("CSeq method does not match the request method")]
    CSeqMethodMismatch,
}

impl RequestError {
    /// Whether a response can be sent at all: without these headers there is nothing to
    /// route a response by or to correlate it with.
    pub fn is_answerable(self) -> bool {
        !matches!(self, Self::Missing(_))
    }

    /// Status code and reason phrase of the answer.
    pub const fn status(self) -> (u16, &'static str) {
        match self {
            Self::Missing(_) => (400, "Missing Header"),
            Self::Duplicate(HeaderName::From) => (400, "Duplicate From"),
            Self::Duplicate(HeaderName::To) => (400, "Duplicate To"),
            Self::Duplicate(HeaderName::CallId) => (400, "Duplicate Call-ID"),
            Self::Duplicate(_) => (400, "Duplicate CSeq"),
            Self::Empty(_) => (400, "Empty Header"),
            Self::BadCSeq => (400, "Bad CSeq"),
            Self::CSeqMethodMismatch => (400, "CSeq Method Mismatch"),
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_header",
            Self::Duplicate(_) => "duplicate_header",
            Self::Empty(_) => "empty_header",
            Self::BadCSeq => "bad_cseq",
            Self::CSeqMethodMismatch => "cseq_method_mismatch",
        }
    }
}

/// Largest CSeq sequence number (RFC 3261 §8.1.1.5).
pub const CSEQ_MAX: u32 = (1 << 31) - 1;

/// The CSeq number and method, if the value is `<digits> <method>`.
pub fn parse_cseq(value: &[u8]) -> Option<(u32, &[u8])> {
    let value = trim(value);
    let digits_end = value.iter().position(|c| !c.is_ascii_digit())?;
    let (digits, rest) = value.split_at(digits_end);
    if digits.is_empty() || !matches!(rest.first(), Some(b' ' | b'\t')) {
        return None;
    }
    let number = digits.iter().try_fold(0u32, |n, d| {
        let n = n as u64 * 10 + (d - b'0') as u64;
        (n <= CSEQ_MAX as u64).then_some(n as u32)
    })?;
    let method = trim(rest);
    if method.is_empty() || method.iter().any(|&c| c == b' ' || c == b'\t') {
        return None;
    }
    Some((number, method))
}

/// Checks the headers every answer copies. See the module documentation.
pub fn check_request(msg: &Message<'_>) -> Result<(), RequestError> {
    const CHECKED: [HeaderName; 5] =
        [HeaderName::Via, HeaderName::From, HeaderName::To, HeaderName::CallId, HeaderName::CSeq];
    let mut counts = [0u32; CHECKED.len()];
    let mut cseq: &[u8] = b"";
    for header in msg.headers() {
        let name = HeaderName::of(header.name);
        let Some(slot) = CHECKED.iter().position(|&n| n == name) else { continue };
        counts[slot] += 1;
        if trim(header.value).is_empty() {
            return Err(RequestError::Empty(name));
        }
        if counts[slot] > 1 && name != HeaderName::Via {
            return Err(RequestError::Duplicate(name));
        }
        if name == HeaderName::CSeq {
            cseq = header.value;
        }
    }
    if let Some(slot) = counts.iter().position(|&c| c == 0) {
        return Err(RequestError::Missing(CHECKED[slot]));
    }
    let (_, method) = parse_cseq(cseq).ok_or(RequestError::BadCSeq)?;
    if Some(method) != msg.method() {
        return Err(RequestError::CSeqMethodMismatch);
    }
    Ok(())
}

/// Whether a To (or From) value carries a tag (case-insensitive `;tag=`).
pub fn has_tag(to_value: &[u8]) -> bool {
    to_value.windows(5).any(|w| w.eq_ignore_ascii_case(b";tag="))
}

/// Writes a stateless response to `request` into `out` (cleared first).
pub fn write_response(request: &Message<'_>, status: u16, reason: &str, tag: ToTag, out: &mut Vec<u8>) {
    write_response_with(request, status, reason, tag, b"", out);
}

/// Like [`write_response`], with `extra` header lines (each ending in CRLF) before
/// Content-Length.
pub fn write_response_with(
    request: &Message<'_>,
    status: u16,
    reason: &str,
    tag: ToTag,
    extra: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(b"SIP/2.0 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in request.headers() {
        // A request answered for its broken framing may start its headers with a
        // continuation line: the copy starts at the name, so the answer still parses.
        let indent = header.raw.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
        let raw = &header.raw[indent..];
        match HeaderName::of(header.name) {
            HeaderName::Other => {}
            HeaderName::To if !has_tag(header.value) => {
                out.extend_from_slice(&raw[..raw.len() - 2]);
                out.extend_from_slice(b";tag=");
                out.extend_from_slice(&tag.0);
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(raw),
        }
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(CONTENT_LENGTH_0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    #[test]
    fn ok_copies_the_dialog_headers_and_tags_the_to() {
        let req = request(
            "OPTIONS sip:edge SIP/2.0\n\
             Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1;rport\n\
             Max-Forwards: 70\n\
             To: <sip:edge>\n \t;x=1\n\
             From: <sip:a@b>;tag=9\n\
             v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK0\n\
             i: c1\n\
             CSeq: 7 OPTIONS\n\
             Contact: <sip:a@192.0.2.7:5062>\n\
             \n",
        );
        let msg = Message::parse(&req).unwrap();
        check_request(&msg).unwrap();
        let mut out = Vec::new();
        write_response(&msg, 200, "OK", ToTag(*b"0123abcd"), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            request(
                "SIP/2.0 200 OK\n\
                 Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1;rport\n\
                 To: <sip:edge>\n \t;x=1;tag=0123abcd\n\
                 From: <sip:a@b>;tag=9\n\
                 v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK0\n\
                 i: c1\n\
                 CSeq: 7 OPTIONS\n\
                 Content-Length: 0\n\
                 \n"
            )
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
        );
    }

    #[test]
    fn an_existing_to_tag_is_kept() {
        let req =
            request("OPTIONS sip:e SIP/2.0\nVia: x\nFrom: f\nTo: <sip:e>;TAG=77\nCall-ID: c\nCSeq: 1 OPTIONS\n\n");
        let msg = Message::parse(&req).unwrap();
        let mut out = Vec::new();
        write_response(&msg, 200, "OK", ToTag::for_node("n"), &mut out);
        assert!(out.windows(19).any(|w| w == b"To: <sip:e>;TAG=77\r"));
        assert!(!out.windows(5).any(|w| w == b";tag="));
    }

    #[test]
    fn request_checks_name_the_problem() {
        let cases = [
            ("Via: x\nFrom: f\nTo: t\nCSeq: 1 OPTIONS\n", Err(RequestError::Missing(HeaderName::CallId))),
            (
                "Via: x\nFrom: f\nTo: t\nt: u\nCall-ID: c\nCSeq: 1 OPTIONS\n",
                Err(RequestError::Duplicate(HeaderName::To)),
            ),
            ("Via: x\nFrom:  \nTo: t\nCall-ID: c\nCSeq: 1 OPTIONS\n", Err(RequestError::Empty(HeaderName::From))),
            ("Via: x\nFrom: f\nTo: t\nCall-ID: c\nCSeq: 2147483648 OPTIONS\n", Err(RequestError::BadCSeq)),
            ("Via: x\nFrom: f\nTo: t\nCall-ID: c\nCSeq: OPTIONS\n", Err(RequestError::BadCSeq)),
            ("Via: x\nFrom: f\nTo: t\nCall-ID: c\nCSeq: 1 INVITE\n", Err(RequestError::CSeqMethodMismatch)),
            ("Via: x\nv: y\nFrom: f\nTo: t\nCall-ID: c\nCSeq:  2147483647\tOPTIONS \n", Ok(())),
        ];
        for (headers, want) in cases {
            let req = request(&format!("OPTIONS sip:e SIP/2.0\n{headers}\n"));
            let msg = Message::parse(&req).unwrap();
            assert_eq!(check_request(&msg), want, "{headers}");
        }
    }

    #[test]
    fn to_tag_is_stable_hex() {
        let tag = ToTag::for_node("edge-1");
        assert_eq!(tag, ToTag::for_node("edge-1"));
        assert_ne!(tag, ToTag::for_node("edge-2"));
        assert!(tag.bytes().iter().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
