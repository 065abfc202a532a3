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
