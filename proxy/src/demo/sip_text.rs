//! The little SIP the demo's simulated phones and call servers speak: a message read into
//! its start line and headers (compact forms expanded), and the few values they need.
//! Deliberately independent of the proxy's own parser: the simulators check the proxy
//! rather than share its assumptions.

/// A SIP message, split into lines.
#[derive(Debug)]
pub struct SipText<'a> {
    pub start: &'a str,
    /// Header name (canonical long form, as written otherwise) and value, in order.
    pub headers: Vec<(&'a str, &'a str)>,
}

impl<'a> SipText<'a> {
    /// Reads the head of a message (up to the empty line, or the whole text).
    pub fn parse(text: &'a str) -> Option<Self> {
        let head = text.split("\r\n\r\n").next()?;
        let mut lines = head.split("\r\n");
        let start = lines.next().filter(|l| !l.is_empty())?;
        let headers = lines
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((long_name(name.trim()), value.trim()))
            })
            .collect();
        Some(Self { start, headers })
    }

    /// Every value of header `name` (long form, case-insensitive).
    pub fn all(&self, name: &str) -> impl Iterator<Item = &'a str> + '_ {
        let name = name.to_owned();
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(&name)).map(|(_, v)| *v)
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.all(name).next()
    }

    /// The method of a request; `None` for a response.
    pub fn method(&self) -> Option<&'a str> {
        (!self.start.starts_with("SIP/2.0 ")).then(|| self.start.split(' ').next()).flatten()
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        self.start.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    /// The CSeq number.
    pub fn cseq(&self) -> Option<u32> {
        self.get("CSeq")?.split_whitespace().next()?.parse().ok()
    }

    /// The `;expires=` of the first Contact, else the Expires header.
    pub fn expires(&self) -> Option<u32> {
        self.get("Contact")
            .and_then(|c| param(c, "expires"))
            .and_then(|v| v.parse().ok())
            .or_else(|| self.get("Expires").and_then(|v| v.trim().parse().ok()))
    }
}

/// Compact header forms (RFC 3261 §7.3.3) in their long form.
fn long_name(name: &str) -> &str {
    match name {
        "v" | "V" => "Via",
        "f" | "F" => "From",
        "t" | "T" => "To",
        "i" | "I" => "Call-ID",
        "m" | "M" => "Contact",
        "l" | "L" => "Content-Length",
        other => other,
    }
}

/// The value of `;name=` among the parameters after the `>` of a name-addr (or after the
/// URI when there are no brackets).
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let params = match uri_end(value) {
        Some(end) => &value[end + 1..],
        None => value.split_once(';').map_or("", |(_, rest)| rest),
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Index of the `>` that closes the URI of a name-addr (a URI holds no `>`; a quoted
/// parameter value after it may).
fn uri_end(value: &str) -> Option<usize> {
    let start = value.find('<')?;
    value[start..].find('>').map(|end| start + end)
}

/// The address of record (`sip:user@host`) in a From or To value.
pub fn aor(value: &str) -> &str {
    let uri = match (value.find('<'), value.find('>')) {
        (Some(start), Some(end)) if start < end => &value[start + 1..end],
        _ => value.split(';').next().unwrap_or(value),
    };
    uri.trim()
}

/// A name-addr value with its `;expires=` parameter (if any) replaced by `expires`.
pub fn with_expires(contact: &str, expires: u32) -> String {
    let (addr, params) = match uri_end(contact) {
        Some(end) => contact.split_at(end + 1),
        None => contact.split_once(';').map_or((contact, ""), |(uri, _)| (uri, &contact[uri.len()..])),
    };
    let kept: Vec<&str> = params
        .split(';')
        .filter(|p| !p.trim().is_empty() && !p.trim().to_ascii_lowercase().starts_with("expires="))
        .collect();
    let mut out = addr.to_owned();
    for p in kept {
        out.push(';');
        out.push_str(p.trim());
    }
    out.push_str(&format!(";expires={expires}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_headers_params_and_compact_forms() {
        let text = "SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b\r\n\
                    m: <sip:u@h>;+sip.instance=\"<urn:uuid:x>\";expires=9\r\nCSeq: 7 REGISTER\r\n\r\n";
        let msg = SipText::parse(text).unwrap();
        assert_eq!(msg.status(), Some(200));
        assert_eq!(msg.method(), None);
        assert_eq!(msg.all("via").count(), 2);
        assert_eq!((msg.cseq(), msg.expires()), (Some(7), Some(9)));
        assert_eq!(aor("\"Alice\" <sip:alice@example.net>;tag=1"), "sip:alice@example.net");
        assert_eq!(
            with_expires("<sip:u@h>;+sip.instance=\"<urn:uuid:x>\";expires=9", 60),
            "<sip:u@h>;+sip.instance=\"<urn:uuid:x>\";expires=60"
        );
        let request = SipText::parse("REGISTER sip:d SIP/2.0\r\nExpires: 0\r\n\r\n").unwrap();
        assert_eq!((request.method(), request.expires()), (Some("REGISTER"), Some(0)));
    }
}
