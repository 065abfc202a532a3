//! STUN Binding keepalives (RFC 5389, RFC 5626 §8.4) answered in userspace.
//!
//! A Binding Request gets a Binding Success Response carrying XOR-MAPPED-ADDRESS of the
//! sender — plus FINGERPRINT when the request carried one. A request with a
//! comprehension-required attribute regedge does not implement (it uses no credentials,
//! so USERNAME and MESSAGE-INTEGRITY among them) gets a 420 error listing them
//! (RFC 5389 §7.3.1). The XDP program answers the subset without FINGERPRINT and with
//! comprehension-optional attributes only, with the same bytes.

use std::net::SocketAddr;

use regedge_common::stun::{
    ATTR_ERROR_CODE, ATTR_FINGERPRINT, ATTR_UNKNOWN_ATTRIBUTES, ATTR_XOR_MAPPED_ADDRESS, BINDING_ERROR,
    BINDING_REQUEST, BINDING_SUCCESS, COMPREHENSION_OPTIONAL, FAMILY_IPV4, FAMILY_IPV6, HEADER_LEN, MAGIC_COOKIE,
};

/// Whether a datagram looks like STUN at all (RFC 5389 §6: top two bits zero, the cookie).
pub fn is_stun(payload: &[u8]) -> bool {
    payload.len() >= HEADER_LEN && payload[0] & 0xc0 == 0 && payload[4..8] == MAGIC_COOKIE.to_be_bytes()
}

/// What to do with a STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StunOutcome {
    /// A Binding Success Response was written.
    Success,
    /// A 420 error response was written.
    UnknownAttributes,
    /// Not a Binding Request (an indication, a response, another method): ignored.
    NotBindingRequest,
    /// Lengths or attributes do not add up: ignored.
    Malformed,
}

/// Most unknown attributes listed in a 420 response.
const MAX_UNKNOWN_LISTED: usize = 16;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Answers the STUN message in `payload` from `peer`, writing the response into `out`.
pub fn answer(payload: &[u8], peer: SocketAddr, out: &mut Vec<u8>) -> StunOutcome {
    out.clear();
    let msg_type = u16::from_be_bytes([payload[0], payload[1]]);
    let msg_len = u16::from_be_bytes([payload[2], payload[3]]) as usize;
    if !msg_len.is_multiple_of(4) || msg_len + HEADER_LEN != payload.len() {
        return StunOutcome::Malformed;
    }
    if msg_type != BINDING_REQUEST {
        return StunOutcome::NotBindingRequest;
    }
    let transaction = &payload[4..HEADER_LEN];
    let mut unknown = Vec::new();
    let mut fingerprint = false;
    let mut attrs = &payload[HEADER_LEN..];
    while !attrs.is_empty() {
        let Some(header) = attrs.get(..4) else { return StunOutcome::Malformed };
        let attr_type = u16::from_be_bytes([header[0], header[1]]);
        let padded = (u16::from_be_bytes([header[2], header[3]]) as usize + 3) & !3;
        let Some(rest) = attrs.get(4 + padded..) else { return StunOutcome::Malformed };
        if attr_type == ATTR_FINGERPRINT {
            fingerprint = true;
        } else if attr_type < COMPREHENSION_OPTIONAL && unknown.len() < MAX_UNKNOWN_LISTED {
            unknown.push(attr_type);
        }
        attrs = rest;
    }
    if !unknown.is_empty() {
        write_header(out, BINDING_ERROR, transaction);
        // ERROR-CODE 420: class 4, number 20, reason phrase.
        let reason = b"Unknown Attribute";
        put_attr_header(out, ATTR_ERROR_CODE, 4 + reason.len());
        out.extend_from_slice(&[0, 0, 4, 20]);
        out.extend_from_slice(reason);
        pad(out);
        put_attr_header(out, ATTR_UNKNOWN_ATTRIBUTES, 2 * unknown.len());
        for t in &unknown {
            out.extend_from_slice(&t.to_be_bytes());
        }
        pad(out);
        finish(out, false);
        return StunOutcome::UnknownAttributes;
    }
    write_header(out, BINDING_SUCCESS, transaction);
    let port = peer.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match peer {
        SocketAddr::V4(v4) => {
            put_attr_header(out, ATTR_XOR_MAPPED_ADDRESS, 8);
            out.extend_from_slice(&[0, FAMILY_IPV4]);
            out.extend_from_slice(&port.to_be_bytes());
            let cookie = MAGIC_COOKIE.to_be_bytes();
            out.extend(v4.ip().octets().iter().zip(cookie).map(|(a, k)| a ^ k));
        }
        SocketAddr::V6(v6) => {
            put_attr_header(out, ATTR_XOR_MAPPED_ADDRESS, 20);
            out.extend_from_slice(&[0, FAMILY_IPV6]);
            out.extend_from_slice(&port.to_be_bytes());
            // The key is the cookie followed by the transaction id (= payload[4..20]).
            out.extend(v6.ip().octets().iter().zip(&payload[4..HEADER_LEN]).map(|(a, k)| a ^ k));
        }
    }
    finish(out, fingerprint);
    StunOutcome::Success
}

fn write_header(out: &mut Vec<u8>, msg_type: u16, transaction: &[u8]) {
    out.extend_from_slice(&msg_type.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // length, set by `finish`
    out.extend_from_slice(transaction); // cookie + transaction id
}

fn put_attr_header(out: &mut Vec<u8>, attr_type: u16, len: usize) {
    out.extend_from_slice(&attr_type.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Sets the message length and appends FINGERPRINT (RFC 5389 §15.5) when asked.
fn finish(out: &mut Vec<u8>, fingerprint: bool) {
    let set_len = |out: &mut Vec<u8>| {
        let len = (out.len() - HEADER_LEN) as u16;
        out[2..4].copy_from_slice(&len.to_be_bytes());
    };
    if fingerprint {
        put_attr_header(out, ATTR_FINGERPRINT, 4);
        out.extend_from_slice(&[0; 4]);
        set_len(out);
        let crc = crc32(&out[..out.len() - 8]) ^ FINGERPRINT_XOR;
        let at = out.len() - 4;
        out[at..].copy_from_slice(&crc.to_be_bytes());
    } else {
        set_len(out);
    }
}

/// CRC-32 (ISO-HDLC, as used by STUN FINGERPRINT).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attrs: &[u8]) -> Vec<u8> {
        let mut p = vec![0x00, 0x01];
        p.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        p.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        p.extend_from_slice(b"txid-0123456");
        p.extend_from_slice(attrs);
        p
    }

    #[test]
    fn success_carries_the_xor_mapped_sender() {
        let mut out = Vec::new();
        let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert_eq!(answer(&request(&[]), peer, &mut out), StunOutcome::Success);
        assert_eq!(&out[..4], &[0x01, 0x01, 0, 12]);
        assert_eq!(&out[8..20], b"txid-0123456");
        assert_eq!(u16::from_be_bytes([out[26], out[27]]) ^ 0x2112, 40000);
        let addr: Vec<u8> = out[28..32].iter().zip(MAGIC_COOKIE.to_be_bytes()).map(|(a, k)| a ^ k).collect();
        assert_eq!(addr, [192, 0, 2, 7]);

        let peer6: SocketAddr = "[2001:db8::7]:5060".parse().unwrap();
        assert_eq!(answer(&request(&[]), peer6, &mut out), StunOutcome::Success);
        assert_eq!(out.len(), 44);
        assert_eq!(out[25], FAMILY_IPV6);
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn fingerprint_is_echoed_and_unknown_attributes_rejected() {
        let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let mut out = Vec::new();
        let fp = [0x80, 0x28, 0, 4, 1, 2, 3, 4];
        assert_eq!(answer(&request(&fp), peer, &mut out), StunOutcome::Success);
        assert_eq!(out.len(), 40);
        assert_eq!(&out[32..36], &[0x80, 0x28, 0, 4]);
        let crc = crc32(&out[..32]) ^ FINGERPRINT_XOR;
        assert_eq!(&out[36..], &crc.to_be_bytes());

        let username = [0x00, 0x06, 0, 3, b'a', b'b', b'c', 0];
        assert_eq!(answer(&request(&username), peer, &mut out), StunOutcome::UnknownAttributes);
        assert_eq!(&out[..2], &BINDING_ERROR.to_be_bytes());
        assert!(out.windows(4).any(|w| w == [0x00, 0x0a, 0, 2]));

        assert_eq!(answer(&request(&[0x80, 0x22, 0, 9]), peer, &mut out), StunOutcome::Malformed);
        let mut indication = request(&[]);
        indication[1] = 0x11;
        assert_eq!(answer(&indication, peer, &mut out), StunOutcome::NotBindingRequest);
    }
}
