//! What the registrar needs from a REGISTER, typed once: the AOR, the single contact and
//! its device identity, the requested expiry, Call-ID, CSeq and credentials.

use std::hash::{Hash, Hasher};

use crate::sip::{
    HeaderName, Message,
    contact::{self, Contact},
    message::trim,
    stateless::parse_cseq,
};

/// The contact part of a REGISTER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contacts<'a> {
    /// No Contact: a query for the current bindings.
    Query,
    /// `Contact: *` (remove all bindings of the AOR).
    Star,
    /// Exactly one contact: the case regedge caches.
    One(Contact<'a>),
    /// Several contacts, or one it cannot parse: forwarded, never cached.
    Other,
}

/// A REGISTER, typed.
#[derive(Clone, Debug)]
pub struct RegisterRequest<'a> {
    /// The To URI (the address of record).
    pub aor: &'a [u8],
    pub contacts: Contacts<'a>,
    /// The requested expiry: the contact's `expires` parameter, else the Expires header.
    pub expires: Option<u32>,
    pub call_id: &'a [u8],
    pub cseq: u32,
    /// Hash of the top Via value: a retransmission repeats it byte for byte (RFC 3261
    /// §17.2.3), another request with the same CSeq has another branch.
    pub via: u64,
    /// Hash of (username, realm, nonce) of Authorization / Proxy-Authorization, if any.
    pub credentials: Option<u64>,
    pub device: Device,
    /// Cisco's liveness probe to a backup server: Expires 0 with `cisco-keep-alive`.
    pub backup_probe: bool,
}

/// Who a phone is: the key bindings are stored under, and what rules match on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    /// `dev:SEP0024142DDF24`, `mac:0024142ddf24` or `aor:sip:1001@example.net`.
    pub key: String,
    /// Cisco device name (`+u.sip!devicename...`), upper-cased.
    pub name: Option<String>,
    /// MAC address, 12 lower-case hex digits, from the device name or `+sip.instance`.
    pub mac: Option<String>,
    /// Domain of the AOR, lower-cased.
    pub domain: String,
}

const DEVICE_NAME_PARAM: &[u8] = b"+u.sip!devicename.ccm.cisco.com";
const INSTANCE_PARAM: &[u8] = b"+sip.instance";

/// Why a REGISTER cannot be handled (answered 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("To has no URI")]
    BadTo,
    #[error("malformed Expires")]
    BadExpires,
    #[error("malformed CSeq")]
    BadCSeq,
}

impl<'a> RegisterRequest<'a> {
    pub fn parse(msg: &Message<'a>) -> Result<Self, RegisterError> {
        let to = msg.headers_named(HeaderName::To).next().map(|h| h.value).ok_or(RegisterError::BadTo)?;
        // A backup probe is answered whatever its To says (as the kernel answers it).
        let aor = Contact::parse(to).map(|c| c.uri);
        let call_id = msg.headers_named(HeaderName::CallId).next().map_or(&b""[..], |h| trim(h.value));
        let cseq = msg
            .headers_named(HeaderName::CSeq)
            .next()
            .and_then(|h| parse_cseq(h.value))
            .map(|(n, _)| n)
            .ok_or(RegisterError::BadCSeq)?;
        let contacts = contacts_of(msg);
        let header_expires = match msg.headers().find(|h| h.name.eq_ignore_ascii_case(b"expires")) {
            Some(h) => Some(parse_u32(trim(h.value)).ok_or(RegisterError::BadExpires)?),
            None => None,
        };
        let (contact_expires, backup_probe) = match contacts {
            Contacts::One(c) => (
                c.param(b"expires").map(|v| parse_u32(v).ok_or(RegisterError::BadExpires)).transpose()?,
                c.param(b"cisco-keep-alive").is_some(),
            ),
            _ => (None, false),
        };
        let expires = contact_expires.or(header_expires);
        let backup_probe = backup_probe && expires == Some(0);
        let aor = match aor {
            Some(aor) => aor,
            None if backup_probe => b"",
            None => return Err(RegisterError::BadTo),
        };
        let device = device_of(aor, &contacts);
        let via = top_via_of(msg);
        Ok(Self { aor, contacts, expires, call_id, cseq, via, credentials: credentials_of(msg), device, backup_probe })
    }

    /// The single contact, when there is exactly one.
    pub fn contact(&self) -> Option<Contact<'a>> {
        match self.contacts {
            Contacts::One(c) => Some(c),
            _ => None,
        }
    }
}

fn parse_u32(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse::<u64>().ok().map(|n| n.min(u32::MAX as u64) as u32)
}

fn contacts_of<'a>(msg: &Message<'a>) -> Contacts<'a> {
    let mut values =
        msg.headers().filter(|h| h.name.eq_ignore_ascii_case(b"contact") || h.name.eq_ignore_ascii_case(b"m"));
    let mut all = values.by_ref().flat_map(|h| contact::split_values(h.value));
    let Some(first) = all.next() else { return Contacts::Query };
    if all.next().is_some() {
        return Contacts::Other;
    }
    if first == b"*" {
        return Contacts::Star;
    }
    Contact::parse(first).map_or(Contacts::Other, Contacts::One)
}

fn top_via_of(msg: &Message<'_>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let top = msg.headers_named(HeaderName::Via).next().and_then(|h| contact::split_values(h.value).next());
    top.map(trim).hash(&mut hasher);
    hasher.finish()
}

/// Hash of the credentials' username, realm and nonce: a phone that re-sends its last
/// Authorization (nonce reuse with a higher nc) presents the same credentials.
fn credentials_of(msg: &Message<'_>) -> Option<u64> {
    let header = msg.headers().find(|h| {
        h.name.eq_ignore_ascii_case(b"authorization") || h.name.eq_ignore_ascii_case(b"proxy-authorization")
    })?;
    let value = trim(header.value);
    let fields = value.split(|&c| c == b',').map(trim);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut found = false;
    for field in fields {
        let field = field.strip_prefix(b"Digest ").map(trim).unwrap_or(field);
        for name in [&b"username"[..], b"realm", b"nonce"] {
            if let Some(rest) = field.strip_prefix(name).map(trim).and_then(|r| r.strip_prefix(b"=")) {
                name.hash(&mut hasher);
                trim(rest).hash(&mut hasher);
                found = true;
            }
        }
    }
    // A header regedge cannot read still counts as credentials, keyed by its bytes.
    if !found {
        value.hash(&mut hasher);
    }
    Some(hasher.finish())
}

fn device_of(aor: &[u8], contacts: &Contacts<'_>) -> Device {
    let domain = String::from_utf8_lossy(contact::uri_domain(aor)).to_ascii_lowercase();
    let contact = match contacts {
        Contacts::One(c) => Some(*c),
        _ => None,
    };
    let name = contact
        .and_then(|c| c.param(DEVICE_NAME_PARAM))
        .filter(|n| {
            !n.is_empty() && n.len() <= 64 && n.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        })
        .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase());
    let mac = name
        .as_deref()
        .and_then(|n| mac_suffix(n.as_bytes()))
        .or_else(|| contact.and_then(|c| c.param(INSTANCE_PARAM)).and_then(instance_mac));
    let key = match (&name, &mac) {
        (Some(n), _) => format!("dev:{n}"),
        (None, Some(m)) => format!("mac:{m}"),
        (None, None) => format!("aor:{}", String::from_utf8_lossy(aor).to_ascii_lowercase()),
    };
    Device { key, name, mac, domain }
}

impl Device {
    /// The device a registry key and the binding's address of record stand for, as far
    /// as they tell: the name of a `dev:` key and the MAC it ends with, the MAC of a
    /// `mac:` key, the AOR's domain. (A named device whose MAC came from `+sip.instance`
    /// is given none.) Used to find the group of a binding again after a reload.
    pub fn from_key(key: &str, aor: &str) -> Device {
        let domain = String::from_utf8_lossy(contact::uri_domain(aor.as_bytes())).to_ascii_lowercase();
        let (name, mac) = match key.split_once(':') {
            Some(("dev", name)) => (Some(name.to_owned()), mac_suffix(name.as_bytes())),
            Some(("mac", mac)) => (None, Some(mac.to_owned())),
            _ => (None, None),
        };
        Device { key: key.to_owned(), name, mac, domain }
    }
}

/// The last 12 characters as a MAC when they are all hex digits (`SEP0024142DDF24`).
fn mac_suffix(s: &[u8]) -> Option<String> {
    let tail = s.get(s.len().checked_sub(12)?..)?;
    tail.iter().all(u8::is_ascii_hexdigit).then(|| String::from_utf8_lossy(tail).to_ascii_lowercase())
}

/// `<urn:uuid:00000000-0000-0000-0000-0024142ddf24>` → `0024142ddf24`.
fn instance_mac(instance: &[u8]) -> Option<String> {
    let inner = instance.strip_prefix(b"<").and_then(|i| i.strip_suffix(b">")).unwrap_or(instance);
    let uuid = inner.get(..9).filter(|p| p.eq_ignore_ascii_case(b"urn:uuid:")).map(|_| &inner[9..])?;
    let last = uuid.rsplit(|&c| c == b'-').next()?;
    if last.len() == 12 { mac_suffix(last) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(contact: &str, extra: &str) -> Vec<u8> {
        format!(
            "REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK1\r\nFrom: <sip:1001@example.net>;tag=a\r\n\
             To: <sip:1001@Example.NET>\r\nCall-ID: c1\r\nCSeq: 42 REGISTER\r\n{contact}{extra}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn parse(raw: &[u8]) -> RegisterRequest<'_> {
        RegisterRequest::parse(&Message::parse(raw).unwrap()).unwrap()
    }

    #[test]
    fn cisco_identity_and_expiry() {
        let raw = register(
            "Contact: <sip:uuid@192.0.2.7:5060;transport=tcp>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-0024142ddf24>\";+u.sip!devicename.ccm.cisco.com=\"SEP0024142DDF24\";expires=3600\r\n",
            "Expires: 120\r\n",
        );
        let r = parse(&raw);
        assert_eq!(r.device.key, "dev:SEP0024142DDF24");
        assert_eq!(r.device.mac.as_deref(), Some("0024142ddf24"));
        assert_eq!(r.device.domain, "example.net");
        assert_eq!(r.expires, Some(3600), "the contact parameter wins over the header");
        assert_eq!(r.cseq, 42);
        assert!(!r.backup_probe && r.credentials.is_none());
    }

    #[test]
    fn instance_then_aor() {
        let raw = register(
            "Contact: <sip:a@192.0.2.7>;+sip.instance=\"<urn:uuid:11111111-2222-3333-4444-AABBCCDDEEFF>\"\r\n",
            "Expires: 60\r\n",
        );
        let r = parse(&raw);
        assert_eq!((r.device.key.as_str(), r.expires), ("mac:aabbccddeeff", Some(60)));
        let raw = register("Contact: <sip:a@192.0.2.7>\r\n", "");
        assert_eq!(parse(&raw).device.key, "aor:sip:1001@example.net");
        assert_eq!(parse(&raw).expires, None);
    }

    #[test]
    fn backup_probe_star_query_and_credentials() {
        let raw = register("Contact: <sip:a@192.0.2.7:5060>;expires=0;cisco-keep-alive\r\n", "");
        assert!(parse(&raw).backup_probe);
        let raw = register("Contact: *\r\n", "Expires: 0\r\n");
        assert_eq!(parse(&raw).contacts, Contacts::Star);
        let raw = register("", "");
        assert_eq!(parse(&raw).contacts, Contacts::Query);
        let auth = |nonce: &str, nc: &str| {
            register(
                "Contact: <sip:a@192.0.2.7>\r\n",
                &format!(
                    "Authorization: Digest username=\"1001\", realm=\"example.net\", nonce=\"{nonce}\", nc={nc}, response=\"x{nc}\"\r\n"
                ),
            )
        };
        let (a, b, c) = (auth("n1", "1"), auth("n1", "2"), auth("n2", "1"));
        assert_eq!(parse(&a).credentials, parse(&b).credentials, "nonce reuse is the same credentials");
        assert_ne!(parse(&a).credentials, parse(&c).credentials, "a new nonce is new credentials");
    }

    #[test]
    fn malformed_expires_is_an_error() {
        let raw = register("Contact: <sip:a@192.0.2.7>\r\n", "Expires: soon\r\n");
        assert_eq!(RegisterRequest::parse(&Message::parse(&raw).unwrap()).unwrap_err(), RegisterError::BadExpires);
    }
}
