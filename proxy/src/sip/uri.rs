//! The one Request-URI question the edge answers itself: does it address the proxy?

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

#[cfg(test)]
mod tests {
    use super::proxy_host;

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
