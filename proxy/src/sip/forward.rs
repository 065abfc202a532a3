//! Rewriting messages that pass through the edge: a request forwarded to a backend (our
//! Via on top, a Path, Max-Forwards decremented, the expiry asked of the backend) and
//! its response on the way back (our Via removed; for a registration, the phone's own
//! grant and a Date).

use super::{
    HeaderName, Message,
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
    let request_line_end = memchr::memmem::find(raw, b"\r\n").map_or(raw.len(), |i| i + 2);
    out.extend_from_slice(&raw[..request_line_end]);
    push_header(out, "Via", how.via.as_bytes());
    if let Some(path) = how.path {
        push_header(out, "Path", path.as_bytes());
    }
    let mut saw_max_forwards = false;
    for header in request.headers() {
        if is_named(header.name, b"max-forwards") {
            saw_max_forwards = true;
            let hops = std::str::from_utf8(trim(header.value)).ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(70);
            if hops == 0 {
                return Err(TooManyHops);
            }
            push_header(out, "Max-Forwards", (hops - 1).to_string().as_bytes());
        } else if let (Some(expires), true) = (how.expires, is_named(header.name, b"expires")) {
            push_header(out, "Expires", expires.to_string().as_bytes());
        } else if let (Some(expires), true) = (how.expires, is_contact(header.name)) {
            push_header(out, "Contact", &with_expires(header.value, expires));
        } else {
            out.extend_from_slice(header.raw);
        }
    }
    if !saw_max_forwards {
        push_header(out, "Max-Forwards", b"69");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(request.body);
    Ok(())
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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
    let first = contact::split_values(via.value).next()?;
    let params = &first[first.iter().position(|&c| c == b';')? + 1..];
    contact::param(params, b"branch")
}

/// Writes `response` without its topmost Via line (ours) into `out`.
pub fn relay_response(response: &Message<'_>, raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let status_line_end = memchr::memmem::find(raw, b"\r\n").map_or(raw.len(), |i| i + 2);
    out.extend_from_slice(&raw[..status_line_end]);
    let mut skipped_ours = false;
    for header in response.headers() {
        if !skipped_ours && HeaderName::of(header.name) == HeaderName::Via {
            skipped_ours = true;
            continue;
        }
        out.extend_from_slice(header.raw);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(response.body);
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
    let status_line_end = memchr::memmem::find(raw, b"\r\n").map_or(raw.len(), |i| i + 2);
    out.extend_from_slice(&raw[..status_line_end]);
    let mut skipped_ours = false;
    for header in response.headers() {
        let name = header.name;
        if !skipped_ours && HeaderName::of(name) == HeaderName::Via {
            skipped_ours = true;
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
    fn dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_795_608_000), "Wed, 25 Nov 2026 12:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
