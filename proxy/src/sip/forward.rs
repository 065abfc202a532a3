//! Rewriting messages that pass through the edge: a REGISTER forwarded to a backend (our
//! Via on top, a Path, Max-Forwards decremented, the expiry asked of the backend), any
//! other request proxied statelessly (RFC 3261 §16.6: our Via, Record-Route, Route
//! entries naming us removed, received/rport stamped on the sender's Via), and responses
//! on the way back (our Via removed; for a registration, the phone's own grant and a Date).

use super::{
    HeaderName, Message, StartLine,
    contact::{self, Contact},
    message::trim,
};

/// The request's Max-Forwards was 0 (RFC 3261 §16.3: answer 483).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyHops;

/// How a forwarded request changes.
pub struct ForwardRequest<'a> {
    /// Our Via value, e.g. `SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-...;rport`.
    pub via: &'a str,
    /// A Path value to add (RFC 3327), e.g. `<sip:token@192.0.2.1:5060;lr;ob>`.
    pub path: Option<&'a str>,
    /// The expiry to ask for: replaces the Expires header and a contact `expires` parameter.
    pub expires: Option<u32>,
    /// A URI that replaces the contact's (for backends that do not honour Path).
    pub contact_uri: Option<&'a str>,
}

/// How a request proxied statelessly changes (RFC 3261 §16.6).
pub struct ProxiedRequest<'a> {
    /// A new Request-URI (a phone's contact in place of a flow-token URI), else kept.
    pub request_uri: Option<&'a [u8]>,
    /// Our Via value.
    pub via: &'a str,
    /// Where the request came from: stamped on the sender's Via as `received` and, when it
    /// asked with `rport`, the port (RFC 3581).
    pub source: std::net::SocketAddr,
    /// Record-Route values put on top, in this order.
    pub record_route: &'a [String],
    /// How many of the first Route values to remove (the ones naming this node).
    pub strip_routes: usize,
}

fn is_named(name: &[u8], wanted: &[u8]) -> bool {
    name.eq_ignore_ascii_case(wanted)
}

fn is_contact(name: &[u8]) -> bool {
    is_named(name, b"contact") || is_named(name, b"m")
}

/// Writes `request` as forwarded by `how` into `out` (cleared first).
pub fn forward_request(
    request: &Message<'_>,
    raw: &[u8],
    how: &ForwardRequest<'_>,
    out: &mut Vec<u8>,
) -> Result<(), TooManyHops> {
    out.clear();
    out.extend_from_slice(start_line(raw));
    push_header(out, "Via", how.via.as_bytes());
    if let Some(path) = how.path {
        push_header(out, "Path", path.as_bytes());
    }
    let mut saw_max_forwards = false;
    for header in request.headers() {
        if is_named(header.name, b"max-forwards") {
            saw_max_forwards = true;
            push_decremented_max_forwards(out, header.value)?;
        } else if let (Some(expires), true) = (how.expires, is_named(header.name, b"expires")) {
            push_header(out, "Expires", expires.to_string().as_bytes());
        } else if is_contact(header.name) && (how.expires.is_some() || how.contact_uri.is_some()) {
            let mut value = header.value.to_vec();
            if let Some(uri) = how.contact_uri {
                value = with_uri(&value, uri.as_bytes());
            }
            if let Some(expires) = how.expires {
                value = with_expires(&value, expires);
            }
            push_header(out, "Contact", &value);
        } else {
            out.extend_from_slice(header.raw);
        }
    }
    finish_request(out, saw_max_forwards, request.body);
    Ok(())
}

/// The request's Max-Forwards, when it has a readable one.
pub fn max_forwards(request: &Message<'_>) -> Option<u32> {
    let header = request.headers().find(|h| is_named(h.name, b"max-forwards"))?;
    std::str::from_utf8(trim(header.value)).ok()?.parse().ok()
}

/// Writes `request` as a stateless proxy forwards it (see [`ProxiedRequest`]) into `out`
/// (cleared first). Max-Forwards 0 is refused: the caller answers 483 (or drops an ACK).
pub fn proxy_request(
    request: &Message<'_>,
    raw: &[u8],
    how: &ProxiedRequest<'_>,
    out: &mut Vec<u8>,
) -> Result<(), TooManyHops> {
    out.clear();
    match (how.request_uri, request.start) {
        (Some(uri), StartLine::Request { method, .. }) => {
            out.extend_from_slice(method);
            out.push(b' ');
            out.extend_from_slice(uri);
            out.extend_from_slice(b" SIP/2.0\r\n");
        }
        _ => out.extend_from_slice(start_line(raw)),
    }
    push_header(out, "Via", how.via.as_bytes());
    for value in how.record_route {
        push_header(out, "Record-Route", value.as_bytes());
    }
    let (mut saw_max_forwards, mut stamped, mut routes_left) = (false, false, how.strip_routes);
    for header in request.headers() {
        if is_named(header.name, b"max-forwards") {
            saw_max_forwards = true;
            push_decremented_max_forwards(out, header.value)?;
        } else if !stamped && HeaderName::of(header.name) == HeaderName::Via {
            stamped = true;
            let mut values = contact::split_values(header.value);
            let mut value = values.next().map(|top| stamp_received(top, how.source)).unwrap_or_default();
            for rest in values {
                value.extend_from_slice(b", ");
                value.extend_from_slice(rest);
            }
            push_header(out, "Via", &value);
        } else if routes_left > 0 && is_named(header.name, b"route") {
            let kept: Vec<&[u8]> = contact::split_values(header.value)
                .filter(|_| {
                    let strip = routes_left > 0;
                    routes_left = routes_left.saturating_sub(1);
                    !strip
                })
                .collect();
            if !kept.is_empty() {
                push_header(out, "Route", &kept.join(&b", "[..]));
            }
        } else {
            out.extend_from_slice(header.raw);
        }
    }
    finish_request(out, saw_max_forwards, request.body);
    Ok(())
}

/// A Via value with `received` (when the sent-by host is not the source address, or the
/// sender asked with `rport`) and `rport` filled in (RFC 3261 §18.2.1, RFC 3581 §4).
pub fn stamp_received(via: &[u8], source: std::net::SocketAddr) -> Vec<u8> {
    let via = trim(via);
    let (head, params) = match via.iter().position(|&c| c == b';') {
        Some(semi) => (&via[..semi], &via[semi + 1..]),
        None => (via, &b""[..]),
    };
    let sent_by = trim(head.rsplit(|&c| c == b' ' || c == b'\t').next().unwrap_or_default());
    let host = super::uri::SipUri::parse(&[b"sip:", sent_by].concat()).map(|u| u.host.to_vec()).unwrap_or_default();
    let source_ip = match source.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let asked_rport = contact::param(params, b"rport").is_some();
    let mut out = head.to_vec();
    for param in params.split(|&c| c == b';').filter(|p| !trim(p).is_empty()) {
        let key = trim(param.split(|&c| c == b'=').next().unwrap_or_default());
        if key.eq_ignore_ascii_case(b"received") || key.eq_ignore_ascii_case(b"rport") {
            continue;
        }
        out.push(b';');
        out.extend_from_slice(param);
    }
    if asked_rport || !host.eq_ignore_ascii_case(source_ip.as_bytes()) {
        out.extend_from_slice(b";received=");
        out.extend_from_slice(source.ip().to_string().as_bytes());
    }
    if asked_rport {
        out.extend_from_slice(format!(";rport={}", source.port()).as_bytes());
    }
    out
}

/// `Max-Forwards: value - 1` (70 when unreadable); refused when it was 0 (RFC 3261 §16.3).
fn push_decremented_max_forwards(out: &mut Vec<u8>, value: &[u8]) -> Result<(), TooManyHops> {
    let hops = std::str::from_utf8(trim(value)).ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(70);
    if hops == 0 {
        return Err(TooManyHops);
    }
    push_header(out, "Max-Forwards", (hops - 1).to_string().as_bytes());
    Ok(())
}

/// The end of a forwarded request: a Max-Forwards when it had none, the empty line, the body.
fn finish_request(out: &mut Vec<u8>, saw_max_forwards: bool, body: &[u8]) {
    if !saw_max_forwards {
        push_header(out, "Max-Forwards", b"69");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The first line of a message, with its CRLF.
fn start_line(raw: &[u8]) -> &[u8] {
    &raw[..memchr::memmem::find(raw, b"\r\n").map_or(raw.len(), |i| i + 2)]
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Contact values with the URI replaced by `uri` (each one of them; a REGISTER that
/// gets a rewritten contact has exactly one).
fn with_uri(value: &[u8], uri: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + uri.len());
    for (i, one) in contact::split_values(value).enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        let Some(parsed) = Contact::parse(one) else {
            out.extend_from_slice(one);
            continue;
        };
        out.push(b'<');
        out.extend_from_slice(uri);
        out.push(b'>');
        if !parsed.params.is_empty() {
            out.push(b';');
            out.extend_from_slice(parsed.params);
        }
    }
    out
}

/// Contact values with every `expires` parameter set to `expires`.
fn with_expires(value: &[u8], expires: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 8);
    for (i, one) in contact::split_values(value).enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        let Some(parsed) = Contact::parse(one) else {
            out.extend_from_slice(one);
            continue;
        };
        if parsed.param(b"expires").is_none() {
            out.extend_from_slice(one);
            continue;
        }
        let params_start = one.len() - parsed.params.len();
        out.extend_from_slice(&one[..params_start]);
        for (j, param) in parsed.params.split(|&c| c == b';').enumerate() {
            if j > 0 {
                out.push(b';');
            }
            let key = trim(param.split(|&c| c == b'=').next().unwrap_or_default());
            if key.eq_ignore_ascii_case(b"expires") {
                out.extend_from_slice(format!("expires={expires}").as_bytes());
            } else {
                out.extend_from_slice(param);
            }
        }
    }
    out
}

/// The branch of the topmost Via.
pub fn top_via_branch<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    let via = msg.headers_named(HeaderName::Via).next()?;
    via_param(contact::split_values(via.value).next()?, b"branch")
}

/// Parameter `name` of one Via value (`SIP/2.0/UDP host:port;name=value;...`).
pub fn via_param<'a>(via: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let params = &via[via.iter().position(|&c| c == b';')? + 1..];
    contact::param(params, name)
}

/// Writes `response` without its topmost Via line (ours) into `out`.
pub fn relay_response(response: &Message<'_>, raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(start_line(raw));
    let mut skipped_ours = false;
    for header in response.headers() {
        if !skipped_ours && HeaderName::of(header.name) == HeaderName::Via {
            skipped_ours = true;
            push_without_top_via(out, header.value);
            continue;
        }
        out.extend_from_slice(header.raw);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(response.body);
}

/// The Via header whose first value (ours) is removed: nothing when it was the only
/// one, else the rest of a combined `Via: a, b, c` line.
fn push_without_top_via(out: &mut Vec<u8>, value: &[u8]) {
    let rest: Vec<&[u8]> = contact::split_values(value).skip(1).collect();
    if !rest.is_empty() {
        push_header(out, "Via", &rest.join(&b", "[..]));
    }
}

/// The 2xx to a phone's REGISTER, from the backend's: our Via removed, the phone's
/// contact alone with the phone's grant, an Expires to match, and Date.
pub fn registration_ok(
    response: &Message<'_>,
    raw: &[u8],
    contact_uri: &[u8],
    grant: u32,
    date_line: &str,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(start_line(raw));
    let mut skipped_ours = false;
    for header in response.headers() {
        let name = header.name;
        if !skipped_ours && HeaderName::of(name) == HeaderName::Via {
            skipped_ours = true;
            push_without_top_via(out, header.value);
        } else if !(is_contact(name)
            || is_named(name, b"expires")
            || is_named(name, b"date")
            || is_named(name, b"content-length")
            || is_named(name, b"l"))
        {
            out.extend_from_slice(header.raw);
        }
    }
    push_binding_headers(out, contact_uri, grant, date_line);
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}

/// `Contact: <uri>;expires=N` and `Expires: N` lines, then `date_line` (a whole
/// `Date: ...\r\n` line, or empty).
pub fn push_binding_headers(out: &mut Vec<u8>, contact_uri: &[u8], grant: u32, date_line: &str) {
    out.extend_from_slice(b"Contact: <");
    out.extend_from_slice(contact_uri);
    out.extend_from_slice(format!(">;expires={grant}\r\nExpires: {grant}\r\n{date_line}").as_bytes());
}

/// The expiry a registrar's 2xx grants `contact_uri`: its `expires` parameter in the
/// Contact list, else the Expires header.
pub fn granted_expires(response: &Message<'_>, contact_uri: &[u8]) -> Option<u32> {
    let parse = |v: &[u8]| std::str::from_utf8(trim(v)).ok()?.parse::<u32>().ok();
    let from_contact = response
        .headers()
        .filter(|h| is_contact(h.name))
        .flat_map(|h| contact::split_values(h.value))
        .filter_map(Contact::parse)
        .find(|c| same_uri(c.uri, contact_uri))
        .and_then(|c| c.param(b"expires").and_then(parse));
    from_contact.or_else(|| response.headers().find(|h| is_named(h.name, b"expires")).and_then(|h| parse(h.value)))
}

/// URIs compared as registrars do for bindings: case-insensitive scheme and host, but
/// byte-wise is what every registrar here echoes back, so compare case-insensitively.
fn same_uri(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// An IMF-fixdate (RFC 7231 §7.1.1.1), the form SIP's Date header uses (RFC 3261 §20.17).
pub fn http_date(unix_secs: u64) -> String {
    use regedge_common::date::{MONTHS, WEEKDAYS, civil_from_days};
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1;rport\r\n\
        Max-Forwards: 70\r\nFrom: <sip:1001@example.net>;tag=a\r\nTo: <sip:1001@example.net>\r\nCall-ID: c1\r\n\
        CSeq: 2 REGISTER\r\nContact: <sip:1001@192.0.2.7:5062>;expires=120;+sip.instance=\"<urn:uuid:x>\"\r\nExpires: 120\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn forwarded_register() {
        let msg = Message::parse(REGISTER.as_bytes()).unwrap();
        let mut out = Vec::new();
        let how = ForwardRequest {
            via: "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-rg1;rport",
            path: Some("<sip:tok@10.0.0.1:5060;lr>"),
            expires: Some(3600),
            contact_uri: None,
        };
        forward_request(&msg, REGISTER.as_bytes(), &how, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-rg1;rport\r\nPath: <sip:tok@10.0.0.1:5060;lr>\r\nVia: SIP/2.0/UDP 192.0.2.7:5062"), "{text}");
        assert!(text.contains("\r\nMax-Forwards: 69\r\n") && text.contains("\r\nExpires: 3600\r\n"), "{text}");
        assert!(
            text.contains("Contact: <sip:1001@192.0.2.7:5062>;expires=3600;+sip.instance=\"<urn:uuid:x>\"\r\n"),
            "{text}"
        );
        let reparsed = Message::parse(text.as_bytes()).unwrap();
        assert_eq!(top_via_branch(&reparsed), Some(&b"z9hG4bK-rg1"[..]));

        let zero = REGISTER.replace("Max-Forwards: 70", "Max-Forwards: 0");
        let msg = Message::parse(zero.as_bytes()).unwrap();
        assert_eq!(forward_request(&msg, zero.as_bytes(), &how, &mut Vec::new()), Err(TooManyHops));
    }

    #[test]
    fn responses_lose_our_via_and_carry_the_phone_grant() {
        let response = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-rg1;rport=5060\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1;rport=5062\r\n\
            From: <sip:1001@example.net>;tag=a\r\nTo: <sip:1001@example.net>;tag=b\r\nCall-ID: c1\r\nCSeq: 2 REGISTER\r\n\
            Contact: <sip:other@192.0.2.8>;expires=50, <sip:1001@192.0.2.7:5062>;expires=3590\r\nContent-Length: 0\r\n\r\n";
        let msg = Message::parse(response.as_bytes()).unwrap();
        assert_eq!(granted_expires(&msg, b"sip:1001@192.0.2.7:5062"), Some(3590));
        let mut out = Vec::new();
        relay_response(&msg, response.as_bytes(), &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("10.0.0.1"));
        // Vias combined on one line (as sipp's [last_Via:] writes them): only ours goes.
        let combined = response.replace(";rport=5060\r\nVia: ", ";rport=5060, ");
        relay_response(&Message::parse(combined.as_bytes()).unwrap(), combined.as_bytes(), &mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1;rport=5062\r\n"),
            "{text}"
        );
        registration_ok(
            &msg,
            response.as_bytes(),
            b"sip:1001@192.0.2.7:5062",
            117,
            "Date: Wed, 25 Nov 2026 12:00:00 GMT\r\n",
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.7:5062"), "{text}");
        assert!(text.contains("\r\nContact: <sip:1001@192.0.2.7:5062>;expires=117\r\nExpires: 117\r\nDate: Wed, 25 Nov 2026 12:00:00 GMT\r\nContent-Length: 0\r\n\r\n"), "{text}");
        assert!(!text.contains("other@"));
    }

    #[test]
    fn proxied_request() {
        let invite = "INVITE sip:1002@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.2:5062;branch=z9hG4bKa;rport\r\n\
            Route: <sip:192.0.2.1;lr>, <sip:tok@192.0.2.1;lr>, <sip:cm@10.0.0.11;lr>\r\nRoute: <sip:last@10.0.0.12;lr>\r\n\
            Max-Forwards: 70\r\nFrom: <sip:1001@example.net>;tag=a\r\nTo: <sip:1002@example.net>\r\nCall-ID: c1\r\n\
            CSeq: 1 INVITE\r\nContent-Length: 4\r\n\r\nv=0\n";
        let msg = Message::parse(invite.as_bytes()).unwrap();
        let rr = ["<sip:t@192.0.2.1;lr>".to_owned()];
        let how = ProxiedRequest {
            request_uri: Some(b"sip:1002@10.9.0.3:5064"),
            via: "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-rp1",
            source: "198.51.100.7:40000".parse().unwrap(),
            record_route: &rr,
            strip_routes: 2,
        };
        let mut out = Vec::new();
        proxy_request(&msg, invite.as_bytes(), &how, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "INVITE sip:1002@10.9.0.3:5064 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-rp1\r\n\
             Record-Route: <sip:t@192.0.2.1;lr>\r\n\
             Via: SIP/2.0/UDP 10.9.0.2:5062;branch=z9hG4bKa;received=198.51.100.7;rport=40000\r\n\
             Route: <sip:cm@10.0.0.11;lr>\r\nRoute: <sip:last@10.0.0.12;lr>\r\nMax-Forwards: 69\r\n\
             From: <sip:1001@example.net>;tag=a\r\nTo: <sip:1002@example.net>\r\nCall-ID: c1\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 4\r\n\r\nv=0\n"
        );
        let zero = invite.replace("Max-Forwards: 70", "Max-Forwards: 0");
        let msg = Message::parse(zero.as_bytes()).unwrap();
        assert_eq!(proxy_request(&msg, zero.as_bytes(), &how, &mut Vec::new()), Err(TooManyHops));
    }

    #[test]
    fn received_and_rport() {
        let source = "192.0.2.9:6000".parse().unwrap();
        let stamp = |via: &str| String::from_utf8(stamp_received(via.as_bytes(), source)).unwrap();
        assert_eq!(stamp("SIP/2.0/UDP 192.0.2.9:6000;branch=z9hG4bK1"), "SIP/2.0/UDP 192.0.2.9:6000;branch=z9hG4bK1");
        assert_eq!(
            stamp("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1"),
            "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;received=192.0.2.9"
        );
        assert_eq!(
            stamp("SIP/2.0/TCP phone.example;rport;branch=z9hG4bK1;received=1.1.1.1"),
            "SIP/2.0/TCP phone.example;branch=z9hG4bK1;received=192.0.2.9;rport=6000"
        );
        let v6 = stamp_received(b"SIP/2.0/UDP [2001:db8::9]:5060;branch=b", "[2001:db8::9]:5060".parse().unwrap());
        assert_eq!(v6, b"SIP/2.0/UDP [2001:db8::9]:5060;branch=b");
    }

    #[test]
    fn dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_795_608_000), "Wed, 25 Nov 2026 12:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
