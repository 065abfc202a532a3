//! SIP URIs as the edge reads them: does a Request-URI address the proxy, and the parts
//! of a `sip:` URI in a Route or Request-URI (user, host, port, parameters).

/// The host of a `sip:` Request-URI with no user part, as written (not lower-cased):
/// an IPv6 reference keeps its brackets; the host ends at `:`, `;` or `?`.
/// `None` for another scheme, a user part, or an empty or unterminated host.
///
/// The XDP program applies the same rule (`options.rs`, `step_request_line`).
pub fn proxy_host(uri: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = uri.split_at_checked(4)?;
    if !scheme.eq_ignore_ascii_case(b"sip:") || rest.contains(&b'@') {
        return None;
    }
    let host = if rest.first() == Some(&b'[') {
        let end = rest.iter().position(|&c| c == b']')?;
        &rest[..=end]
    } else {
        let end = rest.iter().position(|c| matches!(c, b':' | b';' | b'?')).unwrap_or(rest.len());
        &rest[..end]
    };
    (!host.is_empty()).then_some(host)
}

/// The parts of a `sip:` or `sips:` URI, borrowed: `sip:user@host:port;params?headers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub secure: bool,
    pub user: Option<&'a [u8]>,
    /// As written; an IPv6 reference keeps its brackets.
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// The parameters after the host, without the leading `;` (empty when none).
    pub params: &'a [u8],
}

impl<'a> SipUri<'a> {
    /// Parses a URI; `None` for another scheme, an empty host or a bad port.
    pub fn parse(uri: &'a [u8]) -> Option<Self> {
        let (secure, rest) = if uri.len() > 4 && uri[..4].eq_ignore_ascii_case(b"sip:") {
            (false, &uri[4..])
        } else if uri.len() > 5 && uri[..5].eq_ignore_ascii_case(b"sips:") {
            (true, &uri[5..])
        } else {
            return None;
        };
        let rest = &rest[..rest.iter().position(|&c| c == b'?').unwrap_or(rest.len())];
        let (user, hostport) = match rest.iter().position(|&c| c == b'@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (hostport, params) = match hostport.iter().position(|&c| c == b';') {
            Some(semi) => (&hostport[..semi], &hostport[semi + 1..]),
            None => (hostport, &b""[..]),
        };
        let (host, port) = if hostport.first() == Some(&b'[') {
            let end = hostport.iter().position(|&c| c == b']')?;
            (&hostport[..=end], &hostport[end + 1..])
        } else {
            let colon = hostport.iter().position(|&c| c == b':').unwrap_or(hostport.len());
            (&hostport[..colon], &hostport[colon..])
        };
        let port = match port {
            [] => None,
            [b':', digits @ ..] => Some(std::str::from_utf8(digits).ok()?.parse::<u16>().ok()?),
            _ => return None,
        };
        (!host.is_empty()).then_some(Self { secure, user, host, port, params })
    }

    /// The value of URI parameter `name` (case-insensitive); `Some(b"")` for a flag.
    pub fn param(&self, name: &[u8]) -> Option<&'a [u8]> {
        super::contact::param(self.params, name)
    }

    /// The port, or the default of the scheme (5060, 5061 for sips).
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(if self.secure { 5061 } else { 5060 })
    }
}

#[cfg(test)]
mod tests {
    use super::{SipUri, proxy_host};

    #[test]
    fn uri_parts() {
        let uri = SipUri::parse(b"sip:tok.en@192.0.2.1:5070;lr;transport=TCP?x=y").unwrap();
        assert_eq!(uri.user, Some(&b"tok.en"[..]));
        assert_eq!((uri.host, uri.port, uri.params), (&b"192.0.2.1"[..], Some(5070), &b"lr;transport=TCP"[..]));
        assert_eq!(uri.param(b"TRANSPORT"), Some(&b"TCP"[..]));
        assert_eq!(uri.param(b"lr"), Some(&b""[..]));
        let v6 = SipUri::parse(b"sips:[2001:db8::1];lr").unwrap();
        assert_eq!((v6.host, v6.port_or_default(), v6.user), (&b"[2001:db8::1]"[..], 5061, None));
        for bad in [&b"tel:+1234"[..], b"sip:", b"sip:a@", b"sip:host:port", b"sip:[::1", b"sip:h:99999"] {
            assert_eq!(SipUri::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hosts() {
        let cases: [(&str, Option<&str>); 9] = [
            ("sip:edge.example.net", Some("edge.example.net")),
            ("SIP:Edge.Example.NET:5060;transport=udp", Some("Edge.Example.NET")),
            ("sip:192.0.2.1?x=y", Some("192.0.2.1")),
            ("sip:[2001:db8::1]:5060", Some("[2001:db8::1]")),
            ("sip:ping@192.0.2.1", None),
            ("sip:192.0.2.1;maddr=a@b", None),
            ("sips:edge", None),
            ("sip:[2001:db8::1", None),
            ("sip:", None),
        ];
        for (uri, want) in cases {
            assert_eq!(proxy_host(uri.as_bytes()), want.map(str::as_bytes), "{uri}");
        }
    }
}
