//! Fuzz targets for the SIP parser and the SIP stream decoder.

use super::{Script, chunks, offset_in, within};
use crate::{
    calls::token,
    registrar::request::RegisterRequest,
    sip::{
        HeaderName, Message, StartLine, contact,
        contact::Contact,
        forward,
        framing::{Frame, FramingError, StreamDecoder, StreamLimits},
        stateless::{self, ToTag},
        uri::{self, SipUri},
    },
};

/// `Message::parse` and `Message::frame` on arbitrary bytes: whatever they return borrows
/// from the buffer, in order, and adds up; `parse` accepting implies `frame` agreeing; the
/// typed readers the engine uses do not panic; a stateless answer to an answerable
/// request parses as a response carrying the request's Call-ID and CSeq.
pub fn parser(data: &[u8]) {
    let framed = Message::frame(data);
    match Message::parse(data) {
        Ok(msg) => {
            let framed = framed.unwrap_or_else(|e| panic!("parse accepts what frame rejects ({e})"));
            assert_eq!(framed.start, msg.start, "parse and frame disagree on the start line");
            assert!(std::ptr::eq(framed.body, msg.body), "parse and frame disagree on the body");
            check_message(data, &msg, true);
        }
        Err(_) => {
            if let Ok(msg) = framed {
                check_message(data, &msg, false);
            }
        }
    }
}

/// The first line ends at the first CRLF (as the parser splits lines).
fn first_line_end(data: &[u8]) -> usize {
    data.windows(2).position(|w| w == b"\r\n").expect("a framed message has a CRLF")
}

fn check_message(data: &[u8], msg: &Message<'_>, strict: bool) {
    let line_end = first_line_end(data);
    let first_line = &data[..line_end];
    match msg.start {
        StartLine::Request { method, uri } => {
            assert!(within(first_line, method) && within(first_line, uri), "start line pieces outside the line");
            assert!(!method.is_empty() && method.iter().all(u8::is_ascii_graphic), "bad method accepted");
            assert!(!uri.is_empty() && !uri.contains(&b' '), "bad Request-URI accepted");
            assert_eq!(msg.method(), Some(method));
        }
        StartLine::Response { code, reason } => {
            assert!((100..=699).contains(&code), "status {code} accepted");
            assert!(within(first_line, reason), "reason phrase outside the start line");
            assert_eq!(msg.method(), None);
        }
    }
    // The body is the buffer's tail, after the empty line.
    let body_at = offset_in(data, msg.body);
    assert_eq!(body_at + msg.body.len(), data.len(), "the body is not the buffer's tail");
    assert!(body_at >= line_end + 4, "the body starts inside the start line");
    assert_eq!(&data[body_at - 4..body_at], b"\r\n\r\n", "the header block does not end with an empty line");
    let headers_start = line_end + 2;
    let headers_end = body_at - 2;
    // Every header lies in the header block, in order, without overlap; name and value
    // lie in its raw lines.
    let mut at = headers_start;
    let mut counts = [0usize; 6];
    for header in msg.headers() {
        let raw_at = offset_in(data, header.raw);
        assert!(raw_at >= at, "headers overlap or go backwards");
        if strict {
            assert_eq!(raw_at, at, "parse left a gap between header lines");
        }
        at = raw_at + header.raw.len();
        assert!(at <= headers_end, "a header runs past the header block");
        assert!(header.raw.ends_with(b"\r\n"), "a header's raw lines do not end in CRLF");
        assert!(within(header.raw, header.name) && within(header.raw, header.value), "name or value outside raw");
        assert!(!header.name.contains(&b':'), "a header name holds a colon");
        if strict {
            assert!(!header.name.is_empty(), "parse accepted an empty header name");
        }
        let value_at = offset_in(data, header.value);
        assert_eq!(data[value_at - 1], b':', "a value does not follow its colon");
        assert_eq!(value_at + header.value.len() + 2, raw_at + header.raw.len(), "a value does not end at CRLF");
        counts[HeaderName::of(header.name) as usize] += 1;
    }
    if strict {
        assert_eq!(at, headers_end, "parse left header lines out of the walk");
    }
    for name in [HeaderName::Via, HeaderName::From, HeaderName::To, HeaderName::CallId, HeaderName::CSeq] {
        assert_eq!(msg.headers_named(name).count(), counts[name as usize], "headers_named({name:?}) disagrees");
    }
    typed_readers(msg);
    // The engine answers a request with broken header lines too (400), when the headers
    // an answer copies are there.
    if matches!(msg.start, StartLine::Request { .. }) && stateless::check_request(msg).is_ok() {
        answer_parses(msg);
    }
}

/// The readers that type headers on demand: none may panic, whatever the bytes.
fn typed_readers(msg: &Message<'_>) {
    let _ = stateless::check_request(msg);
    let _ = forward::top_via_branch(msg);
    let _ = forward::max_forwards(msg);
    for header in msg.headers() {
        let _ = stateless::parse_cseq(header.value);
        let _ = stateless::has_tag(header.value);
        for value in contact::split_values(header.value) {
            let _ = forward::via_param(value, b"branch");
            if let Some(c) = Contact::parse(value) {
                let _ = (c.param(b"expires"), c.param(b"+sip.instance"), contact::uri_hostport(c.uri));
                let _ = contact::uri_domain(c.uri);
                let _ = uri::proxy_host(c.uri);
                if let Some(u) = SipUri::parse(c.uri) {
                    let _ = (u.param(b"transport"), u.port_or_default());
                    let _ = token::looks_like_token(u.user.unwrap_or_default());
                }
            }
        }
    }
    match msg.start {
        StartLine::Request { method, uri } => {
            let _ = uri::proxy_host(uri);
            if method == b"REGISTER"
                && let Ok(request) = RegisterRequest::parse(msg)
            {
                assert!(!request.device.key.is_empty(), "a REGISTER typed without a device key");
                let _ = request.contact();
            }
        }
        StartLine::Response { .. } => {
            let _ = forward::granted_expires(msg, b"sip:1001@192.0.2.7:5062");
            let mut out = Vec::new();
            forward::relay_response(msg, b"SIP/2.0 200 OK\r\n\r\n", &mut out);
        }
    }
}

/// A stateless answer to a request that passed `check_request` is a SIP response with
/// the request's Call-ID and CSeq.
fn answer_parses(request: &Message<'_>) {
    let mut out = Vec::new();
    stateless::write_response(request, 400, "Bad Request", ToTag::for_node("fuzz"), &mut out);
    let answer = Message::parse(&out)
        .unwrap_or_else(|e| panic!("the answer does not parse ({e}): {:?}", String::from_utf8_lossy(&out)));
    assert_eq!(answer.start, StartLine::Response { code: 400, reason: b"Bad Request" });
    for name in [HeaderName::CallId, HeaderName::CSeq] {
        let want = request.headers_named(name).next().map(|h| crate::sip::message::trim(h.value));
        let got = answer.headers_named(name).next().map(|h| crate::sip::message::trim(h.value));
        assert_eq!(got, want, "the answer's {name:?} is not the request's");
    }
}

/// A frame copied out of the decoder.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Message(Vec<u8>),
    Ping,
    Pong,
}

/// What decoding a whole stream gave.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Owned>,
    error: Option<FramingError>,
    buffered: usize,
}

/// Decodes `pieces` in order, draining after each, the way the shell reads a socket.
fn decode(pieces: &[&[u8]], limits: StreamLimits, direct_reads: bool) -> Decoded {
    let mut dec = StreamDecoder::new(limits);
    let mut frames = Vec::new();
    let bound = limits.max_message.max(limits.max_headers).max(4);
    for piece in pieces {
        if direct_reads {
            let room = dec.read_buf(piece.len());
            room[..piece.len()].copy_from_slice(piece);
            dec.commit(piece.len());
        } else {
            dec.extend(piece);
        }
        loop {
            match dec.next_frame() {
                Ok(Some(Frame::Message(m))) => frames.push(Owned::Message(m.to_vec())),
                Ok(Some(Frame::Ping)) => frames.push(Owned::Ping),
                Ok(Some(Frame::Pong)) => frames.push(Owned::Pong),
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(dec.next_frame(), Err(error), "an error is not final");
                    return Decoded { frames, error: Some(error), buffered: dec.buffered() };
                }
            }
        }
        assert!(dec.buffered() < bound, "{} bytes held after draining (limit {bound})", dec.buffered());
    }
    Decoded { frames, error: None, buffered: dec.buffered() }
}

/// The SIP stream decoder on a stream cut at points the input chooses: the same frames,
/// error and leftover as when it all arrives at once; the frames put back together are
/// the stream's prefix; every message respects the limits and its Content-Length.
pub fn stream_framing(data: &[u8]) {
    let mut script = Script::new(data);
    let limits = match script.byte() % 4 {
        0 => StreamLimits::default(),
        1 => StreamLimits { max_message: 300, max_headers: 200 },
        2 => StreamLimits { max_message: 128, max_headers: 256 },
        _ => StreamLimits { max_message: 64 + script.below(512), max_headers: 16 + script.below(256) },
    };
    let direct_reads = script.byte() & 1 == 1;
    let sizes = script.bytes(8);
    let stream = script.rest();
    let whole = decode(&[stream], limits, false);
    let split = decode(&chunks(stream, sizes), limits, direct_reads);
    assert_eq!(whole, split, "the frames depend on how the stream was split");
    if stream.len() <= 256 {
        let bytewise = decode(&chunks(stream, &[1]), limits, !direct_reads);
        assert_eq!(whole, bytewise, "the frames differ when bytes arrive one at a time");
    }
    let mut joined = Vec::new();
    for frame in &whole.frames {
        match frame {
            Owned::Ping => joined.extend_from_slice(b"\r\n\r\n"),
            Owned::Pong => joined.extend_from_slice(b"\r\n"),
            Owned::Message(m) => {
                check_framed_message(m, limits);
                joined.extend_from_slice(m);
            }
        }
    }
    assert!(stream.starts_with(&joined), "the frames are not the stream's bytes in order");
    if whole.error.is_none() {
        assert_eq!(joined.len() + whole.buffered, stream.len(), "bytes lost between frames");
    }
}

fn check_framed_message(m: &[u8], limits: StreamLimits) {
    assert!(!m.starts_with(b"\r\n"), "a message starts with a keepalive CRLF");
    assert!(m.len() <= limits.max_message, "a message beyond max_message");
    let head = m.windows(4).position(|w| w == b"\r\n\r\n").expect("a message without an empty line") + 4;
    assert!(head <= limits.max_headers, "a header block beyond max_headers");
    // The body is what Content-Length said (all its values agree, checked by the decoder).
    let body = m.len() - head;
    let declared = String::from_utf8_lossy(&m[..head]).split("\r\n").skip(1).find_map(|line| {
        if line.starts_with([' ', '\t']) {
            return None;
        }
        let (name, value) = line.split_once(':')?;
        let name = name.trim_matches([' ', '\t']);
        (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l"))
            .then(|| value.trim_matches([' ', '\t']).parse::<usize>().ok())
            .flatten()
    });
    if let Some(declared) = declared {
        assert_eq!(declared, body, "the body is not Content-Length bytes");
    }
}
