//! Keepalive requests as phones send them, and the decoders the tests check replies with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use regedge_common::stun::{ATTR_XOR_MAPPED_ADDRESS, BINDING_SUCCESS, MAGIC_COOKIE};

/// A STUN Binding Request with `attrs` (already encoded, padded).
pub fn stun_request(transaction: [u8; 12], attrs: &[u8]) -> Vec<u8> {
    let mut p = vec![0x00, 0x01];
    p.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    p.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    p.extend_from_slice(&transaction);
    p.extend_from_slice(attrs);
    p
}

/// One encoded STUN attribute, padded to four bytes.
pub fn stun_attr(attr_type: u16, value: &[u8]) -> Vec<u8> {
    let mut a = attr_type.to_be_bytes().to_vec();
    a.extend_from_slice(&(value.len() as u16).to_be_bytes());
    a.extend_from_slice(value);
    while !a.len().is_multiple_of(4) {
        a.push(0);
    }
    a
}

/// The transaction id and XOR-MAPPED-ADDRESS of a Binding Success Response.
pub fn decode_stun_success(p: &[u8]) -> Option<([u8; 12], SocketAddr)> {
    if p.len() < 20 || p[0..2] != BINDING_SUCCESS.to_be_bytes() || p[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return None;
    }
    let transaction: [u8; 12] = p[8..20].try_into().ok()?;
    let key: Vec<u8> = p[4..20].to_vec();
    let mut attrs = &p[20..];
    while attrs.len() >= 4 {
        let t = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = u16::from_be_bytes([attrs[2], attrs[3]]) as usize;
        let value = attrs.get(4..4 + len)?;
        if t == ATTR_XOR_MAPPED_ADDRESS {
            let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
            let ip: IpAddr = match value[1] {
                1 => Ipv4Addr::from(<[u8; 4]>::try_from(xor(&value[4..8], &key)).ok()?).into(),
                2 => Ipv6Addr::from(<[u8; 16]>::try_from(xor(&value[4..20], &key)).ok()?).into(),
                _ => return None,
            };
            return Some((transaction, SocketAddr::new(ip, port)));
        }
        attrs = attrs.get(4 + ((len + 3) & !3)..)?;
    }
    None
}

fn xor(a: &[u8], key: &[u8]) -> Vec<u8> {
    a.iter().zip(key).map(|(x, k)| x ^ k).collect()
}

/// An OPTIONS request from `from` to `uri`, with the headers a phone sends and
/// `extra_headers` (each ending in CRLF) before Content-Length.
pub fn options_request(uri: &str, from: SocketAddr, call_id: &str, extra_headers: &str) -> Vec<u8> {
    let host = regedge::local_names::uri_host(from.ip());
    format!(
        "OPTIONS {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:phone@{host}>;tag=ph{port}\r\n\
         To: <{uri}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 101 OPTIONS\r\n\
         Contact: <sip:phone@{host}:{port}>\r\n\
         Accept: application/sdp\r\n\
         User-Agent: regedge-tests\r\n\
         {extra_headers}\
         Content-Length: 0\r\n\r\n",
        port = from.port()
    )
    .into_bytes()
}

/// A CRLF line-ended SIP text from a `\n`-separated literal.
pub fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

/// A UDP REGISTER refresh, the flow it travels and the `BINDINGS` entry it is checked
/// against: one row that both the XDP program (through BPF_PROG_TEST_RUN) and the
/// userspace registrar can be fed, so their answers can be compared byte for byte.
#[derive(Clone, Debug)]
pub struct RegisterFixture {
    pub name: String,
    pub phone: SocketAddr,
    pub proxy: SocketAddr,
    pub request: Vec<u8>,
    /// The entry under its `call_id_key`; `None`: the Call-ID is unknown to the kernel.
    pub binding: Option<(u64, regedge_common::maps::BindingEntry)>,
}

impl RegisterFixture {
    /// The Ethernet frame carrying the request from the phone to the proxy.
    pub fn frame(&self) -> Vec<u8> {
        crate::frames::udp_frame(self.phone, self.proxy, &self.request)
    }
}

/// A REGISTER from `\n`-separated header lines (the empty line is added).
pub fn register_request(uri: &str, headers: &str) -> Vec<u8> {
    crlf(&format!("REGISTER {uri} SIP/2.0\n{headers}\n"))
}

/// CLOCK_MONOTONIC in milliseconds: the clock of `BindingEntry` times
/// (`bpf_ktime_get_ns() / 1_000_000` in the kernel).
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The `BINDINGS` entry userspace would write after accepting `request` (with its CSeq
/// less one, so that `request` itself is the next refresh) on the flow `phone` →
/// `proxy`: identity of the trimmed To and Contact values, the Authorization hash, the
/// contact URI's place in the Contact value, its `expires` parameter. The phone may be
/// granted `grant_ceiling` seconds; refreshes are answered for a day from now.
pub fn binding_for(
    request: &[u8],
    phone: SocketAddr,
    proxy: SocketAddr,
    grant_ceiling: u32,
) -> (u64, regedge_common::maps::BindingEntry) {
    use regedge::sip::{
        HeaderName, Message,
        contact::{Contact, split_values},
        message::trim,
        stateless::parse_cseq,
    };
    use regedge_common::{
        hash::{call_id_key, hash_bytes, identity},
        maps::{BINDING_TO_HAS_TAG, BindingEntry, FAMILY_IPV4, FAMILY_IPV6, NO_CONTACT_EXPIRES},
    };

    let msg = Message::parse(request).expect("a parseable REGISTER");
    let value =
        |pred: &dyn Fn(&[u8]) -> bool| msg.headers().find(|h| pred(h.name)).map(|h| trim(h.value)).unwrap_or_default();
    let named = |name: HeaderName| value(&|n: &[u8]| HeaderName::of(n) == name);
    let to = named(HeaderName::To);
    let call_id = named(HeaderName::CallId);
    let cseq = parse_cseq(named(HeaderName::CSeq)).expect("a CSeq").0;
    let contact = value(&|n: &[u8]| n.eq_ignore_ascii_case(b"contact") || n.eq_ignore_ascii_case(b"m"));
    let auth =
        value(&|n: &[u8]| n.eq_ignore_ascii_case(b"authorization") || n.eq_ignore_ascii_case(b"proxy-authorization"));
    let first = split_values(contact).next().expect("a contact");
    let parsed = Contact::parse(first).expect("a parseable contact");
    let uri_off = parsed.uri.as_ptr() as usize - contact.as_ptr() as usize;
    let contact_expires = parsed
        .param(b"expires")
        .map(|v| std::str::from_utf8(v).unwrap().parse::<u32>().expect("numeric expires"))
        .unwrap_or(NO_CONTACT_EXPIRES);
    let has_tag = to.windows(5).any(|w| w.eq_ignore_ascii_case(b";tag="));
    let addr = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    let port_be = |a: SocketAddr| u16::from_ne_bytes(a.port().to_be_bytes());
    let entry = BindingEntry {
        identity: identity(hash_bytes(to), hash_bytes(contact)),
        auth: if auth.is_empty() { 0 } else { hash_bytes(auth) },
        absorb_until_ms: monotonic_ms() + 86_400_000,
        last_seen_ms: 0,
        peer_addr: addr(phone),
        local_addr: addr(proxy),
        cseq: cseq.saturating_sub(1),
        grant_ceiling,
        contact_expires,
        family: if phone.is_ipv4() { FAMILY_IPV4 } else { FAMILY_IPV6 },
        flags: if has_tag { BINDING_TO_HAS_TAG } else { 0 },
        peer_port_be: port_be(phone),
        local_port_be: port_be(proxy),
        contact_uri_off: uri_off as u16,
        contact_uri_len: parsed.uri.len() as u16,
    };
    (call_id_key(call_id), entry)
}

/// A REGISTER refresh as a Cisco-like phone sends it, padded with `User-Agent`-style
/// headers to about `size` bytes (at least the bare request).
pub fn sized_register(phone: SocketAddr, call_id: &str, cseq: u32, size: usize) -> Vec<u8> {
    let host = regedge::local_names::uri_host(phone.ip());
    let port = phone.port();
    let head = format!(
        "Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-{call_id}-{cseq};rport\n\
         Max-Forwards: 70\n\
         From: <sip:1001@example.net>;tag=ph{port}\n\
         To: <sip:1001@example.net>\n\
         Call-ID: {call_id}\n\
         CSeq: {cseq} REGISTER\n\
         Contact: <sip:1001@{host}:{port};transport=udp>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-0024142ddf24>\";expires=3600\n\
         Allow: INVITE, ACK, CANCEL, BYE, REFER, NOTIFY, OPTIONS, UPDATE\n\
         Supported: path, outbound, replaces\n"
    );
    let tail = "Expires: 3600\nContent-Length: 0\n";
    let bare = register_request("sip:example.net", &format!("{head}{tail}")).len();
    let mut pad = String::new();
    // `User-Agent: <n>\r\n` takes n + 14 bytes.
    if size >= bare + 15 {
        pad = format!("User-Agent: {}\n", "x".repeat(size - bare - 14));
    }
    register_request("sip:example.net", &format!("{head}{pad}{tail}"))
}

/// The addresses of the XDP fixture tables (BPF_PROG_TEST_RUN: no interface carries them).
pub mod table {
    use std::net::SocketAddr;

    pub fn proxy_v4() -> SocketAddr {
        "10.0.0.1:5060".parse().unwrap()
    }
    pub fn proxy_v6() -> SocketAddr {
        "[fd00::1]:5060".parse().unwrap()
    }
    pub fn phone_v4() -> SocketAddr {
        "10.0.0.2:40000".parse().unwrap()
    }
    pub fn phone_v6() -> SocketAddr {
        "[fd00::2]:40002".parse().unwrap()
    }

    /// The listeners the tables configure: the proxy's IPv4 and IPv6 addresses.
    pub fn listen() -> Vec<SocketAddr> {
        vec![proxy_v4(), proxy_v6()]
    }
}
