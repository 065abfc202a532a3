//! Contact header values (RFC 3261 §20.10): `["name"] <uri>;params` or `uri;params`,
//! several per header separated by commas (outside quotes and angle brackets), or `*`.

use super::message::trim;

/// One contact: its URI and its raw parameter list (after the URI, without the leading `;`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contact<'a> {
    pub uri: &'a [u8],
    pub params: &'a [u8],
}

/// Splits a header value at commas that are outside quotes and angle brackets.
pub fn split_values(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut angled, mut escaped) = (false, false, false);
        for (i, &c) in s.iter().enumerate() {
            match c {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b'<' if !quoted => angled = true,
                b'>' if !quoted => angled = false,
                b',' if !quoted && !angled => {
                    rest = Some(&s[i + 1..]);
                    return Some(trim(&s[..i]));
                }
                _ => {}
            }
        }
        rest = None;
        Some(trim(s))
    })
    .filter(|v| !v.is_empty())
}

impl<'a> Contact<'a> {
    /// Parses one contact value; `None` if it is malformed (an unclosed `<`, no URI).
    pub fn parse(value: &'a [u8]) -> Option<Self> {
        let value = trim(value);
        if let Some(open) = find_unquoted(value, b'<') {
            let close = open + value[open..].iter().position(|&c| c == b'>')?;
            let uri = trim(&value[open + 1..close]);
            let params = trim(&value[close + 1..]);
            let params = params.strip_prefix(b";").map(trim).unwrap_or(params);
            return (!uri.is_empty()).then_some(Self { uri, params });
        }
        // addr-spec: the URI ends at the first ';' (its parameters are the header's).
        let end = value.iter().position(|&c| c == b';').unwrap_or(value.len());
        let uri = trim(&value[..end]);
        let params = if end < value.len() { trim(&value[end + 1..]) } else { b"" };
        (!uri.is_empty() && !uri.contains(&b' ')).then_some(Self { uri, params })
    }

    /// The value of parameter `name` (case-insensitive), without quotes; `Some(b"")` for a flag.
    pub fn param(&self, name: &[u8]) -> Option<&'a [u8]> {
        param(self.params, name)
    }
}

/// The value of parameter `name` in a `;`-separated list, without quotes.
pub fn param<'a>(params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    split_params(params).find_map(|p| {
        let (key, value) = match p.iter().position(|&c| c == b'=') {
            Some(eq) => (trim(&p[..eq]), trim(&p[eq + 1..])),
            None => (trim(p), &b""[..]),
        };
        key.eq_ignore_ascii_case(name)
            .then(|| value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value))
    })
}

/// Splits parameters at `;` outside quotes.
fn split_params(params: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(params);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        for (i, &c) in s.iter().enumerate() {
            match c {
                b'"' => quoted = !quoted,
                b';' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
    .filter(|p| !trim(p).is_empty())
}

fn find_unquoted(s: &[u8], needle: u8) -> Option<usize> {
    let mut quoted = false;
    for (i, &c) in s.iter().enumerate() {
        match c {
            b'"' => quoted = !quoted,
            _ if c == needle && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// The host (and port) part of a SIP URI: `sip:user@host:port;params` → `host:port`.
pub fn uri_hostport(uri: &[u8]) -> &[u8] {
    let after_scheme = uri.iter().position(|&c| c == b':').map_or(uri, |i| &uri[i + 1..]);
    let after_user = after_scheme.iter().position(|&c| c == b'@').map_or(after_scheme, |i| &after_scheme[i + 1..]);
    let end = after_user.iter().position(|&c| matches!(c, b';' | b'?' | b'>')).unwrap_or(after_user.len());
    &after_user[..end]
}

/// The domain of an address-of-record URI (host without port, lower-cased by the caller).
pub fn uri_domain(uri: &[u8]) -> &[u8] {
    let hostport = uri_hostport(uri);
    if hostport.first() == Some(&b'[') {
        return hostport.iter().position(|&c| c == b']').map_or(hostport, |i| &hostport[..=i]);
    }
    hostport.iter().position(|&c| c == b':').map_or(hostport, |i| &hostport[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_and_params() {
        let value = br#""Desk, 1" <sip:5001@192.0.2.7:5062;transport=tcp>;+sip.instance="<urn:uuid:00000000-0000-0000-0000-0024142ddf24>";+u.sip!devicename.ccm.cisco.com="SEP0024142DDF24";expires=3600, <sip:b@x>"#;
        let values: Vec<_> = split_values(value).collect();
        assert_eq!(values.len(), 2);
        let c = Contact::parse(values[0]).unwrap();
        assert_eq!(c.uri, b"sip:5001@192.0.2.7:5062;transport=tcp");
        assert_eq!(c.param(b"EXPIRES"), Some(&b"3600"[..]));
        assert_eq!(c.param(b"+u.sip!devicename.ccm.cisco.com"), Some(&b"SEP0024142DDF24"[..]));
        assert_eq!(c.param(b"+sip.instance"), Some(&b"<urn:uuid:00000000-0000-0000-0000-0024142ddf24>"[..]));
        let bare = Contact::parse(b"sip:a@192.0.2.1:5060;expires=0;cisco-keep-alive").unwrap();
        assert_eq!(bare.uri, b"sip:a@192.0.2.1:5060");
        assert_eq!(bare.param(b"cisco-keep-alive"), Some(&b""[..]));
        assert_eq!(Contact::parse(b"<sip:a@b"), None);
    }

    #[test]
    fn uri_parts() {
        assert_eq!(uri_hostport(b"sip:1001@Example.COM:5070;transport=udp"), b"Example.COM:5070");
        assert_eq!(uri_domain(b"sip:1001@example.com:5070"), b"example.com");
        assert_eq!(uri_domain(b"sip:[2001:db8::1]:5060"), b"[2001:db8::1]");
        assert_eq!(uri_domain(b"sip:example.com"), b"example.com");
    }
}
